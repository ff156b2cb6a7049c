"""Residual SSM blocks: normalization, the SSM, the activation/gating variant, dropout.

The variants follow S5's ``SequenceLayer`` (``s5/layers.py``) and S4's ``S4Block``:

- ``gelu``:      x = drop(gelu(x))
- ``full_glu``:  x = drop(gelu(x)); x = out1(x)·σ(out2(x)); x = drop(x)
- ``half_glu1``: x = drop(gelu(x)); x = x·σ(out2(x)); x = drop(x)                 (S5 default)
- ``half_glu2``: x1 = drop(gelu(x)); x = x·σ(out2(x1)); x = drop(x)   (gate from the GELU'd signal,
  applied to the raw SSM output; S5's ListOps/IMDB scripts)
- ``glu``:       x = drop(gelu(x)); x = GLU(Linear(H, 2H)(x)); x = drop(x)         (S4's output linear)

Dropout masks are tied over time (one mask per sample and channel), as S4's ``DropoutNd`` and S5's
time-broadcast dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmlit.errors import check_bool, check_float

from .base import DiagonalSSM
from .hippo import lecun_normal_

ACTIVATIONS = ("gelu", "full_glu", "half_glu1", "half_glu2", "glu")
NORMS = ("batch", "layer")


class TimeTiedDropout(nn.Module):
    """Dropout with one mask per (sample, channel), shared over time, for ``[B, L, H]`` inputs."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.drop = nn.Dropout1d(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop.p == 0:
            return x
        return self.drop(x.transpose(1, 2)).transpose(1, 2)  # Dropout1d zeroes whole channels of [B, H, L]


class SequenceNorm(nn.Module):
    """BatchNorm (statistics over batch × time) or LayerNorm over channels of ``[B, L, H]``."""

    def __init__(self, kind: str, d_model: int, bn_momentum: float = 0.1, ln_eps: float = 1e-5) -> None:
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")
        self.kind = kind
        self.norm = (nn.BatchNorm1d(d_model, momentum=bn_momentum) if kind == "batch"
                     else nn.LayerNorm(d_model, eps=ln_eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "batch":
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x)


def _dense(d_in: int, d_out: int) -> nn.Linear:
    # Flax Dense as used by S5: lecun_normal kernel, zero bias.
    lin = nn.Linear(d_in, d_out)
    lecun_normal_(lin.weight.data, fan_in=d_in)
    nn.init.zeros_(lin.bias)
    return lin


class ResidualBlock(nn.Module):
    """``x + Act(SSM(Norm(x)))`` (pre-norm) or ``Norm(x + Act(SSM(x)))`` (post-norm).

    Args:
        ssm: the diagonal SSM layer (S4D or S5).
        norm: ``"batch"`` or ``"layer"``.
        prenorm: normalize before the SSM (True) or after the residual sum (False).
        activation: one of ``ACTIVATIONS``.
        dropout: dropout probability (masks tied over time).
        gelu_approximate: ``"tanh"`` (Flax's default, S5) or ``"none"`` (exact, S4).
        bn_momentum: PyTorch BatchNorm momentum (Flax momentum m corresponds to 1 − m).
        ln_eps: LayerNorm epsilon (Flax uses 1e-6, PyTorch 1e-5).
    """

    def __init__(
        self,
        ssm: DiagonalSSM,
        norm: str = "batch",
        prenorm: bool = True,
        activation: str = "half_glu1",
        dropout: float = 0.0,
        gelu_approximate: str = "tanh",
        bn_momentum: float = 0.1,
        ln_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
        if gelu_approximate not in ("tanh", "none"):
            raise ValueError(f"gelu_approximate must be 'tanh' or 'none', got {gelu_approximate!r}")
        check_bool("prenorm", prenorm)
        check_float("dropout", dropout, 0, 1, high_open=True)
        check_float("bn_momentum", bn_momentum, 0, 1, low_open=True)
        check_float("ln_eps", ln_eps, 0, low_open=True)
        H = ssm.d_model
        self.ssm, self.prenorm, self.activation = ssm, prenorm, activation
        self.gelu_approximate = gelu_approximate
        self.norm = SequenceNorm(norm, H, bn_momentum, ln_eps)
        self.drop = TimeTiedDropout(dropout)
        if activation == "full_glu":
            self.out1, self.out2 = _dense(H, H), _dense(H, H)
        elif activation in ("half_glu1", "half_glu2"):
            self.out2 = _dense(H, H)
        elif activation == "glu":
            self.out = nn.Linear(H, 2 * H)

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        g = self.drop(F.gelu(y, approximate=self.gelu_approximate))
        if self.activation == "gelu":
            return g
        if self.activation == "full_glu":
            g = self.out1(g) * torch.sigmoid(self.out2(g))
        elif self.activation == "half_glu1":
            g = g * torch.sigmoid(self.out2(g))
        elif self.activation == "half_glu2":
            g = y * torch.sigmoid(self.out2(g))
        else:  # glu
            g = F.glu(self.out(g), dim=-1)
        return self.drop(g)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, step_rescale: float | None = None
    ) -> torch.Tensor:
        """``x: real [B, L, H]``; ``valid: bool [B, L]`` marks non-padding steps (padding is zeroed
        before the SSM, so neither direction of a bidirectional layer reads it)."""
        z = self.norm(x) if self.prenorm else x
        if valid is not None:
            z = z * valid[..., None]
        z = x + self._activate(self.ssm(z, step_rescale))
        return z if self.prenorm else self.norm(z)
