"""The new score options end to end: in the Lightning callback during training, and in the sweep
(horizon from the task, calibration from seeded training batches, exact pairs, the reference
convention), with bad options rejected before any training or evaluation."""

import json

import pytest
from test_prune_callback import MaskProbe, _fit
from test_sweep import _compose, _datamodule, _module, no_evaluation, study  # noqa: F401 (fixtures)

import ssmlit.sweep as sweep_cli
from ssmlit.pruning import StatePruningCallback, plan_pruning
from ssmlit.pruning.calibration import calibrate, calibration_batches
from ssmlit.study import SweepInputError


def test_callback_prunes_with_data_energy_and_horizon_during_training(tmp_path):
    data = StatePruningCallback("data_energy", 0.5, schedule="oneshot", epoch=1, calibration_batches=2,
                                plots=False)
    _fit(tmp_path / "a", [data, MaskProbe()], max_epochs=2)
    step = data.history[-1]
    assert step["epoch"] == 1 and step["kept_total"] == 8
    horizon = StatePruningCallback("last_horizon", 0.5, schedule="oneshot", epoch=1, plots=False)
    _fit(tmp_path / "b", [horizon], max_epochs=2)
    assert horizon.history[-1]["horizon"] == 64  # digits' l_max
    fixed = StatePruningCallback("aire_horizon", 0.25, schedule="oneshot", epoch=1, horizon=16, plots=False)
    _fit(tmp_path / "c", [fixed], max_epochs=2)
    assert fixed.history[-1]["horizon"] == 16
    ref = StatePruningCallback("last", 0.3, schedule="oneshot", epoch=1, convention="reference", plots=False)
    _fit(tmp_path / "d", [ref], max_epochs=2)
    assert ref.history[-1]["convention"] == "reference" and ref.history[-1]["kept_total"] == 11  # ⌊16·0.7⌋


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(method="last_horizon", horizon=0), r"horizon must be .*got 0"),
    (dict(method="last_horizon", horizon="long"), r"horizon must be .*'long'"),
    (dict(method="aire", exact_pair=True), "exact_pair"),
    (dict(method="random", convention="reference"), "convention=reference"),
    (dict(method="last", convention="published"), "convention"),
    (dict(method="data_energy", calibration_batches=0), r"calibration_batches .*got 0"),
])
def test_callback_rejects_bad_options_in_its_constructor(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StatePruningCallback(**kwargs)


def test_sweep_with_the_new_methods(study, tmp_path):  # noqa: F811
    out = tmp_path / "sweep"
    methods = ["last", "last_horizon", "aire_horizon", "data_energy"]
    sweep_cli.run_sweep(_compose(f"ckpt={study['run']}", f"methods=[{','.join(methods)}]", "ratios=[0.0,0.5,1.0]",
                                 "calibration.batches=2", "calibration.seed=3", "exact_pair=true",
                                 f"out_dir={out}"))
    data = json.loads((out / "sweep.json").read_text())
    assert data["horizon"] == {"last_horizon": 64, "aire_horizon": 64} and data["exact_pair"] is True
    assert {r["method"] for r in data["runs"]} == set(methods)
    # data_energy at 50 % is the plan of energies measured on the same seeded training batches.
    best = sorted((study["run"] / "checkpoints").glob("best*"))[0]
    module = _module(best)
    dm = _datamodule(study["run"])
    energies = calibrate(module.model, calibration_batches(dm, 2, seed=3))
    want = plan_pruning(module.model, "data_energy", 0.5, calibration=energies).kept
    row = next(r for r in data["runs"] if r["method"] == "data_energy" and r["ratio"] == 0.5)
    assert row["kept"] == want
    # exact_pair applied to last only; last at 50 % equals its exact-pair plan.
    row = next(r for r in data["runs"] if r["method"] == "last" and r["ratio"] == 0.5)
    assert row["kept"] == plan_pruning(module.model, "last", 0.5, exact_pair=True).kept


@pytest.mark.parametrize(("overrides", "message"), [
    (["horizon=0"], "horizon"),
    (["calibration.batches=0"], "calibration.batches"),
    (["convention=published"], "convention"),
    (["convention=reference"], "reference form"),  # the default methods include uniform_hinf and random
    (["methods=[last]", "convention=reference", "min_states=2"], "min_states"),
])
def test_sweep_rejects_bad_score_options_before_evaluation(study, no_evaluation, overrides, message):  # noqa: F811
    with pytest.raises(SweepInputError, match=message):
        sweep_cli.run_sweep(_compose(f"ckpt={study['run']}", *overrides))


def test_reference_convention_in_the_sweep(study, tmp_path):  # noqa: F811
    out = tmp_path / "ref"
    sweep_cli.run_sweep(_compose(f"ckpt={study['run']}", "methods=[last,aire,global_hinf]", "ratios=[0.3]",
                                 "convention=reference", "select.method=last", f"out_dir={out}"))
    data = json.loads((out / "sweep.json").read_text())
    assert data["convention"] == "reference"
    n, total = sum(data["runs"][0]["kept"].values()), sum(data["model"]["stored_states"].values())
    assert int(total * 0.7) <= n < total  # ⌊N(1 − r)⌋ plus any ties at the threshold
