"""Task data modules. Every task is a :class:`SequenceDataModule` yielding ``(x, y, lengths)``.

=========================  ==========================================  =====================
task config                data module                                 module
=========================  ==========================================  =====================
digits                     :class:`DigitsDataModule` (embedded)        ``digits``
smnist, psmnist            :class:`MNISTDataModule`                    ``images``
scifar, image              :class:`CIFARDataModule`                    ``images``
listops                    :class:`ListOpsDataModule`                  ``listops``
text                       :class:`IMDBDataModule`                     ``text``
retrieval                  :class:`AANDataModule`                      ``retrieval``
pathfinder, pathx          :class:`PathfinderDataModule`               ``pathfinder``
speech                     :class:`SpeechCommandsDataModule`           ``speech``
plaid, ucr                 :class:`PLAIDDataModule` (embedded),        ``ucr``
                           :class:`UCRDataModule` (any .ts pair)
=========================  ==========================================  =====================

Downloads, safe extraction, the raw-file search and the preprocessing cache live in
:mod:`ssmlit.data.download`.
"""

from importlib import import_module
from typing import Any

from .base import CachedDataModule, EvalVariant, SequenceDataModule, default_data_dir, pad_collate, seeded_split
from .digits import DigitsDataModule
from .download import ArchiveError, ChecksumError, DataError, DataNotFoundError, UnsafeArchiveError

# The task modules are imported on first use (PEP 562): importing the package stays light, and
# `python -m ssmlit.data.listops` does not find its own module already imported by the package.
_LAZY = {
    "AANDataModule": "retrieval", "CIFARDataModule": "images", "IMDBDataModule": "text",
    "ListOpsDataModule": "listops", "MNISTDataModule": "images", "PathfinderDataModule": "pathfinder",
    "SpeechCommandsDataModule": "speech", "PLAIDDataModule": "ucr", "UCRDataModule": "ucr",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AANDataModule", "ArchiveError", "CIFARDataModule", "CachedDataModule", "ChecksumError", "DataError",
    "DataNotFoundError", "DigitsDataModule", "EvalVariant", "IMDBDataModule", "ListOpsDataModule", "MNISTDataModule",
    "PLAIDDataModule", "PathfinderDataModule", "SequenceDataModule", "SpeechCommandsDataModule", "UCRDataModule",
    "UnsafeArchiveError",
    "default_data_dir", "pad_collate", "seeded_split",
]
