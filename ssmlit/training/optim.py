"""Optimizer parameter groups and the warmup + cosine schedule of S4/S5.

SSM parameters get their own learning rate and no weight decay, as in both reference codes. The
S5 ``opt_config`` variants (lindermanlab/S5 ``train_helpers.py``) decide where B, C and D go:

| opt_config       | ssm_lr, no decay        | ssm_lr, decay | lr, decay        |
|------------------|-------------------------|---------------|------------------|
| standard         | Λ (A), Δ, B             |               | C, D, the rest   |
| BandCdecay       | Λ (A), Δ                | B             | C, D, the rest   |
| BfastandCdecay   | Λ (A), Δ                |               | B, C, D, the rest|
| noBCdecay        | Λ (A), Δ, B, C, D       |               | the rest         |

``dt_global`` moves Δ to the global lr with decay (S5's flag). Unlike S5 (whose name matching misses
them) and like S4, biases, norm parameters and embeddings are never decayed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ssmlit.errors import check_bool, check_choice, check_float
from ssmlit.models.base import DiagonalSSM

OPT_CONFIGS = ("standard", "BandCdecay", "BfastandCdecay", "noBCdecay")


def param_groups(
    model: nn.Module,
    lr: float,
    ssm_lr: float,
    weight_decay: float,
    opt_config: str = "standard",
    dt_global: bool = False,
) -> list[dict]:
    """AdamW parameter groups, one per distinct (lr, weight_decay), each named for logging."""
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
        role_to_group["dt"] = glob

    assigned: dict[int, tuple[str, float, float]] = {}
    for module in model.modules():
        if isinstance(module, DiagonalSSM):
            for name, role in module.param_roles().items():
                assigned[id(getattr(module, name))] = role_to_group[role]
        elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding)):
            for p in module.parameters(recurse=False):
                assigned.setdefault(id(p), ("no_decay", lr, 0.0))
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


def check_optim(optim: Mapping[str, Any]) -> None:
    """Validate the values of an ``optim`` block (the keys given; absent ones take defaults).

    Raises:
        ValueError: naming the key, the bad value and what is allowed.
    """
    for key in ("lr", "ssm_lr", "weight_decay"):  # 0 is allowed: it freezes (or does not decay) a group
        if key in optim:
            check_float(key, optim[key], 0)
    if "opt_config" in optim:
        check_choice("opt_config", optim["opt_config"], OPT_CONFIGS)
    if "dt_global" in optim:
        check_bool("dt_global", optim["dt_global"])
    if "betas" in optim:
        betas = optim["betas"]
        if isinstance(betas, str) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        for b in betas:
            check_float("betas", b, 0, 1, high_open=True)
    if "warmup_epochs" in optim:
        check_float("warmup_epochs", optim["warmup_epochs"], 0)
    if "min_lr_ratio" in optim:
        check_float("min_lr_ratio", optim["min_lr_ratio"], 0, 1)
