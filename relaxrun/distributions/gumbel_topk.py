r"""Ordered k-subsets without replacement: Gumbel-top-k (Kool, van Hoof and Welling, "Stochastic
Beams and Where to Find Them: The Gumbel-Top-k Trick", ICML 2019) and its relaxation.

**Hard sample.** With logits :math:`\ell \in \mathbb{R}^K` and i.i.d. :math:`g_i \sim
\mathrm{Gumbel}(0,1)`, the indices of the :math:`k` largest perturbed keys :math:`\ell_i + g_i`, in
decreasing order, are an exact ordered sample without replacement from
:math:`\mathrm{Cat}(\mathrm{softmax}(\ell))`, i.e. from the Plackett-Luce law

.. math::
    \log q(i_1,\dots,i_k) = \sum_{j=1}^{k}\Big(\ell_{i_j}
        - \log\!\!\sum_{m \notin \{i_1..i_{j-1}\}}\!\! e^{\ell_m}\Big).

**Relaxation.** The successive-softmax relaxed top-k of Xie and Ermon ("Reparameterizable Subset
Sampling via Continuous Relaxations", IJCAI 2019, "relaxed top-k"), applied to the same perturbed keys
:math:`r = \ell + g`, with temperature :math:`t > 0`:

.. math::
    \alpha^{1} = r,\qquad a^{j} = \mathrm{softmax}(\alpha^{j}/t),\qquad
    \alpha^{j+1} = \alpha^{j} + \log(1 - a^{j}),\qquad z = \sum_{j=1}^{k} a^{j}.

The mask :math:`\log(1-a^j)` is formed in log space and never as ``log1p(-a)`` of a rounded
``a``: for the coordinate holding the largest key it is
:math:`\mathrm{logsumexp}_{m\ne i}(\alpha_m/t) - \mathrm{logsumexp}_m(\alpha_m/t)`, for the others
(where :math:`a_i \le 1/2`) ``log1p(-a_i)`` is well conditioned. So there is no ``-1e10`` constant,
no ``-inf``, and the derivatives stay of order :math:`1/t` (a hard ``-1e10`` mask gives ones of
order :math:`10^7`). :math:`z` is a relaxed :math:`k`-hot vector: non-negative, summing to
:math:`k`, and tending to the :math:`k`-hot vector of the hard sample from the same noise as
:math:`t \to 0`. It is a relaxation, not a projection: for :math:`t` near 1 a coordinate may exceed
1, and where two keys nearly tie (a gap of order :math:`t`) an item already chosen can return softly,
so the fraction of draws that are not yet nearly :math:`k`-hot shrinks like :math:`t`. The
derivatives grow as :math:`t` shrinks (order :math:`1/t` per masking step at near ties), which is the
usual bias/variance trade-off of the temperature, not a numerical artefact.

The relaxed :math:`z` has no tractable density; the exact log-probability available is that of the
ordered hard sample, :meth:`PlackettLuce.log_prob`, which is what a discrete ELBO needs.

Shapes: ``logits``/``probs`` ``batch_shape + (K,)`` (e.g. ``(B, N, K)``: a batch of ``N`` groups
over ``K`` categories); ordered samples ``sample_shape + batch_shape + (k,)`` (long); relaxed
samples ``sample_shape + batch_shape + (K,)``.
"""

from __future__ import annotations

import torch
from torch.distributions import constraints

from ._common import CategoricalProbsLogits, RelaxrunDistribution, check_positive, probs_or_logits
from .concrete import log_softmax
from .gumbel import sample_gumbel  # re-exported: its home is relaxrun.distributions.gumbel

__all__ = [
    "PlackettLuce",
    "GumbelTopK",
    "plackett_luce_log_prob",
    "relaxed_topk",
    "sample_gumbel",
    "topk_khot",
]


def _check_k(k, num_categories: int, dist: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        if torch.is_tensor(k) and k.numel() == 1 and not k.is_floating_point():
            k = int(k)
        else:
            raise ValueError(f"{dist}: k must be an integer in [1, K={num_categories}]; got {k!r}")
    if not 1 <= k <= num_categories:
        raise ValueError(f"{dist}: k must be an integer in [1, K={num_categories}]; got {k}")
    return k


def plackett_luce_log_prob(logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Exact log-probability of the ordered tuple ``indices`` (``(..., k)``) under Plackett-Luce.

    ``logits``: ``(..., K)``, broadcastable with ``indices.shape[:-1]``. The normaliser of step
    ``j`` is a logsumexp with the already chosen categories removed (filled with ``-inf``, whose
    weight ``exp(-inf) = 0`` makes forward and backward exact); never a subtraction of sums.
    """
    batch = torch.broadcast_shapes(logits.shape[:-1], indices.shape[:-1])
    logits = logits.expand(batch + logits.shape[-1:])
    indices = indices.expand(batch + indices.shape[-1:])
    chosen = logits.gather(-1, indices)
    removed = torch.zeros_like(logits, dtype=torch.bool)
    total = torch.zeros(batch, dtype=logits.dtype, device=logits.device)
    for j in range(indices.shape[-1]):
        total = total + chosen[..., j] - torch.logsumexp(logits.masked_fill(removed, float("-inf")), dim=-1)
        removed = removed.scatter(-1, indices[..., j : j + 1], True)
    return total


def _log1m_softmax(s: torch.Tensor) -> torch.Tensor:
    """``log(1 - softmax(s))`` along the last dim, finite whenever ``s`` is finite and ``K >= 2``."""
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    top = s.argmax(dim=-1, keepdim=True)
    is_top = torch.zeros_like(s, dtype=torch.bool).scatter(-1, top, True)
    # largest entry: 1 - a_top = sum of the others' weights, a ratio of logsumexps
    lse_rest = torch.logsumexp(s.masked_fill(is_top, float("-inf")), dim=-1, keepdim=True)
    log1m_top = lse_rest - lse
    # others: a_i <= 1/2, so log1p(-a_i) is well conditioned. The top entry is zeroed *before*
    # log1p so that the unused branch of `where` is finite (0 * inf would poison the gradient).
    a_rest = torch.exp(s - lse).masked_fill(is_top, 0.0)
    return torch.where(is_top, log1m_top, torch.log1p(-a_rest))


def relaxed_topk(keys: torch.Tensor, k: int, temperature: torch.Tensor) -> torch.Tensor:
    """Xie & Ermon (2019) relaxed k-hot vector from perturbed keys ``(..., K)``; temperature ``(...)``.

    ``z = sum_{j<=k} softmax(alpha^j / t)`` with ``alpha^{j+1} = alpha^j + log(1 - a^j)``.
    """
    t = temperature.unsqueeze(-1)
    alpha = keys
    z = torch.zeros_like(keys)
    for j in range(k):
        s = alpha / t
        z = z + log_softmax(s).exp()  # the fast CPU path for few categories (see concrete.log_softmax)
        if j + 1 < k:
            alpha = alpha + _log1m_softmax(s)
    return z


class PlackettLuce(CategoricalProbsLogits, RelaxrunDistribution):
    """Ordered ``k``-tuples of distinct categories drawn without replacement from ``Cat(probs)``.

    Args:
        k: tuple length, an integer in ``[1, K]``.
        probs: category probabilities (non-negative, summing to 1 over the last dim); or
        logits: unnormalised log-probabilities. Exactly one of the two. Note that ``probs`` are
            *not* logits: ``PlackettLuce(k, probs=p)`` equals ``PlackettLuce(k, logits=p.log())``.
            A zero probability becomes a very negative but finite logit (keys, masks and gradients
            stay finite): such a category is drawn only after all others.

    ``sample`` uses the Gumbel-top-k trick; ``log_prob`` is the exact Plackett-Luce law.
    Shapes: ``batch_shape = logits.shape[:-1]``, ``event_shape = (k,)``, values are long indices.
    """

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real}
    has_rsample = False
    has_enumerate_support = True  # K!/(K-k)! tuples: for small K (Pyro's TraceEnum_ELBO can sum over them)
    _expand_params = {"probs": 1, "logits": 1}
    _expand_copy = ("k",)

    def __init__(self, k: int, probs=None, logits=None, validate_args=None):
        name, param = probs_or_logits(probs, logits, "PlackettLuce", is_binary=False)
        if param.dim() < 1:
            raise ValueError(f"PlackettLuce: {name} must have a last dimension of size K; got a scalar")
        self.k = _check_k(k, param.shape[-1], "PlackettLuce")
        setattr(self, name, param)
        super().__init__(param.shape[:-1], torch.Size([self.k]), validate_args=validate_args)

    @property
    def num_categories(self) -> int:
        return (self.logits if "logits" in self.__dict__ else self.probs).shape[-1]

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.num_categories - 1), 1)

    def perturbed_keys(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """``logits + Gumbel`` noise, independent per element, shape ``sample_shape + batch_shape + (K,)``."""
        shape = torch.Size(sample_shape) + self.batch_shape + (self.num_categories,)
        logits = self.logits
        return logits + sample_gumbel(shape, logits.dtype, logits.device, generator)

    def sample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        with torch.no_grad():
            keys = self.perturbed_keys(sample_shape, generator)
            return keys.topk(self.k, dim=-1, sorted=True).indices

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
            if self.k > 1 and not bool((value.sort(-1).values.diff(dim=-1) > 0).all()):
                raise ValueError("PlackettLuce: value must hold k distinct categories per tuple "
                                 "(samples without replacement); got a repeated index")
        return plackett_luce_log_prob(self.logits, value)

    def enumerate_support(self, expand=True) -> torch.Tensor:
        """All ``K!/(K-k)!`` ordered tuples, shape ``(n,) + batch_shape + (k,)`` (small K only)."""
        import itertools

        tuples = list(itertools.permutations(range(self.num_categories), self.k))
        values = torch.tensor(tuples, dtype=torch.long, device=self.logits.device)
        values = values.reshape((len(tuples),) + (1,) * len(self.batch_shape) + (self.k,))
        if expand:
            values = values.expand((len(tuples),) + self.batch_shape + (self.k,))
        return values

    _unavailable = {
        "mean": "the values are ordered tuples of category indices, whose average has no meaning",
        "variance": "the values are ordered tuples of category indices",
        "mode": "the most probable tuple is the categories sorted by logits: logits.topk(k).indices",
        "entropy": "no closed form; for small K sum -p log p over enumerate_support()",
        "cdf": "the values are tuples of category indices", "icdf": "the values are tuples of category indices",
    }

    def __repr__(self):
        return f"PlackettLuce(k={self.k}, logits: {tuple(self.logits.shape)})"


class GumbelTopK(CategoricalProbsLogits, RelaxrunDistribution):
    """Relaxed ``k``-hot vectors: Gumbel-top-k keys through Xie & Ermon's (2019) relaxed top-k.

    Args:
        temperature: ``t`` > 0 of the successive softmaxes, one per distribution (broadcasts with
            ``batch_shape``).
        k: subset size, an integer in ``[1, K]``.
        probs / logits: exactly one, as for :class:`PlackettLuce` (``probs`` are probabilities,
            not logits).

    ``rsample`` returns the relaxed ``k``-hot vector, ``sample_shape + batch_shape + (K,)``;
    ``rsample_with_hard`` also returns the ordered hard sample made from the *same* Gumbel noise
    (exact Plackett-Luce, see :attr:`hard`), whose ``log_prob`` is exact. ``log_prob`` of a relaxed
    vector is not available (no tractable density) and raises.
    """

    arg_constraints = {
        "probs": constraints.simplex,
        "logits": constraints.real,
        "temperature": constraints.positive,
    }
    has_rsample = True
    _expand_params = {"probs": 1, "logits": 1, "temperature": 0}
    _expand_copy = ("k",)

    def __init__(self, temperature, k: int, probs=None, logits=None, validate_args=None):
        name, param = probs_or_logits(probs, logits, "GumbelTopK", is_binary=False)
        if param.dim() < 1:
            raise ValueError(f"GumbelTopK: {name} must have a last dimension of size K; got a scalar")
        self.k = _check_k(k, param.shape[-1], "GumbelTopK")
        temperature = check_positive(temperature, "temperature", "GumbelTopK", like=param,
                                     validate=validate_args is not False)
        batch_shape = torch.broadcast_shapes(param.shape[:-1], temperature.shape)
        setattr(self, name, param.expand(batch_shape + param.shape[-1:]))
        self.temperature = temperature.expand(batch_shape)
        super().__init__(batch_shape, param.shape[-1:], validate_args=validate_args)

    @property
    def num_categories(self) -> int:
        return self.event_shape[0]

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        # non-negative and summing to k; not a simplex unless k == 1
        return constraints.independent(constraints.interval(0.0, float(self.k)), 1)

    @property
    def hard(self) -> PlackettLuce:
        """The law of the ordered hard sample: Plackett-Luce with the same logits and k."""
        return PlackettLuce(self.k, logits=self.logits, validate_args=False)

    def rsample_with_hard(self, sample_shape=torch.Size(), generator=None):
        """``(z, indices)``: the relaxed k-hot ``z`` and the ordered hard sample from the same noise.

        ``z``: ``sample_shape + batch_shape + (K,)``, differentiable in the logits;
        ``indices``: ``sample_shape + batch_shape + (k,)``, long, an exact Plackett-Luce sample.
        """
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        logits = self.logits
        keys = logits + sample_gumbel(shape, logits.dtype, logits.device, generator)
        indices = keys.detach().topk(self.k, dim=-1, sorted=True).indices
        z = relaxed_topk(keys, self.k, self.temperature)
        return z, indices

    def rsample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        return self.rsample_with_hard(sample_shape, generator)[0]

    def sample_hard(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """Ordered hard sample ``sample_shape + batch_shape + (k,)`` (long)."""
        return self.hard.sample(sample_shape, generator)

    def log_prob_hard(self, indices: torch.Tensor) -> torch.Tensor:
        """Exact Plackett-Luce log-probability of an ordered hard sample ``(..., k)``."""
        return plackett_luce_log_prob(self.logits, indices)

    def log_prob(self, value):
        raise NotImplementedError(
            "GumbelTopK: the relaxed k-hot vector has no tractable density; use "
            "log_prob_hard(indices) on the ordered hard sample from rsample_with_hard"
        )

    _unavailable = {
        "mean": "the relaxed k-hot vector's law has no tractable form; estimate it from samples",
        "variance": "the relaxed k-hot vector's law has no tractable form; estimate it from samples",
        "mode": "the relaxed k-hot vector's law has no tractable form",
        "entropy": "the relaxed k-hot vector has no tractable density",
        "cdf": "the law is multivariate (relaxed k-hot vectors in R^K)",
        "icdf": "the law is multivariate (relaxed k-hot vectors in R^K)",
        "enumerate_support": "the relaxed k-hot vector is continuous; the ordered hard sample's law is "
                             "hard (PlackettLuce), which has enumerate_support",
    }

    def __repr__(self):
        return (f"GumbelTopK(k={self.k}, temperature: {tuple(self.temperature.shape)}, "
                f"logits: {tuple(self.logits.shape)})")


def topk_khot(indices: torch.Tensor, num_categories: int, dtype=torch.float32) -> torch.Tensor:
    """k-hot vector ``(..., K)`` of the index tuple ``(..., k)``."""
    out = torch.zeros(indices.shape[:-1] + (num_categories,), dtype=dtype, device=indices.device)
    return out.scatter(-1, indices, 1.0)

