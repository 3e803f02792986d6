"""TensorBoard helpers: image grids of reconstructions and samples, and an hparams entry that
TensorBoard shows in the run's own folder (not the extra subfolder ``add_hparams`` creates)."""

from __future__ import annotations

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from torchvision.utils import make_grid

from .evaluate import seeded
from .models import VAE


def _images(flat: torch.Tensor) -> torch.Tensor:
    return flat.reshape(-1, 1, 28, 28).clamp(0, 1)


@torch.no_grad()
def log_images(writer: SummaryWriter, model: VAE, x: torch.Tensor, tau: float, step: int, n: int = 16,
               seed: int = 0) -> None:
    """Test digits (top row) above their reconstructions, and decoded prior samples (forked RNG)."""
    with seeded(seed, x.device):
        _log_images(writer, model, x, tau, step, n)


def _log_images(writer, model, x, tau, step, n):
    was_training = model.training
    model.eval()
    x = x[:n]
    z = model.method.reconstruct_input(model.encoder(x), tau)
    recon = torch.sigmoid(model.decode(z))
    writer.add_image("images/reconstructions", make_grid(_images(torch.cat([x, recon])), nrow=x.shape[0], pad_value=0.5),
                     step)
    samples = torch.sigmoid(model.decode(model.method.prior_sample(64, x.device)))
    writer.add_image("images/samples", make_grid(_images(samples), nrow=8, pad_value=0.5), step)
    model.train(was_training)


def _hparam_value(v):
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def log_hparams(writer: SummaryWriter, hparams: dict, metrics: dict[str, float], step: int) -> None:
    """Write the hparams plugin entry into this writer's run; metrics are also scalars."""
    hp = {k: _hparam_value(v) for k, v in hparams.items()}
    exp, ssi, sei = hparams_summary(hp, metrics)
    for summary in (exp, ssi, sei):
        writer.file_writer.add_summary(summary)
    for k, v in metrics.items():
        writer.add_scalar(k, v, step)
