"""One run per run directory: a second run started in a directory that holds one is refused.

Two runs in one directory would interleave their checkpoints, ``results.json`` and TensorBoard
files with nothing to tell them apart. A run claims its directory by creating the marker
``.ssmlit-run.json`` exclusively (``O_EXCL``: of two runs started at the same moment only one
succeeds); a directory with the marker or with run outputs (``checkpoints/``, ``results.json``,
``tb/``, ``csv/``, ``pruning/``) holds a run. Resuming that run, with a checkpoint inside it, is
the one way to continue there. Only the first process claims: DDP ranks Lightning launches, and
other nodes' processes, join the run of rank 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from ssmlit.errors import ConfigError
from ssmlit.utils import atomic_write_text, file_mode

MARKER = ".ssmlit-run.json"
RUN_OUTPUTS = ("checkpoints", "results.json", "tb", "csv", "pruning")


def is_first_process() -> bool:
    """True unless this process is a non-zero rank or node of a distributed launch."""
    return all(int(os.environ.get(k, "0") or 0) == 0
               for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


def holds_run(folder: Path) -> list[str]:
    """What in ``folder`` shows that it holds a run (empty when it does not)."""
    return [name for name in (MARKER, *RUN_OUTPUTS) if (folder / name).exists()]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def claim_run_dir(out: str | os.PathLike, resume: str | os.PathLike | None = None) -> None:
    """Claim ``out`` for this run, or raise :class:`ConfigError` if it holds another one.

    Args:
        out: the run directory.
        resume: the checkpoint being resumed; one inside ``out`` continues the run there.
    """
    if not is_first_process():
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": sys.argv}
    if resume is not None and _inside(Path(resume), out):
        old = {}
        with contextlib.suppress(OSError, ValueError):
            old = json.loads((out / MARKER).read_text())
        info["resumes"] = [*old.get("resumes", []), {"from": str(resume), "at": info["started"]}]
        atomic_write_text(out / MARKER, json.dumps(old | info, indent=1))
        return
    found = holds_run(out)
    if not found:
        try:
            fd = os.open(out / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode())
        except FileExistsError:
            found = [MARKER]
        else:
            with os.fdopen(fd, "w") as f:
                json.dump(info, f, indent=1)
            return
    raise ConfigError("hydra.run.dir", f"{out} already holds a run ({', '.join(found)}); start this one in a new "
                      "directory (leave hydra.run.dir unset for a fresh timestamped one), or continue that run with "
                      f"resume={out}")


def precheck_run_dir(argv: list[str]) -> None:
    """Before Hydra starts: refuse an explicit ``hydra.run.dir=`` that holds a run (unless a
    checkpoint inside it is resumed), so that Hydra does not overwrite that run's ``.hydra/``
    record before :func:`claim_run_dir` gets to refuse it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not is_first_process() or any(a in ("-m", "--multirun") for a in argv):
        return
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:  # reported by the composition check
        return
    values = {o.key_or_group: o.value() for o in overrides}
    folder = values.get("hydra.run.dir")
    if not folder or "${" in str(folder):
        return
    folder = Path(str(folder)).expanduser()
    found = holds_run(folder) if folder.is_dir() else []
    if not found:
        return
    resume = values.get("resume")
    if resume:
        from .resume import resolve_resume_path

        try:
            if _inside(resolve_resume_path(str(resume)), folder):
                return
        except ConfigError:
            return  # the validation phase reports the bad resume value
    raise ConfigError("hydra.run.dir", f"{folder} already holds a run ({', '.join(found)}); start this one in a "
                      "new directory (leave hydra.run.dir unset for a fresh timestamped one), or continue that "
                      f"run with resume={folder}")


def discard_unused_run_dir(folder: str | os.PathLike) -> bool:
    """Delete a run directory that holds nothing but what Hydra wrote before the job started
    (``.hydra/``, ``*.log``): a run refused by validation leaves no empty run behind. Its parent
    (Hydra's date folder) goes too when that leaves it empty. Returns whether it was deleted."""
    import shutil

    folder = Path(folder)
    if not is_first_process() or not folder.is_dir() or folder.resolve() == Path.cwd().resolve():
        return False
    if any(e.name != ".hydra" and not (e.is_file() and e.name.endswith(".log")) for e in folder.iterdir()):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.parent
    with contextlib.suppress(OSError):
        if parent.resolve() != Path.cwd().resolve():
            parent.rmdir()  # only succeeds when empty
    return True
