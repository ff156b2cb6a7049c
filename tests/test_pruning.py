"""The pruning core against independent references: frequency sweeps, impulse responses, the paper's
bounds and float64 recurrences; plus the selection rules (ratios, ties, cumulative, uniform)."""

import math

import pytest
import torch
from torch import nn

from ssmlit.models import S4D, S5, SequenceModel, load_model, save_model
from ssmlit.pruning import (
    METHODS,
    PruningMethod,
    apply_pruning,
    compact_model,
    plan_pruning,
    prunable_layers,
    state_scores,
)
from ssmlit.pruning.plan import layer_quantities
from ssmlit.pruning.schedule import pruning_schedule
from ssmlit.pruning.scores import energy_normalize, h2_energy, hinf_score, modal_quantities

from reference import recurrence_output

H = 6


def _hard_s5(bidirectional=False, discretization="zoh", P_full=16) -> S5:
    """S5 with slow modes close to the unit circle, fast oscillating ones, and spread Δ."""
    layer = S5(H, P_full, blocks=2, bidirectional=bidirectional, discretization=discretization)
    with torch.no_grad():
        P = layer.n_states
        layer.Lambda_re[: P // 2] = -torch.logspace(-2, 0, P // 2)
        layer.Lambda_im[P // 2:] = torch.linspace(5, 60, P - P // 2)
        layer.log_step.copy_(torch.linspace(math.log(1e-3), math.log(1e-1), P))
    return layer


def _peak_gain_sq(M: torch.Tensor, lam: complex) -> float:
    """sup_θ σ_max(M / (e^{jθ} − λ̄))² by a dense sweep of θ, zoomed in five times around the best
    grid point (the peak of a pole close to the unit circle is ~(1 − |λ̄|) wide)."""
    sigma = float(torch.linalg.matrix_norm(M, ord=2))
    lo, hi = -math.pi, math.pi
    best = None
    for _ in range(6):
        theta = torch.linspace(lo, hi, 4097, dtype=torch.float64)
        gain = sigma / (torch.exp(1j * theta) - lam).abs()
        i = int(gain.argmax())
        best = float(gain[i])
        step = (hi - lo) / 4096
        lo, hi = float(theta[i]) - 2 * step, float(theta[i]) + 2 * step
    return best**2


@pytest.mark.parametrize("layer_fn", [
    lambda: _hard_s5(),
    lambda: _hard_s5(discretization="bilinear"),
    lambda: S4D(3, 8, init="legs"),
])
def test_hinf_score_is_squared_peak_gain_of_each_subsystem(layer_fn):
    layer = layer_fn().requires_grad_(False)
    lam, B, C = layer.discretized_system(torch.complex128)
    scores = hinf_score(layer_quantities(layer))
    for i in range(lam.numel()):
        M = C[0][:, i:i + 1] @ B[i:i + 1, :]  # C_i B̄_i: [H, H], rank 1
        ref = _peak_gain_sq(M, complex(lam[i]))
        assert abs(float(scores[i]) - ref) <= 1e-3 * ref, i


def test_aire_energy_is_summed_squared_impulse_response():
    layer = _hard_s5().requires_grad_(False)
    lam, B, C = layer.discretized_system(torch.complex128)
    energy = h2_energy(layer_quantities(layer))
    for i in range(lam.numel()):
        M = C[0][:, i:i + 1] @ B[i:i + 1, :]
        horizon = int(math.log(1e-14) / math.log(float(lam[i].abs()) ** 2)) + 1
        k = torch.arange(horizon, dtype=torch.float64)
        h_sq = torch.linalg.matrix_norm(M).square() * (lam[i] ** k).abs().square()  # ‖C_i λ̄^k B̄_i‖_F²
        ref = float(h_sq.sum())
        assert abs(float(energy[i]) - ref) <= 1e-6 * ref


def test_energy_normalization_worked_example_and_top_is_one():
    out = energy_normalize(torch.tensor([1.0, 4.0, 2.0, 3.0]))
    assert torch.allclose(out, torch.tensor([0.1, 1.0, 2 / 9, 3 / 7], dtype=torch.float64))
    # ties: the lower index ranks first
    assert energy_normalize(torch.tensor([2.0, 2.0])).tolist() == [1.0, 0.5]
    # inactive states leave the prefix sums
    out = energy_normalize(torch.tensor([1.0, 4.0, 2.0, 3.0]), torch.tensor([True, False, True, True]))
    assert out[1] == -math.inf
    assert torch.allclose(out[[3, 2, 0]], torch.tensor([1.0, 2 / 5, 1 / 6], dtype=torch.float64))
    model = SequenceModel(4, d_input=2, d_model=8, n_layers=3, ssm=dict(d_state=16, blocks=2))
    for method in ("last", "aire", "lamp"):
        for s in state_scores(model, method).values():
            assert s.max() == 1.0 and (s > 0).all() and (s <= 1).all()
            ranked = torch.sort(s, descending=True).values
            assert (ranked <= 1 / torch.arange(1, len(s) + 1)).all()  # LAST_(i) ≤ 1/i


def test_bidirectional_c_norm_rules():
    layer = _hard_s5(bidirectional=True)
    q = layer_quantities(layer)
    cf, cb = q.C_sq[0], q.C_sq[1]
    base = q.B_sq / q.margin**2
    assert torch.allclose(hinf_score(q), (cf + cb) / 2 * base)
    assert torch.allclose(hinf_score(q, "code"), (cf.sqrt() + cb.sqrt()) / 4 * base)
    assert torch.allclose(hinf_score(q, "bound"), (cf.sqrt() + cb.sqrt()) ** 2 * base)
    with pytest.raises(ValueError, match="bidirectional mode"):
        hinf_score(q, "mean")


def test_s4d_fast_norms_match_dense_protocol():
    layer = S4D(5, 8, bidirectional=True, n_ssm=1)
    fast = layer_quantities(layer)
    dense = modal_quantities(*layer.discretized_system(torch.complex128))
    for field in ("lam_abs", "margin", "B_sq", "C_sq"):
        assert torch.allclose(getattr(fast, field), getattr(dense, field), rtol=1e-12), field


def test_scores_resolve_slow_modes_that_float32_loses():
    layer = S4D(2, 4)
    with torch.no_grad():
        layer.A_real.fill_(math.log(1e-6))  # Re A = −1e-6: 1 − |λ̄| ≈ 1e-9 at Δ = 1e-3
        layer.log_dt.fill_(math.log(1e-3))
    q = layer_quantities(layer)
    assert torch.allclose(q.margin, torch.full_like(q.margin, -math.expm1(-1e-9)), rtol=1e-6)
    lam32 = layer.discretized_system()[0]
    assert (1 - lam32.abs()).eq(0).any() or (1 - lam32.abs()).min() > 5e-8  # float32 cannot resolve it


def test_unstable_mode_is_kept_with_a_warning():
    layer = S5(4, 8)
    with torch.no_grad():
        layer.Lambda_re[0] = 0.5
    with pytest.warns(RuntimeWarning, match="unstable"):
        s = state_scores(layer, "last")[""]
    assert s[0] == 1.0
    with pytest.warns(RuntimeWarning):
        plan = plan_pruning(layer, "global_hinf", 1.0)
    assert plan.masks[""][0] and plan.kept[""] == 1


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("activation", ["identity", "gelu"])
def test_layer_bound_on_pruned_linear_part(bidirectional, activation):
    """‖σ(y) − σ(y_pruned)‖₂ ≤ L_σ·(Σ_{i∈P} ‖G_i‖∞)·‖u‖₂ with G_i the real subsystem of pair i,
    ‖G_i‖∞ ≤ 2(‖C_i^f‖ + ‖C_i^b‖)‖B̄_i‖/(1 − |λ̄_i|) (the 'bound' rule; Eq. 4 with valid norms)."""
    torch.manual_seed(1)
    layer = _hard_s5(bidirectional=bidirectional)
    q = layer_quantities(layer)
    g = 2 * hinf_score(q, "bound").sqrt()
    sigma, lip = (lambda y: y), 1.0
    if activation == "gelu":
        sigma, lip = torch.nn.functional.gelu, 1.129
    for trial in range(5):
        pruned = torch.randperm(layer.n_states)[: 1 + trial * 2]
        keep = torch.ones(layer.n_states, dtype=torch.bool)
        keep[pruned] = False
        u = torch.randn(1, 400, H, dtype=torch.float64)
        full = recurrence_output(layer, u, keep=torch.ones_like(keep))
        part = recurrence_output(layer, u, keep=keep)
        lhs = float((sigma(full) - sigma(part)).norm())
        rhs = lip * float(g[pruned].sum()) * float(u.norm())
        assert lhs <= rhs
    # the bound is not vacuous: pruning the top state of a slow layer moves the output a lot
    assert lhs > 1e-6 * rhs


def _model(layer, bidirectional, n_layers=3):
    ssm = dict(d_state=16, blocks=2) if layer == "s5" else dict(d_state=8)
    return SequenceModel(5, d_input=3, layer=layer, d_model=8, n_layers=n_layers,
                         ssm=ssm | dict(bidirectional=bidirectional)).eval()


@pytest.mark.parametrize("layer", ["s5", "s4d"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_masked_model_equals_compacted_model(layer, bidirectional, tmp_path):
    model = _model(layer, bidirectional)
    plan = plan_pruning(model, "last", 0.6)
    apply_pruning(model, plan)
    small = compact_model(model)
    x, lengths = torch.randn(4, 50, 3), torch.tensor([50, 40, 7, 1])
    ref = model(x, lengths)
    assert torch.allclose(small(x, lengths), ref, atol=1e-5, rtol=1e-4)
    assert model.ssm_layers()[0].n_states > small.ssm_layers()[0].n_states  # physically smaller
    n_params = sum(p.numel() for p in small.parameters())
    assert n_params < sum(p.numel() for p in model.parameters())
    if layer == "s5":
        assert [s.n_states for s in small.ssm_layers()] == list(plan.kept.values())
    # checkpoints of the compacted model load (weights_only) and reproduce it
    save_model(small, tmp_path / "small.pt")
    again = load_model(tmp_path / "small.pt").eval()
    assert torch.equal(again(x, lengths), small(x, lengths))
    assert compact_model(small).ssm_layers()[0].n_states == small.ssm_layers()[0].n_states  # idempotent


@pytest.mark.parametrize("method", sorted(METHODS))
def test_achieved_ratio_is_exact(method):
    model = _model("s5", True, n_layers=3)  # 3 × 8 = 24 states
    N = 24
    g = torch.Generator().manual_seed(0)  # data-aware methods: any measured energies will do
    kw = {"calibration": {k: torch.rand(v.n_states, generator=g, dtype=torch.float64)
                          for k, v in prunable_layers(model).items()}} if METHODS[method].data else {}
    for r in [0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0]:
        plan = plan_pruning(model, method, r, **kw)
        n_pruned = N - sum(plan.kept.values())
        if METHODS[method].scope == "global":
            assert n_pruned == min(math.floor(r * N + 0.5), N - 3), (r, plan.kept)
        else:  # the same per-layer count everywhere (layers are equal here)
            assert set(plan.kept.values()) == {max(8 - math.floor(8 * r + 0.5), 1)}
        assert all(v >= 1 for v in plan.kept.values())
        assert plan.achieved_ratio == pytest.approx(n_pruned / N)
        assert all(int(m.sum()) == plan.kept[k] for k, m in plan.masks.items())


def test_ratio_one_keeps_min_states_per_layer():
    model = _model("s4d", False)
    for min_states in (1, 3):
        plan = plan_pruning(model, "last", 1.0, min_states=min_states)
        assert set(plan.kept.values()) == {min_states}
        for name, s in plan.scores.items():  # and they are each layer's best
            assert set(plan.masks[name].nonzero().squeeze(1).tolist()) == set(
                torch.sort(s, descending=True, stable=True).indices[:min_states].tolist())


def test_pruning_is_cumulative():
    model = _model("s5", False)
    first = plan_pruning(model, "last", 0.3)
    apply_pruning(model, first)
    second = plan_pruning(model, "last", 0.6)
    for k in first.masks:
        assert not (second.masks[k] & ~first.masks[k]).any()  # nothing comes back
        active = first.masks[k]
        assert second.scores[k][~active].eq(-math.inf).all() and second.scores[k][active].max() == 1.0
    assert second.achieved_ratio == pytest.approx(1 - (24 - math.floor(0.6 * 24 + 0.5)) / 24)
    lower = plan_pruning(model, "last", 0.1)  # below the current ratio: nothing more is pruned
    assert all(torch.equal(lower.masks[k], first.masks[k]) for k in first.masks)


def test_global_selection_uses_the_ranking_and_breaks_ties_deterministically():
    model = _model("s5", False, n_layers=2)
    tied = PruningMethod(lambda q, b: torch.ones_like(q.lam_abs), normalize=False, scope="global")
    plan = plan_pruning(model, tied, 0.5)  # 16 states, keep 8: one forced per layer, then in order
    m0, m1 = plan.masks.values()
    assert m0.tolist() == [True] * 7 + [False] and m1.tolist() == [True] + [False] * 7
    plan = plan_pruning(model, "global_hinf", 0.5)
    kept = torch.cat([s[plan.masks[k]] for k, s in plan.scores.items()])
    dropped = torch.cat([s[~plan.masks[k]] for k, s in plan.scores.items()])
    assert kept.min() >= dropped.max() and plan.threshold == kept.min()


def test_uniform_methods_prune_every_layer_equally_and_random_follows_the_seed():
    model = _model("s4d", True)
    plan = plan_pruning(model, "uniform_hinf", 0.4)
    assert set(plan.kept.values()) == {32 - 13} and set(plan.layer_ratios.values()) == {13 / 32}
    a, b, c = (plan_pruning(model, "random", 0.5, seed=s).masks for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)


def test_registry_is_extensible():
    model = _model("s5", False)
    METHODS["test_uniform_aire"] = PruningMethod(h2_energy, normalize=False, scope="uniform")
    try:
        plan = plan_pruning(model, "test_uniform_aire", 0.5)
        assert set(plan.kept.values()) == {4}
    finally:
        del METHODS["test_uniform_aire"]


def test_works_on_any_module_with_protocol_layers():
    stack = nn.Sequential(S5(4, 8), nn.GELU(), S4D(4, 4))
    plan = plan_pruning(stack, "last", 0.5)
    assert list(plan.masks) == ["0", "2"] and sum(plan.kept.values()) == 6
    apply_pruning(stack, plan)
    small = compact_model(stack)
    x = torch.randn(2, 30, 4)
    assert torch.allclose(small(x), stack(x), atol=1e-5)
    single = S5(4, 8)
    apply_pruning(single, plan_pruning(single, "aire", 0.5))
    assert compact_model(single).n_states == 2


def test_bad_input_is_explained():
    model = _model("s5", False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plan_pruning(model, "last", 1.5)
    with pytest.raises(ValueError, match=r"unknown pruning method 'hinf'.*last"):
        plan_pruning(model, "hinf", 0.3)
    with pytest.raises(ValueError, match="min_states=9 exceeds"):
        plan_pruning(model, "last", 0.3, min_states=9)
    with pytest.raises(ValueError, match="no prunable layer"):
        plan_pruning(nn.Linear(2, 2), "last", 0.3)
    with pytest.raises(ValueError, match="unknown pruning schedule 'cubic'"):
        pruning_schedule("cubic", 0.3)
    with pytest.raises(ValueError, match="max_epochs=5"):
        pruning_schedule("iterative", 0.3, epochs=[1, 5], max_epochs=5)
    with pytest.raises(ValueError, match="start_epoch and end_epoch"):
        pruning_schedule("gradual", 0.3)
    other = _model("s5", False, n_layers=2)
    with pytest.raises(ValueError, match="covers layers"):
        apply_pruning(other, plan_pruning(model, "last", 0.3))


def test_schedules():
    s = pruning_schedule("gradual", 0.8, start_epoch=2, end_epoch=8, frequency=2, max_epochs=10)
    assert [e for e, _ in s.steps] == [2, 4, 6, 8]
    for e, r in s.steps:
        assert r == pytest.approx(0.8 * (1 - (1 - (e - 2) / 6) ** 3))
    s = pruning_schedule("gradual", 0.5, start_epoch=1, end_epoch=6, frequency=2)
    assert [e for e, _ in s.steps] == [1, 3, 5, 6] and s.final_ratio == 0.5
    s = pruning_schedule("iterative", 0.6, epochs=[1, 3, 5])
    assert [r for _, r in s.steps] == pytest.approx([0.2, 0.4, 0.6])
    assert pruning_schedule("oneshot", 0.3).at_end and pruning_schedule("oneshot", 0.3, epoch=4).steps == ((4, 0.3),)


def test_prunable_layers_found_by_walking_modules():
    model = _model("s4d", False)
    assert list(prunable_layers(model)) == [f"blocks.{i}.ssm" for i in range(3)]
