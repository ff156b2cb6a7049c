"""Compression study of a trained checkpoint: ``python -m ssmlit.sweep ckpt=<run dir> [key=value ...]``.

Loads a checkpoint written by ``train.py`` and the config it was trained with, rebuilds the task's
data, and prunes the trained model one-shot (no retraining) with every method at every ratio,
evaluating validation and test (and any extra variant, e.g. Speech Commands at 8 kHz) — the LAST
paper's Figure 2 and Tables 2, 6-10. Optionally picks, on validation data only, the largest ratio
within an accuracy budget and exports the compacted model with its measured cost.

Examples::

    python -m ssmlit.sweep ckpt=outputs/2026-01-01/12-00-00
    python -m ssmlit.sweep ckpt=<run> methods=[last,aire,uniform_hinf,global_hinf,random] \\
        ratios=[0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0] random_seeds=[0,1,2]
    python -m ssmlit.sweep ckpt=<run> select.budget=1.0          # + automatic ratio and export

Writes into ``out_dir`` (default ``<run>/sweep``): ``sweep.csv`` (one row per evaluated model),
``sweep.json`` (everything, incl. seed-averaged curves), ``summary.md``, ``accuracy_vs_ratio.png``,
``remaining_states.png``, ``tb/`` (TensorBoard), ``sweep_config.yaml``, and with ``select.budget``
``compact.ckpt``. All options: ``conf/sweep.yaml``.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ssmlit.cli import hydra_cli, report_user_errors
from ssmlit.pruning import METHODS, plan_pruning
from ssmlit.pruning.calibration import calibrate, calibration_batches, check_calibration_batches
from ssmlit.pruning.horizon import check_horizon
from ssmlit.pruning.plan import check_score_options
from ssmlit.pruning.plots import save_figure
from ssmlit.pruning.scores import BIDIRECTIONAL_MODES
from ssmlit.study.checkpoint import (
    LoadedRun,
    SweepInputError,
    compact_module,
    load_run,
    save_compact_checkpoint,
)
from ssmlit.study.core import MaskedEvaluator, curves, method_seeds, run_grid, select_ratio, summarize
from ssmlit.study.efficiency import compare_inference, model_stats
from ssmlit.study.evaluate import Evaluator, variants_of
from ssmlit.study.report import (
    accuracy_figure,
    curve_dict,
    log_tensorboard,
    point_rows,
    remaining_states_figure,
    selection_markdown,
    summary_markdown,
    write_csv,
    write_json,
)
from ssmlit.utils import StagingDir, atomic_write_text, check_writable, config_dir, remove_stale_staging

__all__ = ["Options", "check_options", "main", "run_sweep"]


# -- options ---------------------------------------------------------------------------------------
@dataclass
class Options:
    """The validated sweep options (see ``conf/sweep.yaml``)."""

    methods: list[str]
    ratios: list[float]
    seeds: list[int]
    threshold: float
    plot_ratio: float | None
    budget: float | None
    select_method: str
    device: torch.device
    convention: str = "ssmlit"
    horizon: int | str | None = "auto"
    exact_pair: bool = False
    calibration_batches: int = 4
    calibration_seed: int = 0
    stream_formats: list[str] | None = None  # streaming export of the selected model (None: off)


def _as_list(value: Any, what: str) -> list[Any]:
    if value is None:
        raise SweepInputError(f"{what} must not be empty")
    if isinstance(value, str | int | float):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise SweepInputError(f"{what} must be a list, got {value!r}") from None


def _number(value: Any, what: str, lo: float | None = None, hi: float | None = None) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise SweepInputError(f"{what} must be a number, got {value!r}") from None
    if math.isnan(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
        bounds = f"[{lo:g}, {hi:g}]" if lo is not None and hi is not None else f">= {lo:g}"
        raise SweepInputError(f"{what} must lie in {bounds}, got {value!r}")
    return x


def _method(name: Any, what: str) -> str:
    if not isinstance(name, str) or name not in METHODS:
        raise SweepInputError(f"unknown pruning method {name!r} in {what}; choose from {sorted(METHODS)}")
    return name


def check_options(cfg: DictConfig) -> Options:
    """Validate everything that does not need the checkpoint; raises :class:`SweepInputError`."""
    methods = list(dict.fromkeys(_method(m, "methods") for m in _as_list(cfg.methods, "methods")))
    if not methods:
        raise SweepInputError("methods must name at least one pruning method")
    ratios = []
    for r in _as_list(cfg.ratios, "ratios"):
        x = _number(r, "every ratio", 0.0, 1.0) if not isinstance(r, bool) else None
        if x is None:
            raise SweepInputError(f"ratios must be numbers in [0, 1], got {r!r}")
        ratios.append(x)
    if not ratios:
        raise SweepInputError("ratios must list at least one pruning ratio in [0, 1]")
    ratios = sorted(set(ratios))
    seeds = []
    for s in _as_list(cfg.random_seeds, "random_seeds") if cfg.random_seeds is not None else []:
        if isinstance(s, bool) or not isinstance(s, int):
            raise SweepInputError(f"random_seeds must be integers, got {s!r}")
        seeds.append(s)
    if any(METHODS[m].stochastic for m in methods) and not seeds:
        raise SweepInputError("random_seeds must list at least one seed for stochastic methods (random)")
    threshold = _number(cfg.threshold, "threshold (accuracy points)", 0.0)
    plot_ratio = None if cfg.plot_ratio is None else _number(cfg.plot_ratio, "plot_ratio", 0.0, 1.0)
    budget = None if cfg.select.budget is None else _number(cfg.select.budget, "select.budget (accuracy points)", 0.0)
    select_method = _method(cfg.select.method, "select.method")
    if cfg.reference_method is not None:
        _method(cfg.reference_method, "reference_method")
    if cfg.bidirectional not in BIDIRECTIONAL_MODES:
        raise SweepInputError(f"unknown bidirectional mode {cfg.bidirectional!r}; choose one of {BIDIRECTIONAL_MODES}")
    if isinstance(cfg.min_states, bool) or not isinstance(cfg.min_states, int) or cfg.min_states < 1:
        raise SweepInputError(f"min_states must be an integer >= 1, got {cfg.min_states!r}")
    convention, horizon, exact_pair = cfg.get("convention", "ssmlit"), cfg.get("horizon", "auto"), \
        cfg.get("exact_pair", False)
    cal = cfg.get("calibration") or {}
    try:
        if horizon != "auto":
            check_horizon(horizon, "horizon")
        n_cal = check_calibration_batches(cal.get("batches", 4), "calibration.batches")
        if isinstance(cal.get("seed", 0), bool) or not isinstance(cal.get("seed", 0), int):
            raise ValueError(f"calibration.seed must be an integer, got {cal.get('seed')!r}")
        if not isinstance(exact_pair, bool):
            raise ValueError(f"exact_pair must be true or false, got {exact_pair!r}")
        for m in [*methods, cfg.select.method]:
            # exact_pair applies to the methods that have an exact-pair form; the rest ignore it.
            check_score_options(m, convention, None, exact_pair and METHODS[m].pair_score is not None,
                                cfg.min_states)
    except ValueError as e:
        raise SweepInputError(str(e)) from None
    if not isinstance(cfg.select.max_steps, int) or cfg.select.max_steps < 0:
        raise SweepInputError(f"select.max_steps must be an integer >= 0, got {cfg.select.max_steps!r}")
    bench = cfg.select.bench
    if int(bench.repeats) < 1 or int(bench.warmup) < 0:
        raise SweepInputError("select.bench needs repeats >= 1 and warmup >= 0")
    dev = str(cfg.eval.device)
    if dev == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(dev)
        except RuntimeError:
            raise SweepInputError(f"eval.device={dev!r} is not a device (auto, cpu, cuda, cuda:N)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SweepInputError(f"eval.device={dev} but CUDA is not available here")
    from ssmlit.export.core import ExportInputError, check_formats, check_frame

    st = cfg.select.stream
    used = bool(st.enabled and cfg.select.export and budget is not None)
    try:
        formats = check_formats(list(st.formats) if not isinstance(st.formats, str) else st.formats, used)
        check_frame(st.frame)
    except ExportInputError as e:
        raise SweepInputError(f"select.stream: {e} (select.stream.enabled=false turns the streaming export off)") \
            from None
    stream_formats = formats if used else None
    return Options(methods, ratios, seeds, threshold, plot_ratio, budget, select_method, device, convention,
                   horizon, exact_pair, n_cal, int(cal.get("seed", 0)), stream_formats=stream_formats)


def score_options(opts: Options, run: LoadedRun, device: torch.device) -> dict[str, dict[str, Any]]:
    """Method → the score keyword arguments of :func:`~ssmlit.pruning.plan_pruning` (horizon
    resolved from the task, calibration energies measured once on seeded training batches)."""
    names = list(dict.fromkeys([*opts.methods, opts.select_method]))
    need_data = any(METHODS[m].data for m in names)
    need_l = opts.horizon == "auto" and any(METHODS[m].horizon for m in names)
    dm, energies, horizon = None, None, None if opts.horizon == "auto" else opts.horizon
    if need_data or need_l:
        from ssmlit.training.run import build_datamodule

        dm = build_datamodule(run.train_cfg)
    if need_l:
        horizon = int(dm.l_max)
        print(f"horizon-aware methods: L = {horizon} steps (the task's l_max; with variable lengths the longest "
              "sequence, so that no state the longest inputs can use is undervalued)")
    if need_data:
        model = run.module.model.to(device)
        batches = calibration_batches(dm, opts.calibration_batches, opts.calibration_seed)
        energies = calibrate(model, batches, device=device)
        model.cpu()
        print(f"data-aware methods: state energies from {len(batches)} training batch(es) "
              f"(seed {opts.calibration_seed})")
    out = {}
    for m in names:
        meth = METHODS[m]
        out[m] = dict(convention=opts.convention, horizon=horizon if meth.horizon else None,
                      exact_pair=opts.exact_pair and meth.pair_score is not None,
                      calibration=energies if meth.data else None)
    return out


def module_arch(run: LoadedRun) -> str:
    """E.g. ``"S5, 4 layers, H=64"``."""
    hp = run.module.hparams["model"]
    return f"{str(hp.get('layer', '?')).upper()}, {hp.get('n_layers', '?')} layers, H={hp.get('d_model', '?')}"


def default_out_dir(run: LoadedRun) -> Path:
    if run.config_source == "embedded":  # an exported checkpoint: keep its studies apart
        return run.ckpt_path.parent / f"sweep_{run.ckpt_path.stem}"
    return run.run_dir / "sweep"


def build_evaluator(cfg: DictConfig, run: LoadedRun, device: torch.device) -> Evaluator:
    """Rebuild the task's data from the training config and wrap its val/test loaders."""
    from ssmlit.training.run import build_datamodule

    dm = build_datamodule(run.train_cfg, where=run.config_source)
    if cfg.eval.batch_size is not None:
        dm.eval_batch_size = int(cfg.eval.batch_size)
    if cfg.eval.num_workers is not None:
        dm.num_workers = int(cfg.eval.num_workers)
    dm.setup("test")  # build_datamodule ran setup("fit"); a task may build its test split only now
    limit = None if cfg.eval.limit_batches is None else int(cfg.eval.limit_batches)
    return Evaluator(variants_of(dm), device, int(float(cfg.eval.cache_max_mb) * 2**20), limit)


# -- the job ---------------------------------------------------------------------------------------
def _discard_stages_on_error(fn):
    """Delete the staging folders a failed call made (a partial sweep leaves nothing behind)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        before = len(_STAGES)
        try:
            return fn(*args, **kwargs)
        except BaseException:
            for stage in _STAGES[before:]:
                stage.discard()
            raise
        finally:
            del _STAGES[before:]

    return wrapped


@_discard_stages_on_error
def run_sweep(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole study (validation of every input first); returns what ``sweep.json`` holds."""
    started = time.time()
    opts = check_options(cfg)
    run = load_run(cfg.ckpt, cfg.train_config)
    final = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(run)
    stage = stage_output(final)  # out_dir must be writable before anything is evaluated
    out = stage.path  # everything is written here, then renamed to `final` as a whole
    if cfg.eval.threads is not None:
        torch.set_num_threads(int(cfg.eval.threads))
    torch.set_float32_matmul_precision(str(run.train_cfg.get("matmul_precision", "highest")))
    model = run.module.model
    print(f"checkpoint {run.ckpt_path} (epoch {run.meta.get('epoch')}), config {run.config_source}")

    evaluator = build_evaluator(cfg, run, opts.device)
    variants = evaluator.names
    if cfg.summary_variant not in variants:
        raise SweepInputError(f"summary_variant={cfg.summary_variant!r} is not an evaluation variant of this "
                              f"task; choose one of {variants}")
    if cfg.select.variant not in evaluator.names_of("val"):
        raise SweepInputError(f"select.variant={cfg.select.variant!r} is not a validation variant; choose one "
                              f"of {evaluator.names_of('val')}")
    masked = MaskedEvaluator(model, evaluator)
    stats = model_stats(model)
    layers = list(stats["stored_states"])
    full_state_dim = sum(stats["state_dim"].values()) / len(layers)
    n_jobs = sum(len(method_seeds(m, opts.seeds)) for m in opts.methods) * len(opts.ratios)
    print(f"model: {stats['params']:,} parameters, {len(layers)} SSM layers, state dim per layer "
          f"{list(stats['state_dim'].values())}; sweeping {len(opts.methods)} methods × {len(opts.ratios)} ratios "
          f"({n_jobs} pruned models) on {variants} ({opts.device})")

    if evaluator.limit_batches is not None:
        print(f"note: eval.limit_batches={evaluator.limit_batches}: every number below is on a subset of the data")
    t0 = time.time()
    full = masked.evaluate_masks(masked.original_masks())
    print("unpruned: " + ", ".join(f"{n} acc {100 * m.acc:.2f}% loss {m.loss:.4f}" for n, m in full.items()))
    options = score_options(opts, run, opts.device)
    points = run_grid(masked, opts.methods, opts.ratios, opts.seeds, cfg.min_states, cfg.bidirectional,
                      progress=_progress(cfg.progress), options=options)
    sweep_s = time.time() - t0
    curve_map = curves(points)
    summary = summarize(curve_map, full, full_state_dim, opts.threshold, cfg.reference_method, cfg.summary_variant)

    plot_ratio = opts.plot_ratio
    if plot_ratio is None:
        ref = summary["reference"]
        plot_ratio = ref["ratio"] if ref is not None and ref["ratio"] else 0.5
    kept_at_plot = {m: [plan_pruning(model, m, plot_ratio, cfg.min_states, seed=s or 0,
                                     bidirectional=cfg.bidirectional, **options[m]).kept
                        for s in method_seeds(m, opts.seeds)]
                    for m in opts.methods}

    selection = None
    if opts.budget is not None:
        selection = _select_and_export(cfg, opts, run, masked, evaluator, out, options[opts.select_method], final)

    # -- outputs -----------------------------------------------------------------------------------
    if selection and selection.get("compact"):
        selection["compact"]["path"] = str(final / "compact.ckpt")
        stream = selection["compact"].get("stream", {})
        if "dir" in stream:  # written into the staging folder: record where it ends up
            stream["dir"] = str(final / "stream")
    atomic_write_text(out / "sweep_config.yaml", OmegaConf.to_yaml(cfg))
    write_csv(out / "sweep.csv", point_rows(points, layers, variants))
    table = summary_markdown(summary, variants, full_state_dim)
    sel_text = selection_markdown(selection, variants) if selection else ""
    atomic_write_text(out / "summary.md", table + ("\n" + sel_text if sel_text else ""))
    arch = module_arch(run)
    title = f"{run.train_cfg.task.get('_target_', 'task').rsplit('.', 1)[-1]} · {arch} · {stats['params']:,} params"
    figures = {
        "accuracy_vs_ratio": accuracy_figure(curve_map, {n: m.acc for n, m in full.items()}, variants,
                                             opts.threshold, title),
        "remaining_states": remaining_states_figure(kept_at_plot, stats["stored_states"], plot_ratio),
    }
    for name, fig in figures.items():
        save_figure(fig, out / f"{name}.png")
    if cfg.tensorboard:
        layer_dims = {m: {k: 2 * sum(s[k] for s in ks) / len(ks) for k in layers} for m, ks in kept_at_plot.items()}
        log_tensorboard(out / "tb", curve_map, variants, figures,
                        {"summary": table, **({"selection": sel_text} if sel_text else {})}, layer_dims)

    result = dict(
        checkpoint=str(run.ckpt_path), train_config=run.config_source, out_dir=str(final),
        task=run.train_cfg.task.get("_target_"), variants=variants, layers=layers,
        model=stats, methods=opts.methods, ratios=opts.ratios, random_seeds=opts.seeds,
        threshold_points=opts.threshold, min_states=cfg.min_states, bidirectional=cfg.bidirectional,
        convention=opts.convention, exact_pair=opts.exact_pair,
        horizon={m: o["horizon"] for m, o in options.items() if METHODS[m].horizon},
        partial=cfg.eval.limit_batches is not None,
        full={n: m.as_dict() for n, m in full.items()},
        runs=[dict(method=p.method, seed=p.seed, ratio=p.ratio, achieved_ratio=p.achieved_ratio, kept=p.kept,
                   state_dim_avg=p.state_dim_avg, metrics={n: m.as_dict() for n, m in p.metrics.items()})
              for p in points],
        curves={m: [curve_dict(c) for c in cs] for m, cs in curve_map.items()},
        summary=summary, plot_ratio=plot_ratio, remaining_at_plot_ratio=kept_at_plot,
        selection=selection,
        timing=dict(sweep_s=round(sweep_s, 2), total_s=round(time.time() - started, 2),
                    distinct_evaluations=masked.evaluations, reused_evaluations=masked.reused),
    )
    write_json(out / "sweep.json", result)
    stage.commit(final)
    print("\n" + table)
    if sel_text:
        print(sel_text)
    print(f"{len(points)} pruned models, {masked.evaluations} distinct evaluations "
          f"({masked.reused} reused: identical masks) in {sweep_s:.1f} s; total {time.time() - started:.1f} s")
    print(f"written to {final}: sweep.csv, sweep.json, summary.md, accuracy_vs_ratio.png, remaining_states.png"
          + (", tb/" if cfg.tensorboard else "")
          + (", compact.ckpt" if selection and selection.get("compact") else "")
          + (", stream/" if selection and "files" in selection.get("compact", {}).get("stream", {}) else ""))
    return result


_STAGES: list[StagingDir] = []  # staging folders of the sweep in progress


def stage_output(final: Path) -> StagingDir:
    """A staging folder for the sweep's outputs next to ``final`` (the whole set is renamed into
    place when complete, so ``final`` never mixes two sweeps); fails now if ``final`` cannot be
    written, or if it is an existing folder that is not a sweep's output (it would be replaced)."""
    if final.is_dir() and any(final.iterdir()) and not (final / "sweep.json").is_file() \
            and not (final / "sweep_config.yaml").is_file():
        raise SweepInputError(f"out_dir={final} exists and does not hold a sweep's outputs; it would be replaced as "
                              "a whole: pass an empty or new folder")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(final.parent, f".{final.name}.tmp-*")
        stage = StagingDir(final.parent, f".{final.name}.tmp-", discard_at_exit=True)
        _STAGES.append(stage)
        check_writable(stage.path)
    except OSError as e:
        raise SweepInputError(f"out_dir={final} cannot be written ({e.strerror or e}); pass out_dir=<a writable "
                              "folder>") from None
    return stage


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda n: tqdm(total=n, desc="sweep", unit="model", dynamic_ncols=True, file=sys.stderr)


def _select_and_export(cfg: DictConfig, opts: Options, run: LoadedRun, masked: MaskedEvaluator,
                       evaluator: Evaluator, out: Path, options: dict[str, Any], final: Path) -> dict[str, Any]:
    """Automatic ratio (validation only), then its metrics on every variant, and the export."""
    s = cfg.select
    sel = select_ratio(masked, opts.select_method, opts.ratios, opts.budget, val=s.variant,
                       max_steps=int(s.max_steps), seed=int(s.seed), min_states=cfg.min_states,
                       bidirectional=cfg.bidirectional, options=options)
    plan = sel.pop("plan")
    sel["plan"] = plan.summary()
    # Only now, with the ratio fixed, is the test data looked at.
    sel["metrics"] = {n: m.as_dict() for n, m in masked.evaluate_plan(plan).items()}
    sel["full_metrics"] = {n: m.as_dict() for n, m in masked.evaluate_masks(masked.original_masks()).items()}
    if not s.export:
        return sel
    module = run.module
    masked_model = masked.masked_copy(plan)  # CPU
    compact = compact_module(module, masked_model)
    check = evaluator.names_of("test")[0]
    ref_logits = evaluator.logits(masked_model.to(evaluator.device), check)
    path = out / "compact.ckpt"
    info = dict(method=plan.method, ratio=sel["ratio"], achieved_ratio=plan.achieved_ratio,
                kept=plan.kept, source_checkpoint=str(run.ckpt_path), budget_points=opts.budget)
    save_compact_checkpoint(compact, path, run.train_cfg, info, run.meta)
    # Check the file itself: reload it the documented way and compare with the masked model.
    from ssmlit.training.module import SequenceClassifier

    reloaded = SequenceClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True).model.eval()
    reloaded.to(evaluator.device)
    logits = evaluator.logits(reloaded, check)
    comp = dict(path=str(path), check_variant=check,
                max_abs_logit_diff=float((logits - ref_logits).abs().max()),
                prediction_agreement=float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
                metrics={n: m.as_dict() for n, m in evaluator.evaluate(reloaded).items()},
                full=model_stats(module.model), compact=model_stats(reloaded))
    if s.bench.enabled:
        batch = evaluator.first_batch(check)
        if s.bench.batch_size is not None:
            batch = tuple(t[: int(s.bench.batch_size)] for t in batch)
        bench = compare_inference({"full": module.model, "compact": reloaded}, batch, evaluator.device,
                                  evaluator.variants[check].step_rescale, int(s.bench.warmup), int(s.bench.repeats))
        module.model.cpu()
        comp["bench"] = dict(device=str(evaluator.device), threads=torch.get_num_threads(),
                             repeats=int(s.bench.repeats), warmup=int(s.bench.warmup), **bench)
    if opts.stream_formats:
        from ssmlit.study.stream import export_compact_stream

        comp["stream"] = export_compact_stream(
            module.model, reloaded, evaluator.first_batch(check), out / "stream", opts.stream_formats,
            int(s.stream.frame), str(final / path.name), dict(s.bench) if s.bench.enabled else None)
        if "skipped" in comp["stream"]:
            print(f"note: no streaming export: {comp['stream']['skipped']}")
    sel["compact"] = comp
    return sel


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="sweep")
def main(cfg: DictConfig) -> None:
    with report_user_errors("ssmlit.sweep"):
        run_sweep(cfg)


if __name__ == "__main__":
    hydra_cli(str(config_dir()), "sweep", prog="ssmlit.sweep")
    main()

