r"""Generalized Gumbel-Softmax: a relaxed discrete law over a finite set of real values
(Joo, Kim, Shin & Moon 2020, "Generalized Gumbel-Softmax gradient estimator for generic discrete
random variables", arXiv:2003.01847).

A discrete random variable X with values :math:`v_0, \dots, v_{K-1}` (real, distinct) and
probabilities :math:`\pi_k` is the linear map of a one-hot categorical: :math:`X = \sum_k c_k v_k`
with :math:`c \sim \mathrm{OneHotCat}(\pi)` (the paper's reparameterisation by a linear
transformation, Sec. 3). Relaxing the one-hot by Gumbel-Softmax (Jang et al. 2017; Maddison et al.
2017) gives the generalized Gumbel-Softmax (GenGS) sample

.. math::
    g_k \sim \mathrm{Gumbel}(0, 1),\quad w = \mathrm{softmax}\big((\log\pi + g) / \tau\big),\quad
    z = \sum_k w_k v_k ,

a differentiable function of :math:`\pi` lying between :math:`\min_k v_k` and :math:`\max_k v_k`.
With the same noise the exact draw is :math:`v_{k^*}`, :math:`k^* = \arg\max_k(\log\pi_k + g_k)`
(Gumbel-max), and :math:`z \to v_{k^*}` as :math:`\tau \to 0`. ``hard=True`` returns
:math:`v_{k^*}` forward with the gradient of z (straight-through).

Laws with infinite support are truncated first (the paper's truncated distribution, Sec. 3): the
classmethods :meth:`GeneralizedGumbelSoftmax.poisson` and :meth:`~GeneralizedGumbelSoftmax.geometric`
keep the counts :math:`0, \dots, K-1`, with K the smallest level (at least :data:`MIN_SUPPORT`) at
which the dropped tail :math:`P(X \ge K)` of the untruncated law is at most ``tol`` (default
:data:`DEFAULT_TOL`) for every element of the batch; the Poisson tail grows with the rate and the
geometric tail shrinks with the success probability, so K is set by the largest rate / smallest
probability. The dropped mass of every element is the attribute ``dropped_mass``. The kept law is
**renormalised**: :math:`\pi_k = p(k) / P(X \le K-1)`, the law of X conditioned on X < K. (The
paper's definition instead puts the dropped mass on the last point; both are within total
variation ``dropped_mass`` of the untruncated law. Renormalising keeps the law an exponential
family on the kept support, :math:`\log\pi_k = k\theta + h(k) - A(\theta)`, with no atom at K-1.)
:meth:`~GeneralizedGumbelSoftmax.binomial` keeps 0..n and drops nothing unless ``support_size``
truncates it. A ``support_size`` given explicitly overrides the tolerance (the dropped mass is then
whatever it is, still reported).

``log_prob`` is the exact log-probability of the (truncated) discrete law at a support value;
``kl_divergence`` of two such laws on the same support is the exact sum over the support
(:func:`discrete_kl`, registered with :func:`torch.distributions.kl.register_kl`). The relaxed
sample has a density too, but it is not implemented here: ``log_prob`` of a value that is not a
support point is refused (or ``-inf`` with ``validate_args=False``).

Shapes: ``support_values`` is ``[K]``, shared by every element; ``batch_shape`` is
``logits.shape[:-1]`` broadcast with the temperature's shape; ``event_shape = ()`` (one real number
per element).
"""

from __future__ import annotations

import math
from numbers import Integral

import torch
from torch.distributions import constraints
from torch.distributions.kl import register_kl
from torch.distributions.utils import lazy_property

from ._common import CategoricalProbsLogits, RelaxrunDistribution, as_tensor, check_positive, probs_or_logits
from .concrete import log_softmax
from .gumbel import sample_gumbel

__all__ = ["GeneralizedGumbelSoftmax", "discrete_kl", "poisson_support_size", "geometric_support_size",
           "DEFAULT_TOL", "MIN_SUPPORT"]

#: default bound on the tail mass a truncation may drop
DEFAULT_TOL = 1e-6
#: the smallest support a truncation keeps (a one-point law has nothing to relax)
MIN_SUPPORT = 2

_NAME = "GeneralizedGumbelSoftmax"


class _SupportPoints(constraints.Constraint):
    """The finite set ``{v_0, ..., v_{K-1}}`` (exact equality)."""

    is_discrete = True
    event_dim = 0

    def __init__(self, values: torch.Tensor):
        self.values = values
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return (value.unsqueeze(-1) == self.values).any(-1)

    def __repr__(self):
        return f"{type(self).__name__}(K={self.values.numel()})"


def _check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < tol < 1):
        raise ValueError(f"{_NAME}: tol must lie in (0, 1); got {tol!r}")
    return float(tol)


def _check_int(x, name: str, low: int) -> int:
    if isinstance(x, bool) or not isinstance(x, Integral) or x < low:
        raise ValueError(f"{_NAME}: {name} must be an integer >= {low}; got {x!r}")
    return int(x)


def _smallest_support(tail, tol: float) -> int:
    """The smallest K >= MIN_SUPPORT with ``tail(K) <= tol``, for a tail non-increasing in K that tends
    to 0 (doubling, then bisection: O(log K) evaluations)."""
    if tail(MIN_SUPPORT) <= tol:
        return MIN_SUPPORT
    lo, hi = MIN_SUPPORT, 2 * MIN_SUPPORT
    while tail(hi) > tol:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # invariant: tail(lo) > tol >= tail(hi)
        mid = (lo + hi) // 2
        if tail(mid) > tol:
            lo = mid
        else:
            hi = mid
    return hi


def _poisson_tail(k, rate: torch.Tensor) -> torch.Tensor:
    """P(X >= k) for X ~ Poisson(rate): the regularised lower incomplete gamma P(k, rate), k >= 1."""
    k = torch.as_tensor(k, dtype=torch.float64)
    return torch.special.gammainc(k, rate.to(torch.float64))


def poisson_support_size(rate: float, tol: float = DEFAULT_TOL) -> int:
    """The truncation level K of Poisson(rate) at tolerance ``tol``: the smallest K >= MIN_SUPPORT with
    P(X >= K) <= tol. The tail grows with the rate, so K of the largest rate serves every smaller one."""
    tol = _check_tol(tol)
    rate = float(rate)
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{_NAME}: rate must be finite and > 0; got {rate:.6g}")
    r = torch.tensor(rate, dtype=torch.float64)
    return _smallest_support(lambda k: float(_poisson_tail(k, r)), tol)


def geometric_support_size(probs: float, tol: float = DEFAULT_TOL) -> int:
    """The truncation level K of the geometric law P(X = k) = p (1 - p)^k (failures before the first
    success) at tolerance ``tol``: the smallest K >= MIN_SUPPORT with P(X >= K) = (1 - p)^K <= tol. The
    tail shrinks as p grows, so K of the smallest p serves every larger one."""
    tol = _check_tol(tol)
    p = float(probs)
    if not (0 < p <= 1):
        raise ValueError(f"{_NAME}: probs must lie in (0, 1]; got {p:.6g}")
    log_q = math.log1p(-p) if p < 1 else -math.inf
    return _smallest_support(lambda k: math.exp(k * log_q) if log_q > -math.inf else 0.0, tol)


def discrete_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_k p_k (log p_k - log q_k) of two categorical laws over the last dimension, from
    their (not necessarily normalised) logits; a term with p_k = 0 is 0, one with p_k > 0 = q_k is inf."""
    lp = torch.log_softmax(logits_p, -1)
    lq = torch.log_softmax(logits_q, -1)
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros((), dtype=p.dtype, device=p.device))
    return terms.sum(-1)


class GeneralizedGumbelSoftmax(CategoricalProbsLogits, RelaxrunDistribution):
    """A discrete law over K real values, relaxed by Gumbel-Softmax over the K points (GenGS).

    Args:
        temperature: tau > 0, broadcastable with ``batch_shape``.
        support_values: ``[K]`` distinct finite real values v_0..v_{K-1} (shared by all elements).
        probs: ``[..., K]`` probabilities of the K values (normalised if they do not sum to 1); or
        logits: ``[..., K]`` unnormalised log-probabilities. Exactly one of the two.
        hard: False: :meth:`rsample` is the relaxed value ``sum_k w_k v_k``; True: the exact value
            ``v_argmax`` forward, the relaxed value's gradient backward (straight-through).

    Truncated count laws: :meth:`poisson`, :meth:`geometric`, :meth:`binomial` (see the module
    docstring for the truncation rule). Attributes: ``support_values``, ``temperature``, ``hard``,
    ``family`` (``"poisson"``, ``"geometric"``, ``"binomial"`` or None), ``tol`` (the truncation
    tolerance, None where K was given or nothing is truncated) and ``dropped_mass`` (``batch_shape``:
    the untruncated law's mass outside the kept support; 0 for a law given by probs/logits).
    """

    arg_constraints = {
        "probs": constraints.simplex,
        "logits": constraints.real_vector,
        "temperature": constraints.positive,
    }
    has_rsample = True
    has_enumerate_support = True
    _expand_params = {"probs": 1, "logits": 1, "temperature": 0, "_family_param": 0}
    _expand_copy = ("support_values", "hard", "family", "tol", "total_count")

    def __init__(self, temperature, support_values, probs=None, logits=None, hard: bool = False,
                 validate_args=None):
        name, param = probs_or_logits(probs, logits, _NAME, is_binary=False)
        if param.dim() < 1:
            raise ValueError(f"{_NAME}: probs/logits must have at least one dimension (the K support points)")
        validate = validate_args is not False
        if name == "probs":
            if validate and torch.isfinite(param).all() and not bool((param >= 0).all()):
                raise ValueError(f"{_NAME}: probs must be non-negative and sum to 1 along the last dimension")
            param = param / param.sum(-1, keepdim=True)
        else:
            if validate and bool(torch.isnan(param).any()):
                raise ValueError(f"{_NAME}: logits must not be NaN")
            param = torch.log_softmax(param, -1)  # normalised: log_prob reads them directly
        values = as_tensor(support_values, like=param, name="support_values", dist=_NAME)
        if values.dim() != 1 or values.numel() != param.shape[-1]:
            raise ValueError(f"{_NAME}: support_values must be a 1-d tensor of the K = {param.shape[-1]} values "
                             f"(the last dimension of probs/logits); got shape {tuple(values.shape)}")
        if validate and not bool(torch.isfinite(values).all()):
            raise ValueError(f"{_NAME}: support_values must be finite real numbers")
        if validate and torch.unique(values).numel() != values.numel():
            raise ValueError(f"{_NAME}: support_values must be distinct")
        if not isinstance(hard, bool):
            raise ValueError(f"{_NAME}: hard must be True or False; got {hard!r}")
        temperature = check_positive(temperature, "temperature", _NAME, like=param, validate=validate)
        batch_shape = torch.broadcast_shapes(temperature.shape, param.shape[:-1])
        self.temperature = temperature.expand(batch_shape)
        setattr(self, name, param.expand(batch_shape + param.shape[-1:]))
        self.support_values = values.to(dtype=param.dtype, device=param.device)
        self.hard = hard
        self.family = None
        self.tol = None
        self.total_count = None
        super().__init__(batch_shape, torch.Size(), validate_args=validate_args)

    # truncated count laws -------------------------------------------------------------------------
    @classmethod
    def poisson(cls, temperature, rate=None, log_rate=None, tol: float = DEFAULT_TOL, support_size: int | None = None,
                hard: bool = False, validate_args=None) -> "GeneralizedGumbelSoftmax":
        """Poisson(rate) truncated to the counts 0..K-1 and renormalised: pi_k proportional to
        rate^k / k!. Give ``rate`` (> 0) or ``log_rate`` (any finite real; exact where the rate would
        underflow). K: ``support_size`` if given, else :func:`poisson_support_size` of the largest rate."""
        if (rate is None) == (log_rate is None):
            raise ValueError(f"{_NAME}: give exactly one of rate or log_rate "
                             f"(got {'both' if rate is not None else 'neither'})")
        validate = validate_args is not False
        if rate is not None:
            rate = check_positive(rate, "rate", _NAME, validate=validate)
            log_rate = torch.log(rate)
        else:
            log_rate = as_tensor(log_rate, name="log_rate", dist=_NAME)
            if validate and not bool(torch.isfinite(log_rate).all()):
                bad = log_rate.detach().reshape(-1)[~torch.isfinite(log_rate.detach().reshape(-1))][0].item()
                raise ValueError(f"{_NAME}: log_rate must be finite real numbers; got {bad:.6g}")
        if support_size is None:
            tol = _check_tol(tol)
            k = poisson_support_size(float(log_rate.detach().max().exp()), tol)
        else:
            k, tol = _check_int(support_size, "support_size", 1), None
        counts = torch.arange(k, dtype=log_rate.dtype, device=log_rate.device)
        # log pmf of the untruncated law up to its constant -rate (which the renormalisation removes, and
        # which would overflow for a huge log_rate): k log(rate) - log k!
        log_pmf = counts * log_rate.unsqueeze(-1) - torch.lgamma(counts + 1)
        return cls._from_log_pmf(temperature, counts, log_pmf, hard, validate_args)._as_family("poisson", log_rate, tol)

    @classmethod
    def geometric(cls, temperature, probs=None, logits=None, tol: float = DEFAULT_TOL, support_size: int | None = None,
                  hard: bool = False, validate_args=None) -> "GeneralizedGumbelSoftmax":
        """The geometric law P(X = k) = p (1 - p)^k of the number of failures before the first success
        (scipy's ``geom(p, loc=-1)``), truncated to 0..K-1 and renormalised. Give the success
        probability ``probs`` p in (0, 1] or its log-odds ``logits`` (finite). K: ``support_size`` if
        given, else :func:`geometric_support_size` of the smallest p."""
        name, param = probs_or_logits(probs, logits, _NAME, is_binary=True)
        validate = validate_args is not False
        if name == "probs":
            if validate and not bool(((param > 0) & (param <= 1)).all()):
                bad = param.detach().reshape(-1)[~((param > 0) & (param <= 1)).reshape(-1)][0].item()
                raise ValueError(f"{_NAME}: probs must lie in (0, 1]; got {bad:.6g}")
            log_p = torch.log(param)
            logits = log_p - torch.log1p(-param)  # +inf at p = 1: kept only for dropped_mass
        else:
            if validate and not bool(torch.isfinite(param).all()):
                bad = param.detach().reshape(-1)[~torch.isfinite(param.detach()).reshape(-1)][0].item()
                raise ValueError(f"{_NAME}: logits must be finite real numbers; got {bad:.6g}")
            log_p, log_q = torch.nn.functional.logsigmoid(param), torch.nn.functional.logsigmoid(-param)
            logits = param
        if support_size is None:
            tol = _check_tol(tol)
            k = geometric_support_size(float(log_p.detach().min().exp()), tol)
        else:
            k, tol = _check_int(support_size, "support_size", 1), None
        counts = torch.arange(k, dtype=param.dtype, device=param.device)
        if name == "probs":  # xlogy: k log(1 - p) is 0 at k = 0 also where p = 1
            log_pmf = log_p.unsqueeze(-1) + torch.xlogy(counts, (1 - param).unsqueeze(-1))
        else:
            log_pmf = log_p.unsqueeze(-1) + counts * log_q.unsqueeze(-1)
        return cls._from_log_pmf(temperature, counts, log_pmf, hard, validate_args)._as_family("geometric", logits, tol)

    @classmethod
    def binomial(cls, temperature, total_count: int, probs=None, logits=None, support_size: int | None = None,
                 hard: bool = False, validate_args=None) -> "GeneralizedGumbelSoftmax":
        """Binomial(n = ``total_count``, p) over 0..n (nothing dropped), or truncated to 0..K-1 and
        renormalised when ``support_size`` K <= n is given. ``probs`` p in [0, 1] or ``logits`` (finite)."""
        n = _check_int(total_count, "total_count", 1)
        name, param = probs_or_logits(probs, logits, _NAME, is_binary=True)
        validate = validate_args is not False
        counts_all = torch.arange(n + 1, dtype=param.dtype, device=param.device)
        log_choose = math.lgamma(n + 1) - torch.lgamma(counts_all + 1) \
            - torch.lgamma(n - counts_all + 1)
        if name == "probs":
            if validate and not bool(((param >= 0) & (param <= 1)).all()):
                bad = param.detach().reshape(-1)[~((param >= 0) & (param <= 1)).reshape(-1)][0].item()
                raise ValueError(f"{_NAME}: probs must lie in [0, 1]; got {bad:.6g}")
            p = param.unsqueeze(-1)
            log_pmf = log_choose + torch.xlogy(counts_all, p) + torch.xlogy(n - counts_all, 1 - p)
            logits = torch.log(param) - torch.log1p(-param)
        else:
            if validate and not bool(torch.isfinite(param).all()):
                bad = param.detach().reshape(-1)[~torch.isfinite(param.detach()).reshape(-1)][0].item()
                raise ValueError(f"{_NAME}: logits must be finite real numbers; got {bad:.6g}")
            lg = param.unsqueeze(-1)
            log_pmf = log_choose + counts_all * torch.nn.functional.logsigmoid(lg) \
                + (n - counts_all) * torch.nn.functional.logsigmoid(-lg)
            logits = param
        k = n + 1 if support_size is None else _check_int(support_size, "support_size", 1)
        if k > n + 1:
            raise ValueError(f"{_NAME}: support_size must be an integer in [1, total_count + 1 = {n + 1}] for a "
                             f"binomial law; got {support_size!r}")
        d = cls._from_log_pmf(temperature, counts_all[:k], log_pmf[..., :k], hard, validate_args)
        d.total_count = n
        return d._as_family("binomial", logits, None)

    @classmethod
    def _from_log_pmf(cls, temperature, counts, log_pmf, hard, validate_args) -> "GeneralizedGumbelSoftmax":
        """The law with logits ``log_pmf`` (its entries may be -inf: a point of zero probability, which the
        logits check of the plain constructor would refuse) over ``counts``, the temperature checked."""
        validate = validate_args is not False
        check_positive(temperature, "temperature", _NAME, like=log_pmf, validate=validate)
        d = cls(temperature, counts, logits=log_pmf, hard=hard, validate_args=False)
        d._validate_args = validate
        return d

    def _as_family(self, family: str, param: torch.Tensor, tol) -> "GeneralizedGumbelSoftmax":
        self.family, self.tol = family, tol
        self._family_param = param.expand(self.batch_shape)  # log rate (Poisson), success log-odds (others)
        return self

    @lazy_property
    def dropped_mass(self) -> torch.Tensor:
        """P(X >= K) of the untruncated law per element (``batch_shape``, no gradient): Poisson: the
        regularised lower incomplete gamma P(K, rate); geometric: (1 - p)^K; binomial: the sum of the
        pmf over K..n (0 for K = n + 1); 0 for a law given by probs/logits."""
        k = self.support_values.numel()
        dtype = self.support_values.dtype
        with torch.no_grad():
            if self.family is None:
                return torch.zeros(self.batch_shape, dtype=dtype, device=self.support_values.device)
            t = self._family_param.detach().to(torch.float64)
            if self.family == "poisson":
                out = _poisson_tail(k, t.exp())
            elif self.family == "geometric":
                out = torch.exp(k * torch.nn.functional.logsigmoid(-t))  # (1 - p)^K, 0 at p = 1
            else:
                n = self.total_count
                if k == n + 1:
                    out = torch.zeros_like(t)
                else:
                    c = torch.arange(k, n + 1, dtype=torch.float64, device=t.device)
                    log_choose = math.lgamma(n + 1) - torch.lgamma(c + 1) - torch.lgamma(n - c + 1)
                    lg = t.unsqueeze(-1)
                    tail = log_choose + c * torch.nn.functional.logsigmoid(lg) \
                        + (n - c) * torch.nn.functional.logsigmoid(-lg)
                    out = torch.logsumexp(tail, -1).exp()
            return out.to(dtype).expand(self.batch_shape)

    # the law ------------------------------------------------------------------------------------
    @property
    def support(self) -> constraints.Constraint:
        return _SupportPoints(self.support_values)

    @property
    def mean(self) -> torch.Tensor:
        """E[X] = sum_k pi_k v_k of the (truncated) discrete law."""
        return (self.probs * self.support_values).sum(-1)

    @property
    def variance(self) -> torch.Tensor:
        return (self.probs * (self.support_values - self.mean.unsqueeze(-1)) ** 2).sum(-1)

    @property
    def mode(self) -> torch.Tensor:
        return self.support_values[self.logits.argmax(-1)]

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """P(X <= x) = sum of pi_k over the support values v_k <= x (the discrete law)."""
        value = torch.as_tensor(value, dtype=self.support_values.dtype, device=self.support_values.device)
        below = (self.support_values <= value.unsqueeze(-1)).to(self.probs.dtype)
        return (self.probs * below).sum(-1)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """Quantile function inf{x : P(X <= x) >= q}: the smallest support value whose CDF reaches q."""
        q = torch.as_tensor(value, dtype=self.support_values.dtype, device=self.support_values.device)
        order = self.support_values.argsort()
        cum = self.probs[..., order].cumsum(-1)
        cum, q = torch.broadcast_tensors(cum, q.unsqueeze(-1))
        # rounding can leave the total just below 1: the last value is the answer for q up to 1
        k = (cum < q).sum(-1).clamp(max=order.numel() - 1)
        return self.support_values[order][k]

    def entropy(self) -> torch.Tensor:
        lp = self.logits
        p = lp.exp()
        return -torch.where(p > 0, p * lp, torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        """The K values, shape ``(K,) + batch_shape`` (``(K,) + (1,) * len(batch_shape)`` unexpanded)."""
        v = self.support_values.reshape((-1,) + (1,) * len(self.batch_shape))
        return v.expand((-1,) + self.batch_shape) if expand else v

    def index_of(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index k with v_k == value, whether value is a support point); the index is 0 where it is not."""
        match = value.unsqueeze(-1) == self.support_values
        return match.to(torch.uint8).argmax(-1), match.any(-1)

    def log_prob_index(self, index: torch.Tensor) -> torch.Tensor:
        """log pi_k at integer indices k (shape ``sample_shape + batch_shape``, broadcastable)."""
        logits = self.logits
        shape = torch.broadcast_shapes(index.shape, logits.shape[:-1])
        return logits.expand(shape + logits.shape[-1:]).gather(-1, index.expand(shape).unsqueeze(-1)).squeeze(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Exact log-probability of the discrete (truncated) law at support values ``value``.

        A value that is not a support point (a relaxed sample, for instance) raises ValueError naming
        it; with ``validate_args=False`` its log-probability is ``-inf`` instead.
        """
        value = torch.as_tensor(value, dtype=self.support_values.dtype, device=self.support_values.device)
        index, ok = self.index_of(value)
        if self._validate_args and not bool(ok.all()):
            bad = value.detach().reshape(-1)[~ok.reshape(-1)][0].item()
            raise ValueError(f"{_NAME}: value {bad:.6g} is not in the support (the K = {self.support_values.numel()} "
                             f"values support_values; a relaxed sample has no probability here)")
        return self.log_prob_index(index).masked_fill(~ok, -math.inf)

    # sampling -----------------------------------------------------------------------------------
    def _perturbed(self, sample_shape, generator) -> torch.Tensor:
        shape = self._extended_shape(sample_shape) + self.support_values.shape
        logits = self.logits
        return logits + sample_gumbel(shape, logits.dtype, logits.device, generator)

    def rsample_with_index(self, sample_shape=torch.Size(), generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(differentiable sample, index k* of the exact draw of the same noise).

        The sample is ``sum_k w_k v_k`` with ``w = softmax((logits + g) / tau)``; with ``hard=True`` it is
        ``v_{k*}`` forward and that expression's gradient backward. ``k* = argmax(logits + g)``.
        """
        keys = self._perturbed(sample_shape, generator)
        w = log_softmax(keys / self.temperature.unsqueeze(-1)).exp()
        z = (w * self.support_values).sum(-1)
        index = keys.detach().argmax(-1)
        if self.hard:
            z = self.support_values[index] + (z - z.detach())
        return z, index

    def rsample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """Relaxed value ``sum_k w_k v_k`` (``hard=True``: straight-through ``v_{k*}``), shape
        ``sample_shape + batch_shape``."""
        return self.rsample_with_index(sample_shape, generator)[0]

    def sample_index(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """Exact draws of the index k (Gumbel-max), long, ``sample_shape + batch_shape``. The same noise
        as :meth:`rsample` at the same generator state, so its index is that sample's k*."""
        with torch.no_grad():
            return self._perturbed(sample_shape, generator).argmax(-1)

    def sample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """Exact (hard) draws of the value v_k, no gradient, ``sample_shape + batch_shape``."""
        return self.support_values[self.sample_index(sample_shape, generator)]

    def __repr__(self):
        fam = f"{self.family}, " if self.family else ""
        return (f"{_NAME}({fam}K: {self.support_values.numel()}, temperature: {tuple(self.temperature.shape)}, "
                f"logits: {tuple(self.logits.shape)}, hard: {self.hard})")


@register_kl(GeneralizedGumbelSoftmax, GeneralizedGumbelSoftmax)
def _kl_generalized_gumbel(p: GeneralizedGumbelSoftmax, q: GeneralizedGumbelSoftmax) -> torch.Tensor:
    """KL of the two discrete laws (exact sum over the common support; temperatures do not enter)."""
    if p.support_values.shape != q.support_values.shape or not torch.equal(p.support_values, q.support_values):
        raise ValueError(f"{_NAME}: kl_divergence needs the same support_values for both laws; got K = "
                         f"{p.support_values.numel()} and K = {q.support_values.numel()} values that differ")
    return discrete_kl(p.logits, q.logits)
