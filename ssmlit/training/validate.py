"""The config-validation phase of ``train.py``: every setting is checked before any data work.

:func:`validate_config` takes the whole composed config and constructs every cheap object it
describes — the task's data module (constructors do no I/O), the SSM layer, the
``SequenceClassifier`` (model and ``optim`` block, on placeholder input shapes when the vocabulary
is only known after ``prepare_data``), the pruning callback (and its schedule against
``trainer.max_epochs`` and the model's layer sizes), a ``Trainer`` with the ``trainer`` block — and
checks the top-level settings (``seed``, ``matmul_precision``, ``checkpoint``, ``resume``). So a
bad value anywhere is reported before a download, a preprocessing pass or an epoch is spent.

Constructors raise ``ValueError``/``TypeError`` naming their argument; this phase turns that into
a :class:`~ssmlit.errors.ConfigError` whose key is the config path (``model.ssm.d_state``), found
by matching the setting names of the object's group in the message. New options that other code
validates in its constructors are therefore picked up without changes here.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssmlit.errors import ConfigError, UserError, check_choice, check_float, check_int
from ssmlit.registry import allowed_targets, check_targets, instantiate_checked, resolve_node

# The config's top-level settings (conf/config.yaml and its groups); anything else is a typo that
# would otherwise be ignored.
TOP_LEVEL_KEYS = ("task", "model", "trainer", "logger", "optim", "checkpoint", "prune", "seed", "matmul_precision",
                  "resume")
MATMUL_PRECISIONS = ("highest", "high", "medium")
PLACEHOLDER_CLASSES = 2  # tasks that learn their classes from the data (a generic .ts archive)
TOKEN_PLACEHOLDER_VOCAB = 2  # token tasks learn their vocabulary in prepare_data; any size checks the rest


@dataclass
class CheckedConfig:
    """What validation learned that the job reuses.

    Attributes:
        datamodule: the constructed (not yet prepared) task.
        max_epochs: ``trainer.max_epochs`` as Lightning will see it.
        resume: the checked checkpoint to resume from, or None.
    """

    datamodule: Any
    max_epochs: int | None
    resume: Any | None = None


# -- mapping constructor errors to config keys ------------------------------------------------------
def setting_names(prefix: str, node: Mapping[str, Any] | None, *fns: Callable) -> dict[str, str]:
    """Setting name → config key for one group: the node's keys and the constructors' parameters."""
    names = [str(k) for k in (node or {}) if not str(k).startswith("_")]
    for fn in fns:
        with contextlib.suppress(TypeError, ValueError):
            names += [p for p in inspect.signature(fn).parameters if p not in ("self", "args", "kwargs")]
    return {n: f"{prefix}.{n}" for n in names}


def task_setting_names(task_cfg: Mapping[str, Any]) -> dict[str, str]:
    """:func:`setting_names` of the ``task`` group, with the constructor arguments of the task
    class and its bases (looked up only for an allow-listed ``_target_``)."""
    from hydra.utils import get_class

    target = task_cfg.get("_target_")
    fns: list[Callable] = []
    if isinstance(target, str) and target in allowed_targets("task"):
        with contextlib.suppress(Exception):
            fns = [k.__init__ for k in get_class(target).__mro__ if "__init__" in vars(k) and k.__module__
                   .startswith("ssmlit.")]
    return setting_names("task", task_cfg, *fns)


def locate_setting(message: str, names: Mapping[str, str]) -> str | None:
    """The key of the setting named first in ``message`` (as a whole word), or None."""
    best: tuple[int, int, str] | None = None
    for name, key in names.items():
        m = re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message)
        if m and (best is None or (m.start(), -len(name)) < (best[0], best[1])):
            best = (m.start(), -len(name), key)
    return best[2] if best else None


def as_config_error(e: BaseException, names: Mapping[str, str], group: str) -> ConfigError:
    """A constructor's exception as a :class:`ConfigError` keyed by the setting its message names."""
    if isinstance(e, ConfigError):
        return e
    message = str(e).strip() or type(e).__name__
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", message)
    if unexpected:
        bad = unexpected.group(1)
        allowed = sorted({n for n, k in names.items() if k.rsplit(".", 1)[0] == group} - {bad})
        close = difflib.get_close_matches(bad, allowed, n=1)
        hint = f"did you mean {group}.{close[0]}? " if close else ""
        return ConfigError(f"{group}.{bad}", f"no such setting; {hint}{group} accepts {', '.join(allowed)}")
    key = locate_setting(message, names) or group
    name = key.rsplit(".", 1)[-1]
    if message.startswith(f"{name} must "):
        message = message[len(name) + 1:]
    return ConfigError(key, message.split("\n")[0])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's start-up chatter ("GPU available: ...") for the throw-away Trainer."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _container(cfg: DictConfig, key: str) -> dict[str, Any]:
    node = cfg.get(key)
    if node is None:
        return {}
    data = resolve_node(node, key)
    if not isinstance(data, dict):
        raise ConfigError(key, f"must be a mapping of settings, got {data!r}")
    return data


# -- the phase --------------------------------------------------------------------------------------
def validate_config(cfg: DictConfig) -> CheckedConfig:
    """Check the whole composed training config; raise :class:`ConfigError` naming the first bad
    setting. Does no I/O beyond reading a ``resume`` checkpoint, and leaves the global RNG state
    as it found it (the model built here is thrown away)."""
    with torch.random.fork_rng(devices=[]), _quiet():
        return _validate(cfg)


def _validate(cfg: DictConfig) -> CheckedConfig:
    from ssmlit.data.base import SequenceDataModule

    unknown = [k for k in cfg if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(str(unknown[0]), f"no such setting; the top level has {', '.join(TOP_LEVEL_KEYS)}")
    _top_level(cfg)

    # task: construct (no I/O), after the allow-list check
    task_cfg = _container(cfg, "task")
    try:
        dm = instantiate_checked(cfg.task, "task")
    except UserError:
        raise
    except (ValueError, TypeError, ImportError) as e:
        raise as_config_error(e, task_setting_names(task_cfg), "task") from None
    if not isinstance(dm, SequenceDataModule):
        raise ConfigError("task._target_", f"must build a ssmlit.data.SequenceDataModule, got {type(dm).__name__}")

    trainer_cfg = _container(cfg, "trainer")
    max_epochs = _trainer_values(trainer_cfg)
    module = _model_and_optim(cfg, dm)
    _prune(cfg, module, max_epochs)
    _checkpoint(cfg, dm)
    if cfg.get("logger"):
        # Only the target: the logger's save_dir interpolates Hydra's run directory, unknown here.
        check_targets({"_target_": OmegaConf.select(cfg, "logger._target_")}, "logger")
    _trainer_object(trainer_cfg)
    resume = None
    if cfg.get("resume") is not None:
        from .resume import check_resume

        resume = check_resume(cfg.resume, module, dm, max_epochs)
    return CheckedConfig(dm, max_epochs, resume)


def _top_level(cfg: DictConfig) -> None:
    for key, check in (
        ("seed", lambda v: check_int("seed", v, 0, 2**32 - 1)),
        ("matmul_precision", lambda v: check_choice("matmul_precision", v, MATMUL_PRECISIONS)),
    ):
        try:
            check(cfg.get(key))
        except ValueError as e:
            raise as_config_error(e, {key: key}, key) from None
    resume = cfg.get("resume")
    if resume is not None and (not isinstance(resume, str) or not resume.strip()):
        raise ConfigError("resume", f"must be the path of a checkpoint (or of a run directory) or null, got {resume!r}")


_TRAINER_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "max_epochs": lambda n, v: check_int(n, v, -1, allow_none=True),
    "min_epochs": lambda n, v: check_int(n, v, 0, allow_none=True),
    "max_steps": lambda n, v: check_int(n, v, -1),
    "gradient_clip_val": lambda n, v: check_float(n, v, 0, allow_none=True),
    "log_every_n_steps": lambda n, v: check_int(n, v, 1, allow_none=True),
    "accumulate_grad_batches": lambda n, v: check_int(n, v, 1),
    "check_val_every_n_epoch": lambda n, v: check_int(n, v, 1, allow_none=True),
    "num_sanity_val_steps": lambda n, v: check_int(n, v, -1, allow_none=True),
}


def _check_limit(name: str, value: Any) -> None:
    # Lightning reads an int as a number of batches and a float as a fraction of the loader.
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return
    check_float(name, value, 0, 1)


def _trainer_values(trainer_cfg: dict[str, Any]) -> int | None:
    """Trainer settings Lightning accepts silently although they are wrong (a string max_epochs,
    a negative clip value); returns ``max_epochs``."""
    for name, value in trainer_cfg.items():
        try:
            if name in _TRAINER_CHECKS:
                _TRAINER_CHECKS[name](name, value)
            elif name.startswith("limit_") and name.endswith("_batches"):
                _check_limit(name, value)
        except ValueError as e:
            raise as_config_error(e, {name: f"trainer.{name}"}, "trainer") from None
    return trainer_cfg.get("max_epochs")


def _trainer_object(trainer_cfg: dict[str, Any]) -> None:
    """Construct a throw-away Trainer: accelerator, devices, strategy, precision, num_nodes and
    unknown keys are checked by Lightning itself (cheap: no process is started)."""
    import lightning.pytorch as pl

    names = setting_names("trainer", trainer_cfg, pl.Trainer.__init__)
    try:
        pl.Trainer(**(trainer_cfg | dict(logger=False, enable_checkpointing=False, callbacks=[],
                                         enable_progress_bar=False, enable_model_summary=False)))
    except Exception as e:  # Lightning raises MisconfigurationException, ValueError, TypeError, ImportError
        message = str(e).lower()
        if "gpu backend" in message or ("cuda" in message and "not available" in message):
            raise ConfigError("trainer.accelerator", f"{trainer_cfg.get('accelerator')!r}: no GPU is available here "
                              "(use trainer=cpu, or install a CUDA build of torch)") from None
        raise as_config_error(e, names, "trainer") from None


def task_model_kwargs(dm: Any) -> dict[str, Any]:
    """The model arguments a task fixes, with placeholders for what only its data tells (a token
    vocabulary, or the channels and classes of a generic UCR/UEA archive)."""
    d_input, vocab = dm.d_input, dm.vocab_size
    if d_input is None and vocab is None:
        vocab = TOKEN_PLACEHOLDER_VOCAB
    n_classes = getattr(dm, "num_classes", None) or PLACEHOLDER_CLASSES
    return dict(d_input=d_input, vocab_size=vocab, d_output=n_classes, retrieval=dm.retrieval)


def _model_and_optim(cfg: DictConfig, dm: Any) -> Any:
    from ssmlit.models.backbone import LAYERS, SequenceModel
    from ssmlit.models.blocks import ResidualBlock

    from .module import SequenceClassifier

    model_cfg = _container(cfg, "model")
    optim_cfg = _container(cfg, "optim")
    ssm_cfg = model_cfg.get("ssm") or {}
    layer_cls = LAYERS.get(model_cfg.get("layer", "s5"))
    ssm_names = setting_names("model.ssm", ssm_cfg if isinstance(ssm_cfg, dict) else {},
                              *([layer_cls.__init__] if layer_cls else []))
    model_names = setting_names("model", model_cfg, SequenceModel.__init__, ResidualBlock.__init__)
    names = ssm_names | model_names | setting_names("optim", optim_cfg)
    names.pop("ssm", None)
    try:
        module = SequenceClassifier(
            model_cfg | task_model_kwargs(dm), optim_cfg,
            val_variants=[(v.name, v.step_rescale) for v in dm.val_variants],
            test_variants=[(v.name, v.step_rescale) for v in dm.test_variants],
        )
    except (ValueError, TypeError) as e:
        message = str(e)
        if "unknown optim keys" in message:
            raise ConfigError(f"optim.{re.findall(r'[A-Za-z_]+', message.split('[', 1)[1])[0]}",
                              "no such setting; " + message.split(";", 1)[1].strip()) from None
        group = "model.ssm" if re.match(r"(S5|S4D)\.__init__", message) else "model"
        raise as_config_error(e, names, group) from None
    return module


def _prune(cfg: DictConfig, module: Any, max_epochs: int | None) -> None:
    if cfg.get("prune") is None:
        return
    from ssmlit.pruning.callback import StatePruningCallback

    prune_cfg = _container(cfg, "prune")
    names = setting_names("prune", prune_cfg, StatePruningCallback.__init__)
    try:
        pruner = instantiate_checked(cfg.prune, "prune")
        if not isinstance(pruner, StatePruningCallback):
            raise ConfigError("prune._target_", f"must build a StatePruningCallback, got {type(pruner).__name__}")
        pruner.check_run(module, max_epochs)
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        error = as_config_error(e, names, "prune")
        if error.key == "prune.epochs[]":
            error = ConfigError("prune.epochs", error.message)
        raise error from None


def _checkpoint(cfg: DictConfig, dm: Any) -> None:
    ckpt = _container(cfg, "checkpoint")
    unknown = sorted(set(ckpt) - {"monitor", "mode"})
    if unknown:
        raise ConfigError(f"checkpoint.{unknown[0]}", "no such setting; checkpoint has monitor, mode")
    if "mode" in ckpt and ckpt["mode"] not in ("max", "min"):
        raise ConfigError("checkpoint.mode", f"{ckpt['mode']!r}, must be max or min")
    metrics = [f"{v.name}/{m}" for v in dm.val_variants for m in ("acc", "loss")]
    if "monitor" in ckpt and ckpt["monitor"] not in metrics:
        raise ConfigError("checkpoint.monitor", f"{ckpt['monitor']!r} is not a validation metric of this task; "
                          f"choose one of {', '.join(metrics)}")


__all__ = ["CheckedConfig", "as_config_error", "locate_setting", "setting_names", "task_model_kwargs",
           "task_setting_names", "validate_config"]

