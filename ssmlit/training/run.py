"""The training job behind ``train.py``: build data, model, callbacks and trainer from a Hydra config."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ssmlit.data.base import SequenceDataModule
from ssmlit.pruning.callback import StatePruningCallback
from ssmlit.utils import atomic_write_text, run_dir

from .launch import log_hparams
from .module import SequenceClassifier


def build_datamodule(cfg: DictConfig) -> SequenceDataModule:
    """Instantiate the task and make its shapes (vocabulary, classes) known.

    Only the first process of each node prepares data (downloads, caches); under DDP the other
    ranks are launched by Lightning from inside ``trainer.fit``, i.e. after this has finished.
    """
    dm = instantiate(cfg.task)
    if not isinstance(dm, SequenceDataModule):
        raise TypeError(f"task._target_ must build a ssmlit.data.SequenceDataModule, got {type(dm).__name__}")
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        dm.prepare_data()
    dm.setup("fit")
    return dm


def build_module(cfg: DictConfig, dm: SequenceDataModule) -> SequenceClassifier:
    model_kwargs = OmegaConf.to_container(cfg.model, resolve=True) | dm.model_kwargs()
    return SequenceClassifier(
        model_kwargs,
        OmegaConf.to_container(cfg.optim, resolve=True),
        val_variants=[(v.name, v.step_rescale) for v in dm.val_variants],
        test_variants=[(v.name, v.step_rescale) for v in dm.test_variants],
    )


def build_callbacks(cfg: DictConfig, out: Path, with_logger: bool) -> list[pl.Callback]:
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=out / "checkpoints", filename="best-{epoch:03d}", monitor=cfg.checkpoint.monitor,
                        mode=cfg.checkpoint.mode, save_last=True, auto_insert_metric_name=False),
    ]
    if with_logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.get("prune") is not None:
        callbacks.append(instantiate(cfg.prune))
    return callbacks


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best-by-validation checkpoint; returns the test metrics."""
    started = time.time()
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    out = run_dir()
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = build_callbacks(cfg, out, logger is not False)
    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=logger,
                         callbacks=callbacks, default_root_dir=str(out))
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("resume"))
    ckpt = callbacks[0]
    best = ckpt.best_model_path or None
    pruner = next((c for c in callbacks if isinstance(c, StatePruningCallback)), None)
    if pruner is not None and pruner.schedule.at_end:
        # The paper's protocol: one checkpoint (prune.checkpoint: best-validation or final epoch),
        # validated and tested before and after pruning.
        report = pruner.prune_after_fit(trainer, module, dm, ckpt_path=pruner.checkpoint_path(trainer))
        results = report["before"] | {f"pruned/{k}": v for k, v in report["after"].items()}
        results["pruning"] = report["plan"]
        results["pruned_checkpoint"] = f"{pruner.checkpoint}: {report['checkpoint']['path'] or 'final-epoch weights'}"
    else:
        metrics = trainer.test(module, datamodule=dm, ckpt_path=best, weights_only=True, verbose=False)
        results = {k: float(v) for m in metrics for k, v in m.items()}
        if pruner is not None:
            results["pruning"] = pruner.history[-1] if pruner.history else None
    results |= {"best_checkpoint": best, "best_val": float(ckpt.best_model_score)
                if ckpt.best_model_score is not None else None, "wall_time_s": round(time.time() - started, 1)}
    log_hparams(trainer.loggers, cfg, results)
    _report(out, results)
    return results


@rank_zero_only
def _report(out: Path, results: dict[str, Any]) -> None:
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    lines = [f"  {k:<24} {v:.4f}" if isinstance(v, float) else f"  {k:<24} {v}" for k, v in results.items()
             if k != "pruning"]
    source = "pruned checkpoint" if "pruned_checkpoint" in results else "best-val checkpoint"
    rank_zero_info(f"Results ({source}):\n" + "\n".join(lines) + f"\n  run dir: {out}")
