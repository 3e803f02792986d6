r"""``method=vimco``: the multi-sample bound trained with VIMCO's leave-one-out learning signals
(Mnih & Rezende 2016, "Variational inference for Monte Carlo objectives").

Latent (``latent``): Bernoulli units or categorical variables, exactly as ``method=reinforce``
(:class:`relaxrun.methods.reinforce.ScoreFunctionMethod`: sizes, bound, prior samples,
reconstructions and IWAE weights come from the family).

Objective. Per input x, k = ``samples`` hard draws b_1..b_k ~ q(b | x), log-weights
l_j = log p(x | b_j) + log p(b_j) - log q(b_j | x) and the k-sample bound

    L = log (1/k) sum_j exp(l_j)   (<= log p(x); Burda et al. 2016, the IWAE-k bound).

Its gradient (Mnih & Rezende 2016, eq. 5-6) is sum_j L grad log q(b_j) + sum_j w~_j grad l_j, with
w~_j = softmax(l)_j and grad l_j taken at fixed b_j. VIMCO replaces the learning signal L of draw j by

    L - L_{-j},   L_{-j} = log (1/k) (sum_{i != j} exp(l_i) + exp(mean_{i != j} l_i)),

the bound with draw j replaced by the geometric mean of the others (eq. 9-10), which does not depend
on b_j, so the estimator stays unbiased for grad L. Needs k >= 2. The training loss is the surrogate

    -( L + sum_j stopgrad(L - L_{-j}) log q(b_j)  -  stopgrad(same) ),

whose value is -L (the k-sample negative bound of the batch) and whose gradient is VIMCO's estimate,
for the encoder and the decoder alike. The KL is not analytic here: it is inside the weights, as the
multi-sample bound needs.

What is reported, and stated as such. The objective VIMCO optimises is the k-sample bound: it is the
training loss, ``method/iwae_k`` in TensorBoard, and on the test set the ``relaxed_objective`` column
(:meth:`relaxed`; its kind is :meth:`objective_kind`, ``iwae-<k>``). Beside it, the method's
:meth:`bound` is the 1-sample discrete negative ELBO (one hard draw, exact KL; ``metric_kind =
"discrete"``), the same quantity every other discrete method reports, so results stay comparable;
``method/elbo_1`` is its Monte Carlo value over the training draws. relaxrun-gradcheck checks VIMCO
against the exact gradient of the k-sample bound (:meth:`estimand` is ``iwae-<k>``), enumerated over
every k-tuple of configurations.

``samples`` defaults to 2, two decoder evaluations per input, the count of ``reinforce``, ``arm`` and
``disarm``; the papers use 5 to 50 (a tighter bound, k decoder passes). ``tau`` is not used. Extras:
``iwae_k`` (mean -L), ``elbo_1`` (mean over draws of -l_j), ``signal_std`` (std of L - L_{-j}) and
``ess`` (effective sample size 1 / sum_j w~_j^2 over k, in (1/k, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..checks import ConfigError
from .base import Terms, bernoulli_nll, register
from .reinforce import ScoreFunctionConfig, ScoreFunctionMethod


@dataclass
class VimcoConfig(ScoreFunctionConfig):
    """Options of ``method=vimco``; defaults and their meaning in ``configs/method/vimco.yaml``."""

    def __post_init__(self):
        super().__post_init__()
        if self.samples < 2:
            raise ConfigError(f"method.samples must be at least 2 for vimco (the learning signal of a draw "
                              f"compares the bound with and without it); got {self.samples}")


def leave_one_out_bounds(log_w: torch.Tensor) -> torch.Tensor:
    """``[k, B]`` L_{-j}: the k-sample bound with draw j's log-weight replaced by the mean of the others'.

    ``log_w`` ``[k, B]``; computed in log space (no overflow for log-weights of hundreds of nats).
    """
    k = log_w.shape[0]
    geo = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)              # [k, B] mean of the others
    rows = log_w.unsqueeze(0).expand(k, *log_w.shape).clone()         # rows[j, i] = l_i
    idx = torch.arange(k, device=log_w.device)
    rows[idx, idx] = geo                                              # ... with l_j -> geo_j
    return torch.logsumexp(rows, 1) - math.log(k)


@register("vimco")
class VimcoMethod(ScoreFunctionMethod):
    """The k-sample bound with VIMCO's leave-one-out control variates; see the module docstring."""

    Config = VimcoConfig

    def estimand(self) -> str:
        return f"iwae-{self.cfg.samples}"

    def objective_kind(self) -> str:
        """What :meth:`relaxed` (the training objective on evaluation data) is: the k-sample bound."""
        return f"iwae-{self.cfg.samples}"

    def _log_weights(self, params, decode, x):
        """(log-weights ``[k, B]``, with the decoder's gradient and log q's at fixed draws, and log q ``[k, B]``)."""
        z, log_q, _ = self._draws(params)
        return -bernoulli_nll(decode(z), x) + self.log_prior(z) - log_q, log_q

    def loss(self, params, decode, x, tau) -> Terms:
        """Terms with ``recon`` = -L per example and ``kl`` = 0 (the k-sample bound has no separate KL term;
        ``recon + kl`` is the objective, as for every method)."""
        log_w, log_q = self._log_weights(params, decode, x)
        k = log_w.shape[0]
        bound = torch.logsumexp(log_w, 0) - math.log(k)               # [B] L, with gradient at fixed draws
        lw = log_w.detach()
        signal = bound.detach() - leave_one_out_bounds(lw)            # [k, B] L - L_{-j}
        score = (signal * log_q).sum(0)
        neg = -(bound + score - score.detach())                       # value -L, gradient VIMCO's
        w = torch.softmax(lw, 0)
        extras = {"iwae_k": -bound.detach().mean(), "elbo_1": -lw.mean(), "signal_std": signal.std(correction=0),
                  "ess": (1.0 / w.pow(2).sum(0)).mean() / k}
        return Terms(neg.mean(), neg, torch.zeros_like(neg), extras)

    def relaxed(self, params, decode, x, tau) -> Terms:
        """The training objective on evaluation data: -L, the k-sample negative bound (``iwae-<k>``)."""
        return self.loss(params, decode, x, tau)
