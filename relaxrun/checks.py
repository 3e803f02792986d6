"""Range checks with one-line messages that name the key and its allowed range.

A leaf module: the config schema (relaxrun/config.py) and every method's options
(relaxrun/methods/) use these, and it imports nothing from relaxrun.
"""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class NotApplicable(ConfigError):
    """A valid setting that one method does not take (e.g. ReinMax at a temperature below 1).

    A single run refuses it like any ConfigError. In a multirun grid that crosses every method with
    shared values (``experiment=compare_all``), the job is *skipped*: it writes ``skipped.txt`` with
    the reason, and the sweep summary lists it as ``skipped``, not as a failure.
    """


def require(ok: bool, key: str, allowed: str, value: Any) -> None:
    """Raise ConfigError('<key> must be <allowed>; got <value>') unless ok."""
    if not ok:
        raise ConfigError(f"{key} must be {allowed}; got {value!r}")


def positive(key: str, value: float) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, key, "a finite number > 0", value)


def at_least(key: str, value: int, low: int) -> None:
    require(isinstance(value, int) and value >= low, key, f"an integer >= {low}", value)


def one_of(key: str, value: str, choices) -> None:
    require(value in choices, key, "one of " + ", ".join(map(str, choices)), value)


def finite(key: str, value: float) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value), key, "a finite number", value)
