"""SequenceModel: encoder → residual SSM blocks → pooling → decoder (or the two-document retrieval head)."""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ssmlit.errors import check_bool, check_int
from ssmlit.utils import atomic_write_bytes

from .base import DiagonalSSM
from .blocks import ResidualBlock, SequenceNorm, StreamingBlock, StreamingNorm
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
        mask_padding: zero the padding (steps ≥ length) before every SSM, so no layer reads it
            (default). False is S5's behaviour: the SSMs see the padding (the backward scan carries
            it into valid steps) and only the pooling uses the lengths.
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
        mask_padding: bool = True,
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
        if not isinstance(mask_padding, bool):
            raise ValueError(f"mask_padding must be true or false, got {mask_padding!r}")
        per_layer = [dict(ssm or {})] * n_layers if ssm is None or isinstance(ssm, Mapping) \
            else [dict(s) for s in ssm]
        if len(per_layer) != n_layers:
            raise ValueError(f"ssm lists {len(per_layer)} layer configs but n_layers={n_layers}")
        self._config = dict(
            d_output=d_output, d_input=d_input, vocab_size=vocab_size, layer=layer, d_model=d_model,
            n_layers=n_layers, norm=norm, prenorm=prenorm, final_norm=final_norm,
            activation=activation, dropout=dropout, gelu_approximate=gelu_approximate,
            bn_momentum=bn_momentum, ln_eps=ln_eps, pooling=pooling, retrieval=retrieval, mask_padding=mask_padding,
        )
        self.pooling, self.retrieval, self.tokens = pooling, retrieval, vocab_size is not None
        self.mask_padding = bool(mask_padding)
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
            h = block(h, valid if self.mask_padding else None, step_rescale)
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


    # -- streaming ------------------------------------------------------------------------------
    def streaming(self, frame: int = 1, step_rescale: float | None = None, chunk: int | None = None
                  ) -> StreamingModel:
        """A frozen, real-valued streaming copy of this model that consumes ``frame`` steps per call
        (see :class:`StreamingModel`). Raises ValueError for models that cannot stream
        (bidirectional layers, the two-document retrieval head)."""
        return StreamingModel(self, frame, step_rescale, chunk)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        """Zero stream state for :meth:`step` (layout: :meth:`StreamingModel.init_state`)."""
        return self.streaming().init_state(batch, device)

    def step(self, x: torch.Tensor, state: Sequence[torch.Tensor], step_rescale: float | None = None
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Feed the next step(s) of a stream and read the logits so far.

        After the stream's L-th step the logits equal ``model(x[:, :L])`` in eval mode (BatchNorm's
        running statistics, no dropout): the readout is the running mean of the pooled features
        (``pooling="mean"``) or the last step's (``"last"``), then the decoder. Inference only; the
        streaming copy is rebuilt per call, so for a fast loop build :meth:`streaming` once.

        Args:
            x: one step ``[B, d_input]`` (tokens: long ``[B]``) or a frame ``[B, T, d_input]``
                (tokens ``[B, T]``), scanned in parallel inside the frame.
            state: from :meth:`init_state` or the previous call.
            step_rescale: multiplies every Δ of every SSM (a stream sampled at another rate).

        Returns:
            ``(logits float32 [B, d_output], state)``.
        """
        one = x.dim() == (1 if self.tokens else 2)
        frame = x[:, None] if one else x
        if frame.dim() != (2 if self.tokens else 3):
            want = "[batch] or [batch, T] token ids" if self.tokens else "[batch, d_input] or [batch, T, d_input]"
            raise ValueError(f"SequenceModel.step expects {want}, got {tuple(x.shape)}")
        with torch.no_grad():
            return self.streaming(frame.shape[1], step_rescale)(frame if self.tokens else frame.float(), tuple(state))


class StreamingModel(nn.Module):
    """A :class:`SequenceModel` frozen for streaming inference, in real float32 arithmetic only, so
    that ``torch.export`` and ONNX can capture it (``ssmlit.export``).

    ``forward(x, state) → (logits, state)`` consumes exactly ``frame`` steps: ``x`` is float32
    ``[B, frame, d_input]`` (tokens: int64 ``[B, frame]``). The state is a tuple
    ``(x_1, …, x_L, pooled, count)``: ``x_l: float32 [B, n_l, 2]`` the real and imaginary parts of
    layer l's kept states, ``pooled: [B, H]`` the running mean of the final features (``"last"``:
    the last step's features) and ``count: [B, 1]`` the steps seen. Logits: float32 [B, d_output].

    Args:
        model: the source model (copied: later changes do not reach this module).
        frame: steps per call.
        step_rescale: multiplies every Δ (default: each layer's own).
        chunk: chunk length of the frame scan (default: the power of two at or above √frame).
    """

    def __init__(self, model: SequenceModel, frame: int = 1, step_rescale: float | None = None,
                 chunk: int | None = None) -> None:
        super().__init__()
        if model.retrieval:
            raise ValueError("a retrieval model (two documents compared after pooling) cannot stream; "
                             "streaming needs one input sequence")
        for i, layer in enumerate(model.ssm_layers()):
            try:
                layer.check_streamable()
            except ValueError as e:
                raise ValueError(f"layer {i}: {e}") from None
        self.frame, self.pooling, self.tokens = frame, model.pooling, model.tokens
        self.d_model = model.encoder.embedding_dim if self.tokens else model.encoder.out_features
        self.d_input = None if self.tokens else model.encoder.in_features
        self.d_output = model.head.out_features
        self.encoder = copy.deepcopy(model.encoder).requires_grad_(False)
        self.blocks = nn.ModuleList(StreamingBlock(b, frame, step_rescale, chunk) for b in model.blocks)
        self.final_norm = StreamingNorm(model.final_norm) if model.final_norm is not None else None
        self.head = copy.deepcopy(model.head).requires_grad_(False)
        self.eval()

    def state_shapes(self) -> list[tuple[str, list[int]]]:
        """Name and per-sample shape of every state tensor, in order."""
        return ([(f"state_{i}", [b.ssm.n, 2]) for i, b in enumerate(self.blocks)]
                + [("pooled", [self.d_model]), ("count", [1])])

    def init_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        """The state of an empty stream: zeros (module docstring)."""
        device = self.head.weight.device if device is None else device
        return tuple(torch.zeros(batch, *shape, device=device) for _, shape in self.state_shapes())

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if len(state) != len(self.blocks) + 2:
            raise ValueError(f"state must hold {len(self.blocks) + 2} tensors (one per layer, pooled, count), "
                             f"got {len(state)}")
        want = (x.shape[0], self.frame) if self.tokens else (x.shape[0], self.frame, self.d_input)
        if tuple(x.shape) != want:
            raise ValueError(f"this streaming model takes frames of shape [batch, {', '.join(map(str, want[1:]))}], "
                             f"got {tuple(x.shape)}")
        h = self.encoder(x)
        new = []
        for block, s in zip(self.blocks, state):
            h, s = block(h, s)
            new.append(s)
        if self.final_norm is not None:
            h = self.final_norm(h)
        pooled, count = state[-2], state[-1]
        if self.pooling == "last":
            pooled = h[:, -1]
        else:
            # (count·mean + Σ h) / (count + T), written as an update that stays O(1) in size.
            count = count + self.frame
            pooled = pooled + (h.sum(1) - self.frame * pooled) / count
        return self.head(pooled), (*new, pooled, count)


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
