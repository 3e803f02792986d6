"""``method=hard_concrete``: Hard Concrete gate latents (Louizos, Welling, Kingma 2018, "Learning
Sparse Neural Networks through L0 Regularization", ICLR).

Latent: D gates z_d in [0, 1]: a Binary Concrete sample with location log_alpha_d = ``params`` and
temperature beta, stretched to (l, r) = (-0.1, 1.1) and clamped -- a *mixed* law with atoms at 0
and 1 (:class:`~relaxrun.distributions.hard_concrete.HardConcrete`). beta is the run's ``tau``
(so ``relaxrun method=hard_concrete tau=0.5`` and tau schedules act on it); the paper's beta = 2/3
is ``tau=0.667``.

Prior: the same family with log_alpha = ``prior_log_alpha`` (0 by default) and the same beta, l, r.
KL term: the single-sample estimate log q(z | x) - log p(z) at the training sample with the exact
mixed log-densities (atom masses at 0/1 and the stretched density inside share one dominating
measure), so recon + KL is an unbiased estimate of the negative ELBO of this mixed-latent model.
``l0_weight`` > 0 adds l0_weight * sum_d P(z_d != 0) (closed form, Louizos et al. eq. 12) to the
*training* loss only.

Reported bound (``metric_kind = "mixed"``): that negative ELBO with a fresh posterior sample, a true
bound for the model trained (the decoder sees the same z in [0, 1] as in training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..checks import at_least, require
from ..distributions.hard_concrete import HardConcrete
from .base import MISSING, DiscreteLaw, MethodConfig, Terms, bernoulli_nll, register
from .families import UnitLatentMethod


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


@dataclass
class HardConcreteConfig(MethodConfig):
    latent_dim: int = MISSING
    l: float = MISSING
    r: float = MISSING
    prior_log_alpha: float = MISSING
    l0_weight: float = MISSING

    def __post_init__(self):
        super().__post_init__()
        at_least("method.latent_dim", self.latent_dim, 1)
        require(_finite(self.l) and self.l < 0, "method.l", "a finite number < 0", self.l)
        require(_finite(self.r) and self.r > 1, "method.r", "a finite number > 1", self.r)
        require(_finite(self.prior_log_alpha), "method.prior_log_alpha", "a finite number", self.prior_log_alpha)
        require(_finite(self.l0_weight) and self.l0_weight >= 0, "method.l0_weight", "a finite number >= 0",
                self.l0_weight)


@register("hard_concrete")
class HardConcreteMethod(UnitLatentMethod):
    Config = HardConcreteConfig
    metric_kind = "mixed"
    latent_type = "Hard Concrete gate in [0, 1] (atoms at 0 and 1)"

    def posterior(self, params: torch.Tensor, tau: float) -> HardConcrete:
        return HardConcrete(tau, logits=params, l=self.cfg.l, r=self.cfg.r, validate_args=False)

    def _prior_unbatched(self, like: torch.Tensor, tau: float) -> HardConcrete:
        """The prior with scalar parameters: its log_prob broadcasts over a batch of values, computing
        the atoms once instead of once per entry."""
        log_alpha = torch.tensor(self.cfg.prior_log_alpha, dtype=like.dtype, device=like.device)
        return HardConcrete(tau, logits=log_alpha, l=self.cfg.l, r=self.cfg.r, validate_args=False)

    def prior(self, like: torch.Tensor, tau: float) -> HardConcrete:
        return self._prior_unbatched(like, tau).expand(like.shape)

    def _terms(self, params, decode, x, tau, sample_shape=torch.Size()):
        q = self.posterior(params, tau)
        z = q.rsample(sample_shape)
        recon = bernoulli_nll(decode(z), x)
        kl = (q.log_prob(z) - self._prior_unbatched(z, tau).log_prob(z)).sum(-1)
        return q, recon, kl

    def loss(self, params, decode, x, tau) -> Terms:
        q, recon, kl = self._terms(params, decode, x, tau)
        loss = (recon + kl).mean()
        if self.cfg.l0_weight:
            loss = loss + self.cfg.l0_weight * q.prob_nonzero().sum(-1).mean()
        return Terms(loss, recon, kl)

    def bound(self, params, decode, x, tau) -> Terms:
        _, recon, kl = self._terms(params, decode, x, tau)
        return Terms((recon + kl).mean(), recon, kl)

    def relaxed(self, params, decode, x, tau) -> Terms:
        # the training objective without the L0 penalty is the bound itself
        return self.bound(params, decode, x, tau)

    def iwae_log_weights(self, params, decode, x, tau, k):
        _, recon, kl = self._terms(params, decode, x, tau, (k,))
        return -recon - kl

    def prior_sample(self, n, device, dtype=torch.float32):
        return self.prior(torch.zeros(n, self.latent_dim, device=device, dtype=dtype), self.tau).sample()

    def reconstruct_input(self, params, tau):
        return self.posterior(params, tau).sample()

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """The law of round(z) = 1[z > 1/2]: Bernoulli(sigmoid(log_alpha - beta logit(c))),
        c = (1/2 - l) / (r - l) (c = 1/2 and so Bernoulli(sigmoid(log_alpha)) for symmetric l, r).
        As beta -> 0 the Hard Concrete itself tends to this two-atom law. Prior: the same map of
        ``prior_log_alpha``. The method's own (mixed-latent) KL differs from this law's KL."""
        shift = tau * math.log((0.5 - self.cfg.l) / (self.cfg.r - 0.5))  # beta logit(c), exact 0 when symmetric
        prior = torch.tensor(self.cfg.prior_log_alpha - shift, dtype=params.dtype, device=params.device)
        return DiscreteLaw("bernoulli", params - shift, prior)
