"""``method=gumbel_topk``: k-subset latents: Gumbel-top-k sampling without replacement (Kool, van
Hoof, Welling 2019, "Stochastic Beams and Where to Find Them", ICML) relaxed by the successive
softmax of Xie and Ermon (2019, "Reparameterizable Subset Sampling via Continuous Relaxations").

Latent: N groups, each an ordered k-subset of K categories without replacement, drawn from the
Plackett-Luce law q(s | x) with logits l_n = ``params`` (:class:`~relaxrun.distributions.gumbel_topk.
GumbelTopK`). The decoder sees the N*K k-hot vectors (relaxed in training, hard at evaluation).

Prior: uniform over ordered k-tuples, p(s) = (K-k)!/K! per group (so uniform over k-subsets).

KL term: log q(s) - log p(s) at hard ordered samples s (exact Plackett-Luce log-probability), a
single-sample estimate of KL(q || p) over ordered tuples that makes recon + KL a valid discrete
ELBO. Training averages it over ``kl_samples`` hard draws per input (no decoder calls) and takes its
gradient by the score function with the leave-one-out baseline of Kool et al. (2019b, "Buy 4
REINFORCE samples, get a baseline for free!"): an unbiased gradient of E_q[log q - log p]. (The
plain derivative of log q(s) at a fixed s has expectation zero and would not regularise q at all.)
The reconstruction term is trained through the relaxed k-hot vector (pathwise, biased for the
discrete model, as Gumbel-Softmax is).

Reported bound (``metric_kind = "discrete"``): -log p(x | khot(s)) + log q(s) - log p(s) with one hard
s ~ q: a true negative ELBO of the discrete k-subset model. IWAE uses the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..checks import ConfigError, at_least
from ..distributions.gumbel_topk import GumbelTopK, PlackettLuce, plackett_luce_log_prob, topk_khot
from .base import MISSING, DiscreteLaw, Method, MethodConfig, Terms, bernoulli_nll, register
from .families import CategoricalLatentConfig


@dataclass
class GumbelTopKConfig(CategoricalLatentConfig):
    subset_size: int = MISSING
    kl_samples: int = MISSING

    def __post_init__(self):
        super().__post_init__()
        at_least("method.subset_size", self.subset_size, 1)
        if self.subset_size > self.categories:
            raise ConfigError(f"method.subset_size must be an integer in [1, method.categories={self.categories}]; "
                              f"got {self.subset_size!r}")
        at_least("method.kl_samples", self.kl_samples, 1)


@register("gumbel_topk")
class GumbelTopKMethod(Method):
    Config = GumbelTopKConfig
    metric_kind = "discrete"
    latent_type = "k-subset (k-hot) without replacement"

    def __init__(self, cfg: GumbelTopKConfig, temperature=None):
        super().__init__(cfg, temperature)
        K, k = cfg.categories, cfg.subset_size
        # log of the number of ordered k-tuples, K!/(K-k)!: the uniform prior is its negative
        self.log_num_tuples = math.lgamma(K + 1) - math.lgamma(K - k + 1)

    @property
    def param_dim(self) -> int:
        return self.cfg.latent_dim * self.cfg.categories

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim * self.cfg.categories

    def split(self, params: torch.Tensor) -> torch.Tensor:
        return params.reshape(*params.shape[:-1], self.cfg.latent_dim, self.cfg.categories)

    def log_prior(self) -> float:
        """log p(s) of one group's ordered tuple under the uniform prior."""
        return -self.log_num_tuples

    def _hard_terms(self, logits, decode, x, sample_shape=torch.Size()):
        s = PlackettLuce(self.cfg.subset_size, logits=logits, validate_args=False).sample(sample_shape)
        recon = bernoulli_nll(decode(topk_khot(s, self.cfg.categories, logits.dtype).flatten(-2)), x)
        kl = (plackett_luce_log_prob(logits, s) - self.log_prior()).sum(-1)
        return recon, kl

    def loss(self, params, decode, x, tau) -> Terms:
        logits = self.split(params)
        q = GumbelTopK(tau, self.cfg.subset_size, logits=logits, validate_args=False)
        z = q.rsample()
        recon = bernoulli_nll(decode(z.flatten(-2)), x)
        m = self.cfg.kl_samples
        s = q.hard.sample((m,))  # [M, B, N, k]; no decoder call needed
        log_q = plackett_luce_log_prob(logits, s).sum(-1)  # [M, B]
        f = log_q.detach() - self.cfg.latent_dim * self.log_prior()
        kl = f.mean(0)
        baseline = (f.sum(0, keepdim=True) - f) / (m - 1) if m > 1 else torch.zeros_like(f)
        score = ((f - baseline) * log_q).mean(0)  # gradient: unbiased for grad E_q[log q - log p]
        loss = (recon + kl).mean() + (score - score.detach()).mean()  # value: recon + KL estimate
        return Terms(loss, recon, kl)

    def bound(self, params, decode, x, tau) -> Terms:
        recon, kl = self._hard_terms(self.split(params), decode, x)
        return Terms((recon + kl).mean(), recon, kl)

    def iwae_log_weights(self, params, decode, x, tau, k):
        recon, kl = self._hard_terms(self.split(params), decode, x, (k,))
        return -recon - kl

    def prior_sample(self, n, device, dtype=torch.float32):
        keys = torch.rand(n, self.cfg.latent_dim, self.cfg.categories, device=device)
        idx = keys.topk(self.cfg.subset_size, dim=-1).indices  # a uniform k-subset per group
        return topk_khot(idx, self.cfg.categories, dtype).flatten(-2)

    def reconstruct_input(self, params, tau):
        logits = self.split(params)
        s = PlackettLuce(self.cfg.subset_size, logits=logits, validate_args=False).sample()
        return topk_khot(s, self.cfg.categories, logits.dtype).flatten(-2)

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """k = 1: Cat(softmax(l_n)) per group with a uniform prior; larger k is a Plackett-Luce law
        over subsets, not one of the independent laws gradcheck enumerates."""
        if self.cfg.subset_size != 1:
            raise NotImplementedError(
                f"with subset_size={self.cfg.subset_size} the latent is a Plackett-Luce k-subset per group, "
                "not an independent Bernoulli or categorical law")
        return DiscreteLaw("categorical", self.split(params), torch.zeros((), dtype=params.dtype,
                                                                          device=params.device))
