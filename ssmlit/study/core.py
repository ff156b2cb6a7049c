"""The compression study: one-shot pruning of a trained model over methods × ratios, without
retraining, the paper-style summary, and the automatic choice of a ratio under an accuracy budget.

Protocol (LAST paper §5): every point starts from the same trained weights; a method's scores are
computed once, and each ratio's plan (:func:`~ssmlit.pruning.plan_pruning`, exact top-K, see its
ratio semantics) is applied as masks to a working copy, which is then evaluated. Nothing is
retrained or re-estimated (BatchNorm keeps its running statistics). Points whose masks coincide
(every method's 0 %, often several methods' 100 %) are the same model and are evaluated once.

Accuracy losses are in percentage points of accuracy: ``100 · (acc_full − acc)``.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ssmlit.pruning import PruningPlan, apply_pruning, get_method, plan_pruning, prunable_layers, state_scores
from ssmlit.pruning.plan import round_half_up

from .evaluate import Evaluator, Metrics

# Comparisons of accuracy losses tolerate float round-off of count ratios (e.g. 1.0000000000000009).
EPS_POINTS = 1e-9


def loss_points(full: Metrics, m: Metrics) -> float:
    """Accuracy lost relative to ``full``, in percentage points (negative: a gain)."""
    return 100.0 * (full.acc - m.acc)


@dataclass
class Point:
    """One evaluated model of the sweep.

    Attributes:
        method: pruning method name; ``seed`` its seed (``None`` for deterministic methods).
        ratio: requested ratio; ``achieved_ratio`` the plan's (1 − kept / stored over all layers).
        kept, total: layer name → kept / stored conjugate pairs.
        metrics: variant name → :class:`~ssmlit.study.evaluate.Metrics`.
    """

    method: str
    seed: int | None
    ratio: float
    achieved_ratio: float
    kept: dict[str, int]
    total: dict[str, int]
    metrics: dict[str, Metrics]

    @property
    def state_dim_avg(self) -> float:
        """Average over layers of the remaining state dimension (2 × kept pairs)."""
        return 2.0 * sum(self.kept.values()) / len(self.kept)


def mask_key(masks: dict[str, torch.Tensor]) -> tuple[tuple[str, bytes], ...]:
    """A hashable identity of a set of masks (bool [n] per layer)."""
    return tuple((k, bytes(v.cpu().numpy().tobytes())) for k, v in sorted(masks.items()))


class MaskedEvaluator:
    """Evaluate pruning plans on a working copy of a model, caching results by mask.

    Args:
        model: the trained model; never modified.
        evaluator: the data side.
    """

    def __init__(self, model: nn.Module, evaluator: Evaluator) -> None:
        self.model = model
        self.evaluator = evaluator
        self.work = copy.deepcopy(model).to(evaluator.device).eval()
        self._cache: dict[tuple, dict[str, Metrics]] = {}
        self.evaluations = 0  # distinct (mask, variant) evaluations actually run
        self.reused = 0  # requests answered from the cache

    def original_masks(self) -> dict[str, torch.Tensor]:
        return {k: v.state_mask.detach().cpu().clone() for k, v in prunable_layers(self.model).items()}

    def evaluate_masks(self, masks: dict[str, torch.Tensor], names: Iterable[str] | None = None) -> dict[str, Metrics]:
        """Metrics of the model with ``masks`` (layer name → bool [n]) on ``names`` (default all)."""
        names = self.evaluator.names if names is None else list(names)
        key = mask_key(masks)
        have = self._cache.setdefault(key, {})
        missing = [n for n in names if n not in have]
        self.reused += len(names) - len(missing)
        if missing:
            layers = prunable_layers(self.work)
            with torch.no_grad():
                for k, layer in layers.items():
                    layer.state_mask.copy_(masks[k].to(layer.state_mask.device))
            have.update(self.evaluator.evaluate(self.work, missing))
            self.evaluations += len(missing)
        return {n: have[n] for n in names}

    def evaluate_plan(self, plan: PruningPlan, names: Iterable[str] | None = None) -> dict[str, Metrics]:
        return self.evaluate_masks(plan.masks, names)

    def masked_copy(self, plan: PruningPlan) -> nn.Module:
        """A fresh copy of the model with the plan's masks set (for export)."""
        return apply_pruning(copy.deepcopy(self.model).eval(), plan)


def method_seeds(method: str, seeds: Sequence[int]) -> list[int | None]:
    """The seeds a method runs with: all of ``seeds`` for stochastic methods, else ``[None]``."""
    return list(seeds) if get_method(method).stochastic else [None]


def run_grid(
    masked: MaskedEvaluator,
    methods: Sequence[str],
    ratios: Sequence[float],
    seeds: Sequence[int],
    min_states: int = 1,
    bidirectional: str = "paper",
    progress: Callable[[int], Any] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> list[Point]:
    """Evaluate every method × ratio (× seed for stochastic methods) on every variant.

    Args:
        options: method → score keyword arguments of :func:`~ssmlit.pruning.plan_pruning`
            (``convention``, ``horizon``, ``exact_pair``, ``calibration``).
        progress: called as ``progress(n_points)`` first, then returns an object with
            ``update(1)`` and ``set_postfix_str(str)`` (a tqdm bar), or ``None``.
    """
    jobs = [(m, s) for m in methods for s in method_seeds(m, seeds)]
    bar = progress(len(jobs) * len(ratios)) if progress else None
    test = masked.evaluator.names_of("test")[0]
    points = []
    for method, seed in jobs:
        # Scores once per (method, seed); every ratio is a different cut of the same ranking.
        kw = (options or {}).get(method, {})
        scores = state_scores(masked.model, method, seed=seed or 0, bidirectional=bidirectional, **kw)
        for r in ratios:
            plan = plan_pruning(masked.model, method, r, min_states, seed=seed or 0, bidirectional=bidirectional,
                                scores=scores, **kw)
            metrics = masked.evaluate_plan(plan)
            points.append(Point(method, seed, float(r), plan.achieved_ratio, dict(plan.kept), dict(plan.total),
                                metrics))
            if bar is not None:
                label = method if seed is None else f"{method}#{seed}"
                bar.set_postfix_str(f"{label} {100 * r:.0f}% {test} {100 * metrics[test].acc:.2f}")
                bar.update(1)
    if bar is not None and hasattr(bar, "close"):
        bar.close()
    return points


# -- aggregation over seeds ------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    # Sample standard deviation (n − 1) across seeds, as "mean ± std" over runs is usually reported.
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class CurvePoint:
    """A method at one ratio, averaged over its seeds.

    ``acc``/``loss``: variant → (mean, std); ``kept``: layer → mean kept pairs.
    """

    method: str
    ratio: float
    achieved_ratio: float
    n_seeds: int
    kept: dict[str, float]
    acc: dict[str, tuple[float, float]]
    loss: dict[str, tuple[float, float]]
    seeds: list[int | None] = field(default_factory=list)

    @property
    def state_dim_avg(self) -> float:
        return 2.0 * sum(self.kept.values()) / len(self.kept)


def curves(points: Sequence[Point]) -> dict[str, list[CurvePoint]]:
    """Method → its curve (ascending ratio), seeds averaged."""
    groups: dict[tuple[str, float], list[Point]] = {}
    for p in points:
        groups.setdefault((p.method, p.ratio), []).append(p)
    out: dict[str, list[CurvePoint]] = {}
    for (method, ratio), ps in groups.items():
        names = list(ps[0].metrics)
        out.setdefault(method, []).append(CurvePoint(
            method=method, ratio=ratio, achieved_ratio=statistics.fmean(p.achieved_ratio for p in ps),
            n_seeds=len(ps), kept={k: statistics.fmean(p.kept[k] for p in ps) for k in ps[0].kept},
            acc={n: _mean_std([p.metrics[n].acc for p in ps]) for n in names},
            loss={n: _mean_std([p.metrics[n].loss for p in ps]) for n in names},
            seeds=[p.seed for p in ps]))
    for c in out.values():
        c.sort(key=lambda cp: cp.ratio)
    return out


def normalized_auc(curve: Sequence[CurvePoint], variant: str) -> float | None:
    """Area under accuracy (%) vs requested ratio, divided by the swept ratio range: the mean
    accuracy over the range by the trapezoid rule (None with fewer than two ratios)."""
    if len(curve) < 2 or curve[-1].ratio <= curve[0].ratio:
        return None
    area = sum((b.ratio - a.ratio) * 50.0 * (a.acc[variant][0] + b.acc[variant][0])
               for a, b in itertools.pairwise(curve))
    return area / (curve[-1].ratio - curve[0].ratio)


def summarize(
    curve_map: dict[str, list[CurvePoint]],
    full: dict[str, Metrics],
    full_state_dim: float,
    threshold: float,
    reference: str | None,
    variant: str = "test",
) -> dict[str, Any]:
    """The paper-style summary.

    - ``per_method``: for each method the largest swept ratio whose ``variant`` accuracy loss is
      below ``threshold`` points (strictly, as the paper's "< 1 %"), its accuracies, its average
      remaining state dimension, and the normalized AUC of the ``variant`` curve. Losses are
      judged on the seed mean for stochastic methods.
    - ``reference``: the paper's Table 2 protocol: the largest such ratio of the ``reference``
      method (LAST in the paper), and every method's accuracies at that same ratio.
    """
    full_acc = full[variant].acc
    per_method = []
    best_ratio: dict[str, float | None] = {}
    for method, curve in curve_map.items():
        ok = [c for c in curve if 100.0 * (full_acc - c.acc[variant][0]) < threshold - EPS_POINTS]
        best = max(ok, key=lambda c: c.ratio) if ok else None
        best_ratio[method] = best.ratio if best else None
        per_method.append(dict(
            method=method, ratio=best.ratio if best else None,
            achieved_ratio=best.achieved_ratio if best else None,
            state_dim_avg=best.state_dim_avg if best else None,
            acc={n: list(v) for n, v in best.acc.items()} if best else None,
            loss_points=100.0 * (full_acc - best.acc[variant][0]) if best else None,
            auc=normalized_auc(curve, variant), n_seeds=curve[0].n_seeds))
    ref = None
    if reference is not None and reference in curve_map and best_ratio.get(reference) is not None:
        r_star = best_ratio[reference]
        rows = []
        for method, curve in curve_map.items():
            at = [c for c in curve if math.isclose(c.ratio, r_star)]
            if at:
                c = at[0]
                rows.append(dict(method=method, ratio=c.ratio, achieved_ratio=c.achieved_ratio,
                                 state_dim_avg=c.state_dim_avg, acc={n: list(v) for n, v in c.acc.items()},
                                 loss_points=100.0 * (full_acc - c.acc[variant][0]), n_seeds=c.n_seeds))
        ref = dict(method=reference, ratio=r_star, rows=rows)
    return dict(variant=variant, threshold_points=threshold, full_acc={n: m.acc for n, m in full.items()},
                full_state_dim_avg=full_state_dim, per_method=per_method, reference=ref)


# -- automatic ratio -------------------------------------------------------------------------------
def select_ratio(
    masked: MaskedEvaluator,
    method: str,
    grid: Sequence[float],
    budget: float,
    val: str = "val",
    max_steps: int = 8,
    seed: int = 0,
    min_states: int = 1,
    bidirectional: str = "paper",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The largest ratio whose ``val`` accuracy loss stays within ``budget`` points (≤), using
    validation data only.

    First the grid: the largest passing grid ratio r_pass and the next grid ratio above it r_fail
    (which fails). Then bisection between them over the number of pruned states (ratio = p / N,
    N = all stored states), at most ``max_steps`` evaluations, stopping once they are one state
    apart. Accuracy need not be monotone in the ratio; like the paper's rule, the largest passing
    grid ratio counts even when a smaller one fails.

    Returns:
        ``{"method", "budget_points", "ratio", "achieved_ratio", "plan", "val_loss_points",
        "trace": [{"ratio", "achieved_ratio", "kept_total", "val_acc", "loss_points", "passed", "stage"}]}``
        with ``plan`` the selected :class:`~ssmlit.pruning.PruningPlan`.
    """
    if budget < 0:
        raise ValueError(f"select.budget must be >= 0 accuracy points, got {budget}")
    full = masked.evaluate_masks(masked.original_masks(), [val])[val]
    kw = options or {}
    scores = state_scores(masked.model, method, seed=seed, bidirectional=bidirectional, **kw)
    trace: list[dict[str, Any]] = []

    def probe(r: float, stage: str) -> tuple[bool, PruningPlan]:
        plan = plan_pruning(masked.model, method, r, min_states, seed=seed, bidirectional=bidirectional,
                            scores=scores, **kw)
        m = masked.evaluate_plan(plan, [val])[val]
        lost = loss_points(full, m)
        ok = lost <= budget + EPS_POINTS
        trace.append(dict(ratio=r, achieved_ratio=plan.achieved_ratio, kept_total=sum(plan.kept.values()),
                          val_acc=m.acc, loss_points=lost, passed=ok, stage=stage))
        return ok, plan

    grid = sorted({float(r) for r in grid} | {0.0})
    results = [(r, *probe(r, "grid")) for r in grid]
    passing = [(r, plan) for r, ok, plan in results if ok]
    if not passing:  # only possible when the unpruned model itself fails, i.e. never for budget >= 0
        raise RuntimeError("no ratio passes the budget, not even 0")
    best_r, best_plan = passing[-1]
    above = [r for r in grid if r > best_r]
    if above and max_steps > 0:
        n_all = sum(best_plan.total.values())
        lo, hi = round_half_up(best_r * n_all), round_half_up(above[0] * n_all)
        steps = 0
        while hi - lo > 1 and steps < max_steps:
            mid = (lo + hi) // 2
            ok, plan = probe(mid / n_all, "bisect")
            steps += 1
            if ok:
                lo, best_r, best_plan = mid, mid / n_all, plan
            else:
                hi = mid
    chosen = [t for t in trace if t["ratio"] == best_r][-1]
    return dict(method=method, budget_points=budget, val=val, ratio=best_r, achieved_ratio=best_plan.achieved_ratio,
                val_loss_points=chosen["loss_points"], full_val_acc=full.acc, plan=best_plan, trace=trace)
