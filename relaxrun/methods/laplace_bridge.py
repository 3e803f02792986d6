"""``method=laplace_bridge``: a simplex-latent VAE with a logistic-normal posterior and the Laplace-bridge
approximation of a Dirichlet prior (Hobbhahn, Kristiadi, Hennig 2020, "Fast Predictive Uncertainty
for Classification with Bayesian Deep Networks"; the construction of ProdLDA, Srivastava and Sutton
2017, "Autoencoding Variational Inference for Topic Models").

Latent: N independent points on the K-simplex, z = softmax(y), y ~ N(loc, diag(scale^2)) in R^K with
loc and scale = softplus(s) from the encoder (:class:`~relaxrun.distributions.laplace_bridge.
LogisticNormalSoftmax`). The decoder sees the N*K simplex coordinates.

Prior: Dir(prior_alpha * 1) mapped through the Laplace bridge to a logistic normal with the bridge's
full covariance (:class:`~relaxrun.distributions.laplace_bridge.LaplaceBridge`): mu = 0 and
Sigma = P diag(1/alpha) P, P the centring matrix. On the simplex this is the law of softmax(y) with
y ~ N(0, I/alpha), the representation held in the buffers (prior_scale = alpha^-1/2). (ProdLDA instead
keeps only the variances Sigma_kk = (1 - 2/K)/alpha + 1/(K alpha), as independent coordinates: another
law, about half the bridge's log-ratio variance, whose KL from the Dirichlet does not vanish as alpha
grows.) KL term (``kl``):

* ``simplex`` (default): the exact KL between the two logistic-normal laws on the simplex (the KL
  of their (K-1)-dimensional log-ratio Gaussians, closed form);
* ``gaussian``: ProdLDA's form, the KL between the K-dimensional diagonal Gaussians of y (the
  prior's in its diagonal representation), which is never smaller (the softmax forgets the
  direction 1), so training on it optimises a looser bound.

Reported bound (``metric_kind = "approximate-prior"``): -log p(x | z) at z ~ q plus the exact simplex
KL: a true negative ELBO of the model whose prior is the *logistic-normal approximation* of the
Dirichlet, not of a model with the Dirichlet prior itself. IWAE weights use the same prior, with
both densities evaluated from y. ``tau`` is not used (no temperature).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from ..checks import at_least, one_of, positive
from ..distributions.laplace_bridge import LaplaceBridge, LogisticNormalSoftmax
from .base import MISSING, Method, MethodConfig, Terms, bernoulli_nll, register
from .families import CategoricalLatentConfig

MIN_SCALE = 1e-4  # keeps the log-ratio covariance non-singular when softplus underflows


@dataclass
class LaplaceBridgeConfig(CategoricalLatentConfig):
    prior_alpha: float = MISSING
    kl: str = MISSING

    def __post_init__(self):
        super().__post_init__()
        positive("method.prior_alpha", self.prior_alpha)
        one_of("method.kl", self.kl, ("simplex", "gaussian"))


@register("laplace_bridge")
class LaplaceBridgeMethod(Method):
    Config = LaplaceBridgeConfig
    metric_kind = "approximate-prior"
    latent_type = "simplex (softmax of a Gaussian)"

    def __init__(self, cfg: LaplaceBridgeConfig, temperature=None):
        super().__init__(cfg, temperature)
        bridge = LaplaceBridge(torch.full((cfg.categories,), float(cfg.prior_alpha), dtype=torch.float64))
        # buffers: follow the model to its device and dtype; persistent=False keeps checkpoints
        # independent of them (they are a function of the config). loc, scale: the bridge's law on the
        # simplex as softmax(N(loc, diag(scale^2))), the same law as its full-covariance Gaussian
        self.register_buffer("prior_loc", bridge.loc.float(), persistent=False)
        self.register_buffer("prior_scale", bridge.scale.float(), persistent=False)

    @property
    def param_dim(self) -> int:
        return 2 * self.cfg.latent_dim * self.cfg.categories

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim * self.cfg.categories

    def posterior(self, params: torch.Tensor) -> LogisticNormalSoftmax:
        loc, raw = params.reshape(*params.shape[:-1], self.cfg.latent_dim, 2, self.cfg.categories).unbind(-2)
        return LogisticNormalSoftmax(loc, F.softplus(raw) + MIN_SCALE, validate_args=False)

    def prior(self, dtype=torch.float32) -> LogisticNormalSoftmax:
        return LogisticNormalSoftmax(self.prior_loc.to(dtype), self.prior_scale.to(dtype), validate_args=False)

    def _kl(self, q: LogisticNormalSoftmax, exact: bool) -> torch.Tensor:
        p = self.prior(q.loc.dtype)
        if exact:
            return kl_divergence(q, p.expand(q.batch_shape)).sum(-1)
        return kl_divergence(Normal(q.loc, q.scale), Normal(p.loc, p.scale)).sum((-1, -2))

    def _recon(self, q: LogisticNormalSoftmax, decode, x, sample_shape=torch.Size()):
        y = q.rsample_gaussian(sample_shape)
        z = torch.softmax(y, dim=-1)
        return y, bernoulli_nll(decode(z.flatten(-2)), x)

    def loss(self, params, decode, x, tau) -> Terms:
        q = self.posterior(params)
        _, recon = self._recon(q, decode, x)
        kl = self._kl(q, exact=self.cfg.kl == "simplex")
        return Terms((recon + kl).mean(), recon, kl)

    def bound(self, params, decode, x, tau) -> Terms:
        q = self.posterior(params)
        _, recon = self._recon(q, decode, x)
        kl = self._kl(q, exact=True)  # the tightest valid KL, whatever the training form
        return Terms((recon + kl).mean(), recon, kl)

    def iwae_log_weights(self, params, decode, x, tau, k):
        q = self.posterior(params)
        y, recon = self._recon(q, decode, x, (k,))
        log_p = self.prior(y.dtype).log_prob_gaussian(y)
        return -recon + (log_p - q.log_prob_gaussian(y)).sum(-1)

    def prior_sample(self, n, device, dtype=torch.float32):
        p = self.prior(dtype)
        return p.sample((n, self.cfg.latent_dim)).to(device).flatten(-2)

    def reconstruct_input(self, params, tau):
        return self.posterior(params).sample().flatten(-2)

