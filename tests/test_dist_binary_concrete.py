"""RelaxedBernoulli (Binary Concrete) checked against its mathematics.

Statistical tests use fixed seeds; each KS / binomial check has a false-alarm rate <= 1e-3.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from relaxrun.distributions.binary_concrete import RelaxedBernoulli


def density(tau, logit, dtype=torch.float64):
    d = RelaxedBernoulli(torch.tensor(tau, dtype=dtype), logits=torch.tensor(logit, dtype=dtype))
    return lambda z: math.exp(d.log_prob(torch.tensor(z, dtype=dtype)).item())


def exact_cdf(tau, logit):
    return lambda x: 1 / (1 + np.exp(-(tau * (np.log(x) - np.log1p(-x)) - logit)))


@pytest.mark.parametrize("tau,logit", [(1.0, 0.0), (1.5, 1.3), (2.5, -2.0)])
def test_density_integrates_to_one_in_z(tau, logit):
    total, err = integrate.quad(density(tau, logit), 0, 1, limit=200)
    assert total == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("tau,logit", [(0.1, 0.0), (0.3, 2.0), (0.7, -1.0)])
def test_density_integrates_to_one_small_tau(tau, logit):
    # for tau < 1 the density is unbounded at 0 and 1: integrate p(sigmoid(y)) dz/dy over y instead
    d = RelaxedBernoulli(torch.tensor(tau, dtype=torch.float64), logits=torch.tensor(logit, dtype=torch.float64))

    def f(y):
        y = torch.tensor(y, dtype=torch.float64)
        log_jac = torch.nn.functional.logsigmoid(y) + torch.nn.functional.logsigmoid(-y)
        return math.exp((d.log_prob_logit(y) + log_jac).item())

    total, _ = integrate.quad(f, -np.inf, np.inf, limit=400)
    assert total == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("tau,logit", [(0.5, 0.7), (1.0, -1.5), (2.0, 0.0)])
def test_samples_match_exact_cdf(tau, logit):
    torch.manual_seed(0)
    d = RelaxedBernoulli(tau, logits=torch.full((20000,), logit, dtype=torch.float64))
    z = d.sample().numpy()
    assert stats.kstest(z, exact_cdf(tau, logit)).pvalue > 1e-3
    # the CDF method agrees with the formula used above
    grid = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    cdf = RelaxedBernoulli(tau, logits=torch.tensor(logit, dtype=torch.float64)).cdf(grid)
    assert torch.allclose(cdf, torch.tensor(exact_cdf(tau, logit)(grid.numpy())))


@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
def test_probability_above_half_is_p(tau):
    torch.manual_seed(1)
    p = 0.3
    n = 100000
    z = RelaxedBernoulli(tau, probs=torch.full((n,), p)).sample()
    frac = (z > 0.5).double().mean().item()
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_low_temperature_limit_is_bernoulli():
    torch.manual_seed(2)
    p = torch.tensor([0.1, 0.5, 0.8])
    z = RelaxedBernoulli(0.01, probs=p).sample((20000,))
    near_vertex = ((z < 1e-3) | (z > 1 - 1e-3)).double().mean()
    assert near_vertex > 0.97
    assert torch.allclose(z.double().mean(0), p.double(), atol=0.015)


def test_log_prob_agrees_with_torch_where_torch_is_accurate():
    torch.manual_seed(3)
    logits = torch.randn(500, dtype=torch.float64) * 2
    for tau in (0.5, 1.0, 2.0):
        ours = RelaxedBernoulli(tau, logits=logits)
        ref = torch.distributions.RelaxedBernoulli(torch.tensor(tau, dtype=torch.float64), logits=logits)
        z = ref.sample().clamp(1e-6, 1 - 1e-6)
        assert torch.allclose(ours.log_prob(z), ref.log_prob(z), rtol=1e-8, atol=1e-8)


def test_log_prob_of_own_float32_samples_small_tau():
    torch.manual_seed(4)
    logits = (torch.rand(5000) * 40 - 20)
    d = RelaxedBernoulli(0.05, logits=logits)
    z = d.rsample()
    lp32 = d.log_prob(z)
    assert torch.isfinite(lp32).all()
    # float64 reference at the same sample (the cached logit of z, in double precision)
    y64 = d._cache[1].double()
    lp64 = RelaxedBernoulli(0.05, logits=logits.double()).log_prob_logit(y64)
    assert torch.allclose(lp32.double(), lp64, rtol=1e-5, atol=1e-2)
    # none is exactly 0 or 1, but most sit on the last float32 numbers inside (0, 1), where the value
    # no longer holds the logit: the cache is what keeps their density exact
    assert not ((z == 0) | (z == 1)).any()
    edge = (z <= torch.finfo(z.dtype).tiny) | (z >= 1 - torch.finfo(z.dtype).eps / 2)
    assert edge.float().mean() > 0.5


def test_reparameterised_gradient_matches_finite_differences():
    # with the noise fixed, z is a deterministic smooth function of (logits, tau)
    logits = torch.tensor([0.3, -1.2], dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    def f(l, t):
        g = torch.Generator().manual_seed(5)
        return (RelaxedBernoulli(t, logits=l).rsample((4000,), generator=g) ** 2).mean()

    f(logits, tau).backward()
    h = 1e-6
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = h
        fd = (f(logits + e, tau) - f(logits - e, tau)) / (2 * h)
        assert logits.grad[i].item() == pytest.approx(fd.item(), rel=1e-5)
    fd_tau = (f(logits, tau + h) - f(logits, tau - h)) / (2 * h)
    assert tau.grad.item() == pytest.approx(fd_tau.item(), rel=1e-5)


def test_noise_is_independent_across_elements_and_samples():
    torch.manual_seed(6)
    d = RelaxedBernoulli(1.0, logits=torch.zeros(2))
    z = d.sample((20000,))
    assert z.shape == (20000, 2)
    corr = np.corrcoef(z[:, 0].numpy(), z[:, 1].numpy())[0, 1]
    assert abs(corr) < 0.03  # |r| of independent samples: sd ~ 0.007
    assert (z[1:] != z[:-1]).all()


def test_expand_and_shapes():
    d = RelaxedBernoulli(torch.tensor([0.5, 1.0, 2.0]), logits=torch.zeros(4, 1))
    assert d.batch_shape == (4, 3) and d.event_shape == ()
    e = d.expand((2, 4, 3))
    assert e.batch_shape == (2, 4, 3)
    assert e.rsample((5,)).shape == (5, 2, 4, 3)


@pytest.mark.parametrize("kwargs,word", [
    (dict(temperature=1.0, probs=torch.tensor([1.5])), "probs"),
    (dict(temperature=1.0, probs=torch.tensor([float("nan")])), "probs"),
    (dict(temperature=1.0, logits=torch.tensor([float("nan")])), "logits"),
    (dict(temperature=1.0, logits=torch.tensor([float("inf")])), "logits"),
    (dict(temperature=0.0, logits=torch.tensor([0.0])), "temperature"),
    (dict(temperature=-1.0, logits=torch.tensor([0.0])), "temperature"),
    (dict(temperature=float("nan"), logits=torch.tensor([0.0])), "temperature"),
    (dict(temperature=1.0), "probs or logits"),
    (dict(temperature=1.0, probs=torch.tensor([0.5]), logits=torch.tensor([0.0])), "probs or logits"),
])
def test_bad_arguments_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        RelaxedBernoulli(**kwargs)
