"""The exact discrete objective and its gradient, by summing over every latent configuration."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..methods.base import DiscreteLaw, Method, bernoulli_kl, bernoulli_nll
from .problems import Problem


def enumerate_configs(kind: str, shape: tuple[int, ...], dtype=torch.float64, values=None) -> torch.Tensor:
    """All configurations as decoder inputs: ``[2^D, D]`` 0/1 rows (``shape = (D,)``), ``[K^N, N*K]``
    flattened one-hots (categorical, ``shape = (N, K)``), or ``[K^N, N]`` value vectors (count,
    ``shape = (N, K)``; unit n's value is ``values[..., n, k]`` of its digit k, ``values`` ``[K]`` or
    ``[N, K]``, default the counts 0..K-1). Configuration m has digit ``(m // K^n) % K`` in unit n."""
    if kind == "bernoulli":
        (d,) = shape
        codes = torch.arange(2 ** d)
        return ((codes[:, None] >> torch.arange(d)) & 1).to(dtype)
    n, k = shape
    digits = _digits(n, k)
    if kind == "categorical":
        return F.one_hot(digits, k).to(dtype).flatten(-2)
    if kind == "count":
        return _count_values(values, n, k, dtype)[torch.arange(n), digits]
    raise ValueError(f"unknown discrete law kind {kind!r}")


def _digits(n: int, k: int) -> torch.Tensor:
    """``[K^N, N]`` long: the base-K digits of every configuration index, least significant first."""
    codes = torch.arange(k ** n)
    return (codes[:, None] // (k ** torch.arange(n))) % k


def _count_values(values, n: int, k: int, dtype, device=None) -> torch.Tensor:
    """``[N, K]`` support values of a count law (``values`` ``[K]`` / ``[N, K]``, or None: 0..K-1)."""
    if values is None:
        return torch.arange(k, dtype=dtype, device=device).expand(n, k)
    v = torch.as_tensor(values, dtype=dtype, device=device)
    if v.shape not in ((k,), (n, k)):
        raise ValueError(f"count law: values must have shape ({k},) or ({n}, {k}) (the K support values, shared "
                         f"or per unit); got {tuple(v.shape)}")
    return v.expand(n, k)


#: the most k-tuples of configurations the k-sample objective is enumerated over (M^k <= this)
MAX_TUPLES = 2 ** 22


def iwae_samples(objective: str) -> int | None:
    """k of an ``"iwae-<k>"`` objective, else None."""
    if objective.startswith("iwae-"):
        return int(objective.split("-", 1)[1])
    return None


def _enumerated(law: DiscreteLaw):
    """(configurations ``[M, latent_dim]``, log q ``[B, M]``, log prior ``[M]`` or ``[B, M]``, KL(q || prior) ``[B]``).

    The configurations are the decoder inputs: 0/1 rows (bernoulli), flattened one-hots (categorical)
    or value vectors (count: the N values, :attr:`DiscreteLaw.values` or the counts 0..K-1)."""
    logits = law.logits
    if law.kind == "bernoulli":
        configs = enumerate_configs("bernoulli", (logits.shape[-1],), logits.dtype)
        log_q = F.logsigmoid(logits) @ configs.T + F.logsigmoid(-logits) @ (1 - configs).T  # [B, M]
        prior = torch.as_tensor(law.prior_logits, dtype=logits.dtype).expand_as(logits)
        log_prior = F.logsigmoid(prior) @ configs.T + F.logsigmoid(-prior) @ (1 - configs).T
        kl = bernoulli_kl(logits, law.prior_logits).sum(-1)
    elif law.kind == "categorical":
        shape = tuple(logits.shape[-2:])
        configs = enumerate_configs("categorical", shape, logits.dtype)
        log_p = torch.log_softmax(logits, -1)
        log_q = torch.einsum("bnk,mnk->bm", log_p, configs.reshape(-1, *shape))
        prior = torch.log_softmax(torch.as_tensor(law.prior_logits, dtype=logits.dtype).expand_as(logits), -1)
        log_prior = torch.einsum("bnk,mnk->bm", prior, configs.reshape(-1, *shape))
        kl = (log_p.exp() * (log_p - prior)).sum((-1, -2))
    elif law.kind == "count":
        n, k = logits.shape[-2:]
        digits = _digits(n, k).to(logits.device)
        units = torch.arange(n, device=logits.device)
        configs = _count_values(law.values, n, k, logits.dtype, logits.device)[units, digits]  # [M, N] values
        log_p = torch.log_softmax(logits, -1)
        # gathered (not multiplied by one-hots), so a support point of probability 0 (logit -inf) is no NaN
        log_q = log_p[..., units, digits].sum(-1)  # [B, M]
        prior = torch.log_softmax(torch.as_tensor(law.prior_logits, dtype=logits.dtype,
                                                  device=logits.device).expand_as(logits), -1)
        log_prior = prior[..., units, digits].sum(-1)
        p = log_p.exp()
        # a point with q = 0 adds 0 (also to the gradient: the where is inside the product)
        kl = (p * torch.where(p > 0, log_p - prior, torch.zeros((), dtype=p.dtype, device=p.device))).sum((-1, -2))
    else:
        raise ValueError(f"unknown discrete law kind {law.kind!r}")
    return configs, log_q, log_prior, kl


def exact_objective(law: DiscreteLaw, decode, x: torch.Tensor, objective: str) -> torch.Tensor:
    """Batch mean of the exact discrete objective, by summing over every configuration of b:

    * ``"expectation"``: E_{b~q}[f(b)], f(b) = bernoulli_nll(decode(b), x);
    * ``"elbo"``: that + KL(q || prior), the negative ELBO;
    * ``"iwae-<k>"``: -E_{b_1..b_k ~ q}[log (1/k) sum_j p(x | b_j) p(b_j) / q(b_j)], the k-sample negative
      bound, summed over all M^k k-tuples (at most :data:`MAX_TUPLES`; more raises NotImplementedError).

    ``law.logits`` is ``[B, D]`` or ``[B, N, K]`` (categorical and count; a count configuration reaches the
    decoder as its N values); autograd through the result gives the exact gradient.
    """
    configs, log_q, log_prior, kl = _enumerated(law)
    f = bernoulli_nll(decode(configs)[None], x[:, None])  # [B, M]
    k = iwae_samples(objective)
    if k is not None:
        return -_expected_log_mean_weight(-f + log_prior - log_q, log_q, k).mean()
    value = (log_q.exp() * f).sum(-1)
    if objective == "elbo":
        value = value + kl
    elif objective != "expectation":
        raise ValueError(f"unknown objective {objective!r}")
    return value.mean()


def _expected_log_mean_weight(log_w: torch.Tensor, log_q: torch.Tensor, k: int) -> torch.Tensor:
    """``[B]`` E[log (1/k) sum_j w(b_j)] over b_1..b_k iid ~ q, from per-configuration ``log_w``, ``log_q`` ``[B, M]``."""
    b, m = log_w.shape
    if m ** k > MAX_TUPLES:
        raise NotImplementedError(f"the {k}-sample objective needs {m}^{k} configuration tuples "
                                  f"(more than {MAX_TUPLES}); use fewer samples or a smaller problem")
    views_w, tuple_log_q = [], log_q.new_zeros((b,) + (1,) * k)
    for j in range(k):
        shape = [b] + [1] * k
        shape[1 + j] = m
        views_w.append(log_w.reshape(shape))
        tuple_log_q = tuple_log_q + log_q.reshape(shape)
    full = (b,) + (m,) * k
    lme = torch.logsumexp(torch.stack([v.expand(full) for v in views_w]), 0) - math.log(k)
    return (tuple_log_q.exp() * lme).reshape(b, -1).sum(-1)


def row_objective(method: Method, problem: Problem) -> str:
    """The objective a method is judged on for a problem: the problem's (``expectation`` / ``elbo``),
    unless the method estimates a k-sample bound (:meth:`Method.estimand` ``"iwae-<k>"``), on every problem."""
    est = method.estimand()
    return est if iwae_samples(est) is not None else problem.objective


def exact_gradient(method: Method, problem: Problem, params: torch.Tensor, tau: float) -> torch.Tensor:
    """d/d params of the enumerated discrete objective of ``method``'s discrete law, ``params``' shape."""
    p = params.detach().clone().requires_grad_(True)
    law = method.discrete_law(p, tau)
    (g,) = torch.autograd.grad(exact_objective(law, problem.decode, problem.x, row_objective(method, problem)), p)
    return g


