"""``method=invertible_gaussian``: categorical-like latents through the Invertible Gaussian
Reparameterisation (Potapczynski, Loaiza-Ganem, Cunningham 2020, "Invertible Gaussian
Reparameterization: Revisiting the Gumbel-Softmax", NeurIPS).

Latent: N variables on the K-simplex. For each, the encoder gives mu, s in R^{K-1}; sigma =
softplus(s) (a standard deviation), y = mu + sigma * eps, z = softmax++(y / tau) with ``delta``
(:class:`~relaxrun.distributions.invertible_gaussian.InvertibleGaussian`). The decoder sees the
N*K relaxed vectors.

Prior: IGR(prior_loc, prior_scale, tau, delta) per variable (mu = 0, sigma = 1 by default, as in the
paper). Because prior and posterior share tau and delta, KL(q || p) is exactly the Gaussian KL of
y, summed over the N*(K-1) coordinates: an analytic KL, no sampling.

Reported bound (``metric_kind = "relaxed"``): -log p(x | z) at z ~ q plus that exact KL: a true
negative ELBO of the continuous (simplex-latent) model trained, whose prior is an IGR at the run's
tau. It is not a bound for a discrete-latent model (the law of argmax z is a Gaussian orthant
probability with no closed form). The IWAE bound uses log p(z) - log q(z) = log N(y; prior) -
log N(y; q) (the change-of-variables terms cancel), exact at any tau.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import at_least, positive, require
from ..distributions.invertible_gaussian import InvertibleGaussian, gaussian_kl
from .base import MISSING, Method, MethodConfig, Terms, bernoulli_nll, register
from .families import CategoricalLatentConfig

MIN_SCALE = 1e-4  # keeps log sigma and 1/sigma finite when the encoder drives softplus to 0


@dataclass
class InvertibleGaussianConfig(CategoricalLatentConfig):
    delta: float = MISSING
    prior_loc: float = MISSING
    prior_scale: float = MISSING

    def __post_init__(self):
        super().__post_init__()
        positive("method.delta", self.delta)
        require(isinstance(self.prior_loc, (int, float)) and math.isfinite(self.prior_loc), "method.prior_loc",
                "a finite number", self.prior_loc)
        positive("method.prior_scale", self.prior_scale)


@register("invertible_gaussian")
class InvertibleGaussianMethod(Method):
    Config = InvertibleGaussianConfig
    metric_kind = "relaxed"
    latent_type = "simplex (IGR: softmax++ of a Gaussian)"

    @property
    def param_dim(self) -> int:
        return 2 * self.cfg.latent_dim * (self.cfg.categories - 1)

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim * self.cfg.categories

    def posterior(self, params: torch.Tensor, tau: float) -> InvertibleGaussian:
        n, k1 = self.cfg.latent_dim, self.cfg.categories - 1
        loc, raw = params.reshape(*params.shape[:-1], n, 2, k1).unbind(-2)
        return InvertibleGaussian(tau, loc, F.softplus(raw) + MIN_SCALE, self.cfg.delta, validate_args=False)

    def prior(self, like: torch.Tensor, tau: float) -> InvertibleGaussian:
        """IGR prior with ``like``'s shape ``[..., N, K-1]``."""
        return InvertibleGaussian(tau, torch.full_like(like, self.cfg.prior_loc),
                                  torch.full_like(like, self.cfg.prior_scale),
                                  self.cfg.delta, validate_args=False)

    def _sample(self, q: InvertibleGaussian, sample_shape=torch.Size()):
        y = q.rsample_gaussian(sample_shape)
        z = q.log_simplex(y).exp()
        return y, z

    def loss(self, params, decode, x, tau) -> Terms:
        q = self.posterior(params, tau)
        _, z = self._sample(q)
        recon = bernoulli_nll(decode(z.flatten(-2)), x)
        kl = gaussian_kl(q.loc, q.scale, self.cfg.prior_loc, self.cfg.prior_scale).sum(-1)
        return Terms((recon + kl).mean(), recon, kl)

    def bound(self, params, decode, x, tau) -> Terms:
        return self.loss(params, decode, x, tau)

    def iwae_log_weights(self, params, decode, x, tau, k):
        q = self.posterior(params, tau)
        y, z = self._sample(q, (k,))
        log_px = -bernoulli_nll(decode(z.flatten(-2)), x)
        p = self.prior(q.loc, tau)
        return log_px + (p.gaussian_log_prob(y) - q.gaussian_log_prob(y)).sum(-1)

    def prior_sample(self, n, device, dtype=torch.float32):
        like = torch.zeros(n, self.cfg.latent_dim, self.cfg.categories - 1, device=device, dtype=dtype)
        return self.prior(like, self.tau).sample().flatten(-2)

    def reconstruct_input(self, params, tau):
        return self._sample(self.posterior(params, tau))[1].flatten(-2)

    def discrete_law(self, params, tau):
        raise NotImplementedError(
            "the law of argmax z under IGR is a Gaussian orthant probability per variable, with no closed "
            "form; there is no independent categorical law to enumerate")
