"""Encoder / decoder MLPs of a VAE. The model knows sizes only, never a method.

Encoder: 784 -> hidden[0] -> ... -> hidden[-1] -> param_dim (the posterior's parameters).
Decoder: latent_dim -> hidden[-1] -> ... -> hidden[0] -> 784 Bernoulli logits.
``param_dim`` and ``latent_dim`` come from the method (``method.param_dim``, ``method.latent_dim``).
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """``encoder(x)`` ``[B, x_dim] -> [B, param_dim]``; ``decode(z)`` ``[..., latent_dim] -> [..., x_dim]`` logits."""

    def __init__(self, param_dim: int, latent_dim: int, hidden: list[int], activation: str = "relu",
                 x_dim: int = 784):
        super().__init__()
        self.encoder = mlp([x_dim, *hidden, param_dim], activation)
        self.decoder = mlp([latent_dim, *reversed(hidden), x_dim], activation)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def build_model(model_cfg, param_dim: int, latent_dim: int) -> VAE:
    return VAE(param_dim, latent_dim, list(model_cfg.hidden), model_cfg.activation)
