"""LRA Pathfinder (32×32) and Path-X (128×128): is there a path between the two dots?

Source: the LRA release (``datasets.md`` §6), ``pathfinder{32,64,128,256}/<difficulty>/`` with
``imgs/<k>/sample_<i>.png`` and ``metadata/<k>.npy`` — **plain text despite the extension**, one
line per image: ``imgs/<k> sample_<i>.png <nimg> <label> …``. Only ``curv_contour_length_14`` (the
hard set) is used. Path-X is ``pathfinder128``.

- Dataset order is metadata-file order by ``int(stem)`` (0, 1, 2, …, 10, not 0, 1, 10, 2), then
  line order; the split is ``random_split`` into 80 / 10 / 10 % (160,000 / 20,000 / 20,000) with
  ``torch.Generator().manual_seed(42)``, so preserving the order reproduces s4/S5's split.
- Pixels: ``Image.open(f).convert("L")``, raster order, ``[0, 1]`` (``center=False``, s4's
  ``pathfinder.yaml``) or ``[−1, 1]`` (``center=True``, what S5 always does).
- Cached as uint8 [N, H·W] (Path-X: 200,000 × 16,384 B ≈ 3.3 GB instead of 13 GB of float32) and
  labels uint8 [N]; PNGs are decoded once (optionally in ``prepare_workers`` processes).
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ssmlit.errors import check_bool, check_float, check_int

from .base import seeded_split
from .download import DataError, choose_copy, find_paths, open_array, save_array
from .images import PixelDataModule, PixelDataset, PixelTransform
from .listops import LRA_SOURCE

log = logging.getLogger(__name__)


def read_pathfinder_metadata(folder: Path) -> tuple[list[Path], np.ndarray]:
    """Image paths and uint8 labels listed in ``folder/metadata/*.npy`` (text), in s4's order."""
    meta = folder / "metadata"
    files = sorted((p for p in meta.iterdir() if p.suffix == ".npy" and p.stem.isdigit()), key=lambda p: int(p.stem))
    paths, labels = [], []
    for f in files:
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4 or fields[3] not in ("0", "1"):
                raise DataError(f"{f}, line {i}: expected '<subdir> <file> <nimg> <label 0/1> ...', got {line!r:.200}")
            paths.append(folder / fields[0] / fields[1])
            labels.append(int(fields[3]))
    if not paths:
        raise DataError(f"{meta}: no metadata lines found")
    return paths, np.asarray(labels, dtype=np.uint8)


def decode_png(path: Path, resolution: int) -> np.ndarray:
    """uint8 [resolution²] grayscale pixels of one image in raster order (``convert("L")``)."""
    try:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("L"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:  # missing, empty or truncated PNG
        raise DataError(f"{path}: cannot read the image ({e})") from e
    if pixels.shape != (resolution, resolution):
        raise DataError(f"{path}: image is {pixels.shape[1]}×{pixels.shape[0]}, expected {resolution}×{resolution}")
    return pixels.reshape(-1)


def _decode_chunk(args: tuple[list[Path], int]) -> np.ndarray:
    paths, resolution = args
    return np.stack([decode_png(p, resolution) for p in paths])


class PathfinderDataModule(PixelDataModule):
    """Pathfinder / Path-X (see module docstring). Batches: x float32 [B, resolution², 1] in
    [0, 1] (or [−1, 1] with ``center``), y long [B] in {0, 1}, lengths long [B] (= resolution²).

    Args:
        resolution: 32 (Pathfinder), 64, 128 (Path-X) or 256.
        difficulty: ``curv_contour_length_14`` (hard, used by the papers), ``curv_contour_length_9``
            or ``curv_baseline``.
        center: map pixels to [−1, 1] (S5) instead of [0, 1] (s4).
        val_frac, test_frac: held-out fractions of the one released set (0.1 each).
        prepare_workers: processes decoding PNGs while building the cache (0: in this process).
        **kwargs: :class:`~ssmlit.data.base.CachedDataModule` arguments (``seed`` fixes the split;
            42 in s4/S5).
    """

    task_name = "pathfinder"
    d_input = 1
    num_classes = 2
    sources = (LRA_SOURCE,)
    RESOLUTIONS = (32, 64, 128, 256)
    DIFFICULTIES = ("curv_contour_length_14", "curv_contour_length_9", "curv_baseline")

    def __init__(self, resolution: int = 32, difficulty: str = "curv_contour_length_14", center: bool = False,
                 val_frac: float = 0.1, test_frac: float = 0.1, prepare_workers: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if resolution not in self.RESOLUTIONS:
            raise ValueError(f"resolution must be one of {self.RESOLUTIONS}, got {resolution}")
        if difficulty not in self.DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {self.DIFFICULTIES}, got {difficulty!r}")
        check_bool("center", center)
        check_float("val_frac", val_frac, 0, 1, low_open=True, high_open=True)
        check_float("test_frac", test_frac, 0, 1, low_open=True, high_open=True)
        if val_frac + test_frac >= 1:
            raise ValueError(f"val_frac + test_frac must be < 1 (something must be left to train on), got "
                             f"val_frac={val_frac} + test_frac={test_frac}")
        check_int("prepare_workers", prepare_workers, 0)
        self.resolution, self.difficulty, self.center = resolution, difficulty, center
        self.val_frac, self.test_frac, self.prepare_workers = val_frac, test_frac, prepare_workers
        self.l_max = resolution * resolution
        self.transform = PixelTransform(mean=(0.5,), std=(0.5,)) if center else PixelTransform()
        self.expected_files = (
            f"lra_release/lra_release/pathfinder{resolution}/{difficulty}/metadata/<k>.npy (text)",
            f"lra_release/lra_release/pathfinder{resolution}/{difficulty}/imgs/<k>/sample_<i>.png",
        )

    def cache_params(self) -> dict[str, Any]:
        return super().cache_params() | {"resolution": self.resolution, "difficulty": self.difficulty}

    def locate_raw(self) -> Path | None:
        # The release holds lra_release/pathfinder* and lra_release/lra_release/pathfinder*; the S4/S5
        # loaders read only the inner copy (LRA issues #11, #38: the outer one differs), so prefer it.
        roots = find_paths(self.data_dir, f"pathfinder{self.resolution}", kind="dir")
        found = [root / self.difficulty for root in roots if (root / self.difficulty / "metadata").is_dir()]
        return choose_copy(found, f"pathfinder{self.resolution}/{self.difficulty}")

    def build_cache(self, raw: Path, out: Path) -> dict[str, Any]:
        paths, labels = read_pathfinder_metadata(raw)
        images = open_array(out, "all_x", (len(paths), self.l_max), np.uint8)
        chunk = 1024
        jobs = [(paths[i: i + chunk], self.resolution) for i in range(0, len(paths), chunk)]
        if self.prepare_workers > 0:
            with ProcessPoolExecutor(self.prepare_workers) as pool:
                decoded = pool.map(_decode_chunk, jobs)
                for k, block in enumerate(decoded):
                    images[k * chunk: k * chunk + len(block)] = block
        else:
            for k, job in enumerate(jobs):
                block = _decode_chunk(job)
                images[k * chunk: k * chunk + len(block)] = block
        images.flush()
        del images
        save_array(out, "all_y", labels)
        return {"size": len(labels), "raw": str(raw)}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folder, meta = self.load_cache()
        log.info("pathfinder%d: cache %s, built from %s", self.resolution, folder, meta.get("raw", "?"))
        train, val, test = seeded_split(meta["size"], [self.val_frac, self.test_frac], self.seed)
        self.train_set, self.val_set, self.test_set = (PixelDataset(folder, "all", idx) for idx in (train, val, test))
