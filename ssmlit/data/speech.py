"""Speech Commands v0.02, 35 classes (SC35), raw 16 kHz audio, plus the 8 kHz zero-shot test.

Source: ``speech_commands_v0.02.tar.gz`` (``datasets.md`` §7): 35 word folders of one-second 16 kHz
mono 16-bit WAVs, ``_background_noise_/`` (unused), ``validation_list.txt`` and
``testing_list.txt``. A file ``<word>/<name>.wav`` listed in the validation (testing) list is a
validation (test) example, every other one a training example (84,843 / 9,981 / 11,005).

- Labels follow the fixed class order of s4 (:data:`CLASSES`; label = index).
- Audio: int16 PCM, **zero-padded at the end** to 16,000 samples (some clips are shorter), then
  one of two normalizations (``normalize``), fitted on the train split and applied to every split;
  input [16000, 1]:

  - ``global`` (default): x = int16 / 2¹⁵ in [−1, 1], standardised with one mean and one std over
    the whole padded train tensor, ``(x − μ) / (σ + 1e-5)``: unit variance.
  - ``reference``: what S5 and s4 do (``sc.py``, ``normalize_all_data``). They load with torchaudio,
    which already returns int16 / 2¹⁵, and divide by 2¹⁵ *again*, so x = int16 / 2³⁰; then every
    time step t gets its own train mean and std (the loop runs over the last axis of the
    [N, 1, 16000] tensor), ``(x_t − μ_t) / (σ_t + 1e-5)`` with torch's unbiased std. σ_t is about
    1e-6 here, so the 1e-5 dominates and the result is far from unit variance (std ≈ 0.1). The same
    arithmetic from soundfile's int16 (power-of-two scalings are exact), statistics in float64.
    The 8 kHz view x[::2] uses the statistics of the samples it keeps (t = 0, 2, 4, …), because the
    reference normalizes at 16 kHz and subsamples afterwards.

- Cached as int16 [N, 16000] per split (half of float32) with the global μ, σ in ``meta.json``
  and, once ``reference`` is used, the per-step μ_t, σ_t in ``step_stats.npy`` (float64 [2, 16000]);
  the scaling and standardisation happen per batch.
- **8 kHz zero-shot**: an extra test loader with every second sample, ``x[::2]`` (length 8,000, no
  anti-alias filter, as s4/S5), evaluated with ``step_rescale = 2`` and logged as ``test_8khz/…``;
  ``val_8khz=True`` adds the same for validation (``val_8khz/…``).
- ``mfcc=True`` (needs torchaudio): 20 MFCCs (log-mels, n_fft 200, 64 mels) → [161, 20] per clip,
  standardised per coefficient (both codes do this); computed from int16 / 2¹⁵, or from the
  reference's int16 / 2³⁰ with ``normalize=reference``; no 8 kHz variant.
"""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ssmlit.errors import check_bool, check_int
from ssmlit.utils import atomic_write_bytes

from .base import EvalVariant
from .download import DataError, Source, find_paths, open_array, save_array
from .images import PixelDataModule, PixelDataset, PixelTransform

CLASSES = (
    "bed", "cat", "down", "five", "forward", "go", "house", "left", "marvin", "no", "on", "right", "sheila", "tree",
    "up", "visual", "yes", "backward", "bird", "dog", "eight", "follow", "four", "happy", "learn", "nine", "off",
    "one", "seven", "six", "stop", "three", "two", "wow", "zero",
)
SAMPLE_RATE = 16_000
NORMALIZATIONS = ("global", "reference")
PCM_SCALE = 32768.0  # int16 full scale, 2¹⁵
REFERENCE_SCALE = PCM_SCALE * PCM_SCALE  # torchaudio's ÷2¹⁵ followed by the reference code's own ÷2¹⁵
STEP_STATS = "step_stats.npy"
SPEECH_SOURCE = Source(
    urls=("http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
          "https://storage.googleapis.com/download.tensorflow.org/data/speech_commands_v0.02.tar.gz"),
    filename="speech_commands_v0.02.tar.gz",
    md5="6b74f3901214cb2c2934e98196829835",  # torchaudio's SPEECHCOMMANDS checksum
    extract_to="SpeechCommands/speech_commands_v0.02",  # the archive has no top-level folder
)


def read_wav(path: Path, length: int = SAMPLE_RATE) -> np.ndarray:
    """int16 [length]: a mono 16 kHz clip, zero-padded at the end (or cut) to ``length`` samples."""
    try:
        audio, rate = sf.read(path, dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"{path}: cannot read the WAV file ({e})") from e
    if rate != SAMPLE_RATE or audio.shape[1] != 1:
        raise DataError(f"{path}: {rate} Hz with {audio.shape[1]} channels, expected {SAMPLE_RATE} Hz mono")
    out = np.zeros(length, dtype=np.int16)
    n = min(length, len(audio))
    out[:n] = audio[:n, 0]
    return out


def _read_chunk(paths: list[Path]) -> np.ndarray:
    return np.stack([read_wav(p) for p in paths]) if paths else np.zeros((0, SAMPLE_RATE), np.int16)


def list_speech_commands(root: Path) -> dict[str, list[tuple[Path, int]]]:
    """``{split: [(wav path, label), ...]}`` from the list files, each split in class order then by name."""
    val = set(_read_list(root / "validation_list.txt"))
    test = set(_read_list(root / "testing_list.txt"))
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
    for label, word in enumerate(CLASSES):
        folder = root / word
        if not folder.is_dir():
            continue
        for wav in sorted(folder.glob("*.wav")):
            key = f"{word}/{wav.name}"
            split = "val" if key in val else "test" if key in test else "train"
            splits[split].append((wav, label))
    return splits


def _read_list(path: Path) -> list[str]:
    # entries look like "right/bb05582b_nohash_3.wav"; tolerate "./" prefixes and CRLF
    return [line.strip().removeprefix("./") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class SpeechTransform(PixelTransform):
    """int16 [B, L] → float32 [B, L, 1]: ``(x / 2¹⁵ − μ) / (σ + 1e-5)`` (``divisor`` 2¹⁵); or MFCC
    float32 [B, L, C] → ``(x − μ_c) / (σ_c + 1e-5)`` per coefficient (``divisor`` 1)."""

    def __init__(self, mean: Any, std: Any, divisor: float = 32768.0, eps: float = 1e-5) -> None:
        mean, std = np.atleast_1d(np.asarray(mean, np.float64)), np.atleast_1d(np.asarray(std, np.float64))
        super().__init__(divisor=divisor, mean=tuple(mean), std=tuple(std + eps))


class ReferenceSpeechTransform:
    """int16 [B, L] → float32 [B, L, 1]: ``(x / 2³⁰ − μ_t) / (σ_t + 1e-5)`` with per-time-step
    statistics ``mean, std: float64 [16000]`` (S5/s4's rule, module docstring). A batch shorter by
    an integer factor r is the x[::r] view and uses μ_t, σ_t at t = 0, r, 2r, … (picklable, for
    DataLoader workers)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, eps: float = 1e-5) -> None:
        self.mean = torch.as_tensor(np.asarray(mean, np.float64))
        self.denom = torch.as_tensor(np.asarray(std, np.float64) + eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, L = len(self.mean), x.shape[1]
        if n % L:
            raise ValueError(f"Speech Commands batch of length {L}: not a subsampling of the {n} normalized steps")
        r = n // L
        return ((x.double() / REFERENCE_SCALE - self.mean[::r]) / self.denom[::r]).float().unsqueeze(-1)


def step_stats(x: np.ndarray, scale: float = REFERENCE_SCALE, chunk: int = 1024) -> np.ndarray:
    """float64 [2, L]: the mean and the unbiased (torch's) std of every column of ``x / scale``
    (``x``: int16 [N, L], e.g. a memory map), in row chunks and two passes (mean, then squared
    deviations), so the 2.7 GB train array is never converted at once."""
    n = len(x)
    if n < 2:
        raise DataError(f"per-step statistics need at least 2 training clips, got {n}")
    total = np.zeros(x.shape[1], np.float64)
    for i in range(0, n, chunk):
        total += np.asarray(x[i: i + chunk], dtype=np.float64).sum(0)
    mean = total / scale / n
    sq = np.zeros(x.shape[1], np.float64)
    for i in range(0, n, chunk):
        sq += np.square(np.asarray(x[i: i + chunk], dtype=np.float64) / scale - mean).sum(0)
    return np.stack((mean, np.sqrt(sq / (n - 1))))


class SpeechCommandsDataModule(PixelDataModule):
    """Speech Commands SC35 (see module docstring).

    Batches: x float32 [B, 16000, 1] (8 kHz loaders: [B, 8000, 1]; MFCC: [B, 161, 20]), y long [B]
    in 0–34, lengths long [B].

    Args:
        normalize: ``global`` (one train mean/std, unit variance) or ``reference`` (S5/s4's
            double ÷2¹⁵ and per-time-step statistics; module docstring).
        mfcc: MFCC features instead of raw audio (requires torchaudio: ``pip install ssmlit[audio]``).
        eval_8khz: add the ``test_8khz`` loader (``x[::2]``, ``step_rescale=2``).
        val_8khz: also add a ``val_8khz`` loader (evaluated every validation epoch).
        prepare_workers: processes reading WAVs while building the cache (0: in this process).
        **kwargs: :class:`~ssmlit.data.base.CachedDataModule` arguments.
    """

    task_name = "speech_commands"
    num_classes = len(CLASSES)
    sources = (SPEECH_SOURCE,)
    expected_files = ("SpeechCommands/…/validation_list.txt", "SpeechCommands/…/testing_list.txt",
                      "SpeechCommands/…/<word>/<speaker>_nohash_<n>.wav for the 35 words")

    def __init__(self, mfcc: bool = False, eval_8khz: bool = True, val_8khz: bool = False, prepare_workers: int = 0,
                 normalize: str = "global", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, flag in (("mfcc", mfcc), ("eval_8khz", eval_8khz), ("val_8khz", val_8khz)):
            check_bool(name, flag)
        check_int("prepare_workers", prepare_workers, 0)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown Speech Commands normalize {normalize!r}; choose one of {NORMALIZATIONS} "
                             "(global: one train mean/std; reference: S5/s4's per-time-step rule)")
        self.normalize = normalize
        if mfcc:
            try:
                import torchaudio  # noqa: F401
            except ImportError as e:
                raise ImportError("SpeechCommandsDataModule(mfcc=True) needs torchaudio, which is optional: "
                                  "pip install 'ssmlit[audio]' (or use the raw waveform, mfcc=false)") from e
        self.mfcc, self.prepare_workers = mfcc, prepare_workers
        self.eval_8khz, self.val_8khz = eval_8khz and not mfcc, val_8khz and not mfcc
        self.d_input, self.l_max = (20, 161) if mfcc else (1, SAMPLE_RATE)

    def cache_params(self) -> dict[str, Any]:
        # MFCCs are cached, so their input scaling is part of the cache; the waveform cache is
        # shared by both normalizations (applied per batch).
        extra = {"mfcc_input_scale": REFERENCE_SCALE} if self.mfcc and self.normalize == "reference" else {}
        return super().cache_params() | {"mfcc": self.mfcc} | extra

    def locate_raw(self) -> Path | None:
        for lst in find_paths(self.data_dir, "validation_list.txt"):
            root = lst.parent
            if (root / "testing_list.txt").is_file() and any((root / w).is_dir() for w in CLASSES):
                return root
        return None

    def build_cache(self, raw: Path, out: Path) -> dict[str, Any]:
        splits = list_speech_commands(raw)
        if not splits["train"]:
            raise DataError(f"{raw}: no training WAVs found in the 35 word folders")
        sizes = {}
        for split, items in splits.items():
            arr = open_array(out, f"{split}_x", (len(items), SAMPLE_RATE), np.int16)
            paths = [p for p, _ in items]
            chunk = 2048
            jobs = [paths[i: i + chunk] for i in range(0, len(paths), chunk)]
            if self.prepare_workers > 0:
                with ProcessPoolExecutor(self.prepare_workers) as pool:
                    for k, block in enumerate(pool.map(_read_chunk, jobs)):
                        arr[k * chunk: k * chunk + len(block)] = block
            else:
                for k, job in enumerate(jobs):
                    arr[k * chunk: k * chunk + len(job)] = _read_chunk(job)
            arr.flush()
            del arr
            save_array(out, f"{split}_y", np.asarray([y for _, y in items], dtype=np.uint8))
            sizes[split] = len(items)
        stats = self._build_mfcc(out) if self.mfcc else _global_stats(np.load(out / "train_x.npy", mmap_mode="r"))
        return {"sizes": sizes, "raw": str(raw), **stats}

    def _build_mfcc(self, out: Path) -> dict[str, Any]:
        # MFCCs replace the waveform arrays: float32 [N, 161, 20], standardised per coefficient.
        import torchaudio

        mfcc = torchaudio.transforms.MFCC(sample_rate=SAMPLE_RATE, n_mfcc=20, log_mels=True,
                                          melkwargs={"n_fft": 200, "n_mels": 64})
        scale = REFERENCE_SCALE if self.normalize == "reference" else PCM_SCALE
        for split in ("train", "val", "test"):
            wave = np.load(out / f"{split}_x.npy", mmap_mode="r")
            feats = open_array(out, f"{split}_mfcc", (len(wave), 161, 20), np.float32)
            for i in range(0, len(wave), 512):
                x = torch.from_numpy(np.asarray(wave[i: i + 512], dtype=np.float32) / scale)
                feats[i: i + len(x)] = mfcc(x).transpose(1, 2).numpy()
            feats.flush()
            del feats, wave
            (out / f"{split}_x.npy").unlink()
            (out / f"{split}_mfcc.npy").rename(out / f"{split}_x.npy")
        train = np.load(out / "train_x.npy", mmap_mode="r")
        return {"mean": train.mean(axis=(0, 1), dtype=np.float64).tolist(),
                "std": train.std(axis=(0, 1), dtype=np.float64, ddof=1).tolist()}

    def prepare_data(self) -> None:
        """Build the cache (see the base class); with ``normalize=reference`` also the per-step
        train statistics next to it, once (atomically: a cache folder is complete without them)."""
        super().prepare_data()
        stats = self.cache_path / STEP_STATS
        if self.normalize == "reference" and not self.mfcc and not stats.is_file():
            arr = step_stats(np.load(self.cache_path / "train_x.npy", mmap_mode="r"))
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            atomic_write_bytes(stats, buf.getvalue())

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folder, meta = self.load_cache()
        if self.normalize == "reference" and not self.mfcc:
            if not (folder / STEP_STATS).is_file():
                raise RuntimeError(f"{type(self).__name__}: no {STEP_STATS} in {folder}; call prepare_data() first")
            mean, std = np.load(folder / STEP_STATS)
            self.transform = ReferenceSpeechTransform(mean, std)
        else:
            self.transform = SpeechTransform(meta["mean"], meta["std"], divisor=1.0 if self.mfcc else PCM_SCALE)
        self.train_set, self.val_set, self.test_set = (PixelDataset(folder, s) for s in ("train", "val", "test"))
        self.extra_val_sets = [(EvalVariant("val_8khz", 2.0), PixelDataset(folder, "val", stride=2))] \
            if self.val_8khz else []
        self.extra_test_sets = [(EvalVariant("test_8khz", 2.0), PixelDataset(folder, "test", stride=2))] \
            if self.eval_8khz else []


def _global_stats(x: np.ndarray, chunk: int = 4096) -> dict[str, float]:
    """Mean and (unbiased, as ``torch.std``) standard deviation of all of ``x / 2¹⁵``, in float64
    over row chunks so the 2.7 GB train array is never converted at once; two passes (mean, then
    squared deviations) to avoid the cancellation of the one-pass formula."""
    n = x.size
    total = sum(float(np.asarray(x[i: i + chunk], dtype=np.float64).sum()) for i in range(0, len(x), chunk))
    mean = total / 32768.0 / n
    sq = sum(float(np.square(np.asarray(x[i: i + chunk], dtype=np.float64) / 32768.0 - mean).sum())
             for i in range(0, len(x), chunk))
    return {"mean": mean, "std": float(np.sqrt(sq / max(n - 1, 1)))}
