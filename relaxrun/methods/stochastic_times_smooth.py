"""``method=stochastic_times_smooth``: Bengio et al. 2013 (arXiv:1308.3432, sec. 4) stochastic
times smooth units.

With a = ``params`` and p = sigmoid(a), each unit is h = b * sqrt(p), b ~ Bernoulli(sqrt(p)); the
gradient flows through the smooth factor sqrt(p) with b held fixed
(:class:`~relaxrun.distributions.stochastic_times_smooth.StochasticTimesSmooth`).

The latent variable is the gate b: posterior q(b | x) = prod_d Bernoulli(sqrt(p_d)), prior
Bernoulli(prior_probs) (0.5 by default), KL term the analytic
sum_d KL(Bern(sqrt p_d) || Bern(prior_probs)). (The law of h itself has x-dependent support
{0, sqrt(p)}, so a KL between output laws would be infinite.)

Training feeds the decoder h, which carries sqrt(p) -- information a hard sample does not. So the
reported bound (``metric_kind = "discrete"``) feeds the hard gate b ~ q(b | x) instead:
-log p(x | b) + analytic KL, a true ELBO of the discrete-latent model. The ``relaxed`` numbers
next to it are the training objective (decoder sees h). ``tau`` is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..distributions.stochastic_times_smooth import StochasticTimesSmooth
import torch

from .base import DiscreteLaw, Terms, bernoulli_nll, register
from .families import BernoulliLatentConfig, BernoulliLatentMethod


@dataclass
class StochasticTimesSmoothConfig(BernoulliLatentConfig):
    """No options beyond the family\'s."""


@register("stochastic_times_smooth")
class StochasticTimesSmoothMethod(BernoulliLatentMethod):
    """Hard-sample evaluation reuses the Bernoulli-latent helpers with the gate's logits."""

    Config = StochasticTimesSmoothConfig
    metric_kind = "discrete"
    latent_type = "Bernoulli gate (training input b * sqrt(p))"

    @staticmethod
    def gate_logits(params):
        """logit(sqrt(sigmoid(a))): the logits of the posterior over the gate b."""
        return StochasticTimesSmooth(logits=params, validate_args=False).gate_logits

    def loss(self, params, decode, x, tau) -> Terms:
        q = StochasticTimesSmooth(logits=params, validate_args=False)
        h = q.rsample()
        recon = bernoulli_nll(decode(h), x)
        kl = self.exact_kl(q.gate_logits)
        return Terms((recon + kl).mean(), recon, kl)

    def bound(self, params, decode, x, tau) -> Terms:
        return super().bound(self.gate_logits(params), decode, x, tau)

    def reconstruct_input(self, params, tau):
        return super().reconstruct_input(self.gate_logits(params), tau)

    def iwae_log_weights(self, params, decode, x, tau, k):
        return super().iwae_log_weights(self.gate_logits(params), decode, x, tau, k)

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """The gate b ~ Bernoulli(sqrt(sigmoid(a))), fed to the decoder as b itself (the model
        :meth:`bound` scores); training feeds b * sqrt(p) instead. Prior Bernoulli(prior_probs)."""
        return DiscreteLaw("bernoulli", self.gate_logits(params),
                           torch.tensor(self.prior_logits, dtype=params.dtype, device=params.device))
