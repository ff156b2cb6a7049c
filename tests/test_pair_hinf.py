"""The exact H∞ of each conjugate pair's real subsystem against dense, zoomed frequency sweeps of the
full H×H transfer matrix, on S4D (near-real poles) and S5 models."""

import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from ssmlit.models import S4D, S5, SequenceModel
from ssmlit.pruning import plan_pruning, prunable_layers, state_scores
from ssmlit.pruning.pair import pair_hinf_score, pair_peak_gain_sq
from ssmlit.pruning.plan import layer_quantities
from ssmlit.pruning.scores import hinf_score

from reference_scores import METHOD_FORMULAS, normalized, reference_selection
from trained import perturb_like_trained


def _sigma(w: complex, M: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """σ_max of G(e^{jθ}) = M/(1 − w e^{−jθ}) + M̄/(1 − w̄ e^{−jθ}) for every θ (M = c bᵀ)."""
    z = torch.exp(-1j * theta)
    G = (M[None] / (1 - w * z)[:, None, None]) + (M.conj()[None] / (1 - w.conjugate() * z)[:, None, None])
    return torch.linalg.matrix_norm(G, ord=2)


def _swept_peak_sq(w: complex, M: torch.Tensor) -> float:
    """sup over θ ∈ [0, π]: a dense grid, then six zooms around each of the grid's best point,
    θ = arg w and θ = 0 (a peak next to the unit circle is only ~1 − |w| wide)."""
    grid = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    s = _sigma(w, M, grid)
    best = float(s.max())
    for start in (float(grid[int(s.argmax())]), abs(math.atan2(w.imag, w.real)), 0.0):
        t, step = start, math.pi / 4000
        for _ in range(6):
            theta = torch.linspace(max(0.0, t - 3 * step), min(math.pi, t + 3 * step), 2001, dtype=torch.float64)
            v = _sigma(w, M, theta)
            t = float(theta[int(v.argmax())])
            best = max(best, float(v.max()))
            step = 6 * step / 2000
    return best**2


def _near_real_s4d() -> S4D:
    layer = S4D(2, 8, init="lin").requires_grad_(False)
    with torch.no_grad():
        layer.A_real.copy_(torch.log(torch.tensor([[1e-3, 0.3, 2.0, 1.0]] * 2)))
        layer.A_imag.copy_(torch.tensor([[0.0, 1e-2, 3.0, 0.5], [0.2, 0.0, 1e-4, 5.0]]))
        layer.log_dt.copy_(torch.log(torch.tensor([1e-2, 1e-1])))
    return layer


def _slow_s5() -> S5:
    layer = S5(3, 12, blocks=2).requires_grad_(False)
    with torch.no_grad():
        layer.Lambda_re.copy_(-torch.logspace(-4, 0, layer.n_states))
        layer.Lambda_im[:2] = torch.tensor([0.0, 1e-3])
    return layer


@pytest.mark.parametrize("layer_fn", [_near_real_s4d, _slow_s5, lambda: S4D(3, 8, init="legs")])
def test_exact_pair_hinf_equals_a_dense_frequency_sweep(layer_fn):
    layer = layer_fn()
    lam, B, C = layer.discretized_system(torch.complex128)
    exact = pair_hinf_score(layer)
    for i in range(lam.numel()):
        M = torch.outer(C[0][:, i], B[i])
        ref = _swept_peak_sq(complex(lam[i]), M)
        # The sweep can only underestimate the supremum, up to its own rounding: the naive
        # 1 − w e^{−jθ} carries a relative error ~1e-16/(1 − |w|), i.e. ~1e-9 at 1 − |w| = 1e-7.
        assert float(exact[i]) >= ref * (1 - 1e-7), i
        assert float(exact[i]) <= ref * (1 + 1e-7), i


def test_random_pairs_including_near_real_and_near_unit_circle():
    g = torch.Generator().manual_seed(3)
    for trial in range(40):
        m = 10 ** (-7 * torch.rand(1, generator=g).item())
        phi = [0.0, m, 3 * m, 1e-3, 0.3, 2.0, 3.14159][trial % 7]
        w = (1 - m) * complex(math.cos(phi), math.sin(phi))
        H = 1 + trial % 4
        b = torch.randn(H, dtype=torch.complex128, generator=g)
        c = torch.randn(H, dtype=torch.complex128, generator=g)
        exact = float(pair_peak_gain_sq(torch.tensor([w], dtype=torch.complex128), b[None], c[:, None])[0])
        ref = _swept_peak_sq(w, torch.outer(c, b))
        assert ref * (1 - 1e-7) <= exact <= ref * (1 + 1e-7), (trial, m, phi)


def test_pair_factor_against_eq6():
    # Real pole with real c, b: the two conjugate terms add, 2× the single-mode gain; a pole far
    # from the real axis: the single-mode value.
    b = torch.ones(1, 2, dtype=torch.complex128)
    c = torch.ones(2, 1, dtype=torch.complex128)
    real = pair_peak_gain_sq(torch.tensor([0.9 + 0j], dtype=torch.complex128), b, c)
    assert float(real) == pytest.approx((2 * 2 / 0.1) ** 2, rel=1e-12)
    far = pair_peak_gain_sq(torch.tensor([0.999 * complex(math.cos(1.5), math.sin(1.5))], dtype=torch.complex128), b, c)
    assert float(far) == pytest.approx((2 / 1e-3) ** 2, rel=2e-3)
    # S4D models: ratio exact/Eq. 6 spreads widely, which reorders states.
    layer = _near_real_s4d()
    ratio = (pair_hinf_score(layer) / hinf_score(layer_quantities(layer))).sqrt()
    assert float(ratio.max()) > 1.5 and float(ratio.min()) < 0.9


def test_exact_pair_option_in_plans():
    torch.manual_seed(0)
    model = SequenceModel(d_output=3, d_input=1, layer="s4d", d_model=4, n_layers=2, ssm=dict(d_state=8)).eval()
    s = state_scores(model, "last", exact_pair=True)
    for name in prunable_layers(model):
        assert s[name].max() == 1.0  # normalized (Eq. 9) exact-pair scores
        assert not torch.equal(s[name], state_scores(model, "last")[name])
    plan = plan_pruning(model, "global_hinf", 0.5, exact_pair=True)
    assert plan.options["exact_pair"] is True and sum(plan.kept.values()) == 16
    with pytest.raises(ValueError, match="exact_pair"):
        plan_pruning(model, "aire", 0.5, exact_pair=True)
    bi = SequenceModel(d_output=3, d_input=1, d_model=4, n_layers=1, ssm=dict(d_state=8, bidirectional=True))
    with pytest.raises(ValueError, match="unidirectional"):
        plan_pruning(bi, "last", 0.5, exact_pair=True)


def _trained_like_pair_model() -> nn.ModuleList:
    """Trained-like S4D (near-real poles from init="lin") and S5, two states of each layer masked."""
    torch.manual_seed(1)
    model = perturb_like_trained(nn.ModuleList([S4D(2, 8, n_ssm=2, init="lin"), S5(2, 12, blocks=2)]), seed=2)
    for layer in model:
        layer.state_mask[[1, 3]] = False
    return model


@functools.cache
def _swept_peaks(rescale) -> dict[str, np.ndarray]:
    """Swept pair peak gains² of every state of ``_trained_like_pair_model()`` (shared by the methods)."""
    out = {}
    for name, layer in prunable_layers(_trained_like_pair_model()).items():
        lam, B, C = layer.discretized_system(torch.complex128, step_rescale=rescale)
        out[name] = np.array([_swept_peak_sq(complex(lam[i]), torch.outer(C[0][:, i], B[i]))
                              for i in range(lam.numel())])
    return out


@pytest.mark.parametrize("rescale", [None, 2.5])
@pytest.mark.parametrize("method", ["last", "global_hinf", "uniform_hinf"])
def test_exact_pair_scores_and_selection_by_value(method, rescale):
    # Through state_scores/plan_pruning, exact_pair=True ranks the swept pair peak gains: normalized
    # (Eq. 9) for last, raw for the others, −inf for masked states, at the requested Δ multiplier;
    # and the plan keeps their exact top-K.
    model = _trained_like_pair_model()
    _, normalize, scope = METHOD_FORMULAS[method]
    got = state_scores(model, method, exact_pair=True, step_rescale=rescale)
    plan = plan_pruning(model, method, 0.5, exact_pair=True, step_rescale=rescale)
    ref, active = {}, {}
    for name, layer in prunable_layers(model).items():
        peak, a = _swept_peaks(rescale)[name], layer.state_mask.numpy()
        want = normalized(peak, a) if normalize else np.where(a, peak, -np.inf)
        # the sweep is good to ~1e-9 here (see test_exact_pair_hinf_equals_a_dense_frequency_sweep)
        np.testing.assert_allclose(got[name].numpy(), want, rtol=1e-7, atol=0, err_msg=name)
        assert torch.equal(plan.scores[name], got[name])
        ref[name], active[name] = torch.from_numpy(want), layer.state_mask.clone()
    kept = {k: set(m.nonzero().squeeze(1).tolist()) for k, m in plan.masks.items()}
    assert kept == reference_selection(ref, active, scope, 0.5, 1)
    # the pair scores differ from Eq. 6 (else this would not test the option)
    assert any(not torch.allclose(got[k], state_scores(model, method, step_rescale=rescale)[k]) for k in got)
