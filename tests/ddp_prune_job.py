"""A 2-process CPU DDP run with scheduled pruning, for tests/test_prune_callback.py.

Usage: python tests/ddp_prune_job.py OUT_DIR. Each rank writes OUT_DIR/rank<r>.pt with, for every
pruning step, the masks it ended the step with and the scores it computed itself. The method's
scores carry rank-dependent noise, so the ranks would disagree without the callback's broadcast.
"""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from ssmlit.data import DigitsDataModule
from ssmlit.pruning import METHODS, PruningMethod, StatePruningCallback
from ssmlit.pruning.scores import hinf_score
from ssmlit.training import SequenceClassifier


def noisy_hinf(q, bidirectional="paper"):
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    g = torch.Generator().manual_seed(1000 + rank)
    return hinf_score(q, bidirectional) * torch.rand(q.lam_abs.shape, generator=g, dtype=torch.float64)


class Recorder(Callback):
    def __init__(self, pruner: StatePruningCallback):
        self.pruner, self.steps = pruner, []

    def on_train_epoch_start(self, trainer, pl_module):  # runs after the pruner's hook (list order)
        plan = self.pruner.last_plan
        if plan is not None and len(self.steps) < len(self.pruner.history):
            masks = {k: m.state_mask.clone() for k, m in pl_module.named_modules() if hasattr(m, "state_mask")}
            self.steps.append({"masks": masks, "scores": {k: v.clone() for k, v in plan.scores.items()}})

    def on_fit_end(self, trainer, pl_module):
        torch.save({"steps": self.steps}, Path(sys.argv[1]) / f"rank{trainer.global_rank}.pt")


def main() -> None:
    METHODS["noisy_hinf"] = PruningMethod(noisy_hinf, normalize=True, scope="global")
    pl.seed_everything(0)
    pruner = StatePruningCallback("noisy_hinf", 0.5, schedule="iterative", epochs=[1, 2], plots=False)
    module = SequenceClassifier(dict(d_input=1, d_output=10, d_model=16, n_layers=2, ssm=dict(d_state=16, blocks=2)))
    trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_epochs=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_train_batches=2, limit_val_batches=1, callbacks=[pruner, Recorder(pruner)],
                         default_root_dir=sys.argv[1])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))


if __name__ == "__main__":
    main()
