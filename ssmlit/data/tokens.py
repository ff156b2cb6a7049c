"""Shared machinery of the token tasks (ListOps, Text, Retrieval): vocabulary, ragged caches, datasets.

Conventions (state-spaces/s4, copied by S5; see ``datasets.md`` §0):

- specials first, in this order: ``<pad>`` = 0, ``<unk>`` = 1, then ``<bos>`` if ``append_bos``,
  then ``<eos>`` if ``append_eos`` (default: ``<pad>`` 0, ``<unk>`` 1, ``<eos>`` 2);
- the vocabulary is built from the **train split only**, from the token lists *after* truncation
  (s4 truncates before building it), keeping tokens seen ``>= min_freq`` times, ordered by
  descending frequency with ties broken lexicographically (torchtext's order);
- a sequence is ``[<bos>] + tokens[: l_max − bos − eos] + [<eos>]``; its length includes the EOS.

Token ids are cached as one flat uint8 (or int16) array per split plus int64 offsets, so epochs
never re-tokenize, and a document is one slice of a memory map.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssmlit.errors import check_bool, check_int

from .base import CachedDataModule, pad_collate
from .download import LazyArray, open_array, save_array

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
PADDINGS = ("batch", "reference")


@dataclass
class Vocab:
    """A token ↔ id table with the s4 special-token layout (see module docstring).

    Attributes:
        itos: id → token, specials first.
        append_bos, append_eos: whether sequences get ``<bos>`` / ``<eos>``.
    """

    itos: list[str]
    append_bos: bool = False
    append_eos: bool = True
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if self.itos[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD}, {UNK}; got {self.itos[:2]}")

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def bos_id(self) -> int | None:
        return self.stoi[BOS] if self.append_bos else None

    @property
    def eos_id(self) -> int | None:
        return self.stoi[EOS] if self.append_eos else None

    @property
    def n_specials(self) -> int:
        return 2 + int(self.append_bos) + int(self.append_eos)

    def content_len(self, l_max: int) -> int:
        """How many content tokens fit in ``l_max`` next to the BOS/EOS."""
        return l_max - int(self.append_bos) - int(self.append_eos)

    def encode(self, tokens: Sequence[str], l_max: int) -> np.ndarray:
        """int64 [≤ l_max] ids of ``[<bos>] + tokens[:l_max − specials] + [<eos>]``; unknown → ``<unk>``."""
        ids = [self.stoi.get(t, 1) for t in tokens[: self.content_len(l_max)]]
        return self._wrap(np.asarray(ids, dtype=np.int64))

    def encode_chars(self, text: str, l_max: int) -> np.ndarray:
        """As :meth:`encode` for ``list(text)`` (Unicode code points), vectorised through a sorted
        code-point table: IMDB alone is ~33M characters per split."""
        if not hasattr(self, "_cp"):
            chars = [(ord(t), i) for i, t in enumerate(self.itos) if len(t) == 1 and i >= self.n_specials]
            chars.sort()
            self._cp = np.asarray([c for c, _ in chars], dtype=np.uint32)
            self._cp_ids = np.asarray([i for _, i in chars], dtype=np.int64)
        codes = np.frombuffer(text[: self.content_len(l_max)].encode("utf-32-le"), dtype="<u4")
        if len(self._cp) == 0:
            return self._wrap(np.full(len(codes), self.unk_id, dtype=np.int64))
        pos = np.minimum(np.searchsorted(self._cp, codes), len(self._cp) - 1)
        ids = np.where(self._cp[pos] == codes, self._cp_ids[pos], self.unk_id)
        return self._wrap(ids.astype(np.int64))

    def _wrap(self, ids: np.ndarray) -> np.ndarray:
        parts = [np.asarray([self.bos_id])] if self.append_bos else []
        parts.append(ids)
        if self.append_eos:
            parts.append(np.asarray([self.eos_id]))
        return np.concatenate(parts).astype(np.int64)

    def to_json(self) -> str:
        return json.dumps({"itos": self.itos, "append_bos": self.append_bos, "append_eos": self.append_eos},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        d = json.loads(text)
        return cls(d["itos"], d["append_bos"], d["append_eos"])


def build_vocab(counts: Counter, min_freq: int = 1, append_bos: bool = False, append_eos: bool = True) -> Vocab:
    """Specials, then tokens with ``count >= min_freq`` by descending count, ties lexicographic."""
    specials = [PAD, UNK] + ([BOS] if append_bos else []) + ([EOS] if append_eos else [])
    kept = [(t, c) for t, c in counts.items() if c >= min_freq and t not in specials]
    kept.sort(key=lambda tc: (-tc[1], tc[0]))
    return Vocab(specials + [t for t, _ in kept], append_bos, append_eos)


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned/signed integer type holding every id: uint8 for all the paper's tasks."""
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 32768:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def save_ragged(out: Path, name: str, seqs: Iterable[np.ndarray], dtype: np.dtype) -> int:
    """Write sequences as ``{name}_ids.npy`` (flat ``dtype``) and ``{name}_offsets.npy`` (int64 [N+1]);
    sequence i is ``ids[offsets[i]:offsets[i+1]]``. Returns N.

    Each sequence is narrowed to ``dtype`` as it arrives and the flat array is filled through a
    memory map: AAN's train split is ~1.2 billion ids, 9 GB if concatenated as int64.
    """
    kept = [np.asarray(s).astype(dtype, copy=False) for s in seqs]
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in kept], out=offsets[1:])
    flat = open_array(out, f"{name}_ids", (int(offsets[-1]),), dtype)
    for s, start in zip(kept, offsets[:-1]):
        flat[start: start + len(s)] = s
    flat.flush()
    del flat
    save_array(out, f"{name}_offsets", offsets)
    return len(kept)


class TokenDataset(Dataset):
    """Ragged token sequences from a cache folder.

    ``dataset[i]`` is ``(x, y)``: x long [L_i] (ids, EOS included), y int. With ``pairs=True``
    (retrieval) consecutive sequences 2j, 2j+1 form example j and ``dataset[i]`` is
    ``(x, y, lengths)``: x long [2, max(L_a, L_b)] (the shorter one right-padded with ``<pad>`` = 0),
    lengths long [2].

    Args:
        folder, name: the cache folder and split name (``{name}_ids/_offsets/_labels.npy``).
        indices: optional subset (example indices) in order.
    """

    def __init__(self, folder: Path, name: str, indices: np.ndarray | None = None, pairs: bool = False) -> None:
        self.ids = LazyArray(folder / f"{name}_ids.npy")
        self.offsets = np.load(folder / f"{name}_offsets.npy")
        self.labels = np.load(folder / f"{name}_labels.npy").astype(np.int64)
        self.pairs = pairs
        n = len(self.labels)
        if len(self.offsets) - 1 != (2 * n if pairs else n):
            raise RuntimeError(f"cache {folder} is inconsistent for split {name}: {len(self.offsets) - 1} sequences "
                               f"for {n} labels")
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def _seq(self, k: int) -> torch.Tensor:
        return torch.from_numpy(self.ids[self.offsets[k]: self.offsets[k + 1]].astype(np.int64))

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        j = int(self.indices[i])
        y = int(self.labels[j])
        if not self.pairs:
            return self._seq(j), y
        a, b = self._seq(2 * j), self._seq(2 * j + 1)
        x = torch.zeros(2, max(len(a), len(b)), dtype=torch.long)
        x[0, : len(a)], x[1, : len(b)] = a, b
        return x, y, torch.tensor([len(a), len(b)], dtype=torch.long)


class TokenDataModule(CachedDataModule):
    """Base of the token tasks: vocabulary from train, ragged uint8 caches, ``<pad>``-padded batches.

    Batches: x long [B, L] (retrieval [B, 2, L]), y long [B], lengths long [B] ([B, 2]), with L
    the longest sequence in the batch (s4's padding; the model masks padding), or ``l_max`` with
    ``padding="reference"``.

    Args:
        l_max: maximum sequence length including BOS/EOS.
        min_freq: minimum train count of a vocabulary token.
        append_bos, append_eos: special tokens around each sequence.
        padding: ``batch`` (default): pad to the batch's longest sequence and let the model zero
            the padding before every SSM, so outputs do not depend on it; ``reference``: S5's
            padding, every batch padded to ``l_max`` with ``<pad>`` and the model told not to mask
            (``mask_padding=False``): BatchNorm statistics and the backward scan of bidirectional
            layers see the pad tokens; only the pooling is masked. The published S5 numbers were
            produced this way.
        **kwargs: :class:`~ssmlit.data.base.CachedDataModule` arguments.
    """

    level: str = "char"

    def __init__(self, l_max: int, min_freq: int = 1, append_bos: bool = False, append_eos: bool = True,
                 padding: str = "batch", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_int("l_max", l_max, 2)
        check_int("min_freq", min_freq, 1)
        check_bool("append_bos", append_bos)
        check_bool("append_eos", append_eos)
        if padding not in PADDINGS:
            raise ValueError(f"unknown token padding {padding!r}; choose one of {PADDINGS} (batch: to the batch's "
                             "longest, masked in the model; reference: S5's, to l_max, seen by the SSMs)")
        self.padding = padding
        self.l_max, self.min_freq = l_max, min_freq
        self.append_bos, self.append_eos = append_bos, append_eos
        self.vocab: Vocab | None = None

    def cache_params(self) -> dict[str, Any]:
        return super().cache_params() | dict(l_max=self.l_max, min_freq=self.min_freq, level=self.level,
                                             append_bos=self.append_bos, append_eos=self.append_eos)

    def collate(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return pad_collate(batch, self.l_max if self.padding == "reference" else None)

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = super().model_kwargs()
        if self.padding == "reference":
            kwargs["mask_padding"] = False
        return kwargs

    def new_vocab(self, counts: Counter) -> Vocab:
        return build_vocab(counts, self.min_freq, self.append_bos, self.append_eos)

    def load_vocab(self, folder: Path) -> Vocab:
        """Read ``vocab.json`` from the cache and set ``vocab_size`` (needed by the model)."""
        self.vocab = Vocab.from_json((folder / "vocab.json").read_text(encoding="utf-8"))
        self.vocab_size = len(self.vocab)
        return self.vocab
