"""``method=stochastic_gates``: clipped-Gaussian gate latents (Yamada et al. 2020, "Feature Selection
using Stochastic Gates", ICML).

Latent: D gates z_d = clamp(mu_d + sigma eps_d, 0, 1) in [0, 1], a *mixed* law (atoms at 0 and 1,
Gaussian density in between; :class:`~relaxrun.distributions.stochastic_gates.StochasticGate`).
The encoder outputs ``params``; mu = 0.5 + params, so a zero-initialised output starts at Yamada et
al.'s mu = 0.5. sigma is ``method.sigma`` (0.5 in the paper); with ``learn_sigma: true`` it is a
learnable positive parameter per latent unit (sigma = exp(log_sigma)), trained with the VAE.

Prior: the same family, StochasticGate(prior_mu = 0.5, sigma = method.sigma) per unit (fixed).
KL term: the single-sample estimate log q(z | x) - log p(z) at the training sample, both from the
mixed log-densities (atom masses at 0/1, densities inside: one dominating measure), so
recon + KL is an unbiased estimate of the negative ELBO of this mixed-latent model.
``l0_weight`` > 0 adds l0_weight * sum_d Phi(mu_d / sigma_d) (the expected L0 norm, Yamada et al.
eq. 6) to the *training* loss only; the reported bound never includes it.

Reported bound (``metric_kind = "mixed"``): that negative ELBO with a fresh posterior sample. It is
a true bound for the model trained: the decoder sees the same z in [0, 1] as in training.
``tau`` is not used: the gate's amount of noise is sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..checks import at_least, positive, require
from ..distributions.stochastic_gates import StochasticGate
from .base import MISSING, DiscreteLaw, MethodConfig, Terms, bernoulli_nll, register
from .families import UnitLatentMethod


@dataclass
class StochasticGatesConfig(MethodConfig):
    latent_dim: int = MISSING
    sigma: float = MISSING
    learn_sigma: bool = MISSING
    prior_mu: float = MISSING
    l0_weight: float = MISSING

    def __post_init__(self):
        super().__post_init__()
        at_least("method.latent_dim", self.latent_dim, 1)
        positive("method.sigma", self.sigma)
        require(isinstance(self.prior_mu, (int, float)) and math.isfinite(self.prior_mu), "method.prior_mu",
                "a finite number", self.prior_mu)
        require(isinstance(self.l0_weight, (int, float)) and math.isfinite(self.l0_weight) and self.l0_weight >= 0,
                "method.l0_weight", "a finite number >= 0", self.l0_weight)


@register("stochastic_gates")
class StochasticGatesMethod(UnitLatentMethod):
    Config = StochasticGatesConfig
    metric_kind = "mixed"
    latent_type = "clipped-Gaussian gate in [0, 1] (atoms at 0 and 1)"

    def __init__(self, cfg: StochasticGatesConfig, temperature=None):
        super().__init__(cfg, temperature)
        log_sigma = torch.full((cfg.latent_dim,), math.log(cfg.sigma))
        if cfg.learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def posterior(self, params: torch.Tensor) -> StochasticGate:
        sigma = self.log_sigma.exp().to(params.dtype)
        return StochasticGate(0.5 + params, sigma, validate_args=False)

    def _prior_unbatched(self, like: torch.Tensor) -> StochasticGate:
        """The prior with scalar parameters: its log_prob broadcasts over a batch of values, computing
        the atoms (two Gaussian log-CDFs) once instead of once per entry."""
        def scalar(v):
            return torch.tensor(v, dtype=like.dtype, device=like.device)

        return StochasticGate(scalar(self.cfg.prior_mu), scalar(self.cfg.sigma), validate_args=False)

    def prior(self, like: torch.Tensor) -> StochasticGate:
        return self._prior_unbatched(like).expand(like.shape)

    def _terms(self, params, decode, x, sample_shape=torch.Size()):
        q = self.posterior(params)
        z = q.rsample(sample_shape)
        recon = bernoulli_nll(decode(z), x)
        kl = (q.log_prob(z) - self._prior_unbatched(z).log_prob(z)).sum(-1)
        return q, z, recon, kl

    def loss(self, params, decode, x, tau) -> Terms:
        q, _, recon, kl = self._terms(params, decode, x)
        loss = (recon + kl).mean()
        if self.cfg.l0_weight:
            loss = loss + self.cfg.l0_weight * q.expected_l0().sum(-1).mean()
        return Terms(loss, recon, kl)

    def bound(self, params, decode, x, tau) -> Terms:
        _, _, recon, kl = self._terms(params, decode, x)
        return Terms((recon + kl).mean(), recon, kl)

    def relaxed(self, params, decode, x, tau) -> Terms:
        # the training objective without the L0 penalty is the bound itself
        return self.bound(params, decode, x, tau)

    def iwae_log_weights(self, params, decode, x, tau, k):
        _, _, recon, kl = self._terms(params, decode, x, (k,))
        return -recon - kl

    def prior_sample(self, n, device, dtype=torch.float32):
        return self.prior(torch.zeros(n, self.latent_dim, device=device, dtype=dtype)).sample()

    def reconstruct_input(self, params, tau):
        return self.posterior(params).sample()

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """The law of round(z) = 1[z > 1/2]: Bernoulli(Phi((mu - 1/2) / sigma)) = Bernoulli(Phi(params /
        sigma)), logits log Phi(a) - log Phi(-a); prior Phi((prior_mu - 1/2) / sigma). A gate, not a
        relaxation with a discrete limit (sigma -> 0 makes z deterministic), so this is the nearest
        discrete model, not one the method converges to. ``tau`` is not used."""
        def probit_logit(a):
            return torch.special.log_ndtr(a) - torch.special.log_ndtr(-a)

        a = params / self.log_sigma.exp().to(params.dtype)
        a_prior = torch.tensor((self.cfg.prior_mu - 0.5) / self.cfg.sigma, dtype=params.dtype, device=params.device)
        return DiscreteLaw("bernoulli", probit_logit(a), probit_logit(a_prior))
