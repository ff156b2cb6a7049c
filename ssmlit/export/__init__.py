"""Portable streaming export: ``python -m ssmlit.export ckpt=<run or .ckpt> format=onnx`` (see
:mod:`.core`); :mod:`.runtime` runs the files (onnxruntime or plain torch, no ssmlit models)."""

from .core import FORMATS, ExportCheckError, ExportInputError, export_streaming, streaming_model
from .runtime import OnnxStream, load_torch_export, onnx_available

__all__ = [
    "FORMATS", "ExportCheckError", "ExportInputError", "OnnxStream", "export_streaming", "load_torch_export",
    "onnx_available", "streaming_model",
]
