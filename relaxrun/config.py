"""The structured-config schema: what a user can set, with types, defaults and allowed ranges.

The dataclasses below are registered in Hydra's ConfigStore as ``relaxrun_schema`` and sit first
in ``configs/config.yaml``'s defaults list, so Hydra rejects unknown keys and wrong types while
composing. Ranges are checked by :func:`validate`, which builds the dataclasses (running their
``__post_init__``) and the selected method's own config class, and raises :class:`ConfigError`
with one line naming the key and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


def _default(value, fallback):
    """``${relaxrun.default:${tau},0.667}``: the top-level value when set, else the method's own default."""
    return fallback if value is None else value


if not OmegaConf.has_resolver("relaxrun.default"):
    OmegaConf.register_new_resolver("relaxrun.default", _default)


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


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


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str = "data"
    download: bool = True
    binarize: str = "dynamic"
    val_size: int = 0
    eval_seed: int = 0

    def __post_init__(self):
        from .data import DATASETS

        one_of("data.name", self.name, sorted(DATASETS))
        one_of("data.binarize", self.binarize, ("dynamic", "static", "none"))
        require(isinstance(self.val_size, int) and 0 <= self.val_size < 60000, "data.val_size",
                "an integer in [0, 60000)", self.val_size)


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [512, 256])
    activation: str = "relu"

    def __post_init__(self):
        one_of("model.name", self.name, ("mlp",))
        require(len(self.hidden) >= 1 and all(isinstance(h, int) and h >= 1 for h in self.hidden),
                "model.hidden", "a non-empty list of integers >= 1", list(self.hidden))
        one_of("model.activation", self.activation, ("relu", "tanh", "leaky_relu", "elu"))


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self):
        positive("optim.lr", self.lr)
        require(self.weight_decay >= 0, "optim.weight_decay", "a number >= 0", self.weight_decay)


@dataclass
class TrainerConfig:
    epochs: int = 10
    max_steps: int = 0
    batch_size: int = 100
    eval_batch_size: int = 1000
    log_every: int = 50
    tau_schedule: str = "constant"
    tau_min: float = 0.5
    tau_rate: float = 3e-5
    grad_clip: float = 0.0
    patience: int = 0
    threads: int = 0
    compile: bool = False
    flush_denormal: bool = True
    progress: bool = True
    images: int = 16

    def __post_init__(self):
        at_least("trainer.epochs", self.epochs, 1)
        at_least("trainer.max_steps", self.max_steps, 0)
        at_least("trainer.batch_size", self.batch_size, 1)
        at_least("trainer.eval_batch_size", self.eval_batch_size, 1)
        at_least("trainer.log_every", self.log_every, 1)
        one_of("trainer.tau_schedule", self.tau_schedule, ("constant", "exponential"))
        positive("trainer.tau_min", self.tau_min)
        require(self.tau_rate >= 0 and math.isfinite(self.tau_rate), "trainer.tau_rate", "a finite number >= 0",
                self.tau_rate)
        require(self.grad_clip >= 0, "trainer.grad_clip", "a number >= 0 (0 = off)", self.grad_clip)
        at_least("trainer.patience", self.patience, 0)
        at_least("trainer.threads", self.threads, 0)
        at_least("trainer.images", self.images, 1)


@dataclass
class EvalConfig:
    iwae_samples: int = 1000
    iwae_batch: int = 100

    def __post_init__(self):
        at_least("eval.iwae_samples", self.iwae_samples, 0)
        at_least("eval.iwae_batch", self.iwae_batch, 1)


@dataclass
class DiagnosticsConfig:
    grad_every: int = 0
    grad_samples: int = 10

    def __post_init__(self):
        at_least("diagnostics.grad_every", self.grad_every, 0)
        at_least("diagnostics.grad_samples", self.grad_samples, 2)


@dataclass
class RunConfig:
    method: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    tau: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    resume: bool = False

    def __post_init__(self):
        if self.tau is not None:
            positive("tau", self.tau)
        one_of("device", self.device, ("auto", "cpu", "cuda")) if not str(self.device).startswith("cuda:") else None
        at_least("seed", self.seed, 0)


def register_configs() -> None:
    ConfigStore.instance().store(name="relaxrun_schema", node=RunConfig)


def _one_line(err: OmegaConfBaseException) -> str:
    msg = str(err).strip().splitlines()[0]
    key = getattr(err, "full_key", None)
    return f"{key}: {msg}" if key else msg


def method_config(cfg: DictConfig):
    """The selected method's config as its dataclass instance (types and ranges checked)."""
    from .methods import get_method_class

    node = cfg.method
    if not isinstance(node, DictConfig) or "name" not in node:
        raise ConfigError("method must be chosen from the method config group (method=<name>)")
    cls = get_method_class(node.name)
    schema = OmegaConf.structured(cls.Config)
    allowed = {f.name for f in fields(cls.Config)}
    for key in node.keys():
        if key not in allowed:
            raise ConfigError(f"method.{key} is not an option of method {node.name}; options: {', '.join(sorted(allowed))}")
    try:
        node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
        merged = OmegaConf.merge(schema, node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"method.{_one_line(err)}") from None


def validate(cfg: DictConfig):
    """Check every range; returns (RunConfig, method config). Raises ConfigError (one line)."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved.pop("hydra", None)
        run = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), resolved))
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None
    mcfg = method_config(cfg)
    if hasattr(mcfg, "check_compatible"):
        mcfg.check_compatible(run)
    return run, mcfg
