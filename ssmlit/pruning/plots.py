"""Figures of a pruning result, in the style of the LAST paper's Figures 3 and 4.

- :func:`score_figure`: per layer, the states' scores sorted in descending order, kept ones in
  one colour and pruned ones in another, with the cut (Figure 3, top).
- :func:`pole_figure`: per layer, the discrete poles λ̄ in the complex plane with the unit circle,
  kept and pruned (Figure 4). Only the stored member of each conjugate pair is drawn; its mirror
  image is implied.

Figures are built with matplotlib's object-oriented API (no pyplot state, no display needed).
"""

from __future__ import annotations

import io
import math
import os
import re

import torch
from matplotlib.figure import Figure

from ssmlit.utils import atomic_write_bytes

KEPT, PRUNED = "#1f77b4", "#d62728"


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def _short(name: str) -> str:
    m = re.search(r"blocks\.(\d+)", name)
    return f"layer {m.group(1)}" if m else (name or "layer")


def score_figure(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], title: str = "") -> Figure:
    """Sorted per-layer scores with kept/pruned colouring.

    Args:
        scores: layer name → float [n] (−inf for states masked before scoring; drawn as pruned at
            the bottom of the axis).
        masks: layer name → bool [n], True = kept.
        title: figure title.
    """
    rows, cols = _grid(len(scores))
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    finite = torch.cat([s[torch.isfinite(s) & (s > 0)] for s in scores.values()])
    floor = float(finite.min()) / 10 if finite.numel() else 1e-12
    for i, (name, s) in enumerate(scores.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        s = s.double().cpu()
        order = torch.sort(s, descending=True, stable=True).indices
        vals = s[order].clamp(min=floor).nan_to_num(posinf=float(finite.max()) if finite.numel() else 1.0)
        keep = masks[name].cpu()[order]
        x = torch.arange(1, len(vals) + 1)
        ax.scatter(x[keep], vals[keep], s=6, c=KEPT, label=f"kept ({int(keep.sum())})")
        ax.scatter(x[~keep], vals[~keep], s=6, c=PRUNED, label=f"pruned ({int((~keep).sum())})")
        if keep.any() and (~keep).any():
            ax.axvline(int(keep.sum()) + 0.5, color="gray", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_title(_short(name), fontsize=9)
        ax.set_xlabel("state rank", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def pole_figure(poles: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], title: str = "") -> Figure:
    """Per-layer discrete poles (complex [n]) with the unit circle, kept vs pruned."""
    rows, cols = _grid(len(poles))
    fig = Figure(figsize=(3.0 * cols, 3.0 * rows), layout="constrained")
    t = torch.linspace(0, 2 * math.pi, 400)
    for i, (name, lam) in enumerate(poles.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        lam = lam.detach().cpu().to(torch.complex128)
        keep = masks[name].cpu()
        ax.plot(torch.cos(t), torch.sin(t), color="gray", lw=0.6)
        ax.scatter(lam.real[~keep], lam.imag[~keep], s=8, marker="x", c=PRUNED, lw=0.8, label="pruned")
        ax.scatter(lam.real[keep], lam.imag[keep], s=8, c=KEPT, label="kept")
        ax.set_aspect("equal")
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.1, 1.1)
        slow = (lam - 1).abs() < 0.2
        if slow.sum() >= 3:
            # Trained SSMs crowd their slow modes next to z = 1: zoom in where the decisions are.
            sub = ax.inset_axes((0.04, 0.53, 0.43, 0.43))  # S4D/S5 inits store the Im ≤ 0 member: top is free
            arc = torch.linspace(-0.25, 0.25, 200)
            sub.plot(torch.cos(arc), torch.sin(arc), color="gray", lw=0.6)
            for sel, style in ((slow & ~keep, dict(marker="x", c=PRUNED, lw=0.8)), (slow & keep, dict(c=KEPT))):
                sub.scatter(lam.real[sel], lam.imag[sel], s=6, **style)
            re_, im_ = lam.real[slow], lam.imag[slow]
            pad = 0.1 * float(max(re_.max() - re_.min(), im_.max() - im_.min(), 1e-3))
            sub.set_xlim(float(re_.min()) - pad, min(float(re_.max()) + pad, 1.02))
            sub.set_ylim(float(im_.min()) - pad, float(im_.max()) + pad)
            sub.tick_params(labelsize=5)
            sub.set_facecolor("#fafafa")
        ax.set_title(f"{_short(name)}: {int(keep.sum())}/{keep.numel()} kept", fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=6, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 130) -> None:
    """Write a PNG atomically (no half-written image if interrupted)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
