r"""Binary Concrete / Gumbel-sigmoid (Maddison et al. 2017; Jang et al. 2017).

With location :math:`\alpha = e^{\text{logits}}` and temperature :math:`\tau > 0`,

.. math::
    u \sim U(0,1),\quad y = \frac{\text{logits} + \log u - \log(1-u)}{\tau},\quad z = \sigma(y).

The logit :math:`y` is logistic with location ``logits/tau`` and scale ``1/tau``, so with
:math:`a = \text{logits} - \tau y`

.. math::
    \log p(z) = \log\tau + a - 2\,\mathrm{softplus}(a) + \mathrm{softplus}(y) + \mathrm{softplus}(-y)

which is Maddison et al. (2017), eq. 2, written in logit space: every term stays finite for
``|y|`` in the hundreds, where ``z`` itself has rounded to 0 or 1 in float32. The CDF is
:math:`P(z \le x) = \sigma(\tau\,\mathrm{logit}(x) - \text{logits})` and
:math:`P(z > 1/2) = \sigma(\text{logits})` for every temperature.

``log_prob`` of the tensor most recently returned by ``rsample``/``sample`` uses the cached
logit of that sample (as torch's transform caches do), so the density of the distribution's own
float32 samples is exact even when they have rounded to 0 or 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from ._common import (BinaryProbsLogits, RelaxrunDistribution, SampleCache, check_positive, logit, probs_or_logits,
                      uniform_noise)

__all__ = ["RelaxedBernoulli", "binary_concrete_logit_log_prob"]


def binary_concrete_logit_log_prob(y: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """log density of z = sigmoid(y) under BinaryConcrete(logits, temperature), given y = logit(z)."""
    a = logits - temperature * y
    return torch.log(temperature) + a - 2 * F.softplus(a) + F.softplus(y) + F.softplus(-y)


def sample_logistic(shape, dtype, device, generator=None) -> torch.Tensor:
    """Standard logistic noise log u - log(1-u), one independent draw per element."""
    u = uniform_noise(shape, dtype, device, generator)
    tiny = torch.finfo(dtype).tiny
    u = u.clamp_min_(tiny)  # rand is in [0, 1): only 0 needs guarding
    # in place where the buffer is ours (no autograd history): same values, fewer allocations
    return torch.log(u).sub_(u.neg_().log1p_())


class RelaxedBernoulli(BinaryProbsLogits, SampleCache, RelaxrunDistribution):
    """Binary Concrete (relaxed Bernoulli) on (0, 1), parameterised by ``probs`` or ``logits``.

    Args:
        temperature: tau > 0 (number or tensor broadcastable with the parameters).
        probs: P(z > 1/2) in [0, 1]; or
        logits: its log-odds. Exactly one of the two.

    Shapes: ``batch_shape`` is the broadcast shape of the parameters; ``event_shape`` is ``()``.
    """

    arg_constraints = {
        "probs": constraints.unit_interval,
        "logits": constraints.real,
        "temperature": constraints.positive,
    }
    support = constraints.unit_interval
    has_rsample = True
    _expand_params = {"probs": 0, "logits": 0, "temperature": 0}

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        name, param = probs_or_logits(probs, logits, "RelaxedBernoulli", is_binary=True)
        temperature = check_positive(temperature, "temperature", "RelaxedBernoulli", like=param,
                                     validate=validate_args is not False)
        temperature, param = broadcast_all(temperature, param)
        self.temperature = temperature
        setattr(self, name, param)
        super().__init__(param.shape, validate_args=validate_args)

    def rsample_logit(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """Differentiable sample of y = logit(z), shape ``sample_shape + batch_shape``."""
        shape = self._extended_shape(sample_shape)
        noise = sample_logistic(shape, self.logits.dtype, self.logits.device, generator)
        return (self.logits + noise) / self.temperature

    def rsample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        y = self.rsample_logit(sample_shape, generator)
        z = torch.sigmoid(y)
        # y = logit(z) without the rounding of z: a value auxiliary (see SampleCache), valid at
        # sample() and at rsample() alike
        self._remember("_cache", z, y)
        return z

    def log_prob_logit(self, y: torch.Tensor) -> torch.Tensor:
        """log p(z) at z = sigmoid(y), computed from y (density with respect to z)."""
        return binary_concrete_logit_log_prob(y, self.logits, self.temperature)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        record = self._recall("_cache", value)
        if record is not None:
            y = record[1]
        else:
            if self._validate_args:
                self._validate_sample(value)
            y = logit(value)
        return self.log_prob_logit(y)

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return torch.sigmoid(self.temperature * logit(value) - self.logits)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((self.logits + logit(value)) / self.temperature)

    @property
    def mode(self):
        raise NotImplementedError("RelaxedBernoulli: the mode depends on tau (bimodal for tau < 1)")

    def __repr__(self):
        return f"RelaxedBernoulli(temperature: {tuple(self.temperature.shape)}, logits: {tuple(self.logits.shape)})"
