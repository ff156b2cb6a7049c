"""Train a deep SSM classifier: ``python train.py [group=option ...] [key=value ...]``.

Examples::

    python train.py                                   # S5 on the embedded digits task (CPU, ~1 min)
    python train.py model=s4d trainer.max_epochs=20
    python train.py trainer=ddp trainer.devices=2     # two processes (gloo on CPU, NCCL on GPUs)
    python train.py experiment=s5/pathx trainer=gpu   # the LAST paper's Path-X setup
    python train.py resume=outputs/<date>/<time>      # continue that run where it stopped

A mistake in the command line or the config ends in one ``error: <setting>: ...`` line and exit
code 2, before any data is downloaded or prepared. (``ssmlit-train`` is the same job with the
configs shipped in the installed package.)
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from ssmlit.cli import check_train_command, run_train_job

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_train_job(cfg)


if __name__ == "__main__":
    check_train_command(str(CONFIG_DIR))
    main()
