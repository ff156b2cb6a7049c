"""The allow-list of ``_target_`` classes a config may instantiate, checked before instantiation.

Hydra's ``instantiate`` imports and calls whatever importable callable a ``_target_`` names
(``builtins.open``, ``numpy.savetxt``, ``os.system``), and a config embedded in a checkpoint is as
untrusted as the file it came in: ``weights_only=True`` keeps the checkpoint's pickle from running
code, but not the config it carries. So every config node ssmlit instantiates goes through
:func:`instantiate_checked`, which resolves the node to plain data, refuses any ``_target_`` (at
any depth) outside the group's allow-list, and only then instantiates exactly what it checked.

Groups and their classes:

- ``task``: ssmlit's data modules (each under its defining module and its ``ssmlit.data`` name);
- ``prune``: :class:`ssmlit.pruning.StatePruningCallback`;
- ``logger``: Lightning's TensorBoard and CSV loggers.

Code that adds an instantiable class (a new task, a schedule object) registers it with
:func:`register_target`; configs cannot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ssmlit.data import _LAZY as _DATA_MODULES
from ssmlit.errors import ConfigError

# Every task of ssmlit.data (its lazily imported task modules and the embedded digits), so a new
# data module is allowed as soon as ssmlit.data lists it.
_TASKS = {"DigitsDataModule": "digits"} | _DATA_MODULES

_ALLOWED: dict[str, set[str]] = {
    "task": {f"ssmlit.data.{m}.{c}" for c, m in _TASKS.items()} | {f"ssmlit.data.{c}" for c in _TASKS},
    # the callback, and the ratio functions of the epoch it accepts (prune.ratio={_target_: ..., _partial_: true})
    "prune": {"ssmlit.pruning.StatePruningCallback", "ssmlit.pruning.callback.StatePruningCallback",
              "ssmlit.pruning.options.linear_ratio"},
    "logger": {f"lightning.pytorch.loggers.{c}" for c in ("TensorBoardLogger", "CSVLogger")}
    | {"lightning.pytorch.loggers.tensorboard.TensorBoardLogger", "lightning.pytorch.loggers.csv_logs.CSVLogger"},
}


class UntrustedTargetError(ConfigError):
    """A config names a ``_target_`` outside the allow-list of its group."""


def allowed_targets(group: str) -> frozenset[str]:
    """The ``_target_`` strings the group ``group`` may instantiate."""
    return frozenset(_ALLOWED.get(group, ()))


def register_target(group: str, target: str) -> None:
    """Allow ``target`` (a dotted import path) in the config group ``group``. For code, not configs."""
    _ALLOWED.setdefault(group, set()).add(target)


def _targets(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_":
                yield path, v
            else:
                yield from _targets(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


def resolve_node(node: Any, key: str) -> Any:
    """A config node as plain Python data with every interpolation resolved (what is checked must
    be what is instantiated: an interpolated ``_target_`` could otherwise change after the check)."""
    if not isinstance(node, DictConfig | ListConfig):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except Exception as e:  # omegaconf raises several kinds for missing values and bad interpolations
        raise ConfigError(key, f"cannot be resolved: {e}".split("\n")[0]) from None


def check_targets(node: Any, group: str, key: str | None = None, where: str | None = None) -> Any:
    """Resolve ``node`` and raise :class:`UntrustedTargetError` if any ``_target_`` in it is not
    allowed for ``group``; returns the resolved plain data.

    Args:
        node: a config node (``DictConfig``) or plain data.
        group: the allow-list to check against (``task``, ``prune``, ``logger``).
        key: the node's config key for messages (default: ``group``).
        where: where the config came from, for messages (e.g. "the config embedded in x.ckpt").
    """
    key = key or group
    data = resolve_node(node, key)
    allowed = allowed_targets(group)
    shortest: dict[str, str] = {}  # one name per class in messages
    for t in sorted(allowed, key=len):
        shortest.setdefault(t.rsplit(".", 1)[-1], t)
    shown = ", ".join(sorted(shortest.values()))
    found = False
    for path, target in _targets(data, key):
        found = True
        if not isinstance(target, str) or target not in allowed:
            source = f" (in {where})" if where else ""
            raise UntrustedTargetError(
                f"{path}._target_", f"{target!r}{source} is not one of ssmlit's {group} classes, so it is not "
                f"instantiated; allowed: {shown}")
    if not found:
        raise ConfigError(f"{key}._target_", f"missing: {key} must name one of {shown}")
    return data


def instantiate_checked(node: Any, group: str, key: str | None = None, where: str | None = None) -> Any:
    """:func:`check_targets`, then ``hydra.utils.instantiate`` of the checked plain data.

    A constructor's own exception is re-raised as it is (not wrapped in Hydra's
    ``InstantiationException``), so callers can map it to the setting it names.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    data = check_targets(node, group, key, where)
    try:
        return instantiate(data)
    except InstantiationException as e:
        if e.__cause__ is not None:
            raise e.__cause__ from None
        raise
