"""Pruning and compaction on trained-like layers, where S4D's SSM copies, channels and states all
differ (at initialization they coincide and hide wrong indexing), and with unstable poles."""

import contextlib
import math
import warnings

import numpy as np
import pytest
import torch

from ssmlit.models import S4D, S5, SequenceModel, load_model, save_model
from ssmlit.pruning import METHODS, apply_pruning, compact_model, plan_pruning, state_scores
from ssmlit.pruning.plan import layer_quantities
from ssmlit.pruning.scores import h2_energy

from reference import recurrence_output, rel_err
from reference_scores import HORIZON_KINDS, MEASURED_KIND, METHOD_FORMULAS, reference_scores, reference_selection
from trained import perturb_like_trained

H = 4


def _uneven_s4d_mask(layer: S4D) -> None:
    """Channels keep 1, 2, 3 and all 4 of their modes, not the first ones."""
    keep = {0: [2], 1: [0, 3], 2: [1, 2, 3], 3: [0, 1, 2, 3]}
    mask = torch.zeros(layer.d_model, layer.n_modes, dtype=torch.bool)
    for h in range(layer.d_model):
        mask[h, keep[h % 4]] = True
    layer.state_mask.copy_(mask.reshape(-1))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("n_ssm", [None, 1, 2, H])
def test_s4d_compact_keeps_each_channels_own_copy(n_ssm, bidirectional):
    layer = perturb_like_trained(S4D(H, 8, n_ssm=n_ssm, bidirectional=bidirectional), seed=2)
    _uneven_s4d_mask(layer)
    u = torch.randn(2, 120, H)
    masked = layer(u)
    ref = recurrence_output(layer, u)  # masked states deleted from the textbook system
    assert rel_err(masked, ref) <= 1e-4
    small = layer.compact()
    assert small.n_modes == 4 and small.n_ssm == H and small.n_active == layer.n_active
    assert rel_err(small(u), ref) <= 1e-4
    # state by state: each channel's kept poles and input rows, in their original order
    lam, B, _ = layer.discretized_system(torch.complex128)
    lam_s, B_s, _ = small.discretized_system(torch.complex128)
    m, m_s = layer.state_mask, small.state_mask
    assert torch.allclose(lam_s[m_s], lam[m], rtol=1e-6)
    assert torch.allclose(B_s[m_s], B[m], rtol=1e-5, atol=1e-9)
    # the trained-like copies really differ (else this test could not see a wrong copy)
    if layer.n_ssm > 1:
        assert not torch.allclose(layer.A_real[0], layer.A_real[1])


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_s5_compact_on_trained_like_layer(bidirectional, discretization):
    layer = perturb_like_trained(S5(H, 16, blocks=2, bidirectional=bidirectional, discretization=discretization))
    layer.state_mask[[0, 3, 4, 6]] = False
    u = torch.randn(2, 120, H)
    ref = recurrence_output(layer, u)
    assert rel_err(layer(u), ref) <= 1e-4
    small = layer.compact()
    assert small.n_states == 4 and small.n_active == 4
    assert rel_err(small(u), ref) <= 1e-4
    lam, B, C = layer.discretized_system(torch.complex128)
    lam_s, B_s, C_s = small.discretized_system(torch.complex128)
    keep = layer.state_mask
    assert torch.allclose(lam_s, lam[keep]) and torch.allclose(B_s, B[keep]) and torch.allclose(C_s, C[..., keep])


@pytest.mark.parametrize("method", ["last", "uniform_magnitude"])
@pytest.mark.parametrize("layer", ["s5", "s4d"])
def test_pruned_trained_like_model_compacts_and_reloads(layer, method, tmp_path):
    ssm = dict(d_state=16, blocks=2) if layer == "s5" else dict(d_state=8, n_ssm=2)
    model = SequenceModel(5, d_input=3, layer=layer, d_model=H, n_layers=2, ssm=ssm | dict(bidirectional=True))
    perturb_like_trained(model.eval())
    apply_pruning(model, plan_pruning(model, method, 0.5))
    x, lengths = torch.randn(3, 40, 3), torch.tensor([40, 33, 5])
    ref = model(x, lengths)
    small = compact_model(model)
    assert torch.allclose(small(x, lengths), ref, atol=1e-5, rtol=1e-4)
    save_model(small, tmp_path / "small.pt")
    assert torch.equal(load_model(tmp_path / "small.pt").eval()(x, lengths), small(x, lengths))


def _unstable_s5(poles=(2,)) -> S5:
    layer = perturb_like_trained(S5(H, 16, blocks=2, bidirectional=True))
    with torch.no_grad():
        for i in poles:
            layer.Lambda_re[i] = 0.3  # |λ̄| > 1
    return layer


NORMALIZED = [m for m in sorted(METHODS) if METHODS[m].normalize]


@pytest.mark.parametrize("poles", [(2,), (0, 5)])
@pytest.mark.parametrize("method", NORMALIZED)
def test_unstable_pole_leaves_the_other_scores_normalized(method, poles):
    layer = _unstable_s5(poles)
    kind = METHOD_FORMULAS[method][0]
    # Eq. 6, AIRE and their finite-horizon forms score an unstable pole +inf and warn; LAMP's
    # magnitude stays finite.
    warns = kind in ("hinf", "h2", *HORIZON_KINDS)
    opts, energies = {}, None
    if kind in HORIZON_KINDS:
        opts = {"horizon": 16}
    elif kind == MEASURED_KIND:
        # calibrate measures an unstable state's overflowing energy as +inf (test_calibration.py);
        # the normalization must treat it as the computed scores' +inf.
        energies = np.exp(np.random.default_rng(0).standard_normal(layer.n_states))
        energies[list(poles)] = math.inf
        opts = {"calibration": {"": torch.from_numpy(energies)}}
    infinite = warns or kind == MEASURED_KIND
    with pytest.warns(RuntimeWarning, match="unstable") if warns else contextlib.nullcontext():
        s = state_scores(layer, method, **opts)[""]
    ref = reference_scores(layer, method, horizon=opts.get("horizon"), energies=energies)
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-9, atol=0)
    stable = torch.ones(layer.n_states, dtype=torch.bool)
    stable[list(poles)] = False
    if infinite:
        assert (s[list(poles)] == 1).all()
        # the others are normalized among themselves: the best stable state scores 1 as well, and
        # none collapses to 0 (an infinite prefix sum would zero them all)
        assert s[stable].max() == 1.0 and (s[stable] > 0).all() and torch.isfinite(s).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        plan = plan_pruning(layer, method, 0.5, **opts)
    active = {"": torch.ones(layer.n_states, dtype=torch.bool)}
    assert {"": set(plan.masks[""].nonzero().squeeze(1).tolist())} == reference_selection(
        plan.scores, active, "global", 0.5, 1)
    if infinite:
        assert plan.masks[""][list(poles)].all()  # unstable poles are never pruned


def test_unstable_pole_score_is_infinite_for_raw_hinf_and_kept_at_full_ratio():
    layer = _unstable_s5((2,))
    with pytest.warns(RuntimeWarning, match=r"1 state\(s\) have \|λ̄\| ≥ 1"):
        s = state_scores(layer, "global_hinf")[""]
    assert s[2] == math.inf and torch.isfinite(s[torch.arange(8) != 2]).all()
    with pytest.warns(RuntimeWarning, match="unstable"):
        energy = h2_energy(layer_quantities(layer))  # finite/tiny would be a huge finite number
    assert energy[2] == math.inf and torch.isfinite(energy[torch.arange(8) != 2]).all()
    with pytest.warns(RuntimeWarning):
        plan = plan_pruning(layer, "uniform_hinf", 1.0)
    assert plan.masks[""].tolist() == [i == 2 for i in range(8)]
