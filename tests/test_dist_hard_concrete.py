"""HardConcrete (Louizos et al. 2018) checked against its exact mixed law.

The reference law is written out here from the paper with numpy/scipy: the Binary Concrete
density q(s) = beta a s^(-beta-1) (1-s)^(-beta-1) / (a s^(-beta) + (1-s)^(-beta))^2 (Maddison et
al. 2017, eq. 2) stretched to (l, r), and the CDF Q(s) = sigmoid(beta logit(s) - log_alpha).
Statistical tests use a fixed seed and level 1e-3 (false-alarm probability 0.001 per assertion
under a fresh seed).
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from relaxrun.distributions.hard_concrete import HardConcrete

ALPHA = 1e-3
PARAMS = [(0.0, 2 / 3, -0.1, 1.1), (1.5, 0.5, -0.1, 1.1), (-2.0, 0.9, -0.2, 1.05), (0.3, 0.2, -0.5, 1.5)]


def ref_cdf_s(s, la, beta):
    return special.expit(beta * special.logit(s) - la)


def ref_atoms(la, beta, l, r):
    return ref_cdf_s(-l / (r - l), la, beta), 1 - ref_cdf_s((1 - l) / (r - l), la, beta)


def ref_density(z, la, beta, l, r):
    s = (z - l) / (r - l)
    a = math.exp(la)
    q = beta * a * s ** (-beta - 1) * (1 - s) ** (-beta - 1) / (a * s ** (-beta) + (1 - s) ** (-beta)) ** 2
    return q / (r - l)


def ref_cdf(x, la, beta, l, r):
    return ref_cdf_s((x - l) / (r - l), la, beta)


def ref_mean(la, beta, l=-0.1, r=1.1):
    return integrate.quad(lambda t: 1 - ref_cdf(t, la, beta, l, r), 0, 1, epsabs=1e-12)[0]


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


def hc(la, beta=2 / 3, l=-0.1, r=1.1, dtype=torch.float64):
    return HardConcrete(torch.tensor(beta, dtype=dtype), logits=torch.tensor(la, dtype=dtype), l=l, r=r)


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("la,beta,l,r", PARAMS)
def test_total_probability_and_density_match_the_paper(la, beta, l, r):
    d = hc(la, beta, l, r)
    p0, p1 = d.log_prob(t64(0.0)).exp().item(), d.log_prob(t64(1.0)).exp().item()
    r0, r1 = ref_atoms(la, beta, l, r)
    assert p0 == pytest.approx(r0, rel=1e-10) and p1 == pytest.approx(r1, rel=1e-10)
    dens = integrate.quad(lambda z: d.log_prob(t64(z)).exp().item(), 0, 1, epsabs=1e-10, limit=200)[0]
    assert p0 + dens + p1 == pytest.approx(1.0, abs=1e-3)
    zs = np.linspace(0.01, 0.99, 13)
    np.testing.assert_allclose(d.log_prob(torch.from_numpy(zs)).exp().numpy(),
                               [ref_density(z, la, beta, l, r) for z in zs], rtol=1e-9)
    # closed-form L0 term of Louizos et al. eq. 12
    assert d.prob_nonzero().item() == pytest.approx(special.expit(la - beta * math.log(-l / r)), rel=1e-12)
    assert d.prob_nonzero().item() == pytest.approx(1 - r0, rel=1e-10)


def test_cdf_is_atom_plus_integrated_density():
    d = hc(0.7, 0.5)
    p0 = d.log_prob_zero().exp().item()
    for x in (0.0, 0.1, 0.5, 0.95):
        integral = integrate.quad(lambda z: d.log_prob(t64(z)).exp().item(), 0, x, epsabs=1e-12)[0] if x else 0.0
        assert d.cdf(t64(x)).item() == pytest.approx(p0 + integral, abs=1e-8)
    assert d.cdf(t64(1.0)).item() == 1.0


def test_low_temperature_limit_is_bernoulli_sigmoid_log_alpha():
    # as beta -> 0 the stretched sample is a hard 0/1 with P(z = 1) -> sigmoid(log_alpha)
    d = hc(0.8, 1e-4)
    p1, p0 = d.log_prob_one().exp().item(), d.log_prob_zero().exp().item()
    assert p1 == pytest.approx(special.expit(0.8), abs=2e-3)
    assert p0 + p1 == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("la,beta,l,r", PARAMS)
def test_samples_match_the_law(la, beta, l, r):
    n = 20000
    g = torch.Generator().manual_seed(99)
    z = hc(la, beta, l, r).sample((n,), generator=g).numpy()
    p0, p1 = ref_atoms(la, beta, l, r)
    counts = [(z == 0).sum(), ((z > 0) & (z < 1)).sum(), (z == 1).sum()]
    assert chisquare_pvalue(counts, n * np.array([p0, 1 - p0 - p1, p1])) > ALPHA
    inside = z[(z > 0) & (z < 1)]
    cond_cdf = lambda x: (ref_cdf(x, la, beta, l, r) - p0) / (1 - p0 - p1)  # noqa: E731
    assert stats.kstest(inside, cond_cdf).pvalue > ALPHA


def test_noise_is_independent_across_sample_and_batch_elements():
    n = 20000
    torch.manual_seed(0)
    z = HardConcrete(logits=torch.zeros(3, dtype=torch.float64)).sample((n,)).numpy()
    c = np.corrcoef(z.T)
    assert np.abs(c[np.triu_indices(3, 1)]).max() < 4 / math.sqrt(n)
    assert abs(np.corrcoef(z[:-1, 0], z[1:, 0])[0, 1]) < 4 / math.sqrt(n)
    e = HardConcrete(logits=torch.tensor(0.0)).expand((2, 2)).sample((n,)).reshape(n, 4).numpy()
    assert np.abs(np.corrcoef(e.T)[np.triu_indices(4, 1)]).max() < 4 / math.sqrt(n)


def test_shapes_and_expand():
    d = HardConcrete(torch.full((3,), 0.5), logits=torch.zeros(4, 1))
    assert d.batch_shape == (4, 3) and d.event_shape == ()
    z = d.rsample((5, 2))
    assert z.shape == (5, 2, 4, 3) and d.log_prob(z).shape == (5, 2, 4, 3)
    e = d.expand((6, 4, 3))
    assert e.batch_shape == (6, 4, 3) and e.rsample((2,)).shape == (2, 6, 4, 3) and (e.l, e.r) == (d.l, d.r)
    assert d.prob_nonzero().shape == (4, 3)


def test_pathwise_gradient_reaches_log_alpha_and_beta_and_matches_finite_differences():
    la0, b0 = 0.4, 0.6
    la = torch.tensor(la0, dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(5)
    grads = np.array([[t.item() for t in torch.autograd.grad(
        HardConcrete(beta, logits=la).rsample((5000,), generator=g).mean(), (la, beta))] for _ in range(20)])
    est, se = grads.mean(0), grads.std(0, ddof=1) / math.sqrt(len(grads))
    h = 1e-5
    fd = np.array([(ref_mean(la0 + h, b0) - ref_mean(la0 - h, b0)) / (2 * h),
                   (ref_mean(la0, b0 + h) - ref_mean(la0, b0 - h)) / (2 * h)])
    assert np.all(np.abs(fd) > 0.01)
    assert np.all(np.abs(est - fd) < 4 * se + 1e-6), (est, se, fd)
    # the L0 term is differentiable in log_alpha: d sigmoid(x) = sigmoid(x)(1 - sigmoid(x))
    p = HardConcrete(beta, logits=la).prob_nonzero()
    assert torch.autograd.grad(p, la)[0].item() == pytest.approx(p.item() * (1 - p.item()), rel=1e-10)


def test_single_sample_kl_estimate_is_unbiased_for_the_mixed_law():
    qa, pa, beta = 1.0, 0.0, 2 / 3
    q, p = hc(qa, beta), hc(pa, beta)
    (q0, q1), (p0, p1) = ref_atoms(qa, beta, -0.1, 1.1), ref_atoms(pa, beta, -0.1, 1.1)
    inside = integrate.quad(lambda z: ref_density(z, qa, beta, -0.1, 1.1) * (
        math.log(ref_density(z, qa, beta, -0.1, 1.1)) - math.log(ref_density(z, pa, beta, -0.1, 1.1))), 0, 1)[0]
    exact = q0 * math.log(q0 / p0) + q1 * math.log(q1 / p1) + inside
    z = q.sample((40000,), generator=torch.Generator().manual_seed(11))
    est = (q.log_prob(z) - p.log_prob(z)).numpy()
    assert abs(est.mean() - exact) < 4 * est.std() / math.sqrt(len(est))


@pytest.mark.parametrize("beta", [0.05, 2 / 3, 1.0])
def test_log_prob_finite_on_own_float32_samples(beta):
    la = torch.tensor([-20.0, -5.0, 0.0, 5.0, 20.0])
    d = HardConcrete(beta, logits=la)
    z = d.rsample((2000,))
    assert z.dtype == torch.float32 and torch.isfinite(d.log_prob(z)).all()
    assert torch.isfinite(d.log_prob(torch.tensor([0.0, 1e-7, 0.5, 1 - 6e-8, 1.0]).unsqueeze(-1))).all()


def test_bad_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="logits"):
        HardConcrete(logits=torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="probs must lie in"):
        HardConcrete(probs=1.5)
    with pytest.raises(ValueError, match="exactly one of probs or logits"):
        HardConcrete(0.5)
    with pytest.raises(ValueError, match="temperature"):
        HardConcrete(0.0, logits=0.0)
    with pytest.raises(ValueError, match="temperature"):
        HardConcrete(torch.tensor([-0.5]), logits=0.0)
    with pytest.raises(ValueError, match="l must"):
        HardConcrete(logits=0.0, l=0.0)
    with pytest.raises(ValueError, match="r must"):
        HardConcrete(logits=0.0, r=1.0)
    with pytest.raises(ValueError):
        HardConcrete(logits=0.0).log_prob(torch.tensor(-0.2))


def test_atom_blend_equals_nested_where_in_value_and_gradient():
    """The 0/1-weight blend behind the mixed laws' log_prob is exactly the nested `where` it replaces."""
    from relaxrun.distributions._common import atoms_and_density

    g = torch.Generator().manual_seed(4)
    value = torch.rand(500, generator=g, dtype=torch.float64) * 1.4 - 0.2
    value[::7] = 0.0
    value[3::7] = 1.0
    a0, a1, dens = (torch.randn(500, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    blend = atoms_and_density(value, a0, a1, dens)
    nested = torch.where(value <= 0, a0, torch.where(value >= 1, a1, dens))
    nested = nested.masked_fill((value < 0) | (value > 1), -math.inf)
    assert torch.equal(blend, nested)
    w = torch.randn(500, generator=g, dtype=torch.float64)
    inside = torch.isfinite(nested)
    gb = torch.autograd.grad((blend[inside] * w[inside]).sum(), (a0, a1, dens))
    gn = torch.autograd.grad((nested[inside] * w[inside]).sum(), (a0, a1, dens))
    assert all(torch.equal(x, y) for x, y in zip(gb, gn))
    # scalar atoms (an unbatched prior) broadcast over a batch of values
    s = atoms_and_density(value, torch.tensor(-1.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64),
                          dens.detach())
    assert torch.equal(s[value == 0], torch.full_like(s[value == 0], -1.0)) and (s[value == 1] == -2.0).all()


def test_density_at_own_sample_shortcut_matches_the_general_formula():
    """log_prob(rsample()) takes a shortcut through the stored noise: same value and gradients as the
    general formula evaluated on the sample; a sample without history (sample()) does not use it."""
    g = torch.Generator().manual_seed(8)
    log_alpha = (2 * torch.randn(400, generator=g, dtype=torch.float64)).requires_grad_()
    beta = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    q = HardConcrete(beta, logits=log_alpha)
    z = q.rsample(generator=g)
    assert q._draw is not None
    fast = q.log_prob(z)
    general = q.log_prob(z.clone())  # another tensor object: the general formula
    assert q._draw[0] is z
    inside = (z > 0) & (z < 1)
    assert inside.any() and (~inside).any()
    assert torch.allclose(fast, general, rtol=1e-9, atol=1e-9)
    for a, b in zip(torch.autograd.grad(fast.sum(), (log_alpha, beta), retain_graph=True),
                    torch.autograd.grad(general.sum(), (log_alpha, beta))):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)
    q2 = HardConcrete(beta, logits=log_alpha)
    q2.sample(generator=g)
    assert q2._draw is None
