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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import one_of
from ..distributions.concrete import GumbelSoftmax
from .base import MISSING, DiscreteLaw, Terms, bernoulli_nll, categorical_kl_uniform, register, straight_through
from .families import CategoricalLatentConfig, CategoricalLatentMethod  # noqa: F401  (also importable from here)


@dataclass
class GumbelSoftmaxConfig(CategoricalLatentConfig):
    hard: bool = MISSING
    kl: str = MISSING

    def __post_init__(self):
        super().__post_init__()
        one_of("method.kl", self.kl, ("analytic", "relaxed"))


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
