"""StatePruningCallback: the Lightning side of state pruning (the math lives in :mod:`.plan`).

Usage::

    cb = StatePruningCallback(method="last", ratio=0.3)              # one-shot after fit
    trainer = pl.Trainer(callbacks=[cb, ModelCheckpoint(monitor="val/acc", mode="max")])
    trainer.fit(module, datamodule=dm)
    report = cb.prune_after_fit(trainer, module, dm)                 # best ckpt: val+test before/after

    StatePruningCallback(method="aire", ratio=0.5, schedule="gradual", start_epoch=2, end_epoch=10)

During-training schedules prune at the start of their epochs (masks then stay frozen while
training goes on). The one-shot default waits for :meth:`StatePruningCallback.prune_after_fit`,
which ``train.py`` calls: Lightning cannot run ``trainer.validate`` from inside a fit hook, and the
paper's protocol needs validation and test of the same weights before and after pruning.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from ssmlit.utils import atomic_write_text

from .methods import get_method
from .plan import PruningPlan, apply_pruning, check_min_states, plan_pruning, prunable_layers
from .plots import pole_figure, save_figure, score_figure
from .schedule import Schedule, pruning_schedule
from .scores import BIDIRECTIONAL_MODES


class StatePruningCallback(Callback):
    """Prune states of every prunable layer of the LightningModule, once or on a schedule.

    Args:
        method: a name in :data:`ssmlit.pruning.METHODS` (``last``, ``aire``, ``uniform_hinf``,
            ``global_hinf``, ``uniform_magnitude``, ``global_magnitude``, ``lamp``, ``random``).
        ratio: final fraction of all states removed, in [0, 1].
        schedule: ``oneshot``, ``iterative`` or ``gradual`` (:mod:`ssmlit.pruning.schedule`).
        epoch: oneshot epoch (None: after fit, on the best checkpoint, via :meth:`prune_after_fit`).
        epochs, ratios: iterative steps.
        start_epoch, end_epoch, frequency, initial_ratio: the gradual (cubic) schedule.
        min_states: states every layer keeps at least (1: the paper's "100 %" keeps one pair).
        seed: seed of the ``random`` method (step j uses ``seed + j``).
        bidirectional: ‖C‖ rule for bidirectional layers: ``paper``, ``code`` or ``bound``.
        reset_best_checkpoint: after a during-training step, make ModelCheckpoint forget earlier
            (less pruned) bests, so "best" means best at the current sparsity.
        plots: write the score and pole figures (PNG, and TensorBoard when that logger is used).
        out_dir: where figures and ``pruning_summary.json`` go (default
            ``<trainer.default_root_dir>/pruning``).
    """

    def __init__(
        self,
        method: str = "last",
        ratio: float = 0.3,
        schedule: str = "oneshot",
        epoch: int | None = None,
        epochs: Sequence[int] | None = None,
        ratios: Sequence[float] | None = None,
        start_epoch: int | None = None,
        end_epoch: int | None = None,
        frequency: int = 1,
        initial_ratio: float = 0.0,
        min_states: int = 1,
        seed: int = 0,
        bidirectional: str = "paper",
        reset_best_checkpoint: bool = True,
        plots: bool = True,
        out_dir: str | None = None,
    ) -> None:
        super().__init__()
        get_method(method)  # unknown names fail here, before any training
        if bidirectional not in BIDIRECTIONAL_MODES:
            raise ValueError(f"unknown bidirectional mode {bidirectional!r}; choose one of {BIDIRECTIONAL_MODES}")
        if isinstance(min_states, bool) or not isinstance(min_states, int) or min_states < 1:
            raise ValueError(f"min_states must be an integer >= 1, got {min_states!r}")
        for name, seq in (("epochs", epochs), ("ratios", ratios)):
            if seq is not None and (isinstance(seq, str) or not hasattr(seq, "__iter__")):
                raise ValueError(f"{name} must be a list, e.g. [5, 10], or null; got {seq!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        for name, flag in (("reset_best_checkpoint", reset_best_checkpoint), ("plots", plots)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        self.method, self.ratio, self.min_states, self.seed = method, ratio, min_states, seed
        self.bidirectional, self.reset_best_checkpoint, self.plots = bidirectional, reset_best_checkpoint, plots
        self.out_dir = out_dir
        self._schedule_args = dict(epoch=epoch, epochs=list(epochs) if epochs is not None else None,
                                   ratios=list(ratios) if ratios is not None else None,
                                   start_epoch=start_epoch, end_epoch=end_epoch, frequency=frequency,
                                   initial_ratio=initial_ratio)
        self.schedule: Schedule = pruning_schedule(schedule, ratio, **self._schedule_args)
        self.ratio = float(ratio)  # validated by pruning_schedule
        self.done: list[int] = []  # epochs whose step has run (the schedule position, checkpointed)
        self.history: list[dict[str, Any]] = []
        self.last_plan: PruningPlan | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, schedule=self.schedule.kind)

    # -- validation before training --------------------------------------------------------------
    def check_run(self, module: torch.nn.Module, max_epochs: int | None) -> None:
        """Raise ``ValueError`` if this callback cannot work on ``module`` in a run of ``max_epochs``
        (pruning epochs beyond the run, ``min_states`` above a layer's size). The config-validation
        phase calls it before any data is prepared; :meth:`setup` calls it again."""
        check_min_states(prunable_layers(module), self.min_states)
        self.schedule = pruning_schedule(self.schedule.kind, self.ratio, max_epochs=max_epochs,
                                         **self._schedule_args)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check_run(pl_module, trainer.max_epochs)
        else:
            check_min_states(prunable_layers(pl_module), self.min_states)

    # -- checkpointed schedule position ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"done": list(self.done), "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = [int(e) for e in state_dict.get("done", [])]
        self.history = list(state_dict.get("history", []))

    # -- during training -------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.at_end:
            return
        # Steps up to the current epoch that have not run: normally the one at this epoch; after a
        # resume without the callback's state, all earlier ones at once (pruning is cumulative).
        due = [(e, r) for e, r in self.schedule.steps if e <= trainer.current_epoch and e not in self.done]
        if not due:
            return
        self.prune(trainer, pl_module, max(r for _, r in due), epoch=trainer.current_epoch)
        self.done.extend(e for e, _ in due)
        if self.reset_best_checkpoint:
            for cb in trainer.checkpoint_callbacks:
                if isinstance(cb, ModelCheckpoint):
                    cb.best_k_models, cb.kth_best_model_path, cb.best_model_path = {}, "", ""
                    cb.best_model_score = cb.kth_value = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.schedule.at_end and self.last_plan is not None:
            self._write_outputs(trainer, pl_module, {})

    # -- the pruning step ------------------------------------------------------------------------
    @torch.no_grad()
    def prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ratio: float, epoch: int,
              verbose: bool = True) -> PruningPlan:
        """Plan on rank 0's view, broadcast the masks so every rank holds the same ones, apply, log."""
        plan = plan_pruning(pl_module, self.method, ratio, self.min_states, seed=self.seed + len(self.history),
                            bidirectional=self.bidirectional)
        # Under DDP the parameters are identical on every rank, but a score's last bit may not be
        # (different kernels, reductions); one source of truth removes any doubt.
        plan.masks = trainer.strategy.broadcast(plan.masks, src=0)
        plan.kept = {k: int(v.sum()) for k, v in plan.masks.items()}
        plan.achieved_ratio = 1 - sum(plan.kept.values()) / sum(plan.total.values())
        apply_pruning(pl_module, plan)
        self.last_plan = plan
        record = dict(epoch=int(epoch), global_step=int(trainer.global_step), **plan.summary())
        self.history.append(record)
        metrics = {"prune/achieved_ratio": plan.achieved_ratio, "prune/requested_ratio": plan.ratio}
        for name in plan.kept:
            metrics[f"prune/remaining/{name}"] = float(plan.kept[name])
            metrics[f"prune/kept_frac/{name}"] = plan.kept[name] / plan.total[name]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if verbose:
            rank_zero_info(f"[before epoch {epoch}] " + plan.table())
        return plan

    # -- one-shot after fit (the paper's protocol) -----------------------------------------------
    def prune_after_fit(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = "best",
    ) -> dict[str, Any]:
        """Load ``ckpt_path`` (default: the best-validation checkpoint), validate and test, prune to
        ``ratio`` without retraining, validate and test again.

        Returns:
            ``{"before": metrics, "after": metrics, "plan": plan.summary()}``; the same goes to
            ``<out_dir>/pruning_summary.json`` with the figures.
        """
        if ckpt_path == "best" and not getattr(trainer.checkpoint_callback, "best_model_path", ""):
            ckpt_path = None  # no checkpointing: prune the weights in hand
        before = self._evaluate(trainer, pl_module, datamodule, ckpt_path)
        plan = self.prune(trainer, pl_module, self.ratio, epoch=trainer.current_epoch, verbose=False)
        self.done.append(-1)
        after = self._evaluate(trainer, pl_module, datamodule, None)
        rank_zero_info(plan.table(before=before, after=after))
        for logger in trainer.loggers:
            logger.log_metrics({f"prune/before/{k}": v for k, v in before.items()}
                               | {f"prune/after/{k}": v for k, v in after.items()}, step=trainer.global_step)
        report = {"before": before, "after": after, "plan": plan.summary()}
        self._write_outputs(trainer, pl_module, report)
        return report

    @staticmethod
    def _evaluate(trainer, pl_module, datamodule, ckpt_path) -> dict[str, float]:
        kw = {"weights_only": True} if ckpt_path else {}
        metrics: dict[str, float] = {}
        for run in (trainer.validate, trainer.test):
            out = run(pl_module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, **kw)
            metrics |= {k: float(v) for m in out for k, v in m.items()}
            ckpt_path, kw = None, {}  # the first call loaded the weights; keep them
        return metrics

    # -- figures and summary ---------------------------------------------------------------------
    def _out_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.out_dir) if self.out_dir else Path(trainer.default_root_dir) / "pruning"

    @rank_zero_only
    def _write_outputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule, report: dict[str, Any]) -> None:
        plan = self.last_plan
        out = self._out_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        summary = dict(method=self.method, schedule=self.schedule.kind, ratio=self.ratio, steps=self.history,
                       final=plan.summary() if plan else None, **{k: v for k, v in report.items() if k != "plan"})
        atomic_write_text(out / "pruning_summary.json", json.dumps(summary, indent=2))
        if not self.plots or plan is None:
            return
        title = f"{self.method}: {100 * plan.achieved_ratio:.1f}% of states pruned"
        poles = {name: _poles(layer) for name, layer in prunable_layers(pl_module).items()}
        figures = {"scores": score_figure(plan.scores, plan.masks, title),
                   "poles": pole_figure(poles, plan.masks, title)}
        for name, fig in figures.items():
            save_figure(fig, out / f"{name}.png")
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(f"prune/{name}", fig, global_step=trainer.global_step)
        rank_zero_info(f"pruning figures and summary written to {out}")


def _poles(layer: torch.nn.Module) -> torch.Tensor:
    """λ̄ of one layer, complex128 [n], without S4D's dense block-diagonal B̄ and C when avoidable."""
    if callable(getattr(layer, "state_norms", None)):
        return layer.state_norms(torch.complex128)[0]
    return layer.discretized_system(torch.complex128)[0]
