"""Resuming a run: which checkpoint, which run directory and config, and whether it fits.

``resume=<run dir>`` (meaning its ``checkpoints/last.ckpt``) or ``resume=<run dir>/checkpoints/<x>.ckpt``
continues that run **in its own directory with its own settings**: before Hydra starts,
:func:`resume_argv` re-applies the run's recorded overrides (``.hydra/overrides.yaml``), then the
new command line's (e.g. a larger ``trainer.max_epochs``), and points ``hydra.run.dir`` at the run.
So the best-checkpoint tracking, ``last.ckpt``, ``results.json`` and the logs continue where they
were, and nothing the user did not repeat changes. A checkpoint outside a run directory is
resumed into a new run directory with the command line's settings.

:func:`check_resume` (called by the validation phase, before any data work) refuses a file that is
missing, truncated or not a resumable Lightning checkpoint of ``train.py``, one whose model differs
from the config's (naming the settings that differ), and one whose run has already finished
(``trainer.max_epochs`` reached: say so instead of silently re-testing).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssmlit.errors import ConfigError

CHECKPOINT_DIR = "checkpoints"
LAST_FILE = "last.ckpt"
# Model settings a compaction changes per layer; a compacted checkpoint lists them per layer.
_SHAPE_KEYS = ("d_state", "blocks", "n_ssm")


@dataclass
class ResumeInfo:
    """A checked resume checkpoint.

    Attributes:
        path: the checkpoint file.
        epochs_done: training epochs it has finished.
        run_dir: the run directory it belongs to (holds ``.hydra``), or None.
    """

    path: Path
    epochs_done: int
    run_dir: Path | None


def resolve_resume_path(value: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory meaning its ``checkpoints/last.ckpt``."""
    path = Path(value).expanduser()
    if path.is_dir():
        for cand in (path / CHECKPOINT_DIR / LAST_FILE, path / LAST_FILE):
            if cand.is_file():
                return cand
        raise ConfigError("resume", f"{path} is a folder without {CHECKPOINT_DIR}/{LAST_FILE}; pass a run directory "
                          "written by train.py or a .ckpt file")
    if not path.is_file():
        raise ConfigError("resume", f"{path}: no such checkpoint file")
    return path


def checkpoint_run_dir(ckpt: Path) -> Path | None:
    """The run directory of a checkpoint in ``<run>/checkpoints/``, when ``<run>/.hydra`` exists."""
    folder = ckpt.resolve().parent
    if folder.name == CHECKPOINT_DIR and (folder.parent / ".hydra").is_dir():
        return folder.parent
    return None


def epochs_done(ckpt: dict[str, Any]) -> int:
    """Training epochs a Lightning checkpoint has finished (``processed`` counts an epoch whose
    end-of-epoch hooks are running, which is when ``last.ckpt`` is written)."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(ckpt.get("epoch", -1)) + 1


def _model_differences(saved: dict[str, Any], current: dict[str, Any], placeholder_vocab: bool) -> list[str]:
    keys = sorted(set(saved) | set(current))
    out = []
    for k in keys:
        if k == "vocab_size" and placeholder_vocab:
            continue  # learned from the data in prepare_data; Lightning checks the embedding shape
        a, b = saved.get(k), current.get(k)
        if k == "ssm" and isinstance(a, list) and isinstance(b, dict):
            # compacted per-layer configs: compare what compaction does not change
            for i, layer in enumerate(a):
                for kk in sorted(set(layer) | set(b)):
                    if kk not in _SHAPE_KEYS and layer.get(kk) != b.get(kk):
                        out.append(f"model.ssm.{kk}: {layer.get(kk)!r} in layer {i} of the checkpoint, "
                                   f"{b.get(kk)!r} in this config")
            continue
        if k == "ssm" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"model.ssm.{kk}: {a.get(kk)!r} in the checkpoint, {b.get(kk)!r} in this config"
                    for kk in sorted(set(a) | set(b)) if a.get(kk) != b.get(kk)]
            continue
        if a != b and not (isinstance(a, list | tuple) and isinstance(b, list | tuple) and list(a) == list(b)):
            out.append(f"model.{k}: {a!r} in the checkpoint, {b!r} in this config")
    return out


def check_resume(value: Any, module: torch.nn.Module, dm: Any, max_epochs: int | None) -> ResumeInfo:
    """Check that ``value`` names a resumable checkpoint of the configured model and an unfinished run.

    Args:
        value: the ``resume`` setting (file or run directory).
        module: the ``SequenceClassifier`` the validation phase built from the config.
        dm: the (unprepared) task, to know whether the vocabulary is a placeholder.
        max_epochs: ``trainer.max_epochs``.

    Raises:
        ConfigError: keyed ``resume`` (or ``trainer.max_epochs`` for a finished run).
    """
    path = resolve_resume_path(value)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated zip, not a torch file, objects weights_only refuses, ...
        first = str(e).strip().split("\n")[0][:200]
        raise ConfigError("resume", f"{path} is not a readable checkpoint (truncated, or not a torch checkpoint): "
                          f"{type(e).__name__}: {first}") from None
    needed = ("state_dict", "hyper_parameters", "loops", "optimizer_states")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in needed):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConfigError("resume", f"{path} is not a resumable train.py checkpoint (needs {', '.join(needed)}; "
                          f"found {found}). Exported and compact checkpoints hold no training state.")
    hp = ckpt["hyper_parameters"]
    saved = hp.get("model") if isinstance(hp, dict) else None
    if not isinstance(saved, dict):
        raise ConfigError("resume", f"{path} has no model hyper-parameters: not a SequenceClassifier checkpoint")
    diffs = _model_differences(saved, dict(module.hparams["model"]), dm.vocab_size is None and dm.d_input is None)
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ConfigError("resume", f"{path} holds a different model: {'; '.join(diffs[:3])}{more}. Resume with the "
                          "settings it was trained with (resume=<run dir> re-applies them)")
    if not isinstance(saved.get("ssm"), list):
        _check_shapes(path, ckpt["state_dict"], module, placeholder_vocab=dm.vocab_size is None)
    done = epochs_done(ckpt)
    if max_epochs is not None and max_epochs >= 0 and done >= max_epochs:
        raise ConfigError("trainer.max_epochs", f"{max_epochs}, but {path} is a finished run: it has trained "
                          f"{done} epochs. To train on, raise trainer.max_epochs (e.g. trainer.max_epochs={done + 10})")
    return ResumeInfo(path, done, checkpoint_run_dir(path))


def _check_shapes(path: Path, state: dict[str, Any], module: torch.nn.Module, placeholder_vocab: bool) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = [k for k in expected if k in got and got[k] != expected[k]
             and not (placeholder_vocab and k == "model.encoder.weight")]
    if missing or extra or wrong:
        parts = ([f"missing {missing[:3]}"] if missing else []) + ([f"unexpected {extra[:3]}"] if extra else []) \
            + [f"{k}: {got[k]} in the file, {expected[k]} expected" for k in wrong[:3]]
        raise ConfigError("resume", f"{path} does not fit the configured model: {'; '.join(parts)}")


# -- before Hydra: resume continues the run in its own directory ------------------------------------
def resume_argv(argv: Sequence[str]) -> list[str]:
    """The command line with a resumed run's own overrides and directory added (see module docs).

    Unchanged when there is no ``resume=``, under ``--multirun``, in processes Lightning launches
    for DDP (their command line already carries all of it), or when the checkpoint is not inside a
    run directory.

    Raises:
        ConfigError: ``hydra.run.dir`` is given and differs from the checkpoint's run directory.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    argv = list(argv)
    flags = [a for a in argv if a.startswith("-")]
    if os.environ.get("LOCAL_RANK") is not None or any(f in ("-m", "--multirun") for f in flags):
        return argv
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:  # Hydra reports its own parse errors, with the composition check
        return argv
    resume = next((o for o in overrides if o.key_or_group == "resume"), None)
    if resume is None or resume.value() in (None, ""):
        return argv
    try:
        run = checkpoint_run_dir(resolve_resume_path(str(resume.value())))
    except ConfigError:
        return argv  # the validation phase reports it, with everything else
    if run is None:
        return argv
    given = next((o for o in overrides if o.key_or_group == "hydra.run.dir"), None)
    if given is not None:
        if Path(str(given.value())).expanduser().resolve() != run:
            raise ConfigError("hydra.run.dir", f"{given.value()}, but a resumed run continues in its own directory "
                              f"{run}; drop hydra.run.dir (or resume a checkpoint outside a run directory)")
        return argv
    recorded = _recorded_overrides(run)
    return recorded + argv + [f"hydra.run.dir={_quote(run)}"]


def _recorded_overrides(run: Path) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    file = run / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return []
    try:
        lines = [str(x) for x in OmegaConf.load(file)]
        parsed = OverridesParser.create().parse_overrides(lines)
    except Exception as e:
        raise ConfigError("resume", f"cannot read the run's recorded overrides {file}: {e}") from None
    return [line for line, o in zip(lines, parsed) if o.key_or_group != "resume"
            and not o.key_or_group.startswith("hydra")]


def _quote(path: Path) -> str:
    text = str(path)
    return text if all(c.isalnum() or c in "/._-+" for c in text) else "'" + text.replace("'", "\\'") + "'"
