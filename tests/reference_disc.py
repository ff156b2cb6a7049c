"""An independent float64 discretization reference, built from a layer's raw parameters.

Nothing here calls ``ssmlit.models.discretize`` or a layer's ``discretized_system()``: the continuous
system (Λ, B̃, Δ) is read from the parameters as the S5 and S4D papers define them, and discretized
by the textbook formulas in NumPy/SciPy:

- ZOH: the matrix exponential of the augmented system (Van Loan's block form). For one state with
  eigenvalue λ, input row b (H inputs) and step Δ,

      expm( [[λΔ, Δ·b], [0, 0]] ) = [[λ̄, B̄], [0, I]],   λ̄ = e^{λΔ},  B̄ = ∫₀^Δ e^{λs} ds · b,

  which holds for every state separately because Λ is diagonal (S5 has one Δ per state).
- bilinear, by its definition: Ā = (I − ΔΛ/2)⁻¹(I + ΔΛ/2), B̄ = (I − ΔΛ/2)⁻¹·Δ·B̃, solved as a
  dense linear system.

The layer-versus-reference tests then compare the layer's outputs with a sequential recurrence
over this system, so a wrong discretization in the package cannot hide in its own reference.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from ssmlit.models import S4D, S5


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def zoh_expm(lam: np.ndarray, B: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ZOH of the diagonal system via the augmented matrix exponential, one state at a time.

    Args:
        lam: complex128 [n], continuous eigenvalues.
        B: complex128 [n, H], continuous input rows.
        delta: float64 [n], the step of each state.

    Returns:
        ``lam_bar: complex128 [n]``, ``B_bar: complex128 [n, H]``.
    """
    n, H = B.shape
    M = np.zeros((n, 1 + H, 1 + H), dtype=np.complex128)
    M[:, 0, 0] = lam * delta
    M[:, 0, 1:] = delta[:, None] * B
    E = scipy.linalg.expm(M)  # batched over the leading axis
    lam_bar, B_bar = E[:, 0, 0], E[:, 0, 1:]
    return lam_bar, B_bar


def bilinear_solve(lam: np.ndarray, B: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear (Tustin) discretization by its definition, with dense matrices.

    Args and returns as :func:`zoh_expm`.
    """
    A = np.diag(lam)
    Dl = np.diag(delta.astype(np.complex128))
    left = np.eye(lam.size) - Dl @ A / 2
    A_bar = np.linalg.solve(left, np.eye(lam.size) + Dl @ A / 2)
    B_bar = np.linalg.solve(left, Dl @ B)
    return np.diag(A_bar).copy(), B_bar


def _discretize(method: str, lam, B, delta):
    if method == "zoh":
        return zoh_expm(lam, B, delta)
    if method == "bilinear":
        return bilinear_solve(lam, B, delta)
    raise AssertionError(f"reference has no discretization {method!r}")


def continuous_s5(layer: S5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S5's (Λ, B̃, Δ) from its parameters: Λ = Λ_re + iΛ_im (Re clipped at −1e-4 with
    ``clip_eigs``), B̃ = B viewed as complex, Δ = exp(log_step) per state."""
    re = _np(layer.Lambda_re)
    if layer.clip_eigs:
        re = np.minimum(re, -1e-4)
    lam = re + 1j * _np(layer.Lambda_im)
    B = _np(layer.B[..., 0]) + 1j * _np(layer.B[..., 1])
    return lam, B, np.exp(_np(layer.log_step))


def continuous_s4d(layer: S4D) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S4D's per-(channel, mode) SISO systems, flattened in the protocol's state order i = h·N/2 + n:
    A = −exp(A_real) − i·A_imag of copy h mod n_ssm, scalar B of that copy, Δ_h = exp(log_dt[h])."""
    H, S = layer.d_model, layer.n_ssm
    A = -np.exp(_np(layer.A_real)) - 1j * _np(layer.A_imag)  # [S, N2]
    Bc = _np(layer.B[..., 0]) + 1j * _np(layer.B[..., 1])  # [S, N2]
    copy = [h % S for h in range(H)]
    dt = np.exp(_np(layer.log_dt))  # [H]
    N2 = A.shape[1]
    lam = np.concatenate([A[c] for c in copy])
    b = np.concatenate([Bc[c] for c in copy])
    delta = np.repeat(dt, N2)
    return lam, b, delta


@torch.no_grad()
def textbook_system(layer, step_rescale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer's discrete system in the protocol's shapes, computed only from raw parameters.

    Returns:
        ``lam_bar: complex128 [n]``, ``B_bar: complex128 [n, H]``, ``C: complex128 [d, H, n]``.
    """
    rescale = layer.step_rescale if step_rescale is None else float(step_rescale)
    C_raw = _np(layer.C[..., 0]) + 1j * _np(layer.C[..., 1])
    if isinstance(layer, S5):
        lam, B, delta = continuous_s5(layer)
        lam_bar, B_bar = _discretize(layer.discretization, lam, B, rescale * delta)
        C = C_raw  # [d, H, P]
    elif isinstance(layer, S4D):
        lam, b, delta = continuous_s4d(layer)
        lam_bar, b_bar = _discretize(layer.discretization, lam, b[:, None], rescale * delta)
        H, N2 = layer.d_model, layer.n_modes
        # SISO channel h as one block of a block-diagonal MIMO system (LAST paper Sec. 2.2).
        B_bar = np.zeros((H * N2, H), dtype=np.complex128)
        C = np.zeros((C_raw.shape[0], H, H * N2), dtype=np.complex128)
        for h in range(H):
            rows = slice(h * N2, (h + 1) * N2)
            B_bar[rows, h] = b_bar[rows, 0]
            C[:, h, rows] = C_raw[:, h, :]
    else:
        raise TypeError(f"no textbook reference for {type(layer).__name__}")
    return torch.from_numpy(lam_bar), torch.from_numpy(B_bar), torch.from_numpy(C)
