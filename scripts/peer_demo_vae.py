#!/usr/bin/env python
"""A discrete-latent VAE trained the way relaxit's demo notebooks train theirs, for the whole-process
comparison of scripts/benchmark.py's ``peers`` section (run by the peer environment's Python):
torchvision MNIST + ``ToTensor()`` + ``DataLoader(shuffle=True)``, images binarized per batch, an MLP
784-400-20 encoder giving the logits of 20 Bernoulli units, relaxit's ``StraightThroughBernoulli``
sample, an MLP 20-400-784 decoder, the negative ELBO with the exact KL to Bernoulli(1/2), torch's
Adam (lr 1e-3), ``loss.item()`` every step, and the test ELBO after each epoch.

    python scripts/peer_demo_vae.py DATA_ROOT [--epochs 2] [--batch-size 128] [--threads 0]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from relaxit.distributions import StraightThroughBernoulli


class VAE(nn.Module):
    def __init__(self, hidden: int = 400, latent: int = 20):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 784))

    def forward(self, x):
        logits = self.enc(x)
        z = StraightThroughBernoulli(logits=logits).rsample()
        return self.dec(z), logits


def loss_fn(x, recon_logits, logits):
    recon = F.binary_cross_entropy_with_logits(recon_logits, x, reduction="sum")
    q = torch.sigmoid(logits)
    kl = (q * (F.logsigmoid(logits) - math.log(0.5)) + (1 - q) * (F.logsigmoid(-logits) - math.log(0.5))).sum()
    return (recon + kl) / x.shape[0]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("data_root")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train = datasets.MNIST(args.data_root, train=True, download=False, transform=transforms.ToTensor())
    test = datasets.MNIST(args.data_root, train=False, download=False, transform=transforms.ToTensor())
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test, batch_size=args.batch_size, shuffle=False)
    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        t0, total, n = time.perf_counter(), 0.0, 0
        model.train()
        for images, _ in train_loader:
            x = torch.bernoulli(images.view(-1, 784))
            recon, logits = model(x)
            loss = loss_fn(x, recon, logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            n += 1
        model.eval()
        test_total, m = 0.0, 0
        with torch.no_grad():
            for images, _ in test_loader:
                x = torch.bernoulli(images.view(-1, 784))
                recon, logits = model(x)
                test_total += loss_fn(x, recon, logits).item() * x.shape[0]
                m += x.shape[0]
        print(f"epoch {epoch + 1}: train loss {total / n:.2f}, test -ELBO {test_total / m:.2f}, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
