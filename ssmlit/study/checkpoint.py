"""Find, validate and load a trained run's checkpoint and the config it was trained with; export
compacted models as Lightning checkpoints.

A run directory written by ``train.py`` looks like::

    <run>/.hydra/config.yaml          # the composed training config
    <run>/checkpoints/best-XXX.ckpt   # best by validation accuracy
    <run>/checkpoints/last.ckpt
    <run>/results.json                # names the best checkpoint

Checkpoints exported by :func:`save_compact_checkpoint` carry their training config inside, so they
are self-contained.
"""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ssmlit.errors import ConfigError, UserError
from ssmlit.pruning import compact_model
from ssmlit.registry import check_targets
from ssmlit.training.module import SequenceClassifier
from ssmlit.utils import atomic_write_bytes

CONFIG_KEY = "ssmlit_train_config"  # training config embedded in exported checkpoints
COMPACTION_KEY = "ssmlit_compaction"


class SweepInputError(UserError, ValueError):
    """Bad input to the compression study (checkpoint, config or sweep options)."""


@dataclass
class LoadedRun:
    """A checkpoint, its module and its training config.

    Attributes:
        ckpt_path: the checkpoint file.
        module: the LightningModule with the checkpoint's weights, on the CPU, in eval mode.
        train_cfg: the composed training config (only ``task`` is needed to rebuild the data).
        config_source: where ``train_cfg`` came from (a path, or ``"embedded"``).
        run_dir: the run directory (holds ``.hydra``), or the checkpoint's folder.
        meta: epoch / global_step of the checkpoint.
    """

    ckpt_path: Path
    module: SequenceClassifier
    train_cfg: DictConfig
    config_source: str
    run_dir: Path
    meta: dict[str, Any]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory meaning its best checkpoint.

    For a run directory: the checkpoint ``results.json`` names as best, else the newest
    ``checkpoints/best-*.ckpt``, else ``checkpoints/last.ckpt`` (reported as such).
    """
    if path is None or str(path).strip() in ("", "None", "null"):
        raise SweepInputError("no checkpoint given: pass ckpt=<run dir> or ckpt=<run dir>/checkpoints/<name>.ckpt")
    p = Path(path).expanduser()
    if not p.exists():
        raise SweepInputError(f"checkpoint not found: {p} does not exist")
    if p.is_file():
        return p
    ckpts = p / "checkpoints"
    results = p / "results.json"
    if results.is_file():
        try:
            best = json.loads(results.read_text()).get("best_checkpoint")
        except (OSError, ValueError):
            best = None
        if best:
            # The recorded path may be absolute from another machine or a moved run: look for the
            # same file name inside this run.
            for cand in (Path(best), ckpts / Path(best).name):
                if cand.is_file() and cand.parent.resolve() == ckpts.resolve():
                    return cand
    bests = sorted(ckpts.glob("best-*.ckpt"), key=lambda f: f.stat().st_mtime)
    if bests:
        return bests[-1]
    if (ckpts / "last.ckpt").is_file():
        print(f"note: {p} has no best-*.ckpt; using checkpoints/last.ckpt")
        return ckpts / "last.ckpt"
    raise SweepInputError(f"checkpoint not found: {p} is a directory without checkpoints/best-*.ckpt or "
                          "checkpoints/last.ckpt (pass a run directory written by train.py, or a .ckpt file)")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors for unreadable or foreign files."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError) as e:
        raise SweepInputError(f"checkpoint {path} is unreadable: {e}") from None
    except Exception as e:  # torch raises many kinds for corrupt or unsafe files
        raise SweepInputError(f"checkpoint {path} is unreadable (not a torch checkpoint, truncated, or it holds "
                              f"objects weights_only loading refuses): {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise SweepInputError(f"checkpoint {path} is not a SequenceClassifier Lightning checkpoint "
                              f"(expected keys state_dict and hyper_parameters, found {keys})")
    hp = ckpt["hyper_parameters"]
    if not isinstance(hp, dict) or "model" not in hp:
        raise SweepInputError(f"checkpoint {path} has no model hyper-parameters (was it saved by SequenceClassifier?)")
    return ckpt


def find_train_config(
    ckpt_path: Path, ckpt: dict[str, Any], explicit: str | None = None
) -> tuple[DictConfig, str, Path]:
    """The training config of a checkpoint: ``explicit`` if given, else the one embedded in the
    checkpoint, else ``.hydra/config.yaml`` of its run directory.

    Returns:
        (config, where it was found, run directory)
    """
    candidates: list[Path] = []
    if explicit:
        candidates = [Path(explicit).expanduser()]
        if not candidates[0].is_file():
            raise SweepInputError(f"train_config={explicit} does not exist")
    elif isinstance(ckpt.get(CONFIG_KEY), dict):
        cfg = OmegaConf.create(ckpt[CONFIG_KEY])
        _check_train_config(cfg, f"the config embedded in {ckpt_path}")
        return cfg, "embedded", ckpt_path.parent
    else:
        folder = ckpt_path.parent
        if folder.name == "checkpoints":
            candidates.append(folder.parent / ".hydra" / "config.yaml")
        candidates.append(folder / ".hydra" / "config.yaml")
    for cand in candidates:
        if cand.is_file():
            try:
                cfg = OmegaConf.load(cand)
            except Exception as e:  # yaml and omegaconf errors alike
                raise SweepInputError(f"training config {cand} is unreadable: {e}") from None
            if not isinstance(cfg, DictConfig):
                raise SweepInputError(f"training config {cand} is not a mapping")
            _check_train_config(cfg, str(cand))
            return cfg, str(cand), cand.parent.parent
    raise SweepInputError(f"checkpoint {ckpt_path} comes without the config it was trained with: looked for "
                          + " and ".join(str(c) for c in candidates)
                          + "; keep the checkpoint inside its run directory or pass train_config=<path>")


def _check_train_config(cfg: DictConfig, where: str) -> None:
    if "task" not in cfg or "_target_" not in cfg.task:
        raise SweepInputError(f"{where} is not a training config: it has no task._target_ to rebuild the data from")
    # The config may come from an untrusted file: its task must be one of ssmlit's data modules
    # before anything of it is instantiated (ssmlit.registry).
    try:
        check_targets(cfg.task, "task", where=where)
    except ConfigError as e:
        raise SweepInputError(f"{where}: {e}") from None


def load_run(ckpt: str | Path, train_config: str | None = None) -> LoadedRun:
    """Resolve, read and validate a checkpoint and its config, and build the module (CPU, eval mode)."""
    path = resolve_checkpoint(ckpt)
    raw = read_checkpoint(path)
    cfg, source, run_dir = find_train_config(path, raw, train_config)
    try:
        module = SequenceClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as e:  # shape mismatches, unknown hyper-parameters, ...
        raise SweepInputError(f"checkpoint {path} does not rebuild a SequenceClassifier: {type(e).__name__}: {e}") \
            from None
    module.eval()
    meta = {k: raw.get(k) for k in ("epoch", "global_step")}
    return LoadedRun(path, module, cfg, source, run_dir, meta)


# -- export ----------------------------------------------------------------------------------------
def compact_module(module: SequenceClassifier, model: nn.Module) -> SequenceClassifier:
    """A new SequenceClassifier holding ``compact_model(model)`` (masked states removed).

    Its hyper-parameters carry the compacted per-layer SSM shapes (``model.ssm`` becomes a list of
    per-layer configs), so ``SequenceClassifier.load_from_checkpoint`` rebuilds it.

    Args:
        module: the original module (its optimizer settings and evaluation variants are kept).
        model: a masked copy of ``module.model``.
    """
    compact = compact_model(model).cpu().eval()
    hp = copy.deepcopy(dict(module.hparams))
    out = SequenceClassifier(compact.config(), hp.get("optim"), val_variants=hp.get("val_variants", (("val", 1.0),)),
                             test_variants=hp.get("test_variants", (("test", 1.0),)))
    out.model.load_state_dict(compact.state_dict())
    return out.eval()


def _plain(obj: Any) -> Any:
    """Deep copy into built-in containers (weights_only loading accepts only those)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def save_compact_checkpoint(
    module: SequenceClassifier, path: str | Path, train_cfg: DictConfig, extra: dict[str, Any] | None = None,
    source_meta: dict[str, Any] | None = None,
) -> None:
    """Write ``module`` as a Lightning checkpoint (atomically) with the training config embedded.

    The file loads with ``SequenceClassifier.load_from_checkpoint(path, weights_only=True)``, can be
    passed to ``trainer.test(module, ckpt_path=path)``, and to ``python -m ssmlit.sweep ckpt=path``.
    It holds no optimizer state: it is for evaluation and deployment, not for resuming training.
    """
    meta = source_meta or {}
    blob = {
        "epoch": int(meta.get("epoch") or 0),
        "global_step": int(meta.get("global_step") or 0),
        "pytorch-lightning_version": pl.__version__,
        "state_dict": module.state_dict(),
        "hparams_name": "kwargs",
        "hyper_parameters": _plain(dict(module.hparams)),
        CONFIG_KEY: _plain(OmegaConf.to_container(train_cfg, resolve=False)),
        COMPACTION_KEY: _plain(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue())
