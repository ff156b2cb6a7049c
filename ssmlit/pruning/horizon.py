"""Finite-horizon versions of the LAST and AIRE per-state quantities.

Both published scores sum a mode's impulse response h_k = C_i λ̄_i^k B̄_i over an infinite horizon.
A task of length L only ever sees k < L, and a slow pole (1 − |λ̄| ≪ 1/L) is overrated by the
infinite sum: with 1 − |λ̄| ≈ 6e-4 the time constant is ~1,700 steps, and on a 64-step task Eq. 6
credits it with ~25× the gain it can deliver. Truncating the sums at the task's own length:

- peak gain over L steps (finite-horizon version of Eq. 5/6): the FIR truncation
  G_i^L(z) = Σ_{k<L} C_i λ̄_i^k B̄_i z^{−k} has
  sup_θ σ_max(G_i^L(e^{jθ})) = ‖C_i‖‖B̄_i‖ Σ_{k<L} |λ̄_i|^k (triangle inequality, with equality at
  θ = arg λ̄_i), so the score is
  ‖C_i‖²‖B̄_i‖² ((1 − |λ̄_i|^L)/(1 − |λ̄_i|))²,
- energy over L steps (finite-horizon AIRE): Σ_{k<L} ‖C_i λ̄_i^k B̄_i‖_F² =
  ‖C_i‖²‖B̄_i‖² (1 − |λ̄_i|^{2L})/(1 − |λ̄_i|²).

As L → ∞ they converge to Eq. 6 and to the AIRE energy; with L = 1 both equal ‖C_i‖²‖B̄_i‖².

Numerics (float64, no cancellation): with m = 1 − |λ̄| (computed cancellation-free by
:func:`~ssmlit.pruning.scores.quantities_from_norms`), log|λ̄| = log1p(−m), so
1 − |λ̄|^L = −expm1(L·log1p(−m)) stays accurate to a few ulps when |λ̄| is within 1e-6 (or 1e-15)
of 1, where the naive 1 − |λ̄|^L would lose every digit. For m → 0 the ratio tends to L exactly.
"""

from __future__ import annotations

import torch

from .scores import ModalQuantities, _c_factor, _guard_unstable, h2_energy, hinf_score


def check_horizon(horizon: object, what: str = "horizon") -> int | None:
    """``horizon`` as a positive int (or None = infinite); anything else is a ValueError naming ``what``."""
    if horizon is None:
        return None
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"{what} must be a positive integer number of steps, 'auto' (the task's l_max) or null "
                         f"(infinite), got {horizon!r}")
    return horizon


def geometric_sum(margin: torch.Tensor, L: int | None, power: int = 1) -> torch.Tensor:
    """Σ_{k<L} ρ^{power·k} for ρ = 1 − margin, i.e. (1 − ρ^{pL})/(1 − ρ^p); L=None: 1/(1 − ρ^p).

    Args:
        margin: float64 [n], 1 − |λ̄| in (0, 1] (stable poles; others are handled by the caller).
        L: the horizon (positive) or None.
        power: 1 (gain) or 2 (energy).

    Returns:
        float64 [n].
    """
    m = margin.to(torch.float64)
    log_rho = torch.log1p(-m.clamp(max=1.0))  # ≤ 0; −inf for ρ = 0
    # 1 − ρ^p = −expm1(p·log ρ): for p = 2 this is m(2 − m), written so that it never cancels.
    den = -torch.expm1(power * log_rho)
    if L is None:
        return 1.0 / den.clamp(min=torch.finfo(torch.float64).tiny)
    num = -torch.expm1(power * L * log_rho)
    out = num / den
    # ρ → 1 (m below ~1e-300, or exactly 0): the sum is L terms of 1.
    return torch.where(den > 0, out, torch.full_like(out, float(L)))


def hinf_horizon_score(q: ModalQuantities, bidirectional: str = "paper", horizon: int | None = None) -> torch.Tensor:
    """Finite-horizon H∞ score: ‖C_i‖²‖B̄_i‖² ((1 − |λ̄_i|^L)/(1 − |λ̄_i|))² (module docstring);
    ``horizon=None`` is Eq. 6. Returns float64 [n]."""
    L = check_horizon(horizon)
    if L is None:
        return hinf_score(q, bidirectional)
    gain = geometric_sum(q.margin.clamp(min=0.0), L, 1)
    return _guard_unstable(q, _c_factor(q, bidirectional) * q.B_sq * gain.square())


def h2_horizon_energy(q: ModalQuantities, bidirectional: str = "paper", horizon: int | None = None) -> torch.Tensor:
    """Finite-horizon AIRE energy: ‖C_i‖²‖B̄_i‖² (1 − |λ̄_i|^{2L})/(1 − |λ̄_i|²) (module docstring);
    ``horizon=None`` is the AIRE energy. Returns float64 [n]."""
    L = check_horizon(horizon)
    if L is None:
        return h2_energy(q, bidirectional)
    energy = geometric_sum(q.margin.clamp(min=0.0), L, 2)
    return _guard_unstable(q, _c_factor(q, bidirectional) * q.B_sq * energy)
