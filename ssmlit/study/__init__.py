"""The compression study behind ``python -m ssmlit.sweep``: evaluate one-shot pruning of a trained
checkpoint over methods × ratios, summarize it like the LAST paper, pick a ratio under an accuracy
budget and export the compacted model.

- :mod:`.checkpoint`: find/validate/load a run's checkpoint and training config; export.
- :mod:`.evaluate`: a plain evaluation loop over a task's val/test variants.
- :mod:`.core`: the sweep, seed averaging, the summary tables' numbers, the automatic ratio.
- :mod:`.efficiency`: parameters, state dimensions, throughput and peak memory.
- :mod:`.report`: CSV/JSON/markdown, figures, TensorBoard.
"""

from .checkpoint import SweepInputError, load_run, resolve_checkpoint
from .core import MaskedEvaluator, Point, curves, run_grid, select_ratio, summarize
from .evaluate import Evaluator, Metrics, variants_of

__all__ = [
    "Evaluator", "MaskedEvaluator", "Metrics", "Point", "SweepInputError", "curves", "load_run",
    "resolve_checkpoint", "run_grid", "select_ratio", "summarize", "variants_of",
]
