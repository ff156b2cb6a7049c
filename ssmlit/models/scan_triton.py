"""Triton kernels of the diagonal recurrence (forward and the transposed backward), CUDA only.

Imported on first use by ``ssmlit.models.scan_autograd`` (triton is optional). Triton has no complex
type, so every complex value is carried as a (real, imaginary) pair of float32 registers, read from
the interleaved storage of a complex64 tensor (``torch.view_as_real``: real part at 2p, imaginary at
2p + 1 of a time step's row of P states).

One program owns BP consecutive states of one batch element over one segment of time. It walks the
segment in tiles of BT steps; inside a tile the recurrence h_t = λ̄ h_{t−1} + s_t is a parallel prefix
over the pairs (λ̄, s_t) with (a₁, x₁)∘(a₂, x₂) = (a₂a₁, a₂x₁ + x₂) (``tl.associative_scan``), whose
first component is λ̄^{k+1}; the state entering the tile is added as λ̄^{k+1}·carry. When batch × state
blocks are too few to fill the GPU, time is split into segments: a first launch computes each
segment's local end state, a tiny scan over segments (PyTorch) gives every segment's entering state,
and a second launch recomputes the segment with it and writes the result (input read twice, output
written once).

The backward launch also accumulates ∂ℒ/∂λ̄̄ = Σ_t g_t·conj(x_{t∓1}) in registers, one partial sum per
program, so no product tensor is ever materialized; the second direction adds its gradient into the
first's output (∂ℒ/∂b̄ = g⁰ + g¹) in a second launch, which keeps the sum deterministic.

Set ``TRITON_INTERPRET=1`` before this module is imported to run the kernels on a CPU (tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Tile shape and launch heuristics; benchmarks/layer_speed.py --triton-configs measures alternatives.
CONFIG = {"block_t": 128, "block_p": 32, "num_warps": 4, "min_programs": 512, "min_segment": 1024}
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _combine(ar1, ai1, xr1, xi1, ar2, ai2, xr2, xi2):
    # (a₁, x₁) then (a₂, x₂): the pair (a₂a₁, a₂x₁ + x₂), complex products written out.
    ar = ar2 * ar1 - ai2 * ai1
    ai = ar2 * ai1 + ai2 * ar1
    xr = ar2 * xr1 - ai2 * xi1 + xr2
    xi = ar2 * xi1 + ai2 * xr1 + xi2
    return ar, ai, xr, xi


@triton.jit
def _scan_kernel(
    src, dst, init, ends, xs, glam, lam,
    L, P, B, seg_len,
    s_sb, s_st, s_db, s_dt, s_xb, s_xt,
    REV: tl.constexpr, WRITE: tl.constexpr, ACC: tl.constexpr, HAS_INIT: tl.constexpr, GRAD: tl.constexpr,
    BT: tl.constexpr, BP: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_s = tl.program_id(2)
    p = pid_p * BP + tl.arange(0, BP)
    pm = p < P
    lr = tl.load(lam + 2 * p, mask=pm, other=0.0)
    li = tl.load(lam + 2 * p + 1, mask=pm, other=0.0)
    rows = tl.arange(0, BT)
    a_r = tl.zeros((BT, BP), dtype=tl.float32) + lr[None, :]
    a_i = tl.zeros((BT, BP), dtype=tl.float32) + li[None, :]
    # Segment/state-block slot of the [n_seg, B, P, 2] carry buffers and of the ∂ℒ/∂λ̄̄ partials.
    slot = (pid_s * B + pid_b) * P + p
    if HAS_INIT:
        cr = tl.load(init + 2 * slot, mask=pm, other=0.0)
        ci = tl.load(init + 2 * slot + 1, mask=pm, other=0.0)
    else:
        cr = tl.zeros((BP,), dtype=tl.float32)
        ci = tl.zeros((BP,), dtype=tl.float32)
    gr = tl.zeros((BP,), dtype=tl.float32)
    gi = tl.zeros((BP,), dtype=tl.float32)
    j_start = pid_s * seg_len
    j_end = tl.minimum(j_start + seg_len, L)
    # 64-bit batch offsets: a [B, L, P] complex64 buffer passes 2³¹ floats at 8 GiB.
    src_b = src + pid_b.to(tl.int64) * s_sb
    dst_b = dst + pid_b.to(tl.int64) * s_db
    xs_b = xs + pid_b.to(tl.int64) * s_xb
    col = 2 * p[None, :]
    for j0 in range(j_start, j_end, BT):
        j = j0 + rows  # position in loop order
        valid = j < j_end
        t = L - 1 - j if REV else j
        m2 = valid[:, None] & pm[None, :]
        off = t[:, None] * s_st + col
        sr = tl.load(src_b + off, mask=m2, other=0.0)
        si = tl.load(src_b + off + 1, mask=m2, other=0.0)
        pr, pi, hr, hi = tl.associative_scan((a_r, a_i, sr, si), 0, _combine)
        hr = hr + pr * cr[None, :] - pi * ci[None, :]
        hi = hi + pr * ci[None, :] + pi * cr[None, :]
        if WRITE:
            doff = t[:, None] * s_dt + col
            if ACC:
                hr_out = hr + tl.load(dst_b + doff, mask=m2, other=0.0)
                hi_out = hi + tl.load(dst_b + doff + 1, mask=m2, other=0.0)
            else:
                hr_out = hr
                hi_out = hi
            tl.store(dst_b + doff, hr_out, mask=m2)
            tl.store(dst_b + doff + 1, hi_out, mask=m2)
        if GRAD:
            # The state one step further in loop order is x_{t−1} (descending loop) or x_{t+1}.
            tn = t - 1 if REV else t + 1
            mn = (valid & (j + 1 < L))[:, None] & pm[None, :]
            xoff = tn[:, None] * s_xt + col
            xr = tl.load(xs_b + xoff, mask=mn, other=0.0)
            xi = tl.load(xs_b + xoff + 1, mask=mn, other=0.0)
            gr += tl.sum(tl.where(mn, hr * xr + hi * xi, 0.0), axis=0)
            gi += tl.sum(tl.where(mn, hi * xr - hr * xi, 0.0), axis=0)
        last = tl.minimum(j_end - j0, BT) - 1
        is_last = (rows == last)[:, None]
        cr = tl.sum(tl.where(is_last, hr, 0.0), axis=0)
        ci = tl.sum(tl.where(is_last, hi, 0.0), axis=0)
    if not WRITE:
        tl.store(ends + 2 * slot, cr, mask=pm)
        tl.store(ends + 2 * slot + 1, ci, mask=pm)
    if GRAD:
        tl.store(glam + 2 * slot, gr, mask=pm)
        tl.store(glam + 2 * slot + 1, gi, mask=pm)


def _segments(B: int, L: int, P: int) -> tuple[int, int]:
    """(number of segments, segment length): enough programs to fill the device, segments not
    shorter than ``min_segment`` steps and a multiple of the tile length."""
    bt, bp = CONFIG["block_t"], CONFIG["block_p"]
    base = B * triton.cdiv(P, bp)
    n_seg = max(1, min(triton.cdiv(CONFIG["min_programs"], base), L // CONFIG["min_segment"]))
    seg_len = triton.cdiv(triton.cdiv(L, n_seg), bt) * bt
    return triton.cdiv(L, seg_len), seg_len


def _real(z: torch.Tensor) -> torch.Tensor:
    """Interleaved float32 view of a complex64 tensor whose last (state) dimension is contiguous."""
    if z.dtype != torch.complex64:
        raise TypeError(f"the triton scan runs in complex64, got {z.dtype}")
    if z.stride(-1) != 1:
        z = z.contiguous()
    return torch.view_as_real(z)


def scan_direction(
    src: torch.Tensor, dst: torch.Tensor, log_lam: torch.Tensor, reverse: bool,
    accumulate: bool = False, xs: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """dst (+)= the scan h_t = λ̄ h_{t∓1} + src_t along dim 1 with λ̄ = exp(log_lam).

    Args:
        src, dst: complex64 [B, L, P] (any batch/time strides, states contiguous).
        log_lam: complex [P].
        reverse: h_t = λ̄ h_{t+1} + src_t.
        accumulate: add into ``dst`` instead of overwriting it.
        xs: complex64 [B, L, P] or None; if given, also return Σ_{batch,t} h_t·conj(xs_{t−1}) when
            ``reverse``, else h_t·conj(xs_{t+1}) (the step after t in the scan's own order), complex64 [P].

    ``src`` may be ``dst`` (in place): each tile is read before it is written.
    """
    B, L, P = src.shape
    if not INTERPRET and CONFIG["block_t"] * CONFIG["block_p"] < 32 * CONFIG["num_warps"]:
        # A smaller tile replicates elements across threads, and an in-place scan (src is dst) could
        # then read a value another thread has already overwritten.
        raise ValueError(f"triton scan tile {CONFIG['block_t']}×{CONFIG['block_p']} is smaller than "
                         f"{CONFIG['num_warps']} warps of 32 threads")
    n_seg, seg_len = _segments(B, L, P)
    if dst.stride(-1) != 1:
        raise ValueError("the triton scan writes into a destination whose states are contiguous")
    s, d = _real(src), _real(dst)
    lam = torch.view_as_real(torch.exp(log_lam.to(torch.complex64)).contiguous())
    x = _real(xs) if xs is not None else s
    glam = torch.zeros(n_seg, B, P, 2, device=src.device, dtype=torch.float32) if xs is not None else lam
    cfg = dict(BT=CONFIG["block_t"], BP=CONFIG["block_p"])
    if not INTERPRET:
        cfg["num_warps"] = CONFIG["num_warps"]
    grid = (triton.cdiv(P, CONFIG["block_p"]), B, n_seg)
    strides = (s.stride(0), s.stride(1), d.stride(0), d.stride(1), x.stride(0), x.stride(1))
    init = lam
    if n_seg > 1:
        ends = torch.empty(n_seg, B, P, 2, device=src.device, dtype=torch.float32)
        _scan_kernel[grid](s, d, lam, ends, x, glam, lam, L, P, B, seg_len, *strides,
                           REV=reverse, WRITE=False, ACC=False, HAS_INIT=False, GRAD=False, **cfg)
        # Segment j's entering state is the true end of segment j − 1: the same recurrence over the
        # segments' local ends with λ̄^{seg_len} (all segments but the last are seg_len long).
        from .scan_autograd import scan_inplace_

        carry = torch.view_as_complex(ends).permute(1, 0, 2)  # [B, n_seg, P]
        scan_inplace_(carry, log_lam.to(torch.complex64) * seg_len)
        init = torch.zeros_like(ends)
        init[1:] = ends[:-1]
    _scan_kernel[grid](s, d, init, lam, x, glam, lam, L, P, B, seg_len, *strides,
                       REV=reverse, WRITE=True, ACC=accumulate, HAS_INIT=n_seg > 1, GRAD=xs is not None, **cfg)
    if xs is None:
        return None
    return torch.view_as_complex(glam).sum((0, 1))


class TritonEngine:
    """``ENGINES["triton"]``: the ``scan_`` interface of ``scan_autograd.LeanEngine`` on the kernels above."""

    @staticmethod
    def scan_(h: torch.Tensor, log_lam: torch.Tensor, reverse: bool, xs: torch.Tensor | None = None,
              into: torch.Tensor | None = None) -> torch.Tensor | None:
        if h.device.type != "cuda" and not INTERPRET:
            raise ValueError(f"scan='triton' runs on CUDA tensors, got a {h.device.type} input; "
                             "use scan='auto' (lean on CPU) or set TRITON_INTERPRET=1 (slow, for tests)")
        glam = scan_direction(h, h if into is None else into, log_lam, reverse, accumulate=into is not None, xs=xs)
        return None if glam is None else glam.to(log_lam.dtype)
