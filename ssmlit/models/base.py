"""The diagonal-system protocol shared by every prunable SSM layer.

A layer holds, per stored state i (one member of a conjugate pair), a discrete eigenvalue λ̄_i, an
input row B̄_i and one output column C_i per direction, plus a real skip D. With all states
active its output is

    y_k = 2·Re(C[0] x_k) + D ⊙ u_k,        x_k = diag(λ̄) x_{k−1} + B̄ u_k,   x_{−1} = 0,

plus 2·Re(C[1] x'_{k+δ}) when bidirectional, where x' runs the same recurrence over the
time-reversed input (x'_k includes u_k; x'_k = 0 for k ≥ L) and δ = :attr:`DiagonalSSM.backward_delay`:
0 (the current step is included in both directions, as in S5) or 1 (state-spaces/s4's shifted
anti-causal kernel, an S4D option).

Pruning (``ssmlit.pruning``) needs only :meth:`DiagonalSSM.discretized_system` and
:attr:`DiagonalSSM.state_mask`; physical removal needs :meth:`DiagonalSSM.compact`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from .recurrence import StreamingSSM


class DiagonalSSM(nn.Module):
    """Base class of S4D and S5: the state mask, precision handling and the protocol's signatures.

    Subclasses implement :meth:`discretized_system`, :meth:`_forward`, :meth:`compact`,
    :meth:`config` and :meth:`param_roles`.
    """

    bidirectional: bool
    d_model: int
    step_rescale: float
    #: δ of the protocol: the backward output at step k reads x'_{k+δ} (1 only for s4's convention).
    backward_delay: int = 0

    def _init_state_mask(self, n: int) -> None:
        # A buffer (not a parameter): saved in the state dict, moved with .to(), broadcast by DDP.
        self.register_buffer("state_mask", torch.ones(n, dtype=torch.bool))

    @property
    def n_states(self) -> int:
        """Number of stored conjugate-pair states n (the length of ``state_mask``)."""
        return int(self.state_mask.numel())

    @property
    def n_active(self) -> int:
        """Number of states not masked out."""
        return int(self.state_mask.sum())

    def discretized_system(
        self, dtype: torch.dtype | None = None, step_rescale: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The full (unmasked) discrete system.

        Args:
            dtype: complex dtype of the result; ``torch.complex128`` computes the discretization
                itself in double precision (what pruning scores use). Default complex64.
            step_rescale: multiplies every Δ; defaults to the layer's ``step_rescale``.

        Returns:
            ``lam_bar: complex [n]``, ``B_bar: complex [n, H]``, ``C: complex [d, H, n]`` with
            d = 2 when bidirectional (forward, backward) else 1.
        """
        raise NotImplementedError

    def compact(self) -> DiagonalSSM:
        """A new layer with the masked states physically removed and identical outputs."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments that rebuild a layer of the same shapes."""
        raise NotImplementedError

    def param_roles(self) -> dict[str, str]:
        """Map of parameter name → role in {"A", "B", "C", "D", "dt"} (used for optimizer groups)."""
        raise NotImplementedError

    def _forward(self, u: torch.Tensor, step_rescale: float) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, u: torch.Tensor, step_rescale: float | None = None) -> torch.Tensor:
        """Apply the layer.

        Args:
            u: real [batch, length, d_model].
            step_rescale: multiplies every Δ for this call (e.g. 2.0 for input sampled at half the
                training rate); defaults to the layer's ``step_rescale``.

        Returns:
            y: real [batch, length, d_model], same dtype as ``u``.
        """
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__} expects input [batch, length, {self.d_model}], "
                             f"got {tuple(u.shape)}")
        rescale = self.step_rescale if step_rescale is None else float(step_rescale)
        # Complex recurrences are run in float32 even under autocast: half-precision powers
        # λ̄^k lose the slow modes that carry long-range memory.
        ctx = (torch.autocast(u.device.type, enabled=False)
               if torch.is_autocast_enabled(u.device.type) else contextlib.nullcontext())
        with ctx:
            y = self._forward(u.float(), rescale)
        return y.to(u.dtype)

    # -- streaming ------------------------------------------------------------------------------
    def _recurrent_form(self, step_rescale: float) -> dict[str, Any]:
        """The kept states' system for :class:`~ssmlit.models.recurrence.StreamingSSM` (complex128)."""
        raise NotImplementedError

    def check_streamable(self) -> None:
        """Raise ValueError if this layer cannot run as a recurrence (bidirectional)."""
        if self.bidirectional:
            raise ValueError(f"a bidirectional {type(self).__name__} layer cannot stream: its output at step k "
                             "depends on the inputs after k (the reverse-time scan); only unidirectional models "
                             "(ssm.bidirectional=false) have a streaming form")

    def streaming(self, frame: int = 1, step_rescale: float | None = None,
                  chunk: int | None = None) -> StreamingSSM:
        """A frozen real-valued copy of this layer that processes ``frame`` steps per call, carrying
        its state (see :mod:`ssmlit.models.recurrence`); masked states are left out.

        Args:
            frame: T, steps per call.
            step_rescale: multiplies every Δ; defaults to the layer's ``step_rescale``.
            chunk: chunk length of the frame scan (default: the power of two at or above √T).
        """
        self.check_streamable()
        rescale = self.step_rescale if step_rescale is None else float(step_rescale)
        with torch.no_grad():
            return StreamingSSM(frame=frame, chunk=chunk, **self._recurrent_form(rescale)).to(self.D.device)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Zero state ``float32 [batch, n_kept, 2]`` for :meth:`step`: (Re x, Im x) of the active
        states only (S4D: ``n_kept`` = H × the largest active count of a channel)."""
        return self.streaming().init_state(batch, device)

    def step(self, u: torch.Tensor, state: torch.Tensor, step_rescale: float | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance the recurrence x_k = λ̄ x_{k−1} + B̄u_k, y_k = 2·Re(C x_k) + D⊙u_k (module docstring).

        Inference only (no gradient to the parameters); the discretization is recomputed per call,
        so for repeated calls build :meth:`streaming` once.

        Args:
            u: real [B, H] (one step) or [B, T, H] (a frame of T steps, scanned in parallel).
            state: float32 [B, n_kept, 2] from :meth:`init_state` or the previous call.
            step_rescale: multiplies every Δ; defaults to the layer's ``step_rescale``.

        Returns:
            ``(y, state)``: y with the shape and dtype of ``u``; the state after the last step.
        """
        one = u.dim() == 2
        frame = u[:, None] if one else u
        if frame.dim() != 3 or frame.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__}.step expects u [batch, {self.d_model}] or [batch, T, "
                             f"{self.d_model}], got {tuple(u.shape)}")
        y, state = self.streaming(frame.shape[1], step_rescale)(frame.float(), state)
        return (y[:, 0] if one else y).to(u.dtype), state


def as_complex(p: torch.Tensor) -> torch.Tensor:
    """View a real [..., 2] (real, imaginary) parameter as complex [...]."""
    return torch.view_as_complex(p if p.is_contiguous() else p.contiguous())


def complex_param(z: torch.Tensor) -> nn.Parameter:
    """Store a complex tensor as a real [..., 2] parameter (DDP all-reduce, AdamW state and
    checkpoints then treat it as ordinary real data)."""
    return nn.Parameter(torch.view_as_real(z.to(torch.complex64)).clone())


def check_real_dtype(dtype: torch.dtype | None) -> tuple[torch.dtype, torch.dtype]:
    """Map a requested complex dtype to (real dtype, complex dtype) for discretization."""
    if dtype is None or dtype == torch.complex64:
        return torch.float32, torch.complex64
    if dtype == torch.complex128:
        return torch.float64, torch.complex128
    raise ValueError(f"discretized_system dtype must be torch.complex64 or torch.complex128, got {dtype}")
