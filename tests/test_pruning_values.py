"""Every registered pruning method checked by value, and every selection rule over every method.

Scores are compared with their formulas computed here from ``discretized_system()``
(``reference_scores``), selections with an independent top-K (``reference_selection``), on
trained-like layers (``trained.perturb_like_trained``) that are partly pruned already. Each method
gets the options it scores with (``_options``): the horizon methods a finite horizon, the measured
one synthetic calibration energies, so every rule runs over every registered method.
"""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from ssmlit.models import S4D, S5
from ssmlit.pruning import METHODS, apply_pruning, plan_pruning, state_scores
from ssmlit.pruning.schedule import pruning_schedule

from reference_scores import (
    HORIZON_KINDS,
    MEASURED_KIND,
    METHOD_FORMULAS,
    modal_norms,
    pruned_count,
    raw_scores,
    reference_scores,
    reference_selection,
)
from trained import perturb_like_trained, slow_mode_

ALL = sorted(METHODS)
DETERMINISTIC = [m for m in ALL if not METHODS[m].stochastic]
RULES = ("paper", "code", "bound")
# The horizon methods' L: far below the slow pole's time constant (1 − |λ̄| ≈ 1e-8) and comparable
# to the others' (1 − |λ̄| ~ 1e-3 … 1e-1), so the truncation changes every score and the ranking.
HORIZON = 16


def _energies(model, seed=0) -> dict[str, torch.Tensor]:
    """Deterministic synthetic calibration energies, float64 [n] per layer: each state's white-noise
    output energy ‖C_i‖²‖B̄_i‖²/(1 − |λ̄_i|²) (what a measurement grows with) times a seeded factor
    e^{ε}, ε ~ N(0, 1), so they follow the parameters as re-measured energies would after training
    but rank differently from AIRE. The first layer has an exact tie (state 2 equals state 0)."""
    rng = np.random.default_rng(seed)
    out = {}
    for li, (name, layer) in enumerate(_named(model).items()):
        lam_abs, B_sq, C_sq = modal_norms(layer)
        e = raw_scores("h2", lam_abs, B_sq, C_sq.mean(0)) * np.exp(rng.standard_normal(lam_abs.size))
        if li == 0:
            e[2] = e[0]
        out[name] = torch.from_numpy(e)
    return out


def _options(method, model, seed=0) -> dict:
    """The keyword arguments ``state_scores`` / ``plan_pruning`` need for ``method`` on ``model``."""
    kind = METHOD_FORMULAS[method][0]
    if kind in HORIZON_KINDS:
        return {"horizon": HORIZON}
    if kind == MEASURED_KIND:
        return {"calibration": _energies(model, seed)}
    return {}


def _reference(layer, name, method, options, rule="paper") -> np.ndarray:
    energies = options.get("calibration", {}).get(name)
    return reference_scores(layer, method, rule, horizon=options.get("horizon"), energies=energies)


def _value_model(seed=0) -> nn.ModuleList:
    """Trained-like S5 (bidirectional, one slow pole) + S4D (two copies, bidirectional) + S5."""
    torch.manual_seed(seed)
    layers = nn.ModuleList([S5(4, 16, blocks=2, bidirectional=True), S4D(4, 8, n_ssm=2, bidirectional=True),
                            S5(3, 8, discretization="bilinear")])
    perturb_like_trained(layers, seed=seed)
    slow_mode_(layers[0], 1, re=1e-5)
    return layers


def _half_model(seed=0) -> nn.ModuleList:
    """10 states in layers of 5, 3 and 2: r·N and r·n_l hit exact halves at r = 0.25, 0.45, 0.5."""
    torch.manual_seed(seed)
    layers = nn.ModuleList([S5(4, 10, bidirectional=True), S5(4, 6), S4D(1, 4, bidirectional=True)])
    return perturb_like_trained(layers, seed=seed)


def _active(model) -> dict[str, torch.Tensor]:
    return {k: m.state_mask.clone() for k, m in _named(model).items()}


def _named(model) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (S5, S4D))}


def _kept_sets(plan) -> dict[str, set[int]]:
    return {k: set(m.nonzero().squeeze(1).tolist()) for k, m in plan.masks.items()}


def _pre_prune(model, seed=1, frac=0.3) -> None:
    """Mask a random part of every layer (as an earlier pruning step would), keeping at least 2."""
    g = torch.Generator().manual_seed(seed)
    for layer in _named(model).values():
        n = layer.n_states
        off = torch.randperm(n, generator=g)[: min(int(frac * n), n - 2)]
        layer.state_mask[off] = False


def test_registry_is_the_documented_table():
    assert set(METHODS) == set(METHOD_FORMULAS), (
        "a registered method has no independent formula in tests/reference_scores.py (or one was removed)")
    for name, (kind, norm, scope) in METHOD_FORMULAS.items():
        assert (METHODS[name].normalize, METHODS[name].scope) == (norm, scope), name
        # the flags that route horizon= and calibration= to the score
        assert (METHODS[name].horizon, METHODS[name].data) == (kind in HORIZON_KINDS, kind == MEASURED_KIND), name


@pytest.mark.parametrize("masked", [False, True], ids=["full", "partly-pruned"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("method", DETERMINISTIC)
def test_scores_equal_their_formula(method, rule, masked):
    model = _value_model()
    if masked:
        _pre_prune(model)
    opts = _options(method, model)
    got = state_scores(model, method, bidirectional=rule, **opts)
    # rtol 1e-6: the slow pole's 1 − |λ̄| ≈ 1e-8 is computed naively here, to ~1e-8 relative.
    plan_scores = plan_pruning(model, method, 0.5, bidirectional=rule, **opts).scores
    for name, layer in _named(model).items():
        ref = _reference(layer, name, method, opts, rule)
        assert got[name].dtype == torch.float64
        np.testing.assert_allclose(got[name].numpy(), ref, rtol=1e-6, atol=0, err_msg=f"{method} {name}")
        assert torch.equal(plan_scores[name], got[name])  # the plan ranks exactly these
    if "horizon" in opts:  # the finite horizon really changes the scores (else this test proves little)
        infinite = state_scores(model, method, bidirectional=rule)
        assert all(not np.allclose(got[k].numpy(), infinite[k].numpy(), rtol=1e-3) for k in got)


# data_energy is left out: its scores are energies measured by forward passes, so the Δ multiplier
# acts when they are measured (tests/test_calibration.py checks calibrate at a changed rate), not when
# they are ranked; test_measured_scores_ignore_step_rescale_and_rule checks what applies to ranking.
RESCALABLE = [m for m in DETERMINISTIC if METHOD_FORMULAS[m][0] != MEASURED_KIND]


@pytest.mark.parametrize("method", RESCALABLE)
def test_scores_use_the_requested_step_rescale(method):
    model = _value_model()
    opts = _options(method, model)
    got = state_scores(model, method, step_rescale=2.5, **opts)
    rescaled = copy.deepcopy(model)
    for layer in _named(rescaled).values():
        layer.step_rescale = 2.5
    for name, layer in _named(rescaled).items():
        np.testing.assert_allclose(got[name].numpy(), _reference(layer, name, method, opts), rtol=1e-6, atol=0)
    default = state_scores(model, method, **opts)
    assert any(not torch.allclose(default[k], got[k]) for k in got)


@pytest.mark.parametrize("method", [m for m in DETERMINISTIC if METHOD_FORMULAS[m][0] == MEASURED_KIND])
def test_measured_scores_ignore_step_rescale_and_rule(method):
    # Given energies are ranked as they are: a Δ multiplier or a bidirectional rule cannot rescore
    # a measurement (both directions are already in a bidirectional layer's energy).
    model = _value_model()
    _pre_prune(model)
    opts = _options(method, model, seed=3)
    base = state_scores(model, method, **opts)
    for kwargs in (dict(step_rescale=2.5), dict(bidirectional="bound"), dict(bidirectional="code")):
        assert all(torch.equal(state_scores(model, method, **kwargs, **opts)[k], base[k]) for k in base), kwargs
    for name, layer in _named(model).items():
        np.testing.assert_allclose(base[name].numpy(), _reference(layer, name, method, opts), rtol=1e-12, atol=0)
    # the energies, not the parameters, decide: other energies on the same model, other scores
    other = state_scores(model, method, calibration=_energies(model, seed=4))
    assert all(not torch.equal(other[k], base[k]) for k in base)


def test_random_scores_are_the_seeded_uniform_stream():
    model = _value_model()
    _pre_prune(model)
    for seed in (0, 7):
        got = state_scores(model, "random", seed=seed)
        g = torch.Generator().manual_seed(seed)
        for name, layer in _named(model).items():
            ref = torch.rand(layer.n_states, generator=g, dtype=torch.float64)
            ref[~layer.state_mask] = -math.inf
            assert torch.equal(got[name], ref), (seed, name)
    # the parameters play no part
    again = state_scores(perturb_like_trained(model, seed=5), "random", seed=7)
    assert all(torch.equal(again[k], got[k]) for k in got)


@pytest.mark.parametrize("min_states", [1, 2])
@pytest.mark.parametrize("method", ALL)
def test_selection_is_the_exact_top_k_of_its_scope(method, min_states):
    model = _half_model()
    scope = METHOD_FORMULAS[method][2]
    active = _active(model)
    opts = _options(method, model)
    for r in (0.0, 0.25, 0.45, 0.5, 0.7, 0.9, 1.0):
        plan = plan_pruning(model, method, r, min_states=min_states, seed=3, **opts)
        assert _kept_sets(plan) == reference_selection(plan.scores, active, scope, r, min_states), r
        assert plan.kept == {k: int(m.sum()) for k, m in plan.masks.items()}
        assert plan.total == {k: m.numel() for k, m in active.items()}
        assert plan.achieved_ratio == pytest.approx(1 - sum(plan.kept.values()) / 10)
        assert min(plan.kept.values()) >= min_states
        if scope == "global":  # the cut: the lowest score kept beyond each layer's forced best
            beyond = [float(s[i]) for k, s in plan.scores.items()
                      for i in sorted(_kept_sets(plan)[k], key=lambda i: (-float(s[i]), i))[min_states:]]
            assert plan.threshold == (min(beyond) if beyond else None), r
    # r = 1: exactly min_states per layer, each layer's best
    plan = plan_pruning(model, method, 1.0, min_states=min_states, seed=3, **opts)
    assert set(plan.kept.values()) == {min_states}
    for k, s in plan.scores.items():
        best = sorted(range(len(s)), key=lambda i: (-float(s[i]), i))[:min_states]
        assert _kept_sets(plan)[k] == set(best)


@pytest.mark.parametrize("method", ALL)
def test_exact_halves_round_up(method):
    model = _half_model()
    opts = _options(method, model)
    if METHOD_FORMULAS[method][2] == "global":
        plan = plan_pruning(model, method, 0.25, **opts)  # 2.5 of 10 states: 3 pruned (half-to-even: 2)
        assert sum(plan.kept.values()) == 10 - 3
        plan = plan_pruning(model, method, 0.45, **opts)  # 4.5 → 5
        assert sum(plan.kept.values()) == 10 - 5
    else:
        plan = plan_pruning(model, method, 0.5, **opts)  # per layer 2.5 → 3, 1.5 → 2, 1.0 → 1
        assert list(plan.kept.values()) == [5 - 3, 3 - 2, 2 - 1]
        plan = plan_pruning(model, method, 0.25, **opts)  # 1.25 → 1, 0.75 → 1, 0.5 → 1
        assert list(plan.kept.values()) == [5 - 1, 3 - 1, 2 - 1]
    assert [pruned_count(0.25, 10), pruned_count(0.5, 5), pruned_count(0.25, 2)] == [3, 3, 1]


@torch.no_grad()
def _train_pruned_states_up(model, masks, seed) -> None:
    """Parameters change between two pruning steps; make the pruned states look the most important
    (large B and C), as training could, so that any method that re-admitted them would."""
    perturb_like_trained(model, seed=seed, scale=0.1)
    for name, layer in _named(model).items():
        off = ~masks[name]
        if isinstance(layer, S5):
            layer.B[off] *= 30
            layer.C[:, :, off] *= 30
        else:
            H, N2 = layer.d_model, layer.n_modes
            layer.C.view(layer.C.shape[0], H * N2, 2)[:, off] *= 30


@pytest.mark.parametrize("method", ALL)
def test_cumulative_pruning_with_changed_parameters(method):
    model = _half_model()
    # _options is called again after every change: the horizon stays, the energies are re-measured
    # (the synthetic ones follow the parameters, so the pruned states now measure the largest).
    first = plan_pruning(model, method, 0.3, seed=1, **_options(method, model))
    apply_pruning(model, first)
    _train_pruned_states_up(model, first.masks, seed=4)
    second = plan_pruning(model, method, 0.6, seed=2, **_options(method, model, seed=1))
    scope = METHOD_FORMULAS[method][2]
    for k in first.masks:
        assert not (second.masks[k] & ~first.masks[k]).any(), f"{method}: a pruned state came back in {k}"
        assert second.scores[k][~first.masks[k]].eq(-math.inf).all()
    assert _kept_sets(second) == reference_selection(second.scores, first.masks, scope, 0.6, 1)
    if scope == "global":
        assert sum(second.kept.values()) == 10 - 6
    apply_pruning(model, second)
    # a ratio below the current one prunes nothing more, also after further training
    _train_pruned_states_up(model, second.masks, seed=5)
    lower = plan_pruning(model, method, 0.3, seed=3, **_options(method, model, seed=2))
    assert all(torch.equal(lower.masks[k], second.masks[k]) for k in second.masks)


def test_gradual_schedule_starts_at_initial_ratio():
    s = pruning_schedule("gradual", 0.8, start_epoch=2, end_epoch=8, frequency=2, initial_ratio=0.2)
    assert [e for e, _ in s.steps] == [2, 4, 6, 8]
    for e, r in s.steps:  # Zhu & Gupta Eq. 1: r_f + (r_i − r_f)(1 − (t − t0)/(t1 − t0))³
        assert r == pytest.approx(0.8 + (0.2 - 0.8) * (1 - (e - 2) / 6) ** 3)
    assert s.steps[0][1] == pytest.approx(0.2) and s.final_ratio == 0.8
    assert pruning_schedule("gradual", 0.5, start_epoch=3, end_epoch=3, initial_ratio=0.1).steps == ((3, 0.5),)
    with pytest.raises(ValueError, match="initial_ratio"):
        pruning_schedule("gradual", 0.3, start_epoch=0, end_epoch=2, initial_ratio=0.5)
