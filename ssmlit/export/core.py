"""Export a model's streaming form as files that run without ssmlit, checked before they are written.

What is exported is :class:`ssmlit.models.StreamingModel`, the real-valued frame function
``(x, state) → (logits, state)`` (complex arithmetic as real and imaginary parts, every decay of
the frame scan precomputed), with a dynamic batch dimension:

- ``onnx``: an ONNX graph (``torch.onnx.export``, dynamo exporter) for onnxruntime or any ONNX
  runtime; no torch needed to run it.
- ``torch_export``: a ``torch.export`` program (``.pt2``), loaded with ``torch.export.load`` by
  plain torch. (TorchScript is deprecated as of torch 2.13 and not offered.)

Each artifact is run, before anything is written, on a check stream frame by frame against
:meth:`ssmlit.models.SequenceModel.step`; the metadata (``<name>.json``, also embedded in each
file) lists the input and state layouts and the check's max |Δlogit|.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssmlit.models import SequenceModel, StreamingModel
from ssmlit.utils import atomic_write_bytes, atomic_write_text

from .runtime import META_KEY, OnnxStream, load_torch_export, onnx_available

FORMATS: dict[str, str] = {"onnx": ".onnx", "torch_export": ".pt2"}


class ExportInputError(ValueError):
    """Bad input to the export (options, checkpoint or a model that cannot stream)."""


class ExportCheckError(RuntimeError):
    """An exported artifact disagrees with ``model.step`` on the check stream (nothing was written)."""


def check_formats(value: Any, need_runtime: bool = True) -> list[str]:
    """``"onnx"``, ``"torch_export"``, ``"all"`` or a list of the first two → the validated list
    (with ``need_runtime``, also that the packages ONNX export needs are installed)."""
    items = [value] if isinstance(value, str) else list(value) if value is not None else []
    if items == ["all"]:
        items = list(FORMATS)
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ExportInputError(f"unknown export format {bad[0] if bad else value!r}; choose from "
                               f"{sorted(FORMATS)} (or all, or a list of them)")
    formats = list(dict.fromkeys(items))
    if need_runtime and "onnx" in formats and (missing := onnx_available()):
        raise ExportInputError(missing)
    return formats


def check_frame(frame: Any) -> int:
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 1:
        raise ExportInputError(f"frame must be an integer >= 1 (steps per call), got {frame!r}")
    return frame


def streaming_model(model: SequenceModel, frame: int = 1, step_rescale: float | None = None) -> StreamingModel:
    """``model.streaming(...)`` on the CPU, with cannot-stream errors as :class:`ExportInputError`."""
    try:
        return model.streaming(frame, step_rescale).cpu().eval()
    except ValueError as e:
        raise ExportInputError(f"this model cannot be exported as a stream: {e}") from None


def metadata(stream: StreamingModel, step_rescale: float | None) -> dict[str, Any]:
    """Input, state and output layout of the exported function (what a deployment needs)."""
    x_shape = ["batch", stream.frame] + ([] if stream.tokens else [stream.d_input])
    states = stream.state_shapes()
    return dict(
        format="ssmlit.stream/1", frame=stream.frame, step_rescale=step_rescale, pooling=stream.pooling,
        d_output=stream.d_output,
        input=dict(name="x", dtype="int64" if stream.tokens else "float32", shape=x_shape),
        state=[dict(name=n, dtype="float32", shape=["batch", *s]) for n, s in states],
        outputs=["logits"] + [f"{n}_next" for n, _ in states],
        usage=("state = zeros of the listed shapes; for each frame of `frame` steps: "
               "logits, *state = run(x, *state). logits after the last step equal the full model's output "
               "on the whole sequence (pooling over every step seen since the zero state)"),
    )


def _example(stream: StreamingModel, batch: int = 2) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(0)
    if stream.tokens:
        x = torch.randint(0, stream.encoder.num_embeddings, (batch, stream.frame), generator=g)
    else:
        x = torch.randn(batch, stream.frame, stream.d_input, generator=g)
    return x, stream.init_state(batch)


def _dynamic_batch(n_state: int) -> dict[str, Any]:
    batch = torch.export.Dim("batch", min=1)
    return {"x": {0: batch}, "state": tuple({0: batch} for _ in range(n_state))}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters log optional-dependency notes and warnings that say nothing about our model."""
    # onnxscript's optimizer logs each rewrite at INFO, which a root logger set up by Hydra prints.
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def to_torch_export(stream: StreamingModel, meta: dict[str, Any]) -> bytes:
    """The ``.pt2`` bytes of ``stream`` (metadata embedded as ``stream.json``)."""
    x, state = _example(stream)
    with _quiet(), torch.no_grad():
        program = torch.export.export(stream, (x, state), dynamic_shapes=_dynamic_batch(len(state)))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={"stream.json": json.dumps(meta)})
    return buf.getvalue()


def to_onnx(stream: StreamingModel, meta: dict[str, Any]) -> bytes:
    """The ``.onnx`` bytes of ``stream`` (metadata embedded under ``ssmlit_stream``)."""
    x, state = _example(stream)
    names = [s["name"] for s in meta["state"]]
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(stream, (x, state), dynamo=True, dynamic_shapes=_dynamic_batch(len(state)),
                                    input_names=["x", *names], output_names=meta["outputs"], verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    return proto.SerializeToString()


BUILDERS: dict[str, Callable[[StreamingModel, dict[str, Any]], bytes]] = {
    "onnx": to_onnx, "torch_export": to_torch_export,
}


def runner(fmt: str, data: bytes, threads: int = 1) -> Callable[[np.ndarray, list[np.ndarray]],
                                                                 tuple[np.ndarray, list[np.ndarray]]]:
    """A numpy-in, numpy-out ``(x, state) → (logits, state)`` over the artifact's bytes."""
    if fmt == "onnx":
        return OnnxStream(data, threads)
    module, _ = load_torch_export(data)

    def run(x: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        with torch.no_grad():
            logits, new = module(torch.from_numpy(x), tuple(torch.from_numpy(s) for s in state))
        return logits.numpy(), [s.numpy() for s in new]

    return run


def check_input(model: SequenceModel, frame: int, batch: int = 4, frames: int = 8, seed: int = 0) -> torch.Tensor:
    """A synthetic check stream of ``frames`` frames: N(0, 1) inputs, or uniform token ids."""
    g = torch.Generator().manual_seed(seed)
    L = frame * frames
    if model.tokens:
        return torch.randint(0, model.encoder.num_embeddings, (batch, L), generator=g)
    return torch.randn(batch, L, model.encoder.in_features, generator=g)


def reference_logits(model: SequenceModel, x: torch.Tensor, frame: int, step_rescale: float | None = None
                     ) -> tuple[np.ndarray, float]:
    """``model.step`` frame by frame over ``x`` (the length a multiple of ``frame``): logits after
    every frame ``[frames, B, d_output]``, and the max |Δlogit| of the last against ``model(x)``."""
    was_training = model.training
    model.eval()
    try:
        state = model.init_state(x.shape[0], x.device)
        out = []
        for k in range(0, x.shape[1], frame):
            logits, state = model.step(x[:, k:k + frame], state, step_rescale)
            out.append(logits)
        with torch.no_grad():
            full = model(x if model.tokens else x.float(), None, step_rescale)
    finally:
        model.train(was_training)
    return torch.stack(out).cpu().numpy(), float((out[-1] - full).abs().max())


def compare(run: Callable, x: torch.Tensor, frame: int, ref: np.ndarray, state: list[np.ndarray]
            ) -> dict[str, float]:
    """Run an artifact over ``x`` frame by frame from ``state``; max |Δlogit| and prediction agreement
    against ``ref`` (from :func:`reference_logits`)."""
    xs = x.cpu().numpy()
    got = []
    for k in range(0, xs.shape[1], frame):
        logits, state = run(np.ascontiguousarray(xs[:, k:k + frame]), state)
        got.append(logits)
    out = np.stack(got)
    return dict(max_abs_logit_diff=float(np.abs(out - ref).max()),
                prediction_agreement=float((out.argmax(-1) == ref.argmax(-1)).mean()))


def export_streaming(
    model: SequenceModel,
    out_dir: str | Path,
    formats: Sequence[str] | str = ("onnx", "torch_export"),
    frame: int = 1,
    step_rescale: float | None = None,
    name: str = "stream",
    check_x: torch.Tensor | None = None,
    tolerance: float = 1e-3,
    source: str | None = None,
) -> dict[str, Any]:
    """Export ``model``'s streaming form, check every artifact, then write the files atomically.

    Args:
        model: a unidirectional, non-retrieval :class:`SequenceModel` (CPU).
        out_dir: where ``<name>.onnx`` / ``<name>.pt2`` and ``<name>.json`` go (created if needed).
        formats: see :data:`FORMATS`.
        frame: steps per call of the exported function.
        step_rescale: multiplies every Δ (default: each layer's own).
        name: file stem.
        check_x: the check stream ``[B, frames·frame(, d_input)]`` (default :func:`check_input`).
        tolerance: largest accepted max |Δlogit| relative to max(1, max |logit|).
        source: recorded in the metadata (e.g. the checkpoint path).

    Returns:
        The metadata written to ``<name>.json``: layouts, ``files`` and ``checks`` (per format:
        ``max_abs_logit_diff`` and ``prediction_agreement`` against ``model.step``; and
        ``step_vs_forward``, the stream's final logits against the parallel forward).

    Raises:
        ExportInputError: bad options or a model that cannot stream; nothing is written.
        ExportCheckError: an artifact disagrees with ``model.step``; nothing is written.
    """
    formats = check_formats(formats)
    frame = check_frame(frame)
    model = model.cpu()
    stream = streaming_model(model, frame, step_rescale)
    x = check_input(model, frame) if check_x is None else check_x.cpu()
    if x.shape[1] % frame:
        raise ExportInputError(f"the check stream's length {x.shape[1]} is not a multiple of frame={frame}")
    ref, step_vs_forward = reference_logits(model, x, frame, step_rescale)
    meta = metadata(stream, step_rescale) | {"source": source, "model": model.config()}
    blobs, checks = {}, {}
    scale = max(1.0, float(np.abs(ref).max()))
    for fmt in formats:
        blobs[fmt] = BUILDERS[fmt](stream, meta)
        zeros = [s.numpy() for s in stream.init_state(x.shape[0])]
        checks[fmt] = compare(runner(fmt, blobs[fmt]), x, frame, ref, zeros)
        if checks[fmt]["max_abs_logit_diff"] > tolerance * scale:
            raise ExportCheckError(f"the {fmt} export differs from model.step by max |Δlogit| = "
                                   f"{checks[fmt]['max_abs_logit_diff']:.3g} (> {tolerance:g} × {scale:.3g}); "
                                   "nothing was written")
    out = Path(out_dir)
    files = {fmt: f"{name}{FORMATS[fmt]}" for fmt in formats}
    report = meta | dict(files=files, checks=dict(
        batch=int(x.shape[0]), steps=int(x.shape[1]), step_vs_forward=step_vs_forward, **checks))
    for fmt, data in blobs.items():
        atomic_write_bytes(out / files[fmt], data)
    atomic_write_text(out / f"{name}.json", json.dumps(report, indent=2))
    return report
