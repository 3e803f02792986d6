"""``method=straight_through``: Bernoulli latents trained with the straight-through estimator
(Bengio, Léonard, Courville 2013, arXiv:1308.3432; Hinton 2012).

Posterior q(b | x) = prod_d Bernoulli(sigmoid(l_d)), l = ``params``. Training feeds the decoder
the exact hard sample b and back-propagates as if it were p = sigmoid(l): z = b + p - stopgrad(p)
(:class:`~relaxrun.distributions.straight_through.StraightThroughBernoulli`). The gradient is
biased for a non-linear decoder, but the training objective itself is the discrete one.

Prior: Bernoulli(prior_probs) per unit (0.5 by default). KL term: the analytic
sum_d KL(Bern(q_d) || Bern(prior_probs)).

Reported bound (``metric_kind = "discrete"``): -log p(x | b) at b ~ q plus the analytic KL, a true
ELBO of the discrete-latent model -- the same quantity the method trains on. ``tau`` is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..distributions.straight_through import StraightThroughBernoulli
import torch

from .base import DiscreteLaw, Terms, bernoulli_nll, register
from .families import BernoulliLatentConfig, BernoulliLatentMethod


@dataclass
class StraightThroughConfig(BernoulliLatentConfig):
    """No options beyond the family\'s."""


@register("straight_through")
class StraightThroughMethod(BernoulliLatentMethod):
    Config = StraightThroughConfig
    metric_kind = "discrete"
    latent_type = "Bernoulli"

    def loss(self, params, decode, x, tau) -> Terms:
        z = StraightThroughBernoulli(logits=params, validate_args=False).rsample()
        recon = bernoulli_nll(decode(z), x)
        kl = self.exact_kl(params)
        return Terms((recon + kl).mean(), recon, kl)

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """Bernoulli(sigmoid(l)), the law of the hard sample fed forward; prior Bernoulli(prior_probs)."""
        return DiscreteLaw("bernoulli", params, torch.tensor(self.prior_logits, dtype=params.dtype,
                                                             device=params.device))
