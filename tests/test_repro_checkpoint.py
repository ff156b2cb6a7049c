"""prune.checkpoint=best|last: which weights one-shot-after-fit prunes (issue 12, part 1)."""

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ssmlit.data import DigitsDataModule
from ssmlit.pruning import StatePruningCallback
from ssmlit.training import SequenceClassifier
from ssmlit.training.run import train

ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(d_input=1, d_output=10, layer="s5", d_model=16, n_layers=2, ssm=dict(d_state=16, blocks=2))


class EarliestIsBest(Callback):
    """Logs ``order = −epoch``, so a ModelCheckpoint monitoring it (mode max) keeps epoch 0 as the
    best: the best and the last weights are then surely different. Keeps a copy of the weights
    when training ends (the final epoch's)."""

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("order", -float(trainer.current_epoch))

    def on_train_end(self, trainer, pl_module):
        self.final = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _fit(tmp_path, cb, epochs=3):
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="order", mode="max", save_last=True)
    module = SequenceClassifier(MODEL, dict(lr=1e-2, ssm_lr=1e-2, warmup_epochs=0.0))
    probe = EarliestIsBest()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_train_batches=3, limit_val_batches=1, limit_test_batches=1,
                         callbacks=[probe, ckpt, cb], default_root_dir=tmp_path)
    dm = DigitsDataModule(batch_size=64)
    trainer.fit(module, datamodule=dm)
    return trainer, module, dm, ckpt, probe


def _weights(state):
    return {k: v for k, v in state.items() if not k.endswith("state_mask")}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("choice", ["best", "last"])
def test_oneshot_prunes_the_chosen_checkpoints_weights(tmp_path, choice):
    cb = StatePruningCallback("last", 0.5, checkpoint=choice, plots=False)
    trainer, module, dm, ckpt, probe = _fit(tmp_path, cb)
    best = _weights(torch.load(ckpt.best_model_path, weights_only=True)["state_dict"])
    last = _weights(probe.final)
    assert ckpt.best_model_path.endswith("epoch=0-step=3.ckpt") and not _same(best, last)
    # Lightning 2.6 rewrites last.ckpt only with a top-k save: here it holds epoch 0, not the final weights
    assert torch.load(ckpt.last_model_path, weights_only=True)["epoch"] == 0
    report = cb.prune_after_fit(trainer, module, dm)
    pruned = _weights(module.state_dict())
    assert _same(pruned, best if choice == "best" else last)  # identity of the pruned weights
    assert report["checkpoint"] == {"choice": choice, "path": ckpt.best_model_path if choice == "best" else None}
    assert report["plan"]["kept_total"] < report["plan"]["states_total"]  # and they were pruned
    summary = json.loads((tmp_path / "pruning" / "pruning_summary.json").read_text())
    assert summary["checkpoint"]["choice"] == choice


def test_checkpoint_choice_is_validated():
    with pytest.raises(ValueError, match=r"unknown prune checkpoint 'final'; choose one of \('best', 'last'\)"):
        StatePruningCallback("last", 0.3, checkpoint="final")


def test_train_records_the_pruned_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    overrides = ["+prune=last", "prune.checkpoint=last", "prune.plots=false", "logger=none", "trainer.max_epochs=2",
                 "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
                 "trainer.enable_progress_bar=false", "model.d_model=8", "model.n_layers=1", "model.ssm.d_state=8",
                 "model.ssm.blocks=2"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    results = train(cfg, out=tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["pruned_checkpoint"] == results["pruned_checkpoint"]
    assert saved["pruned_checkpoint"] == "last: final-epoch weights"
    assert "pruned/test/acc" in saved
