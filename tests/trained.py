"""Trained-like layers for the tests: every parameter moved away from its initialization, independently
per channel, per state and per SSM copy.

At initialization many things coincide that training pulls apart: S4D's ``n_ssm`` copies of (A, B)
are identical, S5's real parts are all exactly −½, and the Δ of a layer share one log-uniform draw.
Code that takes A or B from the wrong copy, or swaps two states, is invisible on such a model. After
:func:`perturb_like_trained` no two copies, channels or states share a value.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmlit.models import S4D, S5


@torch.no_grad()
def perturb_like_trained(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Perturb every S5/S4D layer inside ``module`` in place (and return ``module``).

    Real parts of the eigenvalues are scaled by e^{scale·ε} (they stay negative: stable), imaginary
    parts, B, C and D get relative Gaussian noise, and log-steps move by scale·ε, with ε ~ N(0, 1)
    drawn separately for every entry. Frozen S4D ``B`` buffers are moved too (a loaded checkpoint
    can hold any B).
    """
    g = torch.Generator().manual_seed(seed)

    def noise(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)

    def jitter_(t: torch.Tensor) -> None:
        t.add_(scale * noise(t) * t.abs().mean().clamp(min=1e-3))

    layers = [m for m in module.modules() if isinstance(m, (S5, S4D))]
    if not layers:
        raise TypeError(f"{type(module).__name__} holds no S5/S4D layer to perturb")
    for layer in layers:
        if isinstance(layer, S5):
            layer.Lambda_re.mul_(torch.exp(scale * noise(layer.Lambda_re)))
            jitter_(layer.Lambda_im)
            layer.log_step.add_(scale * noise(layer.log_step))
        else:
            layer.A_real.add_(scale * noise(layer.A_real))  # Re A = −exp(A_real) < 0 whatever it is
            jitter_(layer.A_imag)
            layer.log_dt.add_(scale * noise(layer.log_dt))
        jitter_(layer.B)
        jitter_(layer.C)
        jitter_(layer.D)
    return module


def slow_mode_(layer: nn.Module, index: int = 0, re: float = 1e-4) -> nn.Module:
    """Make one state slow (|λ̄| close to 1): continuous real part −``re`` at the layer's Δ."""
    with torch.no_grad():
        if isinstance(layer, S5):
            layer.Lambda_re[index] = -re
        else:
            layer.A_real.view(-1)[index] = math.log(re)
    return layer
