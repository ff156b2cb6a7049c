"""The task interface every data module implements.

A task is a :class:`SequenceDataModule`: a LightningDataModule that also says what the model must
look like (``model_kwargs``: input channels or vocabulary, classes, retrieval mode) and which
evaluation variants it has (``val_variants`` / ``test_variants``: e.g. Speech Commands' extra
8 kHz test loader evaluated with ``step_rescale=2``). Batches are ``(x, y, lengths)``:

- ``x``: real [B, L, d_input] or long [B, L] tokens, right-padded; retrieval: [B, 2, L(, d_input)];
- ``y``: long [B] class indices;
- ``lengths``: long [B] (retrieval: [B, 2]) valid lengths, 1 ≤ length ≤ L.

The model code never imports this module; ``train.py`` builds the model from ``model_kwargs()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class EvalVariant:
    """One evaluation dataloader: metrics are logged as ``{name}/acc`` and ``{name}/loss``, and the
    model is run with every Δ multiplied by ``step_rescale``."""

    name: str
    step_rescale: float = 1.0


def default_data_dir() -> Path:
    """``$SSMLIT_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("SSMLIT_DATA", "data"))


def pad_collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad variable-length ``(x, y)`` samples to the longest in the batch.

    ``x`` is [L_i] (tokens) or [L_i, d] (reals); in retrieval mode [2, L_i(, d)] per sample, where
    the pair's own padding is already applied and lengths are carried as a third element.
    """
    xs = [b[0] for b in batch]
    ys = torch.as_tensor([int(b[1]) for b in batch], dtype=torch.long)
    if len(batch[0]) == 3:  # (x, y, lengths) already known per sample (retrieval pairs)
        lengths = torch.stack([torch.as_tensor(b[2], dtype=torch.long) for b in batch])
        L = max(x.shape[1] for x in xs)
        x = torch.stack([torch.nn.functional.pad(x, _pad_spec(x, 1, L)) for x in xs])
        return x, ys, lengths
    lengths = torch.as_tensor([x.shape[0] for x in xs], dtype=torch.long)
    L = int(lengths.max())
    x = torch.stack([torch.nn.functional.pad(x, _pad_spec(x, 0, L)) for x in xs])
    return x, ys, lengths


def _pad_spec(x: torch.Tensor, time_dim: int, L: int) -> tuple[int, ...]:
    # F.pad lists dimensions from the last backwards; only the time dimension is padded (at its end).
    spec = [0, 0] * (x.dim() - time_dim - 1) + [0, L - x.shape[time_dim]]
    return tuple(spec)


class SequenceDataModule(pl.LightningDataModule):
    """Base class of all task data modules.

    Subclasses set ``num_classes``, ``l_max`` and either ``d_input`` or ``vocab_size`` (possibly only
    after :meth:`prepare_data`, e.g. a vocabulary built from the training split), implement
    :meth:`setup` to fill ``train_set``, ``val_set``, ``test_set`` (and ``extra_val_sets`` /
    ``extra_test_sets`` for additional :class:`EvalVariant` loaders), and may override
    :meth:`collate`.

    Args:
        batch_size: training batch size (per process under DDP).
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        num_workers: DataLoader workers.
        seed: seed of any split or permutation the task draws.
        data_dir: root under which raw data and caches are found (default ``$SSMLIT_DATA`` or
            ``./data``).
    """

    d_input: int | None = None
    vocab_size: int | None = None
    num_classes: int
    l_max: int
    retrieval: bool = False

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        data_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.extra_val_sets: list[tuple[EvalVariant, Dataset]] = []
        self.extra_test_sets: list[tuple[EvalVariant, Dataset]] = []

    # -- what the model needs to know --------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~ssmlit.models.SequenceModel` fixed by the task."""
        if self.d_input is None and self.vocab_size is None:
            raise RuntimeError(f"{type(self).__name__}: d_input/vocab_size unknown; call prepare_data() "
                               "and setup() before building the model")
        return dict(d_input=self.d_input, vocab_size=self.vocab_size, d_output=self.num_classes,
                    retrieval=self.retrieval)

    @property
    def val_variants(self) -> list[EvalVariant]:
        return [EvalVariant("val")] + [v for v, _ in self.extra_val_sets]

    @property
    def test_variants(self) -> list[EvalVariant]:
        return [EvalVariant("test")] + [v for v, _ in self.extra_test_sets]

    # -- loaders ---------------------------------------------------------------------------------
    def collate(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return pad_collate(batch)

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not built this split")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=False,  # evaluation must see every example (s4's drop_last=True loses some)
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.val_set, False)] + [self._loader(d, False) for _, d in self.extra_val_sets]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.test_set, False)] + [self._loader(d, False) for _, d in self.extra_test_sets]
