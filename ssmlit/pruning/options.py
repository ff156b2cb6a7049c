"""ModelPruning-style options of :class:`~ssmlit.pruning.StatePruningCallback`, validated and resolved.

- ``layers``: which prunable layers take part, by ``fnmatch`` patterns over their names as in
  ``named_modules`` (``model.blocks.0.ssm``): ``{"include": [...], "exclude": [...]}`` or a plain
  list of include patterns. Excluded layers neither lose states nor enter the global ranking.
- ``keep_states``: an absolute number of states (conjugate pairs) kept over the whole model,
  excluded layers included, instead of a ratio.
- ``ratio`` as a function of the epoch: any callable ``f(epoch: int) -> float`` (in a Hydra
  config a ``_target_`` with ``_partial_: true``, e.g. :func:`linear_ratio`), evaluated at the start
  of every epoch; each value must lie in [0, 1]. Pruning is cumulative, so a value below the
  current ratio prunes nothing more.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

LAYER_KEYS = ("include", "exclude")


def parse_layer_patterns(layers: Any) -> tuple[list[str] | None, list[str]]:
    """``(include, exclude)`` pattern lists from the ``layers`` option (None: include everything).

    Raises:
        ValueError: naming the bad value and what is allowed.
    """
    if layers is None:
        return None, []
    if isinstance(layers, str):
        layers = [layers]
    if isinstance(layers, Mapping):
        unknown = sorted(set(map(str, layers)) - set(LAYER_KEYS))
        if unknown:
            raise ValueError(f"layers has unknown keys {unknown}; allowed: {list(LAYER_KEYS)} (lists of fnmatch "
                             "patterns over layer names such as 'model.blocks.0.ssm')")
        include, exclude = layers.get("include"), layers.get("exclude")
    elif isinstance(layers, Sequence):
        include, exclude = layers, None
    else:
        raise ValueError(f"layers must be a list of patterns or {{include: [...], exclude: [...]}}, got {layers!r}")

    def patterns(value: Any, what: str) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, Sequence) or not all(isinstance(p, str) and p for p in value):
            raise ValueError(f"layers.{what} must be a list of non-empty fnmatch patterns over layer names "
                             f"(e.g. ['model.blocks.0.ssm']), got {value!r}")
        return list(value)

    inc = patterns(include, "include")
    if inc is not None and not inc:
        raise ValueError("layers.include=[] selects no layer; use null to include every layer")
    return inc, patterns(exclude, "exclude") or []


def select_layers(names: Sequence[str], include: list[str] | None, exclude: list[str]) -> list[str]:
    """The layer names selected by the patterns, in module order.

    Raises:
        ValueError: a pattern matches no layer (a typo must not silently select everything), or
            nothing is left to prune.
    """
    for what, pats in (("include", include or []), ("exclude", exclude)):
        for p in pats:
            if not fnmatch.filter(names, p):
                raise ValueError(f"layers.{what} pattern {p!r} matches no prunable layer; the layers are "
                                 f"{list(names)}")
    chosen = [n for n in names if (include is None or any(fnmatch.fnmatchcase(n, p) for p in include))
              and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not chosen:
        raise ValueError(f"layers include={include} exclude={exclude} leave no layer to prune among {list(names)}")
    return chosen


def check_keep_states(keep_states: Any) -> int | None:
    if keep_states is None:
        return None
    if isinstance(keep_states, bool) or not isinstance(keep_states, int) or keep_states < 1:
        raise ValueError(f"keep_states must be a positive integer (states kept over the whole model), "
                         f"got {keep_states!r}")
    return keep_states


def keep_states_ratio(keep_states: int, totals: Mapping[str, int], selected: Sequence[str], min_states: int) -> float:
    """The ratio (of the selected layers' states) that keeps ``keep_states`` states over the model.

    Args:
        totals: every prunable layer's state count; unselected layers keep all of theirs.

    Raises:
        ValueError: ``keep_states`` is more than the model has or fewer than the selected layers
            must keep (``min_states`` each) plus the unselected layers' states.
    """
    fixed = sum(n for k, n in totals.items() if k not in selected)
    n_sel = sum(totals[k] for k in selected)
    lo, hi = fixed + min_states * len(selected), fixed + n_sel
    if not lo <= keep_states <= hi:
        raise ValueError(f"keep_states={keep_states} is out of range for this model: it stores {hi} states"
                         + (f" ({fixed} of them in excluded layers)" if fixed else "")
                         + f", and at least {lo} must stay (min_states={min_states} per pruned layer); "
                         f"allowed: {lo}..{hi}")
    return (n_sel - (keep_states - fixed)) / n_sel


def check_ratio_value(value: Any, epoch: int) -> float:
    """A ratio function's value at ``epoch``, checked to be a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"the ratio function returned {value!r} at epoch {epoch}; it must return a number in [0, 1]")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"the ratio function returned {value!r} at epoch {epoch}; ratios must lie in [0, 1] "
                         "(the fraction of states removed)")
    return float(value)


def ratio_function_steps(fn: Callable[[int], float], max_epochs: int) -> tuple[tuple[int, float], ...]:
    """``(epoch, ratio)`` steps of a ratio function over ``0 … max_epochs − 1``: the epochs where its
    value rises above every earlier one (pruning is cumulative), every value range-checked."""
    steps, top = [], 0.0
    for e in range(max_epochs):
        r = check_ratio_value(fn(e), e)
        if r > top:
            steps.append((e, r))
            top = r
    return tuple(steps)


def linear_ratio(epoch: int, final: float, start_epoch: int = 0, end_epoch: int = 0) -> float:
    """A ready-made ratio function: 0 before ``start_epoch``, rising linearly to ``final`` at
    ``end_epoch`` and constant after. In a config::

        ratio: {_target_: ssmlit.pruning.options.linear_ratio, _partial_: true, final: 0.5,
                start_epoch: 1, end_epoch: 4}
    """
    if epoch < start_epoch:
        return 0.0
    if epoch >= end_epoch:
        return float(final)
    return float(final) * (epoch - start_epoch + 1) / (end_epoch - start_epoch + 1)
