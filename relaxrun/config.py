"""The structured-config schema: what a user can set, with types and allowed ranges.

Defaults are written once, in the YAML files of ``configs/`` (``config.yaml`` and the group files),
which choose and document them; the dataclasses here declare the types (every field ``MISSING``)
and check the ranges. They are registered in Hydra's ConfigStore as ``relaxrun_schema`` and sit first
in ``configs/config.yaml``'s defaults list, so Hydra rejects unknown keys and wrong types while
composing. Ranges are checked by :func:`validate`, which builds the dataclasses (running their
``__post_init__``) and the selected method's own config class, and raises :class:`ConfigError`
with one line naming the key and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .checks import ConfigError, at_least, finite, one_of, positive, require  # noqa: F401  (re-exported)


def _default(value, fallback):
    """``${relaxrun.default:${tau},0.667}``: the top-level value when set, else the method's own default."""
    return fallback if value is None else value


if not OmegaConf.has_resolver("relaxrun.default"):
    OmegaConf.register_new_resolver("relaxrun.default", _default)


#: the largest value of an integer option: counts (epochs, steps, sizes, samples) are int32 in torch
MAX_COUNT = 2**31 - 1
#: the largest seed (``seed``, ``data.eval_seed``): numpy's and most tools' seed range is [0, 2**32)
MAX_SEED = 2**32 - 1


def seed_range(key: str, value) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED, key,
            f"an integer in [0, {MAX_SEED}]", value)


def check_int_bounds(obj, prefix: str, skip: tuple[str, ...] = ()) -> None:
    """Every integer field of the dataclass ``obj`` (and of the dataclasses it holds, and integer list
    items) at most :data:`MAX_COUNT`: a ConfigError naming ``<prefix>.<field>`` otherwise (an
    option of 10**20 would otherwise fail deep inside torch)."""
    for f in fields(obj):
        key = f"{prefix}{f.name}" if prefix else f.name
        if key in skip:
            continue
        value = getattr(obj, f.name)
        if is_dataclass(value):
            check_int_bounds(value, key + ".", skip)
        items = value if isinstance(value, list) else [value]
        for v in items:
            if isinstance(v, int) and not isinstance(v, bool) and v > MAX_COUNT:
                raise ConfigError(f"{key} must be an integer <= {MAX_COUNT}; got {value!r}")


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    binarize: str = MISSING
    val_size: int = MISSING
    eval_seed: int = MISSING

    def __post_init__(self):
        from .data import DATASETS

        one_of("data.name", self.name, sorted(DATASETS))
        one_of("data.binarize", self.binarize, ("dynamic", "static", "none"))
        require(isinstance(self.val_size, int) and 0 <= self.val_size < 60000, "data.val_size",
                "an integer in [0, 60000)", self.val_size)
        seed_range("data.eval_seed", self.eval_seed)


@dataclass
class ModelConfig:
    name: str = MISSING
    hidden: list[int] = MISSING
    activation: str = MISSING

    def __post_init__(self):
        one_of("model.name", self.name, ("mlp",))
        require(len(self.hidden) >= 1 and all(isinstance(h, int) and h >= 1 for h in self.hidden),
                "model.hidden", "a non-empty list of integers >= 1", list(self.hidden))
        one_of("model.activation", self.activation, ("relu", "tanh", "leaky_relu", "elu"))


@dataclass
class OptimConfig:
    lr: float = MISSING
    weight_decay: float = MISSING

    def __post_init__(self):
        positive("optim.lr", self.lr)
        require(isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf,
                "optim.weight_decay", "a finite number >= 0", self.weight_decay)


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    log_every: int = MISSING
    tau_schedule: str = MISSING
    tau_min: float = MISSING
    tau_rate: float = MISSING
    grad_clip: float = MISSING
    patience: int = MISSING
    threads: int = MISSING
    compile: bool = MISSING
    flush_denormal: bool = MISSING
    progress: bool = MISSING
    images: int = MISSING

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
        require(isinstance(self.grad_clip, (int, float)) and 0 <= self.grad_clip < math.inf, "trainer.grad_clip",
                "a finite number >= 0 (0 = off)", self.grad_clip)
        at_least("trainer.patience", self.patience, 0)
        at_least("trainer.threads", self.threads, 0)
        at_least("trainer.images", self.images, 1)


@dataclass
class EvalConfig:
    iwae_samples: int = MISSING
    iwae_batch: int = MISSING

    def __post_init__(self):
        at_least("eval.iwae_samples", self.iwae_samples, 0)
        at_least("eval.iwae_batch", self.iwae_batch, 1)


@dataclass
class DiagnosticsConfig:
    grad_every: int = MISSING
    grad_samples: int = MISSING

    def __post_init__(self):
        at_least("diagnostics.grad_every", self.grad_every, 0)
        at_least("diagnostics.grad_samples", self.grad_samples, 2)


@dataclass
class RunConfig:
    method: Any = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    eval: EvalConfig = MISSING
    diagnostics: DiagnosticsConfig = MISSING
    tau: Optional[float] = MISSING
    seed: int = MISSING
    device: str = MISSING
    resume: bool = MISSING

    def __post_init__(self):
        if self.tau is not None:
            positive("tau", self.tau)
        one_of("device", self.device, ("auto", "cpu", "cuda")) if not str(self.device).startswith("cuda:") else None
        seed_range("seed", self.seed)


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
        mcfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"method.{_one_line(err)}") from None
    check_int_bounds(mcfg, "method.")
    return mcfg


def group_options(group: str, name: str, **overrides):
    """The options of ``<group>=<name>`` (method, model or data) as their dataclass: the defaults of
    ``configs/<group>/<name>.yaml`` (the one place they are written), then ``overrides``, with types
    and ranges checked. A method's ``tau`` defaults to the method's own default (its YAML's, as
    with a top-level ``tau=null``)."""
    from importlib import resources

    schemas = {"model": ModelConfig, "data": DataConfig}
    folder = resources.files("relaxrun.configs") / group
    path = folder / f"{name}.yaml"
    if group != "method" and group not in schemas:
        raise ConfigError(f"group must be one of method, model, data; got {group!r}")
    if not path.is_file():
        options = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise ConfigError(f"unknown {group} {name!r}; available: {', '.join(options)}")
    root = OmegaConf.create({"tau": None, group: OmegaConf.create(path.read_text())})
    for key, value in overrides.items():
        OmegaConf.update(root, f"{group}.{key}", value, merge=False, force_add=True)
    if group == "method":
        return method_config(root)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schemas[group]), root[group]))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{group}.{_one_line(err)}") from None


def method_options(name: str, **overrides):
    """``group_options("method", name, **overrides)``: a method's options as its Config dataclass."""
    return group_options("method", name, **overrides)


def validate(cfg: DictConfig):
    """Check every range; returns (RunConfig, method config). Raises ConfigError (one line)."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved.pop("hydra", None)
        run = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), resolved))
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None
    check_int_bounds(run, "", skip=("method", "seed", "data.eval_seed"))
    mcfg = method_config(cfg)
    if hasattr(mcfg, "check_compatible"):
        mcfg.check_compatible(run)
    return run, mcfg
