"""GeneralizedGumbelSoftmax (Joo et al. 2020) checked against its mathematics: the truncated laws
against scipy's pmfs and tails, hard samples by chi-square, the tau -> 0 limit, exact log_prob and
its gradient, and the KL against enumeration. Fixed seeds; false-alarm rates <= 1e-3 per check."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from relaxrun.distributions.generalized_gumbel import (DEFAULT_TOL, MIN_SUPPORT, GeneralizedGumbelSoftmax,
                                                       discrete_kl, geometric_support_size, poisson_support_size)

DT = torch.float64
GGS = GeneralizedGumbelSoftmax


def untruncated(family, param, n=None):
    """scipy's law: Poisson(rate), geometric failures-before-success (geom(p, loc=-1)), Binomial(n, p)."""
    if family == "poisson":
        return stats.poisson(param)
    if family == "geometric":
        return stats.geom(param, loc=-1)
    return stats.binom(n, param)


def make(family, param, tau=0.5, n=10, **kw):
    t = torch.tensor(param, dtype=DT)
    if family == "poisson":
        return GGS.poisson(tau, rate=t, **kw)
    if family == "geometric":
        return GGS.geometric(tau, probs=t, **kw)
    return GGS.binomial(tau, n, probs=t, **kw)


CASES = [("poisson", 0.7), ("poisson", 4.0), ("poisson", 12.5), ("geometric", 0.35), ("geometric", 0.9),
         ("binomial", 0.3)]


@pytest.mark.parametrize("family,param", CASES)
def test_law_is_the_renormalised_truncation_of_scipys_pmf(family, param):
    d = make(family, param)
    k = d.support_values.numel()
    ref = untruncated(family, param, 10)
    ks = np.arange(k)
    expected = ref.logpmf(ks) - np.log(ref.cdf(k - 1))  # renormalised over 0..K-1 (nothing on the last point)
    assert torch.equal(d.support_values, torch.arange(k, dtype=DT))
    np.testing.assert_allclose(d.log_prob(d.support_values).numpy(), expected, rtol=1e-10, atol=1e-10)
    assert float(d.probs.sum()) == pytest.approx(1.0, abs=1e-12)
    # moments of the truncated law
    p = np.exp(expected)
    assert float(d.mean) == pytest.approx(float((p * ks).sum()), rel=1e-10)
    assert float(d.variance) == pytest.approx(float((p * (ks - (p * ks).sum()) ** 2).sum()), rel=1e-9)
    assert float(d.entropy()) == pytest.approx(float(-(p[p > 0] * np.log(p[p > 0])).sum()), rel=1e-9)


@pytest.mark.parametrize("family,param", CASES)
def test_dropped_mass_is_the_tail_beyond_the_smallest_level_within_tolerance(family, param):
    for tol in (DEFAULT_TOL, 1e-3, 1e-10):
        d = make(family, param, tol=tol) if family != "binomial" else make(family, param)
        k = d.support_values.numel()
        ref = untruncated(family, param, 10)
        sf = ref.sf(k - 1)  # 1 - cdf(K - 1)
        assert float(d.dropped_mass) == pytest.approx(sf, rel=1e-8, abs=1e-300)
        if family == "binomial":
            assert k == 11 and float(d.dropped_mass) == 0.0 and d.tol is None
            continue
        assert d.tol == tol and float(d.dropped_mass) <= tol
        if k > MIN_SUPPORT:  # K is the smallest level that meets the tolerance
            assert ref.sf(k - 2) > tol


def test_level_of_a_batch_is_set_by_its_largest_rate_and_every_element_meets_it():
    rates = torch.tensor([0.2, 3.0, 9.0], dtype=DT)
    d = GGS.poisson(1.0, rate=rates)
    assert d.support_values.numel() == poisson_support_size(9.0)
    assert bool((d.dropped_mass <= DEFAULT_TOL).all())
    np.testing.assert_allclose(d.dropped_mass.numpy(), stats.poisson(rates.numpy()).sf(d.support_values.numel() - 1),
                               rtol=1e-8)
    g = GGS.geometric(1.0, probs=torch.tensor([0.2, 0.6], dtype=DT))
    assert g.support_values.numel() == geometric_support_size(0.2) == math.ceil(math.log(1e-6) / math.log(0.8))


def test_explicit_support_size_and_binomial_truncation_report_their_dropped_mass():
    d = make("poisson", 3.0, support_size=4)
    assert d.support_values.numel() == 4 and d.tol is None
    assert float(d.dropped_mass) == pytest.approx(stats.poisson(3.0).sf(3), rel=1e-10)
    b = make("binomial", 0.4, n=8, support_size=5)
    assert float(b.dropped_mass) == pytest.approx(stats.binom(8, 0.4).sf(4), rel=1e-10)
    expected = stats.binom(8, 0.4).logpmf(np.arange(5)) - np.log(stats.binom(8, 0.4).cdf(4))
    np.testing.assert_allclose(b.logits.numpy(), expected, rtol=1e-10)


def test_log_rate_and_logits_parameterisations_agree_with_rate_and_probs():
    rate = torch.tensor([0.5, 2.0], dtype=DT)
    a, b = GGS.poisson(1.0, rate=rate), GGS.poisson(1.0, log_rate=rate.log())
    assert torch.allclose(a.logits, b.logits, atol=1e-12) and torch.allclose(a.dropped_mass, b.dropped_mass)
    p = torch.tensor([0.3, 0.8], dtype=DT)
    lg = torch.log(p) - torch.log1p(-p)
    assert torch.allclose(GGS.geometric(1.0, probs=p).logits, GGS.geometric(1.0, logits=lg).logits, atol=1e-12)
    assert torch.allclose(GGS.binomial(1.0, 6, probs=p).logits, GGS.binomial(1.0, 6, logits=lg).logits, atol=1e-12)


@pytest.mark.parametrize("family,param", [("poisson", 2.5), ("geometric", 0.4), ("binomial", 0.35)])
def test_hard_samples_follow_the_truncated_law(family, param):
    g = torch.Generator().manual_seed(0)
    n = 40000
    d = make(family, param)
    c = d.sample((n,), generator=g)
    assert c.shape == (n,) and not c.requires_grad
    counts = np.bincount(c.long().numpy(), minlength=d.support_values.numel())
    expected = n * d.probs.numpy()
    # pool the sparse tail into one bin so every expected count is >= 5 (chi-square's approximation)
    cut = int(np.nonzero(expected >= 5)[0].max())
    obs = np.append(counts[:cut], counts[cut:].sum())
    exp = np.append(expected[:cut], expected[cut:].sum())
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_hard_samples_on_a_general_support():
    v = torch.tensor([-1.5, 0.25, 3.0, 7.0], dtype=DT)
    probs = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=DT)
    d = GGS(0.3, v, probs=probs)
    z = d.sample((40000,), generator=torch.Generator().manual_seed(1))
    counts = np.array([(z == x).sum().item() for x in v])
    assert counts.sum() == 40000
    assert stats.chisquare(counts, 40000 * probs.numpy()).pvalue > 1e-3
    assert float(d.mean) == pytest.approx(float((probs * v).sum()), rel=1e-12)
    assert torch.allclose(d.log_prob(v), probs.log())


def test_relaxed_samples_tend_to_the_hard_values_as_tau_goes_to_zero():
    """With common noise z_tau - c = O(tau) (the top two perturbed logits are within O(tau) of each
    other with probability O(tau)): the mean gap shrinks with tau, and at tau = 0.001 almost every
    relaxed value is its count within 0.01."""
    n = 20000
    for family, param in [("poisson", 3.0), ("geometric", 0.3)]:
        gaps = []
        for tau in (1.0, 0.1, 0.01, 0.001):
            d = make(family, param, tau=tau)
            z = d.rsample((n,), generator=torch.Generator().manual_seed(2))
            c = d.sample((n,), generator=torch.Generator().manual_seed(2))  # the same noise: c is z's hard draw
            gaps.append(float((z - c).abs().mean()))
            lo, hi = d.support_values.min(), d.support_values.max()
            assert bool(((z >= lo) & (z <= hi)).all())
        assert gaps[0] > gaps[1] > gaps[2] > gaps[3] and gaps[3] < 0.005, gaps
        assert float(((z - c).abs() < 1e-2).double().mean()) > 0.99
        # the relaxed values' mean is the truncated law's mean, within 4.5 standard errors plus the gap
        se = math.sqrt(float(d.variance) / n)
        assert abs(float(z.mean()) - float(d.mean)) < 4.5 * se + gaps[3]


def test_relaxed_mean_tends_to_the_hard_mean():
    # E[z_tau] for a fixed law by Monte Carlo with common noise: |E z_tau - E c| shrinks with tau
    d_hard = make("poisson", 1.5)
    n = 40000
    errs = []
    for tau in (2.0, 0.5, 0.05):
        d = make("poisson", 1.5, tau=tau)
        z = d.rsample((n,), generator=torch.Generator().manual_seed(3))
        c = d.sample((n,), generator=torch.Generator().manual_seed(3))
        errs.append(abs(float((z - c).mean())))  # the common-noise estimate of E z_tau - E c
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.02
    # the truncated mean, exactly: E[X | X < K] = rate * cdf(K - 2) / cdf(K - 1) for the Poisson
    k = d_hard.support_values.numel()
    assert float(d_hard.mean) == pytest.approx(1.5 * stats.poisson(1.5).cdf(k - 2) / stats.poisson(1.5).cdf(k - 1),
                                               rel=1e-12)


def test_hard_rsample_is_the_exact_value_with_the_relaxed_gradient():
    rate = torch.tensor([1.0, 4.0], dtype=DT, requires_grad=True)
    soft = GGS.poisson(0.5, rate=rate)
    hard = GGS.poisson(0.5, rate=rate, hard=True)
    zs = soft.rsample((50,), generator=torch.Generator().manual_seed(4))
    zh, idx = hard.rsample_with_index((50,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(zh, hard.support_values[idx])
    assert torch.equal(zh.detach(), hard.sample((50,), generator=torch.Generator().manual_seed(4)))
    assert float(hard.log_prob(zh.detach()).detach().min()) > -math.inf  # exact support points
    w = torch.linspace(-1, 1, 100, dtype=DT).reshape(50, 2)
    (gs,) = torch.autograd.grad((zs * w).sum(), rate)
    (gh,) = torch.autograd.grad((zh * w).sum(), rate)
    assert torch.allclose(gs, gh, rtol=1e-12)


def test_relaxed_sample_gradient_matches_finite_differences():
    def f(r):
        g = torch.Generator().manual_seed(5)
        return GGS.poisson(0.7, rate=r, support_size=12).rsample((2000,), generator=g).pow(2).mean()

    r = torch.tensor([0.8, 2.5], dtype=DT, requires_grad=True)
    f(r).backward()
    for i in range(2):
        e = torch.zeros(2, dtype=DT)
        e[i] = 1e-6
        fd = (f(r + e) - f(r - e)) / 2e-6
        assert r.grad[i].item() == pytest.approx(fd.item(), rel=1e-6)


@pytest.mark.parametrize("family", ["poisson", "geometric", "binomial"])
def test_log_prob_gradient_matches_finite_differences(family):
    """d/d(rate or p) of the truncated log-probability, against central differences of scipy's
    renormalised pmf (K = 8 kept counts; the binomial keeps all 11)."""
    param = {"poisson": 3.2, "geometric": 0.45, "binomial": 0.3}[family]
    k = 11 if family == "binomial" else 8
    value = torch.tensor([0.0, 2.0, 5.0], dtype=DT)
    t = torch.tensor(param, dtype=DT, requires_grad=True)
    (grad,) = torch.autograd.grad(truncated_log_prob(family, t, k, value).sum(), t)
    h = 1e-6
    fd = sum((scipy_truncated_logpmf(family, param + h, k, v) - scipy_truncated_logpmf(family, param - h, k, v))
             / (2 * h) for v in value.numpy())
    assert grad.item() == pytest.approx(fd, rel=1e-6)
    if family == "poisson":  # closed form: d/d rate log pi_k = (k - E_trunc[X]) / rate
        mean = float(GGS.poisson(1.0, rate=t.detach(), support_size=k).mean)
        assert grad.item() == pytest.approx(float(((value - mean) / param).sum()), rel=1e-10)


def truncated_log_prob(family, t, k, value):
    if family == "poisson":
        return GGS.poisson(1.0, rate=t, support_size=k).log_prob(value)
    if family == "geometric":
        return GGS.geometric(1.0, probs=t, support_size=k).log_prob(value)
    return GGS.binomial(1.0, 10, probs=t).log_prob(value)


def scipy_truncated_logpmf(family, param, k, v):
    law = untruncated(family, param, 10)
    return float(law.logpmf(v) - np.log(law.cdf(k - 1)))


def test_kl_between_truncated_laws_against_enumeration():
    for family, a, b in [("poisson", 2.0, 5.0), ("geometric", 0.3, 0.6), ("binomial", 0.2, 0.7)]:
        k = 15
        kw = {"support_size": k} if family != "binomial" else {}
        p, q = make(family, a, **kw), make(family, b, **kw)
        kk = p.support_values.numel()
        lp = untruncated(family, a, 10).logpmf(np.arange(kk)) - np.log(untruncated(family, a, 10).cdf(kk - 1))
        lq = untruncated(family, b, 10).logpmf(np.arange(kk)) - np.log(untruncated(family, b, 10).cdf(kk - 1))
        expected = float((np.exp(lp) * (lp - lq)).sum())
        assert float(torch.distributions.kl_divergence(p, q)) == pytest.approx(expected, rel=1e-9)
        assert float(torch.distributions.kl_divergence(p, p)) == pytest.approx(0.0, abs=1e-12)
    # batched, and a point of zero probability under p contributes 0
    p = GGS(1.0, torch.arange(3.0, dtype=DT), probs=torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=DT))
    q = GGS(1.0, torch.arange(3.0, dtype=DT), probs=torch.tensor([0.25, 0.25, 0.5], dtype=DT))
    kl = torch.distributions.kl_divergence(p, q)
    assert kl.shape == (2,)
    assert float(kl[0]) == pytest.approx(math.log(2), rel=1e-12)
    assert torch.equal(discrete_kl(p.logits, q.logits), kl)  # the function the registered KL calls


def test_kl_refuses_different_supports():
    p = make("poisson", 2.0, support_size=6)
    q = make("poisson", 2.0, support_size=7)
    with pytest.raises(ValueError, match="same support_values"):
        torch.distributions.kl_divergence(p, q)


def test_log_prob_of_a_value_off_the_support_names_it():
    d = make("poisson", 2.0, support_size=6)
    with pytest.raises(ValueError, match="value 2.5 is not in the support"):
        d.log_prob(torch.tensor([1.0, 2.5], dtype=DT))
    with pytest.raises(ValueError, match="value 6 is not in the support"):
        d.log_prob(torch.tensor(6.0, dtype=DT))
    with pytest.raises(ValueError, match="not in the support"):
        d.log_prob(d.rsample())  # a relaxed value has no probability here
    lenient = GGS.poisson(1.0, rate=torch.tensor(2.0, dtype=DT), support_size=6, validate_args=False)
    assert lenient.log_prob(torch.tensor(2.5, dtype=DT)).item() == -math.inf


def test_shapes_expand_and_enumerate_support():
    d = GGS.poisson(torch.tensor([0.5, 1.0], dtype=DT), rate=torch.full((3, 1), 2.0, dtype=DT))
    k = d.support_values.numel()
    assert d.batch_shape == (3, 2) and d.event_shape == ()
    assert d.rsample((7,)).shape == (7, 3, 2) and d.sample((7,)).shape == (7, 3, 2)
    assert d.log_prob(d.sample((7,))).shape == (7, 3, 2)
    assert d.dropped_mass.shape == (3, 2) and d.mean.shape == (3, 2)
    e = d.expand((5, 3, 2))
    assert e.rsample().shape == (5, 3, 2) and e.dropped_mass.shape == (5, 3, 2) and e.family == "poisson"
    assert torch.allclose(e.dropped_mass[0], d.dropped_mass)
    s = d.enumerate_support()
    assert s.shape == (k, 3, 2)
    total = torch.logsumexp(d.log_prob(s), 0)
    assert torch.allclose(total, torch.zeros_like(total), atol=1e-12)
    assert d.support.check(torch.tensor([0.0, 1.0, 0.5], dtype=DT)).tolist() == [True, True, False]


def test_degenerate_parameters_stay_exact():
    g = GGS.geometric(1.0, probs=torch.tensor(1.0, dtype=DT))  # always 0 failures
    assert g.support_values.numel() == MIN_SUPPORT and float(g.dropped_mass) == 0.0
    assert g.log_prob(torch.tensor(0.0, dtype=DT)).item() == 0.0
    b = GGS.binomial(1.0, 4, probs=torch.tensor([0.0, 1.0], dtype=DT))
    assert torch.equal(b.sample((20,)), torch.tensor([0.0, 4.0], dtype=DT).expand(20, 2))
    # a rate far below float range through log_rate: the law is a point mass at 0, finite logits at 0
    tiny = GGS.poisson(1.0, log_rate=torch.tensor(-1000.0, dtype=DT), support_size=5)
    assert tiny.log_prob(torch.tensor(0.0, dtype=DT)).item() == 0.0 and torch.isfinite(tiny.rsample())


T = torch.tensor


@pytest.mark.parametrize("build,word", [
    (lambda: GGS(0.0, torch.arange(3.0), logits=torch.zeros(3)), "temperature"),
    (lambda: GGS(1.0, torch.arange(3.0), probs=T([0.5, -0.1, 0.6])), "probs"),
    (lambda: GGS(1.0, torch.arange(3.0), logits=T([0.0, float("nan"), 1.0])), "logits"),
    (lambda: GGS(1.0, torch.arange(3.0)), "probs or logits"),
    (lambda: GGS(1.0, torch.arange(4.0), logits=torch.zeros(3)), "support_values"),
    (lambda: GGS(1.0, T([0.0, 1.0, 1.0]), logits=torch.zeros(3)), "support_values must be distinct"),
    (lambda: GGS(1.0, T([0.0, float("inf"), 1.0]), logits=torch.zeros(3)), "support_values must be finite"),
    (lambda: GGS(1.0, torch.arange(3.0), logits=torch.zeros(3), hard=1), "hard"),
    (lambda: GGS(1.0, torch.arange(1.0), logits=T(0.0)), "at least one dimension"),
    (lambda: GGS.poisson(1.0, rate=T(0.0)), "rate must be finite and > 0"),
    (lambda: GGS.poisson(1.0, rate=T(float("nan"))), "rate"),
    (lambda: GGS.poisson(1.0, log_rate=T(float("inf"))), "log_rate must be finite"),
    (lambda: GGS.poisson(1.0), "rate or log_rate"),
    (lambda: GGS.poisson(1.0, rate=T(1.0), tol=0.0), r"tol must lie in \(0, 1\)"),
    (lambda: GGS.poisson(1.0, rate=T(1.0), tol=1.5), r"tol must lie in \(0, 1\)"),
    (lambda: GGS.poisson(1.0, rate=T(1.0), support_size=0), "support_size must be an integer >= 1"),
    (lambda: GGS.poisson(-1.0, rate=T(1.0)), "temperature"),
    (lambda: GGS.geometric(1.0, probs=T(0.0)), r"probs must lie in \(0, 1\]"),
    (lambda: GGS.geometric(1.0, probs=T(1.5)), r"probs must lie in \(0, 1\]"),
    (lambda: GGS.geometric(1.0, logits=T(float("nan"))), "logits must be finite"),
    (lambda: GGS.binomial(1.0, 0, probs=T(0.5)), "total_count must be an integer >= 1"),
    (lambda: GGS.binomial(1.0, 2.5, probs=T(0.5)), "total_count"),
    (lambda: GGS.binomial(1.0, 5, probs=T(1.5)), r"probs must lie in \[0, 1\]"),
    (lambda: GGS.binomial(1.0, 5, probs=T(0.5), support_size=7), r"support_size must be an integer in \[1, "),
])
def test_bad_arguments_name_the_argument(build, word):
    with pytest.raises(ValueError, match=word):
        build()
