r"""Straight-through Bernoulli (Bengio, Léonard, Courville 2013, "Estimating or Propagating
Gradients Through Stochastic Neurons for Conditional Computation", arXiv:1308.3432; Hinton's
lectures 2012).

Forward: an exact Bernoulli sample :math:`b \sim \mathrm{Bernoulli}(p)`. Backward: as if the sample
were p,

.. math::
    z = b + (p - \mathrm{stopgrad}(p)),\qquad \frac{\partial z}{\partial p} = 1,

so for a loss f the estimator is :math:`f'(b)` with respect to p (and :math:`f'(b)\,p(1-p)` with
respect to the logits). It is unbiased when f is linear in z and biased otherwise. ``rsample``
returns this z; its value is exactly b (adding the exact zero p - p keeps b bit-for-bit).

The law is the Bernoulli's: ``log_prob(b) = b log p + (1-b) log(1-p)``, computed from the logits
as ``-BCEWithLogits``. ``kl_divergence`` between two of them is the analytic Bernoulli KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import constraints, register_kl
from torch.distributions.utils import broadcast_all

from ._common import BinaryProbsLogits, RelaxrunDistribution, probs_or_logits

__all__ = ["StraightThroughBernoulli"]


class StraightThroughBernoulli(BinaryProbsLogits, RelaxrunDistribution):
    """Bernoulli(p) whose ``rsample`` passes gradients straight through (b + p - stopgrad(p)).

    Args:
        probs: p in [0, 1]; or
        logits: log p - log(1-p). Exactly one of the two.

    Shapes: ``batch_shape`` is the parameter's shape; ``event_shape`` is ``()``; samples have shape
    ``sample_shape + batch_shape`` with an independent draw per element.
    """

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.boolean
    has_rsample = True  # a biased, straight-through pathwise estimator (see the module docstring)
    has_enumerate_support = True
    _expand_params = {"probs": 0, "logits": 0}

    def __init__(self, probs=None, logits=None, validate_args=None):
        name, param = probs_or_logits(probs, logits, "StraightThroughBernoulli", is_binary=True)
        (param,) = broadcast_all(param)
        setattr(self, name, param)
        super().__init__(param.shape, validate_args=validate_args)

    def sample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """Hard sample b in {0., 1.}, shape ``sample_shape + batch_shape``, no gradient."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(shape), generator=generator)

    def rsample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """z = b + (p - stopgrad(p)): value b, gradient d z / d p = 1."""
        b = self.sample(sample_shape, generator)
        p = self.probs
        return b + (p - p.detach())

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Bernoulli log mass: value * logits - softplus(logits)."""
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none")

    def entropy(self) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.logits, self.probs, reduction="none")

    def enumerate_support(self, expand=True) -> torch.Tensor:
        values = torch.arange(2, dtype=self.logits.dtype, device=self.logits.device)
        values = values.view((-1,) + (1,) * len(self.batch_shape))
        return values.expand((-1,) + self.batch_shape) if expand else values

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """P(b <= x): 0 for x < 0, 1 - p for 0 <= x < 1, 1 for x >= 1."""
        value = torch.as_tensor(value, dtype=self.probs.dtype, device=self.probs.device)
        value, p = torch.broadcast_tensors(value, self.probs)
        c = torch.where(value >= 1, torch.ones_like(p), 1 - p)
        return torch.where(value < 0, torch.zeros_like(c), c)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """Quantile function inf{x : P(b <= x) >= q}: 0 for q <= 1 - p, else 1."""
        q = torch.as_tensor(value, dtype=self.probs.dtype, device=self.probs.device)
        return (q > 1 - self.probs).to(self.probs.dtype)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def mode(self) -> torch.Tensor:
        return (self.probs >= 0.5).to(self.probs)

    @property
    def variance(self) -> torch.Tensor:
        return self.probs * (1 - self.probs)

    def __repr__(self):
        return f"StraightThroughBernoulli(logits: {tuple(self.logits.shape)})"


@register_kl(StraightThroughBernoulli, StraightThroughBernoulli)
def _kl_st_st(q: StraightThroughBernoulli, p: StraightThroughBernoulli) -> torch.Tensor:
    """KL(q || p) = sum_b q(b) [log q(b) - log p(b)], from logits (finite for logits in +-20)."""
    qp = q.probs
    # log q(1) - log p(1) = logsigmoid(lq) - logsigmoid(lp); the same for b = 0 with negated logits
    return (qp * (F.logsigmoid(q.logits) - F.logsigmoid(p.logits))
            + (1 - qp) * (F.logsigmoid(-q.logits) - F.logsigmoid(-p.logits)))
