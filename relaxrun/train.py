"""The training loop, top to bottom: data on the device, one method, Adam, TensorBoard, checkpoints.

    run_dir/
      tb/              TensorBoard events (scalars, image grids, hparams)
      checkpoint.pt    model, optimizer, step, epoch, RNG states (atomic write; weights_only load)
      metrics.json     final numbers + resolved config
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
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
    hp = {"method": mcfg.name, "tau": mcfg.tau, "seed": run.seed, "lr": run.optim.lr,
          "batch_size": run.trainer.batch_size, "tau_schedule": run.trainer.tau_schedule,
          "model.hidden": "-".join(map(str, run.model.hidden)), "data": run.data.name,
          "binarize": run.data.binarize}
    for k, v in asdict(mcfg).items():
        if k not in ("name", "tau") and isinstance(v, (int, float, str, bool)):
            hp[f"method.{k}"] = v
    return hp


def train(cfg, run_dir: str | os.PathLike) -> dict:
    """Train one run described by the composed config ``cfg`` in ``run_dir``; returns the metrics."""
    run, mcfg = validate(cfg)
    run_dir = Path(run_dir)
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
    optimizer = torch.optim.Adam(model.parameters(), lr=run.optim.lr, weight_decay=run.optim.weight_decay)
    tr = run.trainer
    steps_per_epoch = math.ceil(data.n_train / tr.batch_size)
    total_steps = steps_per_epoch * tr.epochs
    if tr.max_steps:
        total_steps = min(total_steps, tr.max_steps)

    step, epoch, start_batch, perm = 0, 0, 0, None
    history: list[dict] = []
    best_val, bad_epochs, elapsed = math.inf, 0, 0.0
    ckpt_path = run_dir / CHECKPOINT
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if run.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        if ck.get("method") != mcfg.name or ck.get("model_shape") != _model_shape(model):
            raise TrainingError(f"checkpoint {ckpt_path} is from method {ck.get('method')!r} with another model; "
                                "resume needs the same method and model options")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        step, epoch, start_batch = ck["step"], ck["epoch"], ck["batch"]
        perm = ck["perm"].to(device) if ck["perm"] is not None else None
        history, best_val, bad_epochs, elapsed = ck["history"], ck["best_val"], ck["bad_epochs"], ck["elapsed"]
        _set_rng_state(gens, ck["rng"])
        log.info("resuming from %s at epoch %d, step %d", ckpt_path, epoch + 1, step)
    elif run.resume:
        log.warning("resume=true but %s does not exist: starting from scratch", ckpt_path)

    def checkpoint(batch: int, current_perm) -> None:
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "epoch": epoch, "batch": batch,
            "perm": None if current_perm is None else current_perm.cpu(),
            "rng": _rng_state(gens), "history": history, "best_val": best_val,
            "bad_epochs": bad_epochs, "elapsed": elapsed,
            "method": mcfg.name, "model_shape": _model_shape(model), "config": json.dumps(resolved),
        })

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=step + 1 if step else None)
    tau = temperature(tr, mcfg.tau, step)
    last_logged_tau = None
    metrics: dict = {}
    try:
        bar = tqdm(total=total_steps, initial=step, disable=not tr.progress, desc=f"{mcfg.name}", unit="step",
                   dynamic_ncols=True)
        stop = step >= total_steps
        while not stop and epoch < tr.epochs:
            t_epoch = time.perf_counter()
            run_loss = torch.zeros(3, device=device)
            run_n = 0
            epoch_sum = torch.zeros(3, device=device)
            epoch_n = 0
            for perm, i, idx in data.batches(tr.batch_size, gens["data"], start_batch, perm):
                x = data.train_batch(idx, gens["binarize"])
                tau = temperature(tr, mcfg.tau, step)
                terms = model.loss(x, tau)
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
                epoch_n += 1
                if tau != last_logged_tau:
                    writer.add_scalar("train/tau", tau, step)
                    last_logged_tau = tau
                if step % tr.log_every == 0 or step == total_steps:
                    avg = (run_loss / run_n).tolist()  # one host sync per log interval, not per step
                    if not all(map(math.isfinite, avg)):
                        raise TrainingError(f"non-finite loss at step {step} (method {mcfg.name}); "
                                            f"the last good checkpoint is {ckpt_path}")
                    writer.add_scalar("train/loss", avg[0], step)
                    writer.add_scalar("train/recon", avg[1], step)
                    writer.add_scalar("train/kl", avg[2], step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                    bar.set_postfix(loss=f"{avg[0]:.2f}", tau=f"{tau:.3g}")
                    run_loss.zero_()
                    run_n = 0
                bar.update(1)
                if step >= total_steps:
                    stop = True
                    break
            finished_epoch = not stop or i == steps_per_epoch - 1
            elapsed += time.perf_counter() - t_epoch
            train_avg = (epoch_sum / max(epoch_n, 1)).tolist()
            if not all(map(math.isfinite, train_avg)):
                raise TrainingError(f"non-finite loss in epoch {epoch + 1} (step {step}, method {mcfg.name}); "
                                    f"the last good checkpoint is {ckpt_path}")
            test = evaluate(model, data.test, tau, tr.eval_batch_size, seed=run.data.eval_seed)
            record = {"epoch": epoch + 1, "step": step, "tau": tau, "train_objective": train_avg[0],
                      "test_neg_elbo": test["neg_elbo"], "test_relaxed_objective": test["relaxed_objective"],
                      "seconds": elapsed}
            for k, v in test.items():
                writer.add_scalar(f"test/{k}", v, step)
            if data.val is not None:
                val = evaluate(model, data.val, tau, tr.eval_batch_size, seed=run.data.eval_seed)
                record["val_neg_elbo"] = val["neg_elbo"]
                writer.add_scalar("val/neg_elbo", val["neg_elbo"], step)
                if val["neg_elbo"] < best_val - 1e-6:
                    best_val, bad_epochs = val["neg_elbo"], 0
                else:
                    bad_epochs += 1
            log_images(writer, model, data.test, tau, step, tr.images)
            history.append(record)
            log.info("epoch %d  step %d  tau %.3g  train objective %.2f  test -ELBO (%s) %.2f  relaxed %.2f  %.1fs",
                     epoch + 1, step, tau, train_avg[0], method.metric_kind, test["neg_elbo"],
                     test["relaxed_objective"], elapsed)
            if finished_epoch:
                epoch, start_batch, perm = epoch + 1, 0, None
                checkpoint(0, None)
            else:
                checkpoint(i + 1, perm)
            writer.flush()
            if tr.patience and data.val is not None and bad_epochs >= tr.patience:
                log.info("early stopping: validation -ELBO has not improved for %d epochs", bad_epochs)
                break
        bar.close()

        final = history[-1] if history else {}
        metrics = {
            "test_neg_elbo": final.get("test_neg_elbo"),
            "test_neg_elbo_kind": method.metric_kind,
            "test_relaxed_objective": final.get("test_relaxed_objective"),
            "train_objective": final.get("train_objective"),
            "epochs": epoch, "steps": step, "tau": tau,
            "seconds": elapsed, "seconds_per_epoch": elapsed / max(epoch, 1),
            "device": str(device), "torch": torch.__version__, "host": platform.node(),
            "method": mcfg.name, "history": history,
        }
        if run.eval.iwae_samples and history:
            metrics["test_iwae"] = iwae_bound(model, data.test, tau, run.eval.iwae_samples, run.eval.iwae_batch,
                                              seed=run.data.eval_seed)
            metrics["iwae_samples"] = run.eval.iwae_samples
            writer.add_scalar("test/iwae", metrics["test_iwae"], step)
        final_metrics = {f"final/{k}": metrics[k] for k in ("test_neg_elbo", "test_relaxed_objective",
                                                          "train_objective", "seconds_per_epoch", "test_iwae")
                         if metrics.get(k) is not None}
        log_hparams(writer, flat_hparams(run, mcfg), final_metrics, step)
        metrics["config"] = resolved
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        log.info("done: test -ELBO (%s) %.2f nats, relaxed objective %.2f; metrics in %s", method.metric_kind,
                 metrics["test_neg_elbo"] or float("nan"), metrics["test_relaxed_objective"] or float("nan"),
                 run_dir / "metrics.json")
        return metrics
    finally:
        writer.flush()
        writer.close()


def _model_shape(model) -> dict:
    return {k: list(v.shape) for k, v in model.state_dict().items()}
