"""LRA Text: IMDB movie-review sentiment at the character level (``datasets.md`` §3).

Source: the Stanford archive ``aclImdb_v1.tar.gz`` (``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``,
25,000 + 25,000 reviews; ``unsup`` is ignored). Label by folder: neg = 0, pos = 1. Each review is
``list(text)`` — Unicode code points, no lowercasing, HTML kept — truncated to ``l_max − 1`` and
followed by ``<eos>``; the vocabulary is built from the train split with ``min_freq = 15``
(135 entries on the real data). ``l_max = 4096``, 2 classes.

IMDB has no validation split: like s4 and S5 (and the LRA paper) the test set doubles as the
validation set by default (``val_frac = 0``), so published numbers are test-selected. With
``val_frac > 0`` a seeded fraction of train is held out instead (the vocabulary still comes from
all 25,000 training reviews, so the cache is shared).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ssmlit.errors import check_float
from ssmlit.utils import atomic_write_text

from .base import seeded_split
from .download import Source, find_paths, save_array
from .tokens import TokenDataModule, TokenDataset, ids_dtype, save_ragged

IMDB_SOURCE = Source(
    urls=("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",),
    filename="aclImdb_v1.tar.gz",
    md5="7c2ac02c03563afcf9b574c7e56c153a",  # torchtext's IMDB checksum
    extract_to="",
)
LABELS = {"neg": 0, "pos": 1}
_REVIEW = re.compile(r"^(\d+)_(\d+)\.txt$")


def read_imdb_split(folder: Path) -> tuple[list[str], np.ndarray]:
    """Texts and uint8 labels of ``aclImdb/<split>``: neg then pos, each by review id."""
    texts, labels = [], []
    for name, label in LABELS.items():
        files = []
        for p in (folder / name).iterdir():
            m = _REVIEW.match(p.name)
            if m:
                files.append(((int(m.group(1)), int(m.group(2))), p))
        for _, p in sorted(files):
            # Universal newlines, as the Hugging Face builder reads the files (s4/S5 use that copy).
            texts.append(p.read_text(encoding="utf-8"))
            labels.append(label)
    return texts, np.asarray(labels, dtype=np.uint8)


class IMDBDataModule(TokenDataModule):
    """LRA Text / IMDB characters (see module docstring). Batches: x long [B, L ≤ 4096],
    y long [B] in {0, 1}, lengths long [B] (EOS included).

    Args:
        l_max: maximum length including the EOS (4096).
        min_freq: vocabulary threshold on train counts (15).
        val_frac: 0 → validate on the test set (s4/S5/LRA); > 0 → seeded hold-out of train.
        **kwargs: :class:`~ssmlit.data.tokens.TokenDataModule` arguments.
    """

    task_name = "imdb"
    num_classes = 2
    sources = (IMDB_SOURCE,)
    expected_files = ("aclImdb/train/pos/*.txt", "aclImdb/train/neg/*.txt", "aclImdb/test/pos/*.txt",
                      "aclImdb/test/neg/*.txt")

    def __init__(self, l_max: int = 4096, min_freq: int = 15, val_frac: float = 0.0, **kwargs: Any) -> None:
        super().__init__(l_max=l_max, min_freq=min_freq, **kwargs)
        check_float("val_frac", val_frac, 0, 1, high_open=True)
        self.val_frac = val_frac

    def locate_raw(self) -> Path | None:
        for root in find_paths(self.data_dir, "aclImdb", kind="dir"):
            if all((root / s / c).is_dir() for s in ("train", "test") for c in LABELS):
                return root
        return None

    def build_cache(self, raw: Path, out: Path) -> dict[str, Any]:
        splits = {s: read_imdb_split(raw / s) for s in ("train", "test")}
        keep = self.l_max - int(self.append_bos) - int(self.append_eos)
        counts: Counter = Counter()
        for text in splits["train"][0]:
            counts.update(text[:keep])  # s4 builds the vocabulary from the truncated token lists
        vocab = self.new_vocab(counts)
        dtype = ids_dtype(len(vocab))
        for s, (texts, labels) in splits.items():
            save_ragged(out, s, (vocab.encode_chars(t, self.l_max) for t in texts), dtype)
            save_array(out, f"{s}_labels", labels)
        atomic_write_text(out / "vocab.json", vocab.to_json())
        return {"vocab_size": len(vocab), "sizes": {s: len(v[1]) for s, v in splits.items()}, "raw": str(raw)}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folder, _ = self.load_cache()
        self.load_vocab(folder)
        self.test_set = TokenDataset(folder, "test")
        if self.val_frac == 0:
            self.train_set, self.val_set = TokenDataset(folder, "train"), self.test_set
        else:
            n = len(TokenDataset(folder, "train"))
            train_idx, val_idx = seeded_split(n, [self.val_frac], self.seed)
            self.train_set = TokenDataset(folder, "train", train_idx)
            self.val_set = TokenDataset(folder, "train", val_idx)
