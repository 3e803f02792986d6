r"""Standard Gumbel noise and the Gumbel-max trick: the one sampler that every Gumbel-based law uses.

With :math:`u \sim U(0, 1)`, :math:`g = -\log(-\log u)` is standard Gumbel,
:math:`P(g \le x) = \exp(-e^{-x})`. For logits :math:`\ell \in \mathbb{R}^K` and i.i.d. standard
Gumbel :math:`g_k`, :math:`\arg\max_k(\ell_k + g_k)` is distributed as
:math:`\mathrm{Cat}(\mathrm{softmax}(\ell))` (the Gumbel-max trick); the Concrete / Gumbel-Softmax
relaxation and Gumbel-top-k sampling perturb logits with the same noise.
"""

from __future__ import annotations

import torch

from ._common import uniform_noise

__all__ = ["sample_gumbel", "gumbel_max_one_hot"]


def sample_gumbel(shape, dtype, device, generator=None) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise ``-log(-log u)``, one independent draw per element of ``shape``.

    ``u`` is clamped to ``[tiny, 1 - eps/2]`` (``tiny``, ``eps`` of ``dtype``), so every draw is finite:
    at most ``-log(-log tiny)`` below (about -4.5 in float32) and ``-log(-log(1 - eps/2))`` above
    (about 16.6). ``torch.rand`` is in ``[0, 1)`` and the upper bound is the largest number below 1,
    so the clamp changes no draw it can return; it only guards a 1 rounded up in low precision.
    Returns a tensor of ``shape`` without autograd history.
    """
    u = uniform_noise(shape, dtype, device, generator)
    info = torch.finfo(dtype)
    # in place on the fresh buffer (the noise has no autograd history): same values, fewer allocations
    return u.clamp_(info.tiny, 1.0 - info.eps / 2).log_().neg_().log_().neg_()


def gumbel_max_one_hot(logits: torch.Tensor, sample_shape=(), generator=None) -> torch.Tensor:
    """Exact one-hot categorical draws ``one_hot(argmax(logits + g))``, g standard Gumbel.

    Args:
        logits: ``(..., K)``, unnormalised log-probabilities (any common shift per row is ignored).
        sample_shape: leading shape of independent draws.
        generator: optional ``torch.Generator`` for the uniforms.

    Returns:
        ``sample_shape + logits.shape``, dtype of ``logits``, entries 0 or 1 with a single 1 along the
        last dimension; one fresh Gumbel per element. A hard sample, so it carries no gradient.
    """
    shape = torch.Size(sample_shape) + logits.shape
    with torch.no_grad():
        keys = sample_gumbel(shape, logits.dtype, logits.device, generator).add_(logits)
        index = keys.argmax(-1, keepdim=True)
        return torch.zeros_like(keys).scatter_(-1, index, 1.0)
