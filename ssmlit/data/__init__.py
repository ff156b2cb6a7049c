"""Task data modules. Every task is a :class:`SequenceDataModule` yielding ``(x, y, lengths)``."""

from .base import EvalVariant, SequenceDataModule, default_data_dir, pad_collate
from .digits import DigitsDataModule

__all__ = ["DigitsDataModule", "EvalVariant", "SequenceDataModule", "default_data_dir", "pad_collate"]
