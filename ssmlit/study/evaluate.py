"""A plain evaluation loop over a task's validation and test loaders (no Lightning Trainer).

A sweep evaluates the same data dozens of times with different masks; a Trainer per point costs
more than the forward passes themselves on a small task. This loop computes exactly what
:class:`~ssmlit.training.SequenceClassifier` logs (micro accuracy and mean cross-entropy over
every example, ``drop_last=False``), runs each variant with its ``step_rescale``, and can keep the
collated batches in memory so that later passes skip the data pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Variant:
    """One evaluation dataloader.

    Attributes:
        name: metric prefix (``val``, ``test``, ``test_8khz``, ...).
        split: ``"val"`` or ``"test"``.
        step_rescale: Δ multiplier the model is run with on this loader.
        loader: yields ``(x, y, lengths)`` batches (see :mod:`ssmlit.data.base`).
    """

    name: str
    split: str
    step_rescale: float
    loader: DataLoader


@dataclass
class Metrics:
    """Exact counts of one evaluation of one variant.

    ``acc = correct / n`` and ``loss = loss_sum / n`` (mean cross-entropy per example), the same
    quantities the LightningModule logs as ``{name}/acc`` and ``{name}/loss``.
    """

    correct: int
    n: int
    loss_sum: float

    @property
    def acc(self) -> float:
        return self.correct / self.n

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n

    def as_dict(self) -> dict[str, float | int]:
        return {"acc": self.acc, "loss": self.loss, "correct": self.correct, "n": self.n}


def variants_of(datamodule: Any) -> list[Variant]:
    """The validation and test variants of a :class:`~ssmlit.data.SequenceDataModule`, in loader order."""
    out = []
    for split, variants, loaders in (("val", datamodule.val_variants, datamodule.val_dataloader()),
                                     ("test", datamodule.test_variants, datamodule.test_dataloader())):
        loaders = loaders if isinstance(loaders, Sequence) else [loaders]
        if len(variants) != len(loaders):
            raise ValueError(f"{type(datamodule).__name__} lists {len(variants)} {split} variants but returns "
                             f"{len(loaders)} {split} dataloaders")
        out += [Variant(v.name, split, float(v.step_rescale), dl) for v, dl in zip(variants, loaders)]
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluation variant names must be unique, got {names}")
    return out


class Evaluator:
    """Evaluate models on fixed variants, optionally from batches cached in memory.

    Args:
        variants: the loaders to evaluate (see :func:`variants_of`).
        device: where the model runs; batches are moved there per use.
        cache_max_bytes: keep the collated batches of every variant in (CPU) memory if they fit in
            this many bytes in total (0 disables caching). Sequences are read once instead of once
            per sweep point.
        limit_batches: evaluate only the first ``limit_batches`` batches of each loader (a partial,
            quick evaluation; ``None``: everything).
    """

    def __init__(
        self,
        variants: Sequence[Variant],
        device: torch.device | str = "cpu",
        cache_max_bytes: int = 1 << 30,
        limit_batches: int | None = None,
    ) -> None:
        if not variants:
            raise ValueError("no evaluation variants")
        self.variants = {v.name: v for v in variants}
        self.device = torch.device(device)
        self.cache_max_bytes = int(cache_max_bytes)
        self.limit_batches = limit_batches
        self._cache: dict[str, list[Batch]] = {}
        self._cached_bytes = 0
        self._cache_full = self.cache_max_bytes <= 0
        self.forward_passes = 0  # number of model evaluations of a whole variant (for reporting)

    @property
    def names(self) -> list[str]:
        return list(self.variants)

    def names_of(self, split: str) -> list[str]:
        return [n for n, v in self.variants.items() if v.split == split]

    # -- data ------------------------------------------------------------------------------------
    def batches(self, name: str) -> Iterator[Batch]:
        """The batches of one variant, from the cache when they are there."""
        if name in self._cache:
            yield from self._cache[name]
            return
        kept: list[Batch] | None = [] if not self._cache_full else None
        size = 0
        for i, batch in enumerate(self.variants[name].loader):
            if self.limit_batches is not None and i >= self.limit_batches:
                break
            if kept is not None:
                size += sum(t.element_size() * t.numel() for t in batch)
                if self._cached_bytes + size > self.cache_max_bytes:
                    kept, self._cache_full = None, True  # too large: stream this and later variants
                else:
                    kept.append(batch)
            yield batch
        if kept is not None:
            self._cache[name] = kept
            self._cached_bytes += size

    def first_batch(self, name: str = "test") -> Batch:
        """The first batch of a variant (the fixed input of throughput measurements)."""
        return next(iter(self.batches(name)))

    def _to(self, batch: Batch) -> Batch:
        non_blocking = self.device.type == "cuda"
        return tuple(t.to(self.device, non_blocking=non_blocking) for t in batch)  # type: ignore[return-value]

    # -- evaluation ------------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, model: nn.Module, names: Iterable[str] | None = None) -> dict[str, Metrics]:
        """Accuracy and loss of ``model`` on the given variants (default: all).

        The model is put in eval mode (BatchNorm uses its running statistics, dropout is off) and
        called as ``model(x, lengths, step_rescale)`` with x real [B, L, d] or long [B, L] (retrieval:
        [B, 2, L(, d)]), giving logits [B, classes].
        """
        model.eval()
        out = {}
        for name in (self.names if names is None else list(names)):
            rescale = self.variants[name].step_rescale
            correct, n, loss_sum = 0, 0, 0.0
            for batch in self.batches(name):
                x, y, lengths = self._to(batch)
                logits = model(x, lengths, rescale).float()
                # Sums over examples, divided once at the end: the exact per-example mean that
                # Lightning's batch-size-weighted epoch average also gives.
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(-1) == y).sum())
                n += int(y.numel())
            if n == 0:
                raise ValueError(f"evaluation variant {name!r} has no examples")
            out[name] = Metrics(correct, n, loss_sum)
            self.forward_passes += 1
        return out

    @torch.inference_mode()
    def logits(self, model: nn.Module, name: str) -> torch.Tensor:
        """Logits of every example of one variant, float32 [N, classes] on the CPU, in loader order."""
        model.eval()
        rescale = self.variants[name].step_rescale
        parts = []
        for batch in self.batches(name):
            x, _, lengths = self._to(batch)
            parts.append(model(x, lengths, rescale).float().cpu())
        return torch.cat(parts)
