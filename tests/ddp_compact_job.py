"""A 2-process CPU DDP run that compacts at epoch 1 of 3, for tests/test_compaction.py.

Usage: python tests/ddp_compact_job.py OUT_DIR. Each rank writes OUT_DIR/rank<r>.pt with its final
parameters, its parameters right after compaction, its state sizes, and whether the DDP wrapper
holds exactly the module's (compacted) parameters. The ranks see different data shards, so they
stay identical only if DDP all-reduces the new parameters' gradients.
"""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from ssmlit.data import DigitsDataModule
from ssmlit.pruning import StatePruningCallback
from ssmlit.training import SequenceClassifier


class Recorder(Callback):
    def __init__(self):
        self.after: dict[str, torch.Tensor] = {}
        self.before = 0

    def on_fit_start(self, trainer, pl_module):
        self.before = sum(s.n_states for s in pl_module.model.ssm_layers())

    def on_train_epoch_start(self, trainer, pl_module):  # runs after the pruner's hook (list order)
        if trainer.current_epoch == 1:
            self.after = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_fit_end(self, trainer, pl_module):
        wrapped = trainer.strategy.model
        torch.save({
            "state": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "after_compaction": self.after,
            "n_states": [s.n_states for s in pl_module.model.ssm_layers()],
            "n_states_before": self.before,
            "ddp_params": sorted(id(p) for p in wrapped.parameters()),
            "module_params": sorted(id(p) for p in pl_module.parameters()),
        }, Path(sys.argv[1]) / f"rank{trainer.global_rank}.pt")


def main() -> None:
    pl.seed_everything(0)
    pruner = StatePruningCallback("last", 0.5, epoch=1, plots=False, verbose=0)
    module = SequenceClassifier(dict(d_input=1, d_output=10, d_model=16, n_layers=2, ssm=dict(d_state=16, blocks=2)),
                                dict(lr=1e-2, ssm_lr=1e-2, warmup_epochs=0.0))
    trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_epochs=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_train_batches=3, limit_val_batches=1, callbacks=[pruner, Recorder()],
                         default_root_dir=sys.argv[1])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))


if __name__ == "__main__":
    main()
