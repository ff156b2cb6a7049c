"""What makes runs of a Hydra multirun comparable side by side: the full composed config and the
final results as TensorBoard HPARAMS.

TensorBoard's HPARAMS tab shows one row per run, with hyper-parameters as columns and
``hp/*`` metrics (final validation/test accuracy, and the pruned model's when pruning) to sort and
filter by. ``train.py`` calls :func:`log_hparams` once, after the final test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

# results.json key → hparam metric name
HP_METRICS = {
    "best_val": "hp/best_val",
    "val/acc": "hp/val_acc",
    "test/acc": "hp/test_acc",
    "pruned/val/acc": "hp/pruned_val_acc",
    "pruned/test/acc": "hp/pruned_test_acc",
}


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as ``{"model.d_model": 128, ...}``; lists become strings (HPARAMS
    columns are scalars), ``None`` becomes ``"null"``."""
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # a job's config has no hydra node
    container = OmegaConf.to_container(job, resolve=True)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(node, bool | int | float | str):
            out[prefix] = node
        elif node is None:
            out[prefix] = "null"
        else:
            out[prefix] = str(node)

    walk(container, "")
    return out


def hparam_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The final metrics of a run (``results.json``) that HPARAMS shows, where present."""
    metrics = {name: float(results[key]) for key, name in HP_METRICS.items()
               if isinstance(results.get(key), int | float) and not isinstance(results.get(key), bool)}
    plan = results.get("pruning")
    if isinstance(plan, Mapping) and isinstance(plan.get("achieved_ratio"), int | float):
        metrics["hp/pruned_ratio"] = float(plan["achieved_ratio"])
    return metrics


def log_hparams(loggers: Iterable[Logger], cfg: DictConfig, results: Mapping[str, Any]) -> None:
    """Log the composed config with the final metrics to every TensorBoard logger (rank 0 only:
    Lightning's logger methods are rank-zero guarded)."""
    metrics = hparam_metrics(results)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(flat_config(cfg), metrics)
            logger.save()
