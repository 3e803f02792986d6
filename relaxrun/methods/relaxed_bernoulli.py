"""``method=relaxed_bernoulli``: Bernoulli latents trained through the Binary Concrete relaxation.

Posterior q(b | x) = prod_d Bernoulli(sigmoid(l_d)), prior Bernoulli(prior_probs) (0.5 by default).
Training draws z ~ BinaryConcrete(l, tau) (Maddison et al. 2017; Jang et al. 2017) and feeds it to
the decoder; ``hard: true`` feeds the rounded sample forward with the relaxed gradient
(straight-through Gumbel-sigmoid).

KL term (``kl``):
* ``analytic`` (default): sum_d KL(Bern(q_d) || Bern(p_d)), the discrete posterior's exact KL;
* ``relaxed``: log q(z) - log p(z) at the relaxed sample with the prior's Binary Concrete at the
  same tau, in logit space (the relaxed ELBO of Maddison et al. 2017, sec. C).

Reported bound (``metric_kind = "discrete"``): b ~ Bernoulli(sigmoid(l)), -log p(x | b) + analytic
KL -- a true ELBO of the discrete-latent model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import at_least, one_of, require
from ..distributions.binary_concrete import RelaxedBernoulli
from ..distributions._common import logit
from .base import (DiscreteLaw, Method, MethodConfig, Terms, bernoulli_kl, bernoulli_nll, register,
                   straight_through)


@dataclass
class BernoulliLatentConfig(MethodConfig):
    """Options shared by methods whose latent is ``latent_dim`` Bernoulli units with a Bernoulli prior."""

    latent_dim: int = 200
    prior_probs: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        at_least("method.latent_dim", self.latent_dim, 1)
        require(isinstance(self.prior_probs, (int, float)) and 0 < self.prior_probs < 1, "method.prior_probs",
                "a number in (0, 1)", self.prior_probs)


@dataclass
class RelaxedBernoulliConfig(BernoulliLatentConfig):
    name: str = "relaxed_bernoulli"
    hard: bool = False
    kl: str = "analytic"

    def __post_init__(self):
        super().__post_init__()
        one_of("method.kl", self.kl, ("analytic", "relaxed"))


class BernoulliLatentMethod(Method):
    """Shared parts of methods whose latent is D independent Bernoulli units."""

    metric_kind = "discrete"
    latent_type = "Bernoulli"

    @property
    def param_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def prior_logits(self) -> float:
        p = getattr(self.cfg, "prior_probs", 0.5)
        return float(logit(torch.tensor(p, dtype=torch.float64)))

    def exact_kl(self, logits: torch.Tensor) -> torch.Tensor:
        return bernoulli_kl(logits, self.prior_logits).sum(-1)

    def bound(self, params, decode, x, tau) -> Terms:
        b = torch.bernoulli(torch.sigmoid(params))
        recon = bernoulli_nll(decode(b), x)
        kl = self.exact_kl(params)
        return Terms((recon + kl).mean(), recon, kl)

    def prior_sample(self, n, device, dtype=torch.float32):
        p = torch.sigmoid(torch.tensor(self.prior_logits, dtype=dtype, device=device))
        return torch.bernoulli(p.expand(n, self.latent_dim))

    def reconstruct_input(self, params, tau):
        return torch.bernoulli(torch.sigmoid(params))

    def iwae_log_weights(self, params, decode, x, tau, k):
        probs = torch.sigmoid(params)
        b = torch.bernoulli(probs.expand(k, *probs.shape))
        log_px = -bernoulli_nll(decode(b), x)
        lq = torch.nn.functional.logsigmoid(params)
        lq_neg = torch.nn.functional.logsigmoid(-params)
        log_q = (b * lq + (1 - b) * lq_neg).sum(-1)
        lp = self.prior_logits
        log_p = (b * _logsig(lp) + (1 - b) * _logsig(-lp)).sum(-1)
        return log_px + log_p - log_q


def _logsig(v: float) -> float:
    return float(torch.nn.functional.logsigmoid(torch.tensor(v, dtype=torch.float64)))


@register("relaxed_bernoulli")
class RelaxedBernoulliMethod(BernoulliLatentMethod):
    Config = RelaxedBernoulliConfig

    def loss(self, params, decode, x, tau) -> Terms:
        q = RelaxedBernoulli(tau, logits=params, validate_args=False)
        y = q.rsample_logit()
        z = torch.sigmoid(y)
        if self.cfg.hard:
            z = straight_through((y > 0).to(z.dtype), z)
        recon = bernoulli_nll(decode(z), x)
        if self.cfg.kl == "analytic":
            kl = self.exact_kl(params)
        else:
            prior = RelaxedBernoulli(tau, logits=torch.full_like(params, self.prior_logits), validate_args=False)
            kl = (q.log_prob_logit(y) - prior.log_prob_logit(y)).sum(-1)
        return Terms((recon + kl).mean(), recon, kl)

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """Bernoulli(sigmoid(l)): the law of round(z) for z ~ BinaryConcrete(l, tau) at every tau,
        and what ``hard: true`` feeds forward; prior Bernoulli(prior_probs)."""
        return DiscreteLaw("bernoulli", params, torch.tensor(self.prior_logits, dtype=params.dtype,
                                                             device=params.device))
