r"""Gumbel perturbations conditioned on the argmax they produce (the posterior of the Gumbel-max trick).

With logits :math:`\ell \in \mathbb{R}^K` and i.i.d. standard Gumbel :math:`g_k`, the perturbed values
:math:`G_k = \ell_k + g_k` are independent :math:`\mathrm{Gumbel}(\ell_k)` and
:math:`D = \arg\max_k G_k \sim \mathrm{Cat}(\mathrm{softmax}(\ell))`. The law of :math:`G` given
:math:`D = d` has a closed form (Maddison, Tarlow & Minka 2014, "A* sampling", NeurIPS: the
Gumbel-max trick, the max of the perturbed values and its independence of the argmax, truncated
Gumbels; used for conditional resampling by Paulus, Maddison & Krause 2021, "Rao-Blackwellizing the
straight-through Gumbel-Softmax gradient estimator", ICLR, appendix A):

* the maximum :math:`M = \max_k G_k` is :math:`\mathrm{Gumbel}(\operatorname{logsumexp}\ell)` and
  independent of the argmax, so :math:`G_d = M` with :math:`M = \operatorname{logsumexp}\ell + g_0`,
  :math:`g_0` standard Gumbel;
* given :math:`M`, every other :math:`G_i` (:math:`i \ne d`) is independently
  :math:`\mathrm{Gumbel}(\ell_i)` truncated to :math:`(-\infty, M)`, with CDF
  :math:`F(y) = \exp(-e^{-(y - \ell_i)}) / \exp(-e^{-(M - \ell_i)})` for :math:`y < M`.

Sampling the truncated Gumbel by inverting that CDF at :math:`u = \exp(-e^{-g'})`, :math:`g'` standard
Gumbel, gives :math:`y = \ell_i - \log(e^{\ell_i - M} + e^{-g'})`, i.e. in log space

.. math::
    G_i = -\operatorname{logaddexp}(-M,\; -(\ell_i + g'_i)),

which is below :math:`M` and equals the unconditional :math:`\ell_i + g'_i` when that is far below
:math:`M`. Everything is computed with ``logsumexp`` / ``logaddexp``: no exponential of a logit is
formed, so logits of any size are fine. (Paulus et al. write the same draw with exponentials
:math:`E_k = e^{-g_k}`: :math:`G_d = \log Z - \log E_d`,
:math:`G_i = -\log(E_i e^{-\ell_i} + E_d / Z)`.)

Rounding: for :math:`i \ne d` the formula can round to exactly :math:`M` when :math:`\ell_i + g'_i`
exceeds :math:`M` by more than the float precision resolves (about 17 in float32 at :math:`|M|
\approx 1`, less for large logits). Such entries are moved just below :math:`G_d` (by a few units of
the last place), so that ``argmax(logits + g) == d`` holds exactly for every returned draw; the
change is far below the resolution of the dtype.

Shapes: ``logits`` ``[..., K]``; the hard sample is an index tensor ``[...]`` or a one-hot
``[..., K]``; ``n`` draws come back as ``[n, ..., K]``, without autograd history (the noise is a
constant of the parameters, as in the reparameterised Gumbel-Softmax).
"""

from __future__ import annotations

import torch

from .gumbel import sample_gumbel

__all__ = ["conditional_gumbel", "conditional_perturbed_logits"]


def _index(logits: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """The hard sample as an index tensor ``[..., 1]`` (from an index ``[...]`` or a one-hot ``[..., K]``)."""
    batch = logits.shape[:-1]
    if hard.shape == logits.shape and (hard.dtype.is_floating_point or hard.dtype == torch.bool):
        return hard.to(logits.dtype).argmax(-1, keepdim=True)
    if hard.dtype.is_floating_point or hard.dtype == torch.bool:
        raise ValueError(f"conditional_gumbel: a one-hot hard sample must have the logits' shape "
                         f"{tuple(logits.shape)}; got {tuple(hard.shape)}")
    if hard.shape != batch:
        raise ValueError(f"conditional_gumbel: an index hard sample must have shape {tuple(batch)} "
                         f"(the logits' without the last dim); got {tuple(hard.shape)}")
    return hard.long().unsqueeze(-1)


def conditional_gumbel(logits: torch.Tensor, hard: torch.Tensor, n: int = 1, generator=None) -> torch.Tensor:
    """``n`` standard-Gumbel perturbations g with ``argmax(logits + g) == hard``, from their conditional law.

    Args:
        logits: ``[..., K]`` finite unnormalised log-probabilities (detached: the draws carry no gradient).
        hard: the argmax to condition on, an integer index ``[...]`` or a one-hot ``[..., K]``.
        n: number of independent conditional draws.
        generator: optional ``torch.Generator`` for the uniforms.

    Returns:
        ``[n, ..., K]`` perturbations g (dtype of ``logits``), distributed as i.i.d. standard Gumbel
        noise conditioned on ``argmax(logits + g) == hard``; see the module docstring. Marginally
        over ``hard ~ Cat(softmax(logits))`` they are unconditional standard Gumbel noise.
    """
    if n < 1:
        raise ValueError(f"conditional_gumbel: n must be >= 1; got {n}")
    with torch.no_grad():
        lg = logits.detach()
        idx = _index(lg, hard).expand(n, *lg.shape[:-1], 1)
        lg = lg.expand(n, *lg.shape)
        g = sample_gumbel(lg.shape, lg.dtype, lg.device, generator)
        # the max, Gumbel(logsumexp(l)); its standard-Gumbel noise is the draw at the chosen index
        top = torch.logsumexp(lg, -1, keepdim=True) + g.gather(-1, idx)
        # the others, Gumbel(l_i) truncated below the max
        values = torch.logaddexp(-top, -(lg + g)).neg_()
        values.scatter_(-1, idx, top)
        noise = values - lg
        # rounding guard: every other perturbed value strictly below the chosen one, as computed
        perturbed = lg + noise
        chosen = perturbed.gather(-1, idx)
        is_chosen = torch.zeros_like(perturbed, dtype=torch.bool).scatter_(-1, idx, True)
        bad = (perturbed >= chosen) & ~is_chosen
        if bool(bad.any()):
            eps = torch.finfo(lg.dtype).eps
            margin = 4 * eps * (chosen.abs() + lg.abs()) + torch.finfo(lg.dtype).tiny
            noise = torch.where(bad, (chosen - lg) - margin, noise)
        return noise


def conditional_perturbed_logits(logits: torch.Tensor, hard: torch.Tensor, n: int = 1,
                                 generator=None) -> torch.Tensor:
    """``logits + g`` for ``n`` conditional draws g (:func:`conditional_gumbel`): ``[n, ..., K]`` samples of
    the perturbed values given their argmax ``hard``. The gradient w.r.t. ``logits`` is the identity
    (the noise is a constant), which is what the Gumbel-Rao estimator differentiates."""
    return logits + conditional_gumbel(logits, hard, n, generator)
