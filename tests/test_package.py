"""A real install: build the wheel, install it (no source tree on the path) into a fresh virtualenv, and
run the console scripts from a directory outside the repository.

Dependencies are borrowed from the test environment through a plain ``.pth`` path entry (which does
not execute that environment's ``.pth`` files, so its editable ssmlit stays invisible): CI stays
offline and within budget, and what is tested is the wheel itself — its modules, its console
scripts and the Hydra configs it must carry.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_and_its_console_scripts_train_and_sweep(tmp_path):
    src = tmp_path / "src"  # build from a copy: the checkout gets no build/ or egg-info
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("ssmlit", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"PYTHONUNBUFFERED": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
          src], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("ssmlit-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel],
         tmp_path, env)
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                        env).stdout.strip())
    deps = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (purelib / "ssmlit_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")

    work = tmp_path / "elsewhere"  # outside the repository, no conf/ or train.py around
    work.mkdir()
    where = _run([py, "-c", "import ssmlit, ssmlit.utils as u; print(ssmlit.__file__); print(u.config_dir())"],
                 work, env).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the installed copy, not the checkout

    run = work / "run"
    _run([venv / "bin" / "ssmlit-train", "trainer.max_epochs=1", f"hydra.run.dir={run}", "model.d_model=8",
          "model.n_layers=2", "model.ssm.d_state=8", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2",
          "trainer.enable_progress_bar=false", "logger=none",
          "+prune=last", "prune.epoch=0", "prune.ratio=0.5", "prune.plots=false"], work, env)
    results = json.loads((run / "results.json").read_text())
    assert results["pruning"]["achieved_ratio"] == 0.5 and 0 <= results["test/acc"] <= 1
    best = torch.load(results["best_checkpoint"], weights_only=True)
    assert best["state_dict"]["model.blocks.0.ssm.state_mask"].numel() < 4 * 2  # compacted during training

    _run([venv / "bin" / "ssmlit-sweep", f"ckpt={run}", "methods=[last,aire]", "ratios=[0,0.5]", "progress=false",
          "tensorboard=false", "eval.limit_batches=2"], work, env)
    sweep = json.loads((run / "sweep" / "sweep.json").read_text())
    assert {r["method"] for r in sweep["runs"]} == {"last", "aire"} and sweep["model"]["stored_states"]
