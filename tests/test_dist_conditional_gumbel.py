"""The conditional Gumbel sampler checked against its exact law. Fixed seeds; every KS test is at
false-alarm rate 1e-3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from relaxrun.distributions.conditional_gumbel import conditional_gumbel, conditional_perturbed_logits
from relaxrun.distributions.gumbel import gumbel_max_one_hot

ALPHA = 1e-3
LOGITS = [1.0, -0.5, 0.3, -2.0]


def gumbel_cdf(loc: float):
    return lambda y: np.exp(-np.exp(-(np.asarray(y) - loc)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_argmax_is_the_hard_sample_always(dtype):
    # logits from tiny to huge (float32 resolves ~0.06 at 1e6), every category conditioned on,
    # including those of probability e^-1000
    torch.manual_seed(0)
    scale = torch.tensor([1e-3, 1.0, 30.0, 1e3, 1e6], dtype=dtype).view(5, 1, 1)
    logits = (torch.randn(5, 40, 6, dtype=dtype) * scale)
    idx = torch.randint(0, 6, (5, 40))
    g = conditional_gumbel(logits, idx, 50)
    assert g.shape == (50, 5, 40, 6) and g.dtype == dtype and torch.isfinite(g).all()
    assert torch.equal((logits + g).argmax(-1), idx.expand(50, 5, 40))
    y = conditional_perturbed_logits(logits, F.one_hot(idx, 6).to(dtype), 50)
    assert torch.equal(y.argmax(-1), idx.expand(50, 5, 40))
    # one-hot and index forms give the same draws from the same stream
    torch.manual_seed(1)
    a = conditional_gumbel(logits, idx, 3)
    torch.manual_seed(1)
    b = conditional_gumbel(logits, F.one_hot(idx, 6).to(dtype), 3)
    torch.manual_seed(1)
    c = conditional_gumbel(logits, F.one_hot(idx, 6).bool(), 3)
    torch.manual_seed(1)
    e = conditional_gumbel(logits, idx.int(), 3)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, e)


def test_conditional_values_follow_the_exact_conditional_law():
    """Given D = d: the value at d (the max) is Gumbel(logsumexp l); given that max M, each other
    value's truncated-Gumbel CDF F_i(y | M) = exp(-e^{-(y - l_i)}) / exp(-e^{-(M - l_i)}) maps it to
    Uniform(0, 1) (probability integral transform)."""
    torch.manual_seed(2)
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    lse = float(torch.logsumexp(logits, 0))
    for d in (0, 3):  # the likeliest category and the least likely one
        y = conditional_perturbed_logits(logits, torch.tensor(d), 20000).numpy()
        top = y[:, d]
        assert stats.kstest(top, gumbel_cdf(lse)).pvalue > ALPHA
        for i, li in enumerate(LOGITS):
            if i == d:
                continue
            assert np.all(y[:, i] < top)
            log_cdf = -np.exp(-(y[:, i] - li)) + np.exp(-(top - li))
            assert stats.kstest(np.exp(log_cdf), "uniform").pvalue > ALPHA, (d, i)


def test_marginally_over_the_categorical_the_noise_is_standard_gumbel():
    """With D ~ Cat(softmax(l)) first, the conditional noise is unconditionally i.i.d. Gumbel(0, 1):
    KS per coordinate, and the perturbed argmax is D (so D's law is untouched)."""
    torch.manual_seed(3)
    logits = torch.tensor(LOGITS, dtype=torch.float64).expand(20000, 4)
    hard = gumbel_max_one_hot(logits)
    g = conditional_gumbel(logits, hard)[0].numpy()
    for k in range(4):
        assert stats.kstest(g[:, k], gumbel_cdf(0.0)).pvalue > ALPHA, k
    # pairwise independence, as of i.i.d. noise: correlations within 4 s.e. (1 / sqrt(S))
    corr = np.corrcoef(g.T)[np.triu_indices(4, 1)]
    assert np.all(np.abs(corr) < 4 / math.sqrt(20000)), corr


def test_no_gradient_reaches_the_noise_but_the_perturbed_logits_carry_the_identity():
    logits = torch.randn(3, 5, requires_grad=True)
    hard = torch.tensor([0, 4, 2])
    g = conditional_gumbel(logits, hard, 2)
    assert not g.requires_grad
    y = conditional_perturbed_logits(logits, hard, 2)
    (grad,) = torch.autograd.grad(y.sum(), logits)
    assert torch.equal(grad, torch.full((3, 5), 2.0))


def test_bad_arguments_are_refused():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="n must be >= 1"):
        conditional_gumbel(logits, torch.zeros(3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="index hard sample"):
        conditional_gumbel(logits, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="one-hot hard sample"):
        conditional_gumbel(logits, torch.zeros(3, 5))
