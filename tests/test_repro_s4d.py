"""S4D with state-spaces/s4's conventions (issue 12, part 7): the shifted anti-causal kernel, the
mapping between the two bidirectional conventions, s4's kernel length rule and the S4D-Lin clamp."""

import math

import numpy as np
import pytest
import torch

from ssmlit.models import S4D, s4_to_s5_convention
from ssmlit.pruning import apply_pruning, compact_model, plan_pruning, state_scores

from reference import recurrence_output, rel_err


def _layer(convention="s4", seed=0, H=3, N=8, **kw):
    torch.manual_seed(seed)
    layer = S4D(H, N, bidirectional=True, bidirectional_convention=convention, dt_min=0.05, dt_max=0.5, **kw)
    with torch.no_grad():  # random A, B, C, D so that no symmetry hides an off-by-one
        layer.A_real.copy_(torch.log(torch.rand_like(layer.A_real) * 0.5 + 0.05))
        layer.A_imag.copy_(torch.rand_like(layer.A_imag) * 3)
        layer.B.copy_(torch.randn_like(layer.B))
        layer.C.copy_(torch.randn_like(layer.C))
        layer.D.copy_(torch.randn_like(layer.D))
    return layer


@torch.no_grad()
def _kernels(layer, L, rescale=1.0):
    """float64 k[d, h, l] = 2·Re Σ_n C[d,h,n]·B̄[h,n]·λ̄[h,n]^l over the active states."""
    _, lam, B_bar, C = layer._per_channel(rescale, torch.complex128)
    coef = C * B_bar * layer.state_mask.view_as(B_bar)
    powers = lam[..., None] ** torch.arange(L, dtype=torch.float64)
    return 2 * torch.einsum("dhn,hnl->dhl", coef, powers).real.numpy()


@torch.no_grad()
def _direct(layer, u, convention, taps=None, rescale=1.0):
    """The issue's formula, as plain float64 sums: y_t = Σ_{j≥0} k0[j]u_{t−j} + Σ_{m≥1} k1[m−1]u_{t+m}
    + D·u_t (s4), or Σ_{m≥0} k1[m]u_{t+m} (s5); kernels cut to ``taps``."""
    L = u.shape[1]
    taps = L if taps is None else taps
    k = _kernels(layer, L, rescale)[..., :taps]
    x = u.double().numpy()
    y = x * layer.D.detach().double().numpy()
    for t in range(L):
        for j in range(min(taps, t + 1)):
            y[:, t] += k[0, :, j] * x[:, t - j]
        for m in range(1 if convention == "s4" else 0, L - t):
            lag = m - 1 if convention == "s4" else m
            if lag < taps:
                y[:, t] += k[1, :, lag] * x[:, t + m]
    return torch.from_numpy(y)


@pytest.mark.parametrize("convention", ["s4", "s5"])
def test_bidirectional_conventions_match_the_direct_sums(convention):
    layer = _layer(convention)
    with torch.no_grad():
        layer.state_mask[[1, 6, 11]] = False
    u = torch.randn(2, 12, 3)
    y = layer(u)
    assert rel_err(y, _direct(layer, u, convention)) < 1e-5
    assert rel_err(y, recurrence_output(layer, u)) < 1e-5  # the protocol with δ = backward_delay
    assert layer.backward_delay == (1 if convention == "s4" else 0)
    other = "s5" if convention == "s4" else "s4"
    assert rel_err(y, _direct(layer, u, other)) > 1e-2  # the conventions really differ


def test_s4_parameters_map_exactly_onto_the_s5_convention():
    layer = _layer("s4", seed=1)
    with torch.no_grad():
        layer.state_mask[[0, 5]] = False
    mapped = s4_to_s5_convention(layer)
    assert mapped.bidirectional_convention == "s5" and torch.equal(mapped.state_mask, layer.state_mask)
    assert torch.equal(mapped.C[0], layer.C[0]) and torch.equal(mapped.log_dt, layer.log_dt)
    u = torch.randn(3, 20, 3)
    assert rel_err(mapped(u), layer(u).double()) < 1e-5
    # in float64 the two parameter sets give the same function up to round-off
    ref_s4, ref_s5 = _direct(layer, u, "s4"), _direct(mapped, u, "s5")
    assert float((ref_s4 - ref_s5).abs().max() / ref_s4.abs().max()) < 1e-6  # C1/λ̄ is stored in complex64
    # the mapping is exact arithmetic: rebuild the float64 s5 kernel from the s4 parameters
    with torch.no_grad():
        _, lam, B_bar, C = layer._per_channel(1.0, torch.complex128)
    k_s4 = _kernels(layer, 21)[1]
    coef = (C[1] / lam) * B_bar * layer.state_mask.view_as(B_bar)
    k_s5 = 2 * torch.einsum("hn,hnl->hl", coef, lam[..., None] ** torch.arange(21, dtype=torch.float64)).real
    np.testing.assert_allclose(k_s5[:, 1:].numpy(), k_s4[:, :-1], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="bidirectional_convention='s4'"):
        s4_to_s5_convention(_layer("s5"))


def test_shifted_layer_prunes_and_compacts():
    layer = _layer("s4", seed=2, H=4, N=8)
    plan = plan_pruning(torch.nn.ModuleList([layer]), "last", 0.5)
    apply_pruning(torch.nn.ModuleList([layer]), plan)
    small = compact_model(torch.nn.ModuleList([layer]))[0]
    assert small.bidirectional_convention == "s4" and small.n_active == layer.n_active
    u = torch.randn(2, 16, 4)
    assert rel_err(small(u), layer(u).double()) < 1e-5
    assert rel_err(layer(u), _direct(layer, u, "s4")) < 1e-5


def test_scores_use_the_layers_own_c_in_both_conventions():
    # A one-step delay leaves |G(e^{iω})| unchanged, so each direction's per-state H∞ norm and energy
    # are the same function of (λ̄, B̄, C[d]) in both conventions (the documented protocol).
    s4, s5 = _layer("s4", seed=3), _layer("s5", seed=3)
    for method in ("last", "aire", "global_hinf"):
        for rule in ("paper", "code", "bound"):
            a = state_scores(torch.nn.ModuleList([s4]), method, bidirectional=rule)["0"]
            b = state_scores(torch.nn.ModuleList([s5]), method, bidirectional=rule)["0"]
            assert torch.equal(a, b), (method, rule)
    with torch.no_grad():
        _, B, C = s4.discretized_system(torch.complex128)
        _, B_sq, C_sq = s4.state_norms(torch.complex128)
    assert torch.allclose(C_sq, C.abs().square().sum(1)) and torch.allclose(B_sq, B.abs().square().sum(1))


def test_kernel_length_follows_s4s_rule():
    layer = _layer("s4", seed=4, l_max=8)
    u = torch.randn(2, 16, 3)
    assert layer.kernel_length(16, 1.0) == 8 and layer.kernel_length(16, 2.0) == 4 and layer.kernel_length(6, 2.0) == 4
    assert rel_err(layer(u), _direct(layer, u, "s4", taps=8)) < 1e-5
    y2 = layer(u, step_rescale=2.0)
    assert rel_err(y2, _direct(layer, u, "s4", taps=4, rescale=2.0)) < 1e-5
    assert rel_err(y2, _direct(layer, u, "s4", taps=16, rescale=2.0)) > 1e-3  # the cut is real
    free = _layer("s4", seed=4)
    assert rel_err(free(u), _direct(free, u, "s4")) < 1e-5  # no l_max: the full length


def test_s4d_lin_imag_clamp():
    assert S4D(2, 8, init="lin").A_imag[:, 0].tolist() == [0.0, 0.0]
    clamped = S4D(2, 8, init="lin", imag_init_min=1e-4)
    assert clamped.A_imag[:, 0].tolist() == [pytest.approx(1e-4)] * 2
    assert torch.allclose(clamped.A_imag[0, 1:], math.pi * torch.arange(1, 4, dtype=torch.float32))
    legs = S4D(2, 8, init="legs")
    assert torch.equal(S4D(2, 8, init="legs", imag_init_min=1e-4).A_imag, legs.A_imag)  # LegS has no Im A ≈ 0


@pytest.mark.parametrize("kw, match", [
    (dict(bidirectional_convention="s4d"), r"unknown bidirectional_convention 's4d'; choose one of \('s5', 's4'\)"),
    (dict(l_max=0), r"l_max must be a positive integer .* got 0"),
    (dict(imag_init_min=-1e-4), r"imag_init_min must be a number >= 0, got -0.0001"),
])
def test_new_s4d_options_are_validated(kw, match):
    with pytest.raises(ValueError, match=match):
        S4D(4, 8, bidirectional=True, **kw)
