"""State pruning for deep diagonal SSMs: LAST, AIRE-Prune and the LAST paper's baselines.

The core (:mod:`.scores`, :mod:`.methods`, :mod:`.plan`, :mod:`.schedule`) is plain PyTorch and
works on any module holding layers that implement the diagonal-system protocol;
:class:`StatePruningCallback` is the thin Lightning layer on top (imported lazily, so the core
never imports Lightning).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .methods import METHODS, PruningMethod, get_method
from .plan import PruningPlan, apply_pruning, compact_model, plan_pruning, prunable_layers, state_scores
from .schedule import SCHEDULES, pruning_schedule

if TYPE_CHECKING:
    from .callback import StatePruningCallback

__all__ = [
    "METHODS", "SCHEDULES", "PruningMethod", "PruningPlan", "StatePruningCallback", "apply_pruning",
    "compact_model", "get_method", "plan_pruning", "prunable_layers", "pruning_schedule", "state_scores",
]


def __getattr__(name: str) -> Any:
    if name == "StatePruningCallback":
        from .callback import StatePruningCallback

        return StatePruningCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
