"""LRA ListOps: the data module and an offline generator with the LRA distribution.

**Data** (``datasets.md`` §2): ``listops-1000/basic_{train,val,test}.tsv`` from the LRA release,
tab-separated with a ``Source<TAB>Target`` header, 96,000 / 2,000 / 2,000 rows, targets 0–9.
Tokenization as s4/S5: ``]`` → ``X``, drop ``(`` and ``)``, split on whitespace (15 distinct tokens;
18 with ``<pad>``, ``<unk>``, ``<eos>``). ``l_max = 2048``, 10 classes.

**Generator**: ``python -m ssmlit.data.listops --out DIR`` writes ``DIR/basic_{train,val,test}.tsv``
in the release's format (``csv.writer`` with a tab delimiter, header row) for users who cannot
fetch the several-GB LRA archive. It follows google-research/long-range-arena
``lra_benchmarks/data/listops.py``: a node at depth < ``max_depth`` is a leaf (uniform digit) with
probability 0.75, otherwise an operator uniform over MIN, MAX, MED, SM with a uniform number of
arguments in {2, …, ``max_args``} generated at depth + 1; trees are kept when
``min_length < length < max_length`` (length = leaves + 2 per operator, parentheses not counted)
and de-duplicated. Rejection is decided as soon as a tree grows past ``max_length``, which leaves
the accepted distribution unchanged and saves generating huge trees.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ssmlit.utils import atomic_write_text

from .download import DataError, Source, choose_copy, find_paths, save_array
from .tokens import TokenDataModule, TokenDataset, ids_dtype, save_ragged

log = logging.getLogger(__name__)

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUE_P = 0.25  # probability of an operator node below max_depth (the LRA constant's name)
SPLIT_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}

LRA_SOURCE = Source(
    urls=("https://storage.googleapis.com/long-range-arena/lra_release.gz",),
    filename="lra_release.gz",  # a gzipped tar despite the name; several GB, no published checksum
    extract_to="",
)

# A tree: a digit, or (((op, a0), a1), …, ak) wrapped as (inner, "]"), the LRA generator's nesting,
# which renders each pair as "( left right )".
Tree = int | str | tuple


# -- generator --------------------------------------------------------------------------------------
class _TooLongError(Exception):
    pass


def generate_tree(rng: random.Random, max_depth: int = 10, max_args: int = 10,
                  max_length: int | None = None) -> tuple[Tree, int]:
    """One random ListOps tree and its length (tokens without parentheses).

    Raises ``_TooLongError`` internally (caught by :func:`generate_listops`) once the running length
    reaches ``max_length``, since such a tree would be rejected anyway.
    """
    used = 0

    def node(depth: int) -> Tree:
        nonlocal used
        r = rng.random() if depth < max_depth else 1.0
        if r > VALUE_P:
            used += 1
            if max_length is not None and used >= max_length:
                raise _TooLongError
            return rng.randint(0, 9)
        used += 2  # operator token and "]"
        n_args = rng.randint(2, max_args)
        args = [node(depth + 1) for _ in range(n_args)]
        tree: Tree = (rng.choice(OPERATORS), args[0])
        for a in args[1:]:
            tree = (tree, a)
        return (tree, END)

    tree = node(1)
    return tree, used


def tree_to_string(tree: Tree) -> str:
    """The release's rendering: each pair ``(a, b)`` becomes ``( a b )``; MAX(2, 9) is
    ``( ( ( [MAX 2 ) 9 ) ] )``."""
    if isinstance(tree, tuple):
        return f"( {tree_to_string(tree[0])} {tree_to_string(tree[1])} )"
    return str(tree)


def evaluate_tree(tree: Tree) -> int:
    """The value of a tree: MIN, MAX, MED (int of the median: an even count truncates the .5), SM
    (sum mod 10)."""
    if isinstance(tree, int):
        return tree
    inner = tree[0]  # strip the (…, "]") wrapper
    args: list[int] = []
    while isinstance(inner[0], tuple):
        args.append(evaluate_tree(inner[1]))
        inner = inner[0]
    op = inner[0]
    args.append(evaluate_tree(inner[1]))
    args.reverse()
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return int(statistics.median(args))
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown operator {op!r}")


def longest_tree(max_depth: int, max_args: int) -> int:
    """The most tokens a tree can have: below ``max_depth`` a node is an operator (2 tokens) with
    ``max_args`` arguments one level deeper; at ``max_depth`` it is a digit (the root is depth 1)."""
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def generate_listops(n: int, seed: int = 0, max_depth: int = 10, max_args: int = 10, min_length: int = 500,
                     max_length: int = 2000, max_tries: int | None = None) -> list[tuple[str, int]]:
    """``n`` distinct ``(source, target)`` examples with ``min_length < length < max_length``,
    in generation order (reproducible from ``seed``)."""
    if not 0 <= min_length < max_length:
        raise ValueError(f"need 0 <= min_length < max_length, got {min_length}, {max_length}")
    if max_args < 2 or max_depth < 1:
        raise ValueError(f"need max_args >= 2 and max_depth >= 1, got {max_args}, {max_depth}")
    longest = longest_tree(max_depth, max_args)
    if min_length + 1 > min(longest, max_length - 1):
        raise ValueError(f"min_length={min_length} cannot be exceeded: with max_depth={max_depth} and "
                         f"max_args={max_args} the longest tree has {longest} tokens (and lengths must stay below "
                         f"max_length={max_length})")
    rng = random.Random(seed)
    seen: dict[str, int] = {}  # insertion-ordered set, as the LRA code collects trees in a set
    tries = 0
    while len(seen) < n:
        tries += 1
        if max_tries is not None and tries > max_tries:
            raise RuntimeError(f"only {len(seen)} of {n} trees with {min_length} < length < {max_length} "
                               f"after {max_tries} tries")
        try:
            tree, length = generate_tree(rng, max_depth, max_args, max_length)
        except _TooLongError:
            continue
        if min_length < length < max_length:
            seen.setdefault(tree_to_string(tree), evaluate_tree(tree))
    return list(seen.items())


def write_listops_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    """Write rows in the release's format: ``csv.writer`` with a tab delimiter (``\\r\\n`` line
    ends, its default), a ``Source<TAB>Target`` header; atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t")
    writer.writerow(["Source", "Target"])
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}, must be an integer >= {minimum}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _writable_target(folder: Path) -> bool:
    """Whether ``folder`` (or, if missing, its nearest existing parent) accepts new files."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def main(argv: list[str] | None = None) -> None:
    """``python -m ssmlit.data.listops --out DIR [--train N --val N --test N --seed S ...]``.

    Bad arguments, impossible length limits and unwritable output folders end in one ``error:``
    line and exit code 2 (argparse's convention)."""
    p = _Parser(prog="python -m ssmlit.data.listops", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output folder (e.g. data/listops-1000)")
    p.add_argument("--train", type=_count(1), default=96_000)
    p.add_argument("--val", type=_count(1), default=2_000)
    p.add_argument("--test", type=_count(1), default=2_000)
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument("--max-depth", type=_count(1), default=10)
    p.add_argument("--max-args", type=_count(2), default=10)
    p.add_argument("--min-length", type=_count(0), default=500)
    p.add_argument("--max-length", type=_count(1), default=2000)
    p.add_argument("--max-tries", type=_count(1), default=None,
                   help="give up after this many generated trees (default: 50 per example + 10,000)")
    args = p.parse_args(argv)
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    total = sum(sizes.values())
    if not _writable_target(args.out):
        p.error(f"--out {args.out}: not a writable folder")
    try:
        rows = generate_listops(total, args.seed, args.max_depth, args.max_args, args.min_length, args.max_length,
                                max_tries=args.max_tries or 50 * total + 10_000)
    except ValueError as e:
        p.error(str(e).replace("min_length", "--min-length").replace("max_length", "--max-length")
                .replace("max_depth", "--max-depth").replace("max_args", "--max-args"))
    except RuntimeError as e:
        p.error(f"{e}; widen --min-length/--max-length, or raise --max-tries")
    start, written = 0, []
    try:
        for split, n in sizes.items():
            write_listops_tsv(args.out / SPLIT_FILES[split], rows[start: start + n])
            written.append((n, args.out / SPLIT_FILES[split]))
            start += n
    except OSError as e:
        for _, path in written:  # no partial set of splits
            path.unlink(missing_ok=True)
        p.error(f"--out {args.out}: cannot write there ({e.strerror or e})")
    for n, path in written:
        print(f"wrote {n} examples to {path}")


# -- data module -----------------------------------------------------------------------------------
def tokenize_listops(source: str) -> list[str]:
    """s4/S5 ListOps tokenization: ``]`` → ``X``, parentheses removed, split on whitespace."""
    return source.replace("]", "X").replace("(", "").replace(")", "").split()


def read_listops_tsv(path: Path) -> list[tuple[str, int]]:
    """Rows of a ListOps TSV (header ``Source<TAB>Target`` required; ``\\n`` or ``\\r\\n``)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or [c.strip() for c in rows[0]] != ["Source", "Target"]:
        raise DataError(f"{path}: expected the header 'Source<TAB>Target', got {rows[0] if rows else 'an empty file'}")
    out = []
    for i, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[1].strip().isdigit():
            raise DataError(f"{path}, line {i}: expected 'source<TAB>target(0-9)', got {row!r:.200}")
        out.append((row[0], int(row[1])))
    return out


class ListOpsDataModule(TokenDataModule):
    """LRA ListOps (see module docstring). Batches: x long [B, L ≤ 2048], y long [B] in 0–9,
    lengths long [B] (EOS included). Vocabulary: 18 entries on the release data.

    Args:
        l_max: maximum length including the EOS (2048).
        **kwargs: :class:`~ssmlit.data.tokens.TokenDataModule` arguments.
    """

    task_name = "listops"
    level = "listops"
    num_classes = 10
    sources = (LRA_SOURCE,)
    expected_files = (
        *(f"lra_release/lra_release/listops-1000/{f}" for f in SPLIT_FILES.values()),
        "(or the output of `python -m ssmlit.data.listops --out <data_dir>/listops-1000`)",
    )

    def __init__(self, l_max: int = 2048, **kwargs: Any) -> None:
        super().__init__(l_max=l_max, **kwargs)

    def locate_raw(self) -> dict[str, Path] | None:
        # A generated set (`python -m ssmlit.data.listops --out <data_dir>/listops-1000`) and the LRA
        # release's copy may both lie beneath data_dir: read the release's, and say so.
        folders = [hit.parent for hit in find_paths(self.data_dir, SPLIT_FILES["train"])
                   if all((hit.parent / name).is_file() for name in SPLIT_FILES.values())]
        chosen = choose_copy(folders, "listops")
        return None if chosen is None else {split: chosen / name for split, name in SPLIT_FILES.items()}

    def build_cache(self, raw: dict[str, Path], out: Path) -> dict[str, Any]:
        splits = {s: read_listops_tsv(p) for s, p in raw.items()}
        tokens = {s: [tokenize_listops(src)[: self.l_max] for src, _ in rows] for s, rows in splits.items()}
        counts: Counter = Counter()
        for t in tokens["train"]:
            counts.update(t[: self.l_max - int(self.append_bos) - int(self.append_eos)])
        vocab = self.new_vocab(counts)
        dtype = ids_dtype(len(vocab))
        for s, rows in splits.items():
            save_ragged(out, s, (vocab.encode(t, self.l_max) for t in tokens[s]), dtype)
            save_array(out, f"{s}_labels", np.asarray([y for _, y in rows], dtype=np.uint8))
        atomic_write_text(out / "vocab.json", vocab.to_json())
        return {"vocab_size": len(vocab), "sizes": {s: len(r) for s, r in splits.items()},
                "raw": {s: str(p) for s, p in raw.items()}}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folder, meta = self.load_cache()
        log.info("listops: cache %s, built from %s", folder, (meta.get("raw") or {}).get("train", "?"))
        self.load_vocab(folder)
        self.train_set, self.val_set, self.test_set = (TokenDataset(folder, s) for s in SPLIT_FILES)


if __name__ == "__main__":
    main()
