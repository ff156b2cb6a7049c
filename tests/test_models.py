import math

import pytest
import torch

from ssmlit.models import S4D, S5, SCANS, SequenceModel
from ssmlit.models.hippo import block_diag_hippo_n, lecun_normal_, legs_normal_eig, s4d_init
from ssmlit.models.scan import chunked_scan, diagonal_scan

from reference import recurrence_output, rel_err

H = 8
L = 1024


def _hard_s5(**kw) -> S5:
    """An S5 layer with modes near the unit circle (slow), fast oscillations and spread Δ."""
    layer = S5(H, 16, blocks=2, **kw)
    with torch.no_grad():
        P = layer.n_states
        layer.Lambda_re[: P // 2] = -torch.logspace(-4, -1, P // 2)  # |λ̄| within 1e-7 of 1 at Δ=1e-3
        layer.Lambda_im[P // 2:] = torch.linspace(20, 120, P - P // 2)  # large imaginary parts
        layer.log_step.copy_(torch.linspace(math.log(1e-3), math.log(1e-1), P))
    return layer


@pytest.mark.parametrize("scan", sorted(SCANS))
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s5_matches_float64_recurrence(scan, bidirectional, discretization):
    layer = _hard_s5(bidirectional=bidirectional, discretization=discretization, scan=scan, chunk_size=48)
    u = torch.randn(2, L, H)
    y = layer(u)
    assert y.dtype == torch.float32 and y.shape == u.shape
    assert rel_err(y, recurrence_output(layer, u)) <= 1e-4


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["legs", "inv", "lin"])
def test_s4d_matches_float64_recurrence(bidirectional, discretization, init):
    layer = S4D(H, 16, bidirectional=bidirectional, discretization=discretization, init=init, n_ssm=2)
    with torch.no_grad():
        layer.A_real[0, 0] = math.log(1e-3)  # a slow mode, |λ̄| near 1
    u = torch.randn(2, L, H)
    y = layer(u)
    assert y.shape == u.shape
    assert rel_err(y, recurrence_output(layer, u)) <= 1e-4


def test_scans_agree_on_odd_lengths_and_chunks():
    log_lam = torch.complex(-torch.rand(5, dtype=torch.float64) * 0.1, torch.randn(5, dtype=torch.float64))
    b = torch.randn(5, 3, 777, dtype=torch.complex128)
    ref = diagonal_scan(log_lam, b, "sequential")
    for name in SCANS:
        for reverse in (False, True):
            x = diagonal_scan(log_lam, b, name, reverse=reverse, chunk_size=10)
            r = diagonal_scan(log_lam, b, "sequential", reverse=reverse)
            assert torch.allclose(x, r, atol=1e-10), (name, reverse)
    for T in (1, 2, 7, 64, 1000):
        assert torch.allclose(chunked_scan(log_lam, b, T), ref, atol=1e-10)


@pytest.mark.parametrize("cls", [S5, S4D])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_outputs_real_causal_and_bidirectional(cls, bidirectional):
    layer = cls(H, 16, bidirectional=bidirectional)
    u = torch.randn(1, 200, H)
    y = layer(u)
    assert not y.is_complex() and torch.isfinite(y).all()
    u2 = u.clone()
    u2[:, 120] += 1.0
    dy = (layer(u2) - y).abs().amax(-1)[0]
    assert dy[120:].max() > 1e-3
    if bidirectional:
        assert dy[:120].max() > 1e-6  # sees the future
    else:  # causal: the past is untouched (S4D's FFT convolution: up to float32 round-off)
        assert dy[:120].max() <= 1e-6 * dy[120:].max()


@pytest.mark.parametrize("cls", [S5, S4D])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_state_mask_equals_removed_state(cls, bidirectional):
    layer = cls(H, 16, bidirectional=bidirectional)
    u = torch.randn(2, 300, H)
    i = 3
    layer.state_mask[i] = False
    y = layer(u)
    keep = torch.ones(layer.n_states, dtype=torch.bool)
    keep[i] = False
    assert rel_err(y, recurrence_output(layer, u, keep=keep)) <= 1e-5
    # ... and the same as the layer with the state physically removed
    compact = layer.compact()
    assert compact.n_active == layer.n_states - 1 or cls is S4D
    assert torch.allclose(compact(u), y, atol=1e-5, rtol=1e-5)
    full = recurrence_output(layer, u, keep=torch.ones_like(keep))
    assert rel_err(y, full) > 1e-4  # the masked state did contribute before


def test_compact_shrinks_s5_and_s4d():
    s5 = S5(H, 32)
    s5.state_mask[::2] = False
    c = s5.compact()
    assert c.n_states == 8 and c.B.shape[0] == 8 and c.d_state == 16
    s4d = S4D(H, 8)
    mask = s4d.state_mask.view(H, 4)
    mask[:, 1:] = False
    mask[0, 2] = True  # channel 0 keeps two modes, the rest one: width 2
    c = s4d.compact()
    assert c.n_modes == 2 and c.n_states == 2 * H and c.n_active == H + 1
    u = torch.randn(1, 64, H)
    assert torch.allclose(c(u), s4d(u), atol=1e-5)


@pytest.mark.parametrize("cls", [S5, S4D])
def test_step_rescale_on_subsampled_smooth_input(cls):
    layer = cls(4, 16, dt_min=0.01, dt_max=0.1)
    t = torch.arange(4096) / 4096
    freqs = torch.tensor([1.0, 2.0, 3.0, 5.0])
    u = torch.sin(2 * math.pi * freqs * t[:, None])[None]  # [1, 4096, 4], smooth
    y_full = layer(u)[:, ::2]
    y_half = layer(u[:, ::2], step_rescale=2.0)
    y_wrong = layer(u[:, ::2])
    err = rel_err(y_half, y_full.double())
    assert err < 0.02
    assert rel_err(y_wrong, y_full.double()) > 5 * err  # without rescaling the timescales are off
    assert layer.step_rescale == 1.0  # the per-call override does not stick


def test_autocast_keeps_float32_recurrence():
    layer = S5(H, 16)
    u = torch.randn(2, 64, H)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(u.bfloat16())
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), layer(u), atol=0.1)


def test_hippo_n_eigenvalues_and_projection():
    lam, V = legs_normal_eig(8)
    assert torch.allclose(lam.real, torch.full((4,), -0.5, dtype=torch.float64))
    assert torch.allclose(lam.imag, torch.tensor([-19.86, -5.35, -1.96, -0.43], dtype=torch.float64), atol=0.01)
    assert torch.allclose(V.conj().T @ V, torch.eye(4, dtype=torch.complex128), atol=1e-10)
    Lam, Vb, Vinv = block_diag_hippo_n(32, 4)
    assert Lam.shape == (16,) and Vb.shape == (32, 16) and Vinv.shape == (16, 32)
    with pytest.raises(ValueError, match="blocks"):
        block_diag_hippo_n(30, 4)


def test_s4d_inits():
    A, B = s4d_init("lin", 8)
    assert torch.allclose(A, torch.tensor([-0.5 - 1j * math.pi * n for n in range(4)], dtype=torch.complex128))
    A, _ = s4d_init("inv", 8)
    assert torch.allclose(A.imag, -(8 / math.pi) * (8 / (2 * torch.arange(4.0, dtype=torch.float64) + 1) - 1))
    A, B = s4d_init("legs", 8)
    assert (A.imag < 0).all() and (B.imag.abs() <= 2).all()
    layer = S4D(4, 8, init="lin")
    assert torch.allclose(layer.A_imag[0], torch.pi * torch.arange(4.0))
    assert torch.allclose(-torch.exp(layer.A_real), torch.full_like(layer.A_real, -0.5))


def test_lecun_normal_std():
    w = lecun_normal_(torch.empty(400, 400), fan_in=400)
    assert abs(w.std().item() - 0.05) < 0.002 and w.abs().max() <= 2 * 0.05 / 0.8796 + 1e-6


def test_s5_init_shapes_and_dt_range():
    layer = S5(16, 64, blocks=4, bidirectional=True, C_init="complex_normal")
    assert layer.n_states == 32 and layer.B.shape == (32, 16, 2) and layer.C.shape == (2, 16, 32, 2)
    dt = torch.exp(layer.log_step)
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    lam, B, C = layer.discretized_system()
    assert lam.shape == (32,) and B.shape == (32, 16) and C.shape == (2, 16, 32)
    assert (lam.abs() < 1).all()


def test_s4d_protocol_is_block_diagonal():
    layer = S4D(4, 6, bidirectional=True)
    lam, B, C = layer.discretized_system()
    assert lam.shape == (12,) and B.shape == (12, 4) and C.shape == (2, 4, 12)
    assert ((B != 0).sum(1) == 1).all()  # one nonzero per row: state (h, n) feeds channel h only
    assert ((C[0] != 0).sum(0) == 1).all()


def test_clip_eigs_bounds_real_part():
    layer = S5(4, 8, clip_eigs=True)
    with torch.no_grad():
        layer.Lambda_re.fill_(0.3)  # unstable unless clipped
    lam, _, _ = layer.discretized_system()
    assert (lam.abs() < 1).all()


@pytest.mark.parametrize("layer", ["s5", "s4d"])
@pytest.mark.parametrize("activation", ["gelu", "full_glu", "half_glu1", "half_glu2", "glu"])
def test_gradients_reach_every_parameter(layer, activation):
    model = SequenceModel(5, d_input=3, layer=layer, d_model=8, n_layers=2, ssm=dict(d_state=8, bidirectional=True),
                          activation=activation, dropout=0.1, final_norm=True)
    x, lengths = torch.randn(4, 33, 3), torch.tensor([33, 20, 5, 1])
    model(x, lengths).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_padding_does_not_change_valid_outputs():
    model = SequenceModel(3, vocab_size=11, layer="s5", d_model=8, n_layers=2, norm="layer",
                          ssm=dict(d_state=8, bidirectional=True)).eval()
    x = torch.randint(0, 11, (1, 20))
    short = model(x, torch.tensor([20]))
    padded = model(torch.cat([x, torch.randint(0, 11, (1, 13))], 1), torch.tensor([20]))
    assert torch.allclose(short, padded, atol=1e-5)


def test_retrieval_head_and_pooling_modes():
    model = SequenceModel(2, vocab_size=7, d_model=8, n_layers=1, ssm=dict(d_state=4), retrieval=True,
                          pooling="last")
    out = model(torch.randint(0, 7, (3, 2, 10)), torch.tensor([[10, 4], [1, 2], [7, 7]]))
    assert out.shape == (3, 2)
    with pytest.raises(ValueError, match="retrieval"):
        model(torch.randint(0, 7, (3, 10)))


def test_config_rebuilds_same_shapes():
    model = SequenceModel(4, d_input=2, d_model=8, n_layers=2, ssm=dict(d_state=16, blocks=2))
    model.blocks[0].ssm.state_mask[:3] = False
    model.blocks[0].ssm = model.blocks[0].ssm.compact()
    clone = SequenceModel(**model.config())
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 12, 2)
    model.eval(), clone.eval()
    assert torch.allclose(clone(x), model(x))


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="scan"):
        S5(4, 8, scan="magic")
    with pytest.raises(ValueError, match="discretization"):
        S4D(4, 8, discretization="euler")
    with pytest.raises(ValueError, match="n_ssm"):
        S4D(6, 8, n_ssm=4)
    with pytest.raises(ValueError, match="exactly one"):
        SequenceModel(2, d_input=1, vocab_size=3)
    with pytest.raises(ValueError, match=r"\[batch, length, 4\]"):
        S5(4, 8)(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="lengths"):
        SequenceModel(2, d_input=1, d_model=4, n_layers=1, ssm=dict(d_state=4))(torch.randn(1, 5, 1), torch.tensor([9]))
