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

import copy
from typing import Any

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
        return activate(self, y, self.drop)

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

    # -- streaming ------------------------------------------------------------------------------
    def streaming(self, frame: int = 1, step_rescale: float | None = None, chunk: int | None = None
                  ) -> StreamingBlock:
        """A frozen streaming copy of this block (inference semantics: BatchNorm's running
        statistics, no dropout); see :meth:`DiagonalSSM.streaming`."""
        return StreamingBlock(self, frame, step_rescale, chunk)

    def step(self, x: torch.Tensor, state: torch.Tensor, step_rescale: float | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: real [B, T, H]`` (a frame) and the SSM's state → ``(block output [B, T, H], state)``,
        as :meth:`forward` in eval mode over the concatenated stream."""
        with torch.no_grad():
            return self.streaming(x.shape[1], step_rescale)(x.float(), state)


def activate(block: Any, y: torch.Tensor, drop: nn.Module | None) -> torch.Tensor:
    """The block's activation variant (module docstring) on the SSM output ``y: [..., H]``.

    ``block`` supplies ``activation``, ``gelu_approximate`` and the variant's linears (``out1``,
    ``out2``, ``out``), so :class:`ResidualBlock` and its :class:`StreamingBlock` share this code;
    ``drop=None`` means no dropout.
    """
    drop = drop if drop is not None else (lambda t: t)
    g = drop(F.gelu(y, approximate=block.gelu_approximate))
    if block.activation == "gelu":
        return g
    if block.activation == "full_glu":
        g = block.out1(g) * torch.sigmoid(block.out2(g))
    elif block.activation == "half_glu1":
        g = g * torch.sigmoid(block.out2(g))
    elif block.activation == "half_glu2":
        g = y * torch.sigmoid(block.out2(g))
    else:  # glu
        g = F.glu(block.out(g), dim=-1)
    return drop(g)


class StreamingNorm(nn.Module):
    """A :class:`SequenceNorm` frozen for inference over the last dimension of any ``[..., H]``:
    BatchNorm as the affine map of its running statistics, LayerNorm per step."""

    def __init__(self, norm: SequenceNorm) -> None:
        super().__init__()
        self.kind = norm.kind
        inner = norm.norm
        with torch.no_grad():
            ones = torch.ones(inner.normalized_shape if self.kind == "layer" else inner.num_features,
                              device=inner.weight.device if inner.weight is not None else None)
            weight = inner.weight.detach().clone() if inner.weight is not None else ones
            bias = inner.bias.detach().clone() if inner.bias is not None else torch.zeros_like(ones)
            if self.kind == "batch":
                if inner.running_mean is None:
                    raise ValueError("a BatchNorm without running statistics (track_running_stats=False) "
                                     "normalizes by batch statistics and cannot stream")
                scale = weight / torch.sqrt(inner.running_var + inner.eps)
                self.register_buffer("scale", scale.float())
                self.register_buffer("shift", (bias - inner.running_mean * scale).float())
            else:
                self.register_buffer("weight", weight.float())
                self.register_buffer("bias", bias.float())
                self.shape, self.eps = tuple(inner.normalized_shape), float(inner.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "batch":
            return torch.addcmul(self.shift, x, self.scale)
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


class StreamingBlock(nn.Module):
    """A :class:`ResidualBlock` frozen for streaming: ``forward(x [B, frame, H], state)`` →
    ``(y [B, frame, H], state)`` with the SSM as :class:`~ssmlit.models.recurrence.StreamingSSM`."""

    def __init__(self, block: ResidualBlock, frame: int = 1, step_rescale: float | None = None,
                 chunk: int | None = None) -> None:
        super().__init__()
        self.ssm = block.ssm.streaming(frame, step_rescale, chunk)
        self.norm = StreamingNorm(block.norm)
        self.prenorm, self.activation = block.prenorm, block.activation
        self.gelu_approximate = block.gelu_approximate
        for name in ("out1", "out2", "out"):
            if hasattr(block, name):
                setattr(self, name, copy.deepcopy(getattr(block, name)).requires_grad_(False))

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.norm(x) if self.prenorm else x
        y, state = self.ssm(z, state)
        z = x + activate(self, y, None)
        return (z if self.prenorm else self.norm(z)), state
