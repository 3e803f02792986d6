"""The exact discrete objective and its gradient, by summing over every latent configuration."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..methods.base import DiscreteLaw, Method, bernoulli_kl, bernoulli_nll
from .problems import Problem


def enumerate_configs(kind: str, shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    """All configurations as decoder inputs: ``[2^D, D]`` 0/1 rows, or ``[K^N, N*K]`` flattened one-hots."""
    if kind == "bernoulli":
        (d,) = shape
        codes = torch.arange(2 ** d)
        return ((codes[:, None] >> torch.arange(d)) & 1).to(dtype)
    n, k = shape
    codes = torch.arange(k ** n)
    digits = (codes[:, None] // (k ** torch.arange(n))) % k
    return F.one_hot(digits, k).to(dtype).flatten(-2)


def exact_objective(law: DiscreteLaw, decode, x: torch.Tensor, objective: str) -> torch.Tensor:
    """Batch mean of E_{b~q}[bernoulli_nll(decode(b), x)] (+ KL(q || prior) when ``objective == "elbo"``).

    The expectation is the sum over every configuration of q(b) f(b) (``law.logits`` ``[B, D]`` or
    ``[B, N, K]``), so autograd through it gives the exact gradient.
    """
    logits = law.logits
    if law.kind == "bernoulli":
        shape = (logits.shape[-1],)
        configs = enumerate_configs("bernoulli", shape, logits.dtype)
        log_q = F.logsigmoid(logits) @ configs.T + F.logsigmoid(-logits) @ (1 - configs).T  # [B, M]
        kl = bernoulli_kl(logits, law.prior_logits).sum(-1)
    elif law.kind == "categorical":
        shape = tuple(logits.shape[-2:])
        configs = enumerate_configs("categorical", shape, logits.dtype)
        log_p = torch.log_softmax(logits, -1)
        log_q = torch.einsum("bnk,mnk->bm", log_p, configs.reshape(-1, *shape))
        log_prior = torch.log_softmax(torch.as_tensor(law.prior_logits, dtype=logits.dtype).expand_as(logits), -1)
        kl = (log_p.exp() * (log_p - log_prior)).sum((-1, -2))
    else:
        raise ValueError(f"unknown discrete law kind {law.kind!r}")
    f = bernoulli_nll(decode(configs)[None], x[:, None])  # [B, M]
    value = (log_q.exp() * f).sum(-1)
    if objective == "elbo":
        value = value + kl
    elif objective != "expectation":
        raise ValueError(f"unknown objective {objective!r}")
    return value.mean()


def exact_gradient(method: Method, problem: Problem, params: torch.Tensor, tau: float) -> torch.Tensor:
    """d/d params of the enumerated discrete objective of ``method``'s discrete law, ``params``' shape."""
    p = params.detach().clone().requires_grad_(True)
    law = method.discrete_law(p, tau)
    (g,) = torch.autograd.grad(exact_objective(law, problem.decode, problem.x, problem.objective), p)
    return g


