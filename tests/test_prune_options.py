"""ModelPruning-style options of StatePruningCallback: keep_states, layer selection, a ratio function of
the epoch, verbosity, and their validation before training."""

import functools
import logging

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ssmlit.data import DigitsDataModule
from ssmlit.models import SequenceModel
from ssmlit.pruning import StatePruningCallback, plan_pruning, prunable_layers, state_scores
from ssmlit.pruning.options import linear_ratio
from ssmlit.training import SequenceClassifier
from ssmlit.utils import config_dir

MODEL = dict(d_input=1, d_output=10, layer="s5", d_model=8, n_layers=3, ssm=dict(d_state=16, blocks=2))  # 3 × 8 pairs
NAMES = [f"model.blocks.{i}.ssm" for i in range(3)]


def _fit(tmp_path, cb, max_epochs=3):
    pl.seed_everything(0)
    module = SequenceClassifier(MODEL, dict(lr=1e-2, ssm_lr=1e-2, warmup_epochs=0.0))
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_train_batches=2,
                         limit_val_batches=1, callbacks=[cb], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    return module


def test_excluded_layers_keep_their_states_and_stay_out_of_the_ranking():
    torch.manual_seed(0)
    model = SequenceModel(**MODEL)
    chosen = ["blocks.1.ssm", "blocks.2.ssm"]
    plan = plan_pruning(model, "global_hinf", 0.5, layers=chosen)
    assert plan.kept["blocks.0.ssm"] == 8 and plan.kept["blocks.1.ssm"] + plan.kept["blocks.2.ssm"] == 8
    # the cut among the selected layers is the top-8 of their scores alone (independent ranking)
    s = state_scores(model, "global_hinf")
    flat = torch.cat([s[k] for k in chosen])
    top = set(torch.sort(flat, descending=True, stable=True).indices[:8].tolist())
    got = set(plan.masks["blocks.1.ssm"].nonzero().squeeze(1).tolist()) | {
        8 + i for i in plan.masks["blocks.2.ssm"].nonzero().squeeze(1).tolist()}
    assert got == top
    with pytest.raises(ValueError, match="unknown"):
        plan_pruning(model, "last", 0.5, layers=["blocks.9.ssm"])


def test_keep_states_and_layer_patterns_in_training(tmp_path):
    cb = StatePruningCallback("last", keep_states=14, epoch=1, layers={"exclude": ["*.blocks.0.ssm"]},
                              plots=False, verbose=0)
    module = _fit(tmp_path, cb)
    layers = prunable_layers(module)
    assert cb.selected == NAMES[1:] and layers[NAMES[0]].n_active == 8  # excluded: untouched
    assert sum(layer.n_active for layer in layers.values()) == 14  # exactly K over the whole model
    assert cb.history[-1]["kept_total"] == 14


def test_ratio_function_of_the_epoch_prunes_where_it_rises(tmp_path):
    fn = functools.partial(linear_ratio, final=0.5, start_epoch=1, end_epoch=2)  # 0, 0.25, 0.5, 0.5
    cb = StatePruningCallback("aire", ratio=fn, plots=False, verbose=0)
    module = _fit(tmp_path, cb, max_epochs=4)
    assert [(h["epoch"], h["ratio"]) for h in cb.history] == [(1, 0.25), (2, 0.5)]
    assert sum(m.n_active for m in prunable_layers(module).values()) == 12
    # from a Hydra config: _target_ + _partial_ (what conf/prune/_defaults.yaml documents)
    cfg = OmegaConf.load(config_dir() / "prune" / "_defaults.yaml")
    cfg.method, cfg.plots = "last", False
    cfg.ratio = {"_target_": "ssmlit.pruning.options.linear_ratio", "_partial_": True, "final": 0.5, "end_epoch": 3}
    assert instantiate(cfg).ratio_fn(3) == 0.5


def test_a_ratio_function_out_of_range_fails_before_training(tmp_path):
    seen = []
    cb = StatePruningCallback("last", ratio=lambda e: 0.2 * e, plots=False)  # 1.2 at epoch 6
    with pytest.raises(ValueError, match=r"returned 1\.2.* at epoch 6.*\[0, 1\]"):
        pl.Trainer(max_epochs=8, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_checkpointing=False, callbacks=[cb, pl.callbacks.LambdaCallback(
                       on_train_epoch_start=lambda *a: seen.append(1))]).fit(
            SequenceClassifier(MODEL), datamodule=DigitsDataModule(batch_size=32))
    assert not seen
    with pytest.raises(ValueError, match="returned 'x' at epoch 0"):
        StatePruningCallback("last", ratio=lambda e: "x")


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratio=0.3, keep_states=10), "either ratio"),
    (dict(keep_states=0), "keep_states must be a positive integer"),
    (dict(keep_states=True), "keep_states must be a positive integer"),
    (dict(verbose=3), r"verbose must be one of \(0, 1, 2\)"),
    (dict(compact="yes", epoch=1), "compact must be true, false or null"),
    (dict(compact_at_end=1), "compact_at_end must be true or false"),
    (dict(layers={"exclud": ["x"]}), r"layers has unknown keys \['exclud'\]"),
    (dict(layers={"include": []}), "selects no layer"),
    (dict(layers=[3]), "fnmatch patterns"),
    (dict(ratio=lambda e: 0.1, schedule="gradual", start_epoch=0, end_epoch=1), "its own schedule"),
])
def test_constructor_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StatePruningCallback("last", **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(layers={"exclude": ["model.blocks.7.ssm"]}), "matches no prunable layer"),
    (dict(layers={"exclude": ["*"]}), "leave no layer to prune"),
    (dict(keep_states=2), r"keep_states=2 is out of range.*allowed: 3\.\.24"),
    (dict(keep_states=25), "allowed: 3..24"),
])
def test_setup_rejects_options_that_do_not_fit_the_model(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _fit(tmp_path, StatePruningCallback("last", epoch=1, plots=False, **kwargs), max_epochs=2)


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_verbosity(tmp_path, caplog, verbose):
    with caplog.at_level(logging.INFO):
        _fit(tmp_path, StatePruningCallback("last", 0.5, epoch=1, plots=False, verbose=verbose), max_epochs=2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert ("kept / total" in text) == (verbose == 2)
    assert ("pruning (last): kept 12 / 24 states" in text) == (verbose == 1)
    assert ("[before epoch 1]" in text) == (verbose > 0)
