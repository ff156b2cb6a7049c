"""S4D: multi-SISO diagonal state space layer (Gu, Gupta, Goel & Ré, NeurIPS 2022).

Notation follows the S4D paper and state-spaces/s4 (``SSMKernelDiag``):

- H = ``d_model`` independent SISO systems (channels), each with N = ``d_state`` states stored as
  N/2 complex modes (conjugate symmetry; the kernel takes 2·Re).
- A = −exp(A_real) − i·A_imag (Re A < 0 always: stable by construction), shared by the H/S
  channels of each of S = ``n_ssm`` copies; B complex, optionally frozen; C complex per channel and
  direction; D real skip; one Δ per channel, log-uniform in [dt_min, dt_max].
- Discretization (S4D paper Sec. 3): ZOH Ā = exp(ΔA), B̄ = (exp(ΔA) − 1)/A·B; or bilinear.
- Kernel (S4D paper Eq. 6, the Vandermonde product): K_ℓ = 2·Re Σ_n C_n B̄_n Ā_n^ℓ, applied by FFT
  convolution; y = K ∗ u + D⊙u.

Bidirectional layers use a second C and, unlike s4's shifted anti-causal kernel, include the
current step in both directions (the S5 convention, so both layers share the diagonal-system
protocol of ``ssmlit.models.base``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssmlit.errors import check_bool, check_float, check_int

from .base import DiagonalSSM, as_complex, check_real_dtype, complex_param
from .discretize import DISCRETIZATIONS, discretize
from .hippo import s4d_init

S4D_INITS = ("legs", "inv", "lin")


def vandermonde_kernel(Cp: torch.Tensor, log_lam: torch.Tensor, L: int) -> torch.Tensor:
    """K[c, h, ℓ] = 2·Re Σ_n Cp[c, h, n]·exp(ℓ·log_lam[h, n]) for ℓ = 0 … L−1.

    The naive product materializes exp(ℓ·log λ̄) as an [H, N/2, L] tensor (1 GiB per layer at Path-X
    size, kept for backward). Writing ℓ = aT + b with T ≈ √L factorizes it into λ̄^{aT} [H, N/2, L/T]
    and λ̄^b [H, N/2, T]: the same FLOPs as one real batched matmul per channel, and memory
    O(H·N·√L) instead of O(H·N·L).

    Args:
        Cp: complex [d, H, N2], the folded output coefficients C·B̄ (masked states zeroed).
        log_lam: complex [H, N2], log λ̄.
        L: kernel length.

    Returns:
        K: real [d, H, L].
    """
    d, H, N2 = Cp.shape
    T = max(1, math.isqrt(L - 1) + 1) if L > 1 else 1
    nA = -(-L // T)
    real = log_lam.real.dtype
    lo = torch.exp(torch.arange(T, device=Cp.device, dtype=real) * log_lam[..., None])  # [H, N2, T]
    hi = torch.exp(torch.arange(nA, device=Cp.device, dtype=real) * T * log_lam[..., None])  # [H, N2, nA]
    X = (Cp[..., None] * hi).permute(1, 0, 3, 2).reshape(H, d * nA, N2)  # [H, d·nA, N2]
    # Re(X·lo) = Xr·lo_r − Xi·lo_i, as one real bmm with the inner dimension doubled.
    K = torch.bmm(torch.cat((X.real, -X.imag), -1), torch.cat((lo.real, lo.imag), 1))  # [H, d·nA, T]
    return 2 * K.view(H, d, nA * T)[..., :L].transpose(0, 1)


def fft_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Convolve ``u: real [B, H, L]`` with ``K: real [d, H, L]``.

    d = 1: causal, y_t = Σ_{s≤t} K0[t−s] u_s. d = 2: adds the anti-causal Σ_{s≥t} K1[s−t] u_s
    (lag 0 included in both, the S5 convention). Zero-padding to 2L avoids circular wrap-around.
    """
    L = u.shape[-1]
    k = F.pad(K[0], (0, L))
    if K.shape[0] == 2:
        # K1[j] sits at circular position −j ≡ 2L − j, K1[0] at position 0.
        k = k + torch.roll(F.pad(K[1].flip(-1), (L, 0)), 1, dims=-1)
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)
    return y[..., :L]


class S4D(DiagonalSSM):
    """S4D layer mapping real ``[batch, length, d_model]`` to the same shape.

    Args:
        d_model: H, the number of channels (independent SISO systems).
        d_state: N, the state size per channel (N/2 complex modes are stored).
        bidirectional: add an anti-causal kernel with its own C (shared A, B, Δ).
        discretization: ``"zoh"`` or ``"bilinear"``.
        init: ``"legs"`` (S4D-LegS, default, as in the LAST paper), ``"inv"`` or ``"lin"``.
        dt_min, dt_max: range of the log-uniform initial Δ (one per channel).
        n_ssm: S, the number of independent (A, B) copies; channel h uses copy h mod S.
            ``None`` means S = H.
        trainable_B: if False, B is a frozen buffer (s4's ``lr: 0``).
        step_rescale: default multiplier of Δ (s4's ``rate``), overridable per call.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        bidirectional: bool = False,
        discretization: str = "zoh",
        init: str = "legs",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        n_ssm: int | None = None,
        trainable_B: bool = True,
        step_rescale: float = 1.0,
    ) -> None:
        super().__init__()
        check_int("d_model", d_model, 1)
        check_int("d_state", d_state, 2)
        if d_state % 2:
            raise ValueError(f"d_state must be even (N/2 conjugate pairs per channel are stored), got {d_state}")
        check_int("n_ssm", n_ssm, 1, allow_none=True)
        check_bool("bidirectional", bidirectional)
        check_bool("trainable_B", trainable_B)
        check_float("step_rescale", step_rescale, 0, low_open=True)
        if discretization not in DISCRETIZATIONS:
            raise ValueError(f"unknown discretization {discretization!r}; choose one of {DISCRETIZATIONS}")
        if init not in S4D_INITS:
            raise ValueError(f"unknown S4D init {init!r}; choose one of {S4D_INITS}")
        S = d_model if n_ssm is None else n_ssm
        if S <= 0 or d_model % S != 0:
            raise ValueError(f"n_ssm={n_ssm} must divide d_model={d_model}")
        check_float("dt_min", dt_min, 0, low_open=True)
        check_float("dt_max", dt_max, 0, low_open=True)
        if not dt_min <= dt_max:
            raise ValueError(f"dt_min must be <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_model, self.d_state, self.n_ssm = d_model, d_state, S
        self.bidirectional, self.discretization, self.init = bidirectional, discretization, init
        self.dt_min, self.dt_max, self.trainable_B = dt_min, dt_max, trainable_B
        self.step_rescale = float(step_rescale)

        A, B = s4d_init(init, d_state)  # [N2] each
        N2, H, d = A.numel(), d_model, 2 if bidirectional else 1
        self.A_real = nn.Parameter(torch.log(-A.real).float().repeat(S, 1))  # Re A = −exp(A_real)
        self.A_imag = nn.Parameter((-A.imag).float().repeat(S, 1))  # Im A = −A_imag
        B = complex_param(B.repeat(S, 1))  # [S, N2, 2]
        if trainable_B:
            self.B = B
        else:
            self.register_buffer("B", B.data)
        self.C = complex_param(torch.randn(d, H, N2, dtype=torch.complex64))  # var ½ per part
        self.D = nn.Parameter(torch.randn(H))
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self._init_state_mask(H * N2)

    @property
    def n_modes(self) -> int:
        """N/2, the stored modes per channel."""
        return self.A_real.shape[1]

    # -- protocol -----------------------------------------------------------------------------
    def _per_channel(self, step_rescale: float, dtype: torch.dtype | None = None):
        """log λ̄, λ̄, B̄ per (channel, mode): complex [H, N2] each; and C complex [d, H, N2]."""
        real, cplx = check_real_dtype(dtype)
        copy = torch.arange(self.d_model, device=self.D.device) % self.n_ssm
        A = torch.complex(-torch.exp(self.A_real.to(real)), -self.A_imag.to(real))[copy]
        Delta = step_rescale * torch.exp(self.log_dt.to(real))[:, None]
        log_lam, lam_bar, gamma = discretize(A, Delta, self.discretization)
        B_bar = gamma * as_complex(self.B).to(cplx)[copy]
        return log_lam, lam_bar, B_bar, as_complex(self.C).to(cplx)

    def discretized_system(self, dtype=None, step_rescale=None):
        """The layer as one block-diagonal MIMO system (LAST paper Sec. 2.2): state i = h·N/2 + n
        has B̄ row and C column nonzero only in channel h."""
        rescale = self.step_rescale if step_rescale is None else float(step_rescale)
        _, lam_bar, B_bar, C = self._per_channel(rescale, dtype)
        H, N2 = lam_bar.shape
        eye = torch.eye(H, dtype=B_bar.dtype, device=B_bar.device)
        B_mimo = (B_bar[:, :, None] * eye[:, None, :]).reshape(H * N2, H)  # [n, H]
        C_mimo = (C[:, :, None, :] * eye[None, :, :, None]).reshape(C.shape[0], H, H * N2)  # [d, H, n]
        return lam_bar.reshape(-1), B_mimo, C_mimo

    def state_norms(self, dtype=None, step_rescale=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What per-state scores need, without the dense block-diagonal B̄ and C of
        :meth:`discretized_system`: ``lam_bar: complex [n]``, ``B_sq: real [n]`` = ‖B̄_i‖² = |B̄_{h,k}|²
        and ``C_sq: real [d, n]`` = ‖C_i‖² = |C_{c,h,k}|², in the same state order (i = h·N/2 + k)."""
        rescale = self.step_rescale if step_rescale is None else float(step_rescale)
        _, lam_bar, B_bar, C = self._per_channel(rescale, dtype)
        return lam_bar.reshape(-1), B_bar.abs().square().reshape(-1), C.abs().square().reshape(C.shape[0], -1)

    def param_roles(self) -> dict[str, str]:
        roles = {"A_real": "A", "A_imag": "A", "C": "C", "D": "D", "log_dt": "dt"}
        if self.trainable_B:
            roles["B"] = "B"
        return roles

    def config(self) -> dict[str, Any]:
        return dict(
            d_model=self.d_model, d_state=self.d_state, bidirectional=self.bidirectional,
            discretization=self.discretization, init=self.init, dt_min=self.dt_min, dt_max=self.dt_max,
            n_ssm=self.n_ssm, trainable_B=self.trainable_B, step_rescale=self.step_rescale,
        )

    @torch.no_grad()
    def compact(self) -> S4D:
        """Remove masked modes: each channel keeps its active modes (in their original order) in the
        first slots, and the layer shrinks to the largest per-channel count. Channels with fewer
        active modes carry masked filler slots. A and B become per-channel (n_ssm = H)."""
        H, N2 = self.d_model, self.n_modes
        mask = self.state_mask.view(H, N2)
        width = int(mask.sum(1).max())
        if width == 0:
            raise ValueError("cannot compact an S4D layer whose states are all masked; keep at least one")
        # Stable sort of "not kept" puts each channel's kept modes first, in their original order.
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]  # [H, width]
        copy = torch.arange(H, device=order.device) % self.n_ssm
        new = S4D(**(self.config() | {"d_state": 2 * width, "n_ssm": H})).to(self.D.device)
        new.A_real.copy_(self.A_real[copy].gather(1, order))
        new.A_imag.copy_(self.A_imag[copy].gather(1, order))
        new.B.copy_(self.B[copy].gather(1, order[..., None].expand(-1, -1, 2)))
        idx = order[None, :, :, None].expand(self.C.shape[0], -1, -1, 2)
        new.C.copy_(self.C.gather(2, idx))
        new.D.copy_(self.D)
        new.log_dt.copy_(self.log_dt)
        new.state_mask.copy_(mask.gather(1, order).reshape(-1))
        return new

    # -- computation --------------------------------------------------------------------------
    def _forward(self, u: torch.Tensor, step_rescale: float) -> torch.Tensor:
        log_lam, _, B_bar, C = self._per_channel(step_rescale)
        Cp = C * (B_bar * self.state_mask.view_as(B_bar))  # fold B̄ into C (s4's C' = C·B̄)
        K = vandermonde_kernel(Cp, log_lam, u.shape[1])  # [d, H, L]
        y = fft_conv(u.transpose(1, 2), K).transpose(1, 2)
        return y + self.D * u

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state} ({self.n_modes} modes/channel, "
                f"{self.n_active}/{self.n_states} active), n_ssm={self.n_ssm}, init={self.init}, "
                f"bidirectional={self.bidirectional}, discretization={self.discretization}")
