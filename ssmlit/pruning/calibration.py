"""Data-aware scores: the energy each state actually contributes to its layer's output on real inputs.

LAST bounds a state's effect on the output by its H∞ norm (Eq. 2/4: ‖y_i‖₂ ≤ ‖G_i‖∞‖u‖₂) for
the worst input; AIRE weighs it by its impulse-response energy (a white-noise input). This module
measures it on the inputs the layer really receives. For every state i of every prunable layer,
over a few calibration batches from the training split,

    E_i = Σ_{b} Σ_{k < len_b} ‖2·Re(C_i^f x^f_{i,b,k} + C_i^b x^b_{i,b,k})‖²,

the energy of the state's own term of the SSM output y (the second direction only in
bidirectional layers, whose two scans share λ̄ and B̄ and are removed together), summed over the
valid (non-padding) steps of each sequence. The per-layer energies are then normalized as Eq. (9)
and selected globally, like LAST (method ``data_energy``).

One forward pass of the model per calibration batch (eval mode: BatchNorm running statistics, no
dropout) with a forward hook on every prunable layer. The hook receives the layer's real input u
[B, L, H] and recomputes the state trajectories from the protocol (``discretized_system`` in the
layer's own float32 precision, the same scan algorithm), so it works on any layer implementing the
diagonal-system protocol. With x = a + jb per direction, v = (a^f, b^f, a^b, b^b) ∈ ℝ^{2d} and
w_h = (Re C^f_{h,i}, −Im C^f_{h,i}, Re C^b_{h,i}, −Im C^b_{h,i}), the output term is 2 w_hᵀv, so
E_i = 4·tr(W_i M_i) with W_i = Σ_h w_h w_hᵀ and M_i = Σ_{b,k valid} v vᵀ: only the 2d×2d second
moments M_i are accumulated (float64), never the [n, B, L, H] per-state outputs. Layers whose B̄ rows
and C columns each touch one channel (S4D as a block-diagonal MIMO system) take that channel alone.

Deterministic given the model and the batches; :func:`calibration_batches` draws the batches from
the training split with a seeded generator.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ssmlit.models.scan_autograd import diagonal_recurrence

from .plan import prunable_layers

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# States whose trajectories are held at once: bounds the [chunk, B, L] complex buffers to ~64 MiB.
_CHUNK_ELEMENTS = 1 << 23


def check_calibration_batches(n: Any, what: str = "calibration_batches") -> int:
    """A positive integer number of calibration batches, else a ValueError naming ``what``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a positive integer (training batches used by data-aware methods), "
                         f"got {n!r}")
    return n


def calibration_batches(datamodule: Any, n_batches: int, seed: int = 0, batch_size: int | None = None) -> list[Batch]:
    """``n_batches`` batches of the training split, drawn without replacement by a seeded permutation
    and collated by the data module (``(x, y, lengths)``; the same batches for the same seed).

    Args:
        datamodule: a set-up :class:`~ssmlit.data.SequenceDataModule` (``train_set``, ``collate``,
            ``batch_size``).
        n_batches: number of batches (fewer if the split is smaller).
        seed: seed of the permutation.
        batch_size: default: the data module's training batch size.
    """
    check_calibration_batches(n_batches)
    dataset = getattr(datamodule, "train_set", None)
    if dataset is None:
        raise RuntimeError("calibration needs the data module's training split: call setup('fit') first")
    bs = int(batch_size or datamodule.batch_size)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[: n_batches * bs]
    return [datamodule.collate([dataset[int(i)] for i in order[j: j + bs]]) for j in range(0, len(order), bs)]


def _channel_of(B_bar: torch.Tensor) -> torch.Tensor | None:
    """long [n]: the one input channel each row of B̄ [n, H] touches, or None if some row touches
    several (a general MIMO layer such as S5)."""
    nonzero = B_bar != 0
    if B_bar.shape[1] > 1 and not bool((nonzero.sum(1) <= 1).all()):
        return None
    return nonzero.to(torch.int8).argmax(1)


class _LayerEnergy:
    """Accumulates the second moments M_i of one layer over calibration batches (module docstring)."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.moments: torch.Tensor | None = None  # float64 [n, 2d, 2d]
        self.steps = 0

    @torch.no_grad()
    def add(self, u: torch.Tensor, valid: torch.Tensor | None, step_rescale: float | None) -> None:
        layer = self.layer
        lam, B_bar, C = layer.discretized_system(torch.complex64, step_rescale=step_rescale)
        lam, B_bar = lam.to(u.device), B_bar.to(u.device)
        d = C.shape[0]
        Bsz, L, H = u.shape
        u = u.float()
        log_lam = torch.log(lam)
        # the layer's own scan engine (S4D has none: "auto" picks the device's default)
        engine = getattr(layer, "scan", "auto")
        chunk_size = getattr(layer, "chunk_size", 64)
        ch = _channel_of(B_bar)
        n = lam.numel()
        if self.moments is None:
            self.moments = torch.zeros(n, 2 * d, 2 * d, dtype=torch.float64, device=u.device)
        w = valid.to(torch.float32)[None] if valid is not None else None  # [1, B, L]
        uT = u.permute(2, 0, 1)  # [H, B, L]
        per = max(1, _CHUNK_ELEMENTS // max(1, Bsz * L))
        for s in range(0, n, per):
            idx = slice(s, min(n, s + per))
            if ch is not None:  # one input channel per state: B̄_i,h(i)·u_h(i), no [n, H] matmul
                gain = B_bar[idx].gather(1, ch[idx, None]).squeeze(1)
                drive = gain[:, None, None] * uT[ch[idx]]
            else:
                Bc = B_bar[idx]
                flat = u.reshape(Bsz * L, H).T
                drive = torch.complex(Bc.real @ flat, Bc.imag @ flat).view(-1, Bsz, L)
            xs = diagonal_recurrence(log_lam[idx], drive.permute(1, 2, 0).contiguous(), bidirectional=d == 2,
                                     engine=engine, chunk_size=chunk_size)  # [B, L, d, chunk]
            v = torch.view_as_real(xs).permute(3, 2, 4, 0, 1).reshape(-1, 2 * d, Bsz, L)  # [chunk, 2d, B, L]
            vw = v if w is None else v * w[:, None]
            self.moments[idx] += torch.einsum("nibl,njbl->nij", vw.double(), v.double())
        self.steps += int(valid.sum()) if valid is not None else Bsz * L

    def energies(self) -> torch.Tensor:
        """E_i = 4·tr(W_i M_i): float64 [n] on the CPU."""
        _, _, C = self.layer.discretized_system(torch.complex128)
        C = C.cpu()
        parts = []
        for k in range(C.shape[0]):
            parts += [C[k].real, -C[k].imag]
        w = torch.stack(parts, 0)  # [2d, H, n]
        W = torch.einsum("ihn,jhn->nij", w, w)
        M = self.moments.to("cpu", torch.float64)
        E = 4 * (W * M).sum((1, 2))
        # An unstable pole's trajectory overflows float32 on long inputs and its moments hold
        # inf − inf = NaN; one NaN would make every Eq. 9 prefix sum of the layer NaN (all scores 0).
        # Its energy is unbounded: +inf, never pruned, as the computed scores treat unstable poles.
        bad = ~torch.isfinite(E)
        if bool(bad.any()):
            warnings.warn(f"{int(bad.sum())} state(s) measured a non-finite energy (unstable, |λ̄| ≥ 1?): they "
                          "get energy +inf and are never pruned", RuntimeWarning, stacklevel=3)
            E = torch.where(bad, torch.full_like(E, float("inf")), E)
        return E


@torch.no_grad()
def calibrate(
    model: nn.Module, batches: Iterable[Batch], device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Measured output energy of every state of every prunable layer (module docstring).

    Args:
        model: called as ``model(x, lengths)`` (a :class:`~ssmlit.models.SequenceModel` or the
            LightningModule around it); run in eval mode, restored afterwards.
        batches: ``(x, y, lengths)`` batches (see :func:`calibration_batches`); ``lengths`` marks
            the valid steps (retrieval [B, 2] pairs are flattened as the model flattens them).
        device: where to run (default: the model's parameters' device).

    Returns:
        layer name (as :func:`~ssmlit.pruning.prunable_layers`) → float64 [n] energies on the CPU.
    """
    layers = prunable_layers(model)
    if device is None:
        device = next(iter(model.parameters())).device
    acc = {name: _LayerEnergy(layer) for name, layer in layers.items()}
    current: dict[str, torch.Tensor | None] = {"lengths": None}

    def hook(name: str):
        def fn(module: nn.Module, args: Sequence[Any], kwargs: dict[str, Any], output: Any) -> None:
            u = args[0]
            rescale = args[1] if len(args) > 1 else kwargs.get("step_rescale")
            lengths = current["lengths"]
            valid = None
            if lengths is not None:
                valid = torch.arange(u.shape[1], device=u.device)[None, :] < lengths.reshape(-1)[:, None]
                if valid.shape[0] != u.shape[0]:
                    raise ValueError(f"layer {name!r} saw {u.shape[0]} sequences but the batch has "
                                     f"{valid.shape[0]} lengths")
            acc[name].add(u, valid, rescale)
        return fn

    was_training = model.training
    handles = [layer.register_forward_hook(hook(name), with_kwargs=True) for name, layer in layers.items()]
    n_batches = 0
    try:
        model.eval()
        ctx = torch.inference_mode() if not torch.is_inference_mode_enabled() else contextlib.nullcontext()
        with ctx:
            for x, _, lengths in batches:
                current["lengths"] = lengths.to(device)
                model(x.to(device), current["lengths"])
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("calibration needs at least one batch")
    return {name: a.energies() for name, a in acc.items()}
