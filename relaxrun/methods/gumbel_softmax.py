"""``method=gumbel_softmax``: categorical latents trained through the Gumbel-Softmax / Concrete relaxation.

N categorical variables with K categories each (default 20 x 10, Jang et al. 2017).
Posterior q(c | x) = prod_n Cat(softmax(l_n)), prior uniform. Training draws
z_n ~ GumbelSoftmax(l_n, tau) and feeds the N*K relaxed one-hot vector to the decoder;
``hard: true`` feeds one_hot(argmax z_n) forward with the relaxed gradient (ST Gumbel-Softmax).

KL term (``kl``):
* ``analytic`` (default): sum_n KL(Cat(q_n) || Uniform(K));
* ``relaxed``: log q(z) - log p(z) at the relaxed sample, both Concrete densities at the same tau,
  evaluated from log z (finite at small tau).

Reported bound (``metric_kind = "discrete"``): one-hot c_n ~ Cat(q_n), -log p(x | c) + analytic KL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import at_least, one_of
from ..distributions.concrete import GumbelSoftmax
from .base import (DiscreteLaw, Method, MethodConfig, Terms, bernoulli_nll, categorical_kl_uniform, register,
                   straight_through)


@dataclass
class GumbelSoftmaxConfig(MethodConfig):
    name: str = "gumbel_softmax"
    latent_dim: int = 20
    categories: int = 10
    hard: bool = False
    kl: str = "analytic"

    def __post_init__(self):
        super().__post_init__()
        at_least("method.latent_dim", self.latent_dim, 1)
        at_least("method.categories", self.categories, 2)
        one_of("method.kl", self.kl, ("analytic", "relaxed"))


class CategoricalLatentMethod(Method):
    """Shared parts of methods whose latent is N independent K-way categoricals (one-hot to the decoder)."""

    metric_kind = "discrete"
    latent_type = "categorical"

    @property
    def param_dim(self) -> int:
        return self.cfg.latent_dim * self.cfg.categories

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim * self.cfg.categories

    def split(self, params: torch.Tensor) -> torch.Tensor:
        return params.reshape(*params.shape[:-1], self.cfg.latent_dim, self.cfg.categories)

    def hard_sample(self, logits: torch.Tensor, sample_shape=()) -> torch.Tensor:
        """One-hot categorical draws ``sample_shape + logits.shape`` via Gumbel-max."""
        g = -torch.log(-torch.log(torch.rand(tuple(sample_shape) + logits.shape, dtype=logits.dtype,
                                             device=logits.device).clamp_min(torch.finfo(logits.dtype).tiny)))
        return F.one_hot((logits + g).argmax(-1), self.cfg.categories).to(logits.dtype)

    def bound(self, params, decode, x, tau) -> Terms:
        logits = self.split(params)
        c = self.hard_sample(logits)
        recon = bernoulli_nll(decode(c.flatten(-2)), x)
        kl = categorical_kl_uniform(logits).sum(-1)
        return Terms((recon + kl).mean(), recon, kl)

    def prior_sample(self, n, device, dtype=torch.float32):
        idx = torch.randint(self.cfg.categories, (n, self.cfg.latent_dim), device=device)
        return F.one_hot(idx, self.cfg.categories).to(dtype).flatten(-2)

    def reconstruct_input(self, params, tau):
        return self.hard_sample(self.split(params)).flatten(-2)

    def iwae_log_weights(self, params, decode, x, tau, k):
        logits = self.split(params)
        c = self.hard_sample(logits, (k,))
        log_px = -bernoulli_nll(decode(c.flatten(-2)), x)
        log_q = (c * torch.log_softmax(logits, -1)).sum((-1, -2))
        log_p = -self.cfg.latent_dim * math.log(self.cfg.categories)
        return log_px + log_p - log_q


@register("gumbel_softmax")
class GumbelSoftmaxMethod(CategoricalLatentMethod):
    Config = GumbelSoftmaxConfig

    def loss(self, params, decode, x, tau) -> Terms:
        logits = self.split(params)
        q = GumbelSoftmax(tau, logits=logits, validate_args=False)
        log_z = q.rsample_log()
        z = log_z.exp()
        if self.cfg.hard:
            z = straight_through(F.one_hot(z.argmax(-1), self.cfg.categories).to(z.dtype), z)
        recon = bernoulli_nll(decode(z.flatten(-2)), x)
        if self.cfg.kl == "analytic":
            kl = categorical_kl_uniform(logits).sum(-1)
        else:
            prior = GumbelSoftmax(tau, logits=torch.zeros_like(logits), validate_args=False)
            kl = (q.log_prob_log_value(log_z) - prior.log_prob_log_value(log_z)).sum(-1)
        return Terms((recon + kl).mean(), recon, kl)

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """Cat(softmax(l_n)) per variable: the law of argmax z_n at every tau (and what
        ``hard: true`` feeds forward, one-hot); prior uniform."""
        logits = self.split(params)
        return DiscreteLaw("categorical", logits, torch.zeros((), dtype=params.dtype, device=params.device))
