"""Test-set numbers users compare: the method's valid bound (hard samples, exact KL for discrete
latents), the relaxed objective beside it, and the importance-weighted bound (Burda et al. 2016).

Evaluation draws its randomness from a forked RNG seeded with ``seed``, so the numbers of a run
are reproducible and evaluating never changes the training run's random stream.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .models import VAE


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def evaluate(model: VAE, x: torch.Tensor, tau: float, batch_size: int, seed: int = 0) -> dict[str, float]:
    """Means over ``x`` (nats per image) of the bound and relaxed objective, with their parts."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64, device=x.device)
    with seeded(seed, x.device):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            params = model.encoder(xb)
            b = model.method.bound(params, model.decode, xb, tau)
            r = model.method.relaxed(params, model.decode, xb, tau)
            sums += torch.stack([
                (b.recon + b.kl).sum(), b.recon.sum(), b.kl.sum(),
                (r.recon + r.kl).sum(), r.recon.sum(), r.kl.sum(),
            ]).to(torch.float64)
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
def iwae_bound(model: VAE, x: torch.Tensor, tau: float, k: int, batch_size: int, seed: int = 0,
               chunk: int = 100) -> float:
    """Mean over ``x`` of -log (1/k) sum_i p(x, z_i) / q(z_i | x): the IWAE-k negative bound."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    with seeded(seed, x.device):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            params = model.encoder(xb)
            parts = []
            for j in range(0, k, chunk):
                parts.append(model.method.iwae_log_weights(params, model.decode, xb, tau, min(chunk, k - j)))
            log_w = torch.cat(parts, 0).to(torch.float64)
            total += -log_mean_exp(log_w, 0).sum()
    model.train(was_training)
    return float(total / x.shape[0])


def bits_per_dim(nats_per_image: float, dims: int = 784) -> float:
    return nats_per_image / (dims * math.log(2))
