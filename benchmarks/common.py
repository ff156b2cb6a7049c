"""Shared measurement helpers of the benchmarks: machine description, timing and peak memory.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after a reset, measured in-process; on
CPU the growth of the process's resident high-water mark (``ru_maxrss``), which never goes down, so
every CPU measurement runs in a fresh subprocess (:func:`run_isolated`).
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine(device: str) -> str:
    """One line naming the processor or GPU, thread count and torch version."""
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def timed_peak(fn: Callable[[], Any], device: str, reps: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time (ms) of ``fn`` over ``reps`` calls after ``warmup`` calls, and the peak memory
    (MiB) above what was allocated before the first call."""
    import torch

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # The baseline is taken before the warm-up: on CPU the high-water mark would otherwise already
    # hold the warm-up's peak.
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"ms": 1e3 * statistics.median(times), "peak_mib": max(peak - base, 0) / 2**20}


def run_isolated(script: str, spec: dict, in_process: Callable[[dict], dict] | None = None) -> dict:
    """Measure ``spec`` in a fresh ``python script --child SPEC`` process (CPU peak memory), or call
    ``in_process(spec)`` directly (CUDA, where peak statistics reset). Errors (e.g. out of memory)
    come back as ``{"error": ...}`` instead of failing the table."""
    if in_process is not None:
        try:
            return in_process(spec)
        except Exception as e:  # out of memory, a kernel that fails to compile, ...: one row, not the table
            import torch

            torch.cuda.empty_cache()
            return {"error": str(e).splitlines()[0][:80]}
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:80]}


def child_main(measure: Callable[[dict], dict]) -> None:
    """Entry point of ``--child SPEC`` processes: print ``measure(spec)`` as one JSON line."""
    sys.path.insert(0, str(ROOT))
    spec = json.loads(sys.argv[2])
    try:
        print(json.dumps(measure(spec)))
    except RuntimeError as e:
        print(json.dumps({"error": str(e).splitlines()[0][:80]}))
