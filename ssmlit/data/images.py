"""Pixel-level image tasks: sMNIST, psMNIST (MNIST idx files) and sCIFAR, LRA Image (CIFAR-10).

Conventions of state-spaces/s4 (``datasets.md`` §5, §8):

- **sMNIST**: 28×28 pixels in raster order as a length-784 sequence of one value in [0, 1]
  (``ToTensor()``, no normalisation). **psMNIST**: the same with the pixels permuted,
  ``x_perm[t] = x[perm[t]]``, by the 10-bit **bit-reversal** permutation restricted to values
  < 784 (``permute="bitrev"``, as s4 and S5) or a seeded random permutation (``permute="random"``,
  ``np.random.RandomState(permute_seed).permutation(784)``, 92916 in s4's comment).
  Train 60,000 → seeded 54,000 / 6,000 split; test 10,000; 10 classes.
- **sCIFAR**: 32×32 RGB in raster order, length 1,024 × 3 channels, ``ToTensor()`` then
  Normalize(mean (0.4914, 0.4822, 0.4465), std (0.247, 0.243, 0.261)).
- **LRA Image**: the same images converted to grayscale exactly as ``PIL.Image.convert("L")``
  (ITU-R 601-2 luma), length 1,024 × 1, Normalize(122.6/255, 61.0/255); or, with ``tokenize``,
  the integer pixels 0–255 as tokens (the original LRA input).
- CIFAR train 50,000 → seeded 45,000 / 5,000 split (``random_split`` with seed 42, torchvision's
  batch order 1–5), test 10,000; 10 classes.

The decoded pixels are cached as uint8 arrays (MNIST [N, 784], CIFAR [N, 1024, 3] or [N, 1024]);
conversion to float, normalisation and permutation happen per batch in the collate function.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssmlit.errors import check_bool, check_float, check_int

from .base import CachedDataModule, pad_collate, seeded_split
from .download import DataError, LazyArray, Source, find_paths, save_array

# -- datasets and batch transforms ----------------------------------------------------------------


class PixelDataset(Dataset):
    """Rows of a cached uint8 array: ``dataset[i] = (x, y)`` with x uint8 [L] or [L, C], y int.

    Args:
        folder, name: cache folder and split (``{name}_x.npy``, ``{name}_y.npy``).
        indices: optional subset, in order.
        stride: keep every ``stride``-th time step (``x[::stride]``; Speech Commands' 8 kHz view).
    """

    def __init__(self, folder: Path, name: str, indices: np.ndarray | None = None, stride: int = 1) -> None:
        self.x = LazyArray(folder / f"{name}_x.npy")
        self.y = np.load(folder / f"{name}_y.npy").astype(np.int64)
        self.indices = np.arange(len(self.y)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.stride = stride

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        return torch.from_numpy(np.array(self.x[j][:: self.stride])), int(self.y[j])


class PixelTransform:
    """Batch transform of raw integer samples into model inputs (picklable, for DataLoader workers).

    ``__call__(x)``: x uint8/int16 [B, L] or [B, L, C] →
    float32 [B, L, C] ``((x / divisor)[:, perm] − mean) / std`` per channel, or with ``tokenize`` the
    long [B, L] integers themselves. Dividing (not multiplying by 1/255) keeps the values bit-equal
    to torchvision's ``ToTensor()``.
    """

    def __init__(self, divisor: float = 255.0, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, perm: np.ndarray | None = None, tokenize: bool = False) -> None:
        self.divisor, self.tokenize = divisor, tokenize
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)
        self.perm = None if perm is None else torch.as_tensor(perm, dtype=torch.long)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x[:, self.perm]
        if self.tokenize:
            return x.long()
        x = x.float() / self.divisor
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


class PixelDataModule(CachedDataModule):
    """Base of the fixed-length pixel/audio tasks: uint8/int16 caches, per-batch transform.

    Batches: x float32 [B, L, C] (long [B, L] when tokenized), y long [B], lengths long [B] (= L).
    """

    transform: PixelTransform

    def collate(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, lengths = pad_collate(batch)
        return self.transform(x), y, lengths


class HeldOutValidationMixin:
    """setup() for caches with train and test splits: validation is a seeded ``val_frac`` share of
    train, as in s4/S5 (torch ``random_split`` with the task's seed)."""

    val_frac: float

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folder, meta = self.load_cache()
        train_idx, val_idx = seeded_split(meta["sizes"]["train"], [self.val_frac], self.seed)
        self.train_set = PixelDataset(folder, "train", train_idx)
        self.val_set = PixelDataset(folder, "train", val_idx)
        self.test_set = PixelDataset(folder, "test")


# -- MNIST ------------------------------------------------------------------------------------------
_MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_MNIST_FILES = {  # name: (md5 of the .gz, as published by torchvision)
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_SOURCES = tuple(
    Source(urls=(f"http://yann.lecun.com/exdb/mnist/{n}.gz", f"{_MNIST_MIRROR}{n}.gz"), filename=f"{n}.gz", md5=md5,
           extract_to=None, store_in="MNIST/raw")
    for n, md5 in _MNIST_FILES.items()
)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped, detected by its magic bytes) as a uint8 array.

    Format: big-endian; two zero bytes, the type byte 0x08 (unsigned byte), the number of
    dimensions, one int32 per dimension, then the data in row-major order.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:  # truncated: EOFError; bad header/CRC: BadGzipFile
            raise DataError(f"{path}: corrupt or truncated gzip file ({type(e).__name__}: {e}); delete it and "
                            "download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an MNIST idx file (bad magic number {data[:4]!r}); delete it and download it "
                        "again")
    if data[2] != 0x08:
        raise DataError(f"{path}: idx type byte {data[2]:#x}, only unsigned bytes (0x08) are supported")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: the idx header is cut short; the file is truncated")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes) but {body.size} bytes follow; "
                        "the file is truncated")
    return body.reshape(shape).copy()


def bit_reversal_permutation(n: int = 784, bits: int = 10) -> np.ndarray:
    """The s4/S5 psMNIST permutation: the ``bits``-bit reversal of 0 … 2^bits − 1, keeping values < n
    in order. int64 [n]; starts 0, 512, 256, 768, 128, 640, 384, 64, …"""
    rev = np.asarray([int(f"{i:0{bits}b}"[::-1], 2) for i in range(2**bits)], dtype=np.int64)
    perm = rev[rev < n]
    if len(perm) != n:
        raise ValueError(f"{bits} bits cannot index {n} positions")
    return perm


class MNISTDataModule(HeldOutValidationMixin, PixelDataModule):
    """sMNIST / psMNIST (see module docstring). Batches: x float32 [B, 784, 1] in [0, 1],
    y long [B] in 0–9, lengths long [B] (= 784).

    Args:
        permute: ``"none"`` (sMNIST), ``"bitrev"`` (psMNIST as s4/S5) or ``"random"``.
        permute_seed: seed of the random permutation.
        val_frac: fraction of train held out for validation (0.1 → 54,000 / 6,000).
        **kwargs: :class:`~ssmlit.data.base.CachedDataModule` arguments (``seed`` fixes the split;
            42 in s4/S5).
    """

    task_name = "mnist"
    d_input = 1
    num_classes = 10
    l_max = 784
    sources = MNIST_SOURCES
    expected_files = tuple(f"MNIST/raw/{n} (or {n}.gz)" for n in _MNIST_FILES)
    PERMUTATIONS = ("none", "bitrev", "random")

    def __init__(self, permute: str = "none", permute_seed: int = 92916, val_frac: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if permute not in self.PERMUTATIONS:
            raise ValueError(f"unknown permute {permute!r}; choose one of {self.PERMUTATIONS}")
        check_int("permute_seed", permute_seed, 0, 2**32 - 1)
        check_float("val_frac", val_frac, 0, 1, low_open=True, high_open=True)
        self.permute, self.permute_seed, self.val_frac = permute, permute_seed, val_frac
        self.transform = PixelTransform(perm=self.permutation())

    def permutation(self) -> np.ndarray | None:
        """int64 [784] pixel order (``x_perm[t] = x[perm[t]]``), or None for sMNIST."""
        if self.permute == "bitrev":
            return bit_reversal_permutation(self.l_max)
        if self.permute == "random":
            return np.random.RandomState(self.permute_seed).permutation(self.l_max)
        return None

    def locate_raw(self) -> dict[str, Path] | None:
        files = {}
        for name in _MNIST_FILES:
            # torchvision's names use "-"; some mirrors (Kaggle) write "train-images.idx3-ubyte".
            # Only the file itself or its .gz qualify (not e.g. a leftover ".gz.part").
            pattern = name.replace("-idx", "[-.]idx")
            hits = find_paths(self.data_dir, pattern) + find_paths(self.data_dir, pattern + ".gz")
            if not hits:
                return None
            files[name] = min(hits, key=lambda p: (len(p.parts), str(p)))
        return files

    def build_cache(self, raw: dict[str, Path], out: Path) -> dict[str, Any]:
        sizes = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx(raw[f"{prefix}-images-idx3-ubyte"])
            labels = read_idx(raw[f"{prefix}-labels-idx1-ubyte"])
            if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
                raise DataError(f"MNIST {split}: images {images.shape} and labels {labels.shape} do not match "
                                "N × 28 × 28 and N")
            if labels.max(initial=0) > 9:
                raise DataError(f"MNIST {split}: labels outside 0–9")
            save_array(out, f"{split}_x", images.reshape(len(images), -1))
            save_array(out, f"{split}_y", labels)
            sizes[split] = len(labels)
        return {"sizes": sizes, "raw": {k: str(v) for k, v in raw.items()}}



# -- CIFAR-10 ---------------------------------------------------------------------------------------
CIFAR_SOURCE = Source(
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    filename="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",  # torchvision's checksum
    extract_to="",
)
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
GRAY_MEAN, GRAY_STD = 122.6 / 255, 61.0 / 255


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batches that only rebuilds NumPy arrays: the files are pickles, and
    an arbitrary pickle can run code, so every other global is refused."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # NumPy 2 renamed it; avoids a warning
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: uint8 [N, 32, 32, 3] (HWC, torchvision's layout) and uint8 [N] labels.

    The batch is a Python-2 pickle of a dict whose ``data`` rows are 1,024 red, 1,024 green, then
    1,024 blue values; loaded with ``latin1`` so that Python-2 strings become ``str`` keys.
    """
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 python batch ({e})") from e
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data) or labels.min(initial=0) < 0 \
            or labels.max(initial=0) > 9:
        raise DataError(f"{path}: expected data N × 3072 and N labels in 0–9, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels.astype(np.uint8)


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] → uint8 [N, H, W] exactly as ``PIL.Image.convert("L")`` (ITU-R 601-2),
    i.e. torchvision's ``Grayscale()``: all images are converted as one tall image for speed."""
    n, h, w, _ = images.shape
    if n == 0:
        return np.zeros((0, h, w), dtype=np.uint8)
    tall = Image.fromarray(np.ascontiguousarray(images.reshape(n * h, w, 3))).convert("L")
    return np.asarray(tall, dtype=np.uint8).reshape(n, h, w)


class CIFARDataModule(HeldOutValidationMixin, PixelDataModule):
    """sCIFAR (colour) or LRA Image (``grayscale=True``), see module docstring.

    Batches: x float32 [B, 1024, 3] (sCIFAR) or [B, 1024, 1] (Image), normalised; with
    ``tokenize`` x long [B, 1024] in 0–255 (vocabulary 256); y long [B] in 0–9; lengths long [B].

    Args:
        grayscale: LRA Image (one luma channel) instead of sCIFAR (RGB).
        tokenize: integer pixels as tokens (grayscale only).
        val_frac: fraction of train held out for validation (0.1 → 45,000 / 5,000).
        **kwargs: :class:`~ssmlit.data.base.CachedDataModule` arguments (``seed`` fixes the split).
    """

    task_name = "cifar10"
    num_classes = 10
    l_max = 1024
    sources = (CIFAR_SOURCE,)
    expected_files = tuple(f"cifar-10-batches-py/{f}" for f in (*CIFAR_TRAIN, "test_batch"))

    def __init__(self, grayscale: bool = False, tokenize: bool = False, val_frac: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_bool("grayscale", grayscale)
        check_bool("tokenize", tokenize)
        check_float("val_frac", val_frac, 0, 1, low_open=True, high_open=True)
        if tokenize and not grayscale:
            raise ValueError("tokenize=True needs grayscale=True (one integer per pixel)")
        self.grayscale, self.tokenize, self.val_frac = grayscale, tokenize, val_frac
        if tokenize:
            self.vocab_size, self.d_input = 256, None
            self.transform = PixelTransform(tokenize=True)
        elif grayscale:
            self.d_input = 1
            self.transform = PixelTransform(mean=(GRAY_MEAN,), std=(GRAY_STD,))
        else:
            self.d_input = 3
            self.transform = PixelTransform(mean=CIFAR_MEAN, std=CIFAR_STD)

    def cache_params(self) -> dict[str, Any]:
        return super().cache_params() | {"grayscale": self.grayscale}

    def locate_raw(self) -> Path | None:
        for folder in find_paths(self.data_dir, "cifar-10-batches-py", kind="dir"):
            if all((folder / f).is_file() for f in (*CIFAR_TRAIN, "test_batch")):
                return folder
        return None

    def build_cache(self, raw: Path, out: Path) -> dict[str, Any]:
        sizes = {}
        for split, files in (("train", CIFAR_TRAIN), ("test", ("test_batch",))):
            batches = [read_cifar_batch(raw / f) for f in files]
            images = np.concatenate([b[0] for b in batches])
            labels = np.concatenate([b[1] for b in batches])
            pixels = to_grayscale(images).reshape(len(images), -1) if self.grayscale \
                else images.reshape(len(images), -1, 3)
            save_array(out, f"{split}_x", pixels)
            save_array(out, f"{split}_y", labels)
            sizes[split] = len(labels)
        return {"sizes": sizes, "raw": str(raw)}

