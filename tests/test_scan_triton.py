"""Runs tests/triton_interpreted.py (the Triton kernels under Triton's CPU interpreter) in a fresh
process: TRITON_INTERPRET must be set before triton is first imported, and in this process Lightning
(through torch) may already have imported it."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: benchmarks/gpu_check.py runs the compiled kernels")
def test_triton_kernels_under_the_interpreter():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
         str(HERE / "triton_interpreted.py")],
        env=os.environ | {"TRITON_INTERPRET": "1"}, cwd=HERE.parent, capture_output=True, text=True, timeout=1200,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 9 and "skipped" not in out, out[-3000:]
