r"""One-dimensional quadrature for the moments, entropies and KL divergences of the laws that are a
logistic variable seen through a fixed map (Binary Concrete, Hard Concrete).

Both laws are functions of :math:`y = (\text{logits} + u)/\tau`, :math:`u` standard logistic, so
:math:`y \sim \mathrm{Logistic}(\text{logits}/\tau, 1/\tau)`, and an expectation is
:math:`\int g(y)\,p(y)\,dy` with two length scales: the density's, :math:`1/\tau`, around
``logits/tau``, and the integrand's, of order 1 around :math:`y = 0` (``sigmoid``, ``softplus``).
The integral is a composite Gauss-Legendre rule (8 nodes per panel) over panels cut at both scales:
161 breakpoints spread over +-40 density scales around the location (the logistic tail beyond is
below 4e-18 of the mass) and 161 over [-40, 40] in y, merged and sorted per element. Every panel
then holds a piece of the integrand that is smooth on the panel's own scale, so the rule is
accurate to about 1e-12 in float64 at any temperature from 1e-3 to 1e3 (tested against closed
forms at tau = 1 and against Monte Carlo). It is computed in float64 and differentiable in the
parameters (nodes and integrand alike).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["compact_broadcast", "gauss_legendre_panels", "logistic_breakpoints", "logistic_expectation", "logistic_log_density"]

_ORDER = 8
_SPAN = 40.0
_POINTS = 161


def compact_broadcast(*tensors: torch.Tensor):
    """``(views, shape)``: the tensors broadcast to ``shape``, with every dimension that all of them only
    repeat (stride 0, as ``expand`` makes) cut to size 1. A quadrature over the views costs what the
    distinct parameters need, not the batch (Pyro's particle and plate dimensions are such repeats);
    ``result.expand(shape)`` restores the full shape."""
    ts = torch.broadcast_tensors(*tensors)
    shape = ts[0].shape
    index = tuple(slice(0, 1) if n > 1 and all(t.stride(d) == 0 for t in ts) else slice(None)
                  for d, n in enumerate(shape))
    return [t[index] for t in ts], shape


def _nodes(dtype, device):
    x, w = np.polynomial.legendre.leggauss(_ORDER)
    return torch.as_tensor(x, dtype=dtype, device=device), torch.as_tensor(w, dtype=dtype, device=device)


def gauss_legendre_panels(edges: torch.Tensor):
    """Nodes and weights of the composite rule over sorted ``edges`` ``(..., P + 1)``: both ``(..., P * 8)``.

    ``(f(nodes) * weights).sum(-1)`` approximates the integral of f from ``edges[..., 0]`` to
    ``edges[..., -1]``; zero-width panels (repeated edges) contribute nothing.
    """
    x, w = _nodes(edges.dtype, edges.device)
    a, b = edges[..., :-1, None], edges[..., 1:, None]
    half = (b - a) / 2
    nodes = (a + half) + half * x
    weights = half * w
    return nodes.flatten(-2), weights.flatten(-2)


def logistic_breakpoints(loc: torch.Tensor, scale: torch.Tensor, lo: float | None = None,
                         hi: float | None = None) -> torch.Tensor:
    """Sorted panel edges ``(..., 324)`` for integrals against ``Logistic(loc, scale)`` of integrands
    with unit-scale features near 0, over +-40 scales around ``loc``, cut to [``lo``, ``hi``] when
    given (edges outside are moved onto the ends, making empty panels)."""
    grid = torch.linspace(-_SPAN, _SPAN, _POINTS, dtype=loc.dtype, device=loc.device)
    dens = loc.unsqueeze(-1) + scale.unsqueeze(-1) * grid
    lo_t = dens[..., :1] if lo is None else torch.full_like(dens[..., :1], lo)
    hi_t = dens[..., -1:] if hi is None else torch.full_like(dens[..., :1], hi)
    edges = torch.cat([dens, grid.expand(dens.shape), lo_t, hi_t], dim=-1)
    edges = torch.minimum(torch.maximum(edges, lo_t), hi_t)
    return edges.sort(dim=-1).values


def logistic_expectation(g, loc: torch.Tensor, scale: torch.Tensor, lo: float | None = None,
                         hi: float | None = None) -> torch.Tensor:
    """``E[g(y) 1{lo < y < hi}]`` for ``y ~ Logistic(loc, scale)`` (``batch_shape``), in float64.

    ``g`` maps nodes ``(..., n)`` to values of the same shape; ``loc`` and ``scale`` are float64
    tensors of one shape (the batch).
    """
    y, w = gauss_legendre_panels(logistic_breakpoints(loc, scale, lo, hi))
    dens = logistic_log_density(y, loc.unsqueeze(-1), scale.unsqueeze(-1)).exp()
    return (g(y) * dens * w).sum(-1)


def logistic_log_density(y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log of the Logistic(loc, scale) density at ``y`` (``loc``/``scale`` broadcast with ``y``)."""
    a = (y - loc) / scale
    return -a - 2 * F.softplus(-a) - torch.log(scale)
