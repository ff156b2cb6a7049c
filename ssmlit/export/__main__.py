"""``python -m ssmlit.export ckpt=<run dir or .ckpt> format=onnx frame=160``: write a trained model's
streaming form as files that run without ssmlit (options: ``conf/export.yaml``).

Every option is validated, the checkpoint read (``weights_only=True``) and the model checked to be
streamable before any export; each artifact is compared with ``model.step`` before it is written
(atomically). Bad input: one line on stderr, exit code 2; a failed check: exit code 1.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig

from .core import ExportCheckError, ExportInputError, check_formats, check_frame, check_input, export_streaming


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExportInputError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def _options(cfg: DictConfig) -> dict[str, Any]:
    fmt = cfg.format
    formats = check_formats(list(fmt) if isinstance(fmt, ListConfig) else fmt)
    frame = check_frame(cfg.frame)
    rescale = cfg.step_rescale
    if rescale is not None:
        if isinstance(rescale, bool) or not isinstance(rescale, int | float) or not math.isfinite(rescale) \
                or rescale <= 0:
            raise ExportInputError(f"step_rescale must be a positive number or null, got {rescale!r}")
        rescale = float(rescale)
    name = str(cfg.name)
    if not name or "/" in name or name.startswith("."):
        raise ExportInputError(f"name must be a plain file stem (no '/', not starting with '.'), got {name!r}")
    tol = cfg.check.tolerance
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol > 0:
        raise ExportInputError(f"check.tolerance must be a positive number, got {tol!r}")
    if isinstance(cfg.check.seed, bool) or not isinstance(cfg.check.seed, int):
        raise ExportInputError(f"check.seed must be an integer, got {cfg.check.seed!r}")
    return dict(formats=formats, frame=frame, step_rescale=rescale, name=name, tolerance=float(tol),
                batch=_positive_int(cfg.check.batch, "check.batch"),
                frames=_positive_int(cfg.check.frames, "check.frames"), seed=cfg.check.seed)


def default_out_dir(ckpt: Path) -> Path:
    if ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent / "stream"
    return ckpt.parent / f"stream_{ckpt.stem}"


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Validate, load, export, check and write; returns the metadata written to ``<name>.json``."""
    opts = _options(cfg)
    # Lightning and the study's loader are imported only once the options are known to be good.
    from ssmlit.study.checkpoint import SweepInputError, read_checkpoint, resolve_checkpoint
    from ssmlit.training.module import SequenceClassifier

    try:
        path = resolve_checkpoint(cfg.ckpt)
        read_checkpoint(path)  # clear errors for unreadable or foreign files
        module = SequenceClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except SweepInputError as e:
        # torch's unpickling errors run over many lines; the first names the problem.
        raise ExportInputError(str(e).splitlines()[0]) from None
    except Exception as e:  # shape mismatches, unknown hyper-parameters, ...
        raise ExportInputError(f"checkpoint {path} does not rebuild a SequenceClassifier: "
                               f"{type(e).__name__}: {e}") from None
    model = module.model.eval()
    out = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(path)
    x = check_input(model, opts["frame"], opts["batch"], opts["frames"], opts["seed"])
    report = export_streaming(model, out, opts["formats"], opts["frame"], opts["step_rescale"], opts["name"],
                              check_x=x, tolerance=opts["tolerance"], source=str(path))
    states = [s["shape"][1:] for s in report["state"][:-2]]
    print(f"checkpoint {path}: streaming model, {len(states)} layers, kept states per layer "
          f"{[s[0] for s in states]}, frame {opts['frame']} step(s), input {report['input']['shape']}")
    checks = report["checks"]
    for fmt in opts["formats"]:
        c = checks[fmt]
        print(f"  {fmt}: {out / report['files'][fmt]}  max |Δlogit| vs model.step {c['max_abs_logit_diff']:.2e}, "
              f"same predictions {100 * c['prediction_agreement']:.1f}% ({checks['batch']} streams × "
              f"{checks['steps']} steps)")
    print(f"  metadata: {out / (opts['name'] + '.json')} (model.step vs forward: {checks['step_vs_forward']:.2e})")
    return report


@hydra.main(version_base="1.3", config_path="../../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        run_export(cfg)
    except ExportInputError as e:
        print(f"ssmlit.export: error: {e}", file=sys.stderr)
        sys.exit(2)
    except ExportCheckError as e:
        print(f"ssmlit.export: check failed: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
