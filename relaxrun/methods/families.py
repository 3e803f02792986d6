"""The latent families methods share: D independent Bernoulli units, N independent K-way categoricals.

A method of a family inherits its sizes, its discrete bound (hard samples, exact KL), prior samples,
reconstructions and the IWAE weights of the discrete model, and implements its own ``loss``:

* :class:`BernoulliLatentMethod` (``latent_dim`` units, prior Bernoulli(``prior_probs``)):
  relaxed_bernoulli, straight_through, stochastic_times_smooth, reinforce (``latent=bernoulli``).
* :class:`CategoricalLatentMethod` (``latent_dim`` variables of ``categories`` classes, uniform
  prior; the decoder sees the flattened one-hot): gumbel_softmax, reinforce (``latent=categorical``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import at_least, require
from ..distributions.gumbel import gumbel_max_one_hot, sample_gumbel
from ..distributions._common import logit
from .base import (MISSING, DiscreteLaw, Method, MethodConfig, Terms, bernoulli_kl, bernoulli_nll,
                   categorical_kl_uniform, decoded_log_likelihood)


@dataclass
class BernoulliLatentConfig(MethodConfig):
    """Options shared by methods whose latent is ``latent_dim`` Bernoulli units with a Bernoulli prior."""

    latent_dim: int = MISSING
    prior_probs: float = MISSING

    def __post_init__(self):
        super().__post_init__()
        at_least("method.latent_dim", self.latent_dim, 1)
        require(isinstance(self.prior_probs, (int, float)) and 0 < self.prior_probs < 1, "method.prior_probs",
                "a number in (0, 1)", self.prior_probs)


@dataclass
class CategoricalLatentConfig(MethodConfig):
    """Options shared by methods whose latent is ``latent_dim`` variables of ``categories`` classes."""

    latent_dim: int = MISSING
    categories: int = MISSING

    def __post_init__(self):
        super().__post_init__()
        at_least("method.latent_dim", self.latent_dim, 1)
        at_least("method.categories", self.categories, 2)


class UnitLatentMethod(Method):
    """Methods with one encoder output per latent unit: ``param_dim = latent_dim = cfg.latent_dim``."""

    @property
    def param_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim


class BernoulliLatentMethod(UnitLatentMethod):
    """Shared parts of methods whose latent is D independent Bernoulli units."""

    metric_kind = "discrete"
    latent_type = "Bernoulli"

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
        log_px = decoded_log_likelihood(decode, b, x)
        lq = torch.nn.functional.logsigmoid(params)
        lq_neg = torch.nn.functional.logsigmoid(-params)
        log_q = (b * lq + (1 - b) * lq_neg).sum(-1)
        lp = self.prior_logits
        log_p = (b * _logsig(lp) + (1 - b) * _logsig(-lp)).sum(-1)
        return log_px + log_p - log_q


def _logsig(v: float) -> float:
    return float(torch.nn.functional.logsigmoid(torch.tensor(v, dtype=torch.float64)))


class CategoricalLatentMethod(Method):
    """Shared parts of methods whose latent is N independent K-way categoricals (one-hot to the decoder)."""

    metric_kind = "discrete"
    latent_type = "categorical"

    @property
    def param_dim(self) -> int:
        return self.cfg.latent_dim * self.cfg.categories

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim * self.cfg.categories

    def split(self, params: torch.Tensor) -> torch.Tensor:
        return params.reshape(*params.shape[:-1], self.cfg.latent_dim, self.cfg.categories)

    def hard_sample(self, logits: torch.Tensor, sample_shape=()) -> torch.Tensor:
        """One-hot categorical draws ``sample_shape + logits.shape`` via Gumbel-max."""
        return gumbel_max_one_hot(logits, sample_shape)

    def terms(self, z: torch.Tensor, logits: torch.Tensor, decode, x) -> Terms:
        """Terms of decoder input ``z`` ``[B, N, K]`` (hard, relaxed or straight-through) with the
        posterior logits ``[B, N, K]``: -log p(x | z) and the exact KL to the uniform prior."""
        recon = bernoulli_nll(decode(z.flatten(-2)), x)
        kl = categorical_kl_uniform(logits).sum(-1)
        return Terms((recon + kl).mean(), recon, kl)

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """Cat(softmax(l_n)) per variable (the law of the hard one-hot the family samples); prior uniform."""
        return DiscreteLaw("categorical", self.split(params),
                           torch.zeros((), dtype=params.dtype, device=params.device))

    def bound(self, params, decode, x, tau) -> Terms:
        logits = self.split(params)
        return self.terms(self.hard_sample(logits), logits, decode, x)

    def prior_sample(self, n, device, dtype=torch.float32):
        idx = torch.randint(self.cfg.categories, (n, self.cfg.latent_dim), device=device)
        return F.one_hot(idx, self.cfg.categories).to(dtype).flatten(-2)

    def reconstruct_input(self, params, tau):
        return self.hard_sample(self.split(params)).flatten(-2)

    def iwae_log_weights(self, params, decode, x, tau, k):
        logits = self.split(params)
        if type(self).hard_sample is CategoricalLatentMethod.hard_sample and logits.device.type == "cpu" \
                and not torch.is_grad_enabled():
            c = _gumbel_max_one_hot_cpu(logits, (k,))
        else:
            c = self.hard_sample(logits, (k,))
        log_px = decoded_log_likelihood(decode, c.flatten(-2), x)
        log_q = (c * torch.log_softmax(logits, -1)).sum((-1, -2))
        log_p = -self.cfg.latent_dim * math.log(self.cfg.categories)
        return log_px + log_p - log_q


def _gumbel_max_one_hot_cpu(logits: torch.Tensor, sample_shape) -> torch.Tensor:
    """:func:`gumbel_max_one_hot` with the same noise and the same draws, faster on CPU: the one-hot
    is ``keys == max(keys)``, written over the keys (torch's CPU argmax over a short last dimension
    is about 8x the cost of its max). Where two keys of a row tie in float32 (rare) the draw is made
    again from the same generator state by the reference, which takes the first maximum."""
    state = torch.get_rng_state()
    keys = sample_gumbel(torch.Size(sample_shape) + logits.shape, logits.dtype, logits.device).add_(logits)
    hot = keys.eq_(keys.amax(-1, keepdim=True))  # 1.0 at the maximum of each row, 0.0 elsewhere
    if int(hot.sum()) != hot.numel() // hot.shape[-1]:  # a tie: more than one maximum in some row
        torch.set_rng_state(state)
        return gumbel_max_one_hot(logits, sample_shape)
    return hot
