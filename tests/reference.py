"""Independent float64 references for the tests: plain sequential recurrences over the discrete system
that ``reference_disc.textbook_system`` builds from the layer's raw parameters, never from the
layer's own discretization or fast paths."""

from __future__ import annotations

import torch

from reference_disc import textbook_system


@torch.no_grad()
def recurrence_output(layer, u: torch.Tensor, keep: torch.Tensor | None = None,
                      step_rescale: float | None = None) -> torch.Tensor:
    """y_k = 2·Re(C[0] x_k + C[1] x'_{k+δ}) + D⊙u_k in complex128 with a Python loop over time
    (δ = ``layer.backward_delay``: 0, or 1 for s4's shifted anti-causal kernel; x'_L = 0).

    ``keep`` (bool [n]) selects the states that exist; default: the layer's ``state_mask``. States
    not kept are *deleted* from the system (rows of B̄, columns of C, entries of λ̄), not zeroed.
    """
    lam, B, C = textbook_system(layer, step_rescale=step_rescale)
    keep = layer.state_mask if keep is None else keep
    idx = keep.nonzero().squeeze(1)
    lam, B, C = lam[idx], B[idx], C[..., idx]
    u64 = u.detach().double()
    Bsz, L, _ = u64.shape
    drive = torch.einsum("nh,blh->bln", B, u64.to(torch.complex128))

    def run(drive):
        x = torch.zeros(Bsz, lam.numel(), dtype=torch.complex128)
        out = []
        for k in range(L):
            x = lam * x + drive[:, k]
            out.append(x)
        return torch.stack(out, 1)

    xs = [run(drive)]
    if C.shape[0] == 2:
        back = run(drive.flip(1)).flip(1)
        delay = getattr(layer, "backward_delay", 0)
        if delay:
            back = torch.cat((back[:, delay:], torch.zeros_like(back[:, :delay])), 1)
        xs.append(back)
    y = sum(2 * torch.einsum("hn,bln->blh", C[d], xs[d]).real for d in range(len(xs)))
    return y + layer.D.detach().double() * u64


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.detach().double() - ref.detach()).norm() / ref.detach().norm())
