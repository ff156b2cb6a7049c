"""The Triton scan kernels on a CPU through Triton's interpreter (TRITON_INTERPRET=1): the same
kernels that run on CUDA, checked against Python loops and the lean PyTorch engine. Tiny shapes and
tiles: the interpreter executes each program in NumPy. On a GPU, benchmarks/gpu_check.py runs them
compiled.

Not collected by the main suite: tests/test_scan_triton.py runs this file in a fresh pytest process
with TRITON_INTERPRET=1, because the interpreter has to be chosen before triton is first imported
and other test modules (Lightning, through torch) import triton at collection.
"""

import os
import sys

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("CUDA present: the compiled kernels are checked by benchmarks/gpu_check.py", allow_module_level=True)
# The interpreter must be chosen before triton is first imported (its own library functions are
# decorated at import); nothing else in a CPU test process imports triton.
if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton was imported without TRITON_INTERPRET=1", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from ssmlit.models import S5
from ssmlit.models.scan_autograd import ssm_core

from reference import recurrence_output, rel_err

TINY = {"block_t": 8, "block_p": 4, "num_warps": 1, "min_programs": 64, "min_segment": 12}


@pytest.fixture(scope="module")
def st():
    """ssmlit.models.scan_triton (interpreted) with tiles small enough for the interpreter."""
    from ssmlit.models import scan_triton

    assert scan_triton.INTERPRET
    saved = dict(scan_triton.CONFIG)
    scan_triton.CONFIG.update(TINY)
    yield scan_triton
    scan_triton.CONFIG.update(saved)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error that keeps imaginary parts (reference.rel_err is for real outputs)."""
    b = b.detach().to(torch.complex128)
    return float((a.detach().to(torch.complex128) - b).norm() / b.norm())


def _loop(log_lam, b, reverse):
    lam, x, out = torch.exp(log_lam), torch.zeros_like(b[:, 0]), torch.empty_like(b)
    for t in (range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])):
        x = lam * x + b[:, t]
        out[:, t] = x
    return out


@pytest.mark.parametrize("L", [5, 37])  # one segment; several segments with ragged tiles
@pytest.mark.parametrize("reverse", [False, True])
def test_kernel_matches_loop(st, L, reverse):
    torch.manual_seed(L)
    P = 6  # not a multiple of the state block: masked lanes
    log_lam = torch.complex(-torch.rand(P, dtype=torch.float64) * 0.2, torch.randn(P, dtype=torch.float64))
    b = torch.randn(2, L, P, dtype=torch.complex128)
    xs = torch.randn(2, L, P, dtype=torch.complex128)
    assert st._segments(2, L, P)[0] == (1 if L == 5 else 3)
    ref = _loop(log_lam, b, reverse)
    # Σ h_t·conj(xs) at the step after t in the scan's order (t − 1 when reverse).
    ref_glam = (ref[:, 1:] * xs[:, :-1].conj()).sum((0, 1)) if reverse else \
        (ref[:, :-1] * xs[:, 1:].conj()).sum((0, 1))
    # Out of place, with the ∂ℒ/∂λ̄̄ sum.
    dst = torch.zeros(2, L, P, dtype=torch.complex64)
    glam = st.scan_direction(b.to(torch.complex64), dst, log_lam, reverse, xs=xs.to(torch.complex64))
    assert _rel(dst, ref) < 1e-6
    assert _rel(glam, ref_glam) < 1e-6
    # In place in a strided [B, L, d, P] buffer, and accumulating into another buffer.
    buf = torch.zeros(2, L, 2, P, dtype=torch.complex64)
    buf[:, :, 1] = b.to(torch.complex64)
    st.TritonEngine.scan_(buf[:, :, 1], log_lam, reverse)
    assert _rel(buf[:, :, 1], ref) < 1e-6 and torch.all(buf[:, :, 0] == 0)
    acc = torch.ones(2, L, P, dtype=torch.complex64)
    st.TritonEngine.scan_(b.to(torch.complex64), log_lam, reverse, into=acc)
    assert _rel(acc, ref + 1) < 1e-6


@pytest.mark.parametrize("d", [1, 2])
def test_triton_core_matches_lean_engine(st, d):
    torch.manual_seed(d)
    B, L, H, P = 2, 29, 3, 5
    u = torch.randn(B, L, H, requires_grad=True)
    W_in = torch.randn(H, 2 * P, requires_grad=True)
    log_lam = torch.complex(-torch.rand(P) * 0.2, torch.randn(P)).requires_grad_()
    W_out = torch.randn(d, 2 * P, H, requires_grad=True)
    inputs = (u, W_in, log_lam, W_out)
    w = torch.randn(B, L, H)
    outs = {}
    for engine in ("triton", "lean"):
        y = ssm_core(*inputs, engine=engine)
        outs[engine] = (y, *torch.autograd.grad((y * w).sum(), inputs))
    for a, b in zip(outs["triton"], outs["lean"]):
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("bidirectional", [False, True])
def test_triton_s5_layer_matches_float64_recurrence(st, bidirectional):
    torch.manual_seed(0)
    layer = S5(4, 12, bidirectional=bidirectional, scan="triton")
    layer.state_mask[2] = False
    u = torch.randn(2, 40, 4)
    assert rel_err(layer(u), recurrence_output(layer, u)) < 1e-5


def test_triton_off_cuda_without_interpreter_is_refused(st, monkeypatch):
    monkeypatch.setattr(st, "INTERPRET", False)
    with pytest.raises(ValueError, match="scan='triton' runs on CUDA tensors, got a cpu input"):
        S5(4, 8, scan="triton")(torch.randn(1, 5, 4))
