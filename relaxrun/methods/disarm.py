r"""``method=disarm``: the DisARM estimator for Bernoulli latents (Dong, Mnih & Tucker 2020, "DisARM:
An antithetic gradient estimator for binary latent variables", NeurIPS 2020, arXiv:2006.10680).

Same latent, antithetic pair, two decoder evaluations per input, surrogate loss, extras and
reported bound as ``method=arm`` (:mod:`relaxrun.methods.arm`): u ~ U(0, 1) per example and unit,
b = 1[u < sigmoid(a)], b~ = 1[u > sigmoid(-a)], f(b) = -log p(x | b). Only the estimate differs.
ARM's estimate (f(b~) - f(b)) (u_d - 1/2) is averaged over u given the pair (b, b~): with
u_d < min(p, 1 - p) when (b_d, b~_d) = (1, 0), u_d > max(p, 1 - p) when (0, 1) and E[u_d - 1/2] as
-sigmoid(|a_d|) / 2 and +sigmoid(|a_d|) / 2 there, per unit d

    g_d = 1/2 (f(b) - f(b~)) (-1)^{b~_d} 1[b_d != b~_d] sigmoid(|a_d|)
        = 1/2 (f(b) - f(b~)) (b_d - b~_d) sigmoid(|a_d|).

It is unbiased (a conditional expectation of an unbiased estimate), is exactly zero on a unit where
the pair agrees (ARM's is not: u_d - 1/2 multiplies the change of f due to the other units), and,
being the Rao-Blackwellisation of ARM over the pair, its variance is never larger than ARM's
(Dong et al. 2020, sec. 3). Signs and the variance ordering are checked against exact enumeration
in tests/test_method_arm.py and ``relaxrun-gradcheck``.

Categorical latents are left out. Their extension (Dong, Mnih & Tucker 2021, "Coupled gradient
estimators for discrete latent variables", NeurIPS 2021, arXiv:2106.08056) is not this pair: it
derives the estimator from importance sampling over a coupling of two categorical draws and, from a
stick-breaking coupling, rewrites each K-way variable as a sequence of binary decisions with further
Rao-Blackwellisation (that estimate depends on the order of the categories). That is a method of its
own, to be checked against enumeration on its own. This method has no ``latent`` option, so
``method.latent=categorical`` is rejected with a ConfigError naming the option.
``tau`` is not used (no temperature).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .arm import AntitheticBernoulliMethod
from .base import register
from .families import BernoulliLatentConfig


@dataclass
class DisARMConfig(BernoulliLatentConfig):
    """Options of ``method=disarm`` (the Bernoulli family's only); defaults in ``configs/method/disarm.yaml``."""


@register("disarm")
class DisARMMethod(AntitheticBernoulliMethod):
    """DisARM: g_d = 1/2 (f(b) - f(b~)) (b_d - b~_d) sigmoid(|a_d|); see the module docstring."""

    Config = DisARMConfig

    def estimate(self, f, f_tilde, u, b, b_tilde, logits):
        return 0.5 * (f - f_tilde).unsqueeze(-1) * (b - b_tilde) * torch.sigmoid(logits.abs())
