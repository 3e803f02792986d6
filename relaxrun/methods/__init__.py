"""Registry of methods (``method=<name>``). Every module in this package is imported on first
use, so adding ``relaxrun/methods/<name>.py`` with a ``@register("<name>")`` class is enough."""

from __future__ import annotations

import importlib
import pkgutil

from .base import BOUND_KINDS, METHODS, Method, MethodConfig, StepTools, Temperature, Terms, register

__all__ = ["BOUND_KINDS", "METHODS", "Method", "MethodConfig", "StepTools", "Temperature", "Terms", "register", "get_method_class",
           "available_methods", "build_method"]

_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name not in ("base", "families"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def available_methods() -> list[str]:
    _load_all()
    return sorted(METHODS)


def get_method_class(name: str) -> type[Method]:
    _load_all()
    if name not in METHODS:
        from ..checks import ConfigError

        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(mcfg, trainer=None) -> Method:
    """The method of the options ``mcfg``; with ``trainer`` (its ``tau_schedule``, ``tau_min``,
    ``tau_rate``) its temperature follows that schedule, else it stays at ``mcfg.tau``."""
    temperature = Temperature.from_trainer(mcfg.tau, trainer) if trainer is not None else None
    return get_method_class(mcfg.name)(mcfg, temperature)
