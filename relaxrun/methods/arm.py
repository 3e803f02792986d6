r"""``method=arm``: the Augment-REINFORCE-Merge estimator for Bernoulli latents (Yin & Zhou 2019,
"ARM: Augment-REINFORCE-Merge gradient for stochastic binary networks", ICLR 2019, arXiv:1807.11143).

Latent: ``latent_dim`` Bernoulli units, q(b | x) = prod_d Bernoulli(sigmoid(a_d)) with a = ``params``,
prior Bernoulli(``prior_probs``). Sizes, the reported bound, prior samples, reconstructions and IWAE
weights come from :class:`~relaxrun.methods.families.BernoulliLatentMethod`; only the estimator of
grad_a E_q[f(b)], f(b) = -log p(x | b), is this method's own.

The antithetic pair. Per input and unit one uniform u ~ U(0, 1) (fresh for every example and unit,
never shared across the batch) gives

    b = 1[u < sigmoid(a)],        b~ = 1[u > sigmoid(-a)] = 1[1 - u < sigmoid(a)],

each marginally Bernoulli(sigmoid(a)); jointly P(b = b~ = 1) = max(0, 2p - 1) and
P(b = b~ = 0) = max(0, 1 - 2p) with p = sigmoid(a) (u and 1 - u are antithetic). Both are decoded
in one call (stacked ``[2, B, D]``), so a step costs two decoder evaluations per input.

Estimator (Yin & Zhou 2019, eq. 5 with b~ the "pseudo action" of 1 - u), per unit d:

    g_d = (f(b~) - f(b)) (u_d - 1/2),

unbiased for d/da_d E_q[f(b)]. In one dimension this is checked by hand: for p > 1/2 the pair
disagrees as (b, b~) = (1, 0) on u < 1 - p and (0, 1) on u > p, and the two integrals of u - 1/2
give p (1 - p) (f(1) - f(0)), the exact derivative; the sign convention is also checked against
exact enumeration in tests/test_method_arm.py and ``relaxrun-gradcheck``.

The training loss is the surrogate

    mean_batch[ (f(b) + f(b~)) / 2 + sum_d stopgrad(g_d) a_d - stopgrad(same) + KL(q || prior) ],

whose value is the Monte Carlo negative ELBO (the mean of the pair's f plus the analytic KL), whose
gradient w.r.t. a is the estimator plus the exact gradient of the analytic KL, and whose decoder
gradient is that of (f(b) + f(b~)) / 2 (unbiased). ``Terms.kl`` is that analytic KL, so
``loss - mean(kl)`` isolates the E_q[f] estimator (what ``relaxrun-gradcheck`` measures on the toy
problems).

``method=disarm`` (:mod:`relaxrun.methods.disarm`) uses the same pair and loss, with the
estimator replaced by its conditional expectation given the pair. ``tau`` is not used (no
temperature). Extras logged as ``method/<key>``: ``f_mean`` (mean f over the pair and batch),
``f_gap`` (mean |f(b) - f(b~)|), ``pair_disagreement`` (fraction of units with b != b~),
``estimate_std`` (std of g over batch and units). Reported bound (``metric_kind = "discrete"``): one
hard draw, -log p(x | b) + analytic KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import DiscreteLaw, Terms, bernoulli_nll, register
from .families import BernoulliLatentConfig, BernoulliLatentMethod


def antithetic_pair(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, b, b~), each shaped like ``logits`` and without gradient: u ~ U(0, 1) independently per
    element, b = 1[u < sigmoid(a)], b~ = 1[u > sigmoid(-a)] (the draw of 1 - u).

    sigmoid(-a) rather than 1 - sigmoid(a): both thresholds keep their precision for large |a|.
    """
    a = logits.detach()
    u = torch.rand(a.shape, dtype=a.dtype, device=a.device)
    b = (u < torch.sigmoid(a)).to(a.dtype)
    b_tilde = (u > torch.sigmoid(-a)).to(a.dtype)
    return u, b, b_tilde


@dataclass
class ARMConfig(BernoulliLatentConfig):
    """Options of ``method=arm`` (the Bernoulli family's only); defaults in ``configs/method/arm.yaml``."""


class AntitheticBernoulliMethod(BernoulliLatentMethod):
    """Shared parts of ``arm`` and ``disarm``: the antithetic pair, its two decoder evaluations, the
    surrogate loss and the extras. A subclass implements :meth:`estimate`."""

    metric_kind = "discrete"
    latent_type = "Bernoulli"

    def estimate(self, f: torch.Tensor, f_tilde: torch.Tensor, u: torch.Tensor, b: torch.Tensor,
                 b_tilde: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The single-pair estimate ``[B, D]`` of d/da E_q[f] from f(b), f(b~) ``[B]`` (without
        gradient), the uniforms and the pair ``[B, D]`` and the logits ``[B, D]`` (detached)."""
        raise NotImplementedError

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """Bernoulli(sigmoid(a)), the law of each of the pair; prior Bernoulli(prior_probs)."""
        return DiscreteLaw("bernoulli", params, torch.tensor(self.prior_logits, dtype=params.dtype,
                                                             device=params.device))

    def loss(self, params, decode, x, tau) -> Terms:
        u, b, b_tilde = antithetic_pair(params)
        f_pair = bernoulli_nll(decode(torch.stack((b, b_tilde))), x)  # [2, B]; carries the decoder's gradient
        f, f_tilde = f_pair.detach().unbind(0)
        g = self.estimate(f, f_tilde, u, b, b_tilde, params.detach())
        surrogate = (g * params).sum(-1)
        recon = f_pair.mean(0)
        kl = self.exact_kl(params)
        loss = (recon + (surrogate - surrogate.detach()) + kl).mean()
        extras = {"f_mean": f_pair.detach().mean(), "f_gap": (f - f_tilde).abs().mean(),
                  "pair_disagreement": (b != b_tilde).to(params.dtype).mean(),
                  "estimate_std": g.std(correction=0)}
        return Terms(loss, recon, kl, extras)


@register("arm")
class ARMMethod(AntitheticBernoulliMethod):
    """ARM: g_d = (f(b~) - f(b)) (u_d - 1/2); see the module docstring."""

    Config = ARMConfig

    def estimate(self, f, f_tilde, u, b, b_tilde, logits):
        return (f_tilde - f).unsqueeze(-1) * (u - 0.5)
