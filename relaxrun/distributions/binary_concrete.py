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

Samples lie in the open interval (0, 1) at every temperature, in float32 and float64: where
``sigmoid(y)`` rounds to 1 (``y`` > 16.6 in float32) or underflows (``y`` < -87), the value is moved
to the nearest number inside, 1 - 2^-24 or 2^-126 (:func:`~relaxrun.distributions._common.
open_unit_interval`; the pathwise gradient is that of ``sigmoid(y)``). ``log_prob`` of the tensor
most recently returned by ``rsample``/``sample`` uses the cached logit ``y`` of that sample (as
torch's transform caches do), so the density of the distribution's own float32 samples keeps its
logit-space accuracy where the value itself was rounded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import constraints, register_kl
from torch.distributions.utils import broadcast_all

from ._quadrature import compact_broadcast, logistic_expectation, logistic_log_density
from ._common import (BinaryProbsLogits, RelaxrunDistribution, SampleCache, check_positive, logit,
                      open_unit_interval, probs_or_logits, uniform_noise)

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

    Example (the seed page's; run by the tests as a doctest)::

        >>> import torch
        >>> from relaxrun.distributions import RelaxedBernoulli
        >>> d = RelaxedBernoulli(temperature=0.5, probs=0.7)
        >>> z = d.sample((100,))
        >>> bool(((z > 0) & (z < 1)).all())
        True
        >>> z.shape
        torch.Size([100])
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
        z = open_unit_interval(torch.sigmoid(y))
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
        return open_unit_interval(torch.sigmoid((self.logits + logit(value)) / self.temperature))

    # -- moments by quadrature (see relaxrun.distributions._quadrature) ------------------------
    def _logit_law(self):
        """(location, scale) of y = logit(z) ~ Logistic(logits / tau, 1 / tau), float64, ``batch_shape``."""
        t = self.temperature.to(torch.float64)
        return self.logits.to(torch.float64) / t, t.reciprocal()

    @property
    def mean(self) -> torch.Tensor:
        r"""E[z] = E[sigmoid(y)] by 1-D quadrature over y (no closed form for tau != 1; at tau = 1 it
        is :math:`e^l(e^l - 1 - l)/(e^l - 1)^2`, the CDF at l of the sum of two logistics)."""
        loc, scale = self._logit_law()
        return logistic_expectation(torch.sigmoid, loc, scale).to(self.logits.dtype)

    @property
    def variance(self) -> torch.Tensor:
        """E[(z - E z)^2] by 1-D quadrature over y."""
        loc, scale = self._logit_law()
        m = logistic_expectation(torch.sigmoid, loc, scale).unsqueeze(-1)
        return logistic_expectation(lambda y: (torch.sigmoid(y) - m) ** 2, loc, scale).to(self.logits.dtype)

    def entropy(self) -> torch.Tensor:
        """-E[log p(z)] (differential entropy on (0, 1)) by 1-D quadrature over y = logit(z)."""
        loc, scale = self._logit_law()
        l64, t64 = self.logits.to(torch.float64).unsqueeze(-1), self.temperature.to(torch.float64).unsqueeze(-1)
        h = logistic_expectation(lambda y: -binary_concrete_logit_log_prob(y, l64, t64), loc, scale)
        return h.to(self.logits.dtype)

    _unavailable = {"mode": "the mode depends on tau (the density is bimodal for tau < 1)",
                    "enumerate_support": "the law is continuous on (0, 1)"}

    def __repr__(self):
        return f"RelaxedBernoulli(temperature: {tuple(self.temperature.shape)}, logits: {tuple(self.logits.shape)})"


def _kl_same_scale_logistic(delta: torch.Tensor) -> torch.Tensor:
    """KL(Logistic(m, s) || Logistic(m + delta s, s)) = delta coth(delta / 2) - 2, for any scale s.

    Derivation: with u standard logistic the KL is -delta + 2 E[softplus(delta - u)] - 2 E[softplus(-u)];
    softplus(t) = E[(t - v)^+] for v standard logistic, and u + v has the CDF F(w) = e^w (e^w - 1 - w) /
    (e^w - 1)^2, whose integral is w / (1 - e^{-w}); so E[softplus(delta - u)] = delta / (1 - e^{-delta})
    (1 at delta = 0). Near 0 the series delta^2/6 - delta^4/360 + delta^6/15120 avoids the cancellation.
    """
    small = delta.abs() < 0.1
    d = torch.where(small, torch.ones_like(delta), delta)  # keeps the unused branch finite (no 0/0 in grad)
    exact = d / torch.tanh(d / 2) - 2
    d2 = delta * delta
    series = d2 / 6 - d2 * d2 / 360 + d2 * d2 * d2 / 15120
    return torch.where(small, series, exact)


@register_kl(RelaxedBernoulli, RelaxedBernoulli)
def _kl_relaxed_bernoulli(p: RelaxedBernoulli, q: RelaxedBernoulli) -> torch.Tensor:
    r"""KL between two Binary Concretes: the KL of their logits y (a shared bijection z = sigmoid(y)).

    With equal temperatures both y are logistic with the same scale 1/tau, and the KL is
    :math:`\delta\coth(\delta/2) - 2` with :math:`\delta = \text{logits}_q - \text{logits}_p`, whatever
    tau is. With different temperatures it is the 1-D integral of :math:`p(y)\log(p(y)/q(y))`, computed
    by the quadrature of :mod:`relaxrun.distributions._quadrature` (float64).
    """
    tp, tq = torch.broadcast_tensors(p.temperature, q.temperature)
    if bool((tp == tq).all()):
        return _kl_same_scale_logistic(q.logits - p.logits)
    (lp, tp, lq, tq), shape = compact_broadcast(p.logits, p.temperature, q.logits, q.temperature)
    loc_p, scale_p = lp.to(torch.float64) / tp.to(torch.float64), tp.to(torch.float64).reciprocal()
    loc_q, scale_q = lq.to(torch.float64) / tq.to(torch.float64), tq.to(torch.float64).reciprocal()
    lpq = (loc_p.unsqueeze(-1), scale_p.unsqueeze(-1), loc_q.unsqueeze(-1), scale_q.unsqueeze(-1))

    def log_ratio(y):
        return logistic_log_density(y, lpq[0], lpq[1]) - logistic_log_density(y, lpq[2], lpq[3])

    return logistic_expectation(log_ratio, loc_p, scale_p).to(lp.dtype).expand(shape)
