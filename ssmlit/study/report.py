"""Outputs of the compression study: CSV/JSON rows, paper-style tables, figures, TensorBoard.

Accuracies are fractions in [0, 1] in CSV/JSON (as Lightning logs them) and percentages in
tables and figures. "State dim" is the effective state dimension in real states, 2 × kept
conjugate pairs (P for S5; n_s·H summed over channels for S4D, as in the paper's figures).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssmlit.utils import atomic_write_text

from .core import CurvePoint, Point

FULL_COLOR = "0.35"


def layer_label(i: int) -> str:
    """Column and tick label of the i-th prunable layer (module order; names are in sweep.json)."""
    return f"L{i}"


# -- tables ----------------------------------------------------------------------------------------
def point_rows(points: Sequence[Point], layers: Sequence[str], variants: Sequence[str]) -> list[dict[str, Any]]:
    """One flat row per evaluated model (the CSV): ``kept_L{i}`` are kept conjugate pairs (stored
    eigenvalues) of layer i, ``state_dim_avg`` the layer average of 2 × kept."""
    rows = []
    for p in points:
        row: dict[str, Any] = dict(method=p.method, seed="" if p.seed is None else p.seed, ratio=p.ratio,
                                   achieved_ratio=round(p.achieved_ratio, 6), kept_total=sum(p.kept.values()),
                                   states_total=sum(p.total.values()), state_dim_avg=p.state_dim_avg)
        row |= {f"kept_{layer_label(i)}": p.kept[k] for i, k in enumerate(layers)}
        for n in variants:
            row[f"{n}_acc"] = p.metrics[n].acc
            row[f"{n}_loss"] = p.metrics[n].loss
        rows.append(row)
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default, allow_nan=True) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def curve_dict(c: CurvePoint) -> dict[str, Any]:
    return dict(method=c.method, ratio=c.ratio, achieved_ratio=c.achieved_ratio, n_seeds=c.n_seeds, seeds=c.seeds,
                state_dim_avg=c.state_dim_avg, kept=c.kept,
                acc={n: dict(mean=m, std=s) for n, (m, s) in c.acc.items()},
                loss={n: dict(mean=m, std=s) for n, (m, s) in c.loss.items()})


def _pct(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _acc(v: Sequence[float] | None, n_seeds: int = 1) -> str:
    if v is None:
        return "–"
    mean, std = v
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if n_seeds > 1 else f"{100 * mean:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    lines = [fmt.format(*header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any], variants: Sequence[str], full_state_dim: float) -> str:
    """Both summary tables as markdown (printed and written to ``summary.md``)."""
    v = summary["variant"]
    thr = summary["threshold_points"]
    full_acc = summary["full_acc"]
    parts = []
    ref = summary["reference"]
    if ref is not None:
        header = ["method", "prun.", "state dim", *[f"{n} acc" for n in variants], f"{v} loss (pt)"]
        rows = [["full model", "0%", f"{full_state_dim:.1f}", *[_acc((full_acc[n], 0.0)) for n in variants], "0.00"]]
        for r in ref["rows"]:
            rows.append([r["method"], _pct(r["ratio"]), f"{r['state_dim_avg']:.1f}",
                         *[_acc(r["acc"][n], r["n_seeds"]) for n in variants], f"{r['loss_points']:.2f}"])
        parts.append(f"Paper protocol (LAST Table 2): every method at the largest swept ratio where "
                     f"{ref['method']} loses < {thr:g} pt of {v} accuracy ({_pct(ref['ratio'])})\n\n"
                     + markdown_table(header, rows))
    else:
        parts.append(f"(no reference method ratio: the reference method is not in the sweep or never "
                     f"stays within {thr:g} pt)")
    header = ["method", f"max ratio ({v} loss < {thr:g} pt)", "state dim", f"{v} acc", f"{v} loss (pt)",
              f"AUC ({v} acc %)"]
    rows = []
    for r in summary["per_method"]:
        rows.append([r["method"], _pct(r["ratio"]), "–" if r["state_dim_avg"] is None else f"{r['state_dim_avg']:.1f}",
                     _acc(r["acc"][v] if r["acc"] else None, r["n_seeds"]),
                     "–" if r["loss_points"] is None else f"{r['loss_points']:.2f}",
                     "–" if r["auc"] is None else f"{r['auc']:.2f}"])
    parts.append(f"Per method: the largest swept ratio whose {v} accuracy loss is below {thr:g} pt "
                 f"(full model {100 * full_acc[v]:.2f} %, state dim {full_state_dim:.1f}); AUC = area under "
                 f"{v} accuracy vs ratio over the swept range, divided by that range (mean accuracy, %)\n\n"
                 + markdown_table(header, rows))
    return "\n\n".join(parts) + "\n"


def selection_markdown(sel: dict[str, Any], variants: Sequence[str]) -> str:
    lines = [f"Automatic ratio ({sel['method']}, val loss ≤ {sel['budget_points']:g} pt, validation data only): "
             f"{100 * sel['ratio']:.2f}% requested, {100 * sel['achieved_ratio']:.2f}% achieved",
             f"  val loss {sel['val_loss_points']:.2f} pt; " + ", ".join(
                 f"{n} acc {100 * sel['metrics'][n]['acc']:.2f}% (full {100 * sel['full_metrics'][n]['acc']:.2f}%)"
                 for n in variants)]
    comp = sel.get("compact")
    if comp:
        f, c = comp["full"], comp["compact"]
        lines.append(f"  state dim per layer: {list(f['state_dim'].values())} → {list(c['state_dim'].values())}")
        lines.append(f"  parameters: {f['params']:,} → {c['params']:,} ({c['params'] / f['params']:.2f}×)")
        b = comp.get("bench")
        if b:
            bf, bc = b["full"], b["compact"]
            mem = (f"{bf['peak_memory_bytes'] / 2**20:.1f} → {bc['peak_memory_bytes'] / 2**20:.1f} MiB "
                   f"({bc['peak_memory_bytes'] / bf['peak_memory_bytes']:.2f}×)"
                   if bf["peak_memory_bytes"] and math.isfinite(bf["peak_memory_bytes"]) else "n/a")
            lines.append(f"  inference ({b['device']}, {b['threads']} threads, batch {bf['batch_size']}, median of "
                         f"{b['repeats']} interleaved rounds): {bf['samples_per_s']:.0f} → {bc['samples_per_s']:.0f} "
                         f"samples/s ({bc['speedup']:.2f}× speed); peak memory {mem}")
        lines.append(f"  compact checkpoint: {comp['path']} (max |Δlogit| vs masked {comp['max_abs_logit_diff']:.2e}, "
                     f"same predictions on {100 * comp['prediction_agreement']:.2f}% of {comp['check_variant']})")
        lines.extend(stream_lines(comp.get("stream")))
    return "\n".join(lines) + "\n"


def stream_lines(stream: dict[str, Any] | None) -> list[str]:
    """The streaming export's lines of the selection summary."""
    if not stream:
        return []
    if "skipped" in stream:
        return [f"  streaming export: none ({stream['skipped']})"]
    checks = stream["checks"]
    files = ", ".join(f"{stream['dir']}/{f}" for f in stream["files"].values())
    worst = max(checks[f]["max_abs_logit_diff"] for f in stream["files"])
    agree = min(checks[f]["prediction_agreement"] for f in stream["files"])
    lines = [f"  streaming export (frame {stream['frame']}): {files} (max |Δlogit| vs model.step {worst:.2e}, "
             f"same predictions {100 * agree:.1f}% over {checks['batch']} test sequences × {checks['steps']} steps)"]
    for key, lat in (stream.get("latency") or {}).items():  # frame_1, frame_<F>, threads
        if key == "threads":
            continue
        f, c = lat["full"], lat["compact"]
        lines.append(f"  streaming latency ({f['frame']}-step frames, batch 1, eager CPU, "
                     f"{stream['latency']['threads']} threads): {1e6 * f['seconds_per_call']:.0f} → "
                     f"{1e6 * c['seconds_per_call']:.0f} µs per call ({c['speedup']:.2f}×)")
    return lines


# -- figures ---------------------------------------------------------------------------------------
def _colors(methods: Sequence[str]) -> dict[str, str]:
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def accuracy_figure(
    curve_map: dict[str, list[CurvePoint]], full_acc: dict[str, float], variants: Sequence[str], threshold: float,
    title: str = "",
) -> Figure:
    """Accuracy (%) against achieved pruning ratio (%), one curve per method, one panel per
    variant (LAST paper Figure 2). Stochastic methods: mean with a ±std band. Dashed: the unpruned
    model; dotted: the unpruned accuracy minus ``threshold`` points."""
    n = len(variants)
    fig = Figure(figsize=(4.2 * n + 2.4, 3.6), layout="constrained")
    colors = _colors(list(curve_map))
    for i, v in enumerate(variants):
        ax = fig.add_subplot(1, n, i + 1)
        for method, curve in curve_map.items():
            x = np.array([100 * c.achieved_ratio for c in curve])
            mean = np.array([100 * c.acc[v][0] for c in curve])
            std = np.array([100 * c.acc[v][1] for c in curve])
            several = curve[0].n_seeds > 1
            label = f"{method} (mean ± std, {curve[0].n_seeds} seeds)" if several else method
            ax.plot(x, mean, marker="o", ms=3, lw=1.4, color=colors[method], label=label)
            if several:
                ax.fill_between(x, mean - std, mean + std, color=colors[method], alpha=0.2, lw=0)
        full = 100 * full_acc[v]
        ax.axhline(full, color=FULL_COLOR, ls="--", lw=1, label=f"unpruned ({full:.2f})")
        ax.axhline(full - threshold, color=FULL_COLOR, ls=":", lw=1, label=f"unpruned − {threshold:g} pt")
        ax.set_xlabel("pruning ratio (%)")
        ax.set_ylabel(f"{v} accuracy (%)")
        ax.set_xlim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_title(v, fontsize=10)
        if i == n - 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def remaining_states_figure(
    kept: dict[str, list[dict[str, int]]], total: dict[str, int], ratio: float, title: str = "",
) -> Figure:
    """Remaining state dimension per layer at one ratio, grouped bars per method (LAST paper
    Figure 3, bottom). ``kept``: method → one ``{layer: kept pairs}`` per seed (error bars show
    the std over seeds); ``total``: layer → stored pairs (the unpruned bars)."""
    layers = list(total)
    methods = list(kept)
    groups = len(methods) + 1
    width = 0.8 / groups
    x = np.arange(len(layers))
    fig = Figure(figsize=(min(16.0, 2.6 + 0.22 * len(layers) * groups), 3.4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x - 0.4 + width / 2, [2 * total[k] for k in layers], width, color="white", edgecolor=FULL_COLOR,
           hatch="//", label="unpruned")
    colors = _colors(methods)
    for j, m in enumerate(methods):
        dims = np.array([[2 * s[k] for k in layers] for s in kept[m]], dtype=float)  # [seeds, layers]
        err = dims.std(0, ddof=1) if len(dims) > 1 else None
        ax.bar(x - 0.4 + width * (j + 1.5), dims.mean(0), width, yerr=err, capsize=2, color=colors[m], label=m)
    ax.set_xticks(x, [layer_label(i) for i in range(len(layers))])
    ax.set_xlabel("layer")
    ax.set_ylabel("remaining state dim")
    ax.set_title(title or f"remaining state dimension per layer at {100 * ratio:.0f}% pruning", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    return fig


def figure_rgb(fig: Figure) -> np.ndarray:
    """Render a figure to uint8 [H, W, 3] (for TensorBoard, without pyplot)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# -- TensorBoard -----------------------------------------------------------------------------------
def log_tensorboard(
    log_dir: Path, curve_map: dict[str, list[CurvePoint]], variants: Sequence[str], figures: dict[str, Figure],
    texts: dict[str, str], layer_dims: dict[str, dict[str, float]] | None = None,
) -> None:
    """Write the curves (step = pruning ratio in %, or per mille when the grid needs it), the figures
    and the tables. Earlier sweep event files in ``log_dir`` are removed first, so re-running a
    sweep does not draw two curves on top of each other."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.rglob("events.out.tfevents.*"):
        old.unlink()
    ratios = sorted({c.ratio for cs in curve_map.values() for c in cs})
    scale = 100 if len({round(100 * r) for r in ratios}) == len(ratios) else 1000
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for v in variants:
            for key, idx in (("acc", 0), ("acc_std", 1)):
                by_step: dict[int, dict[str, float]] = {}
                for method, curve in curve_map.items():
                    if key == "acc_std" and curve[0].n_seeds < 2:
                        continue
                    for c in curve:
                        by_step.setdefault(round(scale * c.ratio), {})[method] = 100 * c.acc[v][idx]
                for step, values in sorted(by_step.items()):
                    writer.add_scalars(f"sweep/{v}_{key}", values, step)
        for method, curve in curve_map.items():
            for c in curve:
                writer.add_scalars("sweep/state_dim_avg", {method: c.state_dim_avg}, round(scale * c.ratio))
        for method, dims in (layer_dims or {}).items():
            for i, (_, d) in enumerate(dims.items()):
                writer.add_scalars("sweep/remaining_state_dim_at_plot_ratio", {method: d}, i)
        for name, fig in figures.items():
            writer.add_image(f"sweep/{name}", figure_rgb(fig), 0, dataformats="HWC")
        for name, text in texts.items():
            # TensorBoard renders markdown; indent code-like lines so tables survive.
            writer.add_text(f"sweep/{name}", text, 0)
        writer.add_text("sweep/x_axis", f"scalar steps are the pruning ratio in {'%' if scale == 100 else '‰'}", 0)
    finally:
        writer.close()
