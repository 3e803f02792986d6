"""StochasticGate (Yamada et al. 2020): the clipped-Gaussian gate checked against its mixed law.

References are computed independently with scipy (norm.cdf / norm.pdf / quad), not with the
class under test. Statistical tests use a fixed seed and level 1e-3: with a fresh seed each such
assertion would fail by chance with probability 0.001 when the code is right.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from relaxrun.distributions.stochastic_gates import StochasticGate

ALPHA = 1e-3  # false-alarm rate of each KS / chi-square assertion under a random seed
PARAMS = [(0.5, 0.5), (0.2, 0.1), (-0.3, 1.0), (1.4, 0.3)]


def ref_atoms(mu, sigma):
    return stats.norm.cdf(-mu / sigma), stats.norm.sf((1 - mu) / sigma)


def ref_mean(mu, sigma):
    # E[z] = int_0^1 P(z > t) dt, with P(z > t) = P(mu + sigma eps > t) for 0 <= t < 1
    return integrate.quad(lambda t: stats.norm.sf((t - mu) / sigma), 0, 1, epsabs=1e-12)[0]


def chisquare_pvalue(counts, expected):
    """Chi-square p-value, cells expected below 5 pooled into the largest (the test's validity rule)."""
    counts, expected = np.asarray(counts, float), np.asarray(expected, float)
    small = expected < 5
    if (~small).sum() < 2:  # one dominant cell: are the rare outcomes too frequent? (Poisson tail)
        return stats.poisson.sf(counts[small].sum() - 1, expected[small].sum())
    big = np.argmax(expected)
    counts[big] += counts[small].sum()
    expected[big] += expected[small].sum()
    return stats.chisquare(counts[~small], expected[~small]).pvalue


def gate(mu, sigma, dtype=torch.float64, **kw):
    return StochasticGate(torch.tensor(mu, dtype=dtype), torch.tensor(sigma, dtype=dtype), **kw)


@pytest.mark.parametrize("mu,sigma", PARAMS)
def test_total_probability_atoms_plus_density_is_one(mu, sigma):
    d = gate(mu, sigma)
    p0 = d.log_prob(torch.tensor(0.0, dtype=torch.float64)).exp().item()
    p1 = d.log_prob(torch.tensor(1.0, dtype=torch.float64)).exp().item()
    r0, r1 = ref_atoms(mu, sigma)
    assert p0 == pytest.approx(r0, abs=1e-12) and p1 == pytest.approx(r1, abs=1e-12)
    dens = integrate.quad(lambda z: d.log_prob(torch.tensor(z, dtype=torch.float64)).exp().item(), 0, 1,
                          points=[min(max(mu, 0.01), 0.99)], epsabs=1e-10)[0]
    assert p0 + dens + p1 == pytest.approx(1.0, abs=1e-3)
    # and the density inside is the Gaussian one (a log_prob copied from elsewhere would not match)
    zs = torch.linspace(0.01, 0.99, 17, dtype=torch.float64)
    np.testing.assert_allclose(d.log_prob(zs).numpy(), stats.norm.logpdf(zs.numpy(), mu, sigma), rtol=1e-10)


@pytest.mark.parametrize("mu,sigma", PARAMS[:2])
def test_cdf_is_atom_plus_integrated_density(mu, sigma):
    d = gate(mu, sigma)
    p0 = d.log_prob_zero().exp().item()
    for x in (0.0, 0.25, 0.5, 0.9, 0.999):
        integral = integrate.quad(lambda z: d.log_prob(torch.tensor(z, dtype=torch.float64)).exp().item(),
                                  0, x, epsabs=1e-12)[0] if x > 0 else 0.0
        assert d.cdf(torch.tensor(x, dtype=torch.float64)).item() == pytest.approx(p0 + integral, abs=1e-8)
    assert d.cdf(torch.tensor(1.0, dtype=torch.float64)).item() == 1.0


@pytest.mark.parametrize("mu,sigma", PARAMS)
def test_samples_match_the_law(mu, sigma):
    n = 20000
    g = torch.Generator().manual_seed(1234)
    z = gate(mu, sigma).sample((n,), generator=g).numpy()
    p0, p1 = ref_atoms(mu, sigma)
    counts = np.array([(z == 0).sum(), ((z > 0) & (z < 1)).sum(), (z == 1).sum()])
    expected = n * np.array([p0, 1 - p0 - p1, p1])
    assert chisquare_pvalue(counts, expected) > ALPHA
    inside = z[(z > 0) & (z < 1)]
    cond_cdf = lambda x: (stats.norm.cdf((x - mu) / sigma) - p0) / (1 - p0 - p1)  # noqa: E731
    assert stats.kstest(inside, cond_cdf).pvalue > ALPHA


def test_noise_is_independent_across_batch_and_sample_elements():
    n = 20000
    torch.manual_seed(0)
    d = gate([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    z = d.sample((n,)).numpy()
    assert z.shape == (n, 3)
    c = np.corrcoef(z.T)
    # identical parameters: shared noise would give correlation 1; independent noise ~N(0, 1/n)
    assert np.abs(c[np.triu_indices(3, 1)]).max() < 4 / math.sqrt(n)
    # consecutive draws along the sample dimension are independent too
    assert abs(np.corrcoef(z[:-1, 0], z[1:, 0])[0, 1]) < 4 / math.sqrt(n)
    # expand() keeps one noise draw per element
    e = gate(0.5, 0.5).expand((2, 2)).sample((n,)).reshape(n, 4).numpy()
    assert np.abs(np.corrcoef(e.T)[np.triu_indices(4, 1)]).max() < 4 / math.sqrt(n)


def test_shapes_and_expand():
    d = StochasticGate(torch.zeros(4, 1), torch.full((3,), 0.5))
    assert d.batch_shape == (4, 3) and d.event_shape == ()
    z = d.rsample((5, 2))
    assert z.shape == (5, 2, 4, 3) and d.log_prob(z).shape == (5, 2, 4, 3)
    e = d.expand((6, 4, 3))
    assert e.batch_shape == (6, 4, 3) and e.sample((2,)).shape == (2, 6, 4, 3)
    assert torch.equal(e.log_prob(torch.full((6, 4, 3), 0.3)), d.log_prob(torch.full((4, 3), 0.3)).expand(6, 4, 3))
    assert d.expected_l0().shape == (4, 3)


def test_pathwise_gradient_reaches_mu_and_learnable_sigma_and_matches_finite_differences():
    mu0, s0 = 0.3, 0.4
    mu = torch.tensor(mu0, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(7)
    grads = []
    for _ in range(20):
        gm, gs = torch.autograd.grad(StochasticGate(mu, sigma).rsample((5000,), generator=g).mean(), (mu, sigma))
        grads.append((gm.item(), gs.item()))
    grads = np.array(grads)
    est, se = grads.mean(0), grads.std(0, ddof=1) / math.sqrt(len(grads))
    h = 1e-5
    fd = np.array([(ref_mean(mu0 + h, s0) - ref_mean(mu0 - h, s0)) / (2 * h),
                   (ref_mean(mu0, s0 + h) - ref_mean(mu0, s0 - h)) / (2 * h)])
    assert abs(fd[1]) > 0.05  # the sigma-derivative is not trivially zero here
    assert np.all(np.abs(est - fd) < 4 * se + 1e-6), (est, se, fd)
    # the closed-form mean and expected-L0 term are exact and differentiable in sigma as well
    d = StochasticGate(mu, sigma)
    assert d.mean.item() == pytest.approx(ref_mean(mu0, s0), abs=1e-10)
    gm, gs = torch.autograd.grad(d.mean, (mu, sigma))
    assert gm.item() == pytest.approx(fd[0], abs=1e-6) and gs.item() == pytest.approx(fd[1], abs=1e-6)
    l0 = d.expected_l0()
    assert l0.item() == pytest.approx(stats.norm.cdf(mu0 / s0), abs=1e-12)
    assert torch.autograd.grad(l0, sigma)[0].item() == pytest.approx(
        -stats.norm.pdf(mu0 / s0) * mu0 / s0 ** 2, rel=1e-8)


def test_single_sample_kl_estimate_is_unbiased_for_the_mixed_law():
    q, p = gate(0.3, 0.5), gate(0.5, 0.5)
    q0, q1 = ref_atoms(0.3, 0.5)
    p0, p1 = ref_atoms(0.5, 0.5)
    inside = integrate.quad(
        lambda z: stats.norm.pdf(z, 0.3, 0.5) * (stats.norm.logpdf(z, 0.3, 0.5) - stats.norm.logpdf(z, 0.5, 0.5)),
        0, 1)[0]
    exact = q0 * math.log(q0 / p0) + q1 * math.log(q1 / p1) + inside
    g = torch.Generator().manual_seed(3)
    z = q.sample((40000,), generator=g)
    est = (q.log_prob(z) - p.log_prob(z)).numpy()
    assert abs(est.mean() - exact) < 4 * est.std() / math.sqrt(len(est))


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0])
def test_log_prob_finite_on_own_float32_samples(sigma):
    mu = torch.tensor([-20.0, -1.0, 0.0, 0.5, 1.0, 20.0])
    d = StochasticGate(mu, torch.tensor(sigma))
    z = d.rsample((2000,))
    assert z.dtype == torch.float32
    assert torch.isfinite(d.log_prob(z)).all()


def test_bad_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="mu"):
        StochasticGate(torch.tensor([0.1, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="sigma"):
        StochasticGate(0.5, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        StochasticGate(0.5, torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="sigma"):
        StochasticGate(0.5, float("inf"))
    with pytest.raises(ValueError):
        StochasticGate(0.5, 0.5).log_prob(torch.tensor(1.5))
    lp = StochasticGate(0.5, 0.5, validate_args=False).log_prob(torch.tensor([-0.1, 1.5]))
    assert torch.isneginf(lp).all()


def test_density_at_own_sample_shortcut_matches_the_general_formula():
    g = torch.Generator().manual_seed(9)
    mu = (0.5 + torch.randn(400, generator=g, dtype=torch.float64)).requires_grad_()
    sigma = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    q = StochasticGate(mu, sigma)
    z = q.rsample(generator=g)
    assert q._draw is not None and ((z > 0) & (z < 1)).any() and ((z == 0) | (z == 1)).any()
    fast, general = q.log_prob(z), q.log_prob(z.clone())
    assert torch.allclose(fast, general, rtol=1e-9, atol=1e-9)
    for a, b in zip(torch.autograd.grad(fast.sum(), (mu, sigma), retain_graph=True),
                    torch.autograd.grad(general.sum(), (mu, sigma))):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)
    q2 = StochasticGate(mu, sigma)
    q2.sample(generator=g)
    assert q2._draw is None
