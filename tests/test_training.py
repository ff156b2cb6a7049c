import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ssmlit.data import DigitsDataModule
from ssmlit.models import SequenceModel
from ssmlit.training import SequenceClassifier, param_groups, warmup_cosine

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=16", "model.n_layers=2", "model.ssm.d_state=8"]


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_digits_split_is_fixed_stratified_and_real():
    dm = DigitsDataModule(batch_size=16)
    dm.setup()
    sizes = [len(d) for d in (dm.train_set, dm.val_set, dm.test_set)]
    assert sum(sizes) == 1797 and sizes == [1257, 270, 270]
    x, y, lengths = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 64, 1) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert y.dtype == torch.long and (lengths == 64).all()
    dm2 = DigitsDataModule()
    dm2.setup()
    assert torch.equal(dm.test_set.tensors[0], dm2.test_set.tensors[0])
    assert torch.bincount(dm.test_set.tensors[1], minlength=10).min() >= 25  # every class present


def test_param_groups_follow_opt_config():
    model = SequenceModel(3, d_input=2, d_model=8, n_layers=1, ssm=dict(d_state=8))
    names = {id(p): n for n, p in model.named_parameters()}

    def groups(**kw):
        out = {}
        for g in param_groups(model, lr=1e-2, ssm_lr=1e-3, weight_decay=0.1, **kw):
            for p in g["params"]:
                name = names[id(p)]
                out[name.split(".")[-1] if ".ssm." in name else name] = (g["lr"], g["weight_decay"])
        return out

    std = groups(opt_config="standard")
    for k in ("Lambda_re", "Lambda_im", "log_step", "B"):
        assert std[k] == (1e-3, 0.0)
    assert std["C"] == std["D"] == (1e-2, 0.1)
    assert std["encoder.weight"] == (1e-2, 0.1) and std["encoder.bias"] == (1e-2, 0.0)
    assert std["blocks.0.norm.norm.weight"] == (1e-2, 0.0)
    assert groups(opt_config="BandCdecay")["B"] == (1e-3, 0.1)
    assert groups(opt_config="BfastandCdecay")["B"] == (1e-2, 0.1)
    nobc = groups(opt_config="noBCdecay")
    assert nobc["C"] == nobc["D"] == (1e-3, 0.0)
    assert groups(dt_global=True)["log_step"] == (1e-2, 0.1)
    n_params = sum(1 for _ in model.parameters())
    assert sum(len(g["params"]) for g in param_groups(model, 1e-2, 1e-3, 0.1)) == n_params
    with pytest.raises(ValueError, match="opt_config"):
        param_groups(model, 1e-2, 1e-3, 0.1, opt_config="adam")


def test_s4d_param_roles_freeze_B():
    model = SequenceModel(3, d_input=2, layer="s4d", d_model=8, n_layers=1, ssm=dict(d_state=8, trainable_B=False))
    assert "blocks.0.ssm.B" not in dict(model.named_parameters())
    assert "blocks.0.ssm.B" in model.state_dict()
    assert sum(len(g["params"]) for g in param_groups(model, 1e-2, 1e-3, 0.1)) == len(list(model.parameters()))


def test_warmup_cosine_schedule():
    f = warmup_cosine(10, 110, min_lr_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    values = [f(t) for t in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert warmup_cosine(0, 5)(0) == pytest.approx(1.0)


def test_short_training_on_digits_beats_chance(tmp_path):
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    model = dict(dm.model_kwargs(), layer="s5", d_model=32, n_layers=2, ssm=dict(d_state=16, blocks=2))
    module = SequenceClassifier(model, dict(lr=1e-2, ssm_lr=2e-3, weight_decay=0.01, warmup_epochs=0.5))
    trainer = pl.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    acc = trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"]
    assert acc > 0.6  # chance is 0.1


def test_step_rescale_is_used_for_eval_variants():
    module = SequenceClassifier(dict(d_input=1, d_output=2, d_model=8, n_layers=1, ssm=dict(d_state=4)),
                                test_variants=[("test", 1.0), ("test_half", 2.0)])
    seen = []
    module.model.forward = lambda x, lengths, step_rescale: seen.append(step_rescale) or torch.zeros(x.shape[0], 2)
    module.log = lambda *a, **k: None
    batch = (torch.randn(3, 5, 1), torch.zeros(3, dtype=torch.long), torch.full((3,), 5))
    module.test_step(batch, 0, dataloader_idx=1)
    module.test_step(batch, 0, dataloader_idx=0)
    assert seen == [2.0, 1.0]


def test_module_rejects_unknown_optim_keys():
    with pytest.raises(ValueError, match="unknown optim keys"):
        SequenceClassifier(dict(d_input=1, d_output=2), dict(learning_rate=1.0))


@pytest.mark.parametrize("model", ["s4d", "s5"])
@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_every_model_trainer_config_composes(model, trainer, tmp_path):
    cfg = _compose([f"model={model}", f"trainer={trainer}", "logger=none"])
    assert cfg.model.layer == model
    dm = instantiate(cfg.task)
    dm.setup()
    net = SequenceModel(**(OmegaConf.to_container(cfg.model) | dm.model_kwargs()))
    assert net(torch.randn(2, 64, 1)).shape == (2, 10)
    kwargs = OmegaConf.to_container(cfg.trainer)
    if trainer == "gpu":
        assert kwargs["accelerator"] == "gpu"  # no GPU here: check the keys are Trainer arguments instead
        kwargs["accelerator"] = "cpu"
    pl.Trainer(**kwargs, logger=False, default_root_dir=tmp_path)


def _run_train(tmp_path, *overrides, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path}", "logger=none",
           "trainer.enable_progress_bar=false", *TINY, *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "results.json").read_text()), proc


def test_train_py_cli_writes_results_and_checkpoints(tmp_path):
    results, proc = _run_train(tmp_path, "trainer.max_epochs=1", "+trainer.limit_train_batches=5")
    assert 0 <= results["test/acc"] <= 1 and math.isfinite(results["test/loss"])
    assert (tmp_path / "checkpoints" / "last.ckpt").exists() and Path(results["best_checkpoint"]).exists()
    assert "state dim" in proc.stderr + proc.stdout
    ckpt = torch.load(results["best_checkpoint"], weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["model"]["layer"] == "s5"


@pytest.mark.slow
def test_ddp_two_cpu_processes_one_epoch(tmp_path):
    results, proc = _run_train(tmp_path, "trainer=ddp", "trainer.devices=2", "trainer.max_epochs=1",
                               "+trainer.limit_train_batches=4", "task.num_workers=0")
    out = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in out and "All distributed processes registered" in out
    assert 0 <= results["test/acc"] <= 1
