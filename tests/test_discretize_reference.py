"""The layers' discretization and outputs against the textbook reference of ``reference_disc``
(matrix exponential of the augmented system for ZOH, the bilinear transform by its definition),
computed from the raw parameters (Λ, B̃, Δ) in float64, on trained-like layers."""

import math

import numpy as np
import pytest
import torch

from ssmlit.models import S4D, S5, SCANS
from ssmlit.models.discretize import discretize

from reference import recurrence_output, rel_err
from reference_disc import bilinear_solve, textbook_system, zoh_expm
from trained import perturb_like_trained, slow_mode_

H = 4


def _s5(**kw) -> S5:
    layer = S5(H, 12, blocks=2, **kw)
    return slow_mode_(perturb_like_trained(layer), 0, re=1e-4)


def _s4d(n_ssm, **kw) -> S4D:
    layer = S4D(H, 8, n_ssm=n_ssm, **kw)
    return slow_mode_(perturb_like_trained(layer), 1, re=1e-3)


LAYERS = {
    "s5-zoh": lambda: _s5(),
    "s5-bilinear": lambda: _s5(discretization="bilinear"),
    "s5-clip-bi": lambda: _s5(clip_eigs=True, bidirectional=True),
    "s5-zoh-rescale": lambda: _s5(step_rescale=0.4),
    "s4d-zoh-nssm-H": lambda: _s4d(None),
    "s4d-zoh-nssm-2": lambda: _s4d(2, bidirectional=True),
    "s4d-bilinear-nssm-1": lambda: _s4d(1, discretization="bilinear"),
    "s4d-frozen-B": lambda: _s4d(2, trainable_B=False, init="lin"),
}


def _close(x: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    # Relative to the largest entry: B̄ and C hold exact zeros (S4D's off-diagonal blocks).
    err = float((x.detach().to(torch.complex128) - ref).abs().max() / ref.abs().max())
    assert err <= rtol, err


@pytest.mark.parametrize("rescale", [None, 2.5])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_discretized_system_equals_textbook(name, rescale):
    layer = LAYERS[name]()
    if name == "s5-clip-bi":
        with torch.no_grad():
            layer.Lambda_re[3] = 0.2  # clip_eigs must pull it back to −1e-4
    ref = textbook_system(layer, step_rescale=rescale)
    got = layer.discretized_system(torch.complex128, step_rescale=rescale)
    for x, r, what in zip(got, ref, ("lam_bar", "B_bar", "C")):
        assert x.shape == r.shape, what
        _close(x, r, 1e-12)
    # element-wise on λ̄ and B̄ too: the slow state's values are no larger than the others
    assert torch.allclose(got[0], ref[0], rtol=1e-12, atol=0)
    nz = ref[1] != 0
    assert torch.allclose(got[1][nz], ref[1][nz], rtol=1e-10, atol=0)
    assert (got[1][~nz] == 0).all()
    # the float32 system (what forward uses) is the same to float32 precision
    got32 = layer.discretized_system(step_rescale=rescale)
    assert got32[0].dtype == torch.complex64
    for x, r in zip(got32, ref):
        _close(x, r, 2e-6)


def test_zoh_input_matrix_has_no_cancellation_at_tiny_steps():
    """B̄ = (e^{λΔ} − 1)/λ·B̃ with λΔ ~ 1e-6: float32 e^{λΔ} − 1 keeps only ~1 digit; expm1 all."""
    layer = S5(H, 8)
    with torch.no_grad():
        layer.log_step.fill_(math.log(2e-6))
        layer.Lambda_im.copy_(torch.linspace(-3, 3, layer.n_states))
    perturb_like_trained(layer, scale=0.05)
    ref = textbook_system(layer)
    B32 = layer.discretized_system()[1]
    assert float(((B32.to(torch.complex128) - ref[1]).abs() / ref[1].abs()).max()) <= 1e-5


def test_textbook_formulas_agree_with_each_other_and_with_discretize():
    """The two references are themselves right: for Δ → 0 bilinear and ZOH agree to O(Δ³) in λ̄, and
    ``discretize`` reproduces both on random complex eigenvalues."""
    rng = np.random.default_rng(0)
    lam = -rng.uniform(0.01, 2, 6) + 1j * rng.uniform(-20, 20, 6)
    B = rng.normal(size=(6, 3)) + 1j * rng.normal(size=(6, 3))
    for dt in (1e-2, 1e-3):
        delta = np.full(6, dt)
        (lz, bz), (lb, bb) = zoh_expm(lam, B, delta), bilinear_solve(lam, B, delta)
        assert np.abs(lz - lb).max() <= 2 * np.abs(lam).max() ** 3 * dt**3
        assert np.abs(bz - bb).max() <= 2 * np.abs(lam).max() ** 2 * dt**3 * np.abs(B).max()
        assert np.allclose(lz, np.exp(lam * dt), rtol=1e-13)
    delta = rng.uniform(1e-3, 0.5, 6)
    for method, fn in (("zoh", zoh_expm), ("bilinear", bilinear_solve)):
        lr, br = fn(lam, B, delta)
        log_lam, lam_bar, gamma = discretize(torch.from_numpy(lam), torch.from_numpy(delta), method)
        assert np.allclose(lam_bar.numpy(), lr, rtol=1e-13)
        assert np.allclose(torch.exp(log_lam).numpy(), lr, rtol=1e-12)  # log λ̄ drives the fast paths
        assert np.allclose(gamma.numpy()[:, None] * B, br, rtol=1e-12)


S5_CASES = [(scan, bi, disc) for scan in sorted(SCANS) for bi in (False, True) for disc in ("zoh", "bilinear")]


@pytest.mark.parametrize(("scan", "bidirectional", "discretization"), S5_CASES)
def test_trained_s5_output_equals_textbook_recurrence(scan, bidirectional, discretization):
    layer = _s5(scan=scan, bidirectional=bidirectional, discretization=discretization, chunk_size=16)
    u = torch.randn(2, 150, H)
    assert rel_err(layer(u), recurrence_output(layer, u)) <= 1e-4
    y = layer(u, step_rescale=1.7)
    assert rel_err(y, recurrence_output(layer, u, step_rescale=1.7)) <= 1e-4


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("n_ssm", [None, 2, 1])
def test_trained_s4d_output_equals_textbook_recurrence(n_ssm, bidirectional, discretization):
    layer = _s4d(n_ssm, bidirectional=bidirectional, discretization=discretization)
    u = torch.randn(2, 150, H)
    assert rel_err(layer(u), recurrence_output(layer, u)) <= 1e-4
    y = layer(u, step_rescale=0.6)
    assert rel_err(y, recurrence_output(layer, u, step_rescale=0.6)) <= 1e-4
