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
=========================  ==========================================  =====================

Downloads, safe extraction, the raw-file search and the preprocessing cache live in
:mod:`ssmlit.data.download`.
"""

from .base import CachedDataModule, EvalVariant, SequenceDataModule, default_data_dir, pad_collate, seeded_split
from .digits import DigitsDataModule
from .download import ArchiveError, ChecksumError, DataError, DataNotFoundError, UnsafeArchiveError
from .images import CIFARDataModule, MNISTDataModule
from .listops import ListOpsDataModule
from .pathfinder import PathfinderDataModule
from .retrieval import AANDataModule
from .speech import SpeechCommandsDataModule
from .text import IMDBDataModule

__all__ = [
    "AANDataModule", "ArchiveError", "CIFARDataModule", "CachedDataModule", "ChecksumError", "DataError",
    "DataNotFoundError", "DigitsDataModule", "EvalVariant", "IMDBDataModule", "ListOpsDataModule", "MNISTDataModule",
    "PathfinderDataModule", "SequenceDataModule", "SpeechCommandsDataModule", "UnsafeArchiveError",
    "default_data_dir", "pad_collate", "seeded_split",
]
