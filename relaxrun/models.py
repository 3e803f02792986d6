"""Encoder / decoder MLPs and the VAE that ties them to a method.

Encoder: 784 -> hidden[0] -> ... -> hidden[-1] -> method.param_dim (posterior parameters).
Decoder: method.latent_dim -> hidden[-1] -> ... -> hidden[0] -> 784 Bernoulli logits.
"""

from __future__ import annotations

import torch
from torch import nn

from .methods.base import Method

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """A VAE whose latent variable is whatever ``method`` says it is."""

    def __init__(self, method: Method, hidden: list[int], activation: str = "relu", x_dim: int = 784):
        super().__init__()
        self.method = method
        self.encoder = mlp([x_dim, *hidden, method.param_dim], activation)
        self.decoder = mlp([method.latent_dim, *reversed(hidden), x_dim], activation)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def loss(self, x: torch.Tensor, tau: float):
        return self.method.loss(self.encoder(x), self.decode, x, tau)

    def bound(self, x: torch.Tensor, tau: float):
        return self.method.bound(self.encoder(x), self.decode, x, tau)

    def relaxed(self, x: torch.Tensor, tau: float):
        return self.method.relaxed(self.encoder(x), self.decode, x, tau)


def build_model(model_cfg, method: Method) -> VAE:
    return VAE(method, list(model_cfg.hidden), model_cfg.activation)
