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

import errno
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ssmlit.errors import check_bool, check_int

from .download import (
    _CORRUPT,
    DataError,
    DataNotFoundError,
    DownloadError,
    Source,
    build_cache,
    cache_path,
    fetch,
    missing_data_message,
    read_cache_meta,
)


@dataclass(frozen=True)
class EvalVariant:
    """One evaluation dataloader: metrics are logged as ``{name}/acc`` and ``{name}/loss``, and the
    model is run with every Δ multiplied by ``step_rescale``."""

    name: str
    step_rescale: float = 1.0


def default_data_dir() -> Path:
    """``$SSMLIT_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("SSMLIT_DATA", "data"))


def pad_collate(
    batch: list[tuple[torch.Tensor, int]], length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad variable-length ``(x, y)`` samples to the longest in the batch, or to ``length``.

    ``x`` is [L_i] (tokens) or [L_i, d] (reals); in retrieval mode [2, L_i(, d)] per sample, where
    the pair's own padding is already applied and lengths are carried as a third element.
    ``length`` (≥ every L_i) pads to a fixed size instead (S5 pads token tasks to l_max).
    """
    xs = [b[0] for b in batch]
    ys = torch.as_tensor([int(b[1]) for b in batch], dtype=torch.long)
    if len(batch[0]) == 3:  # (x, y, lengths) already known per sample (retrieval pairs)
        lengths = torch.stack([torch.as_tensor(b[2], dtype=torch.long) for b in batch])
        L = _padded_length(max(x.shape[1] for x in xs), length)
        x = torch.stack([torch.nn.functional.pad(x, _pad_spec(x, 1, L)) for x in xs])
        return x, ys, lengths
    lengths = torch.as_tensor([x.shape[0] for x in xs], dtype=torch.long)
    L = _padded_length(int(lengths.max()), length)
    x = torch.stack([torch.nn.functional.pad(x, _pad_spec(x, 0, L)) for x in xs])
    return x, ys, lengths


def _padded_length(longest: int, length: int | None) -> int:
    if length is None:
        return longest
    if longest > length:
        raise ValueError(f"a sample of length {longest} does not fit the fixed padded length {length}")
    return length


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
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1, allow_none=True) or batch_size
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.data_dir = Path(_check_path("data_dir", data_dir)) if data_dir is not None else default_data_dir()
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
        sampler = EpochShuffleSampler(len(dataset), _global_seed()) if train else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            generator=sampler.loader_generator if sampler is not None else None,
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


def _check_path(name: str, value: Any) -> Any:
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise ValueError(f"{name} must be a folder path or null, got {value!r}")
    return value


def _global_seed() -> int:
    """The run's seed: what ``lightning.seed_everything`` recorded, else torch's initial seed."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None and seed.lstrip("-").isdigit() else torch.initial_seed()


class EpochShuffleSampler(Sampler[int]):
    """A random order of ``range(n)`` per epoch that depends on ``(seed, epoch)`` alone.

    Lightning calls :meth:`set_epoch` before every training epoch, so a run resumed from an
    epoch-end checkpoint draws exactly the orders an uninterrupted run draws (a plain
    ``shuffle=True`` loader draws from the global RNG, whose state a checkpoint does not hold).
    ``loader_generator`` is meant as the DataLoader's ``generator``: reseeded per epoch as well, it
    gives the workers' base seeds, which would otherwise be one more draw from the global RNG
    (shifting every dropout mask after it). Under DDP Lightning wraps the sampler in its
    distributed sampler, which is epoch-seeded as well.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, int(seed)
        self.loader_generator = torch.Generator()
        self.set_epoch(0)

    def _epoch_seed(self, stream: int) -> int:
        state = np.random.SeedSequence([self.seed % 2**63, self.epoch, stream]).generate_state(2, np.uint32)
        return int(state[0]) << 31 | int(state[1]) >> 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.loader_generator.manual_seed(self._epoch_seed(1))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self._epoch_seed(0))
        return iter(torch.randperm(self.n, generator=generator).tolist())


def split_sizes(n: int, fracs: Sequence[float]) -> list[int]:
    """Sizes ``[n − Σ v_i, v_1, v_2, …]`` with ``v_i = ⌊frac_i · n⌋``, the reference codes' rule.

    Only when a fraction > 0 would give an empty split (tiny data sets) is it raised to 1, so every
    requested split has at least one example; for the real data sets this never triggers.
    """
    held = [max(1, int(f * n)) if f > 0 and n > len(fracs) else int(f * n) for f in fracs]
    if any(f < 0 for f in fracs) or sum(held) >= n:
        raise ValueError(f"cannot hold out fractions {list(fracs)} of {n} examples")
    return [n - sum(held), *held]


def seeded_split(n: int, fracs: Sequence[float], seed: int) -> list[np.ndarray]:
    """Index arrays of a ``torch.utils.data.random_split`` of ``range(n)`` into :func:`split_sizes`,
    with ``torch.Generator().manual_seed(seed)``: the same permutation as s4/S5 (seed 42 there),
    so the examples in each split match theirs given the same dataset order. int64 [size] each."""
    generator = torch.Generator().manual_seed(seed)
    parts = torch.utils.data.random_split(range(n), split_sizes(n, fracs), generator=generator)
    return [np.asarray(p.indices, dtype=np.int64) for p in parts]


class CachedDataModule(SequenceDataModule):
    """A task whose raw files are found (or downloaded) beneath ``data_dir`` and preprocessed once
    into a cache folder keyed by the preprocessing parameters (see :mod:`ssmlit.data.download`).

    Subclasses set ``task_name``, ``sources`` and ``expected_files`` and implement
    :meth:`locate_raw` (find the raw files, None if absent), :meth:`build_cache` (write arrays into
    the new cache folder) and :meth:`setup` (open the cache with :meth:`load_cache`). Options that
    change the cached content go into :meth:`cache_params`; options applied on the fly (normalisation,
    permutations, splits) must not, so that they share one cache.

    Args:
        download: fetch missing raw data from ``sources`` (otherwise raise
            :class:`~ssmlit.data.download.DataNotFoundError` naming what is missing).
        progress: show download progress bars.
        cache_dir: where caches live (default ``<data_dir>/cache``).
        **kwargs: :class:`SequenceDataModule` arguments.
    """

    task_name: ClassVar[str]
    cache_version: ClassVar[int] = 1
    sources: ClassVar[tuple[Source, ...]] = ()
    expected_files: ClassVar[tuple[str, ...]] = ()

    def __init__(self, download: bool = True, progress: bool = True,
                 cache_dir: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.download = check_bool("download", download)
        self.progress = check_bool("progress", progress)
        self.cache_root = Path(_check_path("cache_dir", cache_dir)) if cache_dir is not None \
            else self.data_dir / "cache"

    # -- to implement ------------------------------------------------------------------------------
    def cache_params(self) -> dict[str, Any]:
        """Everything that changes the cached arrays (JSON-serialisable); hashed into the cache path."""
        return {"task": self.task_name, "version": self.cache_version}

    def locate_raw(self) -> Any | None:
        """Find the raw files beneath ``data_dir``; None when they are not there."""
        raise NotImplementedError

    def build_cache(self, raw: Any, out: Path) -> Mapping[str, Any] | None:
        """Preprocess ``raw`` (what :meth:`locate_raw` returned) into arrays in the folder ``out``;
        return extra JSON metadata (vocabulary size, statistics, counts)."""
        raise NotImplementedError

    # -- shared machinery --------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        return cache_path(self.cache_root, self.task_name, self.cache_params())

    def missing_message(self, reason: str | None = None) -> str:
        return missing_data_message(self.task_name, self.expected_files, self.sources, self.data_dir, reason)

    def prepare_data(self) -> None:
        """Build the cache unless it exists: find the raw files, download them if missing (when
        ``download``), preprocess. Raises ``DataNotFoundError`` (missing, no network),
        ``ChecksumError`` / ``ArchiveError`` (a bad download or archive; no cache is written)."""
        if read_cache_meta(self.cache_path) is not None:
            return  # cached: never touch (or even search for) the raw files again
        try:
            self._prepare()
        except DataError:
            raise
        except (*_CORRUPT, UnicodeDecodeError) as e:  # a reader that does not name its file itself
            raise DataError(f"{self.task_name}: a raw file beneath {self.data_dir} is corrupt or truncated "
                            f"({type(e).__name__}: {e}); delete it and download it again") from e
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise DataError(f"{self.task_name}: cannot write beneath {self.data_dir} ({e.strerror}: {e.filename}); "
                            "point task.data_dir at a writable folder, or, when the raw files are already there, "
                            "task.cache_dir at a writable folder for the preprocessed cache") from e

    def _prepare(self) -> None:
        raw = self.locate_raw()
        if raw is None:
            if not self.download:
                raise DataNotFoundError(self.missing_message())
            try:
                for source in self.sources:
                    fetch(source, self.data_dir, progress=self.progress)
            except DownloadError as e:
                raise DataNotFoundError(self.missing_message(str(e))) from e
            raw = self.locate_raw()
            if raw is None:
                raise DataNotFoundError(self.missing_message("the downloaded files do not contain the expected ones"))
        build_cache(self.cache_path, self.cache_params(), lambda out: self.build_cache(raw, out))

    def load_cache(self) -> tuple[Path, dict[str, Any]]:
        """``(cache folder, meta.json contents)``; raises if :meth:`prepare_data` has not built it."""
        meta = read_cache_meta(self.cache_path)
        if meta is None:
            raise RuntimeError(f"{type(self).__name__}: no cache at {self.cache_path}; call prepare_data() first "
                               "(train.py does, on local rank 0)")
        return self.cache_path, meta
