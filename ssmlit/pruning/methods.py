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

Beyond the papers (each documented in its module): ``last_horizon`` / ``aire_horizon`` sum the
impulse response over the task's length L only (:mod:`.horizon`); ``data_energy`` measures each
state's output energy on calibration batches (:mod:`.calibration`); the H∞ methods accept
``exact_pair=True`` for the exact H∞ of each conjugate pair's real subsystem (:mod:`.pair`); and
``last``, ``aire`` and ``global_hinf`` have a ``convention="reference"`` form that reproduces the
published code's masks (:mod:`.reference`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .horizon import h2_horizon_energy, hinf_horizon_score
from .pair import pair_hinf_score
from .scores import ModalQuantities, h2_energy, hinf_score, magnitude_score

ScoreFn = Callable[..., torch.Tensor]
SCOPES = ("global", "uniform")


def measured_energy(q: ModalQuantities, bidirectional: str = "paper") -> torch.Tensor:
    """Placeholder score of data-aware methods: their scores come from calibration, never from q."""
    raise ValueError("data-aware methods score from calibration energies: pass calibration= to "
                     "state_scores/plan_pruning (see ssmlit.pruning.calibration.calibrate)")


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
        horizon: the score takes ``horizon=`` (a number of steps L, or None for infinite).
        data: the scores are measured energies (``plan_pruning(calibration=...)``), not a function
            of the system; ``score`` is then unused.
        pair_score: ``pair_score(layer, step_rescale) -> float64 [n]``, the score with
            ``exact_pair=True`` (None: the method has no exact-pair form).
        reference: ``"hinf"`` or ``"aire"``: the published-code score used with
            ``convention="reference"`` (None: the method has no published form).
    """

    score: ScoreFn
    normalize: bool
    scope: str
    description: str = ""
    stochastic: bool = False
    horizon: bool = False
    data: bool = False
    pair_score: Callable[..., torch.Tensor] | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"unknown selection scope {self.scope!r}; choose one of {SCOPES}")


_G, _U = "global", "uniform"
METHODS: dict[str, PruningMethod] = {
    "last": PruningMethod(hinf_score, True, _G, "LAST: H∞ score (Eq. 6), energy-normalized (Eq. 9), global",
                          pair_score=pair_hinf_score, reference="hinf"),
    "aire": PruningMethod(h2_energy, True, _G, "AIRE-Prune: impulse-response energy, energy-normalized, global",
                          reference="aire"),
    "uniform_hinf": PruningMethod(hinf_score, False, _U, "H∞ score (Eq. 6), same ratio in every layer",
                                  pair_score=pair_hinf_score),
    "global_hinf": PruningMethod(hinf_score, False, _G, "raw H∞ score (Eq. 6), global (LAST without normalization)",
                                 pair_score=pair_hinf_score, reference="hinf"),
    "uniform_magnitude": PruningMethod(magnitude_score, False, _U, "|λ̄|·‖B̄‖·‖C‖ (App. D.2), same ratio per layer"),
    "global_magnitude": PruningMethod(magnitude_score, False, _G, "|λ̄|·‖B̄‖·‖C‖ (App. D.2), global"),
    "lamp": PruningMethod(squared_magnitude, True, _G, "LAMP: squared magnitude, prefix-normalized (App. D.2), global"),
    "random": PruningMethod(random_score, False, _G, "uniformly random states (seeded)", stochastic=True),
    "last_horizon": PruningMethod(hinf_horizon_score, True, _G, "peak gain over the task's L steps, squared, "
                                  "energy-normalized, global (LAST with a finite horizon)", horizon=True),
    "aire_horizon": PruningMethod(h2_horizon_energy, True, _G, "impulse-response energy over the task's L steps, "
                                  "energy-normalized, global (AIRE with a finite horizon)", horizon=True),
    "data_energy": PruningMethod(measured_energy, True, _G, "measured output energy of each state on calibration "
                                 "batches, energy-normalized, global", data=True),
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
