"""The reference convention: the masks of the published LAST and AIRE-Prune code, reproduced.

``convention="reference"`` (``prune.convention=reference``) follows msgwak/LAST (``s5/ssm.py``,
``s5/train.py``) and falcon-arrow/AIRE-Prune, which differ from ssmlit's own convention (float64,
exact top-K, see :mod:`.plan`) in these measured ways (reference notes §12):

1. Scores carry ε = 1e-8 in the denominator: H∞ ‖C‖²‖B̄‖² / ((1 − |λ̄|)² + 1e-8), AIRE
   ‖C‖²‖B̄‖² / ((1 − |λ̄|²) + 1e-8). For slow poles this caps the score, changing raw H∞ scores by
   up to 10⁶ relative.
2. Everything is float32 (JAX's default dtype): the discretized system (ssmlit's own
   discretization evaluated in float32), the norms, the score, the normalization and the threshold.
   Each step is a fixed sequence of correctly rounded float32 operations (|λ̄| = √(Re² + Im²),
   norms summed over channels in index order, a sequential running sum in the normalization), so
   the scores are reproducible bit for bit; the published code's own reductions (XLA's) may order
   sums differently, which can move a score by an ulp.
3. Bidirectional layers use the published ‖C‖ factor (‖C^f‖ + ‖C^b‖)/4 (LAST §4 of the notes: the
   code's ``/2 **2``), whatever ``bidirectional`` says.
4. Normalization (Eq. 9) sorts ascending with a stable sort and divides by the reversed cumulative
   sum: among equal raw scores the *higher* index gets the larger normalized score.
5. Selection keeps K = max(⌊N·(1 − r)⌋, 1) states in total (rounded down, N = all stored states),
   and then every state whose score is ≥ the K-th largest (ties at the threshold all survive).
   There is no per-layer minimum beyond what the normalization gives (each layer's top state
   scores 1.0, so for the normalized methods no layer is emptied; raw ``global_hinf`` can empty one).

Only the methods that the published code implements have a reference form: ``last``, ``aire`` and
``global_hinf`` (LAST without normalization, ``hinf_record``). ``min_states`` does not apply.
Known remaining difference: the published S5 code forms B̄ = (λ̄ − 1)/Λ·B̃ directly in float32,
ssmlit's discretization uses expm1 (more accurate for |ΛΔ| ≲ 1e-4), so B̄ of very slow poles can
differ in the last float32 digits and beyond.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import torch
from torch import nn

EPS = 1e-8
REFERENCE_KINDS = ("hinf", "aire")


def layer_reference_scores(layer: nn.Module, kind: str, step_rescale: float | None = None) -> torch.Tensor:
    """Raw published-code scores of one layer, float32 [n] (rules 1–3 of the module docstring).

    Args:
        layer: a prunable layer (``discretized_system`` / ``state_norms``).
        kind: ``"hinf"`` (LAST) or ``"aire"``.
        step_rescale: Δ multiplier (default: the layer's own).
    """
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"unknown reference score {kind!r}; choose one of {REFERENCE_KINDS}")
    with torch.no_grad():
        lam, B, C = layer.discretized_system(torch.complex64, step_rescale=step_rescale)
        B_sq = _sum_sq(B.T)  # ‖B̄_i‖², over the H entries of row i
        C_norm = torch.stack([_sqrt32(_sum_sq(C[k])) for k in range(C.shape[0])])  # [d, n]
    c_factor = C_norm[0].square() if C_norm.shape[0] == 1 else (C_norm[0] + C_norm[1]) / 4
    lam_abs = _sqrt32(lam.real.square() + lam.imag.square())
    if bool((lam_abs > 1).any()):
        warnings.warn(f"{int((lam_abs > 1).sum())} state(s) have |λ̄| > 1 (unstable); the reference convention "
                      "scores them "
                      "as the published code does (no special case)", RuntimeWarning, stacklevel=2)
    den = (1 - lam_abs).square() + EPS if kind == "hinf" else (1 - lam_abs.square()) + EPS
    return (c_factor * B_sq / den).float()


def _sqrt32(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float32 square root (torch's vectorized float32 sqrt may be an ulp off;
    rounding the float64 root to float32 is exact for square roots)."""
    return x.double().sqrt().float()


def _sum_sq(X: torch.Tensor) -> torch.Tensor:
    """Σ_h |X[h, i]|² in float32, accumulated over h in index order: a fixed sequence of correctly
    rounded float32 operations, so the result does not depend on a library's reduction order."""
    acc = torch.zeros(X.shape[1], dtype=torch.float32, device=X.device)
    for row in X:
        acc = acc + (row.real.square() + row.imag.square())
    return acc


def reference_normalize(scores: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (9) the published way (rule 4): float32 [n]; inactive states get −inf.

    The active scores are sorted ascending (stable), divided by the reversed cumulative sum (the sum
    of each score and every larger one) and scattered back.
    """
    s = scores.float()
    active = torch.ones_like(s, dtype=torch.bool) if active is None else active.to(s.device)
    out = torch.full_like(s, float("-inf"))
    idx = active.nonzero().squeeze(1)
    if idx.numel() == 0:
        return out
    vals = s[idx]
    order = torch.sort(vals, stable=True).indices  # ascending
    ranked = vals[order]
    # A sequential float32 running sum from the largest score down (numpy's cumsum accumulates in
    # the array's dtype; torch's CPU cumsum would accumulate float32 in double).
    r = ranked.cpu().numpy()
    suffix = torch.from_numpy(np.cumsum(r[::-1], dtype=np.float32)[::-1].copy()).to(s.device)
    out[idx[order]] = ranked / suffix
    return out


def reference_keep_count(n_states: int, ratio: float) -> int:
    """max(⌊N·(1 − r)⌋, 1) (rule 5), in exact arithmetic on r as a decimal fraction, so that
    r = 0.3 gives the code's ``int(N * (100 - 30) / 100)`` and not ⌊N · 0.7⌋ in binary."""
    r = Fraction(str(float(ratio))).limit_denominator(10**9)
    return max(int(n_states * (1 - r)), 1)


def reference_select(
    scores: dict[str, torch.Tensor], ratio: float, active: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], float | None]:
    """Global threshold selection of the published code (rule 5).

    Args:
        scores: layer → float32 [n] scores as ranked (−inf for inactive states).
        ratio: requested ratio in [0, 1].
        active: layer → bool [n], the states still in the model.

    Returns:
        ``(masks, threshold)``: layer → bool [n] (True = keep) and the threshold τ (None if
        nothing is active).
    """
    n_all = sum(int(s.numel()) for s in scores.values())
    k = reference_keep_count(n_all, ratio)
    flat = torch.cat([s.float() for s in scores.values()])
    finite = flat[flat > float("-inf")]
    if finite.numel() == 0:
        return {name: torch.zeros_like(a) for name, a in active.items()}, None
    tau = torch.sort(finite, descending=True).values[min(k, finite.numel()) - 1]
    masks = {name: (scores[name].float() >= tau) & active[name] for name in scores}
    return masks, float(tau)
