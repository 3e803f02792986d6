r"""``method=decoupled_st``: straight-through Gumbel-Softmax with separate forward and backward temperatures.

Shah, Yan, Mozer & Liu 2024, "Improving discrete optimisation via decoupled straight-through
Gumbel-Softmax" (arXiv:2410.13331; v2 retitled "... decoupled straight-through estimator"). N
categorical variables of K classes (default 20 x 10), uniform prior, analytic KL.

The paper writes the Gumbel-Softmax with the temperature on the logits only, z = softmax(l / tau + g)
(its footnote on the difference from Jang et al.'s softmax((l + g) / tau)); the relaxit library's
``DecoupledStraightThroughGumbelSoftmax`` does the same. With one Gumbel draw g per variable:

    forward:   D = one_hot(argmax(l / tau_f + g))            tau_f = ``tau_forward``
    backward:  z_b = softmax(l / tau_b + g)                   tau_b = ``tau`` (the run's temperature)
    decoder input: D + z_b - stopgrad(z_b)

What the forward temperature changes: in this form the argmax is that of l / tau_f + g, so D ~
Cat(softmax(l / tau_f)) -- tau_f sets how random the forward samples are (the paper's
"exploration"), not a relaxation of the value, which is always the hard one-hot. (In Jang et al.'s
form argmax((l + g) / tau_f) would not depend on tau_f at all; with a hard forward pass a forward
temperature only matters through the logits, as here.) The posterior of the discrete model is then
q(c | x) = prod_n Cat(softmax(l_n / tau_f)): its KL to the uniform prior, the reported bound, the
IWAE weights, reconstructions and ``relaxrun-gradcheck``'s discrete law all use the logits
l / tau_f (:meth:`DecoupledSTMethod.split` returns them), so the estimator is judged against the
model it samples. tau_b sets the backward pass only: the gradient of softmax(l / tau_b + g).

Special cases: tau_f = tau_b = 1 is ST-GS at tau = 1 (``gumbel_softmax`` with ``hard: true``) exactly,
same random stream; tau_f = tau_b = tau is ST-GS at temperature 1 in the logits l / tau (the paper's
single-temperature baseline).

Reported bound (``metric_kind = "discrete"``): hard c ~ Cat(softmax(l / tau_f)), -log p(x | c) +
analytic KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import positive
from ..distributions.concrete import log_softmax
from ..distributions.gumbel import sample_gumbel
from .base import MISSING, DiscreteLaw, Terms, register, straight_through
from .families import CategoricalLatentConfig, CategoricalLatentMethod


@dataclass
class DecoupledSTConfig(CategoricalLatentConfig):
    """Options of ``method=decoupled_st``; defaults and their meaning in ``configs/method/decoupled_st.yaml``."""

    tau_forward: float = MISSING

    def __post_init__(self):
        super().__post_init__()
        positive("method.tau_forward", self.tau_forward)


@register("decoupled_st")
class DecoupledSTMethod(CategoricalLatentMethod):
    """Decoupled ST Gumbel-Softmax; see the module docstring."""

    Config = DecoupledSTConfig

    def split(self, params: torch.Tensor) -> torch.Tensor:
        """The posterior logits l / tau_f, ``[..., N, K]`` (every family method reads the posterior here)."""
        return super().split(params) / self.cfg.tau_forward

    def loss(self, params, decode, x, tau) -> Terms:
        raw = super().split(params)  # l
        logits = raw / self.cfg.tau_forward  # the posterior logits l / tau_f
        shifted = raw - raw.detach().amax(-1, keepdim=True)  # softmax and argmax ignore a common shift
        g = sample_gumbel(shifted.shape, shifted.dtype, shifted.device)
        hard_index = (shifted.detach() / self.cfg.tau_forward + g).argmax(-1)
        soft = log_softmax(shifted / tau + g).exp()
        z = straight_through(F.one_hot(hard_index, self.cfg.categories).to(soft.dtype), soft)
        return self.terms(z, logits, decode, x)

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """Cat(softmax(l_n / tau_f)) per variable, the law of the hard D fed forward; prior uniform."""
        return super().discrete_law(params, tau)
