r"""``method=generalized_gumbel``: a VAE with count latents, trained through the generalized
Gumbel-Softmax (GenGS; Joo, Kim, Shin & Moon 2020, arXiv:2003.01847).

Latent: ``latent_dim`` independent counts c_n (default 20); the decoder sees their values
(``latent_dim`` real inputs, not one-hots). Each unit's law (``family``) is a truncated

* ``poisson``: Poisson(rate), truncated to 0..K-1 and renormalised;
* ``geometric``: failures before the first success, P(k) = p (1 - p)^k with mean (1 - p) / p = rate,
  truncated the same way;
* ``binomial``: Binomial(``trials``, p) with mean trials * p = rate, support 0..trials (nothing to drop).

Rates. "rate" is the untruncated law's mean count in every family. The encoder output a_n maps to
rate_n = cap * sigmoid(a_n) with cap = ``max_rate`` (poisson, geometric) or ``trials`` (binomial), so
the rates are bounded: a Poisson tail P(X >= K) grows with the rate and a geometric one with the
mean, so one truncation level K chosen at rate ``max_rate`` keeps the dropped mass of *every* unit
below ``truncation_tol`` (:func:`relaxrun.distributions.generalized_gumbel.poisson_support_size`,
``geometric_support_size``). The defaults (prior_rate 1, max_rate 10, tol 1e-6) give K = 29 Poisson
support points (145 for the geometric); ``support_size`` sets K directly instead (the dropped mass
is then not bounded by the tolerance, the law still renormalised over 0..K-1). The prior is the same
truncated family at rate ``prior_rate`` on the same support (the same K), so both are laws over the
same K values and their KL is an exact finite sum.

Training (``loss``): one GenGS sample per unit, z_n = sum_k w_nk k with
w_n = softmax((log pi_n + g_n) / tau) (the relaxed one-hot over the K counts mapped by the support
values, Joo et al. 2020, Sec. 3); ``hard: true`` feeds the exact count argmax_k(log pi_nk + g_nk)
forward with the gradient of z_n (straight-through GenGS). KL: exact,
sum_n sum_k pi_nk (log pi_nk - log pi0_k).

Reported bound (``metric_kind = "discrete"``): hard counts c_n ~ pi_n, -log p(x | c) + the exact KL,
a true negative ELBO of the truncated-count model. ``iwae_log_weights``: hard counts with the exact
log q and log prior of that model. Extras: ``mean_count`` (mean over units and batch of E_q[c_n]).

Gradcheck (``relaxrun-gradcheck``): judged on the count problems (decoders of the N count values,
support size K set by the problem) against the exact gradient of this truncated-count model;
:meth:`GeneralizedGumbelMethod.discrete_law` is its law (posterior, prior, support values). The
relaxation is biased for it (the decoder sees relaxed counts between the support points), the bias
shrinking with tau.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..checks import ConfigError, at_least, one_of, positive, require
from ..distributions._common import logit
from ..distributions.generalized_gumbel import (GeneralizedGumbelSoftmax, discrete_kl, geometric_support_size,
                                                poisson_support_size)
from .base import MISSING, DiscreteLaw, MethodConfig, Terms, bernoulli_nll, register
from .families import UnitLatentMethod

FAMILIES = ("poisson", "geometric", "binomial")


@dataclass
class GeneralizedGumbelConfig(MethodConfig):
    """Options of ``method=generalized_gumbel``; defaults and their meaning in
    ``configs/method/generalized_gumbel.yaml``."""

    latent_dim: int = MISSING
    family: str = MISSING
    prior_rate: float = MISSING
    max_rate: float = MISSING
    trials: int = MISSING
    truncation_tol: float = MISSING
    support_size: Optional[int] = MISSING
    hard: bool = MISSING

    def __post_init__(self):
        super().__post_init__()
        at_least("method.latent_dim", self.latent_dim, 1)
        one_of("method.family", self.family, FAMILIES)
        positive("method.prior_rate", self.prior_rate)
        positive("method.max_rate", self.max_rate)
        at_least("method.trials", self.trials, 1)
        require(isinstance(self.truncation_tol, (int, float)) and 0 < self.truncation_tol < 1,
                "method.truncation_tol", "a number in (0, 1)", self.truncation_tol)
        if self.support_size is not None:
            at_least("method.support_size", self.support_size, 2)
        if self.family == "binomial":
            if not self.prior_rate < self.trials:
                raise ConfigError(f"method.prior_rate must be < method.trials = {self.trials} for family=binomial "
                                  f"(the prior mean trials * p with p < 1); got {self.prior_rate!r}")
            if self.support_size is not None and self.support_size > self.trials + 1:
                raise ConfigError(f"method.support_size must be at most method.trials + 1 = {self.trials + 1} for "
                                  f"family=binomial (its support is 0..trials); got {self.support_size!r}")
        elif not self.prior_rate < self.max_rate:
            raise ConfigError(f"method.prior_rate must be < method.max_rate = {self.max_rate} (posterior rates lie "
                              f"in (0, max_rate) and the prior's among them); got {self.prior_rate!r}")


def support_size(cfg: GeneralizedGumbelConfig) -> int:
    """K, the number of counts 0..K-1 each unit keeps: ``cfg.support_size`` if given, else the truncation
    level at the largest rate the encoder can give (binomial: trials + 1)."""
    if cfg.support_size is not None:
        return cfg.support_size
    if cfg.family == "poisson":
        return poisson_support_size(cfg.max_rate, cfg.truncation_tol)
    if cfg.family == "geometric":
        return geometric_support_size(1.0 / (1.0 + cfg.max_rate), cfg.truncation_tol)  # mean (1 - p) / p
    return cfg.trials + 1


@register("generalized_gumbel")
class GeneralizedGumbelMethod(UnitLatentMethod):
    """Count latents (truncated Poisson / geometric / binomial) relaxed by GenGS; see the module docstring."""

    Config = GeneralizedGumbelConfig
    metric_kind = "discrete"

    def __init__(self, cfg: GeneralizedGumbelConfig, temperature=None):
        super().__init__(cfg, temperature)
        #: K, support points per unit (the counts 0..K-1)
        self.support_size = support_size(cfg)
        cap = cfg.trials if cfg.family == "binomial" else cfg.max_rate
        self._log_cap = math.log(cap)
        #: the encoder output at which a unit's law is the prior: rate = cap * sigmoid(a0) = prior_rate
        self.prior_param = float(logit(torch.tensor(cfg.prior_rate / cap, dtype=torch.float64)))
        self._prior_cache: dict = {}

    @property
    def latent_type(self) -> str:
        return f"count ({self.cfg.family}, K = {self.support_size})"

    # the laws -------------------------------------------------------------------------------
    def law(self, params: torch.Tensor, tau: float) -> GeneralizedGumbelSoftmax:
        """q(c_n | x) of every unit from the encoder output ``params`` ``[..., latent_dim]``: the truncated
        family with rate = cap * sigmoid(params) on the counts 0..K-1, relaxed at temperature ``tau``."""
        k, hard = self.support_size, bool(self.cfg.hard)
        if self.cfg.family == "poisson":
            return GeneralizedGumbelSoftmax.poisson(tau, log_rate=self._log_cap + F.logsigmoid(params),
                                                    support_size=k, hard=hard, validate_args=False)
        if self.cfg.family == "geometric":
            # mean m = (1 - p) / p: the success log-odds log(p / (1 - p)) = -log m
            return GeneralizedGumbelSoftmax.geometric(tau, logits=-(self._log_cap + F.logsigmoid(params)),
                                                      support_size=k, hard=hard, validate_args=False)
        return GeneralizedGumbelSoftmax.binomial(tau, self.cfg.trials, logits=params, support_size=k, hard=hard,
                                                 validate_args=False)

    def prior_logits(self, dtype=torch.float32, device="cpu") -> torch.Tensor:
        """``[K]`` normalised log-probabilities of the prior (the family at ``prior_rate``, same support),
        computed in float64 and cast."""
        key = (dtype, str(device))
        if key not in self._prior_cache:
            a0 = torch.tensor(self.prior_param, dtype=torch.float64)
            self._prior_cache[key] = self.law(a0, 1.0).logits.to(dtype=dtype, device=device)
        return self._prior_cache[key]

    def support_values(self, dtype=torch.float32, device="cpu") -> torch.Tensor:
        return torch.arange(self.support_size, dtype=dtype, device=device)

    def exact_kl(self, q: GeneralizedGumbelSoftmax) -> torch.Tensor:
        """``[B]`` sum over units of KL(q_n || prior), exact (a sum over the K support points)."""
        return discrete_kl(q.logits, self.prior_logits(q.logits.dtype, q.logits.device)).sum(-1)

    # training and evaluation ----------------------------------------------------------------
    def loss(self, params, decode, x, tau) -> Terms:
        q = self.law(params, tau)
        z = q.rsample()  # [B, N]: relaxed counts (hard: exact counts, straight-through)
        recon = bernoulli_nll(decode(z), x)
        kl = self.exact_kl(q)
        return Terms((recon + kl).mean(), recon, kl, extras={"mean_count": q.mean.detach().mean()})

    def bound(self, params, decode, x, tau) -> Terms:
        q = self.law(params, tau)
        c = q.sample()
        recon = bernoulli_nll(decode(c), x)
        kl = self.exact_kl(q)
        return Terms((recon + kl).mean(), recon, kl)

    def prior_sample(self, n, device, dtype=torch.float32):
        logits = self.prior_logits(dtype, device).expand(self.cfg.latent_dim, self.support_size)
        prior = GeneralizedGumbelSoftmax(self.tau, self.support_values(dtype, device), logits=logits,
                                         validate_args=False)
        return prior.sample((n,))

    def reconstruct_input(self, params, tau):
        return self.law(params, tau).sample()

    def iwae_log_weights(self, params, decode, x, tau, k):
        q = self.law(params, tau)
        index = q.sample_index((k,))  # [k, B, N]
        c = q.support_values[index]
        log_px = -bernoulli_nll(decode(c), x)
        log_q = q.log_prob_index(index).sum(-1)
        log_p = self.prior_logits(params.dtype, params.device)[index].sum(-1)
        return log_px + log_p - log_q

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """The truncated-count model the GenGS estimator stands in for: kind ``"count"``, the posterior
        log-probabilities ``[B, N, K]`` of every unit over its K counts (differentiable in ``params``,
        independent of tau), the prior's ``[K]`` and the support values 0..K-1 the decoder is fed."""
        return DiscreteLaw("count", self.law(params, tau).logits, self.prior_logits(params.dtype, params.device),
                           self.support_values(params.dtype, params.device))
