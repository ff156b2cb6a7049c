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

Bidirectional layers use a second C. By default (``bidirectional_convention="s5"``) both directions
include the current step, as S5 does; ``"s4"`` is state-spaces/s4's two-sided kernel, whose
anti-causal half is shifted by one step so the backward direction skips the current input:

    y_t = Σ_{j≥0} k0[j]·u_{t−j} + Σ_{m≥1} k1[m−1]·u_{t+m} + D·u_t   (s4)
    y_t = Σ_{j≥0} k0[j]·u_{t−j} + Σ_{m≥0} k1[m]·u_{t+m}   + D·u_t   (s5)

The two are the same family: an s4-convention layer with backward coefficients C1 equals an
s5-convention layer with C1/λ̄ and D − 2·Re Σ_n C1_n·B̄_n/λ̄_n (:func:`s4_to_s5_convention`). For
the diagonal-system protocol the shift is a one-step delay of the backward output
(``backward_delay = 1``): ``C[1]`` stays the layer's own C1, and since a pure delay leaves
|G(e^{iω})| unchanged, every per-state score (H∞ norms, energies, the bidirectional bounds) is the
same function of (λ̄, B̄, C) in both conventions.

``l_max`` reproduces s4's kernel length rule: min(L, round(l_max / rate)) taps, ``rate`` being the
step rescale; beyond that the convolution is truncated (an FIR approximation of the system the
protocol describes). ``imag_init_min`` reproduces s4's ``inv_transform`` clamp of the initial
−Im A (1e-4 there), which moves S4D-Lin's mode 0 off the real axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssmlit.errors import check_bool, check_float, check_int

from .base import DiagonalSSM, as_complex, check_real_dtype, complex_param
from .discretize import DISCRETIZATIONS, discretize
from .hippo import s4d_init

S4D_INITS = ("legs", "inv", "lin")
BIDIRECTIONAL_CONVENTIONS = ("s5", "s4")


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


def fft_conv(u: torch.Tensor, K: torch.Tensor, shift: bool = False) -> torch.Tensor:
    """Convolve ``u: real [B, H, L]`` with ``K: real [d, H, L]``.

    d = 1: causal, y_t = Σ_{s≤t} K0[t−s] u_s. d = 2: adds the anti-causal Σ_{s≥t} K1[s−t] u_s
    (lag 0 included in both, the S5 convention), or with ``shift`` Σ_{s>t} K1[s−t−1] u_s (s4's
    convention). Zero-padding to 2L avoids circular wrap-around.
    """
    L = u.shape[-1]
    k = F.pad(K[0], (0, L))
    if K.shape[0] == 2:
        # K1[j] sits at circular position −j ≡ 2L − j (K1[0] at position 0), or with the shift at
        # −(j + 1), which is where the flipped, left-padded K1 already lies.
        back = F.pad(K[1].flip(-1), (L, 0))
        k = k + (back if shift else torch.roll(back, 1, dims=-1))
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
        bidirectional_convention: ``"s5"`` (both directions include the current step) or ``"s4"``
            (the backward direction starts one step ahead; module docstring).
        l_max: if set, the kernel has min(L, round(l_max / step_rescale)) taps (s4's rule).
        imag_init_min: lower bound on the initial −Im A (s4: 1e-4; 0 keeps the init as is).
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
        bidirectional_convention: str = "s5",
        l_max: int | None = None,
        imag_init_min: float = 0.0,
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
        if bidirectional_convention not in BIDIRECTIONAL_CONVENTIONS:
            raise ValueError(f"unknown bidirectional_convention {bidirectional_convention!r}; choose one of "
                             f"{BIDIRECTIONAL_CONVENTIONS} (s5: both directions include the current step; s4: "
                             "the backward direction skips it)")
        if l_max is not None and (isinstance(l_max, bool) or not isinstance(l_max, int) or l_max < 1):
            raise ValueError(f"l_max must be a positive integer (kernel taps at rate 1) or None, got {l_max!r}")
        if isinstance(imag_init_min, bool) or not isinstance(imag_init_min, (int, float)) or not imag_init_min >= 0:
            raise ValueError(f"imag_init_min must be a number >= 0, got {imag_init_min!r}")
        self.d_model, self.d_state, self.n_ssm = d_model, d_state, S
        self.bidirectional, self.discretization, self.init = bidirectional, discretization, init
        self.dt_min, self.dt_max, self.trainable_B = dt_min, dt_max, trainable_B
        self.step_rescale = float(step_rescale)
        self.bidirectional_convention, self.l_max = bidirectional_convention, l_max
        self.imag_init_min = float(imag_init_min)

        A, B = s4d_init(init, d_state)  # [N2] each
        N2, H, d = A.numel(), d_model, 2 if bidirectional else 1
        self.A_real = nn.Parameter(torch.log(-A.real).float().repeat(S, 1))  # Re A = −exp(A_real)
        self.A_imag = nn.Parameter((-A.imag).clamp(min=self.imag_init_min).float().repeat(S, 1))  # Im A = −A_imag
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
    def backward_delay(self) -> int:
        """1 in the s4 convention: the backward output is read one step ahead (module docstring)."""
        return int(self.bidirectional and self.bidirectional_convention == "s4")

    def kernel_length(self, L: int, step_rescale: float) -> int:
        """Taps of the convolution kernel for an input of length L: L, or s4's min(L, round(l_max/rate))."""
        if self.l_max is None:
            return L
        return max(1, min(L, round(self.l_max / step_rescale)))

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
            bidirectional_convention=self.bidirectional_convention, l_max=self.l_max,
            imag_init_min=self.imag_init_min,
        )

    def compaction_slices(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Tensor name → how a tensor of that parameter's (or buffer's) shape maps to the compacted
        layer (see :meth:`compact`): ``A_*`` [S, N2] and ``B`` [S, N2, 2] are first expanded to one
        copy per channel (h → h mod S), then each channel's kept modes are gathered into the first
        ``width`` slots; ``C`` [d, H, N2, 2] and ``state_mask`` [H·N2] are gathered the same way;
        ``D`` and ``log_dt`` [H] are unchanged.

        The same maps carry the optimizer's per-parameter state over (:mod:`ssmlit.training.surgery`).
        """
        H, N2 = self.d_model, self.n_modes
        mask = self.state_mask.view(H, N2)
        width = int(mask.sum(1).max())
        if width == 0:
            raise ValueError("cannot compact an S4D layer whose states are all masked; keep at least one")
        # Stable sort of "not kept" puts each channel's kept modes first, in their original order.
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]  # [H, width]
        copy = torch.arange(H, device=order.device) % self.n_ssm

        def shared(t: torch.Tensor) -> torch.Tensor:  # [S, N2, ...] → [H, width, ...]
            idx = order.to(t.device)
            idx = idx.view(H, width, *([1] * (t.dim() - 2))).expand(H, width, *t.shape[2:])
            return t[copy.to(t.device)].gather(1, idx)

        def channels(t: torch.Tensor) -> torch.Tensor:  # [d, H, N2, 2] → [d, H, width, 2]
            idx = order.to(t.device)[None, :, :, None].expand(t.shape[0], -1, -1, t.shape[3])
            return t.gather(2, idx)

        def flat_mask(t: torch.Tensor) -> torch.Tensor:  # [H·N2] → [H·width]
            return t.view(H, N2).gather(1, order.to(t.device)).reshape(-1)

        return {"A_real": shared, "A_imag": shared, "B": shared, "C": channels, "D": torch.clone,
                "log_dt": torch.clone, "state_mask": flat_mask}

    @torch.no_grad()
    def compact(self) -> S4D:
        """Remove masked modes: each channel keeps its active modes (in their original order) in the
        first slots, and the layer shrinks to the largest per-channel count. Channels with fewer
        active modes carry masked filler slots. A and B become per-channel (n_ssm = H)."""
        slices = self.compaction_slices()
        width = int(self.state_mask.view(self.d_model, self.n_modes).sum(1).max())
        new = S4D(**(self.config() | {"d_state": 2 * width, "n_ssm": self.d_model})).to(self.D.device)
        for name, take in slices.items():
            getattr(new, name).copy_(take(getattr(self, name)))
        return new

    def _recurrent_form(self, step_rescale: float) -> dict[str, Any]:
        """Per channel, its active modes first (the order of :meth:`compact`), padded to the largest
        active count w with zero-input, zero-output filler: log λ̄, B̄, C complex128 [H, w]."""
        log_lam, _, B_bar, C = self._per_channel(step_rescale, torch.complex128)  # [H, N2] each, C [d, H, N2]
        mask = self.state_mask.view_as(log_lam)
        width = int(mask.sum(1).max())
        if width == 0:
            raise ValueError("cannot stream an S4D layer whose states are all masked; keep at least one")
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]
        kept = mask.gather(1, order)
        return dict(kind="diag", log_lam=log_lam.gather(1, order), B_bar=B_bar.gather(1, order) * kept,
                    C=C[0].gather(1, order) * kept, D=self.D)

    # -- computation --------------------------------------------------------------------------
    def _forward(self, u: torch.Tensor, step_rescale: float) -> torch.Tensor:
        log_lam, _, B_bar, C = self._per_channel(step_rescale)
        Cp = C * (B_bar * self.state_mask.view_as(B_bar))  # fold B̄ into C (s4's C' = C·B̄)
        L = u.shape[1]
        K = vandermonde_kernel(Cp, log_lam, self.kernel_length(L, step_rescale))  # [d, H, ≤ L]
        K = F.pad(K, (0, L - K.shape[-1]))
        y = fft_conv(u.transpose(1, 2), K, shift=self.backward_delay == 1).transpose(1, 2)
        return y + self.D * u

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state} ({self.n_modes} modes/channel, "
                f"{self.n_active}/{self.n_states} active), n_ssm={self.n_ssm}, init={self.init}, "
                f"bidirectional={self.bidirectional}"
                + (f" ({self.bidirectional_convention} convention)" if self.bidirectional else "")
                + f", discretization={self.discretization}")


@torch.no_grad()
def s4_to_s5_convention(layer: S4D) -> S4D:
    """The s5-convention S4D layer whose outputs equal those of ``layer`` (s4 convention).

    The s4 backward kernel is k1[m−1] = 2·Re Σ_n C1_n B̄_n λ̄_n^{m−1} at lag m ≥ 1. Writing
    λ̄^{m−1} = λ̄^m / λ̄ gives an s5-convention backward kernel with C1' = C1/λ̄, except that this
    one also has a lag-0 tap 2·Re Σ_n C1_n B̄_n / λ̄_n, which D' = D − that tap cancels (active
    states only). Exact at the layer's own ``step_rescale`` (λ̄ and B̄ depend on Δ); masks carry over.

    Args:
        layer: a bidirectional S4D with ``bidirectional_convention="s4"``.

    Returns:
        a new S4D (same device) with ``bidirectional_convention="s5"``, C[1] → C1/λ̄ and D → D'.
    """
    if not (layer.bidirectional and layer.bidirectional_convention == "s4"):
        raise ValueError("s4_to_s5_convention needs a bidirectional S4D layer with bidirectional_convention='s4'")
    new = S4D(**(layer.config() | {"bidirectional_convention": "s5"})).to(layer.D.device)
    new.load_state_dict(layer.state_dict())
    _, lam_bar, B_bar, C = layer._per_channel(layer.step_rescale, torch.complex128)
    active = layer.state_mask.view_as(B_bar)
    C1 = C[1] / lam_bar
    new.C[1].copy_(torch.view_as_real(C1.to(torch.complex64)))
    new.D.sub_((2 * (C1 * B_bar * active).sum(-1).real).to(new.D.dtype))
    return new

