"""Train a deep SSM classifier: ``python train.py [group=option ...] [key=value ...]``.

Examples::

    python train.py                                   # S5 on the embedded digits task (CPU, ~1 min)
    python train.py model=s4d trainer.max_epochs=20
    python train.py trainer=ddp trainer.devices=2     # two processes (gloo on CPU, NCCL on GPUs)
    python train.py experiment=s5/pathx trainer=gpu   # the LAST paper's Path-X setup
    python train.py resume=outputs/<date>/<time>      # continue that run where it stopped

A mistake in the command line or the config ends in one ``error: <setting>: ...`` line and exit
code 2, before any data is downloaded or prepared.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ssmlit.cli import fail, hydra_cli, report_user_errors
from ssmlit.errors import UserError
from ssmlit.training.resume import resume_argv
from ssmlit.training.run import train
from ssmlit.training.rundir import discard_unused_run_dir, precheck_run_dir
from ssmlit.training.validate import validate_config
from ssmlit.utils import run_dir

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        results = train(cfg)
    except UserError as e:
        discard_unused_run_dir(run_dir())  # a refused run leaves no empty run directory behind
        fail(e)
    return results.get("test/acc")


if __name__ == "__main__":
    with report_user_errors():
        sys.argv[1:] = resume_argv(sys.argv[1:])
        precheck_run_dir(sys.argv[1:])
    hydra_cli(str(CONFIG_DIR), "config", validate=validate_config)  # before Hydra writes anything
    main()
