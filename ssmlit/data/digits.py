"""The embedded default task: scikit-learn's bundled 8×8 handwritten digits as pixel sequences.

1,797 real images (UCI optical digits test set) ship inside scikit-learn, so this task needs no
download. Each image is read in raster order as a length-64 sequence of one pixel intensity in
[0, 1] (the original 0–16 scale divided by 16); 10 classes. The split is a fixed, seeded,
class-stratified 70 / 15 / 15 % train/val/test split (1,257 / 270 / 270).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ssmlit.errors import check_float

from .base import SequenceDataModule


def digits_split(seed: int = 0, val_frac: float = 0.15, test_frac: float = 0.15):
    """Return ``((x_train, y_train), (x_val, y_val), (x_test, y_test))`` as float32 [N, 64, 1] and
    int64 [N] tensors, the split stratified by class and fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"need 0 < val_frac, test_frac and val_frac + test_frac < 1, got {val_frac}, {test_frac}")
    data = load_digits()
    x = (data.images.reshape(-1, 64, 1) / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_frac, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=val_frac / (1 - test_frac), stratify=y[rest], random_state=seed)
    return tuple((torch.from_numpy(x[i]), torch.from_numpy(y[i])) for i in (train, val, test))


class DigitsDataModule(SequenceDataModule):
    """scikit-learn digits, length-64 pixel sequences, 10 classes (see module docstring)."""

    d_input = 1
    num_classes = 10
    l_max = 64

    def __init__(self, val_frac: float = 0.15, test_frac: float = 0.15, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_float("val_frac", val_frac, 0, 1, low_open=True, high_open=True)
        check_float("test_frac", test_frac, 0, 1, low_open=True, high_open=True)
        if val_frac + test_frac >= 1:
            raise ValueError(f"val_frac + test_frac must be < 1 (something must be left to train on), got "
                             f"val_frac={val_frac} + test_frac={test_frac}")
        self.val_frac, self.test_frac = val_frac, test_frac

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = digits_split(self.seed, self.val_frac, self.test_frac)
        self.train_set, self.val_set, self.test_set = (TensorDataset(x, y) for x, y in splits)
