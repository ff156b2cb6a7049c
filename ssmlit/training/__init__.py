"""Lightning glue: the SequenceClassifier module, optimizer groups and the Hydra-driven job."""

from .module import SequenceClassifier
from .optim import OPT_CONFIGS, param_groups, warmup_cosine

__all__ = ["OPT_CONFIGS", "SequenceClassifier", "param_groups", "warmup_cosine"]
