"""User errors and the small checks constructors use to produce them.

A *user error* is a mistake in what was asked for (a setting, a file, missing data), as opposed to a
bug. Every command-line entry point prints it as one short ``error: ...`` message on stderr and
exits with code 2, never with a traceback (:func:`ssmlit.cli.report_user_errors`).

Constructors validate their own arguments with the ``check_*`` helpers below. Each raises a
``ValueError`` whose message starts with the argument's name, so the config-validation phase
(:mod:`ssmlit.training.validate`) can tell which setting it was and prefix its group
(``model.ssm.d_state``), and so a direct Python caller reads the same name.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any


class UserError(Exception):
    """A mistake in the user's settings, files or data; reported without a traceback, exit code 2."""


class ConfigError(UserError, ValueError):
    """A bad setting of a composed config.

    Attributes:
        key: the full config key (``model.ssm.d_state``), or a group (``trainer``) when the setting
            could not be told apart.
        message: what is wrong and what is allowed.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}" if key else message)


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None,
              allow_none: bool = False) -> int | None:
    """``value`` as an int in [minimum, maximum]; bools and floats (even 3.0) are refused, since a
    config that says 3.0 where a count belongs is more likely a slip than intent."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            allowed = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            allowed = f"an integer >= {minimum}"
        elif maximum is not None:
            allowed = f"an integer <= {maximum}"
        else:
            allowed = "an integer"
        raise ValueError(f"{name} must be {allowed}{' or null' if allow_none else ''}, got {_shown(value)}")
    return int(value)


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> float | None:
    """``value`` as a finite float in the interval given by ``low``/``high`` (closed unless ``*_open``)."""
    if value is None and allow_none:
        return None
    x = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    bad = x is None or math.isnan(x) or math.isinf(x)
    if not bad and low is not None:
        bad = x <= low if low_open else x < low
    if not bad and high is not None:
        bad = x >= high if high_open else x > high
    if bad:
        if low is not None and high is not None:
            allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            allowed = f"a number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            allowed = f"a number {'<' if high_open else '<='} {high:g}"
        else:
            allowed = "a finite number"
        raise ValueError(f"{name} must be {allowed}{' or null' if allow_none else ''}, got {_shown(value)}")
    return float(x)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_shown(value)}")
    return value


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    try:
        known = not isinstance(value, bool) and value in choices
    except TypeError:  # an unhashable value (a list) tested against a set
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {_shown(value)}")
    return value
