"""Optimizer parameter groups and the warmup + cosine schedules of S4/S5.

SSM parameters get their own learning rate and no weight decay, as in both reference codes. The
S5 ``opt_config`` variants (lindermanlab/S5 ``train_helpers.py``) decide where B, C and D go:

| opt_config       | ssm_lr, no decay        | ssm_lr, decay | lr, decay        |
|------------------|-------------------------|---------------|------------------|
| standard         | Λ (A), Δ, B             |               | C, D, the rest   |
| BandCdecay       | Λ (A), Δ                | B             | C, D, the rest   |
| BfastandCdecay   | Λ (A), Δ                |               | B, C, D, the rest|
| noBCdecay        | Λ (A), Δ, B, C, D       |               | the rest         |

Three switches move single roles (the layouts of the reference runs):

- ``dt_global`` moves Δ to the global lr with decay (S5's flag); with ``dt_decay=False`` Δ trains
  at the global lr *without* decay, s4's ``lr: {dt: null, A: ..., B: ...}`` (the v3 LRA configs);
- ``c_lr`` gives C its own lr, keeping its group's decay: s4's scalar layer ``lr`` (v3 Pathfinder and
  Path-X) also lands on C, because C has no per-parameter override there;
- ``decay_norm_bias``: like S4, ssmlit never decays biases, norm parameters and the token embedding;
  ``True`` decays them with their group, as S5 does (its no-decay name list contains "norm", but
  the leaves it matches are called ``scale`` and ``bias``, so nothing is excluded; its token
  encoder is a Dense layer on one-hot inputs, whose kernel is our embedding).

Schedules (per optimizer step t, W warmup steps, T total steps), as learning-rate multipliers:

- ``cosine`` (default): (t + 1)/W during warmup, then ½(1 + cos(π·(t − W)/(T − W))): the cosine
  starts at 1 and reaches ``min_lr_ratio`` on the last step;
- ``s5_cosine`` (lindermanlab/S5 ``train.py``): the same warmup, then ½(1 + cos(π·min(t, T − W)/(T − W)))
  with the *global* step t: the cosine starts at cos(π·W/(T − W)) (slightly below 1), reaches
  ``min_lr_ratio`` W steps before the end and stays there, so the last ``warmup_epochs`` epochs
  train at lr·``min_lr_ratio`` (0 by default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ssmlit.errors import check_float
from ssmlit.models.base import DiagonalSSM

OPT_CONFIGS = ("standard", "BandCdecay", "BfastandCdecay", "noBCdecay")
SCHEDULES = ("cosine", "s5_cosine")


def param_groups(
    model: nn.Module,
    lr: float,
    ssm_lr: float,
    weight_decay: float,
    opt_config: str = "standard",
    dt_global: bool = False,
    dt_decay: bool = True,
    c_lr: float | None = None,
    decay_norm_bias: bool = False,
) -> list[dict]:
    """AdamW parameter groups, one per distinct (lr, weight_decay), each named for logging.

    Args:
        model: any module; the roles of :class:`~ssmlit.models.base.DiagonalSSM` parameters come
            from their ``param_roles()``.
        lr, ssm_lr, weight_decay: the global lr, the SSM lr and the global weight decay.
        opt_config: one of :data:`OPT_CONFIGS` (table in the module docstring).
        dt_global: Δ at ``lr`` instead of ``ssm_lr``; decayed unless ``dt_decay`` is False.
        dt_decay: with ``dt_global``, whether Δ is weight-decayed (False: s4's ``dt: null``).
        c_lr: C's learning rate (None: that of C's group); C keeps its group's weight decay.
        decay_norm_bias: decay biases, norm parameters and embeddings like every other parameter
            of their group (S5), instead of never (S4, the default).
    """
    if opt_config not in OPT_CONFIGS:
        raise ValueError(f"unknown opt_config {opt_config!r}; choose one of {OPT_CONFIGS}")
    ssm = ("ssm", ssm_lr, 0.0)
    glob = ("decay", lr, weight_decay)
    role_to_group = {
        "standard": {"A": ssm, "dt": ssm, "B": ssm, "C": glob, "D": glob},
        "BandCdecay": {"A": ssm, "dt": ssm, "B": ("ssm_decay", ssm_lr, weight_decay), "C": glob, "D": glob},
        "BfastandCdecay": {"A": ssm, "dt": ssm, "B": glob, "C": glob, "D": glob},
        "noBCdecay": {"A": ssm, "dt": ssm, "B": ssm, "C": ssm, "D": ssm},
    }[opt_config]
    if dt_global:
        role_to_group["dt"] = glob if dt_decay else ("dt_no_decay", lr, 0.0)
    if c_lr is not None:
        role_to_group["C"] = ("C", float(c_lr), role_to_group["C"][2])

    assigned: dict[int, tuple[str, float, float]] = {}
    for module in model.modules():
        if isinstance(module, DiagonalSSM):
            for name, role in module.param_roles().items():
                assigned[id(getattr(module, name))] = role_to_group[role]
        elif not decay_norm_bias and isinstance(
                module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding)):
            for p in module.parameters(recurse=False):
                assigned.setdefault(id(p), ("no_decay", lr, 0.0))
    if not decay_norm_bias:
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                assigned.setdefault(id(p), ("no_decay", lr, 0.0))

    groups: dict[tuple[str, float, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault(assigned.get(id(p), glob), []).append(p)
    return [dict(name=k[0], params=v, lr=k[1], weight_decay=k[2]) for k, v in groups.items()]


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier: linear warmup from ~0 to 1 over ``warmup_steps``, then cosine to ``min_lr_ratio``
    at ``total_steps`` (stepped once per optimizer step)."""
    warmup_steps = max(0, min(warmup_steps, total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def s5_warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier of lindermanlab/S5 ``train.py``: ``linear_warmup`` for the first ``warmup_steps``,
    then ``cosine_annealing`` evaluated at the *global* step with period ``total_steps − warmup_steps``
    (the module docstring's ``s5_cosine``): it reaches ``min_lr_ratio`` ``warmup_steps`` steps before
    the end and stays there."""
    warmup_steps = max(0, min(warmup_steps, total_steps))
    span = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(step, span) / span
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


SCHEDULE_FNS: dict[str, Callable[[int, int, float], Callable[[int], float]]] = {
    "cosine": warmup_cosine, "s5_cosine": s5_warmup_cosine,
}


def check_optim(optim: Mapping[str, Any]) -> None:
    """Validate the ``optim`` block (complete, i.e. merged with the defaults) before any training:
    a ValueError naming the key, the bad value and what is allowed."""

    def number(key: str, positive: bool = False, allow_none: bool = False) -> None:
        v = optim[key]
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0 or (positive and v == 0):
            bound = "> 0" if positive else ">= 0"
            extra = " or null" if allow_none else ""
            raise ValueError(f"{key} must be a number {bound}{extra}, got {v!r}")

    for key in ("lr", "ssm_lr", "weight_decay", "warmup_epochs", "min_lr_ratio"):
        number(key)
    number("c_lr", allow_none=True)
    if optim["opt_config"] not in OPT_CONFIGS:
        raise ValueError(f"opt_config must be one of {OPT_CONFIGS}, got {optim['opt_config']!r}")
    if optim["schedule"] not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {optim['schedule']!r}")
    for key in ("dt_global", "dt_decay", "decay_norm_bias"):
        if not isinstance(optim[key], bool):
            raise ValueError(f"{key} must be true or false, got {optim[key]!r}")
    if not optim["dt_decay"] and not optim["dt_global"]:
        raise ValueError("dt_decay=false only applies with optim.dt_global=true (Δ at the global lr "
                         "without weight decay); with dt_global=false Δ is in the SSM group, never decayed")
    if optim["min_lr_ratio"] > 1:
        raise ValueError(f"min_lr_ratio must lie in [0, 1], got {optim['min_lr_ratio']!r}")
    betas = optim["betas"]
    if isinstance(betas, str) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    for b in betas:
        check_float("betas", b, 0, 1, high_open=True)
