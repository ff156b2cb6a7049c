"""Per-state importance scores of a diagonal system, and LAST's layer-wise energy normalization.

Everything here is a pure function of one layer's discretized system (the diagonal-system
protocol of :mod:`ssmlit.models.base`): per stored state i (one conjugate pair),

- ``lam_abs[i]`` = |λ̄_i|, ``margin[i]`` = 1 − |λ̄_i| (the distance of the pole to the unit circle),
- ``B_sq[i]`` = ‖B̄_i‖² (row i of B̄, complex 2-norm over the H input channels),
- ``C_sq[d, i]`` = ‖C_i‖² per direction d (column i of C, over the H output channels).

Scores (Gwak et al., "Layer-Adaptive State Pruning for Deep State Space Models", NeurIPS 2024):

- H∞ score, Eq. (6): ‖C_i‖²‖B̄_i‖² / (1 − |λ̄_i|)², the squared peak gain of the subsystem
  G_i(z) = C_i B̄_i / (z − λ̄_i) (Eq. 5: the peak sits at z = e^{j·arg λ̄_i}).
- AIRE energy (AIRE-Prune, Padhy et al., ICLR 2026): ‖C_i‖²‖B̄_i‖² / (1 − |λ̄_i|²) =
  Σ_{k≥0} ‖C_i λ̄_i^k B̄_i‖_F², the impulse-response energy (squared H2 norm) of the subsystem.
- magnitude, App. D.2: |λ̄_i|·‖B̄_i‖·‖C_i‖; LAMP, App. D.2: its square, prefix-normalized.
- energy normalization, Eq. (9)/(10): within a layer, sorted descending, s_(i) / Σ_{j≤i} s_(j).

Everything is evaluated in float64: the paper reports S4D scores on the Image task that
"fell below the precision threshold" of float32, because 1 − |λ̄| ≈ |Re λ|Δ is ~1e-7 for slow modes.
The common factor 2 of the conjugate pair (output 2·Re) is dropped; it changes no ranking.

Bidirectional layers share λ̄ and B̄ and have C^f, C^b. ``bidirectional`` selects ‖C_i‖²:

- ``"paper"`` (default, LAST §3.1): (‖C_i^f‖² + ‖C_i^b‖²)/2;
- ``"code"``: (‖C_i^f‖ + ‖C_i^b‖)/4, what the published LAST/AIRE code computes: its
  ``(‖C1‖ + ‖C2‖)/2 **2`` divides by 4 and leaves the C factor linear (operator precedence);
  offered to reproduce the published numbers;
- ``"bound"``: (‖C_i^f‖ + ‖C_i^b‖)², for which the H∞ score is a true upper bound on the
  squared peak gain of the bidirectional subsystem.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

BIDIRECTIONAL_MODES = ("paper", "code", "bound")


@dataclass(frozen=True)
class ModalQuantities:
    """The per-state quantities every score is built from (all float64, one entry per stored state).

    Attributes:
        lam_abs: float64 [n], |λ̄_i|.
        margin: float64 [n], 1 − |λ̄_i| (> 0 for a stable pole).
        B_sq: float64 [n], ‖B̄_i‖².
        C_sq: float64 [d, n], ‖C_i‖² per direction (d = 2 when bidirectional).
    """

    lam_abs: torch.Tensor
    margin: torch.Tensor
    B_sq: torch.Tensor
    C_sq: torch.Tensor

    @property
    def unstable(self) -> torch.Tensor:
        """bool [n]: poles on or outside the unit circle, where H∞ and H2 norms are infinite."""
        return self.margin <= 0


def modal_quantities(lam_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor) -> ModalQuantities:
    """Per-state quantities from a discretized diagonal system.

    Args:
        lam_bar: complex [n], the discrete eigenvalues λ̄.
        B_bar: complex [n, H], the discrete input matrix B̄.
        C: complex [d, H, n], the output matrices (d = 2 when bidirectional).

    Returns:
        :class:`ModalQuantities`, computed in float64.
    """
    if lam_bar.dim() != 1 or B_bar.dim() != 2 or C.dim() != 3:
        raise ValueError("expected lam_bar [n], B_bar [n, H], C [d, H, n]; got shapes "
                         f"{tuple(lam_bar.shape)}, {tuple(B_bar.shape)}, {tuple(C.shape)}")
    n = lam_bar.shape[0]
    if B_bar.shape[0] != n or C.shape[2] != n:
        raise ValueError(f"state dimension mismatch: lam_bar has {n} states, B_bar {B_bar.shape[0]}, C {C.shape[2]}")
    B_sq = B_bar.detach().to(torch.complex128).abs().square().sum(1)
    C_sq = C.detach().to(torch.complex128).abs().square().sum(1)
    return quantities_from_norms(lam_bar, B_sq, C_sq)


def quantities_from_norms(lam_bar: torch.Tensor, B_sq: torch.Tensor, C_sq: torch.Tensor) -> ModalQuantities:
    """:class:`ModalQuantities` from λ̄ (complex [n]) and the squared norms ‖B̄_i‖² (real [n]) and
    ‖C_i‖² (real [d, n]), for layers that can give the norms without building B̄ and C densely
    (S4D's block-diagonal B̄ [H·N/2, H] is almost all zeros)."""
    lam = lam_bar.detach().to(torch.complex128)
    lam_sq = lam.real.square() + lam.imag.square()
    lam_abs = lam_sq.sqrt()
    # 1 − |λ̄| = (1 − |λ̄|²)/(1 + |λ̄|): one subtraction of O(1) numbers instead of two.
    margin = (1 - lam_sq) / (1 + lam_abs)
    return ModalQuantities(lam_abs, margin, B_sq.detach().to(torch.float64), C_sq.detach().to(torch.float64))


def _c_factor(q: ModalQuantities, bidirectional: str) -> torch.Tensor:
    """‖C_i‖² as used by the scores (the bidirectional rules of the module docstring)."""
    if bidirectional not in BIDIRECTIONAL_MODES:
        raise ValueError(f"unknown bidirectional mode {bidirectional!r}; choose one of {BIDIRECTIONAL_MODES}")
    if q.C_sq.shape[0] == 1:
        return q.C_sq[0]
    if bidirectional == "paper":
        return q.C_sq.mean(0)
    norms = q.C_sq.sqrt()
    if bidirectional == "code":
        return norms.sum(0) / 4
    return norms.sum(0).square()


def _guard_unstable(q: ModalQuantities, score: torch.Tensor) -> torch.Tensor:
    # An unstable pole has unbounded gain and energy: never prune it (score +inf), and say so.
    bad = q.unstable
    if bool(bad.any()):
        warnings.warn(f"{int(bad.sum())} state(s) have |λ̄| ≥ 1 (unstable; train with clip_eigs=True to prevent "
                      "this): they get score +inf and are never pruned", RuntimeWarning, stacklevel=3)
        score = torch.where(bad, torch.full_like(score, float("inf")), score)
    return score


def hinf_score(q: ModalQuantities, bidirectional: str = "paper") -> torch.Tensor:
    """H∞ score, LAST paper Eq. (6): ‖C_i‖²‖B̄_i‖² / (1 − |λ̄_i|)². Returns float64 [n]."""
    score = _c_factor(q, bidirectional) * q.B_sq / q.margin.clamp(min=torch.finfo(torch.float64).tiny).square()
    return _guard_unstable(q, score)


def h2_energy(q: ModalQuantities, bidirectional: str = "paper") -> torch.Tensor:
    """AIRE energy: ‖C_i‖²‖B̄_i‖² / (1 − |λ̄_i|²) = Σ_{k≥0} ‖C_i λ̄_i^k B̄_i‖_F². Returns float64 [n]."""
    one_minus_sq = q.margin * (1 + q.lam_abs)
    score = _c_factor(q, bidirectional) * q.B_sq / one_minus_sq.clamp(min=torch.finfo(torch.float64).tiny)
    return _guard_unstable(q, score)


def magnitude_score(q: ModalQuantities, bidirectional: str = "paper") -> torch.Tensor:
    """Magnitude, LAST paper App. D.2 (Table 6): |λ̄_i|·‖B̄_i‖·‖C_i‖. Returns float64 [n]."""
    return q.lam_abs * (q.B_sq * _c_factor(q, bidirectional)).sqrt()


def energy_normalize(scores: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
    """Layer-wise energy normalization, LAST paper Eq. (9): s_(i) / Σ_{j≤i} s_(j).

    States are ranked by descending score; ties rank the lower index first (a stable sort), so
    equal raw scores get distinct normalized scores, deterministically. Only ``active`` states take
    part (pruned states leave the remaining system, so they leave the prefix sums too); inactive
    states get −inf. The top active state scores exactly 1.

    Args:
        scores: float [n], raw non-negative scores of one layer (one normalization group).
        active: bool [n], the states still in the layer (default: all).

    Returns:
        float64 [n].
    """
    s = scores.to(torch.float64)
    active = torch.ones_like(s, dtype=torch.bool) if active is None else active.to(s.device)
    out = torch.full_like(s, float("-inf"))
    idx = active.nonzero().squeeze(1)
    if idx.numel() == 0:
        return out
    vals = s[idx]
    order = torch.sort(vals, descending=True, stable=True).indices
    ranked = vals[order]
    # Infinite scores (unstable poles) rank first and score 1; they are left out of the prefix
    # sums, which would otherwise be infinite and zero every later state.
    infinite = torch.isinf(ranked)
    prefix = torch.cumsum(torch.where(infinite, torch.zeros_like(ranked), ranked), 0)
    normalized = torch.where(infinite, torch.ones_like(ranked), ranked / prefix)
    # Whole-layer zero scores (e.g. C = 0): 0/0; such states carry nothing, so rank them last.
    normalized = torch.nan_to_num(normalized, nan=0.0)
    out[idx[order]] = normalized
    return out
