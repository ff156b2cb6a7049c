"""Discretization of a diagonal continuous-time system (shared by S4D and S5).

For a diagonal Λ and timescale Δ (broadcast together):

- ZOH:      λ̄ = exp(ΛΔ),                         B̄ = ((λ̄ − 1)/Λ)·B
- bilinear: λ̄ = (1 + ΔΛ/2)/(1 − ΔΛ/2),            B̄ = (Δ/(1 − ΔΛ/2))·B

We return log λ̄ as well, because every fast path (Vandermonde kernels, chunked scans, FFT
convolutions) needs integer powers λ̄^k = exp(k·log λ̄), and taking them from log λ̄ is both exact in
the branch (k is an integer) and cheaper than repeated products.
"""

from __future__ import annotations

import torch

DISCRETIZATIONS = ("zoh", "bilinear")


def _expm1_complex(z: torch.Tensor) -> torch.Tensor:
    """exp(z) − 1 without the cancellation of ``exp(z) - 1`` when |z| is small.

    With z = x + iy: exp(z) − 1 = (expm1(x)·cos y − 2 sin²(y/2)) + i·exp(x)·sin y.
    """
    x, y = z.real, z.imag
    re = torch.expm1(x) * torch.cos(y) - 2 * torch.sin(y / 2) ** 2
    im = torch.exp(x) * torch.sin(y)
    return torch.complex(re, im)


def discretize(
    Lambda: torch.Tensor, Delta: torch.Tensor, method: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Discretize a diagonal system.

    Args:
        Lambda: complex [...], continuous-time eigenvalues (Re < 0 for stability).
        Delta: real [...] broadcastable with ``Lambda``, the step sizes (already multiplied by
            ``step_rescale``).
        method: ``"zoh"`` or ``"bilinear"``.

    Returns:
        ``(log_lam_bar, lam_bar, gamma)``, each complex with the broadcast shape, where
        B̄ = gamma·B row-wise.
    """
    dL = Lambda * Delta
    if method == "zoh":
        log_lam_bar = dL
        lam_bar = torch.exp(dL)
        gamma = _expm1_complex(dL) / Lambda
    elif method == "bilinear":
        den = 1 - dL / 2
        lam_bar = (1 + dL / 2) / den
        log_lam_bar = torch.log(1 + dL / 2) - torch.log(den)
        gamma = Delta / den
    else:
        raise ValueError(f"unknown discretization {method!r}; choose one of {DISCRETIZATIONS}")
    return log_lam_bar, lam_bar, gamma
