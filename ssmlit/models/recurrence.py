"""Streaming (recurrent) form of a unidirectional diagonal SSM, in real arithmetic.

A layer's discrete system (``ssmlit.models.base``) is run step by step,

    x_k = λ̄ ⊙ x_{k−1} + B̄ u_k,        y_k = 2·Re(C x_k) + D ⊙ u_k,

with each complex number written as its real and imaginary parts, so that the same code runs in
eager PyTorch, under ``torch.export`` and in ONNX (neither handles complex tensors). A state is
``x: float32 [B, n, 2]``, ``torch.view_as_real`` of the complex state; only active (unmasked)
states are kept, so a pruned layer streams at a cost proportional to the states it keeps whether
it was compacted or only masked.

One step (T = 1) is the recurrence itself. A frame of T steps (audio arrives in frames) is a
two-level scan with every decay λ̄^k precomputed for that T: the frame is cut into m chunks of c
steps (c ≈ √T, :func:`default_chunk`). Within a chunk, x_t = R(λ̄^{t+1})·x_in + Σ_{s≤t} R(λ̄^{t−s})·b_s
is one real batched matmul per state over the chunk's inputs and its entering state x_in, where
R(z) is the 2×2 real matrix of multiplication by z; the entering states follow h_j = λ̄^c h_{j−1} + e_j
(e_j the chunk's end state from zero), the same lower-triangular Toeplitz product one level up.
Work per frame: O(n·T·c) for the scan next to the O(n·T·H) of the input and output maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def default_chunk(frame: int) -> int:
    """Chunk length c of the two-level frame scan: the power of two at or above √T, which balances
    the in-chunk work (∝ T·c) against the across-chunk work (∝ (T/c)²) and was the fastest of
    c ∈ {8, 10, 13, 16, 20, 32} for T = 160 on a CPU."""
    if frame <= 1:
        return 1
    root = math.isqrt(frame - 1) + 1  # ⌈√T⌉
    return min(frame, 1 << (root - 1).bit_length())


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
    The state ``x: float32 [B, n, 2]`` is ``torch.view_as_real`` of the complex state of the n kept
    states. Two input/output maps:

    - ``"mimo"`` (S5): ``b = W_in u`` with ``W_in[(i, re/im), :] = (Re B̄_i, Im B̄_i): [2n, H]``;
      ``y = W_out x`` with ``W_out[:, (i, re/im)] = (2 Re C_i, −2 Im C_i): [H, 2n]`` (= 2·Re(C x)).
    - ``"diag"`` (S4D): state (h, k) reads and writes only channel h: ``b[h, k] = B̄[h, k]·u_h`` and
      ``y_h = Σ_k 2·Re(C[h, k] x[h, k])``, with B̄, C as real ``[H, w, 2]`` (n = H·w).

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
        B_ri = torch.view_as_real(B_bar.to(torch.complex128))
        C_ri = torch.view_as_real(C.to(torch.complex128)) * torch.tensor([2.0, -2.0], dtype=torch.float64,
                                                                            device=C.device)
        if kind == "mimo":
            self.register_buffer("W_in", B_ri.permute(0, 2, 1).reshape(-1, self.d_model).to(f32).contiguous())
            self.register_buffer("W_out", C_ri.reshape(self.d_model, -1).to(f32).contiguous())
        else:
            self.register_buffer("W_in", B_ri.to(f32).contiguous())  # [H, w, 2]
            self.register_buffer("W_out", C_ri.reshape(self.d_model, -1).to(f32).contiguous())  # [H, 2w]
        self.register_buffer("D", D.detach().to(f32).clone())
        log_lam = log_lam.reshape(-1)
        lam = torch.exp(log_lam)
        self.n = int(lam.shape[0])
        # x' = λ̄x in real form: (Re x', Im x') = (a, a)·(Re x, Im x) + (−b, b)·(Im x, Re x).
        self.register_buffer("lam_same", torch.stack((lam.real, lam.real), -1).to(f32))
        self.register_buffer("lam_swap", torch.stack((-lam.imag, lam.imag), -1).to(f32))
        if frame > 1:
            tables = frame_tables(log_lam.to(torch.complex128), frame, chunk)
            # The chunk-end product runs transposed ([2, 2c] @ [2c, rows]): BLAS is faster with the
            # two-wide dimension outside.
            self.register_buffer("scan_end_t", tables.pop("end").transpose(1, 2).contiguous())
            for name, table in tables.items():
                self.register_buffer(f"scan_{name}", table)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Zero state ``float32 [batch, n, 2]``."""
        return torch.zeros(batch, self.n, 2, device=self.D.device if device is None else device)

    def _input(self, u: torch.Tensor) -> torch.Tensor:
        """``u: [B, T, H]`` → ``b = B̄u: [B, T, n, 2]``."""
        B, T = u.shape[:2]
        if self.kind == "mimo":
            return (u @ self.W_in.T).view(B, T, self.n, 2)
        return (u[..., None, None] * self.W_in).view(B, T, self.n, 2)

    def _output(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``x: [B, T, n, 2]``, ``u: [B, T, H]`` → ``y = 2·Re(C x) + D⊙u: [B, T, H]``."""
        B, T, H = u.shape
        if self.kind == "mimo":
            y = x.reshape(B, T, 2 * self.n) @ self.W_out.T
        else:
            y = (x.reshape(B, T, H, -1) * self.W_out).sum(-1)
        return torch.addcmul(y, u, self.D)

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u: float32 [B, frame, H]``, ``x: float32 [B, n, 2]`` → ``(y [B, frame, H], x after the
        frame's last step)``."""
        if u.dim() != 3 or u.shape[1] != self.frame or u.shape[2] != self.d_model:
            raise ValueError(f"this streaming layer takes frames [batch, {self.frame}, {self.d_model}], "
                             f"got {tuple(u.shape)}")
        B, T, n = u.shape[0], self.frame, self.n
        if T == 1:
            b = self._input(u)[:, 0]
            x = torch.addcmul(torch.addcmul(b, x, self.lam_same), x.flip(-1), self.lam_swap)
            return self._output(x[:, None], u), x
        c = self.chunk
        m = -(-T // c)
        # Padding the input (not b) costs less; padded steps only follow the last real one.
        v = F.pad(u, (0, 0, 0, m * c - T)) if m * c != T else u
        bp = self._input(v).permute(2, 0, 1, 3).contiguous().view(n, B * m, 2 * c)  # [n, B·m, (s, re/im)]
        start = x.transpose(0, 1)  # [n, B, 2]
        if m > 1:
            ends = torch.bmm(self.scan_end_t, bp.transpose(1, 2)).view(n, 2, B, m).permute(0, 2, 3, 1)
            z = torch.cat((start[:, :, None], ends[:, :, :-1]), 2).reshape(n, B, 2 * m)
            start = torch.bmm(z, self.scan_carry)  # entering state of every chunk: [n, B, (j, re/im)]
        xs = torch.bmm(torch.cat((start.reshape(n, B * m, 2), bp), 2), self.scan_aug)  # [n, B·m, (t, re/im)]
        xs = xs.view(n, B, m * c, 2).permute(1, 2, 0, 3)  # [B, m·c, n, 2]
        y = self._output(xs, v)
        return (y[:, :T] if m * c != T else y), xs[:, T - 1]

    def extra_repr(self) -> str:
        return f"kind={self.kind}, d_model={self.d_model}, n={self.n}, frame={self.frame}, chunk={self.chunk}"
