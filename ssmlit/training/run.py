"""The training job behind ``train.py``: validate the config, then build data, model, callbacks and
trainer from it, fit, and test (and prune) the best-by-validation checkpoint.

Order matters and is the point of this module: :func:`~ssmlit.training.validate.validate_config`
checks every setting before the run directory is claimed (:mod:`.rundir`), and both happen before
any download, preprocessing or training.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ssmlit.data.base import SequenceDataModule
from ssmlit.errors import ConfigError, UserError
from ssmlit.pruning.callback import StatePruningCallback
from ssmlit.registry import instantiate_checked
from ssmlit.utils import atomic_write_text, run_dir

from .checkpointing import AtomicCheckpointIO, EpochSeed, checkpoint_callbacks
from .launch import log_hparams
from .module import SequenceClassifier
from .rundir import claim_run_dir
from .validate import as_config_error, task_setting_names, validate_config


def build_datamodule(cfg: DictConfig, where: str | None = None) -> SequenceDataModule:
    """Instantiate the task (only an allow-listed ``_target_``, see :mod:`ssmlit.registry`) and
    make its shapes (vocabulary, classes) known.

    Args:
        where: where ``cfg`` came from, for messages (e.g. a checkpoint's embedded config).
    """
    try:
        dm = instantiate_checked(cfg.task, "task", where=where)
    except UserError:
        raise
    except (ValueError, TypeError, ImportError) as e:
        raise as_config_error(e, task_setting_names(OmegaConf.to_container(cfg.task)), "task") from None
    if not isinstance(dm, SequenceDataModule):
        raise ConfigError("task._target_", f"must build a ssmlit.data.SequenceDataModule, got {type(dm).__name__}")
    return prepare_datamodule(dm)


def prepare_datamodule(dm: SequenceDataModule) -> SequenceDataModule:
    """Prepare (download, cache) and set up the fit splits.

    Only the first process of each node prepares data; under DDP the other ranks are launched by
    Lightning from inside ``trainer.fit``, i.e. after this has finished.
    """
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
    """``[best checkpoint, last checkpoint, epoch seeding, (LR monitor), (pruning)]``; the best
    checkpoint comes first (``callbacks[0]``)."""
    best, last = checkpoint_callbacks(out, cfg.checkpoint.monitor, cfg.checkpoint.mode)
    callbacks: list[pl.Callback] = [best, last, EpochSeed(cfg.seed)]
    if with_logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.get("prune") is not None:
        callbacks.append(instantiate_checked(cfg.prune, "prune"))
    return callbacks


def train(cfg: DictConfig, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Validate everything, fit, then test the best-by-validation checkpoint; returns the test metrics.

    Args:
        cfg: the composed training config (``conf/config.yaml``).
        out: the run directory (default: Hydra's, else the working directory).

    Raises:
        UserError: a bad setting (before any data work), a run directory that holds another run,
            missing or corrupt data.
    """
    started = time.time()
    checked = validate_config(cfg)
    out = Path(out) if out is not None else run_dir()
    claim_run_dir(out, checked.resume.path if checked.resume else None)
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    if checked.max_epochs == 0:
        rank_zero_info("trainer.max_epochs=0: nothing is trained; the initial weights are tested"
                       + (" and pruned" if cfg.get("prune") is not None else ""))
    dm = prepare_datamodule(checked.datamodule)
    module = build_module(cfg, dm)
    logger = instantiate_checked(cfg.logger, "logger") if cfg.get("logger") else False
    callbacks = build_callbacks(cfg, out, logger is not False)
    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=logger,
                         callbacks=callbacks, default_root_dir=str(out), plugins=[AtomicCheckpointIO()])
    resume = str(checked.resume.path) if checked.resume else None
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    ckpt = callbacks[0]
    best = ckpt.best_model_path or None
    evaluated = _evaluated(best, checked.max_epochs)
    pruner = next((c for c in callbacks if isinstance(c, StatePruningCallback)), None)
    if pruner is not None and pruner.schedule.at_end:
        # The paper's protocol: one checkpoint (prune.checkpoint: best-validation or final epoch),
        # validated and tested before and after pruning.
        pruned_from = pruner.checkpoint_path(trainer)
        evaluated = _evaluated(pruned_from, checked.max_epochs)
        report = pruner.prune_after_fit(trainer, module, dm, ckpt_path=pruned_from)
        results = report["before"] | {f"pruned/{k}": v for k, v in report["after"].items()}
        results["pruning"] = report["plan"]
        results["pruned_checkpoint"] = f"{pruner.checkpoint}: {report['checkpoint']['path'] or 'final-epoch weights'}"
    else:
        metrics = trainer.test(module, datamodule=dm, ckpt_path=best, weights_only=True, verbose=False)
        results = {k: float(v) for m in metrics for k, v in m.items()}
        if pruner is not None:
            results["pruning"] = pruner.history[-1] if pruner.history else None
    results |= {"evaluated": evaluated, "best_checkpoint": best, "best_val": float(ckpt.best_model_score)
                if ckpt.best_model_score is not None else None, "wall_time_s": round(time.time() - started, 1)}
    log_hparams(trainer.loggers, cfg, results)
    _report(out, results)
    return results


def _evaluated(best: str | None, max_epochs: int | None) -> str:
    """What the reported (and pruned) metrics are of, in words."""
    if best:
        return f"the best-validation checkpoint {Path(best).name}"
    if max_epochs == 0:
        return "the untrained initial weights (trainer.max_epochs=0)"
    return "the final weights (prune.checkpoint=last, or no best-validation checkpoint was saved)"


@rank_zero_only
def _report(out: Path, results: dict[str, Any]) -> None:
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    lines = [f"  {k:<24} {v:.4f}" if isinstance(v, float) else f"  {k:<24} {v}" for k, v in results.items()
             if k not in ("pruning", "evaluated")]
    rank_zero_info(f"Results of {results['evaluated']}:\n" + "\n".join(lines) + f"\n  run dir: {out}")
