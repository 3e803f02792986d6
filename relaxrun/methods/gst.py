r"""``method=gst``: the Gapped Straight-Through estimator for categorical latents.

Fan, Chi, Rudnicky & Ramadge 2022, "Training discrete deep generative models via gapped
straight-through estimator" (ICML, PMLR 162); the perturbation is the one of the authors'
reference code (``gst_mover`` in the GST repository), whose two variants GST-1.0 and GST-p are the
``gap_rule`` options here. N categorical variables of K classes (default 20 x 10), posterior
q(c | x) = prod_n Cat(softmax(theta_n)), uniform prior, analytic KL.

The paper identifies the properties of ST Gumbel-Softmax that matter -- the relaxed sample's
perturbed logits have their argmax at the hard sample D (consistency), the perturbation carries no
gradient, and the chosen logit leads the others by a gap -- and replaces ST-GS's random Gumbel noise
by a deterministic perturbation of the logits given D, which removes the variance that comes from
the noise (no resampling, one decoder call). Per variable, with theta the logits (all perturbation
terms computed from stopgrad(theta)):

    D ~ Cat(softmax(theta))                                    (one-hot)
    m_1 = (max_k theta_k - theta) * D                          (raises theta_D to the maximum)
    m_2 = relu(theta - max_k theta_k + kappa) * (1 - D)        (lowers the others to <= max - kappa)
    theta~ = theta + stopgrad(m_1 - m_2)
    out  = D + softmax(theta~ / tau) - stopgrad(softmax(theta~ / tau))

so theta~_D = max_k theta_k and theta~_i = min(theta_i, max_k theta_k - kappa) for i != D: the chosen
category wins by at least the gap kappa. The gradient is that of softmax(theta~ / tau) w.r.t. theta,
(1/tau) (diag p~ - p~ p~^T) with p~ = softmax(theta~ / tau).

Gap (``gap_rule``):

* ``fixed`` (GST-1.0 with the default ``gap: 1.0``): kappa = ``gap``;
* ``p`` (GST-p): kappa = -log(1 - pi_D) / pi_D, pi_D = softmax(theta)_D, which is the expected gap
  E[G_D - max_{i != D} G_i | argmax G = D] of ST-GS's perturbed logits G = theta + g: G_D - max_{i != D} G_i
  is Logistic(mu), mu = theta_D - logsumexp_{i != D} theta_i, and E[X | X > 0] = softplus(mu) / sigmoid(mu)
  for X ~ Logistic(mu). Computed in that form (no log(1 - pi_D) cancellation); kappa -> 1 as
  pi_D -> 0 and kappa ~ mu as pi_D -> 1.

Reported bound (``metric_kind = "discrete"``): hard c ~ Cat(q), -log p(x | c) + analytic KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import one_of, positive
from ..distributions.concrete import log_softmax
from .base import MISSING, Terms, register, straight_through
from .families import CategoricalLatentConfig, CategoricalLatentMethod

GAP_RULES = ("fixed", "p")


@dataclass
class GSTConfig(CategoricalLatentConfig):
    """Options of ``method=gst``; defaults and their meaning in ``configs/method/gst.yaml``."""

    gap: float = MISSING
    gap_rule: str = MISSING

    def __post_init__(self):
        super().__post_init__()
        positive("method.gap", self.gap)
        one_of("method.gap_rule", self.gap_rule, GAP_RULES)


def expected_gumbel_gap(logits: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """GST-p's gap ``[..., 1]``: -log(1 - pi_D) / pi_D = softplus(mu) / sigmoid(mu), mu the log-odds of D."""
    with torch.no_grad():
        chosen = (logits * hard).sum(-1, keepdim=True)
        others = torch.logsumexp(logits.masked_fill(hard > 0, float("-inf")), -1, keepdim=True)
        mu = (chosen - others).clamp(min=-30.0)  # below: kappa = 1 to within 1e-13
        return F.softplus(mu) / torch.sigmoid(mu)


def gapped_logits(logits: torch.Tensor, hard: torch.Tensor, gap) -> torch.Tensor:
    """theta + stopgrad(m_1 - m_2) (module docstring); ``gap`` a number or a tensor broadcastable to ``[..., 1]``."""
    with torch.no_grad():
        theta = logits.detach()
        top = theta.amax(-1, keepdim=True)
        m1 = (top - theta) * hard
        m2 = F.relu(theta - top + gap) * (1 - hard)
        move = m1 - m2
    return logits + move


@register("gst")
class GSTMethod(CategoricalLatentMethod):
    """Gapped straight-through; see the module docstring."""

    Config = GSTConfig

    def loss(self, params, decode, x, tau) -> Terms:
        logits = self.split(params)
        hard = self.hard_sample(logits)
        gap = expected_gumbel_gap(logits, hard) if self.cfg.gap_rule == "p" else self.cfg.gap
        soft = log_softmax(gapped_logits(logits, hard, gap) / tau).exp()
        z = straight_through(hard, soft)
        return self.terms(z, logits, decode, x)
