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

from ..checks import one_of
from ..distributions.binary_concrete import RelaxedBernoulli
from .base import MISSING, DiscreteLaw, Terms, bernoulli_nll, register, straight_through
from .families import BernoulliLatentConfig, BernoulliLatentMethod  # noqa: F401  (also importable from here)


@dataclass
class RelaxedBernoulliConfig(BernoulliLatentConfig):
    hard: bool = MISSING
    kl: str = MISSING

    def __post_init__(self):
        super().__post_init__()
        one_of("method.kl", self.kl, ("analytic", "relaxed"))


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
