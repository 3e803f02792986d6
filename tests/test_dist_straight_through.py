"""StraightThroughBernoulli: Bernoulli law forward, identity gradient with respect to p backward.

Statistical tests use a fixed seed and level 1e-3 (false-alarm probability 0.001 per assertion
under a fresh seed).
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import kl_divergence

from relaxrun.distributions.straight_through import StraightThroughBernoulli

ALPHA = 1e-3


def test_log_prob_is_the_bernoulli_pmf_and_sums_to_one():
    p = np.array([1e-6, 0.1, 0.5, 0.93])
    d = StraightThroughBernoulli(probs=torch.tensor(p, dtype=torch.float64))
    lp = d.log_prob(d.enumerate_support())  # (2, 4): values 0 and 1
    np.testing.assert_allclose(lp.numpy(), [stats.bernoulli.logpmf(0, p), stats.bernoulli.logpmf(1, p)], rtol=1e-9)
    np.testing.assert_allclose(lp.exp().sum(0).numpy(), 1.0, atol=1e-12)
    # the same law from logits
    dl = StraightThroughBernoulli(logits=torch.tensor(np.log(p) - np.log1p(-p)))
    np.testing.assert_allclose(dl.log_prob(dl.enumerate_support()).numpy(), lp.numpy(), rtol=1e-9)


def test_samples_match_the_law():
    n = 20000
    p = torch.tensor([0.03, 0.3, 0.5, 0.9], dtype=torch.float64)
    b = StraightThroughBernoulli(probs=p).rsample((n,), generator=torch.Generator().manual_seed(2))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    for k in range(4):
        ones = b[:, k].sum().item()
        exp1 = n * p[k].item()
        assert stats.chisquare([n - ones, ones], [n - exp1, exp1]).pvalue > ALPHA


def test_noise_is_independent_across_sample_and_batch_elements():
    n = 20000
    torch.manual_seed(0)
    b = StraightThroughBernoulli(probs=torch.full((3,), 0.5, dtype=torch.float64)).sample((n,)).numpy()
    assert np.abs(np.corrcoef(b.T)[np.triu_indices(3, 1)]).max() < 4 / math.sqrt(n)
    assert abs(np.corrcoef(b[:-1, 0], b[1:, 0])[0, 1]) < 4 / math.sqrt(n)
    e = StraightThroughBernoulli(logits=torch.tensor(0.0)).expand((2, 2)).sample((n,)).reshape(n, 4).numpy()
    assert np.abs(np.corrcoef(e.T)[np.triu_indices(4, 1)]).max() < 4 / math.sqrt(n)


def test_shapes_and_expand():
    d = StraightThroughBernoulli(logits=torch.zeros(4, 3))
    assert d.batch_shape == (4, 3) and d.event_shape == ()
    z = d.rsample((5, 2))
    assert z.shape == (5, 2, 4, 3) and d.log_prob(z).shape == (5, 2, 4, 3)
    e = d.expand((6, 4, 3))
    assert e.batch_shape == (6, 4, 3) and e.rsample((2,)).shape == (2, 6, 4, 3)


def test_forward_is_the_hard_sample_backward_is_identity_in_p():
    p = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64, requires_grad=True)
    d = StraightThroughBernoulli(probs=p)
    z = d.rsample((1000,), generator=torch.Generator().manual_seed(4))
    assert set(z.detach().unique().tolist()) == {0.0, 1.0}  # bit-exact 0/1 values, not b + p - p rounding
    c = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    # linear loss: the ST gradient is exact: d/dp E[c z] = c, per sample
    (g,) = torch.autograd.grad((c * z).sum(), p)
    np.testing.assert_allclose(g.numpy(), 1000 * c.numpy(), rtol=1e-12)
    # non-linear loss f(z) = z^2: the estimator is f'(b) = 2b (biased; E = 2p, true derivative 1)
    z = d.rsample((1000,), generator=torch.Generator().manual_seed(4))
    (g,) = torch.autograd.grad((z ** 2).sum(), p)
    np.testing.assert_allclose(g.numpy(), (2 * z.detach()).sum(0).numpy(), rtol=1e-12)


def test_gradient_with_respect_to_logits_is_p_times_one_minus_p():
    a = torch.tensor([-20.0, -1.0, 0.0, 2.0, 20.0], requires_grad=True)
    d = StraightThroughBernoulli(logits=a)
    z = d.rsample()
    (g,) = torch.autograd.grad(z.sum(), a)
    p = torch.sigmoid(a.detach())
    torch.testing.assert_close(g, p * (1 - p))
    assert torch.isfinite(d.log_prob(z)).all()
    # the score-function term needs the log_prob gradient: d log p(b) / d a = b - p
    (gs,) = torch.autograd.grad(d.log_prob(z.detach()).sum(), a)
    torch.testing.assert_close(gs, z.detach() - p)


@pytest.mark.parametrize("lq,lp", [(0.3, -1.0), (-20.0, 20.0), (20.0, 0.0)])
def test_kl_divergence_is_the_bernoulli_kl(lq, lp):
    q = StraightThroughBernoulli(logits=torch.tensor(lq, dtype=torch.float64))
    p = StraightThroughBernoulli(logits=torch.tensor(lp, dtype=torch.float64))
    support = q.enumerate_support()
    exact = (q.log_prob(support).exp() * (q.log_prob(support) - p.log_prob(support))).sum()
    kl = kl_divergence(q, p)
    assert torch.isfinite(kl) and kl.item() == pytest.approx(exact.item(), rel=1e-9, abs=1e-12)
    kl32 = kl_divergence(StraightThroughBernoulli(logits=torch.tensor(lq)),
                         StraightThroughBernoulli(logits=torch.tensor(lp)))
    assert torch.isfinite(kl32) and kl32.item() == pytest.approx(exact.item(), rel=1e-4, abs=1e-6)


def test_log_prob_finite_on_own_float32_samples():
    d = StraightThroughBernoulli(logits=torch.tensor([-20.0, -3.0, 0.0, 3.0, 20.0]))
    z = d.rsample((500,))
    assert z.dtype == torch.float32 and torch.isfinite(d.log_prob(z)).all()


def test_bad_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="probs"):
        StraightThroughBernoulli(probs=torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="probs"):
        StraightThroughBernoulli(probs=-0.1)
    with pytest.raises(ValueError, match="logits"):
        StraightThroughBernoulli(logits=torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="exactly one"):
        StraightThroughBernoulli(probs=0.5, logits=0.0)
    with pytest.raises(ValueError):
        StraightThroughBernoulli(probs=0.5).log_prob(torch.tensor(0.5))
