"""The training loop, top to bottom: data on the device, one method that owns its step, TensorBoard,
checkpoints. The loop runs steps, logs what it is handed, evaluates and checkpoints; it never
branches on the method (relaxrun/methods/base.py says what a method provides).

    run_dir/
      tb/              TensorBoard events (scalars, image grids, hparams)
      checkpoint.pt    model + method state, every optimizer, step, epoch, RNG states (atomic write)
      metrics.json     final numbers + resolved config
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from .config import validate
from .data import Data, load_data
from .evaluate import evaluate, gradient_statistics, iwae_bound
from .logging import flat_hparams, log_hparams, log_images
from .methods import Method, StepTools, build_method
from .methods.base import adam as build_optimizer  # noqa: F401  (the default optimizer, importable from here)
from .models import VAE, build_model
from .progress import Progress, StopRequested, bars_and_logs
from .runtime import (CHECKPOINT, TrainingError, flush_denormal, flush_denormal_is_on,  # noqa: F401
                      joint_state_dict, load_checkpoint, load_joint_state_dict, pick_device, quiet_writer_threads,
                      rng_state, run_folder_lock, run_io_error, save_checkpoint, set_rng_state, write_json_atomic)

log = logging.getLogger("relaxrun")


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM during a run: what was done is saved; the message says what and where.

    During training a checkpoint is written after the current step. During the end-of-run IWAE
    bound (training done, its checkpoint written) the bound is abandoned and metrics.json is
    written without it."""

    def __init__(self, signum: int, step: int, run_dir: Path, saved: str = "checkpoint written"):
        self.signum, self.step, self.run_dir, self.saved = signum, step, Path(run_dir), saved
        #: what happened and what was saved where; the message adds how to resume a single run
        self.what = f"interrupted by {signal.Signals(signum).name} at step {step}; {saved} in {run_dir}"
        super().__init__(f"{self.what}; resume with the same overrides plus: resume=true hydra.run.dir={run_dir}")


@dataclass
class Setup:
    """Everything one run trains: built by :func:`build`, stepped by :func:`train` (and timed, the
    same objects and the same step, by scripts/benchmark.py)."""

    run: object
    mcfg: object
    device: torch.device
    data: Data
    method: Method
    model: VAE
    tools: StepTools                 # the method's optimizers, the clip, the phase hook
    gens: dict[str, torch.Generator]  # data order and binarization streams (checkpointed)

    def step(self, x: torch.Tensor, step: int):
        """One training step on batch ``x``: the method's own."""
        return self.method.training_step(self.model, x, step, self.tools)


class StepLog:
    """The loop's per-step bookkeeping, without host syncs between log points.

    ``record`` stacks a step's loss, mean recon, mean KL and the method's ``extras`` on the device,
    adds them to the running and the epoch sums, logs ``train/tau`` (at log steps) when it changes and, every
    ``log_every`` steps (and at the last step), copies the running mean to the host once and writes
    ``train/loss|recon|kl``, ``method/<key>`` and ``train/lr``. ``check(avg, step)`` sees the mean
    (loss, recon, kl) first and may raise.
    """

    def __init__(self, writer, log_every: int, total_steps: int, optimizer, check=lambda avg, step: None):
        self.writer, self.log_every, self.total_steps = writer, log_every, total_steps
        self.optimizer, self.check = optimizer, check
        self.keys: list[str] | None = None
        self.last_tau: float | None = None
        self.run_sum, self.run_n = None, 0
        self.epoch_sum: torch.Tensor | None = None

    def start_epoch(self, epoch_sum, device) -> None:
        """Start (or, after a resume, continue) an epoch's sums of (loss, recon, kl)."""
        self.epoch_sum = torch.tensor(epoch_sum, device=device)
        self.run_sum, self.run_n = None, 0

    def record(self, terms, step: int, tau: float | Callable[[], float]) -> list[float] | None:
        """Account the terms of the step that made ``step`` steps done; the host copy of the running
        mean if this step wrote it, else None. ``tau`` (a number, or a function giving it, called only
        at the first step and at log steps) is written as ``train/tau`` when it has changed."""
        if self.keys is None:
            self.keys = list(terms.extras)
        parts = torch.stack([terms.loss.detach(), terms.recon.detach().mean(), terms.kl.detach().mean(),
                             *(terms.extras[k].detach().to(terms.loss.dtype) for k in self.keys)])
        self.run_sum = parts if self.run_sum is None else self.run_sum + parts
        self.epoch_sum += parts[:3]
        self.run_n += 1
        log_now = not (step % self.log_every and step != self.total_steps)
        if log_now or self.last_tau is None:
            value = tau() if callable(tau) else tau
            if value != self.last_tau:
                self.writer.add_scalar("train/tau", value, step)
                self.last_tau = value
        if not log_now:
            return None
        avg = (self.run_sum / self.run_n).tolist()  # one host sync per log interval, not per step
        self.check(avg[:3], step)
        for name, v in zip(("loss", "recon", "kl"), avg):
            self.writer.add_scalar(f"train/{name}", v, step)
        for name, v in zip(self.keys, avg[3:]):
            self.writer.add_scalar(f"method/{name}", v, step)
        self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], step)
        self.run_sum, self.run_n = None, 0
        return avg


def build(run, mcfg, device: torch.device | None = None, data: Data | None = None) -> Setup:
    device = device or pick_device(run.device)
    torch.manual_seed(run.seed)
    gens = {"data": torch.Generator(device=device).manual_seed(run.seed + 1),
            "binarize": torch.Generator(device=device).manual_seed(run.seed + 2)}
    data = data if data is not None else load_data(run.data, device)
    method = build_method(mcfg, run.trainer).to(device)
    model = build_model(run.model, method.param_dim, method.latent_dim).to(device)
    if run.trainer.compile:
        method.loss = torch.compile(method.loss)
    tools = StepTools(method.configure_optimizers(model, run.optim), run.trainer.grad_clip)
    return Setup(run, mcfg, device, data, method, model, tools, gens)


def train(cfg, run_dir: str | os.PathLike) -> dict:
    """Train one run described by the composed config ``cfg`` in ``run_dir``; returns the metrics.

    Deterministic on the CPU for a given seed: the data order, the binarization and the method's
    noise come from RNGs whose states are checkpointed, and evaluation, image grids and gradient
    diagnostics draw from forked RNGs, so an interrupted and resumed run ends with the same
    parameters and metrics as an uninterrupted one.

    With ``trainer.flush_denormal`` (the default) subnormal floats are flushed to zero while it runs:
    Adam's first moments of rarely-lit pixels decay into the subnormal range after a few hundred
    steps, where x86 arithmetic is many times slower (BENCHMARKS.md, *Subnormal numbers*).
    """
    run, mcfg = validate(cfg)
    run_dir = Path(run_dir)
    # one process per run folder (a second one is refused at once); stale *.tmp files are removed
    with run_folder_lock(run_dir), quiet_writer_threads(), flush_denormal(run.trainer.flush_denormal):
        try:
            return _train(cfg, run, mcfg, run_dir)
        except OSError as err:  # disk full or folder not writable (TensorBoard, logs): one line
            raise run_io_error(err, run_dir) from None


def _start_dir() -> Path:
    """The directory the run was started from (Hydra's, should ``hydra.job.chdir`` have moved us)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd)
    except (ImportError, ValueError):
        pass
    return Path.cwd()


def _train(cfg, run, mcfg, run_dir: Path) -> dict:
    run.data.root = str((_start_dir() / Path(run.data.root).expanduser()).resolve())
    run_dir.mkdir(parents=True, exist_ok=True)
    if run.trainer.threads:
        torch.set_num_threads(run.trainer.threads)
    s = build(run, mcfg)
    method, model, data, tr = s.method, s.model, s.data, run.trainer
    steps_per_epoch = math.ceil(data.n_train / tr.batch_size)
    total_steps = steps_per_epoch * tr.epochs
    if tr.max_steps:
        total_steps = min(total_steps, tr.max_steps)

    # -- the run's state: what a checkpoint holds besides parameters, optimizers and RNGs ----------
    st = {"step": 0, "epoch": 0, "batch": 0, "perm": None, "history": [], "best_val": math.inf,
          "bad_epochs": 0, "elapsed": 0.0, "epoch_sum": [0.0, 0.0, 0.0], "epoch_n": 0}
    ckpt_path = run_dir / CHECKPOINT
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # paths saved with the run are absolute (resolved against the directory the run was started
    # from), so relaxrun-eval finds the data from anywhere later
    resolved.setdefault("data", {})["root"] = run.data.root
    if run.resume and ckpt_path.exists():
        st = _resume(s, ckpt_path, mcfg.name)
    elif run.resume:
        log.warning("resume=true but %s does not exist: starting from scratch", ckpt_path)

    def checkpoint() -> None:
        state = dict(st, perm=None if st["perm"] is None else st["perm"].cpu())
        save_checkpoint(ckpt_path, {
            "model": joint_state_dict(model, method),
            "optimizers": {name: opt.state_dict() for name, opt in s.tools.optimizers.items()},
            "rng": rng_state(s.gens), "state": state, "method": mcfg.name,
            "model_shape": _model_shape(model, method), "config": json.dumps(resolved),
        })

    step = st["step"]
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=step + 1 if step else None)
    tau = method.temperature.at(step)
    stop_signal: list[int] = []
    handlers = _install_signal_handlers(stop_signal)
    diag = run.diagnostics
    bar = Progress(total_steps, mcfg.name, "step", enabled=tr.progress, initial=step)
    scalars = StepLog(writer, tr.log_every, total_steps, s.tools.optimizers["main"],
                      lambda avg, at: _check_finite(avg, at, mcfg.name, ckpt_path))
    with bars_and_logs(tr.progress):
        try:
            stop = step >= total_steps
            while not stop and st["epoch"] < tr.epochs:
                t_epoch = time.perf_counter()
                scalars.start_epoch(st["epoch_sum"], s.device)
                for perm, i, idx in data.batches(tr.batch_size, s.gens["data"], st["batch"], st["perm"]):
                    st["perm"] = perm
                    x = data.train_batch(idx, s.gens["binarize"])
                    if diag.grad_every and step % diag.grad_every == 0:
                        grad = gradient_statistics(model, method, x, method.temperature.value_at(step),
                                                   diag.grad_samples, run.seed + step)
                        for k, v in grad.items():
                            writer.add_scalar(f"grad/{k}", v, step)
                    terms = s.step(x, step)
                    step += 1
                    # tau is read only when logged: a learned temperature (REBAR) is a device scalar
                    avg = scalars.record(terms, step, lambda: method.tau)
                    if avg is not None:
                        bar.set_postfix(loss=f"{avg[0]:.2f}", tau=f"{method.tau:.3g}")
                    st.update(step=step, batch=i + 1, epoch_n=st["epoch_n"] + 1)
                    if stop_signal:  # first the checkpoint, before any output (a pipe may be gone)
                        st["epoch_sum"] = scalars.epoch_sum.tolist()
                        st["elapsed"] += time.perf_counter() - t_epoch
                        _check_finite(st["epoch_sum"], step, mcfg.name, ckpt_path, model, method)
                        checkpoint()
                        raise Interrupted(stop_signal[0], step, run_dir)
                    bar.update(1)
                    if step >= total_steps:
                        stop = True
                        break

                # -- end of an epoch (or of the step budget): evaluate, images, checkpoint -------------
                finished_epoch = st["batch"] >= steps_per_epoch
                st["elapsed"] += time.perf_counter() - t_epoch
                train_avg = (scalars.epoch_sum / max(st["epoch_n"], 1)).tolist()
                tau = method.tau
                _check_finite(train_avg, step, mcfg.name, ckpt_path, model, method)
                test = evaluate(model, method, data.test, tr.eval_batch_size, seed=run.data.eval_seed,
                                progress="test" if tr.progress else None)
                record = {"epoch": st["epoch"] + 1, "step": step, "tau": tau, "train_objective": train_avg[0],
                          "test_neg_elbo": test["neg_elbo"], "test_relaxed_objective": test["relaxed_objective"],
                          "seconds": st["elapsed"]}
                for k, v in test.items():
                    writer.add_scalar(f"test/{k}", v, step)
                if data.val is not None:
                    val = evaluate(model, method, data.val, tr.eval_batch_size, seed=run.data.eval_seed,
                                   progress="validation" if tr.progress else None)
                    record["val_neg_elbo"] = val["neg_elbo"]
                    writer.add_scalar("val/neg_elbo", val["neg_elbo"], step)
                    if val["neg_elbo"] < st["best_val"] - 1e-6:
                        st["best_val"], st["bad_epochs"] = val["neg_elbo"], 0
                    else:
                        st["bad_epochs"] += 1
                log_images(writer, model, method, data.test, step, tr.images, seed=run.data.eval_seed)
                st["history"].append(record)
                log.info("epoch %d  step %d  tau %.3g  train objective %.2f  test -ELBO (%s) %.2f  relaxed %.2f  %.1fs",
                         st["epoch"] + 1, step, tau, train_avg[0], method.metric_kind, test["neg_elbo"],
                         test["relaxed_objective"], st["elapsed"])
                if finished_epoch:
                    st.update(epoch=st["epoch"] + 1, batch=0, perm=None, epoch_sum=[0.0, 0.0, 0.0], epoch_n=0)
                else:
                    st["epoch_sum"] = scalars.epoch_sum.tolist()
                checkpoint()
                writer.flush()
                if tr.patience and data.val is not None and st["bad_epochs"] >= tr.patience:
                    log.info("early stopping: validation -ELBO has not improved for %d epochs", st["bad_epochs"])
                    break
            bar.close()
            return _finish(s, st, step, method.tau, writer, resolved, run_dir, stop_signal)
        finally:
            bar.close()
            _restore_signal_handlers(handlers)
            writer.flush()
            writer.close()


def _finish(s: Setup, st: dict, step: int, tau: float, writer, resolved: dict, run_dir: Path,
            stop_signal: list[int] | None = None) -> dict:
    """The final numbers: metrics.json, the IWAE bound, the hparams row. A stop asked for during the
    IWAE bound abandons it: metrics.json is written without it, then Interrupted is raised."""
    run, mcfg, method, data = s.run, s.mcfg, s.method, s.data
    history = st["history"]
    final = history[-1] if history else {}
    epochs_done = st["epoch"]
    epochs_run = step / math.ceil(data.n_train / run.trainer.batch_size)
    metrics = {
        "test_neg_elbo": final.get("test_neg_elbo"),
        "test_neg_elbo_kind": method.metric_kind,
        "test_relaxed_objective": final.get("test_relaxed_objective"),
        "test_relaxed_objective_kind": method.objective_kind(),
        "train_objective": final.get("train_objective"),
        "epochs": epochs_done, "steps": step, "tau": tau,
        # per epoch of training steps: a run capped by trainer.max_steps counts its partial epoch
        "epochs_run": epochs_run, "seconds": st["elapsed"],
        "seconds_per_epoch": st["elapsed"] / epochs_run if epochs_run > 0 else None,
        "device": str(s.device), "torch": torch.__version__, "host": platform.node(),
        "method": mcfg.name, "history": history,
    }
    stopped = None
    if run.eval.iwae_samples and history:
        try:
            metrics["test_iwae"] = iwae_bound(s.model, method, data.test, run.eval.iwae_samples, run.eval.iwae_batch,
                                              seed=run.data.eval_seed, stop=stop_signal,
                                              progress=f"IWAE-{run.eval.iwae_samples}" if run.trainer.progress else None)
            metrics["iwae_samples"] = run.eval.iwae_samples
            writer.add_scalar("test/iwae", metrics["test_iwae"], step)
        except NotImplementedError as err:
            log.info("%s", err)
        except StopRequested as err:
            stopped = err.signum
            metrics["test_iwae_interrupted"] = True
    final_metrics = {f"final/{k}": metrics[k] for k in ("test_neg_elbo", "test_relaxed_objective",
                                                      "train_objective", "seconds_per_epoch", "test_iwae")
                     if metrics.get(k) is not None}
    log_hparams(writer, flat_hparams(run, mcfg, tau_final=tau, epochs=round(epochs_run, 4), steps=step),
                final_metrics, step)
    metrics["config"] = resolved
    write_json_atomic(run_dir / "metrics.json", metrics)
    if stopped is not None:
        raise Interrupted(stopped, step, run_dir, "training finished (checkpoint written); metrics.json "
                          f"written without the IWAE-{run.eval.iwae_samples} bound (resume=true computes it)")
    log.info("done: test -ELBO (%s) %.2f nats, relaxed objective %.2f%s; metrics in %s", method.metric_kind,
             metrics["test_neg_elbo"] or float("nan"), metrics["test_relaxed_objective"] or float("nan"),
             f", IWAE-{run.eval.iwae_samples} {metrics['test_iwae']:.2f}" if "test_iwae" in metrics else "",
             run_dir / "metrics.json")
    return metrics


def _resume(s: Setup, ckpt_path: Path, method_name: str) -> dict:
    """Load parameters, optimizers and RNG states into ``s``; returns the run's state."""
    ck = load_checkpoint(ckpt_path)
    if ck.get("method") != method_name or ck.get("model_shape") != _model_shape(s.model, s.method):
        raise TrainingError(f"checkpoint {ckpt_path} is from method {ck.get('method')!r} with another model; "
                            "resume needs the same method and model options (the checkpoint is left as it is)")
    try:
        load_joint_state_dict(s.model, s.method, ck["model"])
        if set(ck["optimizers"]) != set(s.tools.optimizers):
            raise ValueError(f"optimizers {sorted(ck['optimizers'])} != {sorted(s.tools.optimizers)}")
        for name, opt in s.tools.optimizers.items():
            opt.load_state_dict(ck["optimizers"][name])
        set_rng_state(s.gens, ck["rng"])
        st = ck["state"]
        if st["perm"] is not None:
            st["perm"] = st["perm"].to(s.device)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as err:
        raise TrainingError(f"checkpoint {ckpt_path} does not match this run ({type(err).__name__}: {err}); "
                            "it is left as it is") from None
    log.info("resuming from %s at epoch %d, step %d", ckpt_path, st["epoch"] + 1, st["step"])
    return st


def _install_signal_handlers(flag: list[int]):
    """SIGINT/SIGTERM set ``flag``; the loop checkpoints after the current step and stops."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if flag:  # a second signal: stop at once
            raise KeyboardInterrupt
        flag.append(signum)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)
    return old


def _restore_signal_handlers(old) -> None:
    for sig, h in old.items():
        signal.signal(sig, h)


def _check_finite(values, step: int, method: str, ckpt_path: Path, *modules) -> None:
    if not all(map(math.isfinite, values)):
        raise TrainingError(f"non-finite loss at step {step} (method {method}); stopped. The last good "
                            f"checkpoint is {ckpt_path}; try a smaller optim.lr or trainer.grad_clip")
    for module in modules:
        for name, p in module.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingError(f"non-finite parameter {name} at step {step} (method {method}); stopped. "
                                    f"The last good checkpoint is {ckpt_path}; try trainer.grad_clip")


def _model_shape(model, method) -> dict:
    return {k: list(v.shape) for k, v in joint_state_dict(model, method).items()}
