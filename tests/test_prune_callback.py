"""StatePruningCallback in real Lightning runs: schedules, logging, figures, resume, DDP, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from ssmlit.data import DigitsDataModule
from ssmlit.pruning import StatePruningCallback, prunable_layers
from ssmlit.training import SequenceClassifier

ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(d_input=1, d_output=10, layer="s5", d_model=16, n_layers=2, ssm=dict(d_state=16, blocks=2))


class MemoryLogger(Logger):
    """Keeps every logged metric (a real logger interface, no files)."""

    def __init__(self):
        super().__init__()
        self.metrics: list[tuple[int, dict]] = []

    name = "memory"
    version = 0

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class MaskProbe(Callback):
    """Records each layer's active-state count when every training epoch starts (after pruning)."""

    def __init__(self):
        self.seen: dict[int, list[int]] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.seen[trainer.current_epoch] = [m.n_active for m in prunable_layers(pl_module).values()]


def _fit(tmp_path, callbacks, max_epochs=3, lr=1e-2, ckpt_path=None, logger=False):
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)
    module = SequenceClassifier(MODEL, dict(lr=lr, ssm_lr=lr, warmup_epochs=0.0))
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=logger, enable_progress_bar=False,
                         enable_model_summary=False, limit_train_batches=4, limit_val_batches=2,
                         limit_test_batches=2, callbacks=callbacks, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module, dm


def test_gradual_schedule_prunes_logs_and_plots(tmp_path):
    cb = StatePruningCallback("last", 0.5, schedule="gradual", start_epoch=1, end_epoch=3, frequency=1)
    probe, logger = MaskProbe(), MemoryLogger()
    _fit(tmp_path, [cb, probe], max_epochs=4, logger=logger)
    # 16 states: cubic ratios 0.5·(1 − (1 − t/2)³) at t = 0, 1, 2 → 0, 0.4375, 0.5 → 16, 9, 8 kept
    assert [sum(probe.seen[e]) for e in range(4)] == [16, 16, 9, 8]
    assert [h["epoch"] for h in cb.history] == [1, 2, 3]
    steps = [m for _, m in logger.metrics if "prune/achieved_ratio" in m]
    assert [round(m["prune/achieved_ratio"], 4) for m in steps] == [0.0, 0.4375, 0.5]
    assert {f"prune/remaining/model.blocks.{i}.ssm" for i in range(2)} <= set(steps[-1])
    assert sum(steps[-1][f"prune/remaining/model.blocks.{i}.ssm"] for i in range(2)) == 8
    out = tmp_path / "pruning"
    summary = json.loads((out / "pruning_summary.json").read_text())
    assert summary["final"]["kept_total"] == 8 and len(summary["steps"]) == 3
    assert (out / "scores.png").stat().st_size > 10_000 and (out / "poles.png").stat().st_size > 10_000


def test_oneshot_after_fit_validates_and_tests_before_and_after(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max")
    cb = StatePruningCallback("aire", 0.0)
    trainer, module, dm = _fit(tmp_path, [ckpt, cb], max_epochs=2)
    report = cb.prune_after_fit(trainer, module, dm)
    assert report["after"] == report["before"]  # ratio 0 changes nothing
    assert report["before"]["val/acc"] == pytest.approx(float(ckpt.best_model_score))  # the best checkpoint
    cb2 = StatePruningCallback("last", 1.0)
    report = cb2.prune_after_fit(trainer, module, dm, ckpt_path=ckpt.best_model_path)
    assert report["plan"]["kept_total"] == 2 and set(report["after"]) == set(report["before"])
    assert [m.n_active for m in prunable_layers(module).values()] == [1, 1]


def test_resume_mid_schedule_continues_exactly(tmp_path):
    # lr = 0 keeps the SSM parameters (hence the scores) fixed, so both runs must end with equal masks.
    kw = dict(schedule="iterative", epochs=[1, 3], ratios=[0.25, 0.5])
    full = StatePruningCallback("last", 0.5, **kw)
    _, ref_module, _ = _fit(tmp_path / "a", [full], max_epochs=4, lr=0.0)
    every = ModelCheckpoint(dirpath=tmp_path / "b", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    _fit(tmp_path / "b", [StatePruningCallback("last", 0.5, **kw), every], max_epochs=4, lr=0.0)
    resumed, probe = StatePruningCallback("last", 0.5, **kw), MaskProbe()
    _, module, _ = _fit(tmp_path / "c", [resumed, probe], max_epochs=4, lr=0.0,
                        ckpt_path=str(tmp_path / "b" / "epoch=1.ckpt"))
    assert resumed.done == [1, 3] and [h["epoch"] for h in resumed.history] == [1, 3]  # epoch 1 not redone
    assert sum(probe.seen[2]) == 12  # the epoch-1 masks came back from the checkpoint
    for (k, a), b in zip(prunable_layers(ref_module).items(), prunable_layers(module).values()):
        assert torch.equal(a.state_mask, b.state_mask), k


def test_schedule_beyond_max_epochs_fails_before_training(tmp_path):
    cb = StatePruningCallback("last", 0.3, schedule="oneshot", epoch=5)
    probe = MaskProbe()
    with pytest.raises(ValueError, match=r"epoch=5 is beyond the run.*max_epochs=2"):
        _fit(tmp_path, [cb, probe], max_epochs=2)
    assert probe.seen == {}
    with pytest.raises(ValueError, match="min_states=99"):
        _fit(tmp_path, [StatePruningCallback("last", 0.3, min_states=99)], max_epochs=1)
    with pytest.raises(ValueError, match="unknown pruning method"):
        StatePruningCallback("lastt")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        StatePruningCallback("last", -0.1)


@pytest.mark.slow
def test_ddp_ranks_end_every_step_with_identical_masks(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_prune_job.py"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["steps"]) == len(r1["steps"]) == 2
    for s0, s1 in zip(r0["steps"], r1["steps"]):
        assert all(torch.equal(s0["masks"][k], s1["masks"][k]) for k in s0["masks"])
    # each rank's own scores disagreed (rank-dependent noise): without the broadcast they would differ
    s0, s1 = r0["steps"][0]["scores"], r1["steps"][0]["scores"]
    assert any(not torch.equal(s0[k], s1[k]) for k in s0)


def _train_cli(tmp_path, *overrides):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path}", "trainer.enable_progress_bar=false",
           "model.d_model=16", "model.n_layers=2", "model.ssm.d_state=8", "+trainer.limit_train_batches=4",
           *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_cli_oneshot_prints_table_and_writes_results(tmp_path):
    proc = _train_cli(tmp_path, "+prune=last", "prune.schedule=oneshot", "prune.ratio=0.5", "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "kept / total" in log and "before val/loss=" in log and "after  val/loss=" in log
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["pruning"]["achieved_ratio"] == 0.5 and 0 <= results["pruned/test/acc"] <= 1
    assert (tmp_path / "pruning" / "scores.png").exists()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_cli_rejects_bad_schedule_before_training(tmp_path):
    proc = _train_cli(tmp_path, "+prune=aire", "prune.schedule=gradual", "prune.start_epoch=1",
                      "prune.end_epoch=7", "trainer.max_epochs=3", "logger=none")
    assert proc.returncode != 0
    assert "end_epoch=7 is beyond the run" in proc.stderr and "Epoch 0" not in proc.stdout + proc.stderr
