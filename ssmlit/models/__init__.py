"""Plain PyTorch S4D and S5 layers and the SequenceModel backbone (no Lightning dependency)."""

from .backbone import LAYERS, SequenceModel, StreamingModel, count_parameters, load_model, save_model
from .base import DiagonalSSM
from .recurrence import StreamingSSM
from .s4d import S4D, s4_to_s5_convention
from .s5 import S5
from .scan import SCANS

__all__ = [
    "LAYERS", "S4D", "S5", "SCANS", "DiagonalSSM", "SequenceModel", "StreamingModel", "StreamingSSM",
    "count_parameters", "load_model", "s4_to_s5_convention", "save_model",
]
