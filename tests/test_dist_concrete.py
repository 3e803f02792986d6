"""GumbelSoftmax (Concrete) checked against its mathematics. False-alarm rates <= 1e-3 per check."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from relaxrun.distributions.binary_concrete import RelaxedBernoulli
from relaxrun.distributions.concrete import GumbelSoftmax


def test_k2_is_binary_concrete():
    # Concrete([a, 0]) has first coordinate BinaryConcrete(a): densities agree pointwise (same measure dz1)
    a = torch.tensor(0.8, dtype=torch.float64)
    for tau in (0.3, 1.0, 2.0):
        gs = GumbelSoftmax(tau, logits=torch.stack([a, torch.zeros_like(a)]))
        bc = RelaxedBernoulli(tau, logits=a)
        z1 = torch.linspace(0.01, 0.99, 37, dtype=torch.float64)
        v = torch.stack([z1, 1 - z1], -1)
        assert torch.allclose(gs.log_prob(v), bc.log_prob(z1), atol=1e-10)


@pytest.mark.parametrize("tau,logits", [(1.0, [0.5, -0.3, 0.0]), (1.5, [1.0, 0.0, -1.0]), (2.0, [0.0, 0.0, 0.0])])
def test_density_integrates_to_one_on_the_2_simplex(tau, logits):
    d = GumbelSoftmax(tau, logits=torch.tensor(logits, dtype=torch.float64))

    def f(z2, z1):
        v = torch.tensor([z1, z2, max(1 - z1 - z2, 0.0)], dtype=torch.float64)
        return math.exp(d.log_prob(v).item())

    total, _ = integrate.dblquad(f, 0, 1, 0, lambda z1: 1 - z1, epsabs=1e-5)
    assert total == pytest.approx(1.0, abs=1e-3)


def test_density_integrates_to_one_k2_small_tau():
    d = GumbelSoftmax(0.2, logits=torch.tensor([0.4, -0.4], dtype=torch.float64))

    def f(y):  # z1 = sigmoid(y) keeps the integrand bounded at small tau
        z1, z2 = 1 / (1 + math.exp(-y)), 1 / (1 + math.exp(y))  # both exact, no 1 - z1 cancellation
        v = torch.tensor([z1, z2], dtype=torch.float64)
        return math.exp(d.log_prob(v).item()) * z1 * z2

    total, _ = integrate.quad(f, -200, 200, points=[-20, 0, 20], limit=400)
    assert total == pytest.approx(1.0, abs=1e-3)


def test_argmax_follows_the_categorical():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    z = GumbelSoftmax(0.7, probs=probs.expand(40000, 4)).sample()
    counts = torch.bincount(z.argmax(-1), minlength=4).numpy()
    assert stats.chisquare(counts, 40000 * probs.numpy()).pvalue > 1e-3


def test_first_coordinate_of_k2_matches_binary_concrete_cdf():
    torch.manual_seed(1)
    tau, a = 0.6, -0.5
    z = GumbelSoftmax(tau, logits=torch.tensor([a, 0.0], dtype=torch.float64).expand(20000, 2)).sample()[:, 0]
    cdf = lambda x: 1 / (1 + np.exp(-(tau * (np.log(x) - np.log1p(-x)) - a)))
    assert stats.kstest(z.numpy(), cdf).pvalue > 1e-3


def test_log_prob_agrees_with_torch_where_torch_is_accurate():
    torch.manual_seed(2)
    logits = torch.randn(300, 5, dtype=torch.float64)
    for tau in (0.5, 1.0, 3.0):
        ref = torch.distributions.RelaxedOneHotCategorical(torch.tensor(tau, dtype=torch.float64), logits=logits)
        z = ref.sample()
        ours = GumbelSoftmax(tau, logits=logits)
        assert torch.allclose(ours.log_prob(z), ref.log_prob(z), rtol=1e-7, atol=1e-7)


def test_log_prob_of_own_float32_samples_small_tau():
    torch.manual_seed(3)
    logits = torch.rand(2000, 10) * 40 - 20
    d = GumbelSoftmax(0.05, logits=logits)
    z = d.rsample()
    lp = d.log_prob(z)
    assert torch.isfinite(lp).all()
    lp64 = GumbelSoftmax(0.05, logits=logits.double()).log_prob_log_value(d._cache[1].double())
    assert torch.allclose(lp.double(), lp64, rtol=1e-4, atol=0.5)
    assert (z == 0).any(-1).float().mean() > 0.5  # entries underflow, yet the density stays exact


def test_low_temperature_limit_is_one_hot():
    torch.manual_seed(4)
    # the top entry is > 0.999 unless the two largest perturbed logits differ by < tau * log(999)
    z = GumbelSoftmax(0.001, logits=torch.randn(5000, 6, dtype=torch.float64)).sample()
    assert (z.max(-1).values > 0.999).double().mean() > 0.98


def test_gradient_matches_finite_differences():
    logits = torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def f(l):
        g = torch.Generator().manual_seed(7)
        return (GumbelSoftmax(0.8, logits=l).rsample((3000,), generator=g) @ w).pow(2).mean()

    f(logits).backward()
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = 1e-6
        fd = (f(logits + e) - f(logits - e)) / 2e-6
        assert logits.grad[i].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-9)


def test_independent_noise_per_element():
    torch.manual_seed(5)
    z = GumbelSoftmax(1.0, logits=torch.zeros(2, 3)).sample((20000,))
    assert z.shape == (20000, 2, 3)
    r = np.corrcoef(z[:, 0, 0].numpy(), z[:, 1, 0].numpy())[0, 1]
    assert abs(r) < 0.03


def test_shapes_and_expand():
    d = GumbelSoftmax(torch.tensor([0.5, 1.0]), logits=torch.zeros(3, 1, 4))
    assert d.batch_shape == (3, 2) and d.event_shape == (4,)
    assert d.log_prob(d.rsample((7,))).shape == (7, 3, 2)
    assert d.expand((5, 3, 2)).rsample().shape == (5, 3, 2, 4)


@pytest.mark.parametrize("kwargs,word", [
    (dict(temperature=1.0, probs=torch.tensor([0.5, -0.1, 0.6])), "probs"),
    (dict(temperature=1.0, logits=torch.tensor([0.0, float("nan")])), "logits"),
    (dict(temperature=0.0, logits=torch.zeros(3)), "temperature"),
    (dict(temperature=1.0), "probs or logits"),
    (dict(temperature=1.0, logits=torch.tensor(0.0)), "at least one dimension"),
])
def test_bad_arguments_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        GumbelSoftmax(**kwargs)


def test_density_at_own_sample_shortcut_matches_the_general_formula_in_value_and_gradient():
    from relaxrun.distributions.concrete import concrete_log_prob_from_log_value

    g = torch.Generator().manual_seed(11)
    logits = (3 * torch.randn(6, 4, 5, generator=g, dtype=torch.float64)).requires_grad_()
    tau = torch.full((6, 4), 0.4, dtype=torch.float64).requires_grad_()
    q = GumbelSoftmax(tau, logits=logits)
    log_z = q.rsample_log((3,), generator=g)
    assert q._noise is not None and q._noise[0] is log_z  # the shortcut is taken
    fast = q.log_prob_log_value(log_z)
    general = concrete_log_prob_from_log_value(log_z, logits, tau)
    assert torch.allclose(fast, general, rtol=1e-12, atol=1e-10)
    for a, b in zip(torch.autograd.grad(fast.sum(), (logits, tau), retain_graph=True),
                    torch.autograd.grad(general.sum(), (logits, tau))):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)
    # log_prob(rsample()) goes the same way
    z = q.rsample(generator=g)
    assert torch.allclose(q.log_prob(z), concrete_log_prob_from_log_value(z.log(), logits, tau), rtol=1e-10)


def test_density_of_a_sample_without_history_keeps_the_partial_derivative_at_fixed_z():
    """sample() has no autograd history: d/dlogits log q(z) must be the score at a fixed z."""
    from relaxrun.distributions.concrete import concrete_log_prob_from_log_value

    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    q = GumbelSoftmax(torch.tensor(0.5, dtype=torch.float64), logits=logits)
    z = q.sample(generator=torch.Generator().manual_seed(2))
    assert q._noise is None
    score = torch.autograd.grad(q.log_prob(z).sum(), logits)[0]
    ref = torch.autograd.grad(concrete_log_prob_from_log_value(z.log(), logits, q.temperature).sum(), logits)[0]
    assert torch.allclose(score, ref, rtol=1e-10, atol=1e-12) and score.abs().sum() > 0
