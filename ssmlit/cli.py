"""Console scripts of the installed package: ``ssmlit-train`` (= ``python train.py``) and
``ssmlit-sweep`` (= ``python -m ssmlit.sweep``), with the Hydra configs shipped in the wheel.

Both take the same overrides as their checkout counterparts, from any working directory::

    ssmlit-train trainer.max_epochs=1 +prune=last prune.epoch=0
    ssmlit-sweep ckpt=outputs/<date>/<time>
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ssmlit.utils import config_dir

CONF = str(config_dir())


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def _train(cfg: DictConfig) -> float | None:
    from ssmlit.training.run import train as run_train

    return run_train(cfg).get("test/acc")


def train() -> None:
    """``ssmlit-train [overrides]``: train (and prune) a model, as ``python train.py``."""
    _train()


def sweep() -> None:
    """``ssmlit-sweep ckpt=<run> [overrides]``: the compression study, as ``python -m ssmlit.sweep``."""
    from ssmlit.sweep import main

    main()
