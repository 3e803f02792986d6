r"""Concrete / Gumbel-Softmax: the relaxed one-hot categorical (Jang et al. 2017; Maddison et al. 2017).

With logits :math:`\ell \in \mathbb{R}^K` and temperature :math:`\tau > 0`,

.. math::
    g_k \sim \mathrm{Gumbel}(0, 1),\quad y_k = \frac{\ell_k + g_k}{\tau},\quad
    z = \mathrm{softmax}(y),\quad \log z = y - \operatorname{logsumexp}(y).

Density on the simplex (Maddison et al. 2017, eq. 1; w.r.t. Lebesgue measure on the first
K-1 coordinates):

.. math::
    \log p(z) = \log\Gamma(K) + (K-1)\log\tau - \sum_k \log z_k
               + \sum_k c_k - K \operatorname{logsumexp}_k c_k,\qquad c_k = \ell_k - \tau\log z_k.

The last two terms are :math:`\sum_k \log\mathrm{softmax}(c)_k`: every summand is ``<= 0`` and
computed after subtracting ``max c``, so there is no cancellation between numbers of size
``tau * |log z|``. All terms use
``log z``; for the tensor most recently returned by ``rsample`` the exact ``log z`` (from the
Gumbel logits, never rounded to ``log 0``) is cached, so the density of the distribution's own
float32 samples stays finite at small tau where ``z`` has entries that underflow to 0.

Shapes: ``batch_shape = logits.shape[:-1]``, ``event_shape = (K,)``.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints
from torch.distributions.utils import lazy_property

from ._common import (CategoricalProbsLogits, RelaxrunDistribution, SampleCache, check_positive, log_clamped,
                      probs_or_logits)
from .gumbel import sample_gumbel  # re-exported: its home is relaxrun.distributions.gumbel

__all__ = ["GumbelSoftmax", "concrete_log_prob_from_log_value", "log_softmax", "sample_gumbel"]


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    """``torch.log_softmax(x, -1)``, computed the same way: ``(x - max) - log sum exp(x - max)``.

    On the CPU with fewer than 16 categories this is spelled out in elementwise ops, which run over
    the whole tensor at once: torch's fused CPU kernel vectorises along the category dimension and is
    3-4x slower there (forward + backward at 100 x 20 x 10; ``scripts/benchmark.py`` times the
    kernels). The max is a constant shift of every entry, so detaching it leaves the gradient exact.
    """
    if x.device.type != "cpu" or x.shape[-1] >= 16:
        return torch.log_softmax(x, dim=-1)
    s = x - x.detach().amax(dim=-1, keepdim=True)
    return s - s.exp().sum(dim=-1, keepdim=True).log()


def concrete_log_prob_from_log_value(log_z: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """log p(z) of Concrete(logits, tau) given log z (last dim = categories); sums over the event.

    ``logits`` need not be normalised: the value is invariant to adding a constant to a variable's logits.
    """
    k = log_z.shape[-1]
    c = logits - temperature.unsqueeze(-1) * log_z
    # sum_k c_k - K logsumexp(c) = sum_k log_softmax(c)_k: summands <= 0, no cancellation
    return math.lgamma(k) + (k - 1) * torch.log(temperature) - log_z.sum(-1) + log_softmax(c).sum(-1)


class GumbelSoftmax(CategoricalProbsLogits, SampleCache, RelaxrunDistribution):
    """Relaxed one-hot categorical (Concrete) on the (K-1)-simplex.

    Args:
        temperature: tau > 0, broadcastable with ``batch_shape``.
        probs: category probabilities (last dim K, non-negative, normalised); or
        logits: unnormalised log-probabilities. Exactly one of the two.
    """

    arg_constraints = {
        "probs": constraints.simplex,
        "logits": constraints.real_vector,
        "temperature": constraints.positive,
    }
    support = constraints.simplex
    has_rsample = True
    _expand_params = {"probs": 1, "logits": 1, "_shifted_logits": 1, "temperature": 0}
    _noise = None  # the second slot: (log z, Gumbel noise) of the latest rsample_log, when valid

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        name, param = probs_or_logits(probs, logits, "GumbelSoftmax", is_binary=False)
        if param.dim() < 1:
            raise ValueError("GumbelSoftmax: probs/logits must have at least one dimension (the K categories)")
        if name == "probs":
            if validate_args is not False and torch.isfinite(param).all() and not bool((param >= 0).all()):
                raise ValueError("GumbelSoftmax: probs must be non-negative and sum to 1 along the last dimension")
            param = param / param.sum(-1, keepdim=True)
        else:
            # samples and densities are invariant to a common shift of a variable's logits: subtracting
            # the max bounds their size as normalising would, at a fraction of the cost (no logsumexp
            # forward and backward); the ``logits`` property normalises them when it is read
            param = param - param.detach().amax(-1, keepdim=True)
        temperature = check_positive(temperature, "temperature", "GumbelSoftmax", like=param,
                                     validate=validate_args is not False)
        batch_shape = param.shape[:-1]
        temperature = temperature.expand(torch.broadcast_shapes(temperature.shape, batch_shape))
        batch_shape = temperature.shape
        self.temperature = temperature
        setattr(self, name, param.expand(batch_shape + param.shape[-1:]))
        super().__init__(batch_shape, param.shape[-1:], validate_args=validate_args)
        if name == "logits":
            self._shifted_logits = self.__dict__.pop("logits")

    @lazy_property
    def logits(self) -> torch.Tensor:
        if "_shifted_logits" in self.__dict__:
            return log_softmax(self._shifted_logits)
        return log_clamped(self.probs)

    def _logits_up_to_shift(self) -> torch.Tensor:
        """The logits, possibly shifted by a constant per variable (all sampling and density code is
        invariant to that shift, so it never pays for normalising them)."""
        d = self.__dict__
        return d["_shifted_logits"] if "_shifted_logits" in d else self.logits

    def rsample_log(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """Differentiable sample of log z = log_softmax((logits + g) / tau)."""
        shape = self._extended_shape(sample_shape)
        logits = self._logits_up_to_shift()
        g = sample_gumbel(shape, logits.dtype, logits.device, generator)
        y = (logits + g) / self.temperature.unsqueeze(-1)
        log_z = log_softmax(y)
        # the density at this very sample has a shortcut (log_prob_log_value); it equals the general
        # formula as a function of the parameters only if the sample carries its autograd history
        # (not so for sample(), whose callers want the density's gradient at a fixed z)
        self._remember_path("_noise", (logits, self.temperature), log_z, g)
        return log_z

    def rsample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        log_z = self.rsample_log(sample_shape, generator)
        z = log_z.exp()
        self._remember("_cache", z, log_z)  # exact log z: a value auxiliary
        return z

    def log_prob_log_value(self, log_z: torch.Tensor) -> torch.Tensor:
        """log p(z) computed from log z (exact where z itself would underflow).

        At this distribution's own reparameterised sample ``log z = log_softmax((l + g) / tau)`` the
        argument of the last term is ``c = l - tau log z = -g + tau logsumexp((l + g) / tau)``: the
        noise plus one shift per variable, which ``log_softmax`` ignores. So that term is
        ``sum_k log_softmax(-g)_k``, a constant of the parameters along the sample path (zero
        gradient), and is computed from the noise without autograd: the same value and the same
        gradients as the general formula, at about half the cost.
        """
        record = self._recall("_noise", log_z)
        if record is not None:
            k = log_z.shape[-1]
            with torch.no_grad():
                noise_term = log_softmax(-record[1]).sum(-1)
            return math.lgamma(k) + (k - 1) * torch.log(self.temperature) - log_z.sum(-1) + noise_term
        return concrete_log_prob_from_log_value(log_z, self._logits_up_to_shift(), self.temperature)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        record = self._recall("_cache", value)
        if record is not None:
            log_z = record[1]
        else:
            if self._validate_args:
                self._validate_sample(value)
            log_z = torch.log(value.clamp_min(torch.finfo(value.dtype).tiny))
        return self.log_prob_log_value(log_z)

    _unavailable = {
        "mean": "E[softmax((logits + g) / tau)] is a (K-1)-dimensional integral with no closed form for K > 2 "
                "(for K = 2 use RelaxedBernoulli, whose mean is a 1-D quadrature); estimate it from samples",
        "variance": "no closed form for K > 2 (as the mean); estimate it from samples",
        "mode": "the mode depends on tau (the density is multimodal for small tau)",
        "entropy": "no closed form for K > 2; estimate -log_prob from samples",
        "cdf": "the law is multivariate (on the simplex)",
        "icdf": "the law is multivariate (on the simplex)",
        "enumerate_support": "the law is continuous on the simplex (the hard one-hot sample's law is "
                             "torch.distributions.OneHotCategorical(logits=...))",
    }

    def __repr__(self):
        return f"GumbelSoftmax(temperature: {tuple(self.temperature.shape)}, logits: {tuple(self.logits.shape)})"
