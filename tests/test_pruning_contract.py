"""The pruning package's contract beyond the numbers: every user error names the setting, the bad
value and what is allowed; the plan's bookkeeping (summary, table, per-layer ratios); compaction in
place or on a copy; the lazy callback import. (Added for mutants that survived ``make mutate``.)"""

import re

import pytest
import torch
from torch import nn

import ssmlit.pruning
from ssmlit.models import S4D, S5
from ssmlit.pruning import (
    METHODS,
    PruningMethod,
    apply_pruning,
    compact_model,
    get_method,
    plan_pruning,
    prunable_layers,
    state_scores,
)
from ssmlit.pruning.methods import squared_magnitude
from ssmlit.pruning.plan import layer_quantities, round_half_up
from ssmlit.pruning.schedule import pruning_schedule
from ssmlit.pruning.scores import hinf_score, magnitude_score, modal_quantities

from trained import perturb_like_trained


def _raises(exc, text, fn, *args, **kw):
    """The whole message, not a fragment: a garbled or empty message is a bug too."""
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    assert str(info.value) == text


def _stack():
    return nn.ModuleList([S5(4, 8), S4D(2, 4)])  # 4 + 4 states


def test_schedule_errors_name_the_setting_the_value_and_what_is_allowed():
    _raises(ValueError, "epoch must be a non-negative integer epoch, got -1", pruning_schedule, "oneshot", 0.3,
            epoch=-1)
    _raises(ValueError, "epoch must be a non-negative integer epoch, got True", pruning_schedule, "oneshot", 0.3,
            epoch=True)
    _raises(ValueError, "epoch must be a non-negative integer epoch, got 1.5", pruning_schedule, "oneshot", 0.3,
            epoch=1.5)
    _raises(ValueError, "epoch=3 is beyond the run: epochs count from 0 and trainer.max_epochs=3, so pruning "
            "epochs must be <= 2", pruning_schedule, "oneshot", 0.3, epoch=3, max_epochs=3)
    _raises(ValueError, "epoch=0 is beyond the run: epochs count from 0 and trainer.max_epochs=0, so pruning "
            "epochs must be <= -1", pruning_schedule, "oneshot", 0.3, epoch=0, max_epochs=0)
    assert pruning_schedule("oneshot", 0.3, epoch=2, max_epochs=3).steps == ((2, 0.3),)
    assert pruning_schedule("oneshot", 0.3, epoch=50, max_epochs=-1).steps == ((50, 0.3),)  # -1: unlimited
    _raises(ValueError, "ratio must be a number in [0, 1] (the fraction of states removed), got 1.5", pruning_schedule,
            "oneshot", 1.5)
    assert pruning_schedule("oneshot", 1.0).final_ratio == 1.0 and pruning_schedule("oneshot", 0).final_ratio == 0
    _raises(ValueError, "unknown pruning schedule 'cubic'; choose one of ('oneshot', 'iterative', 'gradual')",
            pruning_schedule, "cubic", 0.3)
    _raises(ValueError, "the iterative schedule needs epochs=[e1, e2, ...] (the epochs to prune at)",
            pruning_schedule, "iterative", 0.3)
    _raises(ValueError, "the iterative schedule needs epochs=[e1, e2, ...] (the epochs to prune at)",
            pruning_schedule, "iterative", 0.3, epochs=[])
    _raises(ValueError, "epochs[] must be a non-negative integer epoch, got True", pruning_schedule, "iterative",
            0.3, epochs=[True, 2])
    _raises(ValueError, "iterative epochs must be strictly increasing, got [2, 2]", pruning_schedule,
            "iterative", 0.3, epochs=[2, 2])
    _raises(ValueError, "iterative schedule: 2 epochs but 1 ratios", pruning_schedule, "iterative", 0.3,
            epochs=[1, 2], ratios=[0.3])
    _raises(ValueError, "ratios[] must be a number in [0, 1] (the fraction of states removed), got 1.2",
            pruning_schedule, "iterative", 0.3, epochs=[1, 2], ratios=[0.3, 1.2])
    _raises(ValueError, "iterative ratios must be non-decreasing (pruning is cumulative), got [0.4, 0.3]",
            pruning_schedule, "iterative", 0.3, epochs=[1, 2], ratios=[0.4, 0.3])
    s = pruning_schedule("iterative", 0.9, epochs=[1, 2], ratios=[0.3, 0.3])  # equal ratios are allowed
    assert s.steps == ((1, 0.3), (2, 0.3)) and s.kind == "iterative" and not s.at_end
    _raises(ValueError, "the gradual schedule needs start_epoch and end_epoch", pruning_schedule, "gradual", 0.3,
            end_epoch=3)
    _raises(ValueError, "end_epoch=1 must be >= start_epoch=2", pruning_schedule, "gradual", 0.3, start_epoch=2,
            end_epoch=1)
    for bad in (0, True, 1.0):
        _raises(ValueError, f"frequency must be an integer >= 1 (prune every k epochs), got {bad!r}",
                pruning_schedule, "gradual", 0.3, start_epoch=0, end_epoch=2, frequency=bad)
    _raises(ValueError, "initial_ratio=0.5 must not exceed the final ratio=0.3", pruning_schedule, "gradual", 0.3,
            start_epoch=0, end_epoch=2, initial_ratio=0.5)
    _raises(ValueError, "start_epoch=4 is beyond the run: epochs count from 0 and trainer.max_epochs=4, so pruning "
            "epochs must be <= 3", pruning_schedule, "gradual", 0.3, start_epoch=4, end_epoch=4, max_epochs=4)
    s = pruning_schedule("gradual", 0.3, start_epoch=0, end_epoch=2, initial_ratio=0.3)  # r_i = r_f is allowed
    assert [r for _, r in s.steps] == pytest.approx([0.3, 0.3, 0.3]) and s.kind == "gradual"
    assert pruning_schedule("gradual", 0.6, start_epoch=1, end_epoch=5, frequency=4).steps[-1] == (5, 0.6)
    assert pruning_schedule("oneshot", 0.3).steps == ((-1, 0.3),) and pruning_schedule("oneshot", 0.3).kind == "oneshot"
    assert pruning_schedule("iterative", 0.3, epochs=[4]).final_ratio == 0.3


def test_plan_errors_name_the_setting_the_value_and_what_is_allowed():
    model = _stack()
    _raises(ValueError, "pruning ratio must be a number in [0, 1], got 'half'", plan_pruning, model, "last", "half")
    _raises(ValueError, "pruning ratio must be a number in [0, 1], got None", plan_pruning, model, "last", None)
    _raises(ValueError, "pruning ratio must lie in [0, 1] (the fraction of states removed), got -0.1",
            plan_pruning, model, "last", -0.1)
    for bad in (0, True, 1.0):
        _raises(ValueError, f"min_states must be an integer >= 1 (states kept in every layer), got {bad!r}",
                plan_pruning, model, "last", 0.3, min_states=bad)
    _raises(ValueError, "min_states=5 exceeds the number of stored states of layer(s) {'0': 4, '1': 4}; "
            "use min_states <= 4", plan_pruning, model, "last", 0.3, min_states=5)
    assert set(plan_pruning(model, "last", 1.0, min_states=4).kept.values()) == {4}  # equal to n is fine
    _raises(ValueError, "unknown pruning method 'hinf'; choose one of " + str(sorted(METHODS)), get_method, "hinf")
    _raises(ValueError, "unknown pruning method None; choose one of " + str(sorted(METHODS)), get_method, None)
    _raises(ValueError, "unknown pruning method ['last']; choose one of " + str(sorted(METHODS)), get_method,
            ["last"])
    _raises(ValueError, "unknown selection scope 'layer'; choose one of ('global', 'uniform')", PruningMethod,
            hinf_score, True, "layer")
    _raises(ValueError, "Linear contains no prunable layer: pruning needs modules with discretized_system() and a "
            "state_mask buffer (ssmlit.models.S5 / S4D)", prunable_layers, nn.Linear(2, 2))
    scores = state_scores(model, "last")
    _raises(ValueError, "scores cover layers ['0'], the model has ['0', '1']", plan_pruning, model, "last", 0.3,
            scores={"0": scores["0"]})
    bad = PruningMethod(lambda q, b: torch.ones(3, dtype=torch.float64), False, "global")
    _raises(ValueError, "method score returned shape (3,) for layer '0' with 4 states", state_scores, model, bad)
    plan = plan_pruning(model, "last", 0.5)
    _raises(ValueError, "the plan covers layers ['0', '1'] but the model has ['0']", apply_pruning,
            nn.ModuleList([S5(4, 8)]), plan)
    _raises(ValueError, "layer '0': plan mask has shape (4,), the layer's state_mask (2,) (was the model compacted "
            "after planning?)", apply_pruning, nn.ModuleList([S5(4, 4), S4D(2, 4)]), plan)


def test_score_input_errors():
    lam, B, C = torch.ones(3, dtype=torch.complex128), torch.ones(3, 2, dtype=torch.complex128), torch.ones(
        1, 2, 3, dtype=torch.complex128)
    _raises(ValueError, "expected lam_bar [n], B_bar [n, H], C [d, H, n]; got shapes (3,), (3,), (1, 2, 3)",
            modal_quantities, lam, B[:, 0], C)
    _raises(ValueError, "expected lam_bar [n], B_bar [n, H], C [d, H, n]; got shapes (3, 1), (3, 2), (1, 2, 3)",
            modal_quantities, lam[:, None], B, C)
    _raises(ValueError, "expected lam_bar [n], B_bar [n, H], C [d, H, n]; got shapes (3,), (3, 2), (2, 3)",
            modal_quantities, lam, B, C[0])
    _raises(ValueError, "state dimension mismatch: lam_bar has 3 states, B_bar 2, C 3", modal_quantities, lam,
            B[:2], C)
    _raises(ValueError, "state dimension mismatch: lam_bar has 3 states, B_bar 3, C 2", modal_quantities, lam, B,
            C[..., :2])
    q = modal_quantities(0.5 * lam, B, torch.ones(2, 2, 3, dtype=torch.complex128))
    _raises(ValueError, "unknown bidirectional mode 'mean'; choose one of ('paper', 'code', 'bound')", hinf_score,
            q, "mean")


def test_plan_summary_table_and_layer_ratios():
    model = perturb_like_trained(_stack())
    plan = plan_pruning(model, "uniform_hinf", 0.5, min_states=1, seed=4)
    assert plan.layer_ratios == {"0": 0.5, "1": 0.5}
    s = plan.summary()
    assert s == dict(method="uniform_hinf", ratio=0.5, achieved_ratio=0.5, min_states=1, seed=4, threshold=None,
                     convention="ssmlit", bidirectional="paper", exact_pair=False, kept_total=4, states_total=8,
                     layers=[dict(layer="0", kept=2, total=4), dict(layer="1", kept=2, total=4)])
    table = plan.table(before={"val/acc": 0.91}, after={"val/acc": 0.875, "test/acc": 0.5})
    assert table.splitlines() == [
        "Pruning plan: method=uniform_hinf, requested ratio 0.500, achieved 0.5000",
        "  layer    kept / total   kept %",
        "  0           2 / 4        50.0%",
        "  1           2 / 4        50.0%",
        "  all         4 / 8        50.0%",
        "  before val/acc=0.9100",
        "  after  val/acc=0.8750  test/acc=0.5000",
    ]
    assert plan.table().splitlines() == table.splitlines()[:5]
    custom = PruningMethod(hinf_score, False, "global", description="mine")
    assert plan_pruning(model, custom, 0.5).method == "mine"
    assert plan_pruning(model, PruningMethod(hinf_score, False, "global"), 0.5).method == "custom"
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.4999, -0.5)] == [1, 2, 3, 2, 0]


def test_compact_model_copy_or_in_place():
    model = perturb_like_trained(_stack())
    apply_pruning(model, plan_pruning(model, "last", 0.5))
    small = compact_model(model)
    assert small is not model and model[0].n_states == 4 and small[0].n_states < 4
    model.train()
    same = compact_model(model, inplace=True)
    assert same is model and model[0].n_states == small[0].n_states and model[0].training
    model.eval()
    assert not compact_model(model)[1].training  # the new layers keep the train/eval mode
    single = S5(4, 8)
    single.state_mask[0] = False
    assert compact_model(single).n_states == 3 and single.n_states == 4  # a bare layer works too

    class NoCompact(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = S5(2, 4)
            self.register_buffer("state_mask", torch.ones(2, dtype=torch.bool))

        def discretized_system(self, dtype=None, step_rescale=None):
            return self.inner.discretized_system(dtype, step_rescale)

    holder = nn.ModuleList([NoCompact()])
    assert "0" in prunable_layers(holder)
    _raises(TypeError, "layer '0' (NoCompact) has no compact() method", compact_model, holder)


def test_default_bidirectional_rule_and_lazy_callback_import():
    layer = perturb_like_trained(S5(3, 8, bidirectional=True))
    q = layer_quantities(layer)
    assert torch.equal(squared_magnitude(q), squared_magnitude(q, "paper"))
    assert torch.equal(magnitude_score(q), magnitude_score(q, "paper"))
    assert not torch.allclose(squared_magnitude(q), squared_magnitude(q, "bound"))
    from ssmlit.pruning.callback import StatePruningCallback

    assert ssmlit.pruning.StatePruningCallback is StatePruningCallback
    with pytest.raises(AttributeError, match=re.escape("module 'ssmlit.pruning' has no attribute 'nope'")):
        ssmlit.pruning.nope  # noqa: B018
