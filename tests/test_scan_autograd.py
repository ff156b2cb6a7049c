"""The custom-backward recurrence (ssmlit.models.scan_autograd): gradients against gradcheck and
against autograd through an independent float64 sequential S5, memory held between forward and
backward, engine selection, and the bilinear float32 stress case."""

import math

import pytest
import torch
from torch.autograd import gradcheck

from ssmlit.models import S4D, S5
from ssmlit.models.scan_autograd import (
    AUTO_FALLBACK,
    ENGINES,
    diagonal_recurrence,
    resolve_engine,
    scan_inplace_,
    ssm_core,
)

from reference import recurrence_output, rel_err

PYTORCH_ENGINES = sorted(e for e in ENGINES if e != "triton")


def _log_lam(P: int, dtype=torch.float64) -> torch.Tensor:
    return torch.complex(-torch.rand(P, dtype=dtype) * 0.3 - 1e-3, 2 * torch.randn(P, dtype=dtype))


def _loop(log_lam: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
    """x_t = λ̄ x_{t∓1} + b_t by a Python loop, b: [B, L, P]."""
    lam, x, out = torch.exp(log_lam), torch.zeros_like(b[:, 0]), torch.empty_like(b)
    for t in (range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])):
        x = lam * x + b[:, t]
        out[:, t] = x
    return out


@pytest.mark.parametrize("L", [1, 2, 8, 9, 10, 63, 64, 65, 257, 1000])
@pytest.mark.parametrize("reverse", [False, True])
def test_lean_scan_in_place_matches_loop(L, reverse):
    torch.manual_seed(L)
    log_lam = _log_lam(5)
    buf = torch.randn(3, L, 2, 5, dtype=torch.complex128)  # scan one direction of a [B, L, d, P] buffer
    ref = _loop(log_lam, buf[:, :, 1].clone(), reverse)
    other = buf[:, :, 0].clone()
    scan_inplace_(buf[:, :, 1], log_lam, reverse)
    assert torch.allclose(buf[:, :, 1], ref, rtol=1e-11, atol=1e-11)
    assert torch.equal(buf[:, :, 0], other)  # the strided view was scanned in place, nothing else


@pytest.mark.parametrize("engine", PYTORCH_ENGINES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrence_gradcheck(engine, bidirectional):
    torch.manual_seed(0)
    log_lam = _log_lam(3).requires_grad_()
    b = torch.randn(2, 23, 3, dtype=torch.complex128, requires_grad=True)
    x = diagonal_recurrence(log_lam, b, bidirectional, engine, chunk_size=5)
    assert x.shape == (2, 23, 2 if bidirectional else 1, 3)
    assert torch.allclose(x[:, :, 0], _loop(log_lam.detach(), b.detach(), False))
    if bidirectional:
        assert torch.allclose(x[:, :, 1], _loop(log_lam.detach(), b.detach(), True))
    assert gradcheck(lambda ll, bb: diagonal_recurrence(ll, bb, bidirectional, engine, chunk_size=5), (log_lam, b),
                     fast_mode=True)


def _core_inputs(B=2, L=19, H=3, P=4, d=2, dtype=torch.float64):
    torch.manual_seed(1)
    u = torch.randn(B, L, H, dtype=dtype, requires_grad=True)
    W_in = torch.randn(H, 2 * P, dtype=dtype, requires_grad=True)
    log_lam = _log_lam(P, dtype).requires_grad_()
    W_out = torch.randn(d, 2 * P, H, dtype=dtype, requires_grad=True)
    return u, W_in, log_lam, W_out


def _core_reference(u, W_in, log_lam, W_out):
    """ssm_core written with complex tensors and the Python loop (plain autograd)."""
    b = torch.view_as_complex((u @ W_in).reshape(*u.shape[:2], -1, 2).contiguous())
    y = 0
    for d in range(W_out.shape[0]):
        x = _loop(log_lam, b, reverse=d == 1)
        y = y + torch.view_as_real(x).reshape(*u.shape[:2], -1) @ W_out[d]
    return y


@pytest.mark.parametrize("engine", ["lean", "chunked"])
@pytest.mark.parametrize("d", [1, 2])
def test_core_gradcheck_and_reference(engine, d):
    inputs = _core_inputs(d=d)
    y = ssm_core(*inputs, engine=engine, chunk_size=4)
    ref = _core_reference(*inputs)
    assert torch.allclose(y, ref, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(y.square().sum(), inputs)
    ref_grads = torch.autograd.grad(ref.square().sum(), inputs)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-9, atol=1e-9)
    assert gradcheck(lambda *a: ssm_core(*a, engine=engine, chunk_size=4), inputs, fast_mode=True)


# -- the whole S5 layer against an independent float64 implementation --------------------------------
def _hard_s5(**kw) -> S5:
    torch.manual_seed(0)
    layer = S5(4, 16, blocks=2, **kw)
    with torch.no_grad():
        P = layer.n_states
        layer.Lambda_re[: P // 2] = -torch.logspace(-3, -1, P // 2)
        layer.Lambda_im[P // 2:] = torch.linspace(5, 40, P - P // 2)
        layer.log_step.copy_(torch.linspace(math.log(1e-2), math.log(0.5), P))
    return layer


def _reference_s5(layer: S5, u: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Float64 S5 straight from the paper's formulas (ZOH / bilinear, Python loop over time), with
    the unkept states deleted; returns the output and float64 leaf copies of the parameters."""
    p = {n: t.detach().double().clone().requires_grad_() for n, t in layer.named_parameters()}
    Lam = torch.complex(p["Lambda_re"], p["Lambda_im"])[keep]
    Delta = torch.exp(p["log_step"])[keep]
    Bt = torch.view_as_complex(p["B"])[keep]  # [n, H]
    C = torch.view_as_complex(p["C"])[:, :, keep]  # [d, H, n]
    if layer.discretization == "zoh":
        lam = torch.exp(Lam * Delta)
        B_bar = ((lam - 1) / Lam)[:, None] * Bt
    else:
        lam = (1 + Lam * Delta / 2) / (1 - Lam * Delta / 2)
        B_bar = (Delta / (1 - Lam * Delta / 2))[:, None] * Bt
    uu = u.double().requires_grad_()
    drive = uu.to(torch.complex128) @ B_bar.T  # [B, L, n]
    y = uu * p["D"]
    for d in range(C.shape[0]):
        x, xs = torch.zeros_like(drive[:, 0]), [None] * u.shape[1]
        for t in (range(u.shape[1] - 1, -1, -1) if d == 1 else range(u.shape[1])):
            x = lam * x + drive[:, t]
            xs[t] = x
        y = y + 2 * (torch.stack(xs, 1) @ C[d].T).real
    p["u"] = uu
    return y, p


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("engine", ["auto", "chunked"])
def test_layer_gradients_match_float64_autograd(discretization, bidirectional, engine):
    layer = _hard_s5(discretization=discretization, bidirectional=bidirectional, scan=engine, chunk_size=8)
    layer.state_mask[[1, 6]] = False
    keep = layer.state_mask.clone()
    u = torch.randn(2, 60, 4)
    ug = u.clone().requires_grad_()
    w = torch.randn(2, 60, 4)  # a loss that weighs every output differently
    (layer(ug) * w).sum().backward()
    y_ref, ref = _reference_s5(layer, u, keep)
    (y_ref * w.double()).sum().backward()
    assert rel_err(ug.grad, ref["u"].grad) < 1e-5
    for name, prm in layer.named_parameters():
        g, r = prm.grad, ref[name].grad
        if name in ("Lambda_re", "Lambda_im", "log_step", "B"):
            assert torch.all(g[~keep] == 0), name  # masked states get exactly no gradient
            g, r = g[keep], r[keep]
        elif name == "C":
            assert torch.all(g[:, :, ~keep] == 0)
            g, r = g[:, :, keep], r[:, :, keep]
        assert rel_err(g, r) < 1e-4, (name, rel_err(g, r))


def test_compacted_layer_has_the_masked_layers_gradients():
    layer = _hard_s5(bidirectional=True)
    layer.state_mask[[0, 3, 7]] = False
    small = layer.compact()
    keep = layer.state_mask.nonzero().squeeze(1)
    u = torch.randn(2, 50, 4)
    for m in (layer, small):
        m(u).square().sum().backward()
    for name in ("Lambda_re", "Lambda_im", "log_step", "B"):
        assert torch.allclose(getattr(small, name).grad, getattr(layer, name).grad[keep], rtol=1e-4, atol=1e-6)
    assert torch.allclose(small.C.grad, layer.C.grad[:, :, keep], rtol=1e-4, atol=1e-6)
    assert torch.allclose(small.D.grad, layer.D.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_saves_only_its_input_for_backward(bidirectional):
    """Between forward and backward the layer holds no [B, L, P]-sized state: only u (and
    parameter-sized tensors), which is what makes the backward memory-lean."""
    layer = S5(8, 64, bidirectional=bidirectional)  # P = 32 stored states
    u = torch.randn(4, 256, 8, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(u)
    u_bytes = u.numel() * u.element_size()
    state_bytes = 4 * 256 * 32 * 8  # one complex64 [B, L, P]
    big = [s for s in saved if s > state_bytes // 8]
    assert sum(big) <= 2 * u_bytes, big  # u for the core and for the skip D⊙u, nothing else
    y.sum().backward()
    assert u.grad is not None


# -- engine selection and validation ---------------------------------------------------------------------
def test_auto_engine_selection(monkeypatch):
    import ssmlit.models.scan_autograd as sa

    assert resolve_engine("auto", torch.device("cpu")) == "lean"
    assert resolve_engine("fft", torch.device("cuda")) == "fft"
    monkeypatch.setattr(sa, "triton_available", lambda: True)
    assert resolve_engine("auto", torch.device("cuda")) == "triton"
    monkeypatch.setattr(sa, "triton_available", lambda: False)
    assert resolve_engine("auto", torch.device("cuda")) == AUTO_FALLBACK


def test_scan_choice_is_validated(monkeypatch):
    import ssmlit.models.s5 as s5mod

    with pytest.raises(ValueError, match=r"unknown scan algorithm 'lin'.*'auto', 'lean', 'triton'"):
        S5(4, 8, scan="lin")
    monkeypatch.setattr(s5mod, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="scan='triton' needs the triton package"):
        S5(4, 8, scan="triton")
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 2, got 0"):
        S5(4, 8, chunk_size=0)
    with pytest.raises(ValueError, match="unknown scan engine 'x'"):
        diagonal_recurrence(torch.zeros(2, dtype=torch.complex64), torch.zeros(1, 3, 2, dtype=torch.complex64),
                            engine="x")


# -- float32 accuracy of the bilinear discretization ----------------------------------------------------
def _bilinear_stress_s5(scan: str) -> S5:
    """Spread Re Λ (1e-4 … 1), Δ up to 1, oscillations up to 40: |λ̄| near 1 with large phases."""
    torch.manual_seed(0)
    layer = S5(8, 32, blocks=2, discretization="bilinear", scan=scan)
    with torch.no_grad():
        P = layer.n_states
        layer.Lambda_re.copy_(-torch.logspace(-4, 0, P))
        layer.Lambda_im.copy_(torch.linspace(0.0, 40, P)[torch.randperm(P)])
        layer.log_step.copy_(torch.linspace(math.log(1e-3), 0.0, P)[torch.randperm(P)])
    return layer


@pytest.mark.parametrize("scan", ["lean", "chunked", "assoc"])
def test_s5_bilinear_stress_matches_float64(scan):
    # log λ̄ as a difference of two logarithms gave 1.1e-4 – 1.2e-4 here; 2·atanh(ΔΛ/2) 8.8e-5 – 9.5e-5.
    layer = _bilinear_stress_s5(scan)
    torch.manual_seed(1)
    u = torch.randn(2, 4096, 8)
    assert rel_err(layer(u), recurrence_output(layer, u)) <= 1.0e-4


def test_s4d_bilinear_stress_matches_float64():
    # Difference of logarithms: 2.4e-4; 2·atanh: 1.5e-4.
    torch.manual_seed(0)
    layer = S4D(8, 32, discretization="bilinear")
    with torch.no_grad():
        layer.log_dt.copy_(torch.linspace(math.log(1e-3), 0.0, 8))
        layer.A_real[:, :4] = math.log(1e-4)
    torch.manual_seed(1)
    u = torch.randn(2, 4096, 8)
    assert rel_err(layer(u), recurrence_output(layer, u)) <= 2.0e-4
