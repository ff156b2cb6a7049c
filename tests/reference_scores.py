"""Independent references for the pruning scores and the selection rules, written from the papers'
formulas with NumPy and plain Python (no ``ssmlit.pruning`` code).

Per stored state i of a layer, from its ``discretized_system()``:

- H∞ (LAST Eq. 6): ‖C_i‖²‖B̄_i‖² / (1 − |λ̄_i|)²
- H2² / AIRE energy: ‖C_i‖²‖B̄_i‖² / (1 − |λ̄_i|²)
- magnitude (LAST App. D.2): |λ̄_i|·‖B̄_i‖·‖C_i‖, and LAMP's square of it
- finite-horizon peak gain (issue 11 §2), squared: ‖C_i‖²‖B̄_i‖²(Σ_{k<L} |λ̄_i|^k)², i.e.
  ‖C_i‖²‖B̄_i‖²((1 − |λ̄_i|^L)/(1 − |λ̄_i|))², summed here term by term
- finite-horizon energy: ‖C_i‖²‖B̄_i‖² Σ_{k<L} |λ̄_i|^{2k} = ‖C_i‖²‖B̄_i‖²(1 − |λ̄_i|^{2L})/(1 − |λ̄_i|²)
- measured energy (``data_energy``): the calibration energies as given, only normalized
- energy normalization (LAST Eq. 9): s_(i) / Σ_{j≤i} s_(j) over the layer's active states sorted in
  descending order (ties: lower index first); infinite scores score 1 and stay out of the sums.

The common factor 2 of a conjugate pair (output 2·Re) is dropped from every formula (it changes no
ranking); bidirectional layers combine ‖C^f_i‖² and ‖C^b_i‖² by the README's rule (``c_factor``),
for the horizon scores exactly as for Eq. 6 and AIRE.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

# Every registered method, as the LAST paper / README table define it: (score, normalized, scope).
# A method added to ssmlit.pruning.METHODS must be added here with its formula, or the tests fail.
METHOD_FORMULAS: dict[str, tuple[str, bool, str]] = {
    "last": ("hinf", True, "global"),
    "aire": ("h2", True, "global"),
    "global_hinf": ("hinf", False, "global"),
    "uniform_hinf": ("hinf", False, "uniform"),
    "global_magnitude": ("magnitude", False, "global"),
    "uniform_magnitude": ("magnitude", False, "uniform"),
    "lamp": ("magnitude_sq", True, "global"),
    "random": ("random", False, "global"),
    "last_horizon": ("hinf_horizon", True, "global"),
    "aire_horizon": ("h2_horizon", True, "global"),
    "data_energy": ("measured", True, "global"),
}
# Kinds whose formula needs a horizon L, and the one whose scores are measured (calibration=).
HORIZON_KINDS = ("hinf_horizon", "h2_horizon")
MEASURED_KIND = "measured"


def modal_norms(layer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|λ̄_i| float64 [n], ‖B̄_i‖² float64 [n], ‖C_i‖² float64 [d, n] from the dense protocol."""
    with torch.no_grad():
        lam, B, C = (t.numpy() for t in layer.discretized_system(torch.complex128))
    B_sq = np.array([sum(abs(z) ** 2 for z in row) for row in B])
    C_sq = np.array([[sum(abs(C[d, h, i]) ** 2 for h in range(C.shape[1])) for i in range(C.shape[2])]
                     for d in range(C.shape[0])])
    return np.abs(lam), B_sq, C_sq


def c_factor(C_sq: np.ndarray, rule: str) -> np.ndarray:
    """‖C_i‖² of a layer under the bidirectional rule (README: paper / code / bound)."""
    if C_sq.shape[0] == 1:
        return C_sq[0]
    f, b = C_sq
    return {"paper": (f + b) / 2, "code": (np.sqrt(f) + np.sqrt(b)) / 4,
            "bound": (np.sqrt(f) + np.sqrt(b)) ** 2}[rule]


def geometric_terms_sum(rho: np.ndarray, L: int) -> np.ndarray:
    """Σ_{k<L} ρ^k per entry, summed term by term in float64 (every term ≤ 1, no cancellation)."""
    k = np.arange(L, dtype=np.float64)
    return np.array([float(np.sum(r ** k)) for r in rho])


def raw_scores(kind: str, lam_abs: np.ndarray, B_sq: np.ndarray, c: np.ndarray,
               horizon: int | None = None) -> np.ndarray:
    """The un-normalized per-state score; unstable poles (|λ̄| ≥ 1) get +inf for H∞ and H2, also on a
    finite horizon (README: unstable poles are never pruned)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind in HORIZON_KINDS:
            if horizon is None:  # L = ∞: the infinite sums, Eq. 6 and AIRE
                return raw_scores(kind.removesuffix("_horizon"), lam_abs, B_sq, c)
            if kind == "hinf_horizon":
                s = c * B_sq * geometric_terms_sum(lam_abs, horizon) ** 2
            else:
                s = c * B_sq * geometric_terms_sum(lam_abs**2, horizon)
        elif kind == "hinf":
            s = c * B_sq / (1 - lam_abs) ** 2
        elif kind == "h2":
            s = c * B_sq / (1 - lam_abs**2)
        elif kind == "magnitude":
            return lam_abs * np.sqrt(B_sq) * np.sqrt(c)
        elif kind == "magnitude_sq":
            return lam_abs**2 * B_sq * c
        else:
            raise AssertionError(kind)
    return np.where(lam_abs >= 1, np.inf, s)


def normalized(scores: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Eq. (9) with a Python loop over the active states in rank order; inactive states: −inf."""
    out = np.full(scores.shape, -np.inf)
    ranked = sorted((i for i in range(scores.size) if active[i]), key=lambda i: (-scores[i], i))
    total = 0.0
    for i in ranked:
        if math.isinf(scores[i]):
            out[i] = 1.0
            continue
        total += scores[i]
        out[i] = scores[i] / total if total > 0 else 0.0
    return out


def reference_scores(layer, method: str, rule: str = "paper", horizon: int | None = None,
                     energies: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """What ``state_scores`` must return for one layer (deterministic methods only).

    ``horizon``: L of the horizon methods (None: infinite). ``energies``: float64 [n], the layer's
    calibration energies, required by the measured method (which ignores ``rule``: a bidirectional
    layer's energies already hold both directions).
    """
    kind, norm, _ = METHOD_FORMULAS[method]
    active = layer.state_mask.numpy()
    if kind == MEASURED_KIND:
        if energies is None:
            raise AssertionError(f"{method} needs the layer's calibration energies")
        s = np.asarray(energies, dtype=np.float64)
        return normalized(s, active) if norm else np.where(active, s, -np.inf)
    lam_abs, B_sq, C_sq = modal_norms(layer)
    s = raw_scores(kind, lam_abs, B_sq, c_factor(C_sq, rule), horizon)
    return normalized(s, active) if norm else np.where(active, s, -np.inf)


def pruned_count(ratio: float, n: int) -> int:
    """⌊r·n⌉ with exact halves rounded up, in exact rational arithmetic on the ratio as written
    (0.7·5 is 3.5, so 4, although the double nearest 0.7 is a little below it)."""
    x = Fraction(repr(float(ratio))) * n
    return math.floor(x + Fraction(1, 2))


def reference_selection(scores: dict[str, torch.Tensor], active: dict[str, torch.Tensor], scope: str,
                        ratio: float, min_states: int) -> dict[str, set[int]]:
    """The kept states of each layer under the README's selection rules (exact top-K, ties to the
    earlier layer and then the lower index; every layer keeps its best ``min_states``; masked states
    are never kept)."""
    names = list(scores)
    kept: dict[str, set[int]] = {k: set() for k in names}

    def ranked(k):
        s = scores[k].tolist()
        return sorted((i for i in range(len(s)) if active[k][i]), key=lambda i: (-s[i], i))

    if scope == "uniform":
        for k in names:
            n = len(scores[k])
            want = max(n - pruned_count(ratio, n), min_states)
            kept[k] = set(ranked(k)[:want])
        return kept
    n_all = sum(len(s) for s in scores.values())
    n_keep = n_all - pruned_count(ratio, n_all)
    rest = []
    for li, k in enumerate(names):
        order = ranked(k)
        kept[k] = set(order[:min_states])
        rest += [(-float(scores[k][i]), li, i) for i in order[min_states:]]
    budget = max(0, n_keep - sum(len(v) for v in kept.values()))
    for _, li, i in sorted(rest)[:budget]:
        kept[names[li]].add(i)
    return kept
