"""Exact H∞ norm of the real second-order subsystem that one stored conjugate pair is.

S5 and S4D store one eigenvalue w = λ̄_i of each conjugate pair and output 2·Re(C_i x_i): the state's
real subsystem is x_k = w x_{k−1} + b u_k, y_k = c x_k + c̄ x̄_k (c = C_i ∈ ℂ^H, b = B̄_i ∈ ℂ^H, u and y
real), with transfer function

    G(e^{jθ}) = α(θ)·c bᵀ + β(θ)·c̄ b̄ᵀ,   α = 1/(1 − w e^{−jθ}),  β = 1/(1 − w̄ e^{−jθ}).

Eq. (5)/(6) of the LAST paper (and both published codes) score the pair as one complex mode,
‖c‖‖b‖/(1 − |w|); the two conjugate terms, however, interfere: near the real axis they add (up to
2×) or cancel. This module computes sup_θ σ_max(G(e^{jθ})) exactly, in closed form:

G = U diag(α, β) Vᵀ with U = [c, c̄], V = [b, b̄] has rank ≤ 2, so σ_max² is the largest eigenvalue
of the 2×2 product (UᴴU)·diag(α, β)(VᵀV̄)diag(α, β)ᴴ. With P = ‖c‖², Q = ‖b‖², s_c = cᵀc,
s_b = bᵀb, κ = s_c s_b and K = (P² − |s_c|²)(Q² − |s_b|²), and writing t = 1 − cos θ ∈ [0, 2]
(the response of a real system is symmetric in θ):

    σ_max²(t) = (N(t) + √(N(t)² − 4K·D(t))) / (2·D(t)),
    D(t) = |e^{jθ} − w|²·|e^{jθ} − w̄|² = (e₀ − (1 + ρ²)t)² + (1 − ρ²)² t(2 − t),   e₀ = |1 − w|²,
    N(t) = 2PQ(e₀ + 2 Re(w) t) + 2 Re(κ(1 − w̄)²) + 4 Re(κ w̄) t,

D quadratic and N linear in t. σ_max² is the larger root s of F(t, s) = D(t)s² − N(t)s + K = 0, so
at an interior maximum ∂F/∂t = 0, i.e. s = N′/D′(t); substituting gives a quadratic in t. Its
real roots, the roots of N² − 4KD (where the two singular values meet) and the ends t = 0, 2
(θ = 0, π) are all the candidates; σ_max² at the best of them is the norm. The coefficients are
formed from m = 1 − |w| and sin²(φ/2) (φ = arg w), and σ_max² at a candidate is evaluated from
e^{jθ} − w = e^{jθ}(1 − ρe^{j(φ−θ)}) written with m and sin²((φ − θ)/2), so poles within 1e-7 of
the unit circle keep full float64 accuracy. ``tests/test_pair_hinf.py`` checks it against dense,
zoomed frequency sweeps of the full H×H matrix.

The score :func:`pair_hinf_score` is σ_max² itself. It is on the same scale as Eq. (6): for a pole
far from the real axis the terms do not overlap and σ_max → ‖c‖‖b‖/(1 − |w|); for a real pole
with real c, b it is 2‖c‖‖b‖/(1 − |w|). Unidirectional layers only (a bidirectional pair adds an
anti-causal term that breaks the symmetry in θ that the closed form rests on).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _real_roots(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both roots of a t² + b t + c = 0 (stable formula; a = 0: the linear root twice). Complex roots
    are replaced by their real part (−b/2a), a harmless extra candidate. float64 [n] each."""
    disc = (b.square() - 4 * a * c).clamp(min=0).sqrt()
    q = -0.5 * (b + torch.where(b >= 0, disc, -disc))
    tiny = torch.finfo(torch.float64).tiny
    safe_a = torch.where(a.abs() > tiny, a, torch.ones_like(a))
    safe_q = torch.where(q.abs() > tiny, q, torch.ones_like(q))
    r1 = torch.where(a.abs() > tiny, q / safe_a, -c / torch.where(b.abs() > tiny, b, torch.ones_like(b)))
    r2 = torch.where(q.abs() > tiny, c / safe_q, r1)
    return r1, r2


def pair_peak_gain_sq(
    lam_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """sup_θ σ_max(G_i(e^{jθ}))² of every stored pair's real subsystem (module docstring).

    Args:
        lam_bar: complex [n], w = λ̄_i (|w| < 1).
        B_bar: complex [n, H], b = row i.
        C: complex [H, n], c = column i (one direction).

    Returns:
        float64 [n] (+inf for |λ̄| ≥ 1).
    """
    w = lam_bar.detach().to(torch.complex128)
    b = B_bar.detach().to(torch.complex128)
    c = C.detach().to(torch.complex128).T  # [n, H]
    P, Q = c.abs().square().sum(1), b.abs().square().sum(1)
    s_c, s_b = c.square().sum(1), b.square().sum(1)
    kappa = s_c * s_b
    K = (P.square() - s_c.abs().square()).clamp(min=0) * (Q.square() - s_b.abs().square()).clamp(min=0)

    rho_sq = w.real.square() + w.imag.square()
    rho = rho_sq.sqrt()
    m = (1 - rho_sq) / (1 + rho)  # 1 − ρ without cancellation
    phi = torch.atan2(w.imag, w.real)
    s2 = torch.sin(phi / 2).square()
    e0 = m.square() + 4 * rho * s2  # |1 − w|²
    one_m_wbar = torch.complex(m + 2 * rho * s2, w.imag)  # 1 − w̄ = (1 − ρ cos φ) + j ρ sin φ
    c2 = 1 + rho_sq
    D0, D1, D2 = e0.square(), 4 * rho * (m.square() - 2 * s2 * c2), 4 * rho_sq
    n0 = 2 * P * Q * e0 + 2 * (kappa * one_m_wbar.square()).real
    n1 = 4 * P * Q * w.real + 4 * (kappa * w.conj()).real

    def sigma_sq(theta: torch.Tensor) -> torch.Tensor:
        # Evaluated at θ in a form without cancellation next to the pole: e^{jθ} − w =
        # e^{jθ}(1 − ρe^{jδ}) with δ = φ − θ and 1 − ρe^{jδ} = (m + 2ρ sin²(δ/2)) − jρ sin δ.
        f1, f2 = (torch.complex(m + 2 * rho * torch.sin(d / 2).square(), -rho * torch.sin(d))
                  for d in (phi - theta, phi + theta))
        d1, d2 = f1.abs().square(), f2.abs().square()
        tr = P * Q * (1 / d1 + 1 / d2) + 2 * (kappa / (f1 * f2)).real
        root = (tr.square() - 4 * K / (d1 * d2)).clamp(min=0).sqrt()
        return (tr + root) / 2

    candidates = [torch.zeros_like(m), torch.full_like(m, 2.0)]
    # ∂F/∂t = 0 with s = n1/D′(t), substituted into F = 0.
    candidates += _real_roots(D2 * (4 * K * D2 - n1.square()), 2 * D2 * (2 * K * D1 - n0 * n1),
                              n1.square() * D0 - n0 * n1 * D1 + K * D1.square())
    # N² = 4KD: the two singular values coincide.
    candidates += _real_roots(n1.square() - 4 * K * D2, 2 * n0 * n1 - 4 * K * D1, n0.square() - 4 * K * D0)
    candidates = [torch.nan_to_num(t, nan=0.0).clamp(0.0, 2.0) for t in candidates]
    golden = (math.sqrt(5) - 1) / 2
    values = []
    for t in candidates:
        theta = 2 * torch.atan2(t.sqrt(), (2 - t).sqrt())  # t = 2 sin²(θ/2), accurate at both ends
        # Polish: the roots carry the rounding of their coefficients, which next to the unit circle
        # can put them ~1e-11 off a peak ~m wide; a golden-section search over ±m/20 recovers it.
        lo, hi = (theta - m / 20).clamp(0, math.pi), (theta + m / 20).clamp(0, math.pi)
        for _ in range(40):
            a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
            left = sigma_sq(a) >= sigma_sq(b)
            lo, hi = torch.where(left, lo, a), torch.where(left, b, hi)
        values.append(torch.stack((sigma_sq(theta), sigma_sq((lo + hi) / 2))).max(0).values)
    values = torch.stack(values)
    best = values.max(0).values
    return torch.where(m > 0, best, torch.full_like(best, float("inf")))


def pair_hinf_score(layer: nn.Module, step_rescale: float | None = None) -> torch.Tensor:
    """Exact squared H∞ norm of each stored pair's real subsystem of one layer: float64 [n].

    A drop-in replacement of Eq. (6) for the H∞ methods (``exact_pair=True``); unstable poles score
    +inf (never pruned), as in :func:`~ssmlit.pruning.scores.hinf_score`.

    Raises:
        ValueError: the layer is bidirectional.
    """
    with torch.no_grad():
        lam, B, C = layer.discretized_system(torch.complex128, step_rescale=step_rescale)
    if C.shape[0] != 1:
        raise ValueError("exact_pair=True supports unidirectional layers only (a bidirectional pair's anti-causal "
                         "term has no closed form here); use exact_pair=false with bidirectional models")
    return pair_peak_gain_sq(lam, B, C[0])
