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

import atexit
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("relaxrun")


#: seconds between "jobs done / total" lines of a sweep whose jobs run in other processes
#: (``RELAXRUN_SWEEP_POLL_SECONDS`` overrides it)
SWEEP_POLL_SECONDS = 10.0


def _poll_seconds() -> float:
    try:
        return max(0.1, float(os.environ.get("RELAXRUN_SWEEP_POLL_SECONDS", SWEEP_POLL_SECONDS)))
    except ValueError:
        return SWEEP_POLL_SECONDS


def sweep_counts(sweep_dir: Path) -> tuple[int, list[str]]:
    """(jobs with an outcome: metrics.json, error.txt or skipped.txt; names of the jobs still running)."""
    done, running = 0, []
    try:
        folders = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return 0, []
    for p in folders:
        if any((p / f).is_file() for f in ("metrics.json", "error.txt", "skipped.txt")):
            done += 1
        elif (p / ".hydra").is_dir():
            running.append(p.name)
    return done, running


class SweepSummary(Callback):
    """Hydra callback: the sweep's progress while it runs, and summary.csv / summary.md /
    summary.png in the sweep folder at multirun end.

    Progress: with the basic launcher (jobs in this process, one at a time) one line as each job
    starts and ends, ``relaxrun: sweep job 3/12: method=gst,tau=0.5`` / ``relaxrun: sweep: 3/12
    jobs done (method=gst,tau=0.5: ok)``; with joblib or submitit (jobs in other processes) a line
    every ``SWEEP_POLL_SECONDS`` when the count changes, naming the jobs running, and a last one when
    the sweep ends. The total comes
    from the command line (``relaxrun`` sets it); the count from the job folders' outcome files."""

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._ended = True

    def __getstate__(self) -> dict:  # launchers pickle the callbacks with each job: leave the thread behind
        return {"print_table": self.print_table}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def _total(self) -> str:
        return os.environ.get("RELAXRUN_SWEEP_TOTAL") or "?"

    def _poll(self, sweep_dir: Path) -> None:
        last = None
        interval = _poll_seconds()
        while not self._stop.wait(interval):
            done, running = sweep_counts(sweep_dir)
            if (done, running) != last:
                last = (done, running)
                now = f"; running: {', '.join(running[:4])}{' ...' if len(running) > 4 else ''}" if running else ""
                _say(f"relaxrun: sweep: {done}/{self._total()} jobs done{now}")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _multirun(config) and launcher_kind(config.hydra.launcher) == "basic":
            num = int(config.hydra.job.get("num") or 0)
            _say(f"relaxrun: sweep job {num + 1}/{self._total()}: {Path(str(config.hydra.runtime.output_dir)).name}")

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if not _multirun(config) or launcher_kind(config.hydra.launcher) != "basic":
            return
        out = Path(str(config.hydra.runtime.output_dir))
        status = ("ok" if (out / "metrics.json").is_file() and not (out / "error.txt").is_file() else
                  "skipped" if (out / "skipped.txt").is_file() else "failed")
        done, _ = sweep_counts(Path(str(config.hydra.sweep.dir)))
        _say(f"relaxrun: sweep: {done}/{self._total()} jobs done ({out.name}: {status})")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse, in one line, a launcher whose plugin is not installed (before any job starts);
        start the progress lines of a sweep whose jobs run elsewhere."""
        target = str(config.hydra.launcher.get("_target_", "") or "")
        if target and not launcher_importable(target):
            self._refuse(target)
        # a sweep that dies (a joblib worker killed, the launcher raising) never reaches
        # on_multirun_end: write the summary of what is on disk at exit all the same
        self._ended = False
        atexit.register(self._summary_at_exit, Path(str(config.hydra.sweep.dir)))
        if launcher_kind(config.hydra.launcher) != "basic":
            self._stop.clear()
            self._poller = threading.Thread(target=self._poll, args=(Path(str(config.hydra.sweep.dir)),),
                                            name="relaxrun-sweep-progress", daemon=True)
            self._poller.start()

    def _refuse(self, target: str) -> None:
        extra = {"joblib": "sweep", "submitit_local": "slurm", "submitit_slurm": "slurm"}.get(launcher_kind({"_target_": target}))
        hint = f'pip install "relaxrun[{extra}]"' if extra else "install its Hydra plugin"
        print(f"relaxrun: error: the launcher {target} is not installed; {hint}", file=sys.stderr, flush=True)
        raise SystemExit(2)

    def _summary_at_exit(self, sweep_dir: Path) -> None:
        if self._ended:
            return
        self._ended = True
        self._stop.set()
        from .report import write_summary

        try:
            rows, _, _ = write_summary([sweep_dir], sweep_dir)
        except Exception as err:
            _say(f"relaxrun: the sweep stopped before its end; no summary ({type(err).__name__}: {err})")
            return
        done = sum(r["status"] in ("ok", "skipped") for r in rows)
        _say(f"relaxrun: the sweep stopped before its end; the results on disk are kept ({done} of "
             f"{self._total()} jobs finished); summary in {sweep_dir}/summary.{{csv,md,png}}. Finish it with the "
             f"same command plus resume=true hydra.sweep.dir={sweep_dir}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._ended = True
        if self._poller is not None:
            self._stop.set()
            self._poller.join(timeout=5)
            self._poller = None
            done, _ = sweep_counts(Path(str(config.hydra.sweep.dir)))
            _say(f"relaxrun: sweep: {done}/{self._total()} jobs done")
        _drop_template_folders(Path(str(config.hydra.sweep.dir)) / ".submitit")
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


def _drop_template_folders(folder: Path) -> None:
    """submitit creates its folder template (``.submitit/%j``) literally beside the jobs' folders:
    remove such empty folders (the jobs' own logs are in ``.submitit/<job id>/``)."""
    try:
        for p in folder.iterdir():
            if "%" in p.name and p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    except OSError:
        pass


def _multirun(config: DictConfig) -> bool:
    """Whether this job is part of a sweep (the callbacks also run for single runs)."""
    return str(config.hydra.get("mode", "")).endswith("MULTIRUN")


def _say(message: str) -> None:
    try:
        print(message, flush=True)
    except (OSError, ValueError):
        pass


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
    from . import progress

    # bars of jobs side by side: each its own terminal line, labelled by the job's folder name
    progress.BAR_LABEL = Path(str(hydra_cfg.runtime.output_dir)).name
    if launcher_kind(hydra_cfg.launcher) == "joblib":
        progress.BAR_POSITION = int(hydra_cfg.job.num or 0) % joblib_workers(hydra_cfg.launcher.get("n_jobs", -1),
                                                                              usable_cores())
