r"""``method=gumbel_rao``: the Gumbel-Rao estimator, a Rao-Blackwellised straight-through Gumbel-Softmax.

Paulus, Maddison & Krause 2021, "Rao-Blackwellizing the straight-through Gumbel-Softmax gradient
estimator" (ICLR). N categorical variables of K classes (default 20 x 10), posterior
q(c | x) = prod_n Cat(softmax(l_n)), uniform prior, analytic KL.

ST Gumbel-Softmax (``gumbel_softmax`` with ``hard: true``) feeds D = one_hot(argmax(l + g)) forward and
back-propagates through z = softmax((l + g) / tau) at the same g. Its gradient is a function of
(D, g); Gumbel-Rao replaces it by its conditional expectation given D, estimated with ``samples``
= k perturbations g_1..g_k drawn from the law of g given argmax(l + g) = D
(:func:`relaxrun.distributions.conditional_gumbel.conditional_gumbel`):

    z_bar = (1/k) sum_s softmax((l + g_s) / tau),     forward D,  backward d z_bar / d l,
    i.e. the decoder input is D + z_bar - stopgrad(z_bar)

(each g_s held fixed: the estimator averages the Gumbel-Softmax Jacobian at given noise). The
forward value, the decoder call and so f(D) are those of ST-GS: one decoder call whatever k; the
extra cost is k softmaxes of the latent. By the law of total variance the gradient has the same
mean as ST-GS's and no larger variance; the bias of ST-GS w.r.t. the discrete gradient is unchanged.

Which perturbations: g_1 is the forward draw g itself and g_2..g_k are fresh conditional draws.
Given D = argmax(l + g), g is itself distributed as the conditional law, and the fresh draws are
conditionally independent of it, so (g_1..g_k) are k i.i.d. draws of that law, as the estimator
requires (the paper draws k fresh ones; the estimator has the same law). With ``samples: 1`` the
method is therefore ST-GS exactly: the same random stream (one standard-Gumbel tensor of the
logits' shape, then nothing), the same forward value and the same gradient.

Reported bound (``metric_kind = "discrete"``): hard c ~ Cat(q), -log p(x | c) + analytic KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import at_least
from ..distributions.concrete import log_softmax
from ..distributions.conditional_gumbel import conditional_gumbel
from ..distributions.gumbel import sample_gumbel
from .base import MISSING, Terms, register, straight_through
from .families import CategoricalLatentConfig, CategoricalLatentMethod


@dataclass
class GumbelRaoConfig(CategoricalLatentConfig):
    """Options of ``method=gumbel_rao``; defaults and their meaning in ``configs/method/gumbel_rao.yaml``."""

    samples: int = MISSING

    def __post_init__(self):
        super().__post_init__()
        at_least("method.samples", self.samples, 1)


@register("gumbel_rao")
class GumbelRaoMethod(CategoricalLatentMethod):
    """Gumbel-Rao with ``samples`` conditional perturbations; see the module docstring."""

    Config = GumbelRaoConfig

    def surrogate(self, logits: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, z_bar): the one-hot forward sample and the mean relaxed sample over the conditional draws."""
        shifted = logits - logits.detach().amax(-1, keepdim=True)  # softmax and argmax ignore the shift
        g = sample_gumbel(shifted.shape, shifted.dtype, shifted.device)
        z = log_softmax((shifted + g) / tau).exp()
        hard = F.one_hot(z.argmax(-1), self.cfg.categories).to(z.dtype)
        if self.cfg.samples > 1:
            extra = conditional_gumbel(shifted, hard, self.cfg.samples - 1)
            z_rest = log_softmax((shifted + extra) / tau).exp()
            z = (z + z_rest.sum(0)) / self.cfg.samples
        return hard, z

    def loss(self, params, decode, x, tau) -> Terms:
        logits = self.split(params)
        hard, z_bar = self.surrogate(logits, tau)
        z = straight_through(hard, z_bar)
        return self.terms(z, logits, decode, x)
