"""HiPPO-LegS matrices and the diagonal (normal-part) initializations built from them.

S4D-LegS (Gu et al., 2022, "On the Parameterization and Initialization of Diagonal State Space
Models") and S5's HiPPO-N initialization (Smith et al., 2023, Sec. 4.2) both diagonalize the
*normal part* of HiPPO-LegS, S = A + p pᵀ, which equals −½·I plus a skew-symmetric matrix. Its
eigenvalues are −½ + iω; we diagonalize the Hermitian matrix −i·S in float64, because the
eigenvectors V are ill-conditioned for larger sizes in float32.
"""

from __future__ import annotations

import math

import torch


def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HiPPO-LegS transition A, input B and low-rank correction p, all float64.

    A[n, k] = −√(2n+1)√(2k+1) for n > k, −(n+1) for n = k, 0 above the diagonal;
    B[n] = √(2n+1); p[n] = √(n + ½).

    Returns ``A: float64 [N, N]``, ``B: float64 [N]``, ``p: float64 [N]``.
    """
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(n + 1)
    return A, r.clone(), torch.sqrt(n + 0.5)


def legs_normal_eig(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of the normal part S = A + p pᵀ of HiPPO-LegS of size N (N even).

    Only the N/2 eigenvalues with negative imaginary part are kept (the other half are their
    conjugates), in ascending order of imaginary part, together with their eigenvectors.

    Returns ``Lambda: complex128 [N/2]`` (real part exactly −½) and ``V: complex128 [N, N/2]``
    whose columns are orthonormal, so V⁻¹ restricted to this half is Vᴴ.
    """
    if N % 2 != 0 or N <= 0:
        raise ValueError(f"HiPPO-LegS size must be a positive even number (conjugate pairs), got {N}")
    A, _, p = hippo_legs(N)
    S = A + p[:, None] * p[None, :]
    lam_re = torch.diagonal(S).mean()  # = −½ for every mode
    lam_im, V = torch.linalg.eigh(S * -1j)  # −iS is Hermitian because S + ½I is skew-symmetric
    lam = lam_re + 1j * lam_im
    return lam[: N // 2].to(torch.complex128), V[:, : N // 2].to(torch.complex128)


def s4d_init(init: str, N: int, B_clip: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """S4D diagonal initializations for N/2 stored modes (N is the full per-channel state size).

    - ``lin``:  A_n = −½ − iπn,                       B_n = 1
    - ``inv``:  A_n = −½ − i(N/π)(N/(2n+1) − 1),       B_n = 1
    - ``legs``: A_n = −½ + iω_n with ω_n < 0 the imaginary parts of the normal-part eigenvalues of
      HiPPO-LegS(N); B = Vᴴ·B_LegS with its imaginary part clipped to [−B_clip, B_clip], as in the s4
      reference (which omits the ½ factor the theory calls for).

    Returns ``A: complex128 [N/2]`` and ``B: complex128 [N/2]``.
    """
    if N % 2 != 0 or N <= 0:
        raise ValueError(f"S4D d_state must be a positive even number (N/2 conjugate pairs), got {N}")
    n = torch.arange(N // 2, dtype=torch.float64)
    if init == "lin":
        A = -0.5 - 1j * math.pi * n
        B = torch.ones(N // 2, dtype=torch.complex128)
    elif init == "inv":
        A = -0.5 - 1j * (N / math.pi) * (N / (2 * n + 1) - 1)
        B = torch.ones(N // 2, dtype=torch.complex128)
    elif init == "legs":
        A, V = legs_normal_eig(N)
        _, B_legs, _ = hippo_legs(N)
        B = V.conj().T @ B_legs.to(torch.complex128)
        B = torch.complex(B.real, B.imag.clamp(-B_clip, B_clip))
    else:
        raise ValueError(f"unknown S4D init {init!r}; choose one of 'lin', 'inv', 'legs'")
    return A.to(torch.complex128), B


def block_diag_hippo_n(P_full: int, blocks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """S5's block-diagonal HiPPO-N initialization (lindermanlab/S5 ``make_DPLR_HiPPO`` tiled J times).

    P_full real states are split into J blocks of size P_full/J; each block is the normal part of
    HiPPO-LegS of that size, of which the half with negative imaginary part is kept (conjugate
    symmetry), so P = P_full/2 eigenvalues are stored.

    Returns ``Lambda: complex128 [P]``, ``V: complex128 [P_full, P]`` (block-diagonal) and
    ``Vinv: complex128 [P, P_full]`` (block-diagonal Vᴴ).
    """
    if blocks <= 0 or P_full % blocks != 0 or (P_full // blocks) % 2 != 0:
        raise ValueError(
            f"S5 d_state={P_full} must split into blocks={blocks} equal blocks of even size "
            f"(d_state % (2*blocks) == 0)"
        )
    lam, V = legs_normal_eig(P_full // blocks)
    Lambda = lam.repeat(blocks)
    V_full = torch.block_diag(*([V] * blocks))
    Vinv = torch.block_diag(*([V.conj().T] * blocks))
    return Lambda, V_full, Vinv


def lecun_normal_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """JAX's ``lecun_normal``: a normal truncated at ±2σ, rescaled so the std is exactly 1/√fan_in."""
    # 0.87962566 is the std of a unit normal truncated to [−2, 2]; dividing by it restores 1/√fan_in.
    std = (1.0 / math.sqrt(fan_in)) / 0.87962566103423978
    return torch.nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)
