"""When to prune, and to which ratio: the schedules of :class:`~ssmlit.pruning.StatePruningCallback`.

- ``oneshot``: one step to ``ratio``; at a chosen ``epoch``, or (``epoch=None``) after fit, on the
  best-validation checkpoint, without retraining — the LAST paper's protocol.
- ``iterative``: steps at the listed ``epochs`` to the listed ``ratios`` (default: evenly spaced up
  to ``ratio``).
- ``gradual``: the cubic schedule of Zhu & Gupta (2017, "To prune, or not to prune", Eq. 1),
  r_t = r_f + (r_i − r_f)·(1 − (t − t_0)/(t_end − t_0))³ at t = t_0, t_0 + k, …, t_end: pruning is
  fast early, while the network can still recover, and slow near the final ratio.

A step at epoch e is taken before epoch e trains (epochs count from 0, as Lightning's
``current_epoch``), so masks are frozen for the training that follows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

SCHEDULES = ("oneshot", "iterative", "gradual")


@dataclass(frozen=True)
class Schedule:
    """Pruning steps ``(epoch, ratio)`` in epoch order; ``at_end`` means one step after fit."""

    kind: str
    steps: tuple[tuple[int, float], ...]
    at_end: bool = False

    @property
    def final_ratio(self) -> float:
        return self.steps[-1][1] if self.steps else 0.0


def _check_epoch(name: str, e: int, max_epochs: int | None) -> int:
    if isinstance(e, bool) or not isinstance(e, int) or e < 0:
        raise ValueError(f"{name} must be a non-negative integer epoch, got {e!r}")
    if max_epochs is not None and max_epochs >= 0 and e >= max_epochs:
        raise ValueError(f"{name}={e} is beyond the run: epochs count from 0 and trainer.max_epochs={max_epochs}, "
                         f"so pruning epochs must be <= {max_epochs - 1}")
    return e


def _check_ratio(name: str, r: float) -> float:
    ok = isinstance(r, int | float) and not isinstance(r, bool)
    if not ok or not 0.0 <= r <= 1.0:  # NaN fails the range test too
        raise ValueError(f"{name} must be a number in [0, 1] (the fraction of states removed), got {r!r}")
    return float(r)


def pruning_schedule(
    schedule: str,
    ratio: float,
    *,
    epoch: int | None = None,
    epochs: Sequence[int] | None = None,
    ratios: Sequence[float] | None = None,
    start_epoch: int | None = None,
    end_epoch: int | None = None,
    frequency: int = 1,
    initial_ratio: float = 0.0,
    max_epochs: int | None = None,
) -> Schedule:
    """Build and validate a schedule (see the module docstring).

    Args:
        schedule: ``"oneshot"``, ``"iterative"`` or ``"gradual"``.
        ratio: the final ratio (iterative: the last ratio when ``ratios`` is not given).
        epoch: oneshot epoch; None prunes after fit.
        epochs, ratios: the iterative steps.
        start_epoch, end_epoch, frequency, initial_ratio: the gradual schedule (t_0, t_end, k, r_i).
        max_epochs: the trainer's ``max_epochs``; steps must fall inside the run.

    Raises:
        ValueError: naming the bad value and what is allowed.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pruning schedule {schedule!r}; choose one of {SCHEDULES}")
    ratio = _check_ratio("ratio", ratio)
    if schedule == "oneshot":
        if epoch is None:
            return Schedule("oneshot", ((-1, ratio),), at_end=True)
        return Schedule("oneshot", ((_check_epoch("epoch", epoch, max_epochs), ratio),))
    if schedule == "iterative":
        if not epochs:
            raise ValueError("the iterative schedule needs epochs=[e1, e2, ...] (the epochs to prune at)")
        es = [_check_epoch("epochs[]", int(e) if not isinstance(e, bool) else e, max_epochs) for e in epochs]
        if any(b <= a for a, b in itertools.pairwise(es)):
            raise ValueError(f"iterative epochs must be strictly increasing, got {list(epochs)}")
        if ratios is None:
            rs = [ratio * (i + 1) / len(es) for i in range(len(es))]
        else:
            if len(ratios) != len(es):
                raise ValueError(f"iterative schedule: {len(es)} epochs but {len(ratios)} ratios")
            rs = [_check_ratio("ratios[]", r) for r in ratios]
            if any(b < a for a, b in itertools.pairwise(rs)):
                raise ValueError(f"iterative ratios must be non-decreasing (pruning is cumulative), got {list(ratios)}")
        return Schedule("iterative", tuple(zip(es, rs, strict=True)))
    # gradual
    if start_epoch is None or end_epoch is None:
        raise ValueError("the gradual schedule needs start_epoch and end_epoch")
    t0 = _check_epoch("start_epoch", start_epoch, max_epochs)
    t1 = _check_epoch("end_epoch", end_epoch, max_epochs)
    if t1 < t0:
        raise ValueError(f"end_epoch={t1} must be >= start_epoch={t0}")
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"frequency must be an integer >= 1 (prune every k epochs), got {frequency!r}")
    r0 = _check_ratio("initial_ratio", initial_ratio)
    if r0 > ratio:
        raise ValueError(f"initial_ratio={r0} must not exceed the final ratio={ratio}")
    ts = list(range(t0, t1 + 1, frequency))
    if ts[-1] != t1:
        ts.append(t1)  # always reach the final ratio at end_epoch
    span = max(1, t1 - t0)
    steps = tuple((t, ratio + (r0 - ratio) * (1 - (t - t0) / span) ** 3 if t1 > t0 else ratio) for t in ts)
    return Schedule("gradual", steps)
