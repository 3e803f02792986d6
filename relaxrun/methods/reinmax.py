r"""``method=reinmax``: ReinMax, a second-order straight-through estimator for categorical latents.

Liu, Zhao, Chen, Gao & Li 2023, "Bridging discrete and backpropagation: straight-through and beyond"
(NeurIPS), the algorithm "ReinMax"; checked against the authors' reference implementation
(the ``reinmax`` package), whose hand-written backward pass computes the same Jacobian. N categorical
variables of K classes (default 20 x 10), posterior q(c | x) = prod_n Cat(softmax(theta_n)), uniform
prior, analytic KL.

The paper shows that straight-through (ST) is a first-order (forward Euler) approximation of the
gradient and builds ReinMax from Heun's method, a second-order one. Per variable, with theta = the
logits and tau >= 1:

    pi_0 = softmax(theta)
    D    ~ Cat(pi_0)                                   (one-hot; tau does not change the sampling)
    pi_1 = (D + softmax(theta / tau)) / 2
    pi_1 = softmax(stopgrad(ln pi_1 - theta) + theta)  (value pi_1; Jacobian that of a softmax at pi_1)
    pi_2 = 2 pi_1 - pi_0 / 2
    out  = pi_2 - stopgrad(pi_2) + D                   (value D exactly)

so the gradient is d out / d theta = 2 (diag pi_1 - pi_1 pi_1^T) - (diag pi_0 - pi_0 pi_0^T) / 2.
ln pi_1 is computed in log space (logaddexp of ln D and log_softmax(theta / tau), minus ln 2): it is
finite even where softmax(theta / tau) underflows. At tau = 1 the estimator's mean over D is the
exact gradient of E[f(D)] for every f quadratic in D (the trapezoidal rule behind Heun's method
integrates a quadratic exactly; plain ST is exact only for f linear in D), which
tests/test_method_st_family.py checks.

Temperature: the paper uses tau >= 1 (larger tau smooths pi_1 towards uniform; its reference code
recommends tau >= 1, unlike ST-GS's tau < 1). ``method.tau`` must be >= 1, and an exponential
``trainer.tau_schedule`` must not go below 1 (``trainer.tau_min >= 1``). ``loss`` itself computes
the same formulas at any tau > 0, so ``relaxrun-gradcheck`` can show rows below 1 too.

Reported bound (``metric_kind = "discrete"``): hard c ~ Cat(q), -log p(x | c) + analytic KL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import ConfigError, NotApplicable, finite
from ..distributions.concrete import log_softmax
from .base import Terms, register, straight_through
from .families import CategoricalLatentConfig, CategoricalLatentMethod

#: the smallest temperature the paper (and its reference code) uses
MIN_TAU = 1.0


@dataclass
class ReinMaxConfig(CategoricalLatentConfig):
    """Options of ``method=reinmax``; defaults and their meaning in ``configs/method/reinmax.yaml``."""

    def __post_init__(self):
        super().__post_init__()
        finite("method.tau", self.tau)
        if self.tau < MIN_TAU:  # a valid temperature elsewhere: a sweep grid skips this job
            raise NotApplicable(f"method.tau must be a finite number >= {MIN_TAU:g} for ReinMax (tau >= 1, "
                                f"Liu et al. 2023); got {self.tau!r}")

    def check_compatible(self, run) -> None:
        t = run.trainer
        if t.tau_schedule != "constant" and t.tau_rate > 0 and t.tau_min < MIN_TAU:
            raise ConfigError(f"trainer.tau_min must be >= {MIN_TAU:g} for method {self.name} with "
                              f"trainer.tau_schedule={t.tau_schedule} (ReinMax needs tau >= 1); "
                              f"got {t.tau_min!r}")


def reinmax_pi1_log(logits: torch.Tensor, hard: torch.Tensor, tau: float) -> torch.Tensor:
    """ln pi_1 = ln((D + softmax(theta / tau)) / 2) from log values: finite everywhere, no gradient."""
    with torch.no_grad():
        ls = log_softmax(logits / tau)
        return torch.where(hard > 0, F.softplus(ls), ls) - math.log(2.0)


def reinmax_surrogate(logits: torch.Tensor, hard: torch.Tensor, tau: float) -> torch.Tensor:
    """pi_2 = 2 pi_1 - pi_0 / 2 of the ReinMax algorithm (module docstring), differentiable in ``logits``."""
    pi0 = log_softmax(logits).exp()
    log_pi1 = reinmax_pi1_log(logits, hard, tau)
    pi1 = log_softmax(logits + (log_pi1 - logits.detach())).exp()
    return 2.0 * pi1 - 0.5 * pi0


@register("reinmax")
class ReinMaxMethod(CategoricalLatentMethod):
    """ReinMax; see the module docstring."""

    Config = ReinMaxConfig

    def loss(self, params, decode, x, tau) -> Terms:
        logits = self.split(params)
        hard = self.hard_sample(logits)
        z = straight_through(hard, reinmax_surrogate(logits, hard, tau))
        return self.terms(z, logits, decode, x)
