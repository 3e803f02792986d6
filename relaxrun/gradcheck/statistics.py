"""Estimator draws, their bias / variance statistics against the exact gradient, and one row
(:func:`check_row`: exact gradient, S draws, statistics)."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ..methods.base import Method, Terms
from .enumeration import exact_gradient, row_objective
from .problems import Problem, _stable_seed

#: softplus(-800) = 0 in float32 and float64: the decoder logit that makes -log p(x = 0 | z) exactly 0
ZERO_NLL_LOGIT = 800.0


def estimator_draws(method: Method, problem: Problem, params: torch.Tensor, tau: float, samples: int,
                    chunk: int = 8192) -> torch.Tensor:
    """``[S, B * param_dim]`` single-draw gradients of the method's training loss w.r.t. ``params``.

    The batch is repeated m times in one call; with the loss a mean over m * B rows, the gradient of
    replica s times m is that replica's own draw (rows are independent given ``params``).
    """
    b = params.shape[0]
    per_call = max(1, chunk // b)
    out = []
    done = 0
    while done < samples:
        m = min(per_call, samples - done)
        p = params.detach().repeat(m, 1).requires_grad_(True)
        terms: Terms = method.loss(p, problem.decode, problem.x.repeat(m, 1), tau)
        loss = terms.loss if row_objective(method, problem) != "expectation" else terms.loss - terms.kl.mean()
        (g,) = torch.autograd.grad(loss, p, allow_unused=True)
        g = torch.zeros_like(p) if g is None else g
        out.append(g.reshape(m, -1) * m)
        done += m
    return torch.cat(out)


def expectation_is_isolated(method: Method, problem: Problem, params: torch.Tensor, tau: float) -> bool:
    """Whether ``loss - mean(kl)`` estimates grad E_q[f] alone: with f = 0 its gradient must be 0.

    Fails for a method that adds a separate KL-gradient surrogate to its loss (e.g. a score-function
    KL), whose gradient ``mean(kl)`` does not remove. f is made exactly 0 (decoder logits -800 with
    the expectation problems' x = 0), not merely constant, so that a score-function estimator
    without a baseline, whose draws f * grad log q have mean 0 but are not 0, passes.
    """
    pixels = problem.x.shape[-1]

    def zero_nll(z):
        return (0.0 * z.sum(-1, keepdim=True) - ZERO_NLL_LOGIT).expand(*z.shape[:-1], pixels)

    const = dataclasses.replace(problem, decode=zero_nll)
    with torch.random.fork_rng():
        torch.manual_seed(54321)
        g = estimator_draws(method, const, params, tau, 64)
    return bool(g.abs().max() <= 1e-12)


def _uses_tau(method: Method, problem: Problem, params: torch.Tensor) -> bool:
    """Whether the loss changes with tau (same random stream at two temperatures)."""
    draws = []
    for tau in (0.3, 0.9):
        with torch.random.fork_rng():
            torch.manual_seed(12345)
            draws.append(estimator_draws(method, problem, params, tau, 4))
    try:
        laws = [method.discrete_law(params, t).logits for t in (0.3, 0.9)]
    except NotImplementedError:
        laws = [0, 0]
    return not torch.equal(draws[0], draws[1]) or not torch.equal(torch.as_tensor(laws[0]), torch.as_tensor(laws[1]))


def gradient_stats(draws: torch.Tensor, exact: torch.Tensor, level: float = 0.95, alpha: float = 1e-3) -> dict:
    """Bias / variance statistics of gradient draws ``[S, n]`` against the exact gradient ``[n]``.

    See the module docstring for the definitions. ``bias_lo``/``bias_hi`` bound |E g - g*| / |g*| at
    confidence ``level``; ``biased`` is Hotelling's test of E g = g* at false-alarm rate ``alpha``.
    """
    draws = draws.to(torch.float64)
    exact = exact.reshape(-1).to(torch.float64)
    s, n = draws.shape
    if s < 2:
        raise ValueError("need at least 2 gradient draws")
    mean = draws.mean(0)
    d = mean - exact
    centred = draws - mean
    cov = centred.T @ centred / (s - 1)
    norm = float(exact.norm())
    scale = norm if norm > 0 else 1.0
    tr = float(cov.trace())
    # unbiased estimate of |E g - g*|^2 and its variance (normal approximation)
    u = float(d @ d) - tr / s
    var_u = 4.0 * float(d @ cov @ d) / s + 2.0 * float((cov * cov).sum()) / (s * (s - 1))
    z = float(torch.special.ndtri(torch.tensor(0.5 + level / 2, dtype=torch.float64)))
    lo = math.sqrt(max(u - z * math.sqrt(max(var_u, 0.0)), 0.0)) / scale
    hi = math.sqrt(max(u + z * math.sqrt(max(var_u, 0.0)), 0.0)) / scale
    # Hotelling's T^2 on the span of the draws; bias outside that span has zero noise
    evals, evecs = torch.linalg.eigh(cov)
    # directions with only rounding noise (sd < 1e-10 |g|) count as deterministic
    size2 = max(norm, float(mean.norm())) ** 2
    keep = evals > max(1e-12 * float(evals.max()), 1e-20 * size2, 1e-300)
    proj = evecs[:, keep].T @ d
    t2 = float(s * (proj ** 2 / evals[keep]).sum())
    dof = int(keep.sum())
    outside = float((d - evecs[:, keep] @ proj).norm())
    if outside > 1e-8 * scale + 1e-300:
        p_value = 0.0
    elif dof == 0:
        p_value = 1.0
    else:
        # (S - n) / (S - 1) T^2 ~ n F(n, S - n) ~ chi^2_n for S >> n
        stat = t2 * (s - dof) / (s - 1) if s > dof else t2
        p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                                torch.tensor(stat / 2, dtype=torch.float64)))
    std = centred.pow(2).sum(0).div(s - 1).sqrt()
    nz = std > 1e-10 * mean.abs()  # a coordinate with only rounding noise is deterministic, not infinitely good
    snr = float((mean.abs()[nz] / std[nz]).mean()) if bool(nz.any()) else float("nan")
    cos = float(F.cosine_similarity(mean, exact, dim=0, eps=1e-300))
    return {"samples": s, "coords": n, "exact_norm": norm, "rel_err": float(d.norm()) / scale,
            "bias_lo": lo, "bias_hi": hi, "noise": math.sqrt(tr / s) / scale, "cos": cos,
            "variance": tr / n, "snr": snr, "t2": t2, "dof": dof, "p_value": p_value,
            "biased": bool(p_value < alpha)}


def check_row(method: Method, problem: Problem, tau: float, samples: int, seed: int, level: float = 0.95,
              alpha: float = 1e-3, chunk: int = 8192, label: str | None = None) -> dict:
    """Exact gradient, S estimator draws and their statistics for one method / problem / tau."""
    label = label or method.name
    params = problem.make_params(method.param_dim)
    if method.latent_dim != problem.latent_dim:
        raise ValueError(f"decoder input size {method.latent_dim} != problem latent size {problem.latent_dim}")
    method.train()
    exact = exact_gradient(method, problem, params, tau)
    with torch.random.fork_rng():
        torch.manual_seed(_stable_seed(seed, problem.name, problem.kind, label, tau))
        draws = estimator_draws(method, problem, params, tau, samples, chunk)
    return gradient_stats(draws, exact, level, alpha)
