"""Sweep support: the Hydra callback that writes the sweep summary, and per-job resources.

``SweepSummary`` is registered in ``configs/config.yaml`` (``hydra.callbacks.sweep_summary``). At
the end of a multirun it writes ``summary.csv``, ``summary.md`` and ``summary.png`` into the sweep
folder (see :mod:`relaxrun.report`) and prints the table. It reads the job folders, not the
launcher's return values, so it works the same for every launcher and ``relaxrun-report`` rebuilds
exactly the same files later. Disable it with ``~hydra.callbacks.sweep_summary``.

Per-job resources (:func:`job_resources`), applied by the CLI to every multirun job:

* **Threads.** With ``trainer.threads=0`` (the default) a job sets torch's intra-op threads so that
  the jobs running side by side do not oversubscribe the CPU cores:

  - ``hydra/launcher=joblib``: ``max(1, cores // n_jobs)``, where ``cores`` is the number of CPUs this
    process may run on and ``n_jobs`` follows joblib (``-1`` = all cores, ``-2`` = all but one, ...);
  - ``hydra/launcher=submitit_slurm`` / ``slurm`` / ``submitit_local``: ``hydra.launcher.cpus_per_task``
    when set; otherwise 1 for ``submitit_local`` (it starts every job at once) and torch's default
    for SLURM;
  - the basic launcher (one job at a time): torch's default.

  An explicit ``trainer.threads=N`` always wins.
* **CUDA devices.** With ``device=auto``, several visible GPUs and a launcher that runs jobs side by
  side on one machine (joblib, submitit_local), job number k uses ``cuda:(k mod #GPUs)``. SLURM jobs
  get their own GPUs from the scheduler (``CUDA_VISIBLE_DEVICES``), so ``auto`` means their first one.
  An explicit ``device=cuda:N`` always wins.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("relaxrun")


class SweepSummary(Callback):
    """Hydra callback: summary.csv / summary.md / summary.png in the sweep folder at multirun end."""

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse, in one line, a launcher whose plugin is not installed (before any job starts)."""
        target = str(config.hydra.launcher.get("_target_", "") or "")
        if not target or launcher_importable(target):
            return
        extra = {"joblib": "sweep", "submitit_local": "slurm", "submitit_slurm": "slurm"}.get(launcher_kind({"_target_": target}))
        hint = f'pip install "relaxrun[{extra}]"' if extra else "install its Hydra plugin"
        print(f"relaxrun: error: the launcher {target} is not installed; {hint}", file=sys.stderr, flush=True)
        raise SystemExit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from .report import ReportError, write_summary

        sweep_dir = Path(str(config.hydra.sweep.dir))
        # print, not log: after the jobs ran, the logging handlers still point into the last job's folder
        try:
            rows, _, paths = write_summary([sweep_dir], sweep_dir)
        except ReportError as err:
            print(f"relaxrun: no sweep summary: {err}", flush=True)
            return
        except Exception as err:  # the jobs' results are on disk: never fail the sweep for its summary
            print(f"relaxrun: could not write the sweep summary ({type(err).__name__}: {err}); "
                  f"retry with: relaxrun-report {sweep_dir}", flush=True)
            return
        if self.print_table:
            print("\n" + paths["summary.md"].read_text(encoding="utf-8"), flush=True)
        bad = sum(r["status"] not in ("ok", "skipped") for r in rows)
        skipped = sum(r["status"] == "skipped" for r in rows)
        note = f" ({bad} of {len(rows)} runs without results: see the table)" if bad else ""
        note += f" ({skipped} skipped: the method does not take the setting)" if skipped else ""
        print(f"relaxrun: sweep summary in {sweep_dir}/summary.{{csv,md,png}}{note}", flush=True)


def launcher_kind(launcher: Any) -> str:
    """'joblib', 'submitit_local', 'submitit_slurm' or 'basic' from a launcher config's ``_target_``."""
    target = str(launcher.get("_target_", "") or "").lower() if hasattr(launcher, "get") else ""
    if "joblib" in target:
        return "joblib"
    if "submitit" in target:
        return "submitit_slurm" if "slurm" in target else "submitit_local"
    return "basic"


def launcher_importable(target: str) -> bool:
    module = target.rpartition(".")[0]
    try:
        return bool(module) and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def joblib_workers(n_jobs: Any, cores: int) -> int:
    """How many jobs joblib runs at once for ``n_jobs`` (joblib's rule: -1 = all cores, -2 = all but one)."""
    try:
        n = int(n_jobs)
    except (TypeError, ValueError):
        return 1
    if n < 0:
        n = cores + 1 + n
    return max(1, min(n, cores)) if n >= 1 else 1


def job_resources(launcher: Any, job_num: int, threads: int, device: str, cores: int | None = None,
                  n_cuda: int | None = None) -> tuple[int, str, str]:
    """(threads, device, reason) for one sweep job; see the module docstring for the rule."""
    kind = launcher_kind(launcher)
    cores = usable_cores() if cores is None else cores
    reason = []
    if not threads:
        if kind == "joblib":
            workers = joblib_workers(launcher.get("n_jobs", -1), cores)
            threads = max(1, cores // workers)
            reason.append(f"{threads} torch threads = {cores} cores // {workers} joblib workers")
        elif kind.startswith("submitit") and launcher.get("cpus_per_task"):
            threads = int(launcher.get("cpus_per_task"))
            reason.append(f"{threads} torch threads = hydra.launcher.cpus_per_task")
        elif kind == "submitit_local":  # every job starts at once
            threads = 1
            reason.append("1 torch thread: submitit_local runs all jobs at once (set cpus_per_task to change)")
    if device == "auto" and kind in ("joblib", "submitit_local"):
        if n_cuda is None:
            import torch

            n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_cuda > 1:
            device = f"cuda:{job_num % n_cuda}"
            reason.append(f"device {device} = job {job_num} mod {n_cuda} GPUs")
    return threads, device, "; ".join(reason)


def apply_job_resources(cfg: DictConfig, hydra_cfg: Any) -> None:
    """Set ``cfg.trainer.threads`` and ``cfg.device`` of a sweep job (recorded in metrics.json)."""
    threads, device, reason = job_resources(hydra_cfg.launcher, int(hydra_cfg.job.num or 0),
                                            int(cfg.trainer.threads), str(cfg.device))
    if reason:
        cfg.trainer.threads = threads
        cfg.device = device
        log.info("job %s: %s", hydra_cfg.job.num, reason)
