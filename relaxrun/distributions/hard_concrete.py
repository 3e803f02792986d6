r"""Hard Concrete (Louizos, Welling, Kingma 2018, "Learning Sparse Neural Networks through L0
Regularization", ICLR).

A Binary Concrete sample with location ``log_alpha`` and temperature ``beta`` is stretched to
(l, r) and clamped to [0, 1]:

.. math::
    u \sim U(0,1),\quad s = \sigma\!\left(\frac{\log u - \log(1-u) + \log\alpha}{\beta}\right),\quad
    \bar s = s\,(r - l) + l,\quad z = \min(1, \max(0, \bar s)).

Defaults follow the paper: beta = 2/3, (l, r) = (-0.1, 1.1). With the Binary Concrete CDF
:math:`Q(s) = \sigma(\beta\,\mathrm{logit}(s) - \log\alpha)` the law of z is mixed:

.. math::
    P(z = 0) = Q\!\left(\tfrac{-l}{r-l}\right) = \sigma\!\left(\beta\log\tfrac{-l}{r} - \log\alpha\right),\qquad
    P(z = 1) = 1 - Q\!\left(\tfrac{1-l}{r-l}\right) = \sigma\!\left(\log\alpha - \beta\log\tfrac{1-l}{r-1}\right),

and for 0 < z < 1 the stretched Binary Concrete density
:math:`p(z) = q_{BC}\big((z - l)/(r - l)\big) / (r - l)`. The L0 penalty of the paper (eq. 12) is
:math:`P(z \neq 0) = \sigma(\log\alpha - \beta\log(-l/r))` (:meth:`HardConcrete.prob_nonzero`).

``log_prob`` returns the log atom mass at exactly 0 or 1 and the log density inside (dominating
measure: Lebesgue on (0, 1) plus unit point masses at 0 and 1), so ``q.log_prob(z) - p.log_prob(z)``
for ``z ~ q`` is an unbiased single-sample estimate of KL(q || p) between two Hard Concretes.
Inside (0, 1) the pre-stretch value s stays in (-l/(r-l), (1-l)/(r-l)) = (1/12, 11/12) for the
defaults, so its logit is well conditioned and no sample cache is needed.
"""

from __future__ import annotations

import math
from numbers import Number

import torch
import torch.nn.functional as F
from torch.distributions import constraints, register_kl
from torch.distributions.utils import broadcast_all

from ._common import (BinaryProbsLogits, RelaxrunDistribution, SampleCache, atoms_and_density, check_positive, logit,
                      probs_or_logits)
from ._quadrature import compact_broadcast, logistic_expectation, logistic_log_density
from .binary_concrete import binary_concrete_logit_log_prob, sample_logistic

__all__ = ["HardConcrete"]


class HardConcrete(BinaryProbsLogits, SampleCache, RelaxrunDistribution):
    """Stretched-and-clamped Binary Concrete on [0, 1] with atoms at 0 and 1.

    Args:
        temperature: beta > 0 (default 2/3, the paper's; number or tensor, learnable if it requires
            grad). ``beta`` is an alias property.
        probs: sigmoid(log alpha), the probability P(s > 1/2) of the Binary Concrete before the
            stretch; or
        logits: log alpha (any finite real; ``log_alpha`` is an alias property). Exactly one of the two.
        l: lower stretch limit, a number < 0 (default -0.1).
        r: upper stretch limit, a number > 1 (default 1.1).

    Shapes: ``batch_shape`` is the broadcast shape of the parameters; ``event_shape`` is ``()``;
    ``rsample(sample_shape)`` returns ``sample_shape + batch_shape`` with an independent uniform for
    every element.
    """

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real,
                       "temperature": constraints.positive}
    support = constraints.unit_interval
    has_rsample = True
    _expand_params = {"probs": 0, "logits": 0, "temperature": 0}
    _expand_copy = ("l", "r")
    _draw = None  # (z, y, logistic noise) of the latest rsample, when the shortcut is valid
    _unavailable = {"mode": "the law is bimodal for small temperatures (atoms at 0 and 1 and a density between)",
                    "enumerate_support": "the law has atoms at 0 and 1 and a density on (0, 1): no finite support"}

    def __init__(self, temperature=2.0 / 3.0, probs=None, logits=None, l=-0.1, r=1.1, validate_args=None):
        name = "HardConcrete"
        for arg, val, ok, rng in (("l", l, lambda v: v < 0, "< 0"), ("r", r, lambda v: v > 1, "> 1")):
            if not isinstance(val, Number) or isinstance(val, bool) or not math.isfinite(val) or not ok(val):
                raise ValueError(f"{name}: {arg} must be a finite number {rng}; got {val!r}")
        pname, param = probs_or_logits(probs, logits, name, is_binary=True)
        temperature = check_positive(temperature, "temperature", name, like=param, validate=validate_args is not False)
        temperature, param = broadcast_all(temperature, param)
        self.temperature = temperature
        setattr(self, pname, param)
        self.l, self.r = float(l), float(r)
        super().__init__(param.shape, validate_args=validate_args)

    @property
    def log_alpha(self) -> torch.Tensor:
        """Alias of ``logits``: Louizos et al.'s log alpha, the Binary Concrete location before stretching."""
        return self.logits

    @property
    def beta(self) -> torch.Tensor:
        """Alias of ``temperature`` (Louizos et al.'s beta)."""
        return self.temperature

    # -- sampling -------------------------------------------------------------------------------
    def rsample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        noise = sample_logistic(shape, self.log_alpha.dtype, self.log_alpha.device, generator)
        y = (self.log_alpha + noise) / self.beta
        z = torch.clamp(torch.sigmoid(y) * (self.r - self.l) + self.l, 0.0, 1.0)
        # log_prob has a shortcut at this very sample; it equals the general formula as a function of
        # the parameters only if the sample carries its autograd history (not so for sample())
        self._remember_path("_draw", (self.log_alpha, self.beta), z, y, noise)
        return z

    # -- the law --------------------------------------------------------------------------------
    def _gap0(self) -> torch.Tensor:
        # log_alpha - beta * logit(-l/(r-l));  logit(-l/(r-l)) = log(-l/r)
        return self.log_alpha - self.beta * math.log(-self.l / self.r)

    def _gap1(self) -> torch.Tensor:
        # log_alpha - beta * logit((1-l)/(r-l));  logit((1-l)/(r-l)) = log((1-l)/(r-1))
        return self.log_alpha - self.beta * math.log((1 - self.l) / (self.r - 1))

    def log_prob_zero(self) -> torch.Tensor:
        """log P(z = 0) = log sigmoid(beta log(-l/r) - log_alpha), shape ``batch_shape``."""
        return F.logsigmoid(-self._gap0())

    def log_prob_one(self) -> torch.Tensor:
        """log P(z = 1) = log sigmoid(log_alpha - beta log((1-l)/(r-1))), shape ``batch_shape``."""
        return F.logsigmoid(self._gap1())

    def prob_nonzero(self) -> torch.Tensor:
        """P(z != 0) = sigmoid(log_alpha - beta log(-l/r)) (Louizos et al. eq. 12), shape ``batch_shape``."""
        return torch.sigmoid(self._gap0())

    def expected_l0(self) -> torch.Tensor:
        """Alias of :meth:`prob_nonzero`: the per-gate expected L0 term."""
        return self.prob_nonzero()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log atom mass at z = 0 or 1, stretched Binary Concrete log density inside, -inf outside."""
        if self._validate_args:
            self._validate_sample(value)
        width = self.r - self.l
        draw = self._recall("_draw", value)
        if draw is not None:
            inside = self._density_at_own_draw(draw) - math.log(width)
        else:
            value = torch.as_tensor(value, dtype=self.log_alpha.dtype, device=self.log_alpha.device)
            # clamping keeps the (discarded) density branch finite at the atoms and outside [0, 1]
            s = ((value.clamp(0.0, 1.0) - self.l) / width)
            inside = binary_concrete_logit_log_prob(logit(s), self.log_alpha, self.beta) - math.log(width)
        return atoms_and_density(value, self.log_prob_zero(), self.log_prob_one(), inside)

    def _density_at_own_draw(self, draw) -> torch.Tensor:
        """Binary Concrete log density of the unstretched sample, from the stored draw.

        The sample's logit is ``y = (log_alpha + u) / beta`` with logistic noise ``u``, so the
        density's ``a = log_alpha - beta y`` is ``-u``: ``a - 2 softplus(a)`` is a constant of the
        parameters along the sample path (zero gradient) and is taken from the noise without
        autograd, and ``y`` needs no recomputation from the clamped, stretched value (where it also
        keeps the precision that rounding ``sigmoid(y)`` loses). Same value and gradients as the
        general formula.
        """
        _, y, u = draw
        with torch.no_grad():
            a_part = -u - 2 * F.softplus(-u)
        return torch.log(self.beta) + a_part + F.softplus(y) + F.softplus(-y)

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """P(z <= x) = sigmoid(beta logit((x - l)/(r - l)) - log_alpha) for 0 <= x < 1; 1 for x >= 1."""
        value = torch.as_tensor(value, dtype=self.log_alpha.dtype, device=self.log_alpha.device)
        s = (value.clamp(0.0, 1.0) - self.l) / (self.r - self.l)
        c = torch.sigmoid(self.beta * logit(s) - self.log_alpha)
        c = torch.where(value >= 1, torch.ones_like(c), c)
        return torch.where(value < 0, torch.zeros_like(c), c)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """Quantile function inf{x : P(z <= x) >= q}: the stretched Binary Concrete quantile clamped to
        [0, 1] (0 for q <= P(z = 0), 1 for q > 1 - P(z = 1))."""
        q = torch.as_tensor(value, dtype=self.logits.dtype, device=self.logits.device)
        s = torch.sigmoid((self.logits + logit(q)) / self.temperature)
        return torch.clamp(s * (self.r - self.l) + self.l, 0.0, 1.0)

    # -- moments, entropy: the atoms plus a 1-D quadrature over the logit y of the open part --------
    def _open_part(self):
        """(loc, scale, y0, y1): y = logit(s) ~ Logistic(log_alpha / beta, 1 / beta) in float64, and the
        interval (y0, y1) of y where 0 < z < 1 (z = sigmoid(y) (r - l) + l)."""
        t = self.temperature.to(torch.float64)
        y0 = math.log(-self.l / self.r)  # logit(-l / (r - l))
        y1 = math.log((1 - self.l) / (self.r - 1))  # logit((1 - l) / (r - l))
        return self.logits.to(torch.float64) / t, t.reciprocal(), y0, y1

    def _stretch(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(y) * (self.r - self.l) + self.l

    @property
    def mean(self) -> torch.Tensor:
        """E[z] = P(z = 1) + E[z 1{0 < z < 1}], the open part by quadrature."""
        loc, scale, y0, y1 = self._open_part()
        inner = logistic_expectation(self._stretch, loc, scale, y0, y1)
        return (self.log_prob_one().to(torch.float64).exp() + inner).to(self.logits.dtype)

    @property
    def variance(self) -> torch.Tensor:
        """E[(z - E z)^2] = P(z = 0) m^2 + P(z = 1)(1 - m)^2 + E[(z - m)^2 1{0 < z < 1}]."""
        loc, scale, y0, y1 = self._open_part()
        p1 = self.log_prob_one().to(torch.float64).exp()
        p0 = self.log_prob_zero().to(torch.float64).exp()
        m = p1 + logistic_expectation(self._stretch, loc, scale, y0, y1)
        mm = m.unsqueeze(-1)
        inner = logistic_expectation(lambda y: (self._stretch(y) - mm) ** 2, loc, scale, y0, y1)
        return (p0 * m * m + p1 * (1 - m) ** 2 + inner).to(self.logits.dtype)

    def entropy(self) -> torch.Tensor:
        """Entropy with respect to the dominating measure of ``log_prob`` (Lebesgue on (0, 1) plus unit
        atoms at 0 and 1): -P0 log P0 - P1 log P1 - E[log p(z) 1{0 < z < 1}], the last by quadrature
        (log p(z) = log p(y) - log((r - l) sigmoid'(y)))."""
        loc, scale, y0, y1 = self._open_part()
        lp0, lp1 = self.log_prob_zero().to(torch.float64), self.log_prob_one().to(torch.float64)
        lo, sc = loc.unsqueeze(-1), scale.unsqueeze(-1)
        width = math.log(self.r - self.l)

        def neg_log_density(y):
            log_jac = width - F.softplus(y) - F.softplus(-y)
            return log_jac - logistic_log_density(y, lo, sc)

        inner = logistic_expectation(neg_log_density, loc, scale, y0, y1)
        return (-lp0.exp() * lp0 - lp1.exp() * lp1 + inner).to(self.logits.dtype)

    def __repr__(self):
        return (f"HardConcrete(temperature: {tuple(self.temperature.shape)}, logits: {tuple(self.logits.shape)}, "
                f"l={self.l}, r={self.r})")


@register_kl(HardConcrete, HardConcrete)
def _kl_hard_concrete(p: HardConcrete, q: HardConcrete) -> torch.Tensor:
    """KL(p || q) for the same stretch (l, r), any locations and temperatures: the atoms' terms
    P0 log(P0/Q0) + P1 log(P1/Q1) plus the open part, the integral over y0 < y < y1 of
    p(y) log(p(y)/q(y)) (the map from y to z is shared, so its Jacobian cancels), by quadrature."""
    if (p.l, p.r) != (q.l, q.r):
        raise NotImplementedError(
            f"kl_divergence(HardConcrete || HardConcrete) needs the same stretch (l, r); got {(p.l, p.r)} and "
            f"{(q.l, q.r)} (the supports' atoms differ in meaning); use the Monte Carlo estimate "
            f"(p.log_prob(z) - q.log_prob(z)).mean() over z = p.sample((n,))")
    (lp, tp, lq, tq), shape = compact_broadcast(p.logits, p.temperature, q.logits, q.temperature)
    p = HardConcrete(tp, logits=lp, l=p.l, r=p.r, validate_args=False)
    q = HardConcrete(tq, logits=lq, l=q.l, r=q.r, validate_args=False)
    loc_p, scale_p, y0, y1 = p._open_part()
    loc_q, scale_q, _, _ = q._open_part()
    args = (loc_p.unsqueeze(-1), scale_p.unsqueeze(-1), loc_q.unsqueeze(-1), scale_q.unsqueeze(-1))

    def log_ratio(y):
        return logistic_log_density(y, args[0], args[1]) - logistic_log_density(y, args[2], args[3])

    inner = logistic_expectation(log_ratio, loc_p, scale_p, y0, y1)
    lp0, lq0 = p.log_prob_zero().to(torch.float64), q.log_prob_zero().to(torch.float64)
    lp1, lq1 = p.log_prob_one().to(torch.float64), q.log_prob_one().to(torch.float64)
    atoms = lp0.exp() * (lp0 - lq0) + lp1.exp() * (lp1 - lq1)
    return (atoms + inner).to(p.logits.dtype).expand(shape)
