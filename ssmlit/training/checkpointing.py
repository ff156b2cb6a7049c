"""Checkpoints a run can be resumed from exactly: what is saved, when, how, and the randomness.

- ``checkpoints/best-<epoch>.ckpt``: best by ``checkpoint.monitor`` (a monitored ModelCheckpoint).
- ``checkpoints/last.ckpt``: the end of the last finished epoch, always (a second ModelCheckpoint
  without a monitor; ``save_last=True`` on the monitored one rewrites it only when the monitored
  metric improves, so after non-improving epochs it held an old epoch).
- Files are written by :class:`AtomicCheckpointIO`: temp file + rename, umask permissions.
- :class:`EpochSeed` reseeds torch, NumPy and ``random`` from ``(seed, epoch)`` before every
  training epoch, and the training sampler is epoch-seeded too
  (:class:`ssmlit.data.base.EpochShuffleSampler`), so an epoch's randomness (data order, dropout)
  does not depend on what ran before it in the same process: a run resumed from ``last.ckpt``
  trains exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ssmlit.utils import atomic_write_bytes

LAST_NAME = "last"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` writing through :func:`ssmlit.utils.atomic_write_bytes`:
    a killed save leaves the previous file intact, and the file gets the umask's ordinary
    permissions (Lightning's own transaction writes through ``mkstemp``: 0600)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())


def checkpoint_callbacks(out: Path, monitor: str, mode: str) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``(best, last)``: the monitored best checkpoint and the every-epoch ``last.ckpt``.

    The best one comes first: Lightning calls checkpoint callbacks in list order, so ``last.ckpt``
    already holds this epoch's best-tracking state (and a resume continues it correctly).
    """
    folder = out / "checkpoints"
    best = ModelCheckpoint(dirpath=folder, filename="best-{epoch:03d}", monitor=monitor, mode=mode, save_top_k=1,
                           auto_insert_metric_name=False)
    last = ModelCheckpoint(dirpath=folder, filename=LAST_NAME, monitor=None, save_top_k=1, every_n_epochs=1,
                           enable_version_counter=False)
    return best, last


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed mixed from ``(seed, epoch)`` (NumPy's SeedSequence: nearby inputs give
    unrelated streams)."""
    hi, lo = np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(2, np.uint32)
    return (int(hi) << 31 | int(lo) >> 1) & (2**63 - 1)


class EpochSeed(Callback):
    """Reseed every RNG from ``(seed, epoch)`` at the start of each training epoch.

    Lightning does not checkpoint RNG states; without this, the dropout masks of a resumed epoch
    would come from whatever state the restarted process happens to be in.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        s = epoch_seed(self.seed, trainer.current_epoch)
        torch.manual_seed(s)  # all devices
        np.random.seed(s % 2**32)
        random.seed(s)
