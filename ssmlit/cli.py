"""Command-line plumbing shared by ``train.py`` and ``python -m ssmlit.sweep``: user errors end as
one short message and exit code 2, never as a traceback.

- :func:`report_user_errors` wraps a job: a :class:`~ssmlit.errors.UserError` (a bad setting, a
  bad file, missing data) prints ``error: <setting>: <what is wrong, what is allowed>`` on stderr
  and exits with code 2. Anything else is a bug and keeps its traceback.
- :func:`check_composition` composes the config with the command line's overrides before
  ``hydra.main`` does, so Hydra's own errors — an unknown key, a mistyped group option such as
  ``experiment=s5/pathX``, an unparsable override — become the same short message, listing what
  is available, instead of Hydra's exit code 1 and search-path dump.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ssmlit.errors import ConfigError, UserError

EXIT_USER_ERROR = 2
_MAX_COMPOSITIONS = 64  # sweep (multirun) values checked one by one, up to this many compositions


def fail(error: BaseException, prog: str | None = None) -> None:
    """Print a user error as ``[prog: ]error: ...`` on stderr and exit with code 2."""
    prefix = f"{prog}: " if prog else ""
    print(f"{prefix}error: {error}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


@contextlib.contextmanager
def report_user_errors(prog: str | None = None) -> Iterator[None]:
    """Turn a :class:`UserError` raised inside into :func:`fail`."""
    try:
        yield
    except UserError as e:
        fail(e, prog)


# -- Hydra's composition errors ------------------------------------------------------------------
def _group_options(group: str) -> list[str]:
    """Every config of a group, nested groups included (``experiment`` → ``s4d/image``, …)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    loader = GlobalHydra.instance().config_loader()
    out: list[str] = []

    def walk(g: str, prefix: str) -> None:
        out.extend(prefix + c for c in loader.get_group_options(g, results_filter=ObjectType.CONFIG)
                   if not c.startswith("_"))
        for sub in loader.get_group_options(g, results_filter=ObjectType.GROUP):
            walk(f"{g}/{sub}", f"{prefix}{sub}/")

    walk(group, "")
    return out


def _node_keys(cfg: Any, dotted: str) -> list[str] | None:
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.select(cfg, dotted) if dotted else cfg
    return [str(k) for k in node if not str(k).startswith("_")] if isinstance(node, DictConfig) else None


def _unknown_key_error(key: str, overrides: list[str], config_name: str) -> ConfigError:
    from hydra import compose

    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    parent, _, leaf = key.rpartition(".")
    try:
        base = compose(config_name, overrides=rest)
    except Exception:  # another override is bad too: name just this one
        return ConfigError(key, "no such setting")
    keys = _node_keys(base, parent)
    if keys is None:
        top = parent.split(".")[0]
        options = _group_options(top)
        if options and top not in base:
            return ConfigError(key, f"{top} is not in this config: add +{top}=<option> first "
                               f"(one of {', '.join(options)})")
        return ConfigError(key, "no such setting")
    close = difflib.get_close_matches(leaf, keys, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    where = parent or "the top level"
    return ConfigError(key, f"no such setting; {hint}{where} has {', '.join(sorted(keys))}")


def _composition_error(e: Exception, overrides: list[str], config_name: str) -> ConfigError:
    from hydra.errors import MissingConfigException, OverrideParseException

    message = str(e)
    first = message.strip().split("\n")[0]
    if isinstance(e, OverrideParseException):
        return ConfigError("override", f"{first}; overrides are key=value, group=option or +key=value")
    missing = re.search(r"Could not find '([^']+)'", message)
    if isinstance(e, MissingConfigException) and missing:
        path = missing.group(1)
        group, name = path.split("/", 1) if "/" in path else (path, "")
        for o in overrides:  # the override that asked for it tells where the group ends
            key, _, value = o.lstrip("+~").partition("=")
            if path == f"{key}/{value}":
                group, name = key, value
        options = _group_options(group)
        if options:
            return ConfigError(group, f"{name!r} is not one of the {group} configs; available: {', '.join(options)}")
        return ConfigError(group, f"{first}")
    unknown = re.search(r"Could not override '([^']+)'", message)
    if unknown:
        return _unknown_key_error(unknown.group(1), overrides, config_name)
    appended = re.search(r"An item is already at '([^']+)'", message)
    if appended:
        return ConfigError(appended.group(1), "already set: drop the '+' to change it")
    return ConfigError("overrides", first)


def _variants(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists to compose: one, or under ``--multirun`` one per sweep value (each sweep
    value with the first value of the others)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if not multirun or not any(o.is_sweep_override() for o in parsed):
        return [overrides]
    values: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override():
            try:
                values.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
            except Exception:  # interval sweeps (optimizers) cannot be listed: take them as written
                return []
        else:
            values.append([o.input_line])
    first = [v[0] for v in values]
    out = [first]
    for i, vs in enumerate(values):
        for v in vs[1:]:
            out.append([*first[:i], v, *first[i + 1:]])
    return out[:_MAX_COMPOSITIONS]


def check_composition(config_dir: str, config_name: str, argv: Sequence[str],
                      validate: Callable[[Any], Any] | None = None) -> None:
    """Compose ``config_name`` from ``config_dir`` with the overrides in ``argv`` (Hydra's command
    line) and raise :class:`ConfigError` for what Hydra would refuse; then run ``validate`` on
    each composed job config (without its ``hydra`` node). Doing both here, before ``hydra.main``,
    means a refused command writes nothing: no run directory, no ``.hydra/`` record overwritten
    (a refused ``resume=`` would otherwise leave its bad overrides in the run's record). Help,
    info and shell completion requests, and other config sources (``-cp``/``-cn``/``-cd``), are
    left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException
    from omegaconf import open_dict

    try:
        args = get_args_parser().parse_args(list(argv))
    except SystemExit:
        return  # argparse has printed its own usage error; Hydra will exit the same way
    if (args.help or args.hydra_help or args.shell_completion or args.info or args.experimental_rerun
            or args.config_path or args.config_name or args.config_dir):
        return
    overrides = list(args.overrides)
    try:
        variants = _variants(overrides, bool(args.multirun))
    except HydraException as e:
        raise _composition_error(e, overrides, config_name) from None
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        for ovs in variants:
            try:
                cfg = compose(config_name, overrides=ovs, return_hydra_config=True)
            except HydraException as e:
                raise _composition_error(e, ovs, config_name) from None
            if validate is not None and args.cfg is None:
                with open_dict(cfg):
                    del cfg["hydra"]
                validate(cfg)


def hydra_cli(config_dir: str, config_name: str, argv: Sequence[str] | None = None,
              prog: str | None = None, validate: Callable[[Any], Any] | None = None) -> None:
    """Run :func:`check_composition` on ``argv`` (default ``sys.argv[1:]``), reporting problems with
    :func:`fail`. Call it before the ``hydra.main``-decorated function."""
    argv = sys.argv[1:] if argv is None else argv
    with report_user_errors(prog):
        check_composition(config_dir, config_name, argv, validate)


# -- the entry points ----------------------------------------------------------------------------
def run_train_job(cfg: Any) -> float | None:
    """The body of ``python train.py`` / ``ssmlit-train`` under ``hydra.main``: train, and turn a
    user error into :func:`fail` without leaving an empty run directory behind."""
    from ssmlit.training.run import train as run_training
    from ssmlit.training.rundir import discard_unused_run_dir
    from ssmlit.utils import run_dir

    try:
        results = run_training(cfg)
    except UserError as e:
        discard_unused_run_dir(run_dir())
        fail(e)
    return results.get("test/acc")


def check_train_command(config_dir: str, argv: list[str] | None = None) -> None:
    """Everything that must happen before ``hydra.main`` for training, in order: expand
    ``resume=<run>`` into that run's overrides (rewriting ``sys.argv``), refuse a run directory that
    already holds a run, and compose + validate the whole config. Exits 2 on a user error."""
    from ssmlit.training.resume import resume_argv
    from ssmlit.training.rundir import precheck_run_dir
    from ssmlit.training.validate import validate_config

    with report_user_errors():
        sys.argv[1:] = resume_argv(sys.argv[1:] if argv is None else argv)
        precheck_run_dir(sys.argv[1:])
    hydra_cli(config_dir, "config", validate=validate_config)  # before Hydra writes anything


def train() -> None:
    """``ssmlit-train [overrides]``: train (and prune) a model, as ``python train.py``, with the
    configs shipped in the package."""
    import hydra

    from ssmlit.utils import config_dir

    conf = str(config_dir())
    check_train_command(conf)
    hydra.main(version_base="1.3", config_path=conf, config_name="config")(run_train_job)()


def sweep() -> None:
    """``ssmlit-sweep ckpt=<run> [overrides]``: the compression study, as ``python -m ssmlit.sweep``."""
    from ssmlit.sweep import main
    from ssmlit.utils import config_dir

    hydra_cli(str(config_dir()), "sweep", prog="ssmlit.sweep")
    main()
