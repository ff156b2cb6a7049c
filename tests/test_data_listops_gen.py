"""The offline ListOps generator: output parses, respects the bounds, and its labels are right.

The evaluator here is independent of the generator: it reads the rendered token string with a
stack, exactly as a reader of the released TSV would.
"""

import csv
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from ssmlit.data import ListOpsDataModule
from ssmlit.data.listops import generate_listops

OPS = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(statistics.median(a)), "[SM": lambda a: sum(a) % 10}


def parse_and_evaluate(source: str) -> tuple[int, int, int, int]:
    """(value, length without parentheses, depth counting the leaves, max arguments of one operator)."""
    stack: list[tuple[str, list[int]]] = []
    length = depth = widest = 0
    value = None
    parens = 0
    for tok in source.split():
        if tok == "(":
            parens += 1
            continue
        if tok == ")":
            parens -= 1
            assert parens >= 0, "unbalanced parentheses"
            continue
        length += 1
        if tok in OPS:
            stack.append((tok, []))
            depth = max(depth, len(stack))
        elif tok == "]":
            op, args = stack.pop()
            assert len(args) >= 2, f"{op} with {len(args)} arguments"
            widest = max(widest, len(args))
            v = OPS[op](args)
            if stack:
                stack[-1][1].append(v)
            else:
                value = v
        else:
            assert tok.isdigit() and len(tok) == 1, tok
            depth = max(depth, len(stack) + 1)
            if stack:
                stack[-1][1].append(int(tok))
            else:
                value = int(tok)
    assert parens == 0 and not stack and value is not None
    return value, length, depth, widest


def test_parser_on_known_expressions():
    assert parse_and_evaluate("( ( ( [MAX 2 ) 9 ) ] )") == (9, 4, 2, 2)
    assert parse_and_evaluate("( ( ( ( ( [MED 1 ) 2 ) 3 ) 4 ) ] )")[0] == 2  # median 2.5 truncates
    assert parse_and_evaluate("( ( ( [SM 8 ) ( ( ( [MIN 3 ) 5 ) ] ) ) ] )")[:3] == (1, 7, 3)


@pytest.mark.parametrize("bounds", [(20, 100, 10, 10), (5, 60, 4, 3)])
def test_generated_examples_parse_evaluate_and_respect_bounds(bounds):
    min_len, max_len, max_depth, max_args = bounds
    rows = generate_listops(40, seed=1, max_depth=max_depth, max_args=max_args, min_length=min_len,
                            max_length=max_len)
    assert len(rows) == 40 and len({s for s, _ in rows}) == 40  # de-duplicated
    ops_seen = set()
    for source, target in rows:
        value, length, depth, widest = parse_and_evaluate(source)
        assert value == target and 0 <= target <= 9
        assert min_len < length < max_len and depth <= max_depth and widest <= max_args
        ops_seen |= {t for t in source.split() if t.startswith("[")}
    assert ops_seen == set(OPS)
    assert generate_listops(40, seed=1, max_depth=max_depth, max_args=max_args, min_length=min_len,
                            max_length=max_len) == rows  # reproducible
    assert generate_listops(5, seed=2, min_length=min_len, max_length=max_len) != rows[:5]


def test_lra_default_bounds():
    rows = generate_listops(4, seed=0)  # 500 < length < 2000, depth <= 10, <= 10 arguments
    for source, target in rows:
        value, length, depth, widest = parse_and_evaluate(source)
        assert value == target and 500 < length < 2000 and depth <= 10 and widest <= 10


def test_cli_writes_release_format_that_the_data_module_reads(tmp_path):
    out = tmp_path / "data" / "listops-1000"
    # the documented entry point, in a fresh interpreter; -W error: runpy must not warn that the
    # package imported the module before running it
    cmd = [sys.executable, "-W", "error::RuntimeWarning", "-m", "ssmlit.data.listops", "--out", str(out),
           "--train", "12", "--val", "3", "--test", "4", "--seed", "5", "--min-length", "10", "--max-length", "80"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 12 examples" in proc.stdout
    raw = (out / "basic_train.tsv").read_bytes()
    assert raw.startswith(b"Source\tTarget\r\n")  # csv.writer with a tab delimiter, as the LRA generator
    sources = set()
    for split, n in (("train", 12), ("val", 3), ("test", 4)):
        with open(out / f"basic_{split}.tsv", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))[1:]
        assert len(rows) == n
        for source, target in rows:
            assert parse_and_evaluate(source)[0] == int(target)
            sources.add(source)
    assert len(sources) == 19  # no example in two splits
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # atomic writes left no temp files

    dm = ListOpsDataModule(data_dir=tmp_path / "data", batch_size=4)
    dm.prepare_data()
    dm.setup()
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [12, 3, 4]
    assert dm.vocab.itos[3] == "X"  # every operator node closes with "]"
