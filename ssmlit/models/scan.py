"""Parallel algorithms for the diagonal linear recurrence x_k = λ̄ ⊙ x_{k−1} + b_k, x_{−1} = 0.

S5 (Smith et al., 2023, Sec. 3) runs this recurrence with ``jax.lax.associative_scan``. PyTorch has no
stable equivalent, so we provide several algorithms behind one signature and pick the fastest as
the default (see ``benchmarks/layer_speed.py`` and the README):

- ``chunked``: split time into chunks of T steps; inside a chunk the recurrence is a lower-triangular
  T×T matrix of decays λ̄^{t−s} applied as one batched matmul per state; the P-dimensional state is
  carried across chunks by the same algorithm applied recursively to the chunk ends (with λ̄^T).
  O(P·L·T) work in matmuls, O(log_T L) sequential depth, only non-negative powers of λ̄.
- ``assoc``: an even/odd recursive associative (parallel-prefix) scan: O(P·L) work, O(log L) depth.
- ``fft``: x = K ∗ b with K_k = λ̄^k, a causal convolution by complex FFT of size ≥ 2L.
  O(P·L log L) work; float32 FFT round-off is relative to the largest signal component.
- ``sequential``: the plain loop, O(L) kernel launches. Only a reference.

Every algorithm costs in proportion to the number of states P, so removing states (pruning by
compaction) buys proportional speed.

All functions take ``log_lam: complex [P]`` (log λ̄, so that λ̄^k = exp(k·log λ̄)) and
``b: complex [P, M, L]`` (M merges batch dimensions; state-major so every state's work is one
slice of a batched matmul) and return ``x: complex [P, M, L]``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 64


def sequential_scan(log_lam: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference loop over time (slow: one step per kernel launch)."""
    lam = torch.exp(log_lam)[:, None]
    x = torch.zeros_like(b[..., 0])
    out = []
    for k in range(b.shape[-1]):
        x = lam * x + b[..., k]
        out.append(x)
    return torch.stack(out, dim=-1)


def chunked_scan(log_lam: torch.Tensor, b: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Chunked scan: intra-chunk decay-matrix matmuls plus a recursive scan over chunk ends."""
    P, M, L = b.shape
    T = min(max(chunk, 2), L)  # T ≥ 2 so the recursion over chunk ends shrinks
    n = -(-L // T)
    if n * T != L:
        b = F.pad(b, (0, n * T - L))
    t = torch.arange(T, device=b.device)
    lag = t[:, None] - t[None, :]
    powers = torch.exp(t.to(log_lam.real.dtype)[None, :] * log_lam[:, None])  # λ̄^k, k < T: [P, T]
    # decay[p, t, s] = λ̄_p^{t−s} for s ≤ t, else 0: a Toeplitz gather of T powers (not T² exps).
    decay = powers[:, lag.clamp(min=0)] * (lag >= 0)
    local = torch.bmm(b.reshape(P, M * n, T), decay.transpose(1, 2)).view(P, M, n, T)
    if n == 1:
        return local.reshape(P, M, T)[..., :L]
    # State after each chunk: h_j = λ̄^T h_{j−1} + local_j[T−1]; the same recurrence, T× coarser.
    carry = chunked_scan(log_lam * T, local[..., -1], chunk)
    entering = F.pad(carry[..., :-1], (1, 0))  # state before chunk j (zero before the first)
    x = local + entering[..., None] * (powers * torch.exp(log_lam)[:, None])[:, None, None, :]  # λ̄^{t+1}
    return x.reshape(P, M, n * T)[..., :L]


def assoc_scan(log_lam: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Even/odd recursive parallel-prefix scan (the associative scan of S5, specialised to a
    time-invariant λ̄): pairs (x_{2k}, x_{2k+1}) collapse into one step of a scan with λ̄²."""
    L = b.shape[-1]
    if L == 1:
        return b
    if L % 2:
        b = F.pad(b, (0, 1))
    even, odd = b[..., 0::2], b[..., 1::2]
    lam = torch.exp(log_lam)[:, None, None]
    x_odd = assoc_scan(2 * log_lam, lam * even + odd)  # x_{2k+1} = λ̄² x_{2k−1} + (λ̄ b_{2k} + b_{2k+1})
    x_even = even + lam * F.pad(x_odd[..., :-1], (1, 0))  # x_{2k} = λ̄ x_{2k−1} + b_{2k}
    return torch.stack((x_even, x_odd), dim=-1).flatten(-2)[..., :L]


def fft_scan(log_lam: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Causal convolution of b with the kernel λ̄^k (k = 0 … L−1) by complex FFT."""
    L = b.shape[-1]
    n_fft = 1 << (2 * L - 1).bit_length()  # power of two ≥ 2L: no circular wrap-around
    k = torch.arange(L, device=b.device, dtype=log_lam.real.dtype)
    kernel = torch.exp(k[None, :] * log_lam[:, None])  # [P, L]
    x = torch.fft.ifft(torch.fft.fft(b, n=n_fft) * torch.fft.fft(kernel, n=n_fft)[:, None, :])
    return x[..., :L]


SCANS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "chunked": chunked_scan,
    "assoc": assoc_scan,
    "fft": fft_scan,
    "sequential": sequential_scan,
}


def diagonal_scan(
    log_lam: torch.Tensor,
    b: torch.Tensor,
    algorithm: str = "chunked",
    reverse: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Run x_k = λ̄ x_{k−1} + b_k (or, with ``reverse``, x_k = λ̄ x_{k+1} + b_k) with the named algorithm.

    Args:
        log_lam: complex [P], log λ̄.
        b: complex [P, M, L], the driven input B̄u.
        algorithm: one of ``SCANS``.
        reverse: run from the end of the sequence backwards (the S5 bidirectional convention: the
            current step is included).
        chunk_size: chunk length T of the ``chunked`` algorithm.

    Returns:
        x: complex [P, M, L].
    """
    try:
        fn = SCANS[algorithm]
    except KeyError:
        raise ValueError(f"unknown scan algorithm {algorithm!r}; choose one of {sorted(SCANS)}") from None
    if algorithm == "chunked":
        fn = partial(chunked_scan, chunk=chunk_size)
    if reverse:
        return fn(log_lam, b.flip(-1)).flip(-1)
    return fn(log_lam, b)
