"""Score, select and remove states across a whole model.

Works on any ``nn.Module`` that contains layers implementing the diagonal-system protocol
(``discretized_system()`` and a ``state_mask`` buffer, see :mod:`ssmlit.models.base`); the layers are
found by walking the module tree, so a ``SequenceModel``, a bare ``S5`` or a user's own stack of
them all work.

Ratio semantics: r ∈ [0, 1] is the fraction of all prunable states (stored conjugate pairs, summed
over layers, N = Σ_l n_l) that are masked after the plan. Selection is an exact top-K: K = N − ⌊rN⌉
states are kept (⌊·⌉ rounds half up), ties broken deterministically (earlier layer, then lower
state index, ranks first), so the achieved ratio equals r up to that rounding. Each layer keeps at
least ``min_states``; r = 1 keeps exactly ``min_states`` per layer (the paper's "100 %", which leaves
one pair per layer). Pruning is cumulative: states already masked stay masked and no longer take
part in the energy normalization, and a ratio below the current one prunes nothing more.

``convention="reference"`` replaces all of this by the published code's rules (float32 scores with
ε, ⌊N(1 − r)⌋ kept, ≥-threshold ties, ascending-sort normalization; :mod:`.reference`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .horizon import check_horizon
from .methods import PruningMethod, get_method
from .reference import layer_reference_scores, reference_normalize, reference_select
from .scores import ModalQuantities, energy_normalize, modal_quantities, quantities_from_norms

CONVENTIONS = ("ssmlit", "reference")


def check_score_options(
    method: str | PruningMethod,
    convention: str = "ssmlit",
    horizon: int | None = None,
    exact_pair: bool = False,
    min_states: int = 1,
) -> PruningMethod:
    """Validate the score options against the method (ValueError naming the option, the value and
    what is allowed); returns the method. ``horizon`` is an int or None here ("auto" is resolved by
    the caller from the task)."""
    m = get_method(method)
    label = method if isinstance(method, str) else "this method"
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")
    check_horizon(horizon)
    if not isinstance(exact_pair, bool):
        raise ValueError(f"exact_pair must be true or false, got {exact_pair!r}")
    if exact_pair and m.pair_score is None:
        raise ValueError(f"exact_pair=true needs an H∞ method (last, global_hinf, uniform_hinf); {label} has "
                         "no exact-pair form")
    if convention == "reference":
        if m.reference is None:
            raise ValueError(f"convention=reference reproduces the published code, which implements only last, "
                             f"aire and global_hinf; {label} has no reference form (use convention=ssmlit)")
        if exact_pair:
            raise ValueError("exact_pair=true is not part of the published code; use it with convention=ssmlit")
        if min_states != 1:
            raise ValueError(f"min_states={min_states} does not apply with convention=reference (the published "
                             "code has no per-layer minimum); leave min_states=1")
    return m


def is_prunable(module: nn.Module) -> bool:
    """Whether ``module`` implements the diagonal-system protocol."""
    return callable(getattr(module, "discretized_system", None)) and isinstance(
        getattr(module, "state_mask", None), torch.Tensor)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layer name (as in ``named_modules``; ``""`` for the model itself) → prunable layer, in module order.

    Raises:
        ValueError: the model holds no prunable layer.
    """
    layers = {name: m for name, m in model.named_modules() if is_prunable(m)}
    if not layers:
        raise ValueError(f"{type(model).__name__} contains no prunable layer: pruning needs modules with "
                         "discretized_system() and a state_mask buffer (ssmlit.models.S5 / S4D)")
    return layers


def layer_quantities(layer: nn.Module, step_rescale: float | None = None) -> ModalQuantities:
    """:class:`~ssmlit.pruning.scores.ModalQuantities` of one layer, in float64.

    Scores use the layer's own ``step_rescale`` (the rate it was trained at) unless told otherwise:
    a mask is a property of the trained system and is then held fixed, also when the model is later
    evaluated at another rate (e.g. Speech Commands at 8 kHz).
    """
    with torch.no_grad():
        if callable(getattr(layer, "state_norms", None)):
            return quantities_from_norms(*layer.state_norms(torch.complex128, step_rescale=step_rescale))
        return modal_quantities(*layer.discretized_system(torch.complex128, step_rescale=step_rescale))


def state_scores(
    model: nn.Module,
    method: str | PruningMethod,
    *,
    seed: int = 0,
    bidirectional: str = "paper",
    step_rescale: float | None = None,
    convention: str = "ssmlit",
    horizon: int | None = None,
    exact_pair: bool = False,
    calibration: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-state scores of every prunable layer, as the method ranks them.

    Normalized methods (``last``, ``aire``, ``lamp``) return the energy-normalized score (Eq. 9),
    computed over the layer's active states only. Masked states score −inf in every method.

    Args:
        model: any module containing prunable layers.
        method: a name in :data:`~ssmlit.pruning.METHODS` or a :class:`PruningMethod`.
        seed: seed of stochastic methods (``random``).
        bidirectional: how bidirectional layers combine ‖C^f‖ and ‖C^b‖ (see
            :mod:`ssmlit.pruning.scores`): ``"paper"``, ``"code"`` or ``"bound"``.
        step_rescale: Δ multiplier for the discretization (default: each layer's own).
        convention: ``"ssmlit"`` (float64) or ``"reference"`` (the published code's float32 scores
            and normalization, :mod:`.reference`; only methods with a published form).
        horizon: steps L of the horizon-aware methods (``last_horizon``, ``aire_horizon``); None:
            infinite (their scores then equal ``last`` / ``aire``). Ignored by other methods.
        exact_pair: score each conjugate pair by the exact H∞ of its real subsystem
            (:mod:`.pair`; H∞ methods only).
        calibration: layer name → float64 [n] measured energies (:func:`.calibration.calibrate`),
            required by data-aware methods (``data_energy``).

    Returns:
        layer name → float64 [n_layer] on the CPU.
    """
    m = check_score_options(method, convention, horizon, exact_pair)
    generator = torch.Generator().manual_seed(seed) if m.stochastic else None
    out = {}
    for name, layer in prunable_layers(model).items():
        active = layer.state_mask.detach().cpu()
        if convention == "reference":
            raw32 = layer_reference_scores(layer, m.reference, step_rescale).detach().cpu()
            ranked = reference_normalize(raw32, active) if m.normalize else \
                torch.where(active, raw32, torch.full_like(raw32, float("-inf")))
            out[name] = ranked.to(torch.float64)  # float32 values, exactly
            continue
        if m.data:
            if calibration is None or name not in calibration:
                raise ValueError(f"method {method!r} is data-aware: pass calibration= (energies of every layer, "
                                 "ssmlit.pruning.calibration.calibrate)")
            raw = calibration[name].detach().to("cpu", torch.float64)
        elif exact_pair:
            raw = m.pair_score(layer, step_rescale).detach().to("cpu", torch.float64)
        else:
            q = layer_quantities(layer, step_rescale)
            kwargs = {"generator": generator} if m.stochastic else {}
            if m.horizon:
                kwargs["horizon"] = horizon
            raw = m.score(q, bidirectional, **kwargs).detach().to("cpu", torch.float64)
        if raw.shape != active.shape:
            raise ValueError(f"method score returned shape {tuple(raw.shape)} for layer {name!r} with "
                             f"{active.numel()} states")
        if m.normalize:
            out[name] = energy_normalize(raw, active)
        else:
            out[name] = torch.where(active, raw, torch.full_like(raw, float("-inf")))
    return out


@dataclass
class PruningPlan:
    """The result of :func:`plan_pruning`.

    Attributes:
        method: the method's name.
        ratio: the requested ratio.
        masks: layer name → bool [n] (True = keep), cumulative with the masks already set.
        scores: layer name → float64 [n], the scores that were ranked (−inf for masked states).
        kept: layer name → states kept; total: layer name → states stored.
        achieved_ratio: 1 − Σ kept / Σ total.
        threshold: the lowest kept score of a global method (the global cut), else None.
        min_states, seed: as requested.
        convention: ``"ssmlit"`` or ``"reference"``; options: the score options used (horizon,
            exact_pair, bidirectional, calibration batches), for the record.
    """

    method: str
    ratio: float
    masks: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    kept: dict[str, int]
    total: dict[str, int]
    achieved_ratio: float
    threshold: float | None = None
    min_states: int = 1
    seed: int = 0
    convention: str = "ssmlit"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def layer_ratios(self) -> dict[str, float]:
        """Layer name → fraction of its states pruned."""
        return {k: 1 - self.kept[k] / self.total[k] for k in self.kept}

    def summary(self) -> dict[str, Any]:
        """A JSON-serializable description (no tensors)."""
        return dict(method=self.method, ratio=self.ratio, achieved_ratio=self.achieved_ratio,
                    min_states=self.min_states, seed=self.seed, threshold=self.threshold,
                    convention=self.convention, **self.options,
                    kept_total=sum(self.kept.values()), states_total=sum(self.total.values()),
                    layers=[dict(layer=k, kept=self.kept[k], total=self.total[k]) for k in self.kept])

    def table(self, before: dict[str, float] | None = None, after: dict[str, float] | None = None) -> str:
        """A plain-text per-layer table of remaining states, with optional metrics before/after."""
        width = max(5, *(len(k) for k in self.kept))
        lines = [f"Pruning plan: method={self.method}, requested ratio {self.ratio:.3f}, "
                 f"achieved {self.achieved_ratio:.4f}",
                 f"  {'layer':<{width}}  {'kept':>6} / {'total':<6} {'kept %':>7}"]
        for k, kept in self.kept.items():
            lines.append(f"  {k:<{width}}  {kept:>6} / {self.total[k]:<6} {100 * kept / self.total[k]:>6.1f}%")
        lines.append(f"  {'all':<{width}}  {sum(self.kept.values()):>6} / {sum(self.total.values()):<6} "
                     f"{100 * (1 - self.achieved_ratio):>6.1f}%")
        for label, metrics in (("before", before), ("after", after)):
            if metrics:
                lines.append(f"  {label:<7}" + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return "\n".join(lines)


def round_half_up(x: float) -> int:
    """⌊x⌉ with halves rounded up: how a ratio becomes a count of pruned states."""
    return math.floor(x + 0.5)


def _check_ratio(ratio: Any) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"pruning ratio must be a number in [0, 1], got {ratio!r}") from None
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"pruning ratio must lie in [0, 1] (the fraction of states removed), got {ratio!r}")
    return r


def check_min_states(layers: dict[str, nn.Module], min_states: int) -> None:
    """``min_states`` must be a positive integer no larger than any layer's state count."""
    if isinstance(min_states, bool) or not isinstance(min_states, int) or min_states < 1:
        raise ValueError(f"min_states must be an integer >= 1 (states kept in every layer), got {min_states!r}")
    small = {name: int(layer.state_mask.numel()) for name, layer in layers.items()
             if layer.state_mask.numel() < min_states}
    if small:
        raise ValueError(f"min_states={min_states} exceeds the number of stored states of layer(s) {small}; "
                         f"use min_states <= {min(small.values())}")


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries, ties to the lower index (stable descending sort)."""
    return torch.sort(scores, descending=True, stable=True).indices[:k]


def plan_pruning(
    model: nn.Module,
    method: str | PruningMethod,
    ratio: float,
    min_states: int = 1,
    seed: int = 0,
    *,
    bidirectional: str = "paper",
    step_rescale: float | None = None,
    scores: dict[str, torch.Tensor] | None = None,
    layers: Collection[str] | None = None,
    totals: Mapping[str, int] | None = None,
    convention: str = "ssmlit",
    horizon: int | None = None,
    exact_pair: bool = False,
    calibration: dict[str, torch.Tensor] | None = None,
) -> PruningPlan:
    """Decide which states to keep so that a fraction ``ratio`` of all states is pruned.

    Args:
        model: any module containing prunable layers; their current ``state_mask`` is respected.
        method: a name in :data:`~ssmlit.pruning.METHODS` or a :class:`PruningMethod`.
        ratio: fraction in [0, 1] of all stored states (conjugate pairs, over all layers) to prune.
        min_states: states every layer keeps at least.
        seed: seed of stochastic methods.
        bidirectional, step_rescale: passed to :func:`state_scores`.
        scores: precomputed :func:`state_scores` of this model and method (a sweep computes them
            once and plans many ratios).
        layers: names of the layers to prune (default: all). The others keep their masks and take
            no part in the ranking; ``ratio`` is then the fraction of the selected layers' states.
        totals: layer name → the state count ``ratio`` refers to (default: the stored count). A
            model compacted during training stores fewer states than it started with; passing the
            original counts keeps r the fraction of the *original* states removed (the plan's
            ``total`` and ``achieved_ratio`` then refer to them too).
        convention, horizon, exact_pair, calibration: see :func:`state_scores`; with
            ``convention="reference"`` the selection follows the published code too (module
            docstring) and ``min_states`` must be 1.

    Returns:
        a :class:`PruningPlan`; the model is not modified (see :func:`apply_pruning`).
    """
    r = _check_ratio(ratio)
    m = check_score_options(method, convention, horizon, exact_pair, min_states)
    name = method if isinstance(method, str) else m.description or "custom"
    all_layers = prunable_layers(model)
    unknown = sorted(set(layers or ()) - set(all_layers))
    if unknown or (layers is not None and not layers):
        raise ValueError(f"layers={sorted(layers or ())} must name some of the model's prunable layers "
                         f"{sorted(all_layers)}; unknown: {unknown}")
    layers = {k: v for k, v in all_layers.items() if layers is None or k in layers}
    check_min_states(layers, min_states)
    if scores is None:
        scores = state_scores(model, m, seed=seed, bidirectional=bidirectional, step_rescale=step_rescale,
                              convention=convention, horizon=horizon, exact_pair=exact_pair, calibration=calibration)
    if set(scores) != set(all_layers):
        raise ValueError(f"scores cover layers {sorted(scores)}, the model has {sorted(all_layers)}")
    active = {k: layer.state_mask.detach().cpu().clone() for k, layer in layers.items()}
    stored = {k: int(a.numel()) for k, a in active.items()}
    total = {k: int(totals[k]) if totals is not None else stored[k] for k in active}
    masks = {k: torch.zeros_like(a) for k, a in active.items()}
    threshold = None
    options = dict(bidirectional="code" if convention == "reference" else bidirectional)
    if m.horizon:
        options["horizon"] = horizon
    if m.pair_score is not None:
        options["exact_pair"] = exact_pair

    if convention == "reference":
        masks, threshold = reference_select({k: scores[k] for k in layers}, r, active)
    elif m.scope == "uniform":
        for k in layers:
            s = scores[k]
            want = max(total[k] - round_half_up(r * total[k]), min_states)
            keep = _top(s, min(want, int(active[k].sum())))  # −inf (masked) states rank last
            masks[k][keep] = True
    else:
        n_all = sum(total.values())
        n_keep = n_all - round_half_up(r * n_all)
        # Each layer's best min_states are kept whatever their global rank (no layer is emptied).
        rest = {}
        for k in layers:  # module order: the cross-layer tie-break
            s = scores[k]
            forced = _top(s, min(min_states, int(active[k].sum())))
            masks[k][forced] = True
            rest[k] = torch.where(masks[k] | ~active[k], torch.full_like(s, float("-inf")), s)
        budget = n_keep - sum(int(mk.sum()) for mk in masks.values())
        budget = max(0, min(budget, sum(int((v > float("-inf")).sum()) for v in rest.values())))
        if budget:
            flat = torch.cat(list(rest.values()))  # layer order, then state index: the tie-break
            chosen = _top(flat, budget)
            threshold = float(flat[chosen[-1]])
            offsets = torch.cumsum(torch.tensor([0] + [stored[k] for k in rest]), 0)
            for i, k in enumerate(rest):
                local = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
                masks[k][local] = True

    # Unselected layers keep their masks, in module order with the others.
    masks = {k: masks[k] if k in masks else layer.state_mask.detach().cpu().clone() for k, layer in all_layers.items()}
    total = {k: total[k] if k in total else int(totals[k]) if totals is not None else int(masks[k].numel())
             for k in masks}
    kept = {k: int(v.sum()) for k, v in masks.items()}
    achieved = 1 - sum(kept.values()) / sum(total.values())
    return PruningPlan(method=name, ratio=r, masks=masks, scores=scores, kept=kept, total=total,
                       achieved_ratio=achieved, threshold=threshold, min_states=min_states, seed=seed,
                       convention=convention, options=options)


@torch.no_grad()
def apply_pruning(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Set every prunable layer's ``state_mask`` to the plan's mask (in place; returns ``model``).

    The plan may come from another copy of the same architecture (a sweep plans on one model and
    applies to fresh copies); layer names and state counts must match.
    """
    layers = prunable_layers(model)
    if set(layers) != set(plan.masks):
        raise ValueError(f"the plan covers layers {sorted(plan.masks)} but the model has {sorted(layers)}")
    for name, layer in layers.items():
        mask = plan.masks[name]
        if mask.shape != layer.state_mask.shape:
            raise ValueError(f"layer {name!r}: plan mask has shape {tuple(mask.shape)}, the layer's state_mask "
                             f"{tuple(layer.state_mask.shape)} (was the model compacted after planning?)")
        layer.state_mask.copy_(mask.to(layer.state_mask.device))
    return model


def compact_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The model with masked states physically removed (each layer's ``compact()``).

    S5 layers shrink to their kept states; S4D layers to the largest per-channel kept count (see
    :meth:`ssmlit.models.S4D.compact`). Outputs equal the masked model's up to float round-off, and
    compute and memory fall with the state count. A ``SequenceModel``'s ``config()`` then records
    the per-layer state sizes, so it can be saved and rebuilt (:func:`ssmlit.models.save_model`).

    Args:
        model: any module containing prunable layers with a ``compact()`` method.
        inplace: replace the layers inside ``model`` itself instead of a deep copy.
    """
    target = model if inplace else copy.deepcopy(model)
    layers = prunable_layers(target)
    for name, layer in layers.items():
        if not callable(getattr(layer, "compact", None)):
            raise TypeError(f"layer {name!r} ({type(layer).__name__}) has no compact() method")
        new = layer.compact()
        new.train(layer.training)
        if name == "":
            return new
        parent_name, _, child = name.rpartition(".")
        parent = target.get_submodule(parent_name) if parent_name else target
        setattr(parent, child, new)
    return target
