"""Trust (issue 10), part 2: runs that resume exactly where they stopped, one run per directory,
outputs that never mix, and files others can read."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import ssmlit.sweep as sweep
import ssmlit.training.run as run
from ssmlit.errors import ConfigError
from ssmlit.study.checkpoint import SweepInputError, save_compact_checkpoint
from ssmlit.training import SequenceClassifier
from ssmlit.training.resume import resume_argv
from ssmlit.training.rundir import MARKER, claim_run_dir, discard_unused_run_dir, precheck_run_dir
from ssmlit.training.validate import validate_config

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = ["logger=none", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
        "model.d_model=16", "model.n_layers=2", "model.ssm.d_state=8", "+trainer.limit_train_batches=4",
        "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=1"]


def _compose(overrides=(), name="config"):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def _train(out: Path, *overrides):
    return run.train(_compose([*TINY, *overrides]), out)


def _weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory):
    """3 epochs whose validation accuracy never improves after epoch 0 (the learning rates are
    ~0), the case where `save_last=True` on the monitored checkpoint left last.ckpt at epoch 0."""
    out = tmp_path_factory.mktemp("flat") / "run"
    _train(out, "trainer.max_epochs=3", "optim.lr=1e-12", "optim.ssm_lr=1e-12")
    return out


# -- class 2: last.ckpt, finished runs, resume ---------------------------------------------------
def test_last_ckpt_is_the_end_of_the_last_epoch_even_without_improvement(flat_run):
    results = json.loads((flat_run / "results.json").read_text())
    assert Path(results["best_checkpoint"]).name == "best-000.ckpt"  # nothing improved after epoch 0
    last = torch.load(flat_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 12


def test_resuming_a_finished_run_says_so(flat_run):
    with pytest.raises(ConfigError, match=r"finished run: it has trained 3 epochs.*trainer.max_epochs=13") as info:
        validate_config(_compose([*TINY, "trainer.max_epochs=3", f"resume={flat_run}"]))
    assert info.value.key == "trainer.max_epochs"
    validate_config(_compose([*TINY, "trainer.max_epochs=5", f"resume={flat_run}"]))  # training on is fine


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", "truncated"])
def test_unreadable_resume_files_are_refused(flat_run, tmp_path, content):
    bad = tmp_path / "bad.ckpt"
    if content == "truncated":
        bad.write_bytes((flat_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    else:
        bad.write_bytes(content)
    with pytest.raises(ConfigError, match=r"^resume: .* is not a readable checkpoint"):
        validate_config(_compose([*TINY, "trainer.max_epochs=5", f"resume={bad}"]))


def test_resume_of_a_different_model_names_the_settings(flat_run, tmp_path):
    with pytest.raises(ConfigError, match=r"different model: model\.d_model: 16 in the checkpoint, 32 in this"):
        validate_config(_compose([*TINY, "model.d_model=32", "trainer.max_epochs=5", f"resume={flat_run}"]))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "epoch": 1}, foreign)
    with pytest.raises(ConfigError, match=r"not a resumable train\.py checkpoint"):
        validate_config(_compose([*TINY, f"resume={foreign}"]))


class _Kill(pl.Callback):
    """Stops the process the way Ctrl-C does, in the middle of epoch 1."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 2:
            raise KeyboardInterrupt


def test_killed_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch):
    settings = ["trainer.max_epochs=2", "model.dropout=0.2"]  # dropout: the RNG stream must match too
    _train(tmp_path / "whole", *settings)
    build = run.build_callbacks
    monkeypatch.setattr(run, "build_callbacks", lambda *a, **k: [*build(*a, **k), _Kill()])
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into exit(1) after a graceful shutdown
        _train(tmp_path / "killed", *settings)
    monkeypatch.setattr(run, "build_callbacks", build)
    assert torch.load(tmp_path / "killed/checkpoints/last.ckpt", weights_only=True)["epoch"] == 0
    _train(tmp_path / "killed", *settings, f"resume={tmp_path / 'killed'}")
    whole = _weights(tmp_path / "whole/checkpoints/last.ckpt")
    resumed = _weights(tmp_path / "killed/checkpoints/last.ckpt")
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def test_resume_argv_continues_the_run_in_its_directory_with_its_settings(tmp_path):
    rundir = tmp_path / "run"
    (rundir / ".hydra").mkdir(parents=True)
    (rundir / "checkpoints").mkdir()
    (rundir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (rundir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(["model.d_model=16", "resume=old"]))
    argv = resume_argv([f"resume={rundir}", "trainer.max_epochs=40"])
    assert argv == ["model.d_model=16", f"resume={rundir}", "trainer.max_epochs=40",
                    f"hydra.run.dir={rundir.resolve()}"]
    with pytest.raises(ConfigError, match="continues in its own directory"):
        resume_argv([f"resume={rundir}", f"hydra.run.dir={tmp_path / 'other'}"])
    assert resume_argv(["trainer.max_epochs=3"]) == ["trainer.max_epochs=3"]


# -- class 5: max_epochs=0 is stated plainly -------------------------------------------------------
def test_max_epochs_zero_with_pruning_says_what_was_pruned(tmp_path):
    results = _train(tmp_path / "r", "trainer.max_epochs=0", "+prune=last", "prune.plots=false")
    assert results["evaluated"] == "the untrained initial weights (trainer.max_epochs=0)"
    assert results["best_checkpoint"] is None and "pruned/test/acc" in results
    assert json.loads((tmp_path / "r" / "results.json").read_text())["evaluated"] == results["evaluated"]


# -- class 6: one run per directory; atomic sweep outputs ------------------------------------------
def test_a_run_directory_holds_one_run(tmp_path):
    out = tmp_path / "run"
    claim_run_dir(out)
    assert (out / MARKER).is_file()
    with pytest.raises(ConfigError, match=r"^hydra\.run\.dir: .* already holds a run"):
        claim_run_dir(out)
    claim_run_dir(out, resume=out / "checkpoints" / "last.ckpt")  # continuing it there is allowed
    with pytest.raises(ConfigError, match="already holds a run"):
        claim_run_dir(out, resume=tmp_path / "elsewhere.ckpt")
    older = tmp_path / "older"  # a run written before the marker existed
    (older / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"checkpoints"):
        claim_run_dir(older)
    with pytest.raises(ConfigError, match="already holds a run"):
        precheck_run_dir([f"hydra.run.dir={older}"])
    precheck_run_dir([f"hydra.run.dir={tmp_path / 'new'}"])


def test_a_refused_run_leaves_no_empty_run_directory(tmp_path):
    hydra_only = tmp_path / "2026-01-01" / "12-00-00"
    (hydra_only / ".hydra").mkdir(parents=True)
    (hydra_only / "train.log").write_text("")
    assert discard_unused_run_dir(hydra_only) and not hydra_only.parent.exists()
    kept = tmp_path / "kept"
    (kept / ".hydra").mkdir(parents=True)
    (kept / "results.json").write_text("{}")
    assert not discard_unused_run_dir(kept) and kept.exists()


def test_cli_second_run_in_a_used_directory_is_refused_before_hydra_writes(tmp_path):
    used = tmp_path / "run"
    (used / ".hydra").mkdir(parents=True)
    (used / ".hydra" / "config.yaml").write_text("original: true\n")
    (used / MARKER).write_text("{}")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={used}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: hydra.run.dir: {used} already holds a run")
    assert (used / ".hydra" / "config.yaml").read_text() == "original: true\n"


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    module = SequenceClassifier(dict(d_input=1, d_output=10, d_model=8, n_layers=1, ssm=dict(d_state=4, blocks=1)))
    path = tmp_path / "model.ckpt"
    task = {"_target_": "ssmlit.data.digits.DigitsDataModule"}
    save_compact_checkpoint(module, path, OmegaConf.create({"task": task}))
    return path


def _sweep_cfg(ckpt, out, ratios="[0,0.5]"):
    return _compose([f"ckpt={ckpt}", "methods=[last]", f"ratios={ratios}", "random_seeds=[]", "progress=false",
                     "tensorboard=false", "eval.limit_batches=1", f"out_dir={out}"], name="sweep")


def test_sweep_checks_out_dir_before_evaluating(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "build_evaluator", lambda *a, **k: pytest.fail("evaluated before checking out_dir"))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SweepInputError, match=r"out_dir=.* cannot be written"):
        sweep.run_sweep(_sweep_cfg(tiny_checkpoint, blocker / "sweep"))
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(SweepInputError, match="does not hold a sweep's outputs"):
        sweep.run_sweep(_sweep_cfg(tiny_checkpoint, foreign))
    assert (foreign / "mine.txt").read_text() == "keep"


def test_sweep_outputs_never_mix_two_sweeps(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    first = sweep.run_sweep(_sweep_cfg(tiny_checkpoint, out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"sweep.csv", "sweep.json", "summary.md", "sweep_config.yaml"} <= set(before)
    assert first["out_dir"] == str(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the re-run dies after writing sweep.csv and summary.md

    monkeypatch.setattr(sweep, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(_sweep_cfg(tiny_checkpoint, out, "[0,0.25]"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old set, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "sweep"]  # no staging folder left
    monkeypatch.undo()
    sweep.run_sweep(_sweep_cfg(tiny_checkpoint, out, "[0,0.25]"))
    assert json.loads((out / "sweep.json").read_text())["ratios"] == [0.0, 0.25]
    assert "0.25" in (out / "sweep.csv").read_text()


# -- class 8: files and folders follow the umask ---------------------------------------------------
@pytest.fixture()
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_follow_the_umask(tmp_path, umask_002, tiny_checkpoint):
    from ssmlit.data.download import build_cache
    from ssmlit.training.checkpointing import AtomicCheckpointIO
    from ssmlit.utils import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    assert _mode(tmp_path / "a.txt") == 0o664
    assert _mode(tiny_checkpoint) == 0o664  # exported checkpoints (atomic_write_bytes)
    AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(1)}, tmp_path / "c" / "last.ckpt")
    assert _mode(tmp_path / "c" / "last.ckpt") == 0o664
    cache = tmp_path / "cache" / "task-0123"
    build_cache(cache, {"p": 1}, lambda out: (out / "x.npy").write_bytes(b"1") and None)
    assert _mode(cache) == 0o775 and _mode(cache / "meta.json") == 0o664 and _mode(cache / "x.npy") == 0o664
    shutil.rmtree(cache)


def test_training_run_files_follow_the_umask(flat_run):
    # flat_run was written under the default umask of the test process (022 here, 002 elsewhere)
    mask = os.umask(0o022)
    os.umask(mask)
    for path in (flat_run / "results.json", flat_run / "checkpoints" / "last.ckpt",
                 next((flat_run / "checkpoints").glob("best-*.ckpt"))):
        assert _mode(path) == 0o666 & ~mask, path


def test_checkpoints_are_staged_next_to_their_final_name(tmp_path, monkeypatch):
    # Lightning's default writer stages in the system temp dir and moves the file over, which is a
    # copy (half-written when killed) whenever that is another file system, as on most clusters.
    import tempfile

    calls = []
    real = tempfile.mkstemp

    def recording(*args, **kwargs):
        calls.append(kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", recording)
    _train(tmp_path / "r", "trainer.max_epochs=1")
    folder = tmp_path / "r" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best-000.ckpt", "last.ckpt"]
    staged = [Path(d) for d in calls if d is not None and Path(d) == folder]
    assert len(staged) == 2 and all(d is not None for d in calls), calls


def test_cli_refused_resume_leaves_the_runs_record_untouched(flat_run, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(flat_run, run_copy)
    record = run_copy / ".hydra" / "overrides.yaml"
    record.parent.mkdir()
    record.write_text(OmegaConf.to_yaml([*TINY, "trainer.max_epochs=3", "optim.lr=1e-12", "optim.ssm_lr=1e-12"]))
    before = record.read_text()
    for extra, message in ((["optim.lr=-1"], "error: optim.lr: must be a number >= 0, got -1"),
                           ([], "error: trainer.max_epochs: 3, but ")):  # finished: recorded max_epochs reached
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"resume={run_copy}", *extra], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr[-2000:]
        assert record.read_text() == before and not (run_copy / ".hydra" / "config.yaml").exists()
