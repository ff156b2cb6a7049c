"""The diagonal recurrence as one autograd node with a hand-written, memory-lean backward.

Forward, for each direction d (d = 0 forward in time, d = 1 reverse, the S5 bidirectional convention):

    x⁰_t = λ̄ ⊙ x⁰_{t−1} + b_t,        x¹_t = λ̄ ⊙ x¹_{t+1} + b_t,        (x_{−1} = x_L = 0)

Backward (PyTorch's complex convention: a gradient is the conjugate Wirtinger derivative ∂ℒ/∂z̄).
With gx^d the incoming gradient of x^d, the total gradient g^d of x^d_t obeys the *transposed*
recurrence, i.e. a scan in the opposite time direction with conj(λ̄):

    g⁰_t = gx⁰_t + conj(λ̄) ⊙ g⁰_{t+1},     g¹_t = gx¹_t + conj(λ̄) ⊙ g¹_{t−1},
    ∂ℒ/∂b̄_t = g⁰_t + g¹_t,
    ∂ℒ/∂λ̄̄ = Σ_{batch, t} g⁰_t ⊙ conj(x⁰_{t−1}) + g¹_t ⊙ conj(x¹_{t+1}),
    ∂ℒ/∂(log λ̄)‾ = conj(λ̄) ⊙ ∂ℒ/∂λ̄̄            (λ̄ = exp(log λ̄) is holomorphic).

So the backward needs the states x and no intermediate of the forward algorithm: autograd through
the ``chunked`` scan kept its decay matrices and chunk partials, 438 MiB for one Path-X layer where
u, x and their gradients are ~60 MiB. :func:`diagonal_recurrence` saves x; :func:`ssm_core` (the S5
layer: B̄u, scans, readout) saves only its inputs and recomputes x in backward, one extra forward
scan, so nothing of size [B, L, P] is held between forward and backward.

Layout: time-major, state innermost — ``b: complex [B, L, P]``, ``x: complex [B, L, d, P]`` (or one
contiguous [B, L, P] per direction inside :func:`ssm_core`) — the
layout the B̄u and C matmuls produce and consume without transposes, and the one a GPU kernel reads
coalesced (consecutive states are consecutive addresses at every time step).

Engines (``ENGINES``) compute the two scans with no autograd involvement:

- ``lean``: PyTorch, in place in the output buffer (no full-size temporaries): T ≈ √L steps of a
  strided in-chunk recurrence, the same algorithm recursively over the chunk boundaries (with
  λ̄^T), one broadcast fix-up λ̄^{t+1}·carry. O(P·L) work, ~2√L small ops per scan.
- ``triton``: CUDA kernels (``ssmlit.models.scan_triton``), real and imaginary parts separate.
- ``chunked``, ``assoc``, ``fft``, ``sequential``: the algorithms of ``ssmlit.models.scan``, run
  state-major ([P, B, L]) through a transposed copy; only their results are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from .scan import DEFAULT_CHUNK, diagonal_scan

# Below this length a plain in-place loop over time is cheaper than splitting into chunks.
_SEQUENTIAL_BELOW = 8
# Elements per block of the ∂ℒ/∂λ̄ reduction (bounds the product temporary).
_REDUCE_BLOCK = 1 << 18


# -- the lean PyTorch engine ----------------------------------------------------------------------------
def _chunk_size(L: int) -> int:
    return max(2, math.isqrt(L - 1) + 1)


def _powers(log_lam: torch.Tensor, T: int) -> torch.Tensor:
    """λ̄^{k+1} for k = 0 … T−1 from log λ̄: complex [T, P]."""
    k = torch.arange(1, T + 1, device=log_lam.device, dtype=log_lam.real.dtype)
    return torch.exp(k[:, None] * log_lam[None, :])


def scan_inplace_(h: torch.Tensor, log_lam: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Overwrite ``h`` (holding b) with the scan h_t = λ̄ h_{t∓1} + b_t along dim 1, in place.

    Args:
        h: complex [B, L, P], any strides (e.g. one direction of a [B, L, d, P] buffer).
        log_lam: complex [P], log λ̄.
        reverse: run the recurrence from the end (h_t = λ̄ h_{t+1} + b_t).

    Returns:
        ``h`` itself.
    """
    L = h.shape[1]
    lam = torch.exp(log_lam)
    if L <= _SEQUENTIAL_BELOW:
        steps = range(L - 2, -1, -1) if reverse else range(1, L)
        for t in steps:
            h[:, t].addcmul_(h[:, t + 1] if reverse else h[:, t - 1], lam)
        return h
    T = _chunk_size(L)
    n = -(-L // T)  # chunks; all but the last are full
    # 1. The recurrence inside every chunk at once: position t of all chunks is one strided slice.
    steps = range(T - 2, -1, -1) if reverse else range(1, T)
    for t in steps:
        cur = h[:, t::T]
        if reverse:
            nxt = h[:, t + 1::T]  # the last (partial) chunk may lack position t + 1
            cur[:, : nxt.shape[1]].addcmul_(nxt, lam)
        else:
            cur.addcmul_(h[:, t - 1::T][:, : cur.shape[1]], lam)
    pw = _powers(log_lam, T)  # λ̄^{k+1}, k < T
    nf = L // T
    # 2. True states at chunk boundaries: the same recurrence over the n − 1 boundaries, with λ̄^T.
    if not reverse:
        carry = h[:, T - 1::T][:, : n - 1].clone()  # local ends of chunks 0 … n−2
        scan_inplace_(carry, log_lam * T)
        # 3. Chunk j ≥ 1, position t: += λ̄^{t+1}·(state at the end of chunk j−1).
        if nf > 1:
            h[:, T:nf * T].unflatten(1, (nf - 1, T)).addcmul_(carry[:, : nf - 1, None], pw)
        if nf < n:
            h[:, nf * T:].addcmul_(carry[:, nf - 1, None], pw[: L - nf * T])
    else:
        carry = h[:, T::T].clone()  # local starts of chunks 1 … n−1
        scan_inplace_(carry, log_lam * T, reverse=True)
        # Chunk j ≤ n−2 (full), position t: += λ̄^{T−t}·(state at the start of chunk j+1).
        h[:, : (n - 1) * T].unflatten(1, (n - 1, T)).addcmul_(carry[:, :, None], pw.flip(0))
    return h


def _lam_grad(h: torch.Tensor, xs: torch.Tensor, reverse: bool) -> torch.Tensor:
    """Σ_{batch, t} h_t ⊙ conj(xs_{t−1}) if ``reverse`` else h_t ⊙ conj(xs_{t+1}) (the state one step
    further along a scan in that order: ∂ℒ/∂λ̄̄ of the direction whose gradient h is), in time blocks so
    the product temporary stays small. h, xs: complex [B, L, P] → complex [P]."""
    B, L, P = h.shape
    h, xs = (h[:, 1:], xs[:, :-1]) if reverse else (h[:, :-1], xs[:, 1:])
    step = max(1, _REDUCE_BLOCK // max(1, B * P))
    out = torch.zeros(P, dtype=h.dtype, device=h.device)
    for t in range(0, L - 1, step):
        out += (h[:, t:t + step] * xs[:, t:t + step].conj()).sum((0, 1))
    return out


class LeanEngine:
    """The in-place PyTorch engine (any device).

    Every engine has one operation, ``scan_(h, log_lam, reverse, xs=None, into=None)``: scan the
    buffer ``h`` (complex [B, L, P], holding the input) in place; with ``xs`` also return the
    ∂ℒ/∂λ̄̄ sum of :func:`_lam_grad`; with ``into`` add the result into ``into`` instead (``h`` is then
    scratch).
    """

    @staticmethod
    def scan_(h: torch.Tensor, log_lam: torch.Tensor, reverse: bool, xs: torch.Tensor | None = None,
              into: torch.Tensor | None = None) -> torch.Tensor | None:
        scan_inplace_(h, log_lam, reverse)
        glam = _lam_grad(h, xs, reverse) if xs is not None else None
        if into is not None:
            into += h
        return glam


class StateMajorEngine(LeanEngine):
    """An algorithm of ``ssmlit.models.scan`` (state-major [P, M, L]) behind the same interface,
    through transposed copies."""

    def __init__(self, algorithm: str, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.algorithm, self.chunk_size = algorithm, chunk_size

    def scan_(self, h, log_lam, reverse, xs=None, into=None):
        x = diagonal_scan(log_lam, h.permute(2, 0, 1).contiguous(), self.algorithm, reverse, self.chunk_size)
        h.copy_(x.permute(1, 2, 0))
        del x
        glam = _lam_grad(h, xs, reverse) if xs is not None else None
        if into is not None:
            into += h
        return glam


def _triton_engine():
    from . import scan_triton  # imported on first use: triton is optional

    return scan_triton.TritonEngine


def triton_available() -> bool:
    """Whether the ``triton`` package imports (the kernels still need CUDA or TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


ENGINES: dict[str, Callable[[int], object]] = {
    "lean": lambda chunk: LeanEngine,
    "triton": lambda chunk: _triton_engine(),
    "chunked": lambda chunk: StateMajorEngine("chunked", chunk),
    "assoc": lambda chunk: StateMajorEngine("assoc"),
    "fft": lambda chunk: StateMajorEngine("fft"),
    "sequential": lambda chunk: StateMajorEngine("sequential"),
}
# What ``scan="auto"`` runs on each device type (benchmarks/layer_speed.py decides these).
AUTO = {"cuda": "triton", "cpu": "lean"}
AUTO_FALLBACK = "lean"


def resolve_engine(name: str, device: torch.device) -> str:
    """The engine ``name`` stands for on ``device`` (``auto`` → ``AUTO``; triton needs CUDA or the
    interpreter, else the PyTorch engine)."""
    if name != "auto":
        return name
    choice = AUTO.get(device.type, AUTO_FALLBACK)
    if choice == "triton" and not (triton_available() and device.type == "cuda"):
        return AUTO_FALLBACK
    return choice


def _as_complex(v: torch.Tensor, B: int, L: int) -> torch.Tensor:
    """complex [B, L, P] view of a real [B·L, 2P] matmul result with interleaved (re, im) columns."""
    return torch.view_as_complex(v.view(B, L, -1, 2))


def _as_real(z: torch.Tensor) -> torch.Tensor:
    """real [B·L, 2P] view of a contiguous complex [B, L, P]."""
    return torch.view_as_real(z).view(z.shape[0] * z.shape[1], -1)


class _DiagonalRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_lam, b, n_dir, engine):
        x = b.new_empty(*b.shape[:2], n_dir, b.shape[2])
        for d in range(n_dir):
            x[:, :, d].copy_(b)
            engine.scan_(x[:, :, d], log_lam, reverse=d == 1)
        ctx.engine = engine
        ctx.save_for_backward(log_lam, x)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, gx):
        log_lam, x = ctx.saved_tensors
        cl, eng = log_lam.conj(), ctx.engine
        gb = gx[:, :, 0].clone(memory_format=torch.contiguous_format)
        glam = eng.scan_(gb, cl, reverse=True, xs=x[:, :, 0])
        if x.shape[2] == 2:
            g1 = gx[:, :, 1].clone(memory_format=torch.contiguous_format)
            glam = glam + eng.scan_(g1, cl, reverse=False, xs=x[:, :, 1], into=gb)
        return glam * torch.exp(log_lam).conj(), gb, None, None


class _SSMCore(torch.autograd.Function):
    """y = Σ_d Re-readout of the scans of b = B̄u, as one node that saves only its inputs and
    recomputes b and the states in backward (one extra forward scan; no [B, L, d, P] activation is
    held between forward and backward)."""

    @staticmethod
    def forward(ctx, u, W_in, log_lam, W_out, engine):
        B, L, H = u.shape
        n_dir = W_out.shape[0]
        ctx.engine = engine
        ctx.save_for_backward(u, W_in, log_lam, W_out)
        y = None
        for x in _states(u, W_in, log_lam, n_dir, engine):
            y = _as_real(x) @ W_out[0] if y is None else y.addmm_(_as_real(x), W_out[1])
        return y.view(B, L, H)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        u, W_in, log_lam, W_out = ctx.saved_tensors
        eng = ctx.engine
        B, L, H = u.shape
        n_dir = W_out.shape[0]
        gy = gy.reshape(B * L, H)
        cl = log_lam.conj()
        x0, *x1 = _states(u, W_in, log_lam, n_dir, eng)
        gW_out = torch.stack([_as_real(x).T @ gy for x in (x0, *x1)])
        # ∂ℒ/∂x^d = gy·W_out[d]ᵀ, then the transposed scan; g⁰ ends as ∂ℒ/∂b̄ = g⁰ + g¹.
        gb = _as_complex(gy @ W_out[0].T, B, L)
        glam = eng.scan_(gb, cl, reverse=True, xs=x0)
        if x1:
            g1 = _as_complex(torch.matmul(gy, W_out[1].T, out=_as_real(x0)), B, L)  # x⁰ is done with
            glam = glam + eng.scan_(g1, cl, reverse=False, xs=x1[0], into=gb)
        del x0, x1
        gb_r = _as_real(gb)
        gu = (gb_r @ W_in.T).view(B, L, H) if ctx.needs_input_grad[0] else None
        gW_in = u.reshape(B * L, H).T @ gb_r
        return gu, gW_in, glam * torch.exp(log_lam).conj(), gW_out, None


def _states(u, W_in, log_lam, n_dir, engine):
    """[x⁰] or [x⁰, x¹], each complex [B, L, P] contiguous; x¹ reuses the buffer of b."""
    B, L, H = u.shape
    b = _as_complex(u.reshape(B * L, H) @ W_in, B, L)
    x0 = b.clone() if n_dir == 2 else b
    engine.scan_(x0, log_lam, reverse=False)
    if n_dir == 1:
        return [x0]
    engine.scan_(b, log_lam, reverse=True)
    return [x0, b]


def _engine(engine: str, device: torch.device, chunk_size: int):
    name = resolve_engine(engine, device)
    if name not in ENGINES:
        raise ValueError(f"unknown scan engine {engine!r}; choose one of {['auto', *ENGINES]}")
    return ENGINES[name](chunk_size)


def ssm_core(
    u: torch.Tensor, W_in: torch.Tensor, log_lam: torch.Tensor, W_out: torch.Tensor,
    engine: str = "auto", chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """The S5 layer without its skip: y_t = Σ_d 2·Re(C[d] x^d_t) with x^d the forward (d = 0) and
    reverse (d = 1) scans of b_t = B̄u_t, fused into one autograd node that keeps only its inputs.

    The complex matrices enter as real ones so that every product is one real matmul on interleaved
    (re, im) storage, with no complex temporary:

    Args:
        u: real [B, L, H].
        W_in: real [H, 2P], columns (2p, 2p+1) = (Re B̄[p], Im B̄[p]); b = u·W_in viewed as complex.
        log_lam: complex [P], log λ̄ (complex64 with float32 u, complex128 with float64).
        W_out: real [d, 2P, H], rows (2p, 2p+1) of W_out[d] = (2·Re C[d][:, p], −2·Im C[d][:, p]).
        engine: ``auto`` or one of ``ENGINES``.
        chunk_size: chunk length of the ``chunked`` engine.

    Returns:
        y: real [B, L, H].
    """
    P = log_lam.shape[0]
    if u.dim() != 3 or W_in.shape != (u.shape[2], 2 * P) or W_out.dim() != 3 or W_out.shape[1:] != (2 * P, u.shape[2]):
        raise ValueError(f"ssm_core needs u [B, L, H], W_in [H, 2P], W_out [d, 2P, H]; got {tuple(u.shape)}, "
                         f"{tuple(W_in.shape)}, {tuple(W_out.shape)} with P = {P}")
    return _SSMCore.apply(u.contiguous(), W_in, log_lam, W_out, _engine(engine, u.device, chunk_size))


def diagonal_recurrence(
    log_lam: torch.Tensor,
    b: torch.Tensor,
    bidirectional: bool = False,
    engine: str = "auto",
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """x^d for d = forward (and reverse, if ``bidirectional``) of x_t = λ̄ x_{t∓1} + b_t, as one
    autograd node whose backward is the transposed scan (see the module docstring).

    Args:
        log_lam: complex [P], log λ̄ (complex64 or complex128, same dtype as ``b``).
        b: complex [B, L, P], the driven input B̄u_t.
        bidirectional: also run the reverse-time recurrence (current step included).
        engine: ``auto`` or one of ``ENGINES``.
        chunk_size: chunk length of the ``chunked`` engine.

    Returns:
        x: complex [B, L, d, P], d = 2 if bidirectional else 1 (x[:, :, 1] the reverse direction).
    """
    if b.dim() != 3 or log_lam.shape != b.shape[-1:]:
        raise ValueError(f"diagonal_recurrence needs log_lam [P] and b [B, L, P], got {tuple(log_lam.shape)} "
                         f"and {tuple(b.shape)}")
    return _DiagonalRecurrence.apply(log_lam, b.contiguous(), 2 if bidirectional else 1,
                                     _engine(engine, b.device, chunk_size))
