"""Property-based checks (hypothesis) over the parameter ranges users hit: for every distribution,
logits in [-30, 30], temperatures in [0.01, 10], float32 and float64 -- samples lie in the support,
log_prob of the distribution's own samples is finite, and gradients are finite."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from relaxrun.distributions import (CorrelatedRelaxedBernoulli, GumbelSoftmax, GumbelTopK, HardConcrete,
                                    InvertibleGaussian, LogisticNormalSoftmax, RelaxedBernoulli, StochasticGate,
                                    StochasticTimesSmooth, StraightThroughBernoulli, equicorrelation)

DTYPES = [torch.float32, torch.float64]


def bernoulli_like(cls, **extra):
    def make(logits, tau):
        return cls(tau, logits=logits, **extra)
    return make


def categorical_like(cls, k=5, **extra):
    def make(logits, tau):
        return cls(tau, logits=logits.reshape(-1, k) if logits.numel() % k == 0 else logits[: k * (logits.numel() // k)].reshape(-1, k), **extra)
    return make


class TopKHard:
    """GumbelTopK seen through its exact hard sample: the relaxed vector has no tractable density."""

    def __init__(self, logits, tau):
        self.d = GumbelTopK(tau, 2, logits=logits.reshape(2, 5))

    def check(self):
        z, idx = self.d.rsample_with_hard((3,))
        # the Xie & Ermon relaxation sums k softmaxes: entries lie in [0, k] (above 1 at high t), sum k
        assert torch.isfinite(z).all() and bool(((z >= 0) & (z <= 2 + 1e-5)).all())
        assert torch.allclose(z.sum(-1).double(), torch.full(z.shape[:-1], 2.0, dtype=torch.float64), atol=1e-3)
        return z, self.d.log_prob_hard(idx)


FACTORIES = {
    "RelaxedBernoulli": bernoulli_like(RelaxedBernoulli),
    "GumbelSoftmax": categorical_like(GumbelSoftmax),
    "HardConcrete": lambda logits, tau: HardConcrete(tau, logits=logits),
    "StochasticGate": lambda logits, tau: StochasticGate(logits / 10, sigma=tau),
    "StraightThroughBernoulli": lambda logits, tau: StraightThroughBernoulli(logits=logits),
    "StochasticTimesSmooth": lambda logits, tau: StochasticTimesSmooth(logits=logits),
    "CorrelatedRelaxedBernoulli": lambda logits, tau: CorrelatedRelaxedBernoulli(
        tau, logits=logits, correlation=equicorrelation(0.3, 10, dtype=logits.dtype)),
    "InvertibleGaussian": lambda logits, tau: InvertibleGaussian(tau, logits.reshape(2, 5) / 3, 1.0),
    "LogisticNormalSoftmax": lambda logits, tau: LogisticNormalSoftmax(logits.reshape(2, 5) / 3, 1.0),
    "GumbelTopK": TopKHard,
}

logit_lists = st.lists(st.floats(-30, 30, allow_nan=False), min_size=10, max_size=10)
taus = st.floats(0.01, 10)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@settings(max_examples=25, deadline=None, derandomize=True)
@given(logits=logit_lists, tau=taus)
def test_samples_in_support_log_prob_and_gradients_finite(name, dtype, logits, tau):
    logits = torch.tensor(logits, dtype=dtype, requires_grad=True)
    d = FACTORIES[name](logits, tau)
    if isinstance(d, TopKHard):
        z, lp = d.check()
    else:
        z = d.rsample((3,))
        assert bool(d.support.check(z).all()), f"{name}: sample outside the support"
        lp = d.log_prob(z)
    assert torch.isfinite(lp).all(), f"{name}: log_prob of own sample not finite"
    (z.sum() + lp.sum()).backward()
    assert torch.isfinite(logits.grad).all(), f"{name}: non-finite gradient"
