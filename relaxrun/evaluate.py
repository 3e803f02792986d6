"""Test-set numbers users compare: the method's valid bound (hard samples, exact KL for discrete
latents), the relaxed objective beside it, and the importance-weighted bound (Burda et al. 2016).

Evaluation draws its randomness from a forked RNG seeded with ``seed``, so the numbers of a run
are reproducible and evaluating never changes the training run's random stream.
"""

from __future__ import annotations

import logging
import math

import torch

from .methods.base import Method
from .models import VAE
from .progress import Progress
from .runtime import seeded


@torch.no_grad()
def evaluate(model: VAE, method: Method, x: torch.Tensor, batch_size: int, seed: int = 0,
             tau: float | None = None, progress: str | None = None, stop: list[int] | None = None,
             ) -> dict[str, float]:
    """Means over ``x`` (nats per image) of the bound and relaxed objective, with their parts, at the
    method's current temperature (or ``tau``).

    ``progress``: a label to show a progress report over the images (relaxrun/progress.py) under;
    ``stop``: a signal handler's flag list; when it fills, StopRequested is raised between batches."""
    tau = method.tau if tau is None else tau
    was_training = model.training
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64, device=x.device)
    bar = Progress(x.shape[0], progress or "", "image", enabled=progress is not None, stop=stop, leave=False)
    with seeded(seed, x.device), bar:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            params = model.encoder(xb)
            b = method.bound(params, model.decode, xb, tau)
            r = method.relaxed(params, model.decode, xb, tau)
            sums += torch.stack([
                (b.recon + b.kl).sum(), b.recon.sum(), b.kl.sum(),
                (r.recon + r.kl).sum(), r.recon.sum(), r.kl.sum(),
            ]).to(torch.float64)
            bar.update(xb.shape[0])
    model.train(was_training)
    s = (sums / x.shape[0]).tolist()
    return {"neg_elbo": s[0], "recon": s[1], "kl": s[2],
            "relaxed_objective": s[3], "relaxed_recon": s[4], "relaxed_kl": s[5]}


def log_mean_exp(a: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log(mean(exp(a))) along ``dim``, stable for large |a|."""
    m = a.max(dim=dim, keepdim=True).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (m + torch.log(torch.exp(a - m).mean(dim=dim, keepdim=True))).squeeze(dim)


@torch.no_grad()
def iwae_bound(model: VAE, method: Method, x: torch.Tensor, k: int, batch_size: int, seed: int = 0,
               chunk: int = 100, tau: float | None = None, progress: str | None = None,
               stop: list[int] | None = None) -> float:
    """Mean over ``x`` of -log (1/k) sum_i p(x, z_i) / q(z_i | x): the IWAE-k negative bound.

    The k draws per image are made ``chunk`` at a time for ``batch_size`` images (this fixes the
    random stream, so a seed gives the same number whatever the speed path); the methods decode each
    chunk in a few large matrix products (:func:`relaxrun.methods.base.decoded_log_likelihood`),
    without autograd. ``progress`` and ``stop`` as in :func:`evaluate` (the report counts images)."""
    tau = method.tau if tau is None else tau
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    bar = Progress(x.shape[0], progress or "", "image", enabled=progress is not None, stop=stop, leave=False)
    # forward only: no autograd graph of k decoder passes
    with seeded(seed, x.device), torch.no_grad(), bar:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            params = model.encoder(xb)
            parts = []
            for j in range(0, k, chunk):
                parts.append(method.iwae_log_weights(params, model.decode, xb, tau, min(chunk, k - j)))
            log_w = torch.cat(parts, 0).to(torch.float64)
            total += -log_mean_exp(log_w, 0).sum()
            bar.update(xb.shape[0])
    model.train(was_training)
    return float(total / x.shape[0])


def gradient_statistics(model: VAE, method: Method, x: torch.Tensor, tau: float, samples: int,
                        seed: int) -> dict[str, float]:
    """Variance and SNR of the encoder gradient of the method's training loss over ``samples``
    latent draws on one batch.

    ``variance`` is the mean over encoder parameters of the per-coordinate variance across draws;
    ``snr`` is the mean over coordinates of |mean| / std. Uses a forked RNG, so training is unchanged.
    """
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    grads = []
    with seeded(seed, x.device):
        for _ in range(samples):
            loss = method.loss(model.encoder(x), model.decode, x, tau).loss
            g = torch.autograd.grad(loss, enc, allow_unused=True)
            grads.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                                    for gi, p in zip(g, enc)]))
    G = torch.stack(grads)
    mean, std = G.mean(0), G.std(0)
    snr = (mean.abs() / std.clamp_min(1e-12))[std > 0]
    return {"variance": float(G.var(0).mean()), "snr": float(snr.mean()) if snr.numel() else float("nan"),
            "mean_norm": float(mean.norm())}


def bits_per_dim(nats_per_image: float, dims: int = 784) -> float:
    return nats_per_image / (dims * math.log(2))


def _flat_items(node, prefix: str = ""):
    """(dotted key, value) of every leaf of a nested dict (a run's saved config)."""
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _flat_items(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _saved_data_root(cfg, run_dir) -> None:
    """A relative ``data.root`` saved by an older run: resolve it against the folder that run was
    started from (``.hydra/hydra.yaml``: ``hydra.runtime.cwd``), never against today's working
    directory. Where that is unknown, keep it but do not download: nothing is written where
    relaxrun-eval happens to run. (Runs save data.root absolute; this is for earlier ones.)"""
    import os

    from omegaconf import OmegaConf

    root = OmegaConf.select(cfg, "data.root")
    if root is None or os.path.isabs(str(root)):
        return
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    start = None
    try:
        start = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd")
    except Exception:  # no or unreadable .hydra/: the start folder is unknown
        start = None
    if start:
        cfg.data.root = os.path.normpath(os.path.join(str(start), str(root)))
    else:
        cfg.data.download = False


def main(argv: list[str] | None = None) -> int:
    """``relaxrun-eval RUN [key=value ...]``: re-evaluate a saved run (folder or checkpoint.pt).

    Reports the method's bound (hard samples / exact KL for discrete latents), the relaxed
    objective, IWAE-k and bits/dim on the test set; updates ``metrics.json`` (key ``eval`` and
    ``test_iwae``) and writes ``eval/*`` scalars to the run's TensorBoard folder.

    Refused with one line on stderr and exit status 2, nothing written and the checkpoint left as it
    is: a missing, empty, truncated, foreign, other-version or non-finite checkpoint
    (:func:`relaxrun.runtime.load_checkpoint`), a config that does not fit it, bad overrides, bad
    data files, a run folder another process holds (its lock), and results that come out NaN or
    infinite. A failed write (disk full, read-only folder) exits with 1 and leaves the previous
    metrics.json as it was.
    """
    import argparse
    import contextlib
    import json
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .config import ConfigError, validate
    from .data import DataError, load_data
    from .methods import build_method
    from .models import build_model
    from .runtime import (CHECKPOINT, TrainingError, WriteError, load_checkpoint, load_joint_state_dict,
                          pick_device, quiet_writer_threads, run_folder_lock, run_io_error, write_json_atomic)

    parser = argparse.ArgumentParser(
        prog="relaxrun-eval",
        description="Re-evaluate a finished or interrupted relaxrun run: test bound, relaxed objective, "
                    "IWAE-k and bits/dim. Updates metrics.json and TensorBoard in the run folder.",
        epilog="examples:\n  relaxrun-eval outputs/2026-11-23/10-00-00.123456\n"
               "  relaxrun-eval outputs/.../checkpoint.pt eval.iwae_samples=5000 data.root=../shared/data",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder (holding checkpoint.pt) or a checkpoint file")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. eval.iwae_samples=1000, "
                                                     "data.root=..., device=cpu)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave metrics.json and tb/ as they are")
    args = parser.parse_args(argv)

    def fail(message: str, status: int = 2) -> int:
        print(f"relaxrun-eval: error: {message}", file=sys.stderr)
        return status

    path = Path(args.run)
    ckpt = path / CHECKPOINT if path.is_dir() else path
    run_dir = ckpt.parent
    with contextlib.ExitStack() as stack:
        try:
            bad = [o for o in args.overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must look like key=value; got {bad[0]!r}")
            ck = load_checkpoint(ckpt)
            try:
                cfg = OmegaConf.create(json.loads(ck["config"]))
                step = int(ck["state"]["step"])
            except (TypeError, ValueError, KeyError, OmegaConfBaseException) as err:
                raise TrainingError(f"checkpoint {ckpt} has no readable config or step ({type(err).__name__}); "
                                    "it is left as it is") from None
            if not any(o.startswith("eval.iwae_samples=") for o in args.overrides):
                cfg.eval.iwae_samples = cfg.eval.iwae_samples or 1000
            if not any(o.startswith("data.root=") for o in args.overrides):
                _saved_data_root(cfg, run_dir)
            for o in args.overrides:
                key, value = o.split("=", 1)
                if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                    import difflib

                    flat = [k for k, _ in _flat_items(OmegaConf.to_container(cfg))]
                    near = difflib.get_close_matches(key, flat, n=1, cutoff=0.6)
                    raise ConfigError(f"unknown key {key}" + (f"; did you mean {near[0]}?" if near else ""))
                try:
                    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o]))
                except OmegaConfBaseException as err:
                    raise ConfigError(f"cannot apply {o}: {str(err).strip().splitlines()[0]}") from None
            run, mcfg = validate(cfg)
            if not args.no_write:  # no training or evaluation writing in this folder meanwhile
                stack.enter_context(run_folder_lock(run_dir))
            device = pick_device(run.device)
            data = load_data(run.data, device)
            method = build_method(mcfg, run.trainer).to(device)
            model = build_model(run.model, method.param_dim, method.latent_dim).to(device)
            load_joint_state_dict(model, method, ck["model"])
        except (ConfigError, DataError, TrainingError) as err:
            return fail(str(err))
        except RuntimeError as err:
            return fail(f"checkpoint {ckpt} does not fit its config: {str(err).splitlines()[0]}")

        method.temperature.at(max(step - 1, 0))  # the schedule's value at the last step trained
        tau = method.tau
        if not logging.getLogger().handlers and not logging.getLogger("relaxrun").handlers:
            # progress lines when not on a terminal (relaxrun/progress.py), on stderr
            logging.basicConfig(level=logging.INFO, format="relaxrun-eval: %(message)s")
        try:
            res = evaluate(model, method, data.test, run.trainer.eval_batch_size, seed=run.data.eval_seed,
                           progress="test")
            k = run.eval.iwae_samples
            iwae = None
            if k:
                try:
                    iwae = iwae_bound(model, method, data.test, k, run.eval.iwae_batch, seed=run.data.eval_seed,
                                      progress=f"IWAE-{k}")
                except NotImplementedError as err:
                    iwae = err
        except KeyboardInterrupt:
            return fail("interrupted; nothing was written", 130)
        out = {"step": step, "tau": tau, "kind": method.metric_kind, "neg_elbo": res["neg_elbo"],
               "relaxed_objective": res["relaxed_objective"], "recon": res["recon"], "kl": res["kl"],
               "bits_per_dim": bits_per_dim(res["neg_elbo"])}
        if isinstance(iwae, Exception):
            out["iwae"] = str(iwae)
        elif iwae is not None:
            out[f"iwae_{k}"] = iwae
            out["iwae_bits_per_dim"] = bits_per_dim(iwae)
        for key, v in out.items():
            print(f"{key:>20}: {v:.4f}" if isinstance(v, float) else f"{key:>20}: {v}")
        nan = [key for key, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
        if nan:
            return fail(f"the checkpoint {ckpt} gives non-finite {', '.join(nan)} on the test set; "
                        "metrics.json and tb/ are left as they were")
        if not args.no_write:
            mpath = run_dir / "metrics.json"
            try:
                metrics = json.loads(mpath.read_text()) if mpath.exists() else {}
            except (OSError, ValueError) as err:
                return fail(f"cannot read {mpath} ({type(err).__name__}): fix or remove it, or use --no-write")
            if not isinstance(metrics, dict):
                return fail(f"{mpath} does not hold a JSON object: fix or remove it, or use --no-write")
            metrics["eval"] = out
            if f"iwae_{k}" in out:
                metrics["test_iwae"], metrics["iwae_samples"] = out[f"iwae_{k}"], k
            from torch.utils.tensorboard import SummaryWriter

            try:  # TensorBoard first: metrics.json changes only when both could be written
                with quiet_writer_threads(), SummaryWriter(str(run_dir / "tb")) as w:
                    for key, v in out.items():
                        if isinstance(v, float) and key != "tau":
                            w.add_scalar(f"eval/{key}", v, step)
                write_json_atomic(mpath, metrics)
            except WriteError as err:
                return fail(str(err), 1)
            except OSError as err:
                return fail(str(run_io_error(err, run_dir)), 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


def _console() -> None:
    raise SystemExit(main())
