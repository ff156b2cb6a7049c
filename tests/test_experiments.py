"""Every experiment config: it composes, carries the papers' numbers, uses keys the code accepts,
and runs one tiny training step (fit + test) on the fixture data."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_data import write_all
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ssmlit.models import S4D, S5, SequenceModel
from ssmlit.training.module import DEFAULT_OPTIM
from ssmlit.training.run import train

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("smnist", "psmnist", "scifar", "listops", "text", "retrieval", "image", "pathfinder", "pathx", "speech")
EXPERIMENTS = [f"{m}/{t}" for m in ("s4d", "s5") for t in TASKS]

# LAST paper, App. C.2 Table 4 (S5): L, H, n_m, J, D, LR, SSM LR, B, E, WD, Δ_min (re-typed from the paper)
TABLE4 = {
    "smnist": (4, 96, 128, 1, 0.1, 0.008, 0.002, 50, 150, 0.01, 0.001),
    "psmnist": (4, 128, 128, 2, 0.15, 0.004, 0.001, 50, 150, 0.01, 0.001),
    "scifar": (6, 512, 384, 3, 0.1, 0.0045, 0.001, 50, 250, 0.07, 0.001),
    "listops": (8, 128, 16, 8, 0.0, 0.003, 0.001, 50, 40, 0.07, 0.001),
    "text": (6, 256, 192, 12, 0.1, 0.004, 0.001, 50, 35, 0.07, 0.001),
    "retrieval": (6, 128, 256, 16, 0.0, 0.002, 0.001, 32, 20, 0.05, 0.001),
    "image": (6, 512, 384, 3, 0.1, 0.005, 0.001, 50, 250, 0.07, 0.001),
    "pathfinder": (6, 192, 256, 8, 0.05, 0.005, 0.0009, 64, 200, 0.07, 0.001),
    "pathx": (6, 128, 256, 16, 0.0, 0.002, 0.0006, 32, 75, 0.05, 0.001),
    "speech": (6, 96, 128, 16, 0.1, 0.008, 0.002, 16, 40, 0.04, 0.001),
}
# S5 run scripts where Table 4 is silent: C_init, opt_config, activation
SCRIPTS = {
    "listops": ("lecun_normal", "BfastandCdecay", "half_glu2"),
    "text": ("lecun_normal", "standard", "half_glu2"),
    "retrieval": ("trunc_standard_normal", "standard", "half_glu1"),
    "image": ("lecun_normal", "BfastandCdecay", "half_glu1"),
    "pathfinder": ("trunc_standard_normal", "standard", "half_glu1"),
    "pathx": ("complex_normal", "BandCdecay", "half_glu1"),
    "speech": ("lecun_normal", "noBCdecay", "half_glu1"),
}
# LAST paper, App. C.2 Table 3 (S4D): L, h, n_s, norm, prenorm, D, LR, B, E, WD, (Δ_min, Δ_max)
TABLE3 = {
    "scifar": (6, 512, 64, "layer", False, 0.1, 0.01, 50, 200, 0.05, (0.001, 0.1)),
    "listops": (8, 128, 64, "batch", False, 0.0, 0.01, 50, 40, 0.05, (0.001, 0.1)),
    "text": (6, 256, 64, "batch", True, 0.0, 0.01, 16, 32, 0.05, (0.001, 0.1)),
    "retrieval": (6, 256, 64, "batch", True, 0.0, 0.01, 64, 20, 0.05, (0.001, 0.1)),
    "image": (6, 512, 64, "layer", False, 0.1, 0.01, 50, 200, 0.05, (0.001, 0.1)),
    "pathfinder": (6, 256, 64, "batch", True, 0.0, 0.004, 64, 200, 0.03, (0.001, 0.1)),
    "pathx": (6, 256, 64, "batch", True, 0.0, 0.001, 32, 50, 0.05, (0.001, 0.01)),
    "speech": (6, 128, 64, "batch", True, 0.0, 0.01, 16, 40, 0.05, (0.001, 0.1)),
}


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _params(fn) -> set[str]:
    return set(inspect.signature(fn).parameters) - {"self"}


def test_every_task_has_both_experiments():
    for model in ("s4d", "s5"):
        assert sorted(p.stem for p in (ROOT / "conf" / "experiment" / model).glob("*.yaml")) == sorted(TASKS)
    for path in (ROOT / "conf" / "experiment").rglob("*.yaml"):
        text = path.read_text()
        # Each paper setup cites its table; the others (plaid) say that they are none.
        assert text.startswith("# @package _global_\n") and ("Table" in text or "Not a paper setup" in text)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_with_the_papers_numbers(name):
    layer, task = name.split("/")
    cfg = _compose([f"experiment={name}"])
    assert cfg.model.layer == layer and cfg.task._target_ == _compose([f"task={task}"]).task._target_
    model, ssm = OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.model.ssm)
    assert set(model) <= _params(SequenceModel)
    assert set(ssm) <= _params(S5 if layer == "s5" else S4D) - {"d_model"}
    assert set(cfg.optim) <= set(DEFAULT_OPTIM)
    bidirectional = task not in ("smnist", "psmnist")
    assert ssm["bidirectional"] is bidirectional
    if layer == "s5":
        L, H, P, J, D, lr, ssm_lr, B, E, wd, dt_min = TABLE4[task]
        assert (cfg.model.n_layers, cfg.model.d_model, ssm["d_state"], ssm["blocks"]) == (L, H, P, J)
        assert cfg.model.dropout == D
        assert (cfg.optim.lr, cfg.optim.ssm_lr, cfg.optim.weight_decay) == (lr, ssm_lr, wd)
        assert (cfg.task.batch_size, cfg.trainer.max_epochs, ssm["dt_min"], ssm["dt_max"]) == (B, E, dt_min, 0.1)
        assert cfg.model.norm == "batch" and cfg.model.prenorm is True
        if task in SCRIPTS:
            assert (ssm["C_init"], cfg.optim.opt_config, cfg.model.activation) == SCRIPTS[task]
    elif task in TABLE3:
        L, h, n_s, norm, pre, D, lr, B, E, wd, (dt_min, dt_max) = TABLE3[task]
        assert (cfg.model.n_layers, cfg.model.d_model, ssm["d_state"], cfg.model.norm, cfg.model.prenorm) == \
            (L, h, n_s, norm, pre)
        assert (cfg.model.dropout, cfg.optim.lr, cfg.task.batch_size, cfg.trainer.max_epochs) == (D, lr, B, E)
        assert (cfg.optim.weight_decay, ssm["dt_min"], ssm["dt_max"], ssm["init"]) == (wd, dt_min, dt_max, "legs")
    if task in ("pathfinder", "pathx"):
        assert cfg.task.center is (layer == "s5")  # S5 normalises to [-1, 1], s4 keeps [0, 1]


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("data"))


def _tiny(name, data_dir):
    layer = name.split("/")[0]
    overrides = [f"experiment={name}", f"task.data_dir={data_dir}", "task.num_workers=0", "task.batch_size=2",
                 "task.eval_batch_size=2", "logger=none", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
                 "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
                 "+trainer.enable_model_summary=false", "model.d_model=8", "model.n_layers=1", "model.ssm.d_state=4"]
    if layer == "s5":
        overrides.append("model.ssm.blocks=1")
    if name.endswith(("pathfinder", "pathx", "speech")):
        overrides.append("task.prepare_workers=0")
    return overrides


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_one_step_on_fixtures(name, fixture_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train() writes results and checkpoints into the run directory
    results = train(_compose(_tiny(name, fixture_data)), out=tmp_path)
    assert 0 <= results["test/acc"] <= 1 and results["test/loss"] == results["test/loss"]
    if name.endswith("speech"):
        assert 0 <= results["test_8khz/acc"] <= 1  # the zero-shot 8 kHz evaluation ran
    assert (tmp_path / "results.json").is_file()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1  # one optimizer step was taken
    assert ckpt["hyper_parameters"]["model"]["layer"] == name.split("/")[0]


def test_train_py_cli_runs_an_experiment(fixture_data, tmp_path):
    # the command line, `experiment=s5/pathx +prune=last prune.schedule=oneshot`, at tiny size
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path}", *_tiny("s5/pathx", fixture_data),
           "+prune=last", "prune.schedule=oneshot"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0 <= results["test/acc"] <= 1 and 0 <= results["pruned/test/acc"] <= 1
    ckpt = Path(results["best_checkpoint"])
    assert ckpt.is_file() and ckpt.parent == tmp_path / "checkpoints"
