"""SequenceModel: encoder → residual SSM blocks → pooling → decoder (or the two-document retrieval head)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ssmlit.errors import check_bool, check_int
from ssmlit.utils import atomic_write_bytes

from .base import DiagonalSSM
from .blocks import ResidualBlock, SequenceNorm
from .s4d import S4D
from .s5 import S5

LAYERS: dict[str, type[DiagonalSSM]] = {"s5": S5, "s4d": S4D}
POOLINGS = ("mean", "last")


def valid_mask(lengths: torch.Tensor | None, L: int) -> torch.Tensor | None:
    """bool [B, L] with True on the first ``lengths[b]`` steps of each row (right padding)."""
    if lengths is None:
        return None
    return torch.arange(L, device=lengths.device)[None, :] < lengths[:, None]


class SequenceModel(nn.Module):
    """A deep diagonal SSM classifier.

    Args:
        d_output: number of classes.
        d_input: channels of real-valued inputs ``[B, L, d_input]`` (Linear encoder), or
        vocab_size: vocabulary of token inputs ``[B, L]`` (Embedding encoder). Exactly one is set.
        layer: ``"s5"`` or ``"s4d"``.
        d_model: H, the width of every block.
        n_layers: number of residual blocks.
        ssm: keyword arguments of the SSM layer (``S5``/``S4D`` without ``d_model``), either one
            mapping for every block or a list with one mapping per block (compacted models have
            different state sizes per block).
        norm, prenorm, activation, dropout, gelu_approximate, bn_momentum, ln_eps: see
            :class:`~ssmlit.models.blocks.ResidualBlock`.
        final_norm: apply a norm after the last block (S4 does with pre-norm; S5 never does).
        pooling: ``"mean"`` over valid steps or ``"last"`` valid step.
        retrieval: two-document mode (LRA retrieval): inputs ``[B, 2, L(, d_input)]`` and lengths
            ``[B, 2]``; each document is encoded with shared weights and pooled, and the features
            [u, v, u − v, u·v] go through Linear(4H, H) → GELU → Linear(H, d_output).
    """

    def __init__(
        self,
        d_output: int,
        d_input: int | None = None,
        vocab_size: int | None = None,
        layer: str = "s5",
        d_model: int = 128,
        n_layers: int = 4,
        ssm: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        norm: str = "batch",
        prenorm: bool = True,
        final_norm: bool = False,
        activation: str = "half_glu1",
        dropout: float = 0.0,
        gelu_approximate: str = "tanh",
        bn_momentum: float = 0.1,
        ln_eps: float = 1e-5,
        pooling: str = "mean",
        retrieval: bool = False,
    ) -> None:
        super().__init__()
        if (d_input is None) == (vocab_size is None):
            raise ValueError("set exactly one of d_input (real-valued inputs) and vocab_size (tokens); "
                             f"got d_input={d_input}, vocab_size={vocab_size}")
        if layer not in LAYERS:
            raise ValueError(f"unknown layer {layer!r}; choose one of {sorted(LAYERS)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        check_int("d_output", d_output, 1)
        check_int("d_input", d_input, 1, allow_none=True)
        check_int("vocab_size", vocab_size, 1, allow_none=True)
        check_int("d_model", d_model, 1)
        check_int("n_layers", n_layers, 1)
        for name, flag in (("prenorm", prenorm), ("final_norm", final_norm), ("retrieval", retrieval)):
            check_bool(name, flag)
        per_layer = [dict(ssm or {})] * n_layers if ssm is None or isinstance(ssm, Mapping) \
            else [dict(s) for s in ssm]
        if len(per_layer) != n_layers:
            raise ValueError(f"ssm lists {len(per_layer)} layer configs but n_layers={n_layers}")
        self._config = dict(
            d_output=d_output, d_input=d_input, vocab_size=vocab_size, layer=layer, d_model=d_model,
            n_layers=n_layers, norm=norm, prenorm=prenorm, final_norm=final_norm,
            activation=activation, dropout=dropout, gelu_approximate=gelu_approximate,
            bn_momentum=bn_momentum, ln_eps=ln_eps, pooling=pooling, retrieval=retrieval,
        )
        self.pooling, self.retrieval, self.tokens = pooling, retrieval, vocab_size is not None
        self.encoder = nn.Embedding(vocab_size, d_model) if self.tokens else nn.Linear(d_input, d_model)
        cls = LAYERS[layer]
        self.blocks = nn.ModuleList(
            ResidualBlock(cls(d_model, **{k: v for k, v in cfg.items() if k != "d_model"}), norm=norm,
                          prenorm=prenorm, activation=activation, dropout=dropout,
                          gelu_approximate=gelu_approximate, bn_momentum=bn_momentum, ln_eps=ln_eps)
            for cfg in per_layer
        )
        self.final_norm = SequenceNorm(norm, d_model, bn_momentum, ln_eps) if final_norm else None
        if retrieval:
            self.head = nn.Sequential(nn.Linear(4 * d_model, d_model), nn.GELU(), nn.Linear(d_model, d_output))
        else:
            self.head = nn.Linear(d_model, d_output)

    def ssm_layers(self) -> list[DiagonalSSM]:
        return [b.ssm for b in self.blocks]

    def config(self) -> dict[str, Any]:
        """Constructor arguments rebuilding this model, with each block's current SSM shapes."""
        return self._config | {"ssm": [s.config() for s in self.ssm_layers()]}

    def features(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, step_rescale: float | None = None
    ) -> torch.Tensor:
        """Encode and pool: ``x: [B, L]`` tokens or ``[B, L, d_input]`` reals → ``[B, H]``."""
        L = x.shape[1]
        if lengths is not None and (lengths.min() < 1 or lengths.max() > L):
            raise ValueError(f"lengths must lie in [1, {L}] (the padded length), got "
                             f"[{int(lengths.min())}, {int(lengths.max())}]")
        valid = valid_mask(lengths, L)
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h, valid, step_rescale)
        if self.final_norm is not None:
            h = self.final_norm(h)
        if self.pooling == "last":
            if lengths is None:
                return h[:, -1]
            return h[torch.arange(h.shape[0], device=h.device), lengths - 1]
        if valid is None:
            return h.mean(1)
        return (h * valid[..., None]).sum(1) / lengths[:, None].to(h.dtype)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, step_rescale: float | None = None
    ) -> torch.Tensor:
        """Class logits ``[B, d_output]``.

        Args:
            x: long [B, L] tokens, or real [B, L, d_input]; in retrieval mode [B, 2, L(, d_input)].
            lengths: long [B] valid lengths (right padding), or [B, 2] in retrieval mode; None means
                every step is valid.
            step_rescale: multiplies every Δ of every SSM for this call (zero-shot resolution change).
        """
        if not self.retrieval:
            return self.head(self.features(x, lengths, step_rescale))
        if x.shape[1] != 2:
            raise ValueError(f"retrieval mode expects inputs [B, 2, L, ...], got {tuple(x.shape)}")
        B = x.shape[0]
        feats = self.features(x.flatten(0, 1), None if lengths is None else lengths.reshape(-1), step_rescale)
        u, v = feats.view(B, 2, -1).unbind(1)
        return self.head(torch.cat((u, v, u - v, u * v), -1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_model(model: SequenceModel, path: str | os.PathLike) -> None:
    """Save ``{"config": model.config(), "state_dict": ...}`` atomically (temp file + rename).

    ``config()`` records each block's current SSM shapes, so compacted (pruned) models, whose
    layers have different state sizes, rebuild exactly with :func:`load_model`.
    """
    buf = io.BytesIO()
    torch.save({"format": "ssmlit.SequenceModel/1", "config": model.config(), "state_dict": model.state_dict()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SequenceModel:
    """Rebuild a model written by :func:`save_model` (loaded with ``weights_only=True``)."""
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no model file at {path}") from None
    if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} is not a model saved by ssmlit.models.save_model (expected keys config, state_dict)")
    model = SequenceModel(**blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model
