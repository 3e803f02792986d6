"""``relaxrun``: compose the config with Hydra, check it, train.

Everything a user can get wrong in the config is checked before Hydra starts a job: the
overrides are composed once with Hydra's compose API and validated (types, unknown keys, ranges,
unknown group options), and a problem is reported as one line on stderr with exit status 2.
"""

from __future__ import annotations

import itertools
import logging
import sys
import traceback
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .checks import NotApplicable
from .config import ConfigError, register_configs, validate

log = logging.getLogger("relaxrun")

CONFIG_MODULE = "relaxrun.configs"
GROUPS = ("method", "model", "data", "experiment")
_NO_PRECHECK = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version"}


def group_options(group: str) -> list[str]:
    """Config names available in a config group of the packaged configs."""
    folder = resources.files(CONFIG_MODULE) / group
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _subdir(override_dirname: str, num) -> str:
    """Sweep job folder: the overrides that identify the job, or job<N> when there are none."""
    return override_dirname or f"job{num}"


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("relaxrun.subdir"):
        OmegaConf.register_new_resolver("relaxrun.subdir", _subdir)


def _short(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    msg = lines[0] if lines else type(err).__name__
    cause = err.__cause__
    if cause is not None:
        cause_lines = [ln.strip() for ln in str(cause).strip().splitlines() if ln.strip()]
        if cause_lines and cause_lines[0] not in msg:
            msg = msg.rstrip(".") + ": " + cause_lines[0]
    elif len(lines) > 1 and lines[1].startswith("Key "):
        msg = msg.rstrip(".") + ": " + lines[1]
    return msg


def _expand(overrides: list[str]) -> list[list[str]]:
    """The override lists of the jobs a sweep would run (capped; linear when large)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for ov, text in zip(parsed, overrides):
        if ov.is_sweep_override():
            key = text.split("=", 1)[0]
            choices.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            choices.append([text])
    combos = 1
    for c in choices:
        combos *= len(c)
    if combos <= 64:
        return [list(c) for c in itertools.product(*choices)]
    # too many to compose one by one: check every value once, with the first value of the rest
    jobs = []
    for i, c in enumerate(choices):
        for v in c:
            jobs.append([v if j == i else other[0] for j, other in enumerate(choices)])
    return jobs


def precheck(argv: list[str]) -> list[str]:
    """Compose and validate what ``argv`` asks for; raise ConfigError with a one-line message.

    In a multirun, jobs whose method does not take the setting (NotApplicable) are allowed and
    returned as one line each (the job will be skipped); a sweep in which every job is so is refused."""
    from hydra import compose, initialize_config_module
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    overrides = [o for o in args.overrides if not o.lstrip("+~").startswith("hydra")]
    for text in overrides:
        key, _, value = text.lstrip("+").partition("=")
        if key in GROUPS and value:
            options = group_options(key)
            for v in value.split(","):
                if v not in options:
                    raise ConfigError(f"unknown {key} {v!r}; available: {', '.join(options)}")
    try:
        jobs = _expand(overrides) if args.multirun else [overrides]
    except Exception as err:
        raise ConfigError(f"cannot parse overrides: {_short(err)}") from None
    skipped = []
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        for job in jobs:
            try:
                cfg = compose(config_name=args.config_name or "config", overrides=job)
            except Exception as err:
                raise ConfigError(_short(err)) from None
            try:
                validate(cfg)
            except NotApplicable as err:
                if not args.multirun:
                    raise
                skipped.append(f"{' '.join(job) or 'the job'}: {err}")
    if skipped and len(skipped) == len(jobs):
        raise ConfigError(f"every job of the sweep would be skipped; first: {skipped[0]}")
    return skipped


def _run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@hydra.main(config_path="pkg://relaxrun.configs", config_name="config", version_base="1.3")
def _hydra_entry(cfg: DictConfig):
    from .data import DataError
    from .train import Interrupted, TrainingError, train

    run_dir = _run_dir()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    for stale in ("error.txt", "skipped.txt"):  # an earlier attempt's outcome is not this run's
        (run_dir / stale).unlink(missing_ok=True)
    try:
        if multirun:  # torch threads / GPU of a job that may run beside others (relaxrun/callbacks.py)
            from .callbacks import apply_job_resources

            apply_job_resources(cfg, HydraConfig.get())
        return train(cfg, run_dir)
    except NotApplicable as err:  # a grid point this method does not take (checks.NotApplicable)
        if not multirun:
            print(f"relaxrun: error: {err}", file=sys.stderr)
            raise SystemExit(2)
        (run_dir / "skipped.txt").write_text(f"{err}\n")
        log.info("skipped: %s", err)
        return {"status": "skipped", "reason": str(err)}
    except Interrupted as err:
        log.warning("%s", err)
        print(f"relaxrun: {err}", file=sys.stderr)
        raise SystemExit(128 + err.signum)
    except (ConfigError, DataError, TrainingError) as err:
        message = str(err)
        trace = None
    except Exception as err:  # a bug or an environment failure: keep the trace in the run folder
        message = f"{type(err).__name__}: {err}"
        trace = traceback.format_exc()
    (run_dir / "error.txt").write_text(message + "\n" + (trace or ""))
    if multirun:
        log.error("%s", message)
        return {"status": "failed", "error": message}
    print(f"relaxrun: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def main() -> None:
    """Console script entry point."""
    register_configs()
    _register_resolvers()
    argv = sys.argv[1:]
    if not _NO_PRECHECK.intersection(argv):
        try:
            skipped = precheck(argv)
        except ConfigError as err:
            print(f"relaxrun: error: {err}", file=sys.stderr)
            raise SystemExit(2)
        if skipped:
            print(f"relaxrun: {len(skipped)} job(s) of the sweep will be skipped (the method does not take "
                  f"the setting), e.g. {skipped[0]}", file=sys.stderr)
    _hydra_entry()


if __name__ == "__main__":
    main()
