"""Property-based checks (hypothesis) over the parameter ranges users hit: for every distribution,
logits in [-30, 30], temperatures in [0.01, 10], float32 and float64 -- samples lie in the support,
log_prob of the distribution's own samples is finite, and gradients are finite."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from relaxrun.distributions.binary_concrete import RelaxedBernoulli
from relaxrun.distributions.concrete import GumbelSoftmax

DTYPES = [torch.float32, torch.float64]


def bernoulli_like(cls, **extra):
    def make(logits, tau):
        return cls(tau, logits=logits, **extra)
    return make


def categorical_like(cls, k=5, **extra):
    def make(logits, tau):
        return cls(tau, logits=logits.reshape(-1, k) if logits.numel() % k == 0 else logits[: k * (logits.numel() // k)].reshape(-1, k), **extra)
    return make


FACTORIES = {
    "RelaxedBernoulli": bernoulli_like(RelaxedBernoulli),
    "GumbelSoftmax": categorical_like(GumbelSoftmax),
}

logit_lists = st.lists(st.floats(-30, 30, allow_nan=False), min_size=10, max_size=10)
taus = st.floats(0.01, 10)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@settings(max_examples=40, deadline=None, derandomize=True)
@given(logits=logit_lists, tau=taus)
def test_samples_in_support_log_prob_and_gradients_finite(name, dtype, logits, tau):
    logits = torch.tensor(logits, dtype=dtype, requires_grad=True)
    d = FACTORIES[name](logits, tau)
    z = d.rsample((3,))
    assert bool(d.support.check(z).all()), f"{name}: sample outside the support"
    lp = d.log_prob(z)
    assert torch.isfinite(lp).all(), f"{name}: log_prob of own sample not finite"
    (z.sum() + lp.sum()).backward()
    assert torch.isfinite(logits.grad).all(), f"{name}: non-finite gradient"
