"""StatePruningCallback: the Lightning side of state pruning (the math lives in :mod:`.plan`).

Usage::

    cb = StatePruningCallback(method="last", ratio=0.3)              # one-shot after fit
    trainer = pl.Trainer(callbacks=[cb, ModelCheckpoint(monitor="val/acc", mode="max")])
    trainer.fit(module, datamodule=dm)
    report = cb.prune_after_fit(trainer, module, dm)                 # best ckpt: val+test before/after
    StatePruningCallback(method="last", ratio=0.3, checkpoint="last")  # the final epoch's weights (LAST code)

    StatePruningCallback(method="aire", ratio=0.5, schedule="gradual", start_epoch=2, end_epoch=10)
    StatePruningCallback(method="last", keep_states=64, epoch=3, layers={"exclude": ["model.blocks.0.ssm"]})
    StatePruningCallback(method="last", ratio=lambda epoch: min(0.6, 0.2 * epoch))

During-training schedules prune at the start of their epochs and, with ``compact`` (their
default), physically remove the pruned states from the model and the optimizer state
(:mod:`ssmlit.training.surgery`), so the epochs that follow cost less. The one-shot default
waits for :meth:`StatePruningCallback.prune_after_fit`, which ``train.py`` calls: Lightning
cannot run ``trainer.validate`` from inside a fit hook, and the paper's protocol needs validation
and test of the same weights before and after pruning.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from ssmlit.training.surgery import (
    check_compactable_strategy,
    compact_checkpoint_file,
    compact_during_fit,
    compact_layers,
)
from ssmlit.utils import atomic_write_text

from .calibration import calibrate, calibration_batches, check_calibration_batches
from .horizon import check_horizon
from .methods import get_method
from .options import (
    check_keep_states,
    check_ratio_value,
    keep_states_ratio,
    parse_layer_patterns,
    ratio_function_steps,
    select_layers,
)
from .plan import (
    PruningPlan,
    apply_pruning,
    check_min_states,
    check_score_options,
    plan_pruning,
    prunable_layers,
)
from .plots import pole_figure, save_figure, score_figure
from .schedule import Schedule, pruning_schedule
from .scores import BIDIRECTIONAL_MODES

DEFAULT_RATIO = 0.3
VERBOSITY = (0, 1, 2)
CHECKPOINTS = ("best", "last")


class StatePruningCallback(Callback):
    """Prune states of every prunable layer of the LightningModule, once or on a schedule.

    Args:
        method: a name in :data:`ssmlit.pruning.METHODS` (``last``, ``aire``, ``uniform_hinf``,
            ``global_hinf``, ``uniform_magnitude``, ``global_magnitude``, ``lamp``, ``random``).
        ratio: final fraction of the (selected layers') states removed, in [0, 1] (default 0.3);
            or a callable ``f(epoch) -> ratio`` evaluated at the start of every epoch (see
            :mod:`ssmlit.pruning.options`), which then is the schedule.
        keep_states: instead of ``ratio``, the number of states kept over the whole model.
        schedule: ``oneshot``, ``iterative`` or ``gradual`` (:mod:`ssmlit.pruning.schedule`).
        epoch: oneshot epoch (None: after fit, on ``checkpoint``, via :meth:`prune_after_fit`).
        epochs, ratios: iterative steps.
        start_epoch, end_epoch, frequency, initial_ratio: the gradual (cubic) schedule.
        min_states: states every layer keeps at least (1: the paper's "100 %" keeps one pair).
        seed: seed of the ``random`` method (step j uses ``seed + j``).
        bidirectional: ‖C‖ rule for bidirectional layers: ``paper``, ``code`` or ``bound``.
        compact: after each during-training step, remove the pruned states from the model and
            carry the optimizer state over (None: true for during-training schedules; false keeps
            masks only). Not applicable to the after-fit one-shot (see ``compact_at_end``).
        compact_at_end: when the schedule is done, compact the model and every checkpoint file of
            the run's ModelCheckpoint callbacks (after fit for the after-fit one-shot: the pruned
            model is saved compacted as ``<checkpoint dir>/pruned.ckpt``).
        layers: ``{"include": [...], "exclude": [...]}`` fnmatch patterns over layer names (or a
            list of include patterns); excluded layers neither lose states nor enter the ranking.
        verbose: 0 nothing, 1 a one-line summary per step, 2 the per-layer table.
        convention: ``ssmlit`` (float64, exact top-K) or ``reference`` (the published LAST/AIRE
            code's masks, :mod:`ssmlit.pruning.reference`; methods last, aire, global_hinf).
        horizon: steps L of the horizon-aware methods (``last_horizon``, ``aire_horizon``):
            ``"auto"`` takes the data module's ``l_max`` (for variable-length tasks the longest
            sequence), an integer sets it, None means infinite. Ignored by other methods.
        exact_pair: the H∞ methods score each conjugate pair by the exact H∞ of its real
            subsystem (:mod:`ssmlit.pruning.pair`; unidirectional layers).
        calibration_batches: training batches (seeded by ``seed``) whose forward passes measure the
            state energies of data-aware methods (``data_energy``).
        reset_best_checkpoint: after a during-training step, make ModelCheckpoint forget earlier
            (less pruned) bests, so "best" means best at the current sparsity.
        plots: write the score and pole figures (PNG, and TensorBoard when that logger is used).
        out_dir: where figures and ``pruning_summary.json`` go (default
            ``<trainer.default_root_dir>/pruning``).
        checkpoint: which weights one-shot-after-fit prunes: ``best`` (the best-validation
            checkpoint, ssmlit's default) or ``last`` (the final epoch's, what msgwak/LAST's
            ``s5/train.py`` prunes at the end of ``train``; the paper does not say). None: ``last``
            under ``convention="reference"``, else ``best``.
    """

    def __init__(
        self,
        method: str = "last",
        ratio: float | Callable[[int], float] | None = None,
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
        convention: str = "ssmlit",
        horizon: int | str | None = "auto",
        exact_pair: bool = False,
        calibration_batches: int = 4,
        reset_best_checkpoint: bool = True,
        plots: bool = True,
        out_dir: str | None = None,
        keep_states: int | None = None,
        compact: bool | None = None,
        compact_at_end: bool = False,
        layers: Any = None,
        verbose: int = 2,
        checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        get_method(method)  # unknown names fail here, before any training
        if checkpoint is None:  # the published code prunes the final epoch's weights (issue 12)
            checkpoint = "last" if convention == "reference" else "best"
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"unknown prune checkpoint {checkpoint!r}; choose one of {CHECKPOINTS} (which weights "
                             "one-shot-after-fit prunes: the best-validation or the final epoch's)")
        self.checkpoint = checkpoint
        if bidirectional not in BIDIRECTIONAL_MODES:
            raise ValueError(f"unknown bidirectional mode {bidirectional!r}; choose one of {BIDIRECTIONAL_MODES}")
        if isinstance(min_states, bool) or not isinstance(min_states, int) or min_states < 1:
            raise ValueError(f"min_states must be an integer >= 1, got {min_states!r}")
        for name, seq in (("epochs", epochs), ("ratios", ratios)):
            if seq is not None and (isinstance(seq, str) or not hasattr(seq, "__iter__")):
                raise ValueError(f"{name} must be a list, e.g. [5, 10], or null; got {seq!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.keep_states = check_keep_states(keep_states)
        if self.keep_states is not None and ratio is not None:
            raise ValueError(f"give either ratio ({ratio!r}) or keep_states ({keep_states}), not both")
        if self.keep_states is not None and ratios is not None:
            raise ValueError("keep_states sets the final target; it cannot be combined with explicit iterative ratios")
        self.ratio_fn: Callable[[int], float] | None = None
        if callable(ratio):
            if schedule != "oneshot" or epoch is not None:
                raise ValueError(f"a ratio function of the epoch is its own schedule (evaluated at every epoch "
                                 f"start); leave schedule at 'oneshot' and epoch at null, got schedule={schedule!r}, "
                                 f"epoch={epoch!r}")
            self.ratio_fn = ratio
            check_ratio_value(ratio(0), 0)  # a broken function fails here, before any training
            ratio = 0.0
        elif ratio is None:
            ratio = 1.0 if self.keep_states is not None else DEFAULT_RATIO  # keep_states: resolved in setup()
        elif isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be a number in [0, 1] (the fraction of states removed), null, or a "
                             f"function of the epoch; got {ratio!r}")
        for name, flag in (("compact_at_end", compact_at_end), ("reset_best_checkpoint", reset_best_checkpoint),
                           ("plots", plots)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        if compact is not None and not isinstance(compact, bool):
            raise ValueError(f"compact must be true, false or null (true for during-training schedules), "
                             f"got {compact!r}")
        if isinstance(verbose, bool) or verbose not in VERBOSITY:
            raise ValueError(f"verbose must be one of {VERBOSITY} (nothing, one-line summary, per-layer table), "
                             f"got {verbose!r}")
        self.include, self.exclude = parse_layer_patterns(layers)
        if horizon != "auto":
            check_horizon(horizon, "horizon")
        check_score_options(method, convention, None, exact_pair, min_states)
        check_calibration_batches(calibration_batches, "calibration_batches")
        self.convention, self.horizon, self.exact_pair = convention, horizon, exact_pair
        self.calibration_batches = calibration_batches
        self.method, self.ratio, self.min_states, self.seed = method, float(ratio), min_states, seed
        self.bidirectional, self.reset_best_checkpoint, self.plots = bidirectional, reset_best_checkpoint, plots
        self.out_dir, self.compact_at_end, self.verbose = out_dir, compact_at_end, verbose
        self._schedule_args = dict(epoch=epoch, epochs=list(epochs) if epochs is not None else None,
                                   ratios=list(ratios) if ratios is not None else None,
                                   start_epoch=start_epoch, end_epoch=end_epoch, frequency=frequency,
                                   initial_ratio=initial_ratio)
        self.schedule: Schedule = self._build_schedule(schedule, None)
        if compact and self.schedule.at_end:
            raise ValueError("compact=true compacts during training, but this schedule prunes after fit; use "
                             "compact_at_end=true to save the pruned model compacted")
        self.compact = (not self.schedule.at_end) if compact is None else compact
        self.done: list[int] = []  # epochs whose step has run (the schedule position, checkpointed)
        self.history: list[dict[str, Any]] = []
        self.last_plan: PruningPlan | None = None
        self.selected: list[str] | None = None  # layer names taking part (resolved in setup)
        self.totals: dict[str, int] | None = None  # each layer's state count before any compaction
        self.compacted_checkpoint: str | None = None
        self._poles: dict[str, torch.Tensor] = {}

    def _build_schedule(self, kind: str, max_epochs: int | None) -> Schedule:
        if self.ratio_fn is None:
            return pruning_schedule(kind, self.ratio, max_epochs=max_epochs, **self._schedule_args)
        if max_epochs is None:
            return Schedule("function", ())
        if max_epochs < 1:
            raise ValueError("a ratio function of the epoch needs a finite trainer.max_epochs")
        return Schedule("function", ratio_function_steps(self.ratio_fn, max_epochs))

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, schedule=self.schedule.kind)

    # -- validation before training --------------------------------------------------------------
    def check_run(self, module: torch.nn.Module, max_epochs: int | None, rebuild_schedule: bool = True) -> None:
        """Resolve what depends on the model and the run (the selected layers, their original sizes,
        ``keep_states`` as a ratio, the schedule for ``max_epochs``), raising ``ValueError`` if this
        callback cannot work on ``module`` (pruning epochs beyond the run, ``min_states`` above a
        layer's size, ``exact_pair`` on a bidirectional model, ...). The config-validation phase calls
        it before any data is prepared; :meth:`setup` calls it again."""
        layers = prunable_layers(module)
        if self.totals is None:
            # setup runs before a resumed checkpoint is restored, so these are the original sizes
            self.totals = {k: layer.n_states for k, layer in layers.items()}
        self.selected = select_layers(list(layers), self.include, self.exclude)
        check_min_states({k: layers[k] for k in self.selected}, self.min_states)
        if self.keep_states is not None:
            self.ratio = keep_states_ratio(self.keep_states, self.totals, self.selected, self.min_states)
        if self.exact_pair and any(getattr(layer, "bidirectional", False) for layer in layers.values()):
            raise ValueError("exact_pair=true supports unidirectional layers only; this model is bidirectional")
        if rebuild_schedule:
            self.schedule = self._build_schedule(self.schedule.kind, max_epochs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check_run(pl_module, trainer.max_epochs)
            if self.compact:
                check_compactable_strategy(trainer.strategy)
        else:  # validate/test (e.g. after fit) or a direct prune(): the schedule stays as fit built it
            self.check_run(pl_module, None, rebuild_schedule=False)

    # -- checkpointed schedule position ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"done": list(self.done), "history": list(self.history), "totals": dict(self.totals or {})}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = [int(e) for e in state_dict.get("done", [])]
        self.history = list(state_dict.get("history", []))
        if state_dict.get("totals"):
            self.totals = {str(k): int(v) for k, v in state_dict["totals"].items()}

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
        if self.schedule.at_end:
            return
        if self.compact_at_end:
            self._compact_at_end(trainer, pl_module)
        if self.last_plan is not None:
            self._write_outputs(trainer, pl_module, {})

    def _compact_at_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Compact the model in memory and every checkpoint file the run's ModelCheckpoints track."""
        changed = compact_during_fit(trainer, pl_module)
        files = sorted({p for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)
                        for p in (*cb.best_k_models, cb.last_model_path) if p and Path(p).is_file()})
        if trainer.is_global_zero:
            for f in files:
                compact_checkpoint_file(f)
        trainer.strategy.barrier("compact_at_end")
        if self.verbose and (changed or files):
            rank_zero_info(f"compact_at_end: model compacted ({self._sizes(changed)}); rewrote {len(files)} "
                           f"checkpoint file(s) compacted")

    # -- the pruning step ------------------------------------------------------------------------
    @torch.no_grad()
    def prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ratio: float, epoch: int,
              verbose: bool = True) -> PruningPlan:
        """Plan on rank 0's view, broadcast the masks so every rank holds the same ones, apply, log,
        and (``compact``, during fit) remove the pruned states from the model and optimizer."""
        if self.selected is None or self.totals is None:
            self.setup(trainer, pl_module, "prune")
        layers = prunable_layers(pl_module)
        totals = {k: self.totals.get(k, layer.n_states) for k, layer in layers.items()}
        m = get_method(self.method)
        horizon = self._horizon(trainer) if m.horizon else None
        calibration = self._calibrate(trainer, pl_module) if m.data else None
        plan = plan_pruning(pl_module, self.method, ratio, self.min_states, seed=self.seed + len(self.history),
                            bidirectional=self.bidirectional, layers=self.selected, totals=totals,
                            convention=self.convention, horizon=horizon, exact_pair=self.exact_pair,
                            calibration=calibration)
        # Under DDP the parameters are identical on every rank, but a score's last bit may not be
        # (different kernels, reductions); one source of truth removes any doubt.
        plan.masks = trainer.strategy.broadcast(plan.masks, src=0)
        plan.kept = {k: int(v.sum()) for k, v in plan.masks.items()}
        plan.achieved_ratio = 1 - sum(plan.kept.values()) / sum(plan.total.values())
        apply_pruning(pl_module, plan)
        self.last_plan = plan
        self._poles = {name: _poles(layer).detach().cpu() for name, layer in layers.items()}  # before compaction
        compacted = {}
        if self.compact and trainer.training:
            compacted = compact_during_fit(trainer, pl_module)
        record = dict(epoch=int(epoch), global_step=int(trainer.global_step), **plan.summary())
        if compacted:
            record["compacted"] = {k: list(v) for k, v in compacted.items()}
        self.history.append(record)
        metrics = {"prune/achieved_ratio": plan.achieved_ratio, "prune/requested_ratio": plan.ratio}
        for name in plan.kept:
            metrics[f"prune/remaining/{name}"] = float(plan.kept[name])
            metrics[f"prune/kept_frac/{name}"] = plan.kept[name] / plan.total[name]
        for name, layer in prunable_layers(pl_module).items():
            metrics[f"prune/stored/{name}"] = float(layer.n_states)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if verbose and self.verbose:
            head = f"[before epoch {epoch}] "
            rank_zero_info(head + (plan.table() if self.verbose >= 2 else self._summary_line(plan))
                           + (f"\n  compacted: {self._sizes(compacted)}" if compacted else ""))
        return plan

    @staticmethod
    def _summary_line(plan: PruningPlan) -> str:
        return (f"pruning ({plan.method}): kept {sum(plan.kept.values())} / {sum(plan.total.values())} states, "
                f"achieved ratio {plan.achieved_ratio:.4f} (requested {plan.ratio:.4f})")

    @staticmethod
    def _sizes(changed: dict[str, tuple[int, int]]) -> str:
        return ", ".join(f"{k} {a}->{b}" for k, (a, b) in changed.items()) or "nothing to remove"

    def _horizon(self, trainer: pl.Trainer) -> int | None:
        """The horizon L of horizon-aware methods: ``auto`` is the task's ``l_max``."""
        if self.horizon != "auto":
            return self.horizon
        l_max = getattr(getattr(trainer, "datamodule", None), "l_max", None)
        if not isinstance(l_max, int) or l_max < 1:
            raise ValueError("prune.horizon=auto needs the data module's l_max (the task's longest sequence); "
                             "set prune.horizon=<steps> instead")
        rank_zero_info(f"{self.method}: horizon L = {l_max} steps (the task's l_max; with variable lengths the "
                       "longest sequence, so that no state the longest inputs can use is undervalued)")
        return l_max

    def _calibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        """State energies of data-aware methods, from ``calibration_batches`` training batches."""
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and getattr(dm, "train_set", None) is not None and callable(getattr(dm, "collate", None)):
            batches = calibration_batches(dm, self.calibration_batches, self.seed)
        else:  # a plain dataloader was passed to fit: its first batches
            loader = trainer.train_dataloader
            if loader is None:
                raise ValueError(f"{self.method} needs training batches to calibrate on: fit with a "
                                 "SequenceDataModule or a train dataloader")
            batches = list(itertools.islice(iter(loader), self.calibration_batches))
        energies = calibrate(pl_module, batches, device=pl_module.device)
        rank_zero_info(f"{self.method}: state energies measured on {len(batches)} training batch(es)")
        return energies

    # -- one-shot after fit (the paper's protocol) -----------------------------------------------
    def checkpoint_path(self, trainer: pl.Trainer) -> str | None:
        """What one-shot-after-fit loads under ``checkpoint``: ``best``: the trainer's ModelCheckpoint
        ``best_model_path`` (None without checkpointing); ``last``: None, the weights in hand, which
        right after fit are the final epoch's. ``last.ckpt`` is not used: Lightning (2.6) rewrites
        it only when a top-k checkpoint is saved, so with ``monitor`` set it holds the last
        *improving* epoch, not the final one."""
        if self.checkpoint == "last":
            return None
        return getattr(trainer.checkpoint_callback, "best_model_path", "") or None

    def prune_after_fit(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = "auto",
    ) -> dict[str, Any]:
        """Load ``ckpt_path``, validate and test, prune to ``ratio`` without retraining, validate and
        test again.

        Args:
            ckpt_path: ``"auto"`` (default): :meth:`checkpoint_path`, the best-validation
                checkpoint or the final epoch's weights as ``checkpoint`` says (call this right
                after fit); a path; or None for the weights in hand.

        Returns:
            ``{"before": metrics, "after": metrics, "plan": plan.summary(), "checkpoint": {"choice",
            "path"}}``; the same goes to ``<out_dir>/pruning_summary.json`` with the figures.
        """
        if ckpt_path == "auto":
            ckpt_path = self.checkpoint_path(trainer)
        before = self._evaluate(trainer, pl_module, datamodule, ckpt_path)
        plan = self.prune(trainer, pl_module, self.ratio, epoch=trainer.current_epoch, verbose=False)
        self.done.append(-1)
        after = self._evaluate(trainer, pl_module, datamodule, None)
        source = {"choice": self.checkpoint, "path": ckpt_path}
        weights = ckpt_path or "the weights in hand: the final epoch's right after fit"
        if self.verbose >= 2:
            rank_zero_info(f"Pruned weights: {self.checkpoint} checkpoint ({weights})\n"
                           + plan.table(before=before, after=after))
        elif self.verbose:
            rank_zero_info(f"Pruned weights: {self.checkpoint} checkpoint ({weights}); "
                           + self._summary_line(plan) + "; " + "  ".join(
                               f"{k}: {before[k]:.4f} -> {after[k]:.4f}" for k in before
                               if k.endswith("/acc") and k in after))
        for logger in trainer.loggers:
            logger.log_metrics({f"prune/before/{k}": v for k, v in before.items()}
                               | {f"prune/after/{k}": v for k, v in after.items()}, step=trainer.global_step)
        report = {"before": before, "after": after, "plan": plan.summary(), "checkpoint": source}
        if self.compact_at_end:
            report["compacted_checkpoint"] = self._save_pruned_compact(trainer, pl_module)
        self._write_outputs(trainer, pl_module, report)
        return report

    def _save_pruned_compact(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """Compact the pruned model in place and save it (weights only) next to the run's checkpoints."""
        result = compact_layers(pl_module)
        sync = getattr(pl_module, "sync_ssm_hparams", None)
        if callable(sync):
            sync()
        ckpt_cb = trainer.checkpoint_callback
        folder = Path(ckpt_cb.dirpath) if isinstance(ckpt_cb, ModelCheckpoint) and ckpt_cb.dirpath \
            else Path(trainer.default_root_dir) / "checkpoints"
        path = folder / "pruned.ckpt"
        trainer.save_checkpoint(path, weights_only=True)
        self.compacted_checkpoint = str(path)
        if self.verbose:
            rank_zero_info(f"compact_at_end: pruned model compacted ({self._sizes(result.layers)}), saved to {path}")
        return str(path)

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
                       final=plan.summary() if plan else None, compact=self.compact,
                       compact_at_end=self.compact_at_end, layers=self.selected,
                       **{k: v for k, v in report.items() if k != "plan"})
        atomic_write_text(out / "pruning_summary.json", json.dumps(summary, indent=2))
        if not self.plots or plan is None:
            return
        title = f"{self.method}: {100 * plan.achieved_ratio:.1f}% of states pruned"
        poles = self._poles or {name: _poles(layer) for name, layer in prunable_layers(pl_module).items()}
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
