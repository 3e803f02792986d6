"""Shared helpers for relaxrun's distributions: argument checks with readable errors.

Every distribution in this package derives from :class:`RelaxrunDistribution`, which runs the
``arg_constraints`` check of :class:`torch.distributions.Distribution` itself so that a bad
argument raises a ``ValueError`` naming the distribution, the argument and its allowed range,
e.g. ``RelaxedBernoulli: probs must lie in [0, 1]; got 1.5``.
"""

from __future__ import annotations

import math
from numbers import Number

import torch
from torch.distributions import Distribution, constraints

__all__ = [
    "RelaxrunDistribution",
    "describe_constraint",
    "as_tensor",
    "probs_or_logits",
    "check_positive",
    "logit",
    "log1mexp",
    "atoms_and_density",
]


def describe_constraint(c: constraints.Constraint) -> str:
    """Plain-words range of a torch constraint (used in error messages)."""
    if c is constraints.real or isinstance(c, type(constraints.real)):
        return "be finite real numbers"
    if isinstance(c, constraints.independent):
        return describe_constraint(c.base_constraint)
    if isinstance(c, constraints.interval):
        return f"lie in [{c.lower_bound}, {c.upper_bound}]"
    if isinstance(c, constraints.half_open_interval):
        return f"lie in [{c.lower_bound}, {c.upper_bound})"
    if isinstance(c, constraints.greater_than):
        return f"be finite and > {c.lower_bound}"
    if isinstance(c, constraints.greater_than_eq):
        return f"be finite and >= {c.lower_bound}"
    if isinstance(c, constraints.less_than):
        return f"be < {c.upper_bound}"
    if c is constraints.simplex:
        return "be non-negative and sum to 1 along the last dimension"
    if c is constraints.positive_definite:
        return "be a symmetric positive-definite matrix"
    if c is constraints.lower_cholesky:
        return "be lower triangular with a positive diagonal"
    return f"satisfy {c}"


def _first_bad(value: torch.Tensor, ok: torch.Tensor) -> str:
    bad = value.detach().reshape(-1)[(~ok).reshape(-1)] if ok.shape == value.shape else value.detach().reshape(-1)
    return f"{bad[0].item():.6g}" if bad.numel() else "?"


class RelaxrunDistribution(Distribution):
    """Base class: friendlier ``validate_args`` messages; otherwise a plain torch Distribution."""

    def __init__(self, batch_shape=torch.Size(), event_shape=torch.Size(), validate_args=None):
        if validate_args is None:
            validate_args = Distribution._validate_args
        if validate_args:
            for name, c in self.arg_constraints.items():
                if name not in self.__dict__:  # lazy property not set by the user
                    continue
                value = getattr(self, name)
                if not torch.is_tensor(value):
                    continue
                if value.is_floating_point() and not torch.isfinite(value).all() and c is not constraints.real:
                    ok = torch.isfinite(value)
                else:
                    ok = c.check(value)
                    if c is constraints.real or isinstance(c, type(constraints.real)):
                        ok = ok & torch.isfinite(value)
                if not bool(ok.all()):
                    raise ValueError(
                        f"{type(self).__name__}: {name} must {describe_constraint(c)}; "
                        f"got {_first_bad(value, ok)}"
                    )
        # our own check replaces torch's (same constraints, clearer message)
        super().__init__(batch_shape, event_shape, validate_args=False)
        self._validate_args = bool(validate_args)


def as_tensor(x, like: torch.Tensor | None = None, name: str = "argument", dist: str = "") -> torch.Tensor:
    """Tensor from a number or tensor; floating point, on ``like``'s device/dtype when given."""
    if isinstance(x, torch.Tensor):
        if not (x.is_floating_point()):
            if x.dtype == torch.bool or x.is_complex():
                raise ValueError(f"{dist}: {name} must be a floating-point tensor; got dtype {x.dtype}")
            x = x.to(torch.get_default_dtype() if like is None else like.dtype)
        return x
    if isinstance(x, Number) and not isinstance(x, bool):
        if like is not None:
            return torch.tensor(float(x), dtype=like.dtype, device=like.device)
        return torch.tensor(float(x), dtype=torch.get_default_dtype())
    raise ValueError(f"{dist}: {name} must be a number or a floating-point tensor; got {type(x).__name__}")


def probs_or_logits(probs, logits, dist: str, is_binary: bool):
    """Exactly one of probs/logits, as a tensor; returns (name, tensor)."""
    if (probs is None) == (logits is None):
        raise ValueError(f"{dist}: give exactly one of probs or logits (got {'both' if probs is not None else 'neither'})")
    if probs is not None:
        return "probs", as_tensor(probs, name="probs", dist=dist)
    return "logits", as_tensor(logits, name="logits", dist=dist)


def check_positive(x, name: str, dist: str, like: torch.Tensor | None = None, validate: bool = True) -> torch.Tensor:
    """A strictly positive, finite parameter such as a temperature; ValueError otherwise."""
    t = as_tensor(x, like=like, name=name, dist=dist)
    if validate and not bool((torch.isfinite(t) & (t > 0)).all()):
        bad = t.detach().reshape(-1)[~(torch.isfinite(t) & (t > 0)).reshape(-1)][0].item()
        raise ValueError(f"{dist}: {name} must be finite and > 0; got {bad:.6g}")
    return t


def logit(p: torch.Tensor) -> torch.Tensor:
    """log p - log(1 - p) with p clamped to the open unit interval of its dtype."""
    eps = torch.finfo(p.dtype).eps
    tiny = torch.finfo(p.dtype).tiny
    p = p.clamp(tiny, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012, "Accurately computing
    log(1 - exp(-|a|))"): expm1 near 0, where 1 - exp(x) cancels; log1p far from it."""
    cut = -math.log(2)
    # each branch sees only inputs from its own side, so the branch not taken cannot put an
    # inf (and then 0 * inf = NaN) into the gradient
    near = torch.log(-torch.expm1(torch.clamp(x, min=cut)))
    far = torch.log1p(-torch.exp(torch.clamp(x, max=cut)))
    return torch.where(x > cut, near, far)


def atoms_and_density(value: torch.Tensor, log_mass_zero: torch.Tensor, log_mass_one: torch.Tensor,
                      log_density: torch.Tensor) -> torch.Tensor:
    """log p(value) for a law on [0, 1] with atoms at both ends: the atom's log mass at 0 and at 1,
    ``log_density`` strictly between, -inf outside [0, 1].

    The three are combined as ``w0 * atom0 + w1 * atom1 + (1 - w0 - w1) * density`` with 0/1 weights:
    every product is exact and so is the sum, in value and in gradient, as with nested ``torch.where``,
    which on the CPU costs a mispredicted branch per entry on the random masks a sample of these laws
    makes (forward and twice in backward). Needs finite inputs: finite parameters, and
    ``log_density`` evaluated at the value clamped into the open interval's closure.
    """
    w0 = (value <= 0).to(log_density.dtype)
    w1 = (value >= 1).to(log_density.dtype)
    out = w0 * log_mass_zero + w1 * log_mass_one + (1 - w0 - w1) * log_density
    return out.masked_fill((value < 0) | (value > 1), -math.inf)


LOG_2PI = math.log(2 * math.pi)
