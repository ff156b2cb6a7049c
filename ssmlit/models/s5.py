"""S5: a MIMO diagonal state space layer (Smith, Warrington & Linderman, ICLR 2023).

Notation follows the paper and lindermanlab/S5 (``s5/ssm.py``, ``s5/ssm_init.py``):

- P_full = ``d_state`` real states, stored as P = P_full/2 complex eigenvalues Λ (conjugate
  symmetry; the output takes 2·Re).
- Λ = Λ_re + iΛ_im from the block-diagonal HiPPO-N initialization (J = ``blocks`` blocks).
- B̃ = V⁻¹B₀ ∈ ℂ^{P×H}, C̃ = C₀V ∈ ℂ^{H×P} (one per direction), D ∈ ℝ^H, and one Δ per state
  (``log_step``), Δ = step_rescale·exp(log_step).
- Discretization (Sec. 2 / App. C): ZOH Λ̄ = exp(ΛΔ), B̄ = Λ⁻¹(Λ̄ − I)B̃; or bilinear.
- Recurrence x_k = Λ̄x_{k−1} + B̄u_k, y_k = 2·Re(C̃x_k) + D⊙u_k, computed by a scan engine
  (``ssmlit.models.scan_autograd``: one autograd node with a transposed-scan backward);
  bidirectional adds 2·Re(C̃₂x^b_k) from a reverse scan over the same Λ̄, B̄.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ssmlit.errors import check_bool, check_float, check_int

from .base import DiagonalSSM, as_complex, check_real_dtype, complex_param
from .discretize import DISCRETIZATIONS, discretize
from .hippo import block_diag_hippo_n, lecun_normal_
from .scan import DEFAULT_CHUNK
from .scan_autograd import ENGINES, ssm_core, triton_available

C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")
SCAN_CHOICES = ("auto", *ENGINES)


class S5(DiagonalSSM):
    """S5 layer mapping real ``[batch, length, d_model]`` to the same shape.

    Args:
        d_model: H, the number of input/output channels.
        d_state: P_full, the real state size (P_full/2 complex eigenvalues are stored).
        blocks: J, the number of HiPPO-N blocks on the diagonal of the initialization.
        bidirectional: add a reverse-time scan with its own C (shared Λ̄, B̄).
        discretization: ``"zoh"`` or ``"bilinear"``.
        C_init: ``"trunc_standard_normal"`` (default), ``"lecun_normal"`` or ``"complex_normal"``.
        dt_min, dt_max: range of the log-uniform initial Δ (one per state).
        clip_eigs: use Re Λ = min(Λ_re, −1e-4), which guarantees stability.
        step_rescale: default multiplier of Δ (overridable per call).
        scan: the recurrence engine: ``auto`` (default: ``triton`` on CUDA when triton is installed,
            else ``lean``), ``lean``, ``triton``, ``chunked``, ``assoc``, ``fft``, ``sequential``.
        chunk_size: chunk length T of the ``chunked`` scan.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int,
        blocks: int = 1,
        bidirectional: bool = False,
        discretization: str = "zoh",
        C_init: str = "trunc_standard_normal",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        clip_eigs: bool = False,
        step_rescale: float = 1.0,
        scan: str = "auto",
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        super().__init__()
        check_int("d_model", d_model, 1)
        check_int("d_state", d_state, 2)
        if d_state % 2:
            raise ValueError(f"d_state must be even (P = d_state/2 conjugate pairs are stored), got {d_state}")
        check_int("blocks", blocks, 1)
        if d_state % (2 * blocks):
            raise ValueError(f"blocks={blocks} must split d_state={d_state} into equal blocks of even size "
                             "(d_state % (2*blocks) == 0)")
        check_bool("bidirectional", bidirectional)
        check_bool("clip_eigs", clip_eigs)
        check_float("step_rescale", step_rescale, 0, low_open=True)
        # The chunked scan needs T >= 2 to shrink its recursion; smaller values used to be raised silently.
        check_int("chunk_size", chunk_size, 2)
        if discretization not in DISCRETIZATIONS:
            raise ValueError(f"unknown discretization {discretization!r}; choose one of {DISCRETIZATIONS}")
        if C_init not in C_INITS:
            raise ValueError(f"unknown C_init {C_init!r}; choose one of {C_INITS}")
        if scan not in SCAN_CHOICES:
            raise ValueError(f"unknown scan algorithm {scan!r}; choose one of {list(SCAN_CHOICES)}")
        if scan == "triton" and not triton_available():
            raise ValueError("scan='triton' needs the triton package (pip install triton); "
                             "scan='auto' uses it when present")
        check_float("dt_min", dt_min, 0, low_open=True)
        check_float("dt_max", dt_max, 0, low_open=True)
        if not dt_min <= dt_max:
            raise ValueError(f"dt_min must be <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_model, self.d_state, self.blocks = d_model, d_state, blocks
        self.bidirectional, self.discretization, self.C_init = bidirectional, discretization, C_init
        self.dt_min, self.dt_max, self.clip_eigs = dt_min, dt_max, clip_eigs
        self.step_rescale, self.scan, self.chunk_size = float(step_rescale), scan, chunk_size

        Lambda, V, Vinv = block_diag_hippo_n(d_state, blocks)
        P, H, d = Lambda.numel(), d_model, 2 if bidirectional else 1
        self.Lambda_re = nn.Parameter(Lambda.real.float())
        self.Lambda_im = nn.Parameter(Lambda.imag.float())

        B0 = lecun_normal_(torch.empty(d_state, H, dtype=torch.float64), fan_in=d_state)
        self.B = complex_param(Vinv @ B0.to(torch.complex128))  # [P, H, 2]

        C = torch.empty(d, H, P, dtype=torch.complex128)
        for k in range(d):
            if C_init == "complex_normal":
                C[k] = torch.randn(H, P, dtype=torch.complex128)  # std √½ per real/imag part
            else:
                # trunc_standard_normal: lecun_normal per output row (fan_in = P_full);
                # lecun_normal: one draw over [H, P_full, 2] (JAX fan_in = P_full·H).
                fan_in = d_state if C_init == "trunc_standard_normal" else d_state * H
                C0 = lecun_normal_(torch.empty(H, d_state, 2, dtype=torch.float64), fan_in=fan_in)
                C[k] = torch.view_as_complex(C0) @ V
        self.C = complex_param(C)  # [d, H, P, 2]
        self.D = nn.Parameter(torch.randn(H))
        log_step = torch.rand(P) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_step = nn.Parameter(log_step)
        self._init_state_mask(P)

    # -- protocol -----------------------------------------------------------------------------
    def _continuous(self, real: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        re = self.Lambda_re.to(real)
        if self.clip_eigs:
            re = re.clamp(max=-1e-4)
        return torch.complex(re, self.Lambda_im.to(real)), torch.exp(self.log_step.to(real))

    def _discrete(self, step_rescale: float, dtype: torch.dtype | None = None):
        real, cplx = check_real_dtype(dtype)
        Lambda, Delta = self._continuous(real)
        log_lam, lam_bar, gamma = discretize(Lambda, step_rescale * Delta, self.discretization)
        B_bar = gamma[:, None] * as_complex(self.B).to(cplx)
        return log_lam, lam_bar, B_bar, as_complex(self.C).to(cplx)

    def discretized_system(self, dtype=None, step_rescale=None):
        rescale = self.step_rescale if step_rescale is None else float(step_rescale)
        _, lam_bar, B_bar, C = self._discrete(rescale, dtype)
        return lam_bar, B_bar, C

    def param_roles(self) -> dict[str, str]:
        return {"Lambda_re": "A", "Lambda_im": "A", "B": "B", "C": "C", "D": "D", "log_step": "dt"}

    def config(self) -> dict[str, Any]:
        return dict(
            d_model=self.d_model, d_state=self.d_state, blocks=self.blocks,
            bidirectional=self.bidirectional, discretization=self.discretization, C_init=self.C_init,
            dt_min=self.dt_min, dt_max=self.dt_max, clip_eigs=self.clip_eigs,
            step_rescale=self.step_rescale, scan=self.scan, chunk_size=self.chunk_size,
        )

    def compaction_slices(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Tensor name → how a tensor of that parameter's (or buffer's) shape maps to the compacted
        layer: the kept states ``keep = state_mask.nonzero()`` are taken along the state axis
        (``Lambda_*``, ``log_step``, ``B``: [P, …] → [P_kept, …]; ``C``: [d, H, P, 2] → [d, H, P_kept, 2]).

        The same maps carry the optimizer's per-parameter state (Adam moments) over to the
        compacted layer (:mod:`ssmlit.training.surgery`), so :meth:`compact` and the optimizer
        surgery cannot disagree.
        """
        keep = self.state_mask.nonzero().squeeze(1)
        if keep.numel() == 0:
            raise ValueError("cannot compact an S5 layer whose states are all masked; keep at least one")

        def states(t: torch.Tensor) -> torch.Tensor:
            return t[keep.to(t.device)]

        def columns(t: torch.Tensor) -> torch.Tensor:
            return t[:, :, keep.to(t.device)]

        return {"Lambda_re": states, "Lambda_im": states, "B": states, "C": columns, "D": torch.clone,
                "log_step": states, "state_mask": states}

    @torch.no_grad()
    def compact(self) -> S5:
        slices = self.compaction_slices()
        cfg = self.config() | {"d_state": 2 * self.n_active, "blocks": 1}
        new = S5(**cfg).to(self.D.device)
        for name, take in slices.items():
            getattr(new, name).copy_(take(getattr(self, name)))
        return new

    def _recurrent_form(self, step_rescale: float) -> dict[str, Any]:
        """Kept states only: log λ̄ complex128 [k], B̄ [k, H], C [H, k] (the forward direction)."""
        log_lam, _, B_bar, C = self._discrete(step_rescale, torch.complex128)
        keep = self.state_mask.nonzero().squeeze(1)
        if keep.numel() == 0:
            raise ValueError("cannot stream an S5 layer whose states are all masked; keep at least one")
        return dict(kind="mimo", log_lam=log_lam[keep], B_bar=B_bar[keep], C=C[0][:, keep], D=self.D)

    # -- computation --------------------------------------------------------------------------
    def _forward(self, u: torch.Tensor, step_rescale: float) -> torch.Tensor:
        log_lam, _, B_bar, C = self._discrete(step_rescale)
        mask = self.state_mask
        H = u.shape[-1]
        P, d = B_bar.shape[0], C.shape[0]
        # Parameter-only constants, built once per call: B̄ and 2·(Re C, −Im C) as real matrices whose
        # products with u and with x viewed as real are b and y directly (no complex temporaries).
        # A masked state receives no input (its x stays 0) and is not read out.
        W_in = torch.view_as_real(B_bar * mask[:, None]).permute(1, 0, 2).reshape(H, 2 * P)  # [H, (p, re|im)]
        sign = torch.tensor([2.0, -2.0], device=u.device)
        W_out = (torch.view_as_real(C * mask) * sign).permute(0, 2, 3, 1).reshape(d, 2 * P, H)  # [d, (p, re|im), H]
        y = ssm_core(u, W_in, log_lam, W_out, self.scan, self.chunk_size)  # 2·Re(C[0]x⁰ + C[1]x¹)
        return y + self.D * u

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state} (P={self.n_states} stored, "
                f"{self.n_active} active), blocks={self.blocks}, bidirectional={self.bidirectional}, "
                f"discretization={self.discretization}, scan={self.scan}")
