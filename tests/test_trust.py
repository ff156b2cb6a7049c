"""Trust (issue 10), part 1: bad settings end in one message naming the setting, before any data
work; configs never instantiate code outside ssmlit's allow-list (also from checkpoints)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ssmlit.cli import check_composition
from ssmlit.errors import ConfigError
from ssmlit.registry import check_targets, register_target
from ssmlit.study.checkpoint import SweepInputError, save_compact_checkpoint
from ssmlit.training import SequenceClassifier
from ssmlit.training.validate import locate_setting, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


def _compose(overrides=(), name="config"):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def _cli(*args, cwd, env=None, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# -- class 4/5: every bad value is an error naming its setting, found before any data work ---------
BAD = [
    # (overrides, the key the message must name)
    (["+prune=last", "prune.ratio=2"], "prune.ratio"),
    (["+prune=last", "prune.ratio=abc"], "prune.ratio"),
    (["+prune=last", "prune.ratio=-0.5"], "prune.ratio"),
    (["+prune=last", "prune.schedule=iterative", "prune.epochs=abc"], "prune.epochs"),
    (["+prune=last", "prune.epoch=20"], "prune.epoch"),  # epochs count from 0: 20 is past max_epochs=20
    (["+prune=last", "prune.min_states=33"], "prune.min_states"),  # layers store 32 pairs
    (["+prune=lastt"], "prune"),
    (["prune.ratio=0.5"], "prune.ratio"),  # without +prune=
    (["model.ssm.d_state=0"], "model.ssm.d_state"),
    (["model.ssm.d_state=7"], "model.ssm.d_state"),
    (["model.ssm.blocks=3"], "model.ssm.blocks"),
    (["model.ssm.chunk_size=1"], "model.ssm.chunk_size"),  # used to be raised to 2 silently
    (["model.ssm.scan=fast"], "model.ssm.scan"),
    (["model.ssm.dt_min=0.5"], "model.ssm.dt_min"),
    (["+model.ssm.foo=1"], "model.ssm.foo"),
    (["model.d_model=0"], "model.d_model"),
    (["model.n_layers=0"], "model.n_layers"),
    (["model.activation=relu"], "model.activation"),
    (["model.dropout=1.5"], "model.dropout"),
    (["model.d_modle=32"], "model.d_modle"),
    (["model=s4d", "model.ssm.n_ssm=3"], "model.ssm.n_ssm"),
    (["model=s4d", "model.ssm.d_state=5"], "model.ssm.d_state"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["optim.opt_config=adam"], "optim.opt_config"),
    (["+optim.lrr=1"], "optim.lrr"),
    (["trainer=ddp", "trainer.devices=0"], "trainer.devices"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs"),
    (["trainer.precision=17"], "trainer.precision"),
    (["trainer=gpu"], "trainer.accelerator"),  # no GPU on the test machine
    (["+trainer.max_epoch=3"], "trainer.max_epoch"),
    (["task.val_frac=0.9"], "task.val_frac"),
    (["task.num_workers=-1"], "task.num_workers"),
    (["task.batch_size=0"], "task.batch_size"),
    (["task=smnist", "task.permute=shuffle"], "task.permute"),
    (["task=listops", "task.l_max=1"], "task.l_max"),
    (["task=speech", "task.mfcc=maybe"], "task.mfcc"),
    (["task=smni"], "task"),
    (["experiment=s5/pathX"], "experiment"),
    (["matmul_precision=ultra"], "matmul_precision"),
    (["seed=-3"], "seed"),
    (["checkpoint.monitor=val/accuracy"], "checkpoint.monitor"),
    (["+seeds=1"], "seeds"),
    (["resume=/no/such/file.ckpt"], "resume"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_override_is_one_message_naming_the_setting(overrides, key):
    with pytest.raises(ConfigError) as info:
        check_composition(CONF, "config", overrides)  # Hydra's own errors (unknown key, group option)
        validate_config(_compose(overrides))
    error = info.value
    assert error.key == key, str(error)
    text = f"error: {error}"
    assert text.startswith(f"error: {key}: ") and len(text.splitlines()) <= 2 and len(text) < 1000, text


def test_hydra_errors_list_what_is_available():
    with pytest.raises(ConfigError, match=r"'s5/pathX' is not one of the experiment configs; available: .*s5/pathx"):
        check_composition(CONF, "config", ["experiment=s5/pathX"])
    with pytest.raises(ConfigError, match=r"did you mean model\.d_model\?"):
        check_composition(CONF, "config", ["model.d_modle=32"])
    with pytest.raises(ConfigError, match=r"add \+prune=<option> first \(one of aire, .*last"):
        check_composition(CONF, "config", ["prune.ratio=0.5"])
    with pytest.raises(ConfigError, match=r"model: 's6' is not one of the model configs"):  # each multirun value
        check_composition(CONF, "config", ["-m", "model=s5,s6"])
    check_composition(CONF, "config", ["experiment=s5/smnist", "+prune=last", "prune.ratio=0.5"])


def test_every_shipped_experiment_and_pruning_config_validates():
    for exp in ("s5/smnist", "s4d/listops", "s5/pathx", "s4d/speech", "s5/retrieval"):
        validate_config(_compose([f"experiment={exp}", "+prune=last"]))
    validate_config(_compose(["model=s4d", "+prune=aire", "prune.schedule=gradual", "prune.start_epoch=2",
                              "prune.end_epoch=10", "trainer=ddp", "trainer.accelerator=cpu"]))


def test_validation_leaves_the_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    validate_config(_compose())
    assert torch.equal(torch.rand(3), expected)


def test_locate_setting_matches_whole_names_only():
    names = {"lr": "optim.lr", "ssm_lr": "optim.ssm_lr", "d_state": "model.ssm.d_state"}
    assert locate_setting("ssm_lr must be a number > 0", names) == "optim.ssm_lr"
    assert locate_setting("need lr > 0 (ssm_lr too)", names) == "optim.lr"
    assert locate_setting("S5 d_state=3 is odd", names) == "model.ssm.d_state"
    assert locate_setting("nothing here", names) is None
    assert locate_setting("epochs must be a list", {"epoch": "prune.epoch"}) is None  # not a prefix match
    assert locate_setting("see trainer.lr_find", names) is None  # nor a part of a dotted name


def test_cli_reports_the_prune_ratio_before_touching_missing_data(tmp_path):
    data = tmp_path / "empty"
    proc = _cli(str(ROOT / "train.py"), "task=smnist", f"task.data_dir={data}", "+prune=last", "prune.ratio=2",
                f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: prune.ratio: must be a number in [0, 1]")
    assert "Traceback" not in proc.stderr
    assert not data.exists() and not (tmp_path / "run").exists()  # no download, no empty run directory


def test_cli_unknown_experiment_is_exit_2_listing_the_experiments(tmp_path):
    proc = _cli(str(ROOT / "train.py"), "experiment=s5/pathX", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: experiment: 's5/pathX' is not one of the experiment configs; available: ")
    assert "s5/pathx" in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_sweep_cli_unknown_key_is_exit_2(tmp_path):
    proc = _cli("-m", "ssmlit.sweep", "ckpt_path=x", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("ssmlit.sweep: error: ckpt_path: no such setting; did you mean ckpt?")


# -- class 1: configs (also those inside checkpoints) cannot choose code to run --------------------
def _crafted_checkpoint(path: Path, task: dict) -> None:
    module = SequenceClassifier(dict(d_input=1, d_output=10, d_model=8, n_layers=1, ssm=dict(d_state=4, blocks=1)))
    extra = task.pop("_outside", {})
    save_compact_checkpoint(module, path, OmegaConf.create({"task": task, "seed": 0, **extra}))


CRAFTED = {
    "builtins.open": lambda victim: {"_target_": "builtins.open", "file": str(victim), "mode": "w"},
    "numpy.savetxt": lambda victim: {"_target_": "numpy.savetxt", "fname": str(victim), "X": [1.0, 2.0]},
    "nested": lambda victim: {"_target_": "ssmlit.data.digits.DigitsDataModule",
                              "data_dir": {"_target_": "numpy.savetxt", "fname": str(victim), "X": [1.0]}},
    "interpolated": lambda victim: {"_target_": "${.evil}", "evil": "numpy.savetxt", "fname": str(victim),
                                    "X": [1.0]},
    # an argument interpolating a _target_ node from outside the task block
    "outside": lambda victim: {
        "_target_": "ssmlit.data.digits.DigitsDataModule", "data_dir": "${payload}",
        "_outside": {"payload": {"_target_": "numpy.savetxt", "fname": str(victim), "X": [1.0]}}},
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_crafted_checkpoint_config_is_refused_before_anything_runs(kind, tmp_path):
    from ssmlit.sweep import run_sweep

    victim = tmp_path / "written_by_the_checkpoint.txt"
    ckpt = tmp_path / "crafted.ckpt"
    _crafted_checkpoint(ckpt, CRAFTED[kind](victim))
    cfg = _compose([f"ckpt={ckpt}", "methods=[last]", "ratios=[0.5]", "random_seeds=[]", "progress=false",
                    "tensorboard=false", f"out_dir={tmp_path / 'out'}"], name="sweep")
    with pytest.raises(SweepInputError, match=r"is not one of ssmlit's task classes, so it is not instantiated"):
        run_sweep(cfg)
    assert not victim.exists()
    assert not (tmp_path / "out").exists()


def test_crafted_checkpoint_through_the_sweep_cli(tmp_path):
    victim = tmp_path / "victim.txt"
    ckpt = tmp_path / "crafted.ckpt"
    _crafted_checkpoint(ckpt, CRAFTED["builtins.open"](victim))
    proc = _cli("-m", "ssmlit.sweep", f"ckpt={ckpt}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "'builtins.open'" in proc.stderr and "not instantiated" in proc.stderr
    assert not victim.exists()


def test_train_config_targets_are_allow_listed_too(tmp_path):
    victim = tmp_path / "v.txt"
    for overrides, key in ((["task._target_=builtins.open", f"+task.file={victim}", "+task.mode=w"], "task._target_"),
                           (["logger._target_=os.system"], "logger._target_"),
                           (["+prune=last", "prune._target_=numpy.savetxt"], "prune._target_")):
        with pytest.raises(ConfigError) as info:
            validate_config(_compose(overrides))
        assert info.value.key == key and "not instantiated" in str(info.value)
    assert not victim.exists()


def test_register_target_extends_one_group_only():
    node = {"_target_": "tests.MyTask"}
    with pytest.raises(ConfigError):
        check_targets(node, "task")
    register_target("task", "tests.MyTask")
    try:
        assert check_targets(node, "task") == node
        with pytest.raises(ConfigError):
            check_targets(node, "logger")
    finally:
        from ssmlit.registry import _ALLOWED

        _ALLOWED["task"].discard("tests.MyTask")


@pytest.mark.parametrize("task", sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml")))
def test_every_shipped_task_config_passes_validation(task, tmp_path):
    # The allow-list must cover every task ssmlit ships (a task missing from it is refused as untrusted).
    extra = {"digits": [], "ucr": [f"task.train_file={tmp_path}/x_TRAIN.ts", f"task.test_file={tmp_path}/x_TEST.ts"]}
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"task={task}", "+prune=last",
                                           *extra.get(task, [f"task.data_dir={tmp_path}"])])
    validate_config(cfg)


def test_a_ratio_function_target_of_the_docs_passes_validation():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            "+prune=last", "prune.ratio={_target_: ssmlit.pruning.options.linear_ratio, _partial_: true, "
            "final: 0.5, start_epoch: 1, end_epoch: 4}"])
    validate_config(cfg)
