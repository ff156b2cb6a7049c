"""Horizon-aware scores against direct sums of the impulse response over L steps, their limits, and
their cancellation-free evaluation next to the unit circle."""

import math

import pytest
import torch

from ssmlit.models import S5, SequenceModel
from ssmlit.pruning import METHODS, plan_pruning, state_scores
from ssmlit.pruning.horizon import check_horizon, geometric_sum, h2_horizon_energy, hinf_horizon_score
from ssmlit.pruning.plan import layer_quantities
from ssmlit.pruning.scores import h2_energy, hinf_score, quantities_from_norms


def _slow_s5(bidirectional=False) -> S5:
    layer = S5(4, 16, blocks=2, bidirectional=bidirectional).requires_grad_(False)
    with torch.no_grad():
        P = layer.n_states
        layer.Lambda_re.copy_(-torch.logspace(-5, 0, P))
        layer.Lambda_im[P // 2:] = torch.linspace(3, 40, P - P // 2)
        layer.log_step.copy_(torch.linspace(math.log(1e-3), math.log(1e-1), P))
    return layer


def _impulse(layer, L):
    """h_k = C_i λ̄_i^k B̄_i per state, as the H×H matrices M_i λ̄_i^k: returns M [n, H, H], lam [n]."""
    lam, B, C = layer.discretized_system(torch.complex128)
    M = torch.einsum("hn,nk->nhk", C[0], B)
    return M, lam


@pytest.mark.parametrize("L", [1, 7, 64, 1000])
def test_horizon_scores_equal_direct_sums_of_the_impulse_response(L):
    layer = _slow_s5()
    M, lam = _impulse(layer, L)
    q = layer_quantities(layer)
    gain_sq, energy = hinf_horizon_score(q, horizon=L), h2_horizon_energy(q, horizon=L)
    k = torch.arange(L, dtype=torch.float64)
    for i in range(lam.numel()):
        powers = lam[i] ** k  # complex128, computed term by term
        fro = torch.linalg.matrix_norm(M[i]).item()  # ‖C_i B̄_i‖_F = ‖C_i‖‖B̄_i‖ (rank 1)
        ref_gain = (fro * powers.abs().sum().item()) ** 2
        ref_energy = sum(torch.linalg.matrix_norm(M[i] * p).item() ** 2 for p in powers)
        assert float(gain_sq[i]) == pytest.approx(ref_gain, rel=1e-10)
        assert float(energy[i]) == pytest.approx(ref_energy, rel=1e-10)


def test_horizon_gain_is_the_peak_of_the_truncated_frequency_response():
    # The finite-horizon score claims sup_θ σ_max(Σ_{k<L} C λ̄^k B̄ e^{−jθk}) = ‖C‖‖B̄‖ Σ|λ̄|^k.
    layer = _slow_s5()
    M, lam = _impulse(layer, 16)
    L = 16
    q = layer_quantities(layer)
    score = hinf_horizon_score(q, horizon=L)
    theta = torch.linspace(-math.pi, math.pi, 20001, dtype=torch.float64)
    k = torch.arange(L, dtype=torch.float64)
    for i in range(lam.numel()):
        fir = (lam[i] ** k[None, :] * torch.exp(-1j * theta[:, None] * k[None, :])).sum(1)  # [θ]
        sigma = torch.linalg.matrix_norm(M[i], ord=2).item() * fir.abs()
        # The grid contains θ = arg λ̄ only approximately: compare from below, tightly.
        assert float(sigma.max()) ** 2 <= float(score[i]) * (1 + 1e-12)
        assert float(sigma.max()) ** 2 >= float(score[i]) * (1 - 1e-4)


def test_no_cancellation_next_to_the_unit_circle():
    # 1 − |λ̄| down to 1e-15: the sums Σ_{k<L} ρ^k are summed directly in float64 (each term ≈ 1,
    # so the direct sum is accurate), while 1 − ρ^L formed naively would lose every digit.
    margin = torch.tensor([1e-15, 1e-12, 3e-9, 1e-6, 1e-3, 0.5, 1.0], dtype=torch.float64)
    for L in (1, 64, 1344):
        rho = 1 - margin
        direct_1 = torch.stack([(r ** torch.arange(L, dtype=torch.float64)).sum() for r in rho])
        direct_2 = torch.stack([(r ** (2 * torch.arange(L, dtype=torch.float64))).sum() for r in rho])
        assert torch.allclose(geometric_sum(margin, L, 1), direct_1, rtol=1e-12, atol=0)
        assert torch.allclose(geometric_sum(margin, L, 2), direct_2, rtol=1e-12, atol=0)
    # |λ̄| = 1 exactly: the limit, L.
    assert float(geometric_sum(torch.zeros(1, dtype=torch.float64), 50, 2)) == 50.0


def test_converges_to_eq6_and_aire_as_L_grows():
    layer = _slow_s5()
    q = layer_quantities(layer)
    inf_h, inf_e = hinf_score(q), h2_energy(q)
    prev = torch.zeros_like(inf_h)
    for L in (10, 100, 10**4, 10**6, 10**9):
        h = hinf_horizon_score(q, horizon=L)
        assert (h >= prev).all() and (h <= inf_h * (1 + 1e-12)).all()  # monotone, bounded by Eq. 6
        prev = h
    # With Re λ·Δ ≥ 1e-8, ρ^{1e12} is ~0: the finite sums equal the infinite ones.
    assert torch.allclose(hinf_horizon_score(q, horizon=10**12), inf_h, rtol=1e-9)
    assert torch.allclose(h2_horizon_energy(q, horizon=10**12), inf_e, rtol=1e-9)
    assert torch.equal(hinf_horizon_score(q, horizon=None), inf_h)
    assert torch.equal(h2_horizon_energy(q, horizon=None), inf_e)
    # L = 1: only the lag-0 term, ‖C‖²‖B̄‖² for both.
    base = q.C_sq[0] * q.B_sq
    assert torch.allclose(hinf_horizon_score(q, horizon=1), base, rtol=1e-14)
    assert torch.allclose(h2_horizon_energy(q, horizon=1), base, rtol=1e-14)


def test_horizon_methods_rank_slow_poles_lower_than_last():
    # A slow pole (1 − |λ̄| = 1e-5, gain 64 over 64 steps) against a fast one (λ̄ = 0.5, ‖B̄‖ = 64,
    # gain 128): on an infinite horizon the slow pole wins by ~2.5e6, over 64 steps the fast one.
    lam = torch.tensor([1 - 1e-5, 0.5], dtype=torch.complex128)
    q = quantities_from_norms(lam, torch.tensor([1.0, 4096.0], dtype=torch.float64),
                              torch.ones(1, 2, dtype=torch.float64))
    assert hinf_score(q)[0] > hinf_score(q)[1]
    h = hinf_horizon_score(q, horizon=64)
    assert h[0] < h[1]
    assert float(h[0]) == pytest.approx(sum((1 - 1e-5) ** k for k in range(64)) ** 2, rel=1e-12)


def test_horizon_methods_in_plans_and_registry():
    torch.manual_seed(0)
    model = SequenceModel(d_output=3, d_input=1, d_model=8, n_layers=2, ssm=dict(d_state=16, blocks=2)).eval()
    assert METHODS["last_horizon"].horizon and METHODS["aire_horizon"].horizon
    for new, old in (("last_horizon", "last"), ("aire_horizon", "aire")):
        # horizon=None is today's score, exactly.
        a, b = state_scores(model, new, horizon=None), state_scores(model, old)
        assert all(torch.equal(a[k], b[k]) for k in a)
        plan = plan_pruning(model, new, 0.5, horizon=64)
        assert plan.options["horizon"] == 64 and plan.summary()["horizon"] == 64
        assert sum(plan.kept.values()) == 8


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "64", "auto"])
def test_bad_horizons_are_rejected(bad):
    with pytest.raises(ValueError, match="horizon"):
        check_horizon(bad)
