r"""Stochastic times smooth (Bengio, Léonard, Courville 2013, "Estimating or Propagating Gradients
Through Stochastic Neurons for Conditional Computation", arXiv:1308.3432, section 4).

With pre-activation a (the ``logits``) and p = sigmoid(a), the unit is a smooth factor times a
Bernoulli gate:

.. math::
    g = \sqrt{p},\qquad b \sim \mathrm{Bernoulli}(g),\qquad h = b\,g,\qquad E[h] = p.

Gradients flow through the smooth factor g only (b is held fixed):
:math:`\partial h/\partial a = b\,g'(a) = b\,\tfrac{1}{2}\sqrt{p}\,(1-p)`. The estimator is biased:
its expectation is half the true derivative of E[h] = p (:math:`E[b]\,g' = g g' = p'/2`).

The law of h has two atoms, P(h = 0) = 1 - sqrt(p) and P(h = sqrt(p)) = sqrt(p). ``log_prob``
accepts the distribution's own samples, values in {0, sqrt(p)}: log(1 - sqrt p) and
(1/2) log p, both from log-sigmoid so they stay finite for logits in +-20. Two members with
different p have different support points, so a KL between output laws would be infinite; the
KL that makes sense is between the gates b, available as ``gate`` (an ordinary torch
``Bernoulli(sqrt(p))``), and evaluation should feed the decoder b, not h (h carries sqrt(p)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, constraints
from torch.distributions.utils import broadcast_all

from ._common import BinaryProbsLogits, RelaxrunDistribution, SampleCache, log1mexp, probs_or_logits

__all__ = ["StochasticTimesSmooth"]


class StochasticTimesSmooth(BinaryProbsLogits, SampleCache, RelaxrunDistribution):
    """h = b * sqrt(p), b ~ Bernoulli(sqrt(p)), p = sigmoid(logits); gradient through sqrt(p).

    Args:
        probs: p in [0, 1]; or
        logits: a = logit(p). Exactly one of the two.

    Shapes: ``batch_shape`` is the parameter's shape; ``event_shape`` is ``()``; samples have shape
    ``sample_shape + batch_shape`` with an independent gate per element.
    """

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.unit_interval  # the true support {0, sqrt(p)} depends on p; checked in log_prob
    has_rsample = True  # a biased pathwise estimator (see the module docstring)
    _expand_params = {"probs": 0, "logits": 0}

    def __init__(self, probs=None, logits=None, validate_args=None):
        name, param = probs_or_logits(probs, logits, "StochasticTimesSmooth", is_binary=True)
        (param,) = broadcast_all(param)
        setattr(self, name, param)
        super().__init__(param.shape, validate_args=validate_args)

    # -- the gate -------------------------------------------------------------------------------
    @property
    def log_gate_prob(self) -> torch.Tensor:
        """log sqrt(p) = logsigmoid(a) / 2 (or log(p) / 2 when built from probs)."""
        if "probs" in self.__dict__:
            return 0.5 * torch.log(self.probs)
        return 0.5 * F.logsigmoid(self.logits)

    @property
    def gate_probs(self) -> torch.Tensor:
        """sqrt(p): the gate's success probability and the smooth factor."""
        if "probs" in self.__dict__:
            return torch.sqrt(self.probs)
        return torch.exp(self.log_gate_prob)

    @property
    def gate_logits(self) -> torch.Tensor:
        """logit(sqrt p) = log sqrt(p) - log(1 - sqrt p), computed without forming 1 - sqrt(p)."""
        lg = self.log_gate_prob
        return lg - log1mexp(lg)

    @property
    def gate(self) -> Bernoulli:
        """The law of b, Bernoulli(sqrt(p)), for the analytic discrete KL and hard evaluation."""
        return Bernoulli(logits=self.gate_logits, validate_args=False)

    # -- sampling -------------------------------------------------------------------------------
    def rsample_with_gate(self, sample_shape=torch.Size(), generator=None):
        """(h, b): h = b * sqrt(p) with gradient through sqrt(p); b the hard gate (no gradient)."""
        shape = self._extended_shape(sample_shape)
        g = self.gate_probs
        with torch.no_grad():
            b = torch.bernoulli(g.detach().expand(shape), generator=generator)
        h = b * g
        # the gate b is a function of h (b = 1 exactly where h > 0 while sqrt(p) > 0): a value
        # auxiliary, valid at sample() and rsample() alike
        self._remember("_cache", h, b)
        return h, b

    def rsample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        return self.rsample_with_gate(sample_shape, generator)[0]

    # -- the law --------------------------------------------------------------------------------
    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log P(h = value): log(1 - sqrt p) at 0, (1/2) log p at sqrt(p), -inf elsewhere."""
        lg = self.log_gate_prob
        record = self._recall("_cache", value)
        if record is not None:
            # the gate is known exactly, even where sqrt(p) has underflowed to 0
            b = record[1]
            return torch.where(b > 0, lg, log1mexp(lg))
        value = torch.as_tensor(value, dtype=lg.dtype, device=lg.device)
        value, g, lg = torch.broadcast_tensors(value, self.gate_probs.detach(), lg)
        on = torch.isclose(value, g, rtol=1e-5, atol=0.0)
        off = value == 0
        if self._validate_args and not bool((on | off).all()):
            bad = value.detach()[~(on | off)].reshape(-1)[0].item()
            raise ValueError(f"StochasticTimesSmooth: value must be 0 or sqrt(probs); got {bad:.6g}")
        # where sqrt(p) rounds to 0 both outcomes read 0; the law of h then puts all its mass at 0
        out = torch.where(off, log1mexp(lg), lg)
        out = torch.where(off & (g == 0), torch.zeros_like(out), out)
        return out.masked_fill(~(on | off), -math.inf)

    def entropy(self) -> torch.Tensor:
        """Entropy of h, equal to the gate's (the two atoms are distinct while p > 0)."""
        return self.gate.entropy()

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        return self.gate_probs * self.probs - self.probs ** 2

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        """The two values (0, sqrt(p)) of every element, shape ``(2,) + batch_shape`` (the second depends
        on p, so the values are always given at full batch shape)."""
        g = self.gate_probs
        return torch.stack([torch.zeros_like(g), g])

    has_enumerate_support = True

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """P(h <= x): 0 for x < 0, 1 - sqrt(p) for 0 <= x < sqrt(p), 1 for x >= sqrt(p)."""
        g = self.gate_probs
        value, g = torch.broadcast_tensors(torch.as_tensor(value, dtype=g.dtype, device=g.device), g)
        c = torch.where(value >= g, torch.ones_like(g), 1 - g)
        return torch.where(value < 0, torch.zeros_like(c), c)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """Quantile function inf{x : P(h <= x) >= q}: 0 for q <= 1 - sqrt(p), else sqrt(p)."""
        g = self.gate_probs
        q = torch.as_tensor(value, dtype=g.dtype, device=g.device)
        return torch.where(q > 1 - g, g, torch.zeros_like(g))

    _unavailable = {
        "mode": "the mode is 0 where sqrt(p) < 1/2, else sqrt(p): compare gate_probs with 0.5",
    }

    def __repr__(self):
        return f"StochasticTimesSmooth(logits: {tuple(self.logits.shape)})"
