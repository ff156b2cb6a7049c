"""The compression study's streaming export: the selected compact model as ONNX / torch.export
streams (``ssmlit.export``), checked on real test sequences, with its per-step latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ssmlit.export import ExportInputError, export_streaming
from ssmlit.models import SequenceModel

from .efficiency import stream_latency

CHECK_STREAMS = 8  # sequences of the check batch streamed through every artifact
CHECK_STEPS = 1024  # at most this many steps of each (model.step and every artifact run per step)


def cannot_stream(model: SequenceModel) -> str | None:
    """Why ``model`` has no streaming form, or None."""
    try:
        model.streaming()
    except ValueError as e:
        return str(e)
    return None


def export_compact_stream(
    full: SequenceModel, compact: SequenceModel, batch: tuple[torch.Tensor, ...], out_dir: Path,
    formats: list[str], frame: int, source: str, bench: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``compact``'s streaming export into ``out_dir`` and time full vs compact streams.

    Args:
        full, compact: the unpruned and the compacted model.
        batch: ``(x, y, lengths)``, a test batch: its first sequences (cut to a multiple of
            ``frame``, at most :data:`CHECK_STEPS` steps) are the check stream.
        out_dir: the export folder (``stream.onnx``, ``stream.pt2``, ``stream.json``).
        formats, frame: see :func:`ssmlit.export.export_streaming`.
        source: the compact checkpoint's path (recorded in the metadata).
        bench: ``{"warmup", "repeats"}`` to time per-step (frame 1) and per-frame latency at batch 1,
            eager CPU; None: no timing.

    Returns:
        ``{"dir", "files", "checks", "frame", "latency"}``, or ``{"skipped": reason}`` for a model
        that cannot stream (bidirectional, retrieval).
    """
    reason = cannot_stream(compact)
    if reason is not None:
        return {"skipped": reason}
    x = batch[0][:CHECK_STREAMS].cpu()
    steps = min(x.shape[1], CHECK_STEPS) // frame * frame
    try:
        report = export_streaming(compact.cpu(), out_dir, formats, frame, check_x=x[:, :steps] if steps else None,
                                  source=source)
    except ExportInputError as e:
        return {"skipped": str(e)}
    out = dict(dir=str(out_dir), files=report["files"], checks=report["checks"], frame=frame)
    if bench is not None:
        models = {"full": full.cpu(), "compact": compact.cpu()}
        out["latency"] = {f"frame_{f}": stream_latency(models, f, 1, int(bench["warmup"]), int(bench["repeats"]))
                          for f in dict.fromkeys((1, frame))}
        out["latency"]["threads"] = torch.get_num_threads()
    return out
