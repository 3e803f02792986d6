r"""Invertible Gaussian reparameterisation (IGR) of a relaxed categorical (Potapczynski, Loaiza-Ganem
and Cunningham, "Invertible Gaussian Reparameterization: Revisiting the Gumbel-Softmax", NeurIPS 2020).

A Gaussian in :math:`\mathbb{R}^{K-1}` is pushed onto the open :math:`(K-1)`-simplex by the
invertible "softmax++" with temperature :math:`\tau > 0` and the extra term :math:`\delta > 0`:

.. math::
    y = \mu + \sigma \odot \varepsilon,\quad \varepsilon \sim \mathcal N(0, I_{K-1}),\qquad
    z_k = \frac{e^{y_k/\tau}}{\sum_{j=1}^{K-1} e^{y_j/\tau} + \delta}\ (k < K),\qquad
    z_K = 1 - \sum_{k<K} z_k = \frac{\delta}{\sum_{j} e^{y_j/\tau} + \delta}.

``scale`` is :math:`\sigma`, the **standard deviation** of each coordinate of :math:`y` (not the
variance). :math:`z` is a softmax over the :math:`K` numbers :math:`(y/\tau, \log\delta)`, which is
how it is computed: a log-softmax (max-subtracted) so that any ``loc`` and any ``tau`` give finite
log-probabilities, and :math:`z_K` comes from the log-softmax rather than from the subtraction
``1 - sum`` (identical in exact arithmetic; the subtraction loses every digit once :math:`z_K` is
below float32's epsilon).

The map is a bijection from :math:`\mathbb{R}^{K-1}` to the open simplex, with inverse
:math:`y_k = \tau(\log z_k - \log z_K + \log\delta)` and
:math:`|\det \partial z_{1:K-1}/\partial y| = \tau^{-(K-1)}\prod_{k=1}^{K} z_k`
(the Jacobian of a softmax with one fixed logit is :math:`\mathrm{diag}(z) - zz^\top` on the first
:math:`K-1` coordinates, whose determinant is :math:`\prod_{k\le K} z_k`). Hence the exact density,
summed over the event,

.. math::
    \log p(z) = \sum_{k<K} \log\mathcal N(y_k;\mu_k,\sigma_k^2) + (K-1)\log\tau - \sum_{k=1}^{K}\log z_k,

with respect to Lebesgue measure on the first :math:`K-1` coordinates of :math:`z` (the same
convention as :class:`torch.distributions.Dirichlet`).

Because two IGRs with equal :math:`\tau` and :math:`\delta` share the bijection, their KL divergence
is the KL divergence of their Gaussians; that is registered with
:func:`torch.distributions.kl.register_kl`. With different temperatures or deltas there is no closed
form and :func:`~torch.distributions.kl.kl_divergence` raises ``NotImplementedError`` (naming the
Monte Carlo estimate to use instead).

Shapes: ``loc`` and ``scale`` broadcast to ``batch_shape + (K-1,)``; ``temperature`` and ``delta``
are one number per distribution and broadcast with ``batch_shape``; ``event_shape`` is ``(K,)``.
"""

from __future__ import annotations

import torch
from torch.distributions import constraints
from torch.distributions.kl import register_kl
from torch.distributions.utils import broadcast_all

from ._common import (LOG_2PI, DeclaredExpand, RelaxrunDistribution, SampleCache, as_tensor, check_positive,
                      keeps_sample_path, normal_noise)

__all__ = ["InvertibleGaussian", "softmax_plus_plus_log", "gaussian_kl"]

_NAME = "InvertibleGaussian"


def softmax_plus_plus_log(y: torch.Tensor, temperature: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``log z`` for z = softmax++(y / tau) with delta; y: ``(..., K-1)``, returns ``(..., K)``.

    ``temperature`` and ``delta`` broadcast with ``y.shape[:-1]``. Written as a log-softmax over
    ``(y/tau, log delta)``, which subtracts the maximum, so ``y/tau`` in the thousands is fine.
    """
    w = y / temperature.unsqueeze(-1)
    log_delta = torch.log(delta).unsqueeze(-1).expand(w.shape[:-1] + (1,))
    return torch.log_softmax(torch.cat([w, log_delta], dim=-1), dim=-1)


class InvertibleGaussian(DeclaredExpand, SampleCache, RelaxrunDistribution):
    """IGR relaxed categorical on the ``K``-simplex (Potapczynski et al. 2020).

    Args:
        temperature: ``tau`` > 0, one per distribution (broadcasts with ``batch_shape``).
        loc: mean ``mu`` of the Gaussian, shape ``batch_shape + (K-1,)``, finite.
        scale: its **standard deviation** ``sigma`` (not variance), broadcastable with ``loc``, > 0.
        delta: the softmax++ term ``delta`` > 0 (1 by default), one per distribution.

    ``rsample`` returns points of the open simplex, shape ``sample_shape + batch_shape + (K,)``.
    ``log_prob`` of the tensor most recently returned by ``rsample``/``sample`` uses the ``log z``
    computed with it, so it is exact even where float32 has rounded a coordinate of ``z`` to 0. The
    Gaussian draw ``y`` is reused as well if the sample carries its autograd history (``rsample``);
    at a fixed ``z`` (a ``sample()`` from parameters that require grad) ``y = inverse(log z)`` is a
    function of ``temperature`` and ``delta`` and is recomputed, so that the gradient is the density's.
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "temperature": constraints.positive,
        "delta": constraints.positive,
    }
    support = constraints.simplex
    has_rsample = True
    _expand_params = {"loc": 1, "scale": 1, "temperature": 0, "delta": 0}

    def __init__(self, temperature, loc, scale, delta=1.0, validate_args=None):
        loc = as_tensor(loc, name="loc", dist=_NAME)
        if loc.dim() < 1 or loc.shape[-1] < 1:
            raise ValueError(
                f"{_NAME}: loc must have a last dimension of size K-1 >= 1 (the free coordinates); "
                f"got shape {tuple(loc.shape)}"
            )
        scale = as_tensor(scale, like=loc, name="scale", dist=_NAME)
        loc, scale = broadcast_all(loc, scale)
        validate = validate_args is not False
        temperature = check_positive(temperature, "temperature", _NAME, like=loc, validate=validate)
        delta = check_positive(delta, "delta", _NAME, like=loc, validate=validate)
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], temperature.shape, delta.shape)
        self.loc = loc.expand(batch_shape + loc.shape[-1:])
        self.scale = scale.expand(batch_shape + loc.shape[-1:])
        self.temperature = temperature.expand(batch_shape)
        self.delta = delta.expand(batch_shape)
        super().__init__(batch_shape, torch.Size([loc.shape[-1] + 1]), validate_args=validate_args)

    @property
    def num_categories(self) -> int:
        return self.event_shape[0]

    # --- sampling -------------------------------------------------------------------------------
    def rsample_gaussian(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """Differentiable Gaussian draw ``y``, shape ``sample_shape + batch_shape + (K-1,)``.

        One independent standard normal per element of ``sample_shape + batch_shape + (K-1,)``.
        """
        shape = torch.Size(sample_shape) + self.loc.shape
        eps = normal_noise(shape, self.loc.dtype, self.loc.device, generator)
        return self.loc + self.scale * eps

    def log_simplex(self, y: torch.Tensor) -> torch.Tensor:
        """``log z`` for the Gaussian value ``y`` (shape ``(..., K-1)`` -> ``(..., K)``)."""
        return softmax_plus_plus_log(y, self.temperature, self.delta)

    def inverse(self, log_z: torch.Tensor) -> torch.Tensor:
        """``y = tau * (log z_k - log z_K + log delta)`` for ``k < K``, from ``log z`` of shape ``(..., K)``."""
        ratio = log_z[..., :-1] - log_z[..., -1:]
        return self.temperature.unsqueeze(-1) * (ratio + torch.log(self.delta).unsqueeze(-1))

    def rsample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        y = self.rsample_gaussian(sample_shape, generator)
        log_z = self.log_simplex(y)
        z = log_z.exp()
        # log z is a value auxiliary; y a path auxiliary (see SampleCache), else recomputed from log z
        keep_y = keeps_sample_path(z, (self.loc, self.scale, self.temperature, self.delta))
        self._remember("_cache", z, y if keep_y else None, log_z)
        return z

    # --- densities ------------------------------------------------------------------------------
    def gaussian_log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """``sum_k log N(y_k; loc_k, scale_k^2)`` over the ``K-1`` coordinates."""
        u = (y - self.loc) / self.scale
        return (-0.5 * u * u - torch.log(self.scale) - 0.5 * LOG_2PI).sum(-1)

    def log_prob_gaussian(self, y: torch.Tensor, log_z: torch.Tensor | None = None) -> torch.Tensor:
        """log p(z) at ``z = softmax++(y/tau)``, computed from ``y`` (density with respect to z)."""
        if log_z is None:
            log_z = self.log_simplex(y)
        k_minus_1 = self.num_categories - 1
        return self.gaussian_log_prob(y) + k_minus_1 * torch.log(self.temperature) - log_z.sum(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        record = self._recall("_cache", value)
        if record is not None:
            _, y, log_z = record
            if y is not None:
                return self.log_prob_gaussian(y, log_z)
        else:
            if self._validate_args:
                self._validate_sample(value)
            # zeros would give -inf here; the density there is 0 anyway (log z -> -inf faster
            # than the Gaussian term can compensate), so clamping only avoids inf - inf = nan.
            log_z = torch.log(value.clamp_min(torch.finfo(value.dtype).tiny))
        return self.log_prob_gaussian(self.inverse(log_z), log_z)

    _unavailable = {
        "mean": "E[softmax++(y / tau)] of a Gaussian y is a (K-1)-dimensional integral with no closed form; "
                "estimate it from samples",
        "variance": "no closed form (as the mean); estimate it from samples",
        "mode": "no closed form (the density's maximum on the simplex is not the image of the Gaussian's)",
        "entropy": "it needs E[log z_k] under the law, which has no closed form; estimate -log_prob from samples",
        "cdf": "the law is multivariate (on the simplex)",
        "icdf": "the law is multivariate (on the simplex)",
        "enumerate_support": "the law is continuous on the simplex",
    }

    def __repr__(self):
        return (f"{_NAME}(loc: {tuple(self.loc.shape)}, scale: {tuple(self.scale.shape)}, "
                f"temperature: {tuple(self.temperature.shape)}, K={self.num_categories})")


@register_kl(InvertibleGaussian, InvertibleGaussian)
def _kl_igr_igr(p: InvertibleGaussian, q: InvertibleGaussian) -> torch.Tensor:
    r"""KL(p || q) = KL(N(mu_p, sigma_p^2) || N(mu_q, sigma_q^2)) summed over the K-1 coordinates.

    Exact because KL is invariant under a shared bijection; p and q must share tau and delta.
    """
    if p.num_categories != q.num_categories:
        raise ValueError(f"KL({_NAME} || {_NAME}): K differs ({p.num_categories} vs {q.num_categories})")
    for name in ("temperature", "delta"):
        a, b = getattr(p, name), getattr(q, name)
        if not bool((a == b).all()):
            a0, b0 = torch.broadcast_tensors(a, b)
            i = (a0 != b0).reshape(-1).nonzero()[0, 0]
            raise NotImplementedError(
                f"kl_divergence({_NAME} || {_NAME}) has a closed form only when both share {name}; "
                f"got {a0.reshape(-1)[i].item():.6g} vs {b0.reshape(-1)[i].item():.6g}; use the Monte Carlo "
                f"estimate (p.log_prob(z) - q.log_prob(z)).mean() over z = p.sample((n,))"
            )
    return gaussian_kl(p.loc, p.scale, q.loc, q.scale)


def gaussian_kl(loc_p: torch.Tensor, scale_p: torch.Tensor, loc_q, scale_q) -> torch.Tensor:
    """KL(N(loc_p, scale_p^2) || N(loc_q, scale_q^2)) summed over the last dim (scales are std devs).

    The KL between two IGRs that share tau and delta; for callers that construct both themselves
    and so can skip the (host-synchronising) equality check of the registered KL.
    """
    var_ratio = (scale_p / scale_q).pow(2)
    t1 = ((loc_p - loc_q) / scale_q).pow(2)
    return (0.5 * (var_ratio + t1 - 1 - torch.log(var_ratio))).sum(-1)

