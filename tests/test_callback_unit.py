"""StatePruningCallback's own logic with a stand-in trainer (no Lightning loop, fast): which steps run
when, what is logged and recorded, the rank-0 broadcast, checkpoint resets, the one-shot protocol.
The real Lightning runs are in test_prune_callback.py."""

import json
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ssmlit.models import S4D, S5, SequenceModel
from ssmlit.pruning import StatePruningCallback, apply_pruning, plan_pruning, prunable_layers
from ssmlit.pruning.callback import _poles

from trained import perturb_like_trained


class Logger:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def _masking_callback(*args, **kwargs) -> StatePruningCallback:
    # These tests use a stand-in trainer and check masks, so compaction (the default of
    # during-training schedules, which needs a real Lightning strategy) is turned off.
    return StatePruningCallback(*args, **({"compact": False} | kwargs))


def _trainer(tmp_path, broadcast=None, best_path="", **kw):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    ckpt.best_model_path, ckpt.best_model_score = best_path, torch.tensor(0.9)
    ckpt.best_k_models, ckpt.kth_best_model_path = {best_path: torch.tensor(0.9)}, best_path
    calls = []

    def run(kind):
        def fn(module, datamodule=None, ckpt_path=None, verbose=True, **extra):
            assert datamodule is t.datamodule and verbose is False
            calls.append((kind, ckpt_path, extra))
            active = sum(m.n_active for m in prunable_layers(module).values())
            return [{f"{kind}/acc": 0.5 + active / 100, f"{kind}/loss": 1.0}]
        return fn

    t = SimpleNamespace(
        strategy=SimpleNamespace(broadcast=broadcast or (lambda obj, src=0: obj)), loggers=[Logger()],
        global_step=11, current_epoch=0, max_epochs=10, checkpoint_callbacks=[ckpt], checkpoint_callback=ckpt,
        default_root_dir=str(tmp_path), validate=run("val"), test=run("test"), calls=calls, datamodule=object(),
        **kw)
    return t


def _model():
    return perturb_like_trained(SequenceModel(3, d_input=2, d_model=4, n_layers=2, ssm=dict(d_state=16, blocks=2)))


def _active(model):
    return [m.n_active for m in prunable_layers(model).values()]


def test_iterative_steps_run_at_their_epochs_and_log(tmp_path):
    model, trainer = _model(), _trainer(tmp_path)
    cb = _masking_callback("last", 0.5, schedule="iterative", epochs=[1, 3], ratios=[0.25, 0.5], plots=False)
    cb.setup(trainer, model, "fit")
    seen = []
    for epoch in range(5):
        trainer.current_epoch = epoch
        cb.on_train_epoch_start(trainer, model)
        seen.append(sum(_active(model)))
    assert seen == [16, 16 - 4, 12, 8, 8]
    assert cb.done == [1, 3] and [h["epoch"] for h in cb.history] == [1, 3]
    assert [h["global_step"] for h in cb.history] == [11, 11]
    assert [h["kept_total"] for h in cb.history] == [12, 8] and cb.history[1]["achieved_ratio"] == 0.5
    logged = [m for _, m in trainer.loggers[0].logged]
    assert [m["prune/achieved_ratio"] for m in logged] == [0.25, 0.5]
    assert [m["prune/requested_ratio"] for m in logged] == [0.25, 0.5]
    names = list(prunable_layers(model))
    assert sum(logged[1][f"prune/remaining/{n}"] for n in names) == 8
    assert [logged[1][f"prune/kept_frac/{n}"] for n in names] == [k / 8 for k in _active(model)]
    assert {s for s, _ in trainer.loggers[0].logged} == {11}
    # each step is the plan of the model as it was (cumulative), at the step's ratio
    assert cb.last_plan.ratio == 0.5 and cb.last_plan.kept == dict(zip(names, _active(model)))
    # "best" checkpoints are forgotten after a step: they were less pruned
    ckpt = trainer.checkpoint_callback
    assert ckpt.best_model_path == "" and ckpt.best_model_score is None and ckpt.best_k_models == {}
    assert ckpt.kth_best_model_path == "" and ckpt.kth_value is None
    cb.on_fit_end(trainer, model)
    summary = json.loads((tmp_path / "pruning" / "pruning_summary.json").read_text())
    assert summary["schedule"] == "iterative" and [s["epoch"] for s in summary["steps"]] == [1, 3]
    assert summary["final"]["kept_total"] == 8 and summary["method"] == "last" and summary["ratio"] == 0.5


def test_best_checkpoint_kept_when_asked(tmp_path):
    model, trainer = _model(), _trainer(tmp_path, best_path="best.ckpt")
    cb = _masking_callback("aire", 0.5, epoch=0, reset_best_checkpoint=False, out_dir=str(tmp_path / "figs"))
    cb.setup(trainer, model, "fit")
    cb.on_train_epoch_start(trainer, model)
    assert sum(_active(model)) == 8 and trainer.checkpoint_callback.best_model_path == "best.ckpt"
    cb.on_fit_end(trainer, model)  # during-training schedules write their summary and figures at fit end
    assert (tmp_path / "figs" / "poles.png").stat().st_size > 5_000
    assert json.loads((tmp_path / "figs" / "pruning_summary.json").read_text())["final"]["kept_total"] == 8


def test_resume_without_callback_state_takes_missed_steps_at_once(tmp_path):
    model, trainer = _model(), _trainer(tmp_path)
    cb = _masking_callback("last", 0.5, schedule="iterative", epochs=[1, 3], ratios=[0.25, 0.5], plots=False)
    trainer.current_epoch = 3
    cb.on_train_epoch_start(trainer, model)
    assert cb.done == [1, 3] and len(cb.history) == 1 and sum(_active(model)) == 8
    cb.on_train_epoch_start(trainer, model)  # the same epoch again: nothing is due
    assert len(cb.history) == 1
    # with the state restored, epoch 1 is not redone
    again = _masking_callback("last", 0.5, schedule="iterative", epochs=[1, 3], ratios=[0.25, 0.5], plots=False)
    again.load_state_dict(cb.state_dict())
    assert again.done == [1, 3] and again.history == cb.history
    trainer.current_epoch = 4
    again.on_train_epoch_start(trainer, model)
    assert len(again.history) == 1
    empty = _masking_callback("last", 0.5)
    empty.load_state_dict({})
    assert empty.done == [] and empty.history == []
    assert "last" in cb.state_key and "iterative" in cb.state_key and cb.state_key != empty.state_key


def test_rank_zero_masks_are_what_every_rank_applies(tmp_path):
    model = _model()
    other = _model()
    with torch.no_grad():  # "rank 0" saw different scores
        for layer in prunable_layers(other).values():
            layer.C.mul_(torch.linspace(3, 0.1, layer.n_states)[None, None, :, None])
    rank0 = plan_pruning(other, "last", 0.5).masks
    trainer = _trainer(tmp_path, broadcast=lambda obj, src=0: {k: rank0[k].clone() for k in obj})
    cb = _masking_callback("last", 0.5, epoch=2, plots=False)
    trainer.current_epoch = 2
    cb.on_train_epoch_start(trainer, model)
    for k, layer in prunable_layers(model).items():
        assert torch.equal(layer.state_mask, rank0[k])
    assert cb.last_plan.kept == {k: int(m.sum()) for k, m in rank0.items()}
    assert cb.last_plan.achieved_ratio == 1 - sum(cb.last_plan.kept.values()) / 16
    assert cb.history[0]["kept_total"] == sum(cb.last_plan.kept.values())
    assert not all(torch.equal(rank0[k], plan_pruning(_model(), "last", 0.5).masks[k]) for k in rank0)


def test_random_method_uses_seed_plus_step(tmp_path):
    model, trainer = _model(), _trainer(tmp_path)
    cb = _masking_callback("random", 0.5, schedule="iterative", epochs=[0, 1], ratios=[0.25, 0.5], seed=7,
                              plots=False)
    ref = _model()
    for epoch, (ratio, seed) in enumerate(((0.25, 7), (0.5, 8))):
        trainer.current_epoch = epoch
        cb.on_train_epoch_start(trainer, model)
        apply_pruning(ref, plan_pruning(ref, "random", ratio, seed=seed))
        for a, b in zip(prunable_layers(model).values(), prunable_layers(ref).values()):
            assert torch.equal(a.state_mask, b.state_mask), epoch
        assert cb.history[-1]["seed"] == seed


@pytest.mark.parametrize("best", ["", "best.ckpt", None])
def test_oneshot_after_fit_evaluates_before_and_after(tmp_path, best, monkeypatch):
    model, trainer = _model(), _trainer(tmp_path, best_path=best or "")
    if best is None:
        trainer.checkpoint_callback = None  # a trainer without checkpointing
    printed = []
    monkeypatch.setattr("ssmlit.pruning.callback.rank_zero_info", printed.append)
    cb = _masking_callback("last", 0.75, min_states=2, out_dir=str(tmp_path / "out"), plots=bool(best))
    assert cb.schedule.at_end
    cb.on_train_epoch_start(trainer, model)  # one-shot after fit: nothing during training
    cb.on_fit_end(trainer, model)
    assert sum(_active(model)) == 16 and not (tmp_path / "out").exists()
    report = cb.prune_after_fit(trainer, model, trainer.datamodule)
    assert report["before"] == {"val/acc": 0.66, "val/loss": 1.0, "test/acc": 0.66, "test/loss": 1.0}
    assert report["after"] == {"val/acc": 0.54, "val/loss": 1.0, "test/acc": 0.54, "test/loss": 1.0}
    assert report["plan"]["kept_total"] == 4 and _active(model) == [2, 2] and cb.done == [-1]
    # prune.checkpoint=best (default) loads the trainer's best_model_path
    first = (best, {"weights_only": True}) if best else (None, {})
    assert [(k, p, e) for k, p, e in trainer.calls] == [
        ("val", *first), ("test", None, {}), ("val", None, {}), ("test", None, {})]
    summary = json.loads((tmp_path / "out" / "pruning_summary.json").read_text())
    assert summary["before"] == report["before"] and summary["after"] == report["after"]
    assert summary["final"]["kept_total"] == 4 and "plan" not in summary
    for fig in ("scores.png", "poles.png"):
        assert (tmp_path / "out" / fig).exists() == bool(best)
        assert not best or (tmp_path / "out" / fig).stat().st_size > 5_000
    step, logged = trainer.loggers[0].logged[-1]
    assert logged["prune/before/val/acc"] == 0.66 and logged["prune/after/test/acc"] == 0.54 and step == 11
    # the plan table is printed once, with the metrics before and after
    tables = [p[p.index("Pruning plan"):] for p in printed if "Pruning plan" in p]
    assert printed[0].startswith("Pruned weights: best checkpoint (")
    assert tables == [cb.last_plan.table(before=report["before"], after=report["after"])]
    assert "  before val/acc=0.6600" in tables[0] and "  after  val/acc=0.5400" in tables[0]
    # a later fit end does not overwrite the one-shot summary
    cb.on_fit_end(trainer, model)
    assert json.loads((tmp_path / "out" / "pruning_summary.json").read_text())["after"] == report["after"]


def test_setup_and_constructor_reject_bad_settings(tmp_path):
    model, trainer = _model(), _trainer(tmp_path)
    cb = _masking_callback("last", 0.3, epoch=12)
    with pytest.raises(ValueError, match=r"epoch=12 is beyond the run.*max_epochs=10"):
        cb.setup(trainer, model, "fit")
    cb.setup(trainer, model, "validate")  # only fitting has a schedule to check against max_epochs
    with pytest.raises(ValueError, match="min_states=9 exceeds"):
        _masking_callback("last", 0.3, min_states=9).setup(trainer, model, "fit")
    for kw, match in ((dict(bidirectional="mean"), "bidirectional mode 'mean'"),
                      (dict(min_states=0), "min_states must be an integer >= 1, got 0"),
                      (dict(min_states=True), "min_states must be an integer"),
                      (dict(method="lastt"), "unknown pruning method 'lastt'"),
                      (dict(schedule="gradual", start_epoch=1), "start_epoch and end_epoch")):
        with pytest.raises(ValueError, match=match):
            StatePruningCallback(**({"method": "last"} | kw))
    cb = _masking_callback("last", 0.6, schedule="gradual", start_epoch=2, end_epoch=4, initial_ratio=0.2)
    assert cb.schedule.steps[0] == (2, pytest.approx(0.2))
    cb.setup(trainer, model, "fit")  # rebuilt with max_epochs, same steps
    assert cb.schedule.steps[0] == (2, pytest.approx(0.2)) and cb.schedule.final_ratio == 0.6


@pytest.mark.parametrize("layer", [S5(3, 8), S4D(3, 4, n_ssm=1)])
def test_pole_figure_gets_each_layers_discrete_poles(layer):
    perturb_like_trained(layer)
    lam = layer.discretized_system(torch.complex128)[0]
    poles = _poles(layer)
    assert poles.dtype == torch.complex128 and torch.equal(poles, lam)


def test_defaults_and_schedule_arguments_survive_setup(tmp_path):
    cb = StatePruningCallback()
    assert (cb.method, cb.ratio, cb.min_states, cb.seed, cb.bidirectional) == ("last", 0.3, 1, 0, "paper")
    assert cb.plots and cb.reset_best_checkpoint and cb.out_dir is None and cb.last_plan is None
    assert cb.schedule.kind == "oneshot" and cb.schedule.at_end and cb.done == [] and cb.history == []
    model, trainer = _model(), _trainer(tmp_path)
    it = _masking_callback("last", 0.5, schedule="iterative", epochs=[1, 3], ratios=[0.125, 0.5])
    gr = _masking_callback("last", 0.8, schedule="gradual", start_epoch=0, end_epoch=4, frequency=2,
                              initial_ratio=0.2)
    for cb in (it, gr):
        before = cb.schedule.steps
        cb.setup(trainer, model, "fit")
        assert cb.schedule.steps == before
    assert it.schedule.steps == ((1, 0.125), (3, 0.5))
    assert [e for e, _ in gr.schedule.steps] == [0, 2, 4] and gr.schedule.steps[0][1] == pytest.approx(0.2)
    # a during-training schedule whose step never came writes nothing at fit end
    late = _masking_callback("last", 0.5, epoch=9, out_dir=str(tmp_path / "late"))
    late.on_fit_end(trainer, model)
    assert not (tmp_path / "late").exists()
