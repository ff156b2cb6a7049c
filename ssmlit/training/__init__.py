"""Lightning glue: the SequenceClassifier module, optimizer groups and the Hydra-driven job."""

from .module import SequenceClassifier
from .optim import OPT_CONFIGS, SCHEDULES, param_groups, s5_warmup_cosine, warmup_cosine

__all__ = ["OPT_CONFIGS", "SCHEDULES", "SequenceClassifier", "param_groups", "s5_warmup_cosine", "warmup_cosine"]
