"""Compaction during training: remove masked states from a model that is being optimized, and carry
the optimizer over to the smaller parameters without losing its history.

After a pruning step only masks change; every later step still computes every state. Compacting
replaces each prunable layer by its ``compact()`` (masked states physically removed) and then:

- moves each optimizer's per-parameter state (AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``
  and any other tensor shaped like the parameter) to the new parameter, sliced with the layer's
  own :meth:`compaction_slices` maps (the ones ``compact()`` applies to the parameters, so both
  always agree); scalar state (``step``) is kept as is;
- keeps parameter groups (their order, learning rates, weight decay, names), hence the LR
  scheduler, which only refers to the optimizer object, and a gradient scaler, which holds no
  per-parameter state;
- under DDP, wraps the LightningModule in a new ``DistributedDataParallel`` through the strategy's
  own ``configure_ddp`` (the old wrapper's reducer is bound to the old parameters).

Because masked states get zero gradients and no output, AdamW's update of every kept entry is the
same before and after compaction, so training continues exactly as the masked model would
(``tests/test_compaction.py`` checks the losses). One exception: an S4D layer with ``n_ssm < H``
shares A and B between channels; compaction gives every channel its own copy (with the shared
moments gathered per channel), so from then on each channel's A follows its own gradient only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ssmlit.models.backbone import LAYERS
from ssmlit.pruning.plan import prunable_layers


@dataclass
class ParamMove:
    """One parameter replaced by compaction: ``new`` holds ``take(old)``."""

    old: nn.Parameter
    new: nn.Parameter
    take: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CompactionResult:
    """What :func:`compact_layers` did.

    Attributes:
        layers: layer name → (stored states before, stored states after), for every compacted layer.
        moves: ``id(old parameter)`` → :class:`ParamMove`.
    """

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    moves: dict[int, ParamMove] = field(default_factory=dict)


def _float_dtype(module: nn.Module) -> torch.dtype | None:
    return next((t.dtype for t in module.parameters() if t.is_floating_point()), None)


@torch.no_grad()
def compact_layers(model: nn.Module, names: Iterable[str] | None = None) -> CompactionResult:
    """Replace (in place) every prunable layer that has masked states by its ``compact()``.

    Layers without masked states are left alone (their parameters, hence optimizer state and DDP
    buckets, stay valid). New layers are built inside a forked CPU RNG, so compaction leaves the
    random stream (dropout, data order) exactly where it was.

    Args:
        model: any module holding layers with ``compact()`` and ``compaction_slices()``.
        names: restrict to these layer names (default: every prunable layer).

    Returns:
        a :class:`CompactionResult` mapping each replaced parameter to its successor.
    """
    result = CompactionResult()
    layers = prunable_layers(model)
    for name in names if names is not None else list(layers):
        layer = layers[name]
        if layer.n_active == layer.n_states:
            continue
        if not callable(getattr(layer, "compaction_slices", None)):
            raise TypeError(f"layer {name!r} ({type(layer).__name__}) has no compaction_slices(): it cannot be "
                            "compacted while training (the optimizer state could not follow)")
        slices = layer.compaction_slices()
        with torch.random.fork_rng(devices=[]):
            new = layer.compact()
        dtype = _float_dtype(layer)
        new = new.to(device=layer.state_mask.device, dtype=dtype) if dtype is not None else new
        new.train(layer.training)
        params = dict(layer.named_parameters(recurse=False))
        for pname, p_new in new.named_parameters(recurse=False):
            p_old = params.get(pname)
            if p_old is None or pname not in slices:
                raise TypeError(f"layer {name!r}: compacted parameter {pname!r} has no counterpart in "
                                "compaction_slices()")
            p_new.requires_grad_(p_old.requires_grad)
            result.moves[id(p_old)] = ParamMove(p_old, p_new, slices[pname])
        parent_name, _, child = name.rpartition(".")
        if not child:
            raise ValueError("compact_layers replaces layers inside a model; the model itself is a single layer")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        result.layers[name] = (layer.n_states, new.n_states)
    return result


@torch.no_grad()
def transfer_optimizer_state(optimizer: torch.optim.Optimizer, moves: Mapping[int, ParamMove]) -> int:
    """Point ``optimizer`` at the compacted parameters and slice its per-parameter state.

    Parameter groups keep their position and every hyper-parameter (lr, weight decay, betas, the
    scheduler's ``initial_lr``); each group's list keeps its order, so the optimizer's state dict
    stays index-compatible with one built afresh over the compacted model.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (AdamW in ssmlit).
        moves: :attr:`CompactionResult.moves`.

    Returns:
        the number of parameters moved.
    """
    moved = 0
    for group in optimizer.param_groups:
        params = group["params"]
        for i, p in enumerate(params):
            move = moves.get(id(p))
            if move is None:
                continue
            params[i] = move.new
            moved += 1
            state: MutableMapping[str, Any] = optimizer.state.pop(p, None) or {}
            if state:
                optimizer.state[move.new] = {
                    k: move.take(v).contiguous() if torch.is_tensor(v) and v.shape == p.shape and v.dim() > 0 else v
                    for k, v in state.items()
                }
    return moved


def compact_during_fit(trainer: Any, pl_module: nn.Module) -> dict[str, tuple[int, int]]:
    """Compact ``pl_module`` inside a running ``trainer.fit``: layers, optimizers, hyper-parameters, DDP.

    Every rank must call this with identical masks (the pruning callback broadcasts them), so every
    rank builds identical shapes; ``DistributedDataParallel``'s constructor checks that.

    Returns:
        layer name → (stored states before, after) of the compacted layers.
    """
    result = compact_layers(pl_module)
    if not result.layers:
        return {}
    for optimizer in getattr(trainer, "optimizers", None) or []:
        transfer_optimizer_state(optimizer, result.moves)
    sync = getattr(pl_module, "sync_ssm_hparams", None)
    if callable(sync):
        sync()
    rewrap_ddp(trainer.strategy, pl_module)
    return result.layers


def rewrap_ddp(strategy: Any, pl_module: nn.Module) -> bool:
    """Give DDP the new parameters: unwrap and wrap again through the strategy's ``configure_ddp``
    (which also re-registers communication hooks). Returns whether a wrapper was rebuilt."""
    from lightning.pytorch.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(strategy, DDPStrategy) or not isinstance(strategy.model, DistributedDataParallel):
        return False
    strategy.model = pl_module
    strategy.configure_ddp()
    return True


def check_compactable_strategy(strategy: Any) -> None:
    """Compaction while training supports single-device and DDP strategies (DDP's wrapper can be
    rebuilt; sharded strategies own flattened copies of the parameters)."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    if not isinstance(strategy, SingleDeviceStrategy | DDPStrategy):
        raise ValueError(f"prune.compact=true supports the single-device and DDP strategies, not "
                         f"{type(strategy).__name__}; set prune.compact=false (masks only)")


# -- checkpoints -----------------------------------------------------------------------------------
def per_layer_ssm_configs(model_hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``model.ssm`` of a SequenceClassifier's hyper-parameters as one mapping per block."""
    ssm = model_hparams.get("ssm")
    n = int(model_hparams.get("n_layers", 4))
    if ssm is None or isinstance(ssm, Mapping):
        return [dict(ssm or {}) for _ in range(n)]
    return [dict(s) for s in ssm]


@torch.no_grad()
def match_checkpoint_shapes(model: nn.Module, checkpoint: Mapping[str, Any], prefix: str = "model.") -> list[int]:
    """Rebuild the SSM layers of ``model`` (a ``SequenceModel``) whose tensor shapes differ from the
    checkpoint's, from the checkpoint's per-layer configs, so its state dict then loads.

    Lightning calls ``on_load_checkpoint`` before it loads weights and before it builds and
    restores optimizers (``resume=``), so the optimizer is created over the rebuilt parameters.

    Returns:
        the indices of the rebuilt blocks.
    """
    hp = checkpoint.get("hyper_parameters") or {}
    model_hp = hp.get("model") if isinstance(hp, Mapping) else None
    state = checkpoint.get("state_dict") or {}
    if not isinstance(model_hp, Mapping) or not hasattr(model, "blocks"):
        return []
    configs = per_layer_ssm_configs(model_hp)
    cls = LAYERS[model_hp.get("layer", "s5")]
    rebuilt = []
    for i, block in enumerate(model.blocks):
        head = f"{prefix}blocks.{i}.ssm."
        mine = block.ssm.state_dict()
        theirs = {k[len(head):]: v for k, v in state.items() if k.startswith(head)}
        if not theirs or i >= len(configs):
            continue
        if all(k in mine and tuple(mine[k].shape) == tuple(v.shape) for k, v in theirs.items()):
            continue
        old = block.ssm
        cfg = {k: v for k, v in configs[i].items() if k != "d_model"}
        with torch.random.fork_rng(devices=[]):
            new = cls(old.d_model, **cfg)
        dtype = _float_dtype(old)
        new = new.to(device=old.state_mask.device, dtype=dtype) if dtype is not None else new
        new.train(old.training)
        block.ssm = new
        rebuilt.append(i)
    return rebuilt


def compact_checkpoint(checkpoint: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Compact a SequenceClassifier Lightning checkpoint (a loaded dict, modified in place): weights,
    hyper-parameters and, when present, the AdamW state, so the file still resumes with ``resume=``.

    Returns:
        layer name → (stored states before, after).
    """
    from .module import SequenceClassifier

    hp = dict(checkpoint["hyper_parameters"])
    module = SequenceClassifier(hp["model"], hp.get("optim"), val_variants=hp.get("val_variants", (("val", 1.0),)),
                                test_variants=hp.get("test_variants", (("test", 1.0),)))
    module.load_state_dict(checkpoint["state_dict"])
    optimizer = None
    if checkpoint.get("optimizer_states"):
        optimizer = module.make_optimizer()
        optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    result = compact_layers(module)
    if not result.layers:
        return {}
    if optimizer is not None:
        transfer_optimizer_state(optimizer, result.moves)
        checkpoint["optimizer_states"][0] = optimizer.state_dict()
    module.sync_ssm_hparams()
    checkpoint["state_dict"] = module.state_dict()
    checkpoint["hyper_parameters"] = dict(checkpoint["hyper_parameters"]) | {"model": module.hparams["model"]}
    return result.layers


def compact_checkpoint_file(path: Any) -> dict[str, tuple[int, int]]:
    """Load (``weights_only=True``), compact and atomically rewrite one checkpoint file."""
    from ssmlit.utils import atomic_write_bytes

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    changed = compact_checkpoint(checkpoint)
    if changed:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())
    return changed
