"""``method=correlated_bernoulli``: correlated relaxed Bernoulli latents through a Gaussian copula
(Lee, Imrie, van der Schaar 2022, "Self-Supervision Enhanced Feature Selection with Correlated
Gates", ICLR).

Posterior q(z | x): z_d = sigmoid((logit u_d + l_d) / tau), u = Phi(L eps), eps ~ N(0, I), with
l = ``params`` and R = L L^T a D x D correlation matrix shared by all inputs
(:class:`~relaxrun.distributions.correlated_bernoulli.CorrelatedRelaxedBernoulli`). Each z_d is
exactly Binary Concrete(l_d, tau); R couples the units' noise. ``correlation`` picks R:

* ``learned`` (default): R from D(D-1)/2 unconstrained parameters trained with the VAE -- the
  rows of a unit-diagonal lower-triangular matrix normalised to unit length give the Cholesky
  factor, so R is a valid correlation matrix at every step (zero parameters = identity at start);
* ``equicorrelated``: R = (1 - rho) I + rho 11^T with ``rho`` (fixed);
* ``identity``: R = I (independent Binary Concretes; a control).

Prior: independent Binary Concrete(prior logits = logit(prior_probs), tau) per unit -- the
relaxed-latent model of Maddison et al. (2017). KL term: log q(z | x) - log p(z) at the training
sample with the exact copula log-density of q (copula term + Binary Concrete marginals).

Reported bound (``metric_kind = "relaxed"``): that relaxed negative ELBO with a fresh sample, a true
bound for the continuous-latent model trained (decoder sees z in (0, 1), prior Binary Concrete at
the run's tau); it is not a bound for a discrete-latent model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..checks import at_least, one_of, require
from ..distributions._common import logit
from ..distributions.binary_concrete import RelaxedBernoulli
from ..distributions.correlated_bernoulli import (CorrelatedRelaxedBernoulli, correlation_cholesky_from_params,
                                                  equicorrelation, num_correlation_params)
from .base import MISSING, DiscreteLaw, MethodConfig, Terms, bernoulli_nll, register
from .families import UnitLatentMethod


@dataclass
class CorrelatedBernoulliConfig(MethodConfig):
    latent_dim: int = MISSING
    correlation: str = MISSING
    rho: float = MISSING
    prior_probs: float = MISSING

    def __post_init__(self):
        super().__post_init__()
        at_least("method.latent_dim", self.latent_dim, 1)
        one_of("method.correlation", self.correlation, ("learned", "equicorrelated", "identity"))
        lo = -1.0 / (self.latent_dim - 1) if self.latent_dim > 1 else -1.0
        require(isinstance(self.rho, (int, float)) and lo < self.rho < 1, "method.rho",
                f"a number in ({lo:.4g}, 1) for latent_dim={self.latent_dim}", self.rho)
        require(isinstance(self.prior_probs, (int, float)) and 0 < self.prior_probs < 1, "method.prior_probs",
                "a number in (0, 1)", self.prior_probs)


@register("correlated_bernoulli")
class CorrelatedBernoulliMethod(UnitLatentMethod):
    Config = CorrelatedBernoulliConfig
    metric_kind = "relaxed"
    latent_type = "relaxed Bernoulli in (0, 1), Gaussian-copula correlated"

    def __init__(self, cfg: CorrelatedBernoulliConfig, temperature=None):
        super().__init__(cfg, temperature)
        d = cfg.latent_dim
        if cfg.correlation == "learned":
            self.corr_params = nn.Parameter(torch.zeros(num_correlation_params(d)))
        elif cfg.correlation == "equicorrelated":
            self.register_buffer("fixed_scale_tril", torch.linalg.cholesky(equicorrelation(cfg.rho, d)))
        else:
            self.register_buffer("fixed_scale_tril", torch.eye(d))
        self.prior_logit = float(logit(torch.tensor(cfg.prior_probs, dtype=torch.float64)))

    def scale_tril(self) -> torch.Tensor:
        """Cholesky factor of R, (D, D)."""
        if self.cfg.correlation == "learned":
            return correlation_cholesky_from_params(self.corr_params, self.cfg.latent_dim)
        return self.fixed_scale_tril

    def posterior(self, params: torch.Tensor, tau: float) -> CorrelatedRelaxedBernoulli:
        # validate_args=False skips only the per-step value checks; R is valid by construction
        return CorrelatedRelaxedBernoulli(tau, logits=params, scale_tril=self.scale_tril().to(params.dtype),
                                          validate_args=False)

    def prior(self, like: torch.Tensor, tau: float) -> RelaxedBernoulli:
        return RelaxedBernoulli(tau, logits=torch.full_like(like, self.prior_logit), validate_args=False)

    def _terms(self, params, decode, x, tau, sample_shape=torch.Size()):
        q = self.posterior(params, tau)
        z, y = q.rsample_with_logit(sample_shape)  # y = logit(z): exact even where z rounded to 0 or 1
        recon = bernoulli_nll(decode(z), x)
        kl = q.log_prob(z) - self.prior(y, tau).log_prob_logit(y).sum(-1)
        return recon, kl

    def loss(self, params, decode, x, tau) -> Terms:
        recon, kl = self._terms(params, decode, x, tau)
        return Terms((recon + kl).mean(), recon, kl)

    def bound(self, params, decode, x, tau) -> Terms:
        return self.loss(params, decode, x, tau)

    def iwae_log_weights(self, params, decode, x, tau, k):
        recon, kl = self._terms(params, decode, x, tau, (k,))
        return -recon - kl

    def prior_sample(self, n, device, dtype=torch.float32):
        return self.prior(torch.zeros(n, self.latent_dim, device=device, dtype=dtype), self.tau).sample()

    def reconstruct_input(self, params, tau):
        return self.posterior(params, tau).sample()

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """With R = I (``correlation: identity``, or ``learned`` at its zero initialisation) the law of
        round(z) is Bernoulli(sigmoid(l)) per unit; prior Bernoulli(prior_probs). Otherwise round(z)
        is a multivariate probit law whose 2^D probabilities are Gaussian orthant integrals, not an
        independent law, so this raises."""
        L = self.scale_tril()
        if not torch.equal(L, torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)):
            raise NotImplementedError(
                "the law of round(z) under a non-identity Gaussian copula is a correlated (multivariate "
                "probit) law, not an independent one; only R = I can be enumerated")
        return DiscreteLaw("bernoulli", params, torch.tensor(self.prior_logit, dtype=params.dtype,
                                                             device=params.device))
