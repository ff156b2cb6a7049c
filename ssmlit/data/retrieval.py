"""LRA Retrieval: ACL Anthology Network document pairs at the character level (``datasets.md`` §4).

Files: ``tsv_data/new_aan_pairs.{train,eval,test}.tsv`` from the LRA release — tab-separated, no
header, 5 columns ``label, input1_id, input2_id, text1, text2``; the label is written as a float
("1.0") and cast to int, the ids are dropped. Sizes 147,086 / 18,090 / 17,437. Each document is
``list(text)[: l_max − 1] + [<eos>]`` with ``l_max = 4000``; the vocabulary comes from text1 and
text2 of train (no ``min_freq``; ≈ 98 entries). 2 classes.

Rows are split on tabs with **no quote handling** (the LRA pipeline's ``QUOTE_NONE``): the texts
contain ``"``, which CSV readers with default quoting would treat as field quotes and so merge
rows. Splitting on newlines and tabs only makes one row per line by construction. Blank lines
(an empty last line) are skipped; a line that does not split into exactly 5 fields or whose label
is not 0/1 is skipped too, counted and reported with its line number (a warning, and
``malformed`` in the cache's ``meta.json``) instead of aborting the whole cache build. The row
counts are compared with the published ones (a mismatch, e.g. a truncated file, is logged as a
warning, or raised with ``strict_sizes=True``).

Batches: x long [B, 2, L], y long [B], lengths long [B, 2]; the model encodes both documents
with shared weights, pools each over its own length and classifies [u, v, u − v, u·v].
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ssmlit.errors import check_bool
from ssmlit.utils import atomic_write_text

from .download import DataError, find_split_files, save_array
from .listops import LRA_SOURCE
from .tokens import TokenDataModule, TokenDataset, ids_dtype, save_ragged

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
PUBLISHED_SIZES = {"train": 147_086, "val": 18_090, "test": 17_437}


def read_aan_tsv(
    path: Path, keep: int | None = None
) -> tuple[list[tuple[str, str]], np.ndarray, list[tuple[int, str]]]:
    """``([(text1[:keep], text2[:keep]), ...], uint8 labels, malformed)`` of one AAN TSV, quoting
    disabled.

    The file is streamed line by line (only ``\\n`` ends a line) and only the first ``keep``
    characters of each text are kept, since nothing beyond ``l_max`` is ever used. Blank lines are
    skipped; ``malformed`` lists ``(line number, reason)`` of the skipped lines that are not blank
    (not exactly 5 fields, or a label other than 0/1).
    """
    pairs, labels, malformed = [], [], []
    with open(path, encoding="utf-8", newline="\n") as f:
        for i, line in enumerate(f, start=1):
            text = line.removesuffix("\n").removesuffix("\r")
            if not text.strip():
                continue
            fields = text.split("\t")
            if len(fields) != 5:
                malformed.append((i, f"expected 5 tab-separated fields (label, id1, id2, text1, text2), "
                                     f"got {len(fields)}"))
                continue
            try:
                label = float(fields[0])
            except ValueError:
                malformed.append((i, f"label {fields[0]!r} is not a number"))
                continue
            if label not in (0.0, 1.0):
                malformed.append((i, f"label {fields[0]!r} is not 0 or 1"))
                continue
            pairs.append((fields[3][:keep], fields[4][:keep]))
            labels.append(int(label))
    return pairs, np.asarray(labels, dtype=np.uint8), malformed


def _report_malformed(path: Path, malformed: list[tuple[int, str]], shown: int = 10) -> None:
    lines = "; ".join(f"line {i}: {why}" for i, why in malformed[:shown])
    more = f" (and {len(malformed) - shown} more)" if len(malformed) > shown else ""
    log.warning(f"{path}: skipped {len(malformed)} malformed line(s): {lines}{more}")


class AANDataModule(TokenDataModule):
    """LRA Retrieval / AAN (see module docstring).

    Args:
        l_max: maximum length of each document including its EOS (4000).
        strict_sizes: raise (instead of warning) when the row counts differ from the published
            147,086 / 18,090 / 17,437.
        **kwargs: :class:`~ssmlit.data.tokens.TokenDataModule` arguments.
    """

    task_name = "aan"
    num_classes = 2
    retrieval = True
    sources = (LRA_SOURCE,)
    expected_files = tuple(f"lra_release/lra_release/tsv_data/{f}" for f in SPLIT_FILES.values())

    def __init__(self, l_max: int = 4000, strict_sizes: bool = False, **kwargs: Any) -> None:
        super().__init__(l_max=l_max, **kwargs)
        self.strict_sizes = check_bool("strict_sizes", strict_sizes)

    def locate_raw(self) -> dict[str, Path] | None:
        return find_split_files(self.data_dir, SPLIT_FILES)

    def build_cache(self, raw: dict[str, Path], out: Path) -> dict[str, Any]:
        keep = self.l_max - int(self.append_bos) - int(self.append_eos)
        splits, malformed = {}, {}
        for s, p in raw.items():
            pairs, labels, bad = read_aan_tsv(p, keep)
            if bad:
                _report_malformed(p, bad)
                malformed[s] = {"file": str(p), "count": len(bad), "lines": [i for i, _ in bad[:1000]]}
            if not len(labels):
                raise DataError(f"{p}: no valid row (label, id1, id2, text1, text2) in the file"
                                + (f"; {len(bad)} malformed line(s), the first: line {bad[0][0]}: {bad[0][1]}"
                                   if bad else ""))
            splits[s] = (pairs, labels)
        sizes = {s: len(v[1]) for s, v in splits.items()}
        if sizes != PUBLISHED_SIZES:
            msg = f"AAN row counts {sizes} differ from the published {PUBLISHED_SIZES} (files: {raw})"
            if self.strict_sizes:
                raise DataError(msg)
            log.warning(msg)
        counts: Counter = Counter()  # over the truncated texts, as s4 builds it from truncated token lists
        for a, b in splits["train"][0]:
            counts.update(a)
            counts.update(b)
        vocab = self.new_vocab(counts)
        dtype = ids_dtype(len(vocab))
        for s, (pairs, labels) in splits.items():
            # documents interleaved: sequence 2j is text1 of pair j, 2j + 1 its text2
            docs = (vocab.encode_chars(t, self.l_max) for pair in pairs for t in pair)
            save_ragged(out, s, docs, dtype)
            save_array(out, f"{s}_labels", labels)
        atomic_write_text(out / "vocab.json", vocab.to_json())
        return {"vocab_size": len(vocab), "sizes": sizes, "raw": {s: str(p) for s, p in raw.items()},
                "malformed": malformed}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folder, _ = self.load_cache()
        self.load_vocab(folder)
        self.train_set, self.val_set, self.test_set = (TokenDataset(folder, s, pairs=True) for s in SPLIT_FILES)
