"""The training loop, top to bottom: data on the device, one method, Adam, TensorBoard, checkpoints.

    run_dir/
      tb/              TensorBoard events (scalars, image grids, hparams)
      checkpoint.pt    model, optimizer, step, epoch, RNG states (atomic write; weights_only load)
      metrics.json     final numbers + resolved config
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from .config import ConfigError, validate
from .data import load_data
from .evaluate import evaluate, iwae_bound
from .logging import log_hparams, log_images
from .methods import build_method
from .models import build_model

log = logging.getLogger("relaxrun")

CHECKPOINT = "checkpoint.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible checkpoint); the message says why."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here (use device=auto or device=cpu)")
    return torch.device(name)


def build_optimizer(params, optim) -> torch.optim.Adam:
    """Adam with ``optim.lr`` and ``optim.weight_decay``, on torch's fused kernel where this torch and
    device have one (CPU from torch 2.4, CUDA): the same update rule in one pass over each parameter
    instead of several, about 3x faster per step on the default model on a 2-core CPU."""
    params = list(params)
    kwargs = {"lr": optim.lr, "weight_decay": optim.weight_decay}
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # older torch or a device without the fused kernel
        return torch.optim.Adam(params, **kwargs)


def temperature(trainer, tau0: float, step: int) -> float:
    """tau_t: constant, or max(tau_min, tau0 * exp(-rate * t)) (Jang et al. 2017)."""
    if trainer.tau_schedule == "constant":
        return tau0
    return max(trainer.tau_min, tau0 * math.exp(-trainer.tau_rate * step))


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainingError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None


def _rng_state(gens: dict[str, torch.Generator]) -> dict:
    state = {name: g.get_state() for name, g in gens.items()}
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(gens: dict[str, torch.Generator], state: dict) -> None:
    for name, g in gens.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def flat_hparams(run, mcfg) -> dict:
    """The run's row in TensorBoard's hparams table. Every method gets the same keys, because
    TensorBoard takes the table's columns from one run of the folder: the method's own options go
    into one string, ``method.options`` (e.g. ``hard=false,kl=analytic``)."""
    opts = {k: v for k, v in asdict(mcfg).items()
            if k not in ("name", "tau") and isinstance(v, (int, float, str, bool))}
    latent = str(opts.pop("latent_dim", "?"))
    if "categories" in opts:
        latent += f"x{opts.pop('categories')}"
    hp = {"method": mcfg.name, "tau": mcfg.tau, "seed": run.seed, "lr": run.optim.lr, "latent": latent,
          "batch_size": run.trainer.batch_size, "epochs": run.trainer.epochs, "max_steps": run.trainer.max_steps,
          "tau_schedule": run.trainer.tau_schedule, "tau_min": run.trainer.tau_min, "tau_rate": run.trainer.tau_rate,
          "weight_decay": run.optim.weight_decay, "grad_clip": run.trainer.grad_clip,
          "model.hidden": "-".join(map(str, run.model.hidden)), "activation": run.model.activation,
          "data": run.data.name, "binarize": run.data.binarize,
          "method.options": ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                     for k, v in opts.items()) or "-"}
    return hp


def flush_denormal_is_on() -> bool:
    """Whether this thread flushes subnormal floats to zero (a subnormal times one reads as zero)."""
    return float(torch.tensor(1e-39, dtype=torch.float32) * 1.0) == 0.0


@contextlib.contextmanager
def flush_denormal(enabled: bool):
    """x86 FTZ/DAZ (``torch.set_flush_denormal``) for the calling thread inside the block, restored after.

    The flag is per thread. torch's OpenMP workers copy it from the thread that creates them, once,
    so they flush too when the first parallel op of the process runs inside the block, which is the
    case in a ``relaxrun`` process: nothing parallel runs before training starts.
    """
    before = flush_denormal_is_on()
    if enabled != before:
        torch.set_flush_denormal(enabled)
    try:
        yield
    finally:
        if enabled != before:
            torch.set_flush_denormal(before)


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
    with flush_denormal(run.trainer.flush_denormal):
        return _train(cfg, run, mcfg, Path(run_dir))


def _train(cfg, run, mcfg, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(run.device)
    if run.trainer.threads:
        torch.set_num_threads(run.trainer.threads)
    torch.manual_seed(run.seed)
    gens = {
        "data": torch.Generator(device=device).manual_seed(run.seed + 1),
        "binarize": torch.Generator(device=device).manual_seed(run.seed + 2),
    }

    data = load_data(run.data, device)
    method = build_method(mcfg)
    model = build_model(run.model, method).to(device)
    optimizer = build_optimizer(model.parameters(), run.optim)
    step_fn = model.loss
    if run.trainer.compile:
        step_fn = torch.compile(model.loss)
    tr = run.trainer
    steps_per_epoch = math.ceil(data.n_train / tr.batch_size)
    total_steps = steps_per_epoch * tr.epochs
    if tr.max_steps:
        total_steps = min(total_steps, tr.max_steps)

    st = {"step": 0, "epoch": 0, "batch": 0, "perm": None, "history": [], "best_val": math.inf,
          "bad_epochs": 0, "elapsed": 0.0, "epoch_sum": [0.0, 0.0, 0.0], "epoch_n": 0}
    ckpt_path = run_dir / CHECKPOINT
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if run.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        if ck.get("method") != mcfg.name or ck.get("model_shape") != _model_shape(model):
            raise TrainingError(f"checkpoint {ckpt_path} is from method {ck.get('method')!r} with another model; "
                                "resume needs the same method and model options (the checkpoint is left as it is)")
        try:
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            _set_rng_state(gens, ck["rng"])
            st = ck["state"]
        except (KeyError, RuntimeError, ValueError) as err:
            raise TrainingError(f"checkpoint {ckpt_path} does not match this run ({type(err).__name__}: {err}); "
                                "it is left as it is") from None
        if st["perm"] is not None:
            st["perm"] = st["perm"].to(device)
        log.info("resuming from %s at epoch %d, step %d", ckpt_path, st["epoch"] + 1, st["step"])
    elif run.resume:
        log.warning("resume=true but %s does not exist: starting from scratch", ckpt_path)

    def checkpoint() -> None:
        state = dict(st, perm=None if st["perm"] is None else st["perm"].cpu())
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": _rng_state(gens),
            "state": state, "method": mcfg.name, "model_shape": _model_shape(model),
            "config": json.dumps(resolved),
        })

    step = st["step"]
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=step + 1 if step else None)
    tau = temperature(tr, mcfg.tau, step)
    last_logged_tau = None
    stop_signal: list[int] = []
    handlers = _install_signal_handlers(stop_signal)
    diag = run.diagnostics
    bar = tqdm(total=total_steps, initial=step, disable=not tr.progress, desc=mcfg.name, unit="step",
               dynamic_ncols=True)
    try:
        stop = step >= total_steps
        while not stop and st["epoch"] < tr.epochs:
            t_epoch = time.perf_counter()
            run_loss = torch.zeros(3, device=device)
            run_n = 0
            epoch_sum = torch.tensor(st["epoch_sum"], device=device)
            for perm, i, idx in data.batches(tr.batch_size, gens["data"], st["batch"], st["perm"]):
                st["perm"] = perm
                x = data.train_batch(idx, gens["binarize"])
                tau = temperature(tr, mcfg.tau, step)
                if diag.grad_every and step % diag.grad_every == 0:
                    for k, v in gradient_statistics(model, x, tau, diag.grad_samples, run.seed + step).items():
                        writer.add_scalar(f"grad/{k}", v, step)
                terms = step_fn(x, tau)
                optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()
                if tr.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
                optimizer.step()
                step += 1
                parts = torch.stack([terms.loss.detach(), terms.recon.detach().mean(), terms.kl.detach().mean()])
                run_loss += parts
                epoch_sum += parts
                run_n += 1
                st.update(step=step, batch=i + 1, epoch_n=st["epoch_n"] + 1)
                if tau != last_logged_tau:
                    writer.add_scalar("train/tau", tau, step)
                    last_logged_tau = tau
                if step % tr.log_every == 0 or step == total_steps:
                    avg = (run_loss / run_n).tolist()  # one host sync per log interval, not per step
                    _check_finite(avg, step, mcfg.name, ckpt_path)
                    for name, v in zip(("loss", "recon", "kl"), avg):
                        writer.add_scalar(f"train/{name}", v, step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                    bar.set_postfix(loss=f"{avg[0]:.2f}", tau=f"{tau:.3g}")
                    run_loss.zero_()
                    run_n = 0
                bar.update(1)
                if stop_signal:
                    st["epoch_sum"] = epoch_sum.tolist()
                    st["elapsed"] += time.perf_counter() - t_epoch
                    _check_finite(st["epoch_sum"], step, mcfg.name, ckpt_path, model)
                    checkpoint()
                    raise Interrupted(stop_signal[0], step, run_dir)
                if step >= total_steps:
                    stop = True
                    break
            finished_epoch = st["batch"] >= steps_per_epoch
            st["elapsed"] += time.perf_counter() - t_epoch
            train_avg = (epoch_sum / max(st["epoch_n"], 1)).tolist()
            _check_finite(train_avg, step, mcfg.name, ckpt_path, model)
            test = evaluate(model, data.test, tau, tr.eval_batch_size, seed=run.data.eval_seed)
            record = {"epoch": st["epoch"] + 1, "step": step, "tau": tau, "train_objective": train_avg[0],
                      "test_neg_elbo": test["neg_elbo"], "test_relaxed_objective": test["relaxed_objective"],
                      "seconds": st["elapsed"]}
            for k, v in test.items():
                writer.add_scalar(f"test/{k}", v, step)
            if data.val is not None:
                val = evaluate(model, data.val, tau, tr.eval_batch_size, seed=run.data.eval_seed)
                record["val_neg_elbo"] = val["neg_elbo"]
                writer.add_scalar("val/neg_elbo", val["neg_elbo"], step)
                if val["neg_elbo"] < st["best_val"] - 1e-6:
                    st["best_val"], st["bad_epochs"] = val["neg_elbo"], 0
                else:
                    st["bad_epochs"] += 1
            log_images(writer, model, data.test, tau, step, tr.images, seed=run.data.eval_seed)
            st["history"].append(record)
            log.info("epoch %d  step %d  tau %.3g  train objective %.2f  test -ELBO (%s) %.2f  relaxed %.2f  %.1fs",
                     st["epoch"] + 1, step, tau, train_avg[0], method.metric_kind, test["neg_elbo"],
                     test["relaxed_objective"], st["elapsed"])
            if finished_epoch:
                st.update(epoch=st["epoch"] + 1, batch=0, perm=None, epoch_sum=[0.0, 0.0, 0.0], epoch_n=0)
            else:
                st["epoch_sum"] = epoch_sum.tolist()
            checkpoint()
            writer.flush()
            if tr.patience and data.val is not None and st["bad_epochs"] >= tr.patience:
                log.info("early stopping: validation -ELBO has not improved for %d epochs", st["bad_epochs"])
                break
        bar.close()

        history = st["history"]
        final = history[-1] if history else {}
        epochs_done = st["epoch"]
        metrics = {
            "test_neg_elbo": final.get("test_neg_elbo"),
            "test_neg_elbo_kind": method.metric_kind,
            "test_relaxed_objective": final.get("test_relaxed_objective"),
            "train_objective": final.get("train_objective"),
            "epochs": epochs_done, "steps": step, "tau": tau,
            "seconds": st["elapsed"], "seconds_per_epoch": st["elapsed"] / max(epochs_done, 1),
            "device": str(device), "torch": torch.__version__, "host": platform.node(),
            "method": mcfg.name, "history": history,
        }
        if run.eval.iwae_samples and history:
            try:
                metrics["test_iwae"] = iwae_bound(model, data.test, tau, run.eval.iwae_samples, run.eval.iwae_batch,
                                                  seed=run.data.eval_seed)
                metrics["iwae_samples"] = run.eval.iwae_samples
                writer.add_scalar("test/iwae", metrics["test_iwae"], step)
            except NotImplementedError as err:
                log.info("%s", err)
        final_metrics = {f"final/{k}": metrics[k] for k in ("test_neg_elbo", "test_relaxed_objective",
                                                          "train_objective", "seconds_per_epoch", "test_iwae")
                         if metrics.get(k) is not None}
        log_hparams(writer, flat_hparams(run, mcfg), final_metrics, step)
        metrics["config"] = resolved
        write_json_atomic(run_dir / "metrics.json", metrics)
        log.info("done: test -ELBO (%s) %.2f nats, relaxed objective %.2f%s; metrics in %s", method.metric_kind,
                 metrics["test_neg_elbo"] or float("nan"), metrics["test_relaxed_objective"] or float("nan"),
                 f", IWAE-{run.eval.iwae_samples} {metrics['test_iwae']:.2f}" if "test_iwae" in metrics else "",
                 run_dir / "metrics.json")
        return metrics
    finally:
        bar.close()
        _restore_signal_handlers(handlers)
        writer.flush()
        writer.close()


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM during training: a checkpoint was written; the message says how to resume."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint written. "
                         f"Resume with the same overrides plus: resume=true hydra.run.dir={run_dir}")


def _install_signal_handlers(flag: list[int]):
    """SIGINT/SIGTERM set ``flag``; the loop checkpoints after the current step and stops."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if flag:  # a second signal: stop at once
            raise KeyboardInterrupt
        flag.append(signum)

    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        old[s] = signal.signal(s, handler)
    return old


def _restore_signal_handlers(old) -> None:
    for s, h in old.items():
        signal.signal(s, h)


def _check_finite(values, step: int, method: str, ckpt_path: Path, model=None) -> None:
    if not all(map(math.isfinite, values)):
        raise TrainingError(f"non-finite loss at step {step} (method {method}); stopped. The last good "
                            f"checkpoint is {ckpt_path}; try a smaller optim.lr or trainer.grad_clip")
    if model is not None:
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingError(f"non-finite parameter {name} at step {step} (method {method}); stopped. "
                                    f"The last good checkpoint is {ckpt_path}; try trainer.grad_clip")


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def gradient_statistics(model, x: torch.Tensor, tau: float, samples: int, seed: int) -> dict[str, float]:
    """Variance and SNR of the encoder gradient over ``samples`` latent draws on one batch.

    ``variance`` is the mean over encoder parameters of the per-coordinate variance across draws;
    ``snr`` is the mean over coordinates of |mean| / std. Uses a forked RNG, so training is unchanged.
    """
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    grads = []
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for _ in range(samples):
            loss = model.loss(x, tau).loss
            g = torch.autograd.grad(loss, enc, allow_unused=True)
            grads.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                                    for gi, p in zip(g, enc)]))
    G = torch.stack(grads)
    mean, std = G.mean(0), G.std(0)
    snr = (mean.abs() / std.clamp_min(1e-12))[std > 0]
    return {"variance": float(G.var(0).mean()), "snr": float(snr.mean()) if snr.numel() else float("nan"),
            "mean_norm": float(mean.norm())}


def _model_shape(model) -> dict:
    return {k: list(v.shape) for k, v in model.state_dict().items()}
