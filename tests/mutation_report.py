"""Summarize a mutmut run (``make mutate``): mutation score per package and file, and the survivors
that nobody has triaged yet.

    python tests/mutation_report.py             # the table, then untriaged survivors by name
    python tests/mutation_report.py --all       # also list the triaged (equivalent) ones

The score is killed / (mutants tried − equivalent), where "killed" includes timeouts (an infinite
loop is a detected change, as mutmut counts it) and "equivalent" are the mutants listed in
``tests/mutation_equivalent.txt``: one mutant name per line followed by why it changes no
behaviour. ``mutmut show NAME`` prints a mutant's diff. Mutants whose function no fast test
reaches ("no tests") count as not killed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ssmlit/pruning", "ssmlit/models")
TRIAGE = ROOT / "tests" / "mutation_equivalent.txt"

# mutmut 3 exit codes (mutmut/stats.py): 1 and 3 killed, 0 survived, 5/33 no tests, timeouts as below.
KILLED, TIMEOUT, SURVIVED, NO_TESTS = {1, 3}, {36, 24, -24, 152, 255}, {0}, {5, 33}


def status(code: int | None) -> str:
    if code is None:
        return "not checked"
    if code in KILLED:
        return "killed"
    if code in TIMEOUT:
        return "timeout"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    return "suspicious"


def load_triage(path: Path = TRIAGE) -> dict[str, str]:
    """Mutant name → reason it is equivalent."""
    out = {}
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            sys.exit(f"{path.name}:{n}: {name} has no reason; say why the mutant changes no behaviour")
        out[name] = reason.strip()
    return out


def excluded_patterns() -> list[str]:
    """``do_not_mutate`` of ``[tool.mutmut]`` (files mutmut skips; stale results there are ignored)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: no exclusions known
        return []
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(data.get("tool", {}).get("mutmut", {}).get("do_not_mutate", []))


def load_results(mutants: Path) -> dict[str, tuple[str, str]]:
    """Mutant name → (source file, status) for the packages under study."""
    out = {}
    skip = excluded_patterns()
    for pkg in PACKAGES:
        for meta in sorted((mutants / pkg).glob("*.py.meta")):
            data = json.loads(meta.read_text())
            src = str(meta.relative_to(mutants))[: -len(".meta")]
            if any(fnmatch.fnmatch(src, p) for p in skip):
                continue
            for name, code in data.get("exit_code_by_key", {}).items():
                out[name] = (src, status(code))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="also list triaged (equivalent) survivors")
    ap.add_argument("--mutants", type=Path, default=ROOT / "mutants", help="mutmut's working copy")
    args = ap.parse_args(argv)
    if not args.mutants.is_dir():
        print(f"no {args.mutants}: run `make mutate` first", file=sys.stderr)
        return 2
    results, triage = load_results(args.mutants), load_triage()
    by_file: dict[str, Counter] = defaultdict(Counter)
    untriaged, equivalent = [], []
    for name, (src, st) in sorted(results.items()):
        if st in ("survived", "no tests", "suspicious") and name in triage:
            st = "equivalent"
            equivalent.append(name)
        elif st in ("survived", "no tests", "suspicious"):
            untriaged.append((name, st))
        by_file[src][st] += 1

    cols = ("killed", "timeout", "survived", "no tests", "suspicious", "equivalent", "not checked")
    print(f"{'file':34s} {'mutants':>7s} " + " ".join(f"{c:>11s}" for c in cols) + "   score")

    def row(label: str, c: Counter) -> None:
        tried = sum(c.values()) - c["not checked"]
        denom = tried - c["equivalent"]
        score = f"{100 * (c['killed'] + c['timeout']) / denom:6.1f}%" if denom else "     -"
        print(f"{label:34s} {sum(c.values()):7d} " + " ".join(f"{c[k]:11d}" for k in cols) + f"  {score}")

    for pkg in PACKAGES:
        total = Counter()
        for src in sorted(f for f in by_file if f.startswith(pkg + "/")):
            row(src, by_file[src])
            total += by_file[src]
        row(f"{pkg}/ (all)", total)
        print()
    stale = sorted(set(triage) - set(equivalent))
    if untriaged:
        print(f"{len(untriaged)} untriaged (kill with a test, or list in {TRIAGE.name} with the reason):")
        for name, st in untriaged:
            print(f"  {name}  [{st}]")
    if args.all and equivalent:
        print("equivalent:")
        for name in equivalent:
            print(f"  {name}  {triage[name]}")
    if stale:
        print(f"{len(stale)} entries of {TRIAGE.name} are not survivors of this run (killed, renamed or gone):")
        for name in stale:
            print(f"  {name}  [{results.get(name, ('', 'not in this run'))[1]}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
