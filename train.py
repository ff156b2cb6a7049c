"""Train a deep SSM classifier: ``python train.py [group=option ...] [key=value ...]``.

Examples::

    python train.py                                   # S5 on the embedded digits task (CPU, ~1 min)
    python train.py model=s4d trainer.max_epochs=20
    python train.py trainer=ddp trainer.devices=2     # two processes (gloo on CPU, NCCL on GPUs)
    python train.py experiment=s5/pathx trainer=gpu   # the LAST paper's Path-X setup
"""

import hydra
from omegaconf import DictConfig

from ssmlit.training.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    results = train(cfg)
    return results.get("test/acc")


if __name__ == "__main__":
    main()
