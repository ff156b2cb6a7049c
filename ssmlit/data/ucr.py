"""UCR/UEA time-series classification archives in their ``.ts`` format, and the embedded PLAID task.

The ``.ts`` format (sktime / timeseriesclassification.com) is a header of ``@key value`` lines
(``@problemName``, ``@timeStamps``, ``@missing``, ``@univariate``, ``@dimensions``, ``@equalLength``,
``@seriesLength``, ``@classLabel true <labels…>``), ``#`` comment lines, then ``@data`` and one case
per line: the dimensions separated by ``:``, each a comma-separated list of values, and the class
label last. A ``?`` is a missing value; trailing ``?`` (how variable-length series are often
padded) shorten the series, a ``?`` inside a series is rejected.

:class:`UCRDataModule` reads any train/test pair from paths, univariate or multivariate, with
variable lengths (right-padded in batches, valid lengths carried), labels mapped to indices in the
order of the ``@classLabel`` declaration, and a seeded validation split from the training file. The
parsed arrays are cached once (atomically, :func:`ssmlit.data.download.build_cache`).

:class:`PLAIDDataModule` is PLAID (Plug Load Appliance Identification, Gao et al. 2014; the UCR
version edited by Schäfer & Leser): 537 train / 537 test current traces, 11 appliance classes,
lengths 100–1,344. The ``sktime`` package ships it as ``.ts`` files inside its wheel, so it needs no
download: the files are read from the installed package (``pip install sktime``, in ssmlit's ``test``
and ``ucr`` extras) without importing it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import CachedDataModule, seeded_split
from .download import DataError, DataNotFoundError, file_md5, save_array

NORMALIZATIONS = ("train", "series", "none")


class TSFormatError(DataError, ValueError):
    """A malformed ``.ts`` file; the message is ``<file>:<line>: <reason>``."""


@dataclass
class TSData:
    """One parsed ``.ts`` file.

    Attributes:
        problem: ``@problemName``.
        dims: number of channels D.
        class_labels: the declared labels, in declaration order (index = class id).
        series: one float32 [L_i, D] array per case.
        labels: int64 [N] class ids.
    """

    problem: str
    dims: int
    class_labels: list[str]
    series: list[np.ndarray] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.series], dtype=np.int64)


_BOOL = {"true": True, "false": False}


def _bool(value: str, key: str, where: str) -> bool:
    try:
        return _BOOL[value.strip().lower()]
    except KeyError:
        raise TSFormatError(f"{where}: @{key} must be true or false, got {value!r}") from None


def _parse_dim(text: str, missing: bool, where: str, d: int) -> np.ndarray:
    parts = text.split(",")
    # Trailing missing values are padding (a shorter series); everything before must be numbers.
    while parts and parts[-1].strip() == "?":
        if not missing:
            raise TSFormatError(f"{where}: '?' (missing value) in dimension {d} but the header says @missing false")
        parts.pop()
    if not parts or parts == [""]:
        raise TSFormatError(f"{where}: dimension {d} is empty")
    try:
        values = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        bad = next(p for p in parts if not _is_float(p))
        if bad.strip() == "?":
            raise TSFormatError(f"{where}: missing value '?' inside the series of dimension {d} (only trailing "
                                "'?' padding is supported)") from None
        if "(" in bad:
            raise TSFormatError(f"{where}: time-stamped values {bad.strip()!r} are not supported") from None
        raise TSFormatError(f"{where}: dimension {d}: {bad.strip()!r} is not a number") from None
    if not np.isfinite(values).all():
        raise TSFormatError(f"{where}: dimension {d} contains a non-finite value")
    return values


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_ts(path: str | os.PathLike) -> TSData:
    """Parse a ``.ts`` classification file (see the module docstring).

    Raises:
        TSFormatError: naming the file, the line and the reason (unknown or missing header keys,
            time stamps, regression targets, wrong dimension counts, unknown labels, non-numbers,
            interior missing values, lengths contradicting the header).
    """
    path = Path(path)
    header: dict[str, str] = {}
    labels: dict[str, int] | None = None
    data: TSData | None = None
    ys: list[int] = []
    known = {"problemname", "timestamps", "missing", "univariate", "dimensions", "dimension", "equallength",
             "serieslength", "classlabel", "targetlabel", "data"}
    with path.open(encoding="utf-8-sig", errors="strict") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            line = raw.strip().lstrip("\ufeff")
            if not line or line.startswith("#"):
                continue
            if data is None:
                if not line.startswith("@"):
                    raise TSFormatError(f"{where}: expected a @key header line or @data before the data, got "
                                        f"{line[:40]!r}")
                key, _, value = line[1:].partition(" ")
                key = key.lower()
                if key not in known:
                    raise TSFormatError(f"{where}: unknown header key @{key}")
                if key == "targetlabel":
                    raise TSFormatError(f"{where}: @targetLabel (a regression problem) is not supported; "
                                        "only classification files (@classLabel true ...)")
                if key == "classlabel":
                    tokens = value.split()
                    if not tokens or not _bool(tokens[0], "classLabel", where):
                        raise TSFormatError(f"{where}: @classLabel must be 'true' followed by the class labels")
                    if len(tokens) < 2:
                        raise TSFormatError(f"{where}: @classLabel true lists no labels")
                    if len(set(tokens[1:])) != len(tokens) - 1:
                        raise TSFormatError(f"{where}: @classLabel lists a label twice")
                    labels = {t: i for i, t in enumerate(tokens[1:])}
                elif key != "data":
                    header[key] = value.strip()
                    continue
                if key == "data":
                    if labels is None:
                        raise TSFormatError(f"{where}: @data before @classLabel (only classification files "
                                            "are supported)")
                    if _bool(header.get("timestamps", "false"), "timeStamps", where):
                        raise TSFormatError(f"{where}: @timeStamps true is not supported")
                    univariate = _bool(header.get("univariate", "true"), "univariate", where)
                    dims_text = header.get("dimensions", header.get("dimension", "1" if univariate else ""))
                    try:
                        dims = int(dims_text)
                    except ValueError:
                        raise TSFormatError(f"{where}: @dimensions must be an integer, got {dims_text!r}") from None
                    if dims < 1 or (univariate and dims != 1):
                        raise TSFormatError(f"{where}: @dimensions {dims} contradicts @univariate "
                                            f"{str(univariate).lower()}")
                    data = TSData(header.get("problemname", path.stem), dims, list(labels))
                continue
            parts = line.split(":")
            if len(parts) != data.dims + 1:
                raise TSFormatError(f"{where}: expected {data.dims} dimension(s) and a class label separated by "
                                    f"':', found {len(parts)} field(s)")
            missing = _bool(header.get("missing", "false"), "missing", where)
            dims = [_parse_dim(p, missing, where, d) for d, p in enumerate(parts[:-1])]
            if len({len(v) for v in dims}) != 1:
                raise TSFormatError(f"{where}: the dimensions have different lengths {[len(v) for v in dims]}")
            label = parts[-1].strip()
            if label not in labels:
                raise TSFormatError(f"{where}: class label {label!r} is not declared in @classLabel {list(labels)}")
            data.series.append(np.stack(dims, 1).astype(np.float32))
            ys.append(labels[label])
    if data is None:
        raise TSFormatError(f"{path}: no @data line")
    if not data.series:
        raise TSFormatError(f"{path}: no cases after @data")
    data.labels = np.array(ys, dtype=np.int64)
    if _bool(header.get("equallength", "false"), "equalLength", str(path)) and "serieslength" in header:
        want = int(header["serieslength"])
        bad = np.nonzero(data.lengths != want)[0]
        if bad.size:
            raise TSFormatError(f"{path}: case {int(bad[0]) + 1} has length {int(data.lengths[bad[0]])}, the header "
                                f"says @seriesLength {want}")
    return data


def pad_series(series: list[np.ndarray], length: int) -> np.ndarray:
    """float32 [N, length, D], each series right-padded with zeros."""
    out = np.zeros((len(series), length, series[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(series):
        out[i, : len(s)] = s
    return out


class PaddedSeries(Dataset):
    """Cases of a padded array, each cut to its valid length: ``(x float32 [L_i, D], y)``."""

    def __init__(self, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.lengths, self.y = x, lengths, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i, : int(self.lengths[i])], int(self.y[i])


class LengthBuckets(Sampler[int]):
    """Training batches of similar lengths: each epoch the cases are shuffled (seed + epoch), cut into
    pools of ``pool`` batches, sorted by length inside a pool, batched, and the batches shuffled.
    Padding to the batch's longest case then costs little on tasks with lengths 100–1,344.

    It is a sampler of indices whose consecutive groups of ``batch_size`` are those batches (the one
    partial batch comes last), used with ``DataLoader(sampler=..., batch_size=...)``: Lightning then
    calls :meth:`set_epoch` before every training epoch, so a resumed run draws the same batches as
    an uninterrupted one.
    """

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int = 0, pool: int = 8) -> None:
        self.lengths, self.batch_size, self.seed, self.pool = lengths, int(batch_size), int(seed), int(pool)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in the order they are drawn."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g)
        span = self.batch_size * self.pool
        batches = []
        for s in range(0, len(order), span):
            chunk = order[s: s + span]
            chunk = chunk[torch.sort(self.lengths[chunk], stable=True).indices]
            batches += [chunk[i: i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        full = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return [b for b in full if len(b) == self.batch_size] + [b for b in full if len(b) < self.batch_size]

    def __iter__(self):
        for batch in self.batches():
            yield from batch


class UCRDataModule(CachedDataModule):
    """Any UCR/UEA ``.ts`` train/test pair (see module docstring). Batches: x float32 [B, L, D]
    (right-padded), y long [B], lengths long [B].

    Args:
        train_file, test_file: the ``.ts`` files (relative paths are taken under ``data_dir``).
        name: the task name of the cache folder (default: the train file's stem).
        val_frac: fraction of the training file held out for validation (seeded by ``seed``).
        normalize: ``train``: per-channel z-score with the mean and std of the training split's
            valid steps; ``series``: each series z-scored per channel over its own valid steps, and
            its per-channel log10 RMS amplitude appended as D constant channels (z-scored with the
            training split's statistics), so shape and scale both reach the model even when
            amplitudes span orders of magnitude (PLAID: RMS from 1e-4 to 2e2); ``none``: the values
            as stored.
        bucket: draw training batches of similar lengths (:class:`LengthBuckets`, seeded); plain
            shuffling under multi-process training.
        **kwargs: :class:`~ssmlit.data.base.CachedDataModule` arguments.
    """

    task_name = "ucr"
    cache_version = 1

    def __init__(self, train_file: str | os.PathLike | None = None, test_file: str | os.PathLike | None = None,
                 name: str | None = None, val_frac: float = 0.1, normalize: str = "train", bucket: bool = True,
                 **kwargs: Any) -> None:
        kwargs.setdefault("download", False)
        super().__init__(**kwargs)
        if not 0 < float(val_frac) < 1:
            raise ValueError(f"val_frac must lie in (0, 1) (the fraction of the training file held out), got "
                             f"{val_frac!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        for key, value in (("train_file", train_file), ("test_file", test_file)):
            if value is not None and not str(value).endswith(".ts"):
                raise ValueError(f"{key} must be a .ts file, got {str(value)!r}")
        self.train_file = None if train_file is None else Path(train_file)
        self.test_file = None if test_file is None else Path(test_file)
        if not isinstance(bucket, bool):
            raise ValueError(f"bucket must be true or false, got {bucket!r}")
        self.val_frac, self.normalize, self.bucket = float(val_frac), normalize, bucket
        if name is not None:
            self.task_name = str(name)
        elif self.train_file is not None:
            self.task_name = self.train_file.stem.lower().removesuffix("_train")
        self.expected_files = tuple(str(p) for p in (self.train_file, self.test_file) if p is not None)

    def _resolve(self, p: Path) -> Path:
        return p if p.is_absolute() or p.exists() else self.data_dir / p

    def files(self) -> tuple[Path, Path] | None:
        """The train and test files, or None when not both exist."""
        if self.train_file is None or self.test_file is None:
            raise ValueError(f"{type(self).__name__} needs both train_file and test_file (.ts)")
        paths = self._resolve(self.train_file), self._resolve(self.test_file)
        return paths if all(p.is_file() for p in paths) else None

    def cache_params(self) -> dict[str, Any]:
        files = self.files()
        # The files' content identifies the cache: an edited file is parsed again.
        digest = [file_md5(p) for p in files] if files else None
        return super().cache_params() | {"files_md5": digest}

    def locate_raw(self) -> tuple[Path, Path] | None:
        return self.files()

    def missing_message(self, reason: str | None = None) -> str:
        return (f"{self.task_name}: .ts files not found: {', '.join(str(p) for p in self.expected_files)}"
                + (f" ({reason})" if reason else ""))

    def build_cache(self, raw: tuple[Path, Path], out: Path) -> dict[str, Any]:
        train, test = (read_ts(p) for p in raw)
        if test.dims != train.dims:
            raise TSFormatError(f"{raw[1]}: {test.dims} dimension(s), the training file has {train.dims}")
        if test.class_labels != train.class_labels:
            raise TSFormatError(f"{raw[1]}: @classLabel {test.class_labels} differs from the training file's "
                                f"{train.class_labels}")
        l_max = int(max(train.lengths.max(), test.lengths.max()))
        for split, d in (("train", train), ("test", test)):
            save_array(out, f"{split}_x", pad_series(d.series, l_max))
            save_array(out, f"{split}_len", d.lengths)
            save_array(out, f"{split}_y", d.labels)
        return {"problem": train.problem, "dims": train.dims, "classes": train.class_labels, "l_max": l_max,
                "sizes": {"train": len(train.labels), "test": len(test.labels)},
                "lengths": {"min": int(min(train.lengths.min(), test.lengths.min())), "max": l_max,
                            "train_mean": float(train.lengths.mean())}}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folder, meta = self.load_cache()
        self.d_input, self.num_classes, self.l_max = int(meta["dims"]), len(meta["classes"]), int(meta["l_max"])
        self.classes = list(meta["classes"])
        arrays = {k: torch.from_numpy(np.load(folder / f"{k}.npy", allow_pickle=False))
                  for k in ("train_x", "train_len", "train_y", "test_x", "test_len", "test_y")}
        train_idx, val_idx = (torch.from_numpy(i) for i in
                              seeded_split(len(arrays["train_y"]), [self.val_frac], self.seed))
        x, lengths = arrays["train_x"].clone(), arrays["train_len"]
        test_x = arrays["test_x"].clone()
        if self.normalize == "train":
            valid = (torch.arange(x.shape[1])[None, :] < lengths[train_idx, None])[..., None]  # [N, L, 1]
            tr = x[train_idx]
            count = valid.sum()
            mean = (tr * valid).sum((0, 1)) / count
            std = (((tr - mean) * valid).square().sum((0, 1)) / count).sqrt().clamp(min=1e-8)
            # Padding stays exactly zero (the model zeroes it anyway; this keeps the cache layout).
            x = (x - mean) / std * (torch.arange(x.shape[1])[None, :, None] < lengths[:, None, None])
            test_x = (test_x - mean) / std * (torch.arange(test_x.shape[1])[None, :, None]
                                              < arrays["test_len"][:, None, None])
        elif self.normalize == "series":
            x, amp = _series_normalize(x, lengths)
            test_x, test_amp = _series_normalize(test_x, arrays["test_len"])
            mu, sd = amp[train_idx].mean(0), amp[train_idx].std(0).clamp(min=1e-8)
            x = _with_amplitude(x, (amp - mu) / sd, lengths)
            test_x = _with_amplitude(test_x, (test_amp - mu) / sd, arrays["test_len"])
            self.d_input = 2 * self.d_input
        # Evaluation order is free: sorted by length, evaluation batches carry little padding.
        val_idx = val_idx[torch.sort(lengths[val_idx], stable=True).indices]
        test_idx = torch.sort(arrays["test_len"], stable=True).indices
        self.train_set = PaddedSeries(x[train_idx], lengths[train_idx], arrays["train_y"][train_idx])
        self.val_set = PaddedSeries(x[val_idx], lengths[val_idx], arrays["train_y"][val_idx])
        self.test_set = PaddedSeries(test_x[test_idx], arrays["test_len"][test_idx], arrays["test_y"][test_idx])

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        if not self.bucket or (trainer is not None and trainer.world_size > 1):
            return super().train_dataloader()
        return DataLoader(self.train_set, sampler=LengthBuckets(self.train_set.lengths, self.batch_size, self.seed),
                          batch_size=self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, collate_fn=self.collate,
                          pin_memory=torch.cuda.is_available())


def _series_normalize(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each series z-scored per channel over its valid steps: (float32 [N, L, D], log10 RMS [N, D])."""
    valid = (torch.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
    n = lengths[:, None].to(x.dtype)
    mean = (x * valid).sum(1) / n
    centered = (x - mean[:, None]) * valid
    std = (centered.square().sum(1) / n).sqrt()
    rms = ((x * valid).square().sum(1) / n).sqrt()
    return centered / std.clamp(min=1e-12)[:, None], torch.log10(rms.clamp(min=1e-12))


def _with_amplitude(x: torch.Tensor, amp: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Append ``amp`` [N, D] as constant channels over each series' valid steps: [N, L, 2D]."""
    valid = (torch.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
    return torch.cat((x, amp[:, None, :].expand(-1, x.shape[1], -1) * valid), -1)


def sktime_data_dir() -> Path | None:
    """``<site-packages>/sktime/datasets/data`` of an installed sktime (not imported), or None."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


class PLAIDDataModule(UCRDataModule):
    """PLAID from the ``.ts`` files bundled with sktime (see module docstring): 537 train (a seeded
    ``val_frac`` of it held out for validation) / 537 test, 11 classes, univariate, lengths
    100–1,344. ``d_input`` is 2 with ``normalize="series"`` (waveform and log amplitude)."""

    d_input = 1
    num_classes = 11
    l_max = 1344

    def __init__(self, **kwargs: Any) -> None:
        for key in ("train_file", "test_file", "name"):
            if kwargs.get(key) is not None:
                raise ValueError(f"PLAIDDataModule reads sktime's bundled files; {key} is not an option "
                                 "(use ssmlit.data.ucr.UCRDataModule for other .ts files)")
        kwargs.setdefault("normalize", "series")
        super().__init__(train_file="PLAID_TRAIN.ts", test_file="PLAID_TEST.ts", name="plaid", **kwargs)

    def files(self) -> tuple[Path, Path] | None:
        root = sktime_data_dir()
        if root is None:
            return None
        paths = root / "PLAID" / "PLAID_TRAIN.ts", root / "PLAID" / "PLAID_TEST.ts"
        return paths if all(p.is_file() for p in paths) else None

    def prepare_data(self) -> None:
        if self.files() is None:
            raise DataNotFoundError("task plaid reads PLAID_TRAIN.ts / PLAID_TEST.ts from the installed sktime "
                                    "package, which is not installed here: pip install sktime "
                                    "(or pip install -e '.[ucr]')")
        super().prepare_data()
