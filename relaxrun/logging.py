"""TensorBoard helpers: image grids of reconstructions and samples, the run's hparams row, and an
hparams entry that TensorBoard shows in the run's own folder (not the extra subfolder
``add_hparams`` creates)."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from torchvision.utils import make_grid

from .methods.base import Method
from .models import VAE
from .runtime import seeded


def _images(flat: torch.Tensor) -> torch.Tensor:
    return flat.reshape(-1, 1, 28, 28).clamp(0, 1)


@torch.no_grad()
def log_images(writer: SummaryWriter, model: VAE, method: Method, x: torch.Tensor, step: int, n: int = 16,
               seed: int = 0) -> None:
    """Test digits (top row) above their reconstructions, and decoded prior samples (forked RNG),
    both at the method's current temperature."""
    with seeded(seed, x.device):
        was_training = model.training
        model.eval()
        x = x[:n]
        z = method.reconstruct_input(model.encoder(x), method.tau)
        recon = torch.sigmoid(model.decode(z))
        writer.add_image("images/reconstructions",
                         make_grid(_images(torch.cat([x, recon])), nrow=x.shape[0], pad_value=0.5), step)
        samples = torch.sigmoid(model.decode(method.prior_sample(64, x.device)))
        writer.add_image("images/samples", make_grid(_images(samples), nrow=8, pad_value=0.5), step)
        model.train(was_training)


def flat_hparams(run, mcfg, tau_final: float | None = None, epochs: float | None = None,
                 steps: int | None = None) -> dict:
    """The run's row in TensorBoard's hparams table. Every method gets the same keys, because
    TensorBoard takes the table's columns from the runs of the folder: the method's own options go
    into one string, ``method.options`` (e.g. ``hard=false,kl=analytic``). ``tau`` is the starting
    temperature (the option swept); ``tau_final`` the scheduled one at the last step trained.
    ``epochs`` and ``steps`` are what the run did (epochs as a fraction for a run capped by
    ``trainer.max_steps``); without them, what it was configured to do."""
    opts = {k: v for k, v in asdict(mcfg).items()
            if k not in ("name", "tau") and isinstance(v, (int, float, str, bool))}
    latent = str(opts.pop("latent_dim", "?"))
    if "categories" in opts:
        latent += f"x{opts.pop('categories')}"
    return {"method": mcfg.name, "tau": mcfg.tau, "tau_final": mcfg.tau if tau_final is None else tau_final,
            "seed": run.seed, "lr": run.optim.lr, "latent": latent,
            "batch_size": run.trainer.batch_size,
            "epochs": float(run.trainer.epochs if epochs is None else epochs),
            "steps": int(run.trainer.max_steps if steps is None else steps),
            "tau_schedule": run.trainer.tau_schedule, "tau_min": run.trainer.tau_min, "tau_rate": run.trainer.tau_rate,
            "weight_decay": run.optim.weight_decay, "grad_clip": run.trainer.grad_clip,
            "model.hidden": "-".join(map(str, run.model.hidden)), "activation": run.model.activation,
            "data": run.data.name, "binarize": run.data.binarize,
            "method.options": ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                       for k, v in opts.items()) or "-"}


def _hparam_value(v):
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def log_hparams(writer: SummaryWriter, hparams: dict, metrics: dict[str, float], step: int) -> None:
    """Write the hparams plugin entry into this writer's run; metrics are also scalars.

    Only the session (its hparams and end) is written, not an experiment summary: without one,
    TensorBoard builds the table's columns from all runs of the folder and marks the hparams whose
    values differ between runs, which it shows first (its table shows 5 by default, sorted by
    "differs", then by name). With a per-run experiment summary it would take one run's columns,
    alphabetically, and a sweep over method and tau would open on activation, batch_size, ..."""
    hp = {k: _hparam_value(v) for k, v in hparams.items()}
    _, ssi, sei = hparams_summary(hp, metrics)
    for summary in (ssi, sei):
        writer.file_writer.add_summary(summary)
    for k, v in metrics.items():
        writer.add_scalar(k, v, step)
