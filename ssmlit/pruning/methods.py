"""The registry of state-pruning methods: a score, whether it is energy-normalized, how states are selected.

A method is a :class:`PruningMethod`. Adding one takes a few lines::

    from ssmlit.pruning import METHODS, PruningMethod
    from ssmlit.pruning.scores import h2_energy

    METHODS["uniform_aire"] = PruningMethod(h2_energy, normalize=False, scope="uniform",
                                            description="AIRE energy, same ratio per layer")

and ``plan_pruning(model, "uniform_aire", 0.3)``, ``StatePruningCallback(method="uniform_aire")`` and
the Hydra configs (``prune.method=uniform_aire``) accept it.

Selection scopes:

- ``global``: all layers compete through one ranking (a global threshold, LAST paper §3.2);
- ``uniform``: every layer loses the same fraction of its states (LAST paper's "Uniform" baselines).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .scores import ModalQuantities, h2_energy, hinf_score, magnitude_score

ScoreFn = Callable[..., torch.Tensor]
SCOPES = ("global", "uniform")


def random_score(
    q: ModalQuantities, bidirectional: str = "paper", generator: torch.Generator | None = None
) -> torch.Tensor:
    """i.i.d. uniform scores (the paper's structured random baseline): float64 [n]."""
    return torch.rand(q.lam_abs.shape, generator=generator, dtype=torch.float64).to(q.lam_abs.device)


def squared_magnitude(q: ModalQuantities, bidirectional: str = "paper") -> torch.Tensor:
    """LAMP's per-state quantity before normalization, App. D.2: (|λ̄_i|·‖B̄_i‖·‖C_i‖)²."""
    return magnitude_score(q, bidirectional).square()


@dataclass(frozen=True)
class PruningMethod:
    """One state-pruning method.

    Attributes:
        score: ``score(q: ModalQuantities, bidirectional: str) -> float64 [n]`` (larger = more
            important). A method with ``stochastic=True`` also receives ``generator=``.
        normalize: apply LAST's energy normalization (Eq. 9) per layer before ranking.
        scope: ``"global"`` or ``"uniform"`` (see the module docstring).
        description: one line for tables and ``--help``-style listings.
        stochastic: the score draws random numbers (seeded through ``plan_pruning(seed=...)``).
    """

    score: ScoreFn
    normalize: bool
    scope: str
    description: str = ""
    stochastic: bool = False

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"unknown selection scope {self.scope!r}; choose one of {SCOPES}")


_G, _U = "global", "uniform"
METHODS: dict[str, PruningMethod] = {
    "last": PruningMethod(hinf_score, True, _G, "LAST: H∞ score (Eq. 6), energy-normalized (Eq. 9), global"),
    "aire": PruningMethod(h2_energy, True, _G, "AIRE-Prune: impulse-response energy, energy-normalized, global"),
    "uniform_hinf": PruningMethod(hinf_score, False, _U, "H∞ score (Eq. 6), same ratio in every layer"),
    "global_hinf": PruningMethod(hinf_score, False, _G, "raw H∞ score (Eq. 6), global (LAST without normalization)"),
    "uniform_magnitude": PruningMethod(magnitude_score, False, _U, "|λ̄|·‖B̄‖·‖C‖ (App. D.2), same ratio per layer"),
    "global_magnitude": PruningMethod(magnitude_score, False, _G, "|λ̄|·‖B̄‖·‖C‖ (App. D.2), global"),
    "lamp": PruningMethod(squared_magnitude, True, _G, "LAMP: squared magnitude, prefix-normalized (App. D.2), global"),
    "random": PruningMethod(random_score, False, _G, "uniformly random states (seeded)", stochastic=True),
}


def get_method(method: str | PruningMethod) -> PruningMethod:
    """Look a method up by name (or pass a :class:`PruningMethod` through); unknown names are an error
    that lists the registered ones."""
    if isinstance(method, PruningMethod):
        return method
    try:
        return METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pruning method {method!r}; choose one of {sorted(METHODS)}") from None
