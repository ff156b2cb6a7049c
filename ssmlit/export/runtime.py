"""Running an exported streaming model: what a deployment does, here for checks and benchmarks.

Neither runner imports ssmlit's model code: :class:`OnnxStream` needs only ``onnxruntime`` and
``numpy``, :func:`load_torch_export` only ``torch``. Both follow the calling convention of
:class:`ssmlit.models.StreamingModel`: ``(x, state) → (logits, state)`` where the state starts as
zeros of the shapes listed in the export's metadata (``stream.json``, also embedded in the files).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

META_KEY = "ssmlit_stream"  # metadata entry inside the .onnx / .pt2 files


def onnx_available() -> str | None:
    """None if ONNX export and checking can run here, else what is missing."""
    missing = []
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        return (f"format onnx needs {', '.join(missing)} (pip install 'ssmlit[export]', or "
                "pip install onnx onnxscript onnxruntime)")
    return None


class OnnxStream:
    """An ONNX streaming model in an onnxruntime CPU session.

    Args:
        model: the ``.onnx`` file's path or bytes.
        threads: intra-op threads of the session (1: the single-core deployment target).
    """

    def __init__(self, model: str | os.PathLike | bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        src = model if isinstance(model, bytes) else os.fspath(model)
        self.session = ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.meta: dict[str, Any] = json.loads(meta[META_KEY]) if META_KEY in meta else {}
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def init_state(self, batch: int) -> list[np.ndarray]:
        """Zero state, from the shapes of the session's state inputs."""
        shapes = [i.shape[1:] for i in self.session.get_inputs()[1:]]
        return [np.zeros((batch, *shape), dtype=np.float32) for shape in shapes]

    def __call__(self, x: np.ndarray, state: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """``x``: one frame (float32 ``[B, frame, d_input]`` or int64 tokens ``[B, frame]``)."""
        out = self.session.run(None, {name: arr for name, arr in zip(self.inputs, (x, *state))})
        return out[0], out[1:]


def load_torch_export(model: str | os.PathLike | bytes) -> tuple[Any, dict[str, Any]]:
    """Load a ``.pt2`` streaming model: ``(callable (x, state) → (logits, state), metadata)``."""
    import torch

    extra = {"stream.json": ""}
    src = io.BytesIO(model) if isinstance(model, bytes) else os.fspath(model)
    program = torch.export.load(src, extra_files=extra)
    meta = json.loads(extra["stream.json"]) if extra["stream.json"] else {}
    return program.module(), meta
