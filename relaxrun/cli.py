"""``relaxrun``: compose the config with Hydra, check it, train.

Everything a user can get wrong in the config is checked before Hydra starts a job: the
overrides are composed once with Hydra's compose API and validated (types, unknown keys, ranges,
unknown group options), and a problem is reported as one line on stderr with exit status 2.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import traceback
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .checks import NotApplicable
from .progress import quiet_broken_pipe, say
from .config import ConfigError, register_configs, validate

log = logging.getLogger("relaxrun")

CONFIG_MODULE = "relaxrun.configs"
GROUPS = ("method", "model", "data", "experiment")
#: flags that only print (help, the composed config, completion): no precheck, so no torch import
_NO_PRECHECK = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version",
                "--cfg", "-c"}


def group_options(group: str) -> list[str]:
    """Config names available in a config group of the packaged configs."""
    folder = resources.files(CONFIG_MODULE) / group
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


#: the keys a multirun sweeps (set by :func:`main` for the job processes, JSON list)
SWEPT_KEYS_ENV = "RELAXRUN_SWEPT_KEYS"
#: how many jobs the multirun runs (set by :func:`main`)
SWEEP_TOTAL_ENV = "RELAXRUN_SWEEP_TOTAL"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _subdir(override_dirname: str, num, task=None) -> str:
    """Sweep job folder: the job's values of the swept keys (``method=gst,tau=0.5``), or job<N> when
    nothing is swept. Without the swept keys (Hydra started otherwise): every override, as Hydra names it."""
    raw = os.environ.get(SWEPT_KEYS_ENV)
    if raw is None or task is None:
        return override_dirname or f"job{num}"
    swept = set(json.loads(raw))
    items = sorted((o for o in task if _key(str(o)) in swept), key=lambda o: _key(str(o)))
    name = ",".join(str(o).replace(os.sep, "_") for o in items)
    return name or f"job{num}"


def _launchers() -> str:
    """``--help``'s launcher line: the hydra/launcher options Hydra finds (plugins installed)."""
    try:
        from hydra.core.global_hydra import GlobalHydra

        options = sorted(GlobalHydra.instance().config_loader().get_group_options("hydra/launcher"))
    except Exception:  # help must print whatever happens
        options = []
    return ", ".join(options) or "basic"


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("relaxrun.subdir"):
        OmegaConf.register_new_resolver("relaxrun.subdir", _subdir)
    if not OmegaConf.has_resolver("relaxrun.launchers"):
        OmegaConf.register_new_resolver("relaxrun.launchers", _launchers)


def _flat_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, DictConfig):
            keys += _flat_keys(v, key + ".")
        else:
            keys.append(key)
    return keys


def _did_you_mean(err: BaseException, job: list[str], compose, config_name) -> str:
    """'; did you mean trainer.epochs?' for an override key the config does not have."""
    import difflib

    bad = [t for t in job if f"'{_key(t)}'" in str(err) or f"{_key(t)}:" in str(err)]
    if not bad:
        return ""
    key = _key(bad[0])
    method = next((t.split("=", 1)[1] for t in job if _key(t) == "method" and "=" in t), None)
    try:  # the keys of the config without the bad override (with the job's method: its options)
        base = compose(config_name=config_name or "config", overrides=[f"method={method}"] if method else [])
    except Exception:
        return ""
    match = difflib.get_close_matches(key, _flat_keys(base), n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match and match[0] != key else ""


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


def precheck(argv: list[str]) -> tuple[list[str], list[str], int]:
    """Compose and validate what ``argv`` asks for; raise ConfigError with a one-line message.

    Returns (skipped, swept, total). In a multirun, jobs whose method does not take the setting
    (NotApplicable) are allowed and returned as one line each in ``skipped`` (the job will be
    skipped); a sweep in which every job is so is refused. ``swept``: the keys the multirun sweeps
    (the command line's sweeps and the config's ``hydra.sweeper.params``); ``total``: how many jobs
    it runs (1 for a single run)."""
    from hydra import compose, initialize_config_module
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

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
                raise ConfigError(_short(err) + _did_you_mean(err, job, compose, args.config_name)) from None
            try:
                validate(cfg)
            except NotApplicable as err:
                if not args.multirun:
                    raise
                skipped.append(f"{' '.join(job) or 'the job'}: {err}")
            except ConfigError as err:
                hint = _did_you_mean(err, job, compose, args.config_name) if "not in" in str(err) else ""
                raise ConfigError(f"{err}{hint}") from None
        sizes: dict[str, int] = {}  # swept key -> number of values (the command line wins over a preset)
        _check_output_folder(compose, args, jobs[0])
        if args.multirun:
            parser = OverridesParser.create()
            full = compose(config_name=args.config_name or "config", overrides=jobs[0], return_hydra_config=True)
            for k, v in (full.hydra.sweeper.get("params") or {}).items():
                sizes[_key(str(k))] = _n_values(parser.parse_override(f"{k}={v}"))
            for t, ov in zip(overrides, parser.parse_overrides(overrides)):
                sizes[_key(t)] = _n_values(ov)
    if skipped and len(skipped) == len(jobs):
        raise ConfigError(f"every job of the sweep would be skipped; first: {skipped[0]}")
    return skipped, sorted(k for k, n in sizes.items() if n > 1), math.prod(sizes.values())


def _check_output_folder(compose, args, job: list[str]) -> None:
    """Refuse, before Hydra writes ``.hydra/`` into it, a run folder another process holds or a run or
    sweep folder that cannot be written (relaxrun/runtime.py ``check_run_folder``)."""
    from .runtime import TrainingError, check_run_folder

    hydra_overrides = [o for o in args.overrides if o.lstrip("+~").startswith("hydra")]
    try:
        full = compose(config_name=args.config_name or "config", overrides=[*job, *hydra_overrides],
                       return_hydra_config=True)
        folder = full.hydra.sweep.dir if args.multirun else full.hydra.run.dir
    except Exception:  # the overrides were composed above; a folder that cannot be named is Hydra's to report
        return
    try:
        check_run_folder(Path(str(folder)))
    except TrainingError as err:
        raise ConfigError(str(err).replace("hydra.run.dir", "hydra.sweep.dir") if args.multirun else str(err)) from None


def _n_values(ov) -> int:
    """How many values a parsed override sweeps over (1 when it is not a sweep)."""
    if not ov.is_sweep_override():
        return 1
    value = ov.value()
    if type(value).__name__ == "Glob":  # glob(...) over a config group: the options it keeps
        return len(value.filter(group_options(ov.key_or_group)))
    return len(list(ov.sweep_string_iterator()))


def _run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@hydra.main(config_path="pkg://relaxrun.configs", config_name="config", version_base="1.3")
def _hydra_entry(cfg: DictConfig):
    from .data import DataError
    from .runtime import RunFolderBusy
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
    except Interrupted as err:  # one line on the console, the same line in the run's log file
        message = (f"{err.what}; rerun the same command with resume=true hydra.sweep.dir={HydraConfig.get().sweep.dir}"
                   if multirun else str(err))
        _log_to_files(logging.WARNING, message)
        say(f"relaxrun: {message}")
        raise SystemExit(128 + err.signum)
    except KeyboardInterrupt:  # before training started (data loading) or a second Ctrl-C
        message = "interrupted before a checkpoint could be written (nothing to resume from this attempt)"
        _log_to_files(logging.WARNING, message)
        say(f"relaxrun: {message}")
        raise SystemExit(130)
    except RunFolderBusy as err:  # the folder is another run's: write nothing into it
        say(f"relaxrun: error: {err}")
        if multirun:
            return {"status": "failed", "error": str(err)}
        raise SystemExit(1)
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
    say(f"relaxrun: error: {message}")
    raise SystemExit(1)


def _log_to_files(level: int, message: str) -> None:
    """Write a record to the file handlers only (the console gets the same line once, by ``say``)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    logger = log
    while logger is not None:
        for h in logger.handlers:
            if isinstance(h, logging.FileHandler) and level >= h.level:
                h.handle(record)
        logger = logger.parent if logger.propagate else None


def _sweep_failures_in_one_line() -> None:
    """A sweep whose launcher raises (a joblib worker killed -9, a cluster error) is reported in one
    line instead of Hydra's traceback (HYDRA_FULL_ERROR=1 keeps the trace); the jobs' results stay on
    disk and the sweep callback writes the summary of what finished at exit."""
    try:
        import hydra._internal.utils as hydra_utils
    except ImportError:  # pragma: no cover - another Hydra layout: keep its own report
        return
    if not hasattr(hydra_utils, "run_and_report"):  # pragma: no cover
        return

    def run_and_report(func):
        try:
            return func()
        except Exception as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            say(f"relaxrun: error: the sweep stopped: {type(err).__name__}: {_short(err)} "
                "(HYDRA_FULL_ERROR=1 shows the trace)")
            raise SystemExit(1)

    hydra_utils.run_and_report = run_and_report


def main() -> None:
    """Console script entry point."""
    register_configs()
    _register_resolvers()
    argv = sys.argv[1:]
    if not _NO_PRECHECK.intersection(argv):
        try:
            skipped, swept, total = precheck(argv)
        except ConfigError as err:
            say(f"relaxrun: error: {err}")
            raise SystemExit(2)
        except KeyboardInterrupt:
            say("relaxrun: interrupted while checking the config; nothing was started")
            raise SystemExit(130)
        os.environ[SWEPT_KEYS_ENV] = json.dumps(swept)  # job folders are named by these (see _subdir)
        os.environ[SWEEP_TOTAL_ENV] = str(total)  # "jobs done / total" (relaxrun/callbacks.py)
        if skipped:
            say(f"relaxrun: {len(skipped)} job(s) of the sweep will be skipped (the method does not take "
                f"the setting), e.g. {skipped[0]}")
    logging.raiseExceptions = False  # a console gone (| tee killed by Ctrl-C) must not print tracebacks
    if {"-m", "--multirun"}.intersection(argv):
        _sweep_failures_in_one_line()
    try:
        _hydra_entry()
    except BrokenPipeError:
        quiet_broken_pipe()
        raise SystemExit(141)
    finally:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            quiet_broken_pipe()


if __name__ == "__main__":
    main()
