r"""Gaussian-based stochastic gates (Yamada, Lindenbaum, Negahban, Kluger 2020, "Feature
Selection using Stochastic Gates", ICML).

A gate is a clipped Gaussian:

.. math::
    \epsilon \sim N(0, 1),\qquad z = \min(1, \max(0, \mu + \sigma\epsilon)).

Its law is mixed: two atoms and a Gaussian density in between,

.. math::
    P(z = 0) = \Phi(-\mu/\sigma),\qquad P(z = 1) = \Phi((\mu - 1)/\sigma),\qquad
    p(z) = \frac{1}{\sigma}\,\varphi\!\left(\frac{z - \mu}{\sigma}\right)\ \text{for}\ 0 < z < 1.

``log_prob`` is taken with respect to one dominating measure, Lebesgue measure on (0, 1) plus unit
point masses at 0 and 1: it returns the log atom mass at exactly 0 or 1 and the log density
inside. So for two gates q and p, ``q.log_prob(z) - p.log_prob(z)`` at ``z ~ q`` is an unbiased
single-sample estimate of KL(q || p).

The expected L0 norm (Yamada et al., eq. 6) is :math:`\sum_i P(z_i > 0) = \sum_i \Phi(\mu_i/\sigma_i)`;
:meth:`StochasticGate.expected_l0` returns the per-gate terms.

``rsample`` is the pathwise sample: gradients reach ``mu`` and ``sigma`` (when it is a tensor that
requires grad) through the unclipped part, and are zero where the gate is clipped, exactly as
the derivative of ``z`` with respect to the parameters is.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints, register_kl
from torch.distributions.utils import broadcast_all

from ._common import DeclaredExpand, RelaxrunDistribution, SampleCache, as_tensor, atoms_and_density, check_positive, normal_noise

__all__ = ["StochasticGate"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _std_normal_density(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x - _HALF_LOG_2PI)


class StochasticGate(DeclaredExpand, SampleCache, RelaxrunDistribution):
    """Clipped-Gaussian gate z = clamp(mu + sigma * eps, 0, 1), eps ~ N(0, 1).

    Args:
        mu: gate mean (any finite real; Yamada et al. initialise it at 0.5).
        sigma: noise scale > 0 (a number, or a tensor — learnable if it requires grad).
            Yamada et al. use 0.5.

    Shapes: ``batch_shape`` is the broadcast shape of ``mu`` and ``sigma``; ``event_shape`` is
    ``()``; ``rsample(sample_shape)`` returns ``sample_shape + batch_shape`` with independent
    noise in every element.
    """

    arg_constraints = {"mu": constraints.real, "sigma": constraints.positive}
    support = constraints.unit_interval
    has_rsample = True
    _expand_params = {"mu": 0, "sigma": 0}
    _draw = None  # (z, standard normal noise) of the latest rsample, when the shortcut is valid

    def __init__(self, mu, sigma=0.5, validate_args=None):
        mu = as_tensor(mu, name="mu", dist="StochasticGate")
        sigma = check_positive(sigma, "sigma", "StochasticGate", like=mu, validate=validate_args is not False)
        self.mu, self.sigma = broadcast_all(mu, sigma)
        super().__init__(self.mu.shape, validate_args=validate_args)

    # -- sampling -------------------------------------------------------------------------------
    def rsample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = normal_noise(shape, self.mu.dtype, self.mu.device, generator)
        z = torch.clamp(self.mu + self.sigma * eps, 0.0, 1.0)
        # log_prob has a shortcut at this very sample; it equals the general formula as a function of
        # the parameters only if the sample carries its autograd history (not so for sample())
        self._remember_path("_draw", (self.mu, self.sigma), z, eps)
        return z

    # -- the law --------------------------------------------------------------------------------
    def log_prob_zero(self) -> torch.Tensor:
        """log P(z = 0) = log Phi(-mu / sigma), shape ``batch_shape``."""
        # log_ndtr keeps the far tail: Phi(-40) underflows, its log (about -804) does not
        return torch.special.log_ndtr(-self.mu / self.sigma)

    def log_prob_one(self) -> torch.Tensor:
        """log P(z = 1) = log Phi((mu - 1) / sigma), shape ``batch_shape``."""
        return torch.special.log_ndtr((self.mu - 1) / self.sigma)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log atom mass at z = 0 or z = 1, log Gaussian density for 0 < z < 1, -inf outside [0, 1]."""
        if self._validate_args:
            self._validate_sample(value)
        draw = self._recall("_draw", value)
        if draw is not None:
            # at its own sample (value - mu) / sigma is the noise itself wherever the gate is open:
            # -x^2 / 2 is then a constant of the parameters along the sample path (zero gradient)
            x = draw[1]
        else:
            value = torch.as_tensor(value, dtype=self.mu.dtype, device=self.mu.device)
            x = (value - self.mu) / self.sigma
        inside = -0.5 * x * x - torch.log(self.sigma) - _HALF_LOG_2PI
        return atoms_and_density(value, self.log_prob_zero(), self.log_prob_one(), inside)

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """P(z <= x) = Phi((x - mu)/sigma) for 0 <= x < 1 (this includes the atom at 0), 1 for x >= 1."""
        value = torch.as_tensor(value, dtype=self.mu.dtype, device=self.mu.device)
        c = torch.special.ndtr((value - self.mu) / self.sigma)
        c = torch.where(value >= 1, torch.ones_like(c), c)
        return torch.where(value < 0, torch.zeros_like(c), c)

    def prob_nonzero(self) -> torch.Tensor:
        """P(z > 0) = Phi(mu / sigma), shape ``batch_shape`` (differentiable in mu and sigma)."""
        return torch.special.ndtr(self.mu / self.sigma)

    def expected_l0(self) -> torch.Tensor:
        """Per-gate expected L0 term Phi(mu/sigma) (Yamada et al. 2020, eq. 6); sum it for the penalty."""
        return self.prob_nonzero()

    @property
    def mean(self) -> torch.Tensor:
        r"""E[z] = \int_0^1 P(z > t) dt = sigma [G(mu/sigma) - G((mu-1)/sigma)], G(a) = a Phi(a) + phi(a)."""
        def G(a):
            return a * torch.special.ndtr(a) + torch.exp(-0.5 * a * a - _HALF_LOG_2PI)

        return self.sigma * (G(self.mu / self.sigma) - G((self.mu - 1) / self.sigma))

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """Quantile function inf{x : P(z <= x) >= q} = clamp(mu + sigma Phi^{-1}(q), 0, 1)."""
        q = torch.as_tensor(value, dtype=self.mu.dtype, device=self.mu.device)
        return torch.clamp(self.mu + self.sigma * torch.special.ndtri(q), 0.0, 1.0)

    def _open_moments(self):
        r"""(a, b, P(0 < z < 1), E[x 1{a<x<b}], E[x^2 1{a<x<b}]) for x = (z - mu)/sigma standard normal,
        a = -mu/sigma, b = (1 - mu)/sigma: :math:`\int_a^b x\varphi = \varphi(a) - \varphi(b)`,
        :math:`\int_a^b x^2\varphi = \Phi(b) - \Phi(a) + a\varphi(a) - b\varphi(b)`."""
        a, b = -self.mu / self.sigma, (1 - self.mu) / self.sigma
        phi_a, phi_b = _std_normal_density(a), _std_normal_density(b)
        mass = torch.special.ndtr(b) - torch.special.ndtr(a)
        return a, b, mass, phi_a - phi_b, mass + a * phi_a - b * phi_b

    @property
    def variance(self) -> torch.Tensor:
        """E[z^2] - E[z]^2 with E[z^2] = P(z = 1) + E[(mu + sigma x)^2 1{0 < z < 1}] (closed form)."""
        _, _, mass, m1, m2 = self._open_moments()
        second = self.log_prob_one().exp() + self.mu ** 2 * mass + 2 * self.mu * self.sigma * m1 + self.sigma ** 2 * m2
        return second - self.mean ** 2

    def entropy(self) -> torch.Tensor:
        """Entropy with respect to the dominating measure of ``log_prob`` (Lebesgue on (0, 1) plus unit
        atoms at 0 and 1): -P0 log P0 - P1 log P1 + (log sigma + log(2 pi)/2) P(0<z<1) + E[x^2 1{.}]/2."""
        _, _, mass, _, m2 = self._open_moments()
        lp0, lp1 = self.log_prob_zero(), self.log_prob_one()
        return -lp0.exp() * lp0 - lp1.exp() * lp1 + (torch.log(self.sigma) + _HALF_LOG_2PI) * mass + 0.5 * m2

    _unavailable = {"mode": "the law has atoms at 0 and 1 and a density between; no single mode in general",
                    "enumerate_support": "the law has atoms at 0 and 1 and a density on (0, 1): no finite support"}

    def __repr__(self):
        return f"StochasticGate(mu: {tuple(self.mu.shape)}, sigma: {tuple(self.sigma.shape)})"


@register_kl(StochasticGate, StochasticGate)
def _kl_stochastic_gate(p: StochasticGate, q: StochasticGate) -> torch.Tensor:
    """KL(p || q), closed form: the atoms' terms P0 log(P0/Q0) + P1 log(P1/Q1) plus the open part,
    where log p(z) - log q(z) = log(sigma_q/sigma_p) - x^2/2 + (mu_p + sigma_p x - mu_q)^2 / (2 sigma_q^2)
    is a quadratic in x = (z - mu_p)/sigma_p, integrated against the standard normal over (a, b)."""
    _, _, mass, m1, m2 = p._open_moments()
    c = (p.mu - q.mu) / q.sigma
    k = p.sigma / q.sigma
    # (c + k x)^2 / 2 - x^2 / 2 + log(sigma_q / sigma_p)
    inner = (torch.log(q.sigma / p.sigma) + 0.5 * c * c) * mass + c * k * m1 + 0.5 * (k * k - 1) * m2
    lp0, lq0, lp1, lq1 = p.log_prob_zero(), q.log_prob_zero(), p.log_prob_one(), q.log_prob_one()
    return lp0.exp() * (lp0 - lq0) + lp1.exp() * (lp1 - lq1) + inner
