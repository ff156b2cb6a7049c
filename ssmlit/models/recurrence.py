"""Streaming (recurrent) form of a unidirectional diagonal SSM, in real arithmetic.

A layer's discrete system (``ssmlit.models.base``) is run step by step,

    x_k = λ̄ ⊙ x_{k−1} + B̄ u_k,        y_k = 2·Re(C x_k) + D ⊙ u_k,

with each complex number written as its real and imaginary parts, so that the same code runs in
eager PyTorch, under ``torch.export`` and in ONNX (neither handles complex tensors). A state is
``x: float32 [B, 2, n]`` with ``x[:, 0]`` = Re x and ``x[:, 1]`` = Im x; only active (unmasked)
states are kept, so a pruned layer streams at a cost proportional to the states it keeps whether
it was compacted or only masked.

One step (T = 1) is the recurrence itself. A frame of T steps (audio arrives in frames) is a
two-level scan with every decay λ̄^k precomputed for that T: the frame is cut into m chunks of c
steps (c ≈ √T); within a chunk, x_t = R(λ̄^{t+1})·x_in + Σ_{s≤t} R(λ̄^{t−s})·b_s is one real batched
matmul per state over the chunk's inputs and its entering state x_in, where R(z) is the 2×2 real
matrix of multiplication by z; the entering states themselves follow h_j = λ̄^c h_{j−1} + e_j (e_j
the chunk's end state from zero), which is the same lower-triangular Toeplitz product one level
up. Work per frame: O(n·T·c) for the scan next to the O(n·T·H) of the input and output maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def default_chunk(frame: int) -> int:
    """Chunk length c of the two-level frame scan: ⌈√T⌉ balances the in-chunk work (∝ T·c) against
    the across-chunk work (∝ (T/c)²)."""
    return max(1, math.isqrt(frame - 1) + 1) if frame > 1 else 1


def _rotations(z: torch.Tensor) -> torch.Tensor:
    """``z: complex [..., s, t]`` → real ``[..., s, 2, t, 2]``: entry [s, r', t, r] is R(z[s, t])[r, r'],
    laid out so that ``row_vector(s, r') @ M`` gives the output component (t, r)."""
    a, b = z.real, z.imag
    return torch.stack((torch.stack((a, b), -1), torch.stack((-b, a), -1)), -3)


def toeplitz_rotations(log_lam: torch.Tensor, size: int) -> torch.Tensor:
    """Real ``[n, 2·size, 2·size]`` matrix of x_t = Σ_{s≤t} λ̄^{t−s} z_s (t, s < size), acting on row
    vectors ordered (s, re/im).

    Args:
        log_lam: complex128 [n], log λ̄ (powers are exp(k·log λ̄), exact in the branch).
        size: number of steps.
    """
    k = torch.arange(size, device=log_lam.device)
    lag = k[None, :] - k[:, None]  # [s, t] = t − s
    powers = torch.exp(lag.clamp(min=0).to(log_lam.real.dtype) * log_lam[:, None, None]) * (lag >= 0)
    return _rotations(powers).reshape(log_lam.shape[0], 2 * size, 2 * size)


def frame_tables(log_lam: torch.Tensor, frame: int, chunk: int) -> dict[str, torch.Tensor]:
    """The precomputed decays of the two-level frame scan (computed in float64, returned float32).

    Args:
        log_lam: complex128 [n].
        frame: T, steps per frame (> 1).
        chunk: c, steps per chunk.

    Returns:
        ``end: [n, 2c, 2]`` (chunk inputs → chunk end state from zero), ``carry: [n, 2m, 2m]``
        (x_in of the frame and chunk end states → entering state of every chunk), ``aug: [n, 2 + 2c,
        2c]`` (entering state and chunk inputs → every state of the chunk).
    """
    c, m = chunk, -(-frame // chunk)
    local = toeplitz_rotations(log_lam, c)  # [n, 2c, 2c]
    t = torch.arange(1, c + 1, device=log_lam.device, dtype=log_lam.real.dtype)
    entering = _rotations(torch.exp(t * log_lam[:, None])[:, None, :]).reshape(-1, 2, 2 * c)  # R(λ̄^{t+1})
    tables = dict(end=local[:, :, 2 * (c - 1):], carry=toeplitz_rotations(c * log_lam, m),
                  aug=torch.cat((entering, local), 1))
    return {k: v.to(torch.float32).contiguous() for k, v in tables.items()}


class StreamingSSM(nn.Module):
    """A frozen, real-valued streaming copy of one unidirectional S5 or S4D layer.

    Built by :meth:`ssmlit.models.DiagonalSSM.streaming`; holds float32 buffers only (no
    parameters, no reference to the source layer), so later changes of the layer do not reach it.

    Two input/output maps:

    - ``"mimo"`` (S5): ``b = W_in u`` with ``W_in = [Re B̄; Im B̄]: [2n, H]``;
      ``y = W_out [Re x; Im x]`` with ``W_out = 2·[Re C, −Im C]: [H, 2n]``.
    - ``"diag"`` (S4D): state (h, k) reads only channel h: ``b = B_in[:, h, k]·u_h`` with
      ``B_in = [Re B̄; Im B̄]: [2, H, w]`` and ``y_h = Σ_k W_out[:, h, k]·x[:, h, k]`` (n = H·w).

    Args:
        kind: ``"mimo"`` or ``"diag"``.
        log_lam: complex [n] (diag: [H, w]), log λ̄ of the kept states (complex128 for exact tables).
        B_bar: complex [n, H] (diag: [H, w]), masked states already removed or zeroed.
        C: complex [H, n] (diag: [H, w]).
        D: real [H].
        frame: T, the number of steps every call processes.
        chunk: chunk length of the frame scan (default :func:`default_chunk`).
    """

    def __init__(self, kind: str, log_lam: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                 frame: int = 1, chunk: int | None = None) -> None:
        super().__init__()
        if kind not in ("mimo", "diag"):
            raise ValueError(f"unknown streaming kind {kind!r}; choose 'mimo' (S5) or 'diag' (S4D)")
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 1:
            raise ValueError(f"frame must be an integer >= 1 (steps per call), got {frame!r}")
        chunk = default_chunk(frame) if chunk is None else chunk
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= frame:
            raise ValueError(f"chunk must be an integer in [1, frame={frame}], got {chunk!r}")
        self.kind, self.frame, self.chunk = kind, frame, chunk
        self.d_model = int(D.shape[0])
        f32 = torch.float32
        if kind == "mimo":
            self.register_buffer("W_in", torch.cat((B_bar.real, B_bar.imag), 0).to(f32).contiguous())
            self.register_buffer("W_out", (2 * torch.cat((C.real, -C.imag), 1)).to(f32).contiguous())
        else:
            self.register_buffer("W_in", torch.stack((B_bar.real, B_bar.imag)).to(f32).contiguous())
            self.register_buffer("W_out", (2 * torch.stack((C.real, -C.imag))).to(f32).contiguous())
        self.register_buffer("D", D.detach().to(f32).clone())
        log_lam = log_lam.reshape(-1)
        lam = torch.exp(log_lam)
        self.n = int(lam.shape[0])
        # x' = λ̄x in real form: [Re x', Im x'] = [a, a]·[Re x, Im x] + [−b, b]·[Im x, Re x].
        self.register_buffer("lam_same", torch.stack((lam.real, lam.real)).to(f32))
        self.register_buffer("lam_swap", torch.stack((-lam.imag, lam.imag)).to(f32))
        if frame > 1:
            for name, table in frame_tables(log_lam.to(torch.complex128), frame, chunk).items():
                self.register_buffer(f"scan_{name}", table)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Zero state ``float32 [batch, 2, n]``."""
        return torch.zeros(batch, 2, self.n, device=self.D.device if device is None else device)

    def _input(self, u: torch.Tensor) -> torch.Tensor:
        B, T = u.shape[:2]
        if self.kind == "mimo":
            return (u @ self.W_in.T).view(B, T, 2, self.n)
        return (u[:, :, None, :, None] * self.W_in).reshape(B, T, 2, self.n)

    def _output(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        B, T, H = u.shape
        if self.kind == "mimo":
            y = x.reshape(B, T, 2 * self.n) @ self.W_out.T
        else:
            y = (x.reshape(B, T, 2, H, -1) * self.W_out).sum((2, 4))
        return torch.addcmul(y, u, self.D)

    def _scan(self, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """``b: [B, T, 2, n]``, ``x0: [B, 2, n]`` → every state of the frame ``[B, T, 2, n]``."""
        B, T, n = b.shape[0], self.frame, self.n
        if T == 1:
            x = torch.addcmul(torch.addcmul(b[:, 0], x0, self.lam_same), x0.flip(1), self.lam_swap)
            return x[:, None]
        c = self.chunk
        m = -(-T // c)
        if m * c != T:
            b = F.pad(b, (0, 0, 0, 0, 0, m * c - T))
        bp = b.view(B, m, c, 2, n).permute(4, 0, 1, 2, 3).reshape(n, B * m, 2 * c)
        start = x0.permute(2, 0, 1)  # [n, B, 2]
        if m > 1:
            ends = torch.bmm(bp, self.scan_end).view(n, B, m, 2)
            z = torch.cat((start[:, :, None], ends[:, :, :-1]), 2).reshape(n, B, 2 * m)
            start = torch.bmm(z, self.scan_carry)  # entering state of every chunk
        xs = torch.bmm(torch.cat((start.reshape(n, B * m, 2), bp), 2), self.scan_aug)  # [n, B·m, 2c]
        return xs.view(n, B, m * c, 2)[:, :, :T].permute(1, 2, 3, 0)

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u: float32 [B, frame, H]``, ``x: float32 [B, 2, n]`` → ``(y [B, frame, H], x after the
        frame's last step)``."""
        if u.dim() != 3 or u.shape[1] != self.frame or u.shape[2] != self.d_model:
            raise ValueError(f"this streaming layer takes frames [batch, {self.frame}, {self.d_model}], "
                             f"got {tuple(u.shape)}")
        xs = self._scan(self._input(u), x)
        return self._output(xs, u), xs[:, -1]

    def extra_repr(self) -> str:
        return f"kind={self.kind}, d_model={self.d_model}, n={self.n}, frame={self.frame}, chunk={self.chunk}"
