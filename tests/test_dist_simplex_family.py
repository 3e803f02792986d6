"""The categorical / simplex family: InvertibleGaussian, Gumbel-top-k (PlackettLuce, GumbelTopK) and
the Laplace bridge (LogisticNormalSoftmax and the two bridge functions).

Each test checks mathematics against an independent computation (quadrature, an exact law, a
float64 Monte-Carlo of the definition, a hand-computed case). Statistical tests use fixed seeds, so
they are deterministic; the false-alarm rate quoted for each is the chance that a *correct*
implementation would fail it with a fresh seed.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import Dirichlet, MultivariateNormal, Normal, kl_divergence

from relaxrun.distributions.gumbel_topk import (
    GumbelTopK,
    PlackettLuce,
    plackett_luce_log_prob,
    relaxed_topk,
    sample_gumbel,
    topk_khot,
)
from relaxrun.distributions.invertible_gaussian import InvertibleGaussian
from relaxrun.distributions.laplace_bridge import (
    LogisticNormalSoftmax,
    dirichlet_to_logistic_normal,
    logistic_normal_to_dirichlet,
)

F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# quadrature on the simplex
# --------------------------------------------------------------------------------------------------
def integrate_simplex(dist) -> float:
    """Integral of exp(dist.log_prob(z)) over the open simplex (K = 2 or 3), in float64.

    The simplex is parameterised by logits a, b in R (z1 = s(a), z2 = (1 - z1) s(b) for K = 3, s the
    sigmoid) -- not the distributions' own bijections -- so that mass piled up near the edges,
    as relaxations at low temperature produce, is resolved by the adaptive rules.
    """
    K = dist.event_shape[0]
    sig = torch.sigmoid  # s(-a) = 1 - s(a) without the cancellation of 1 - s(a) for large a
    if K == 2:
        def f1(a):
            a = torch.tensor(a, dtype=F64)
            z = torch.stack([sig(a), sig(-a)])
            return float(dist.log_prob(z).exp() * sig(a) * sig(-a))

        value, err = integrate.quad(f1, -np.inf, np.inf, epsabs=1e-10, epsrel=1e-10, limit=500)
        return value

    assert K == 3

    def f2(x):
        a, b = torch.as_tensor(x, dtype=F64).unbind(-1)
        z = torch.stack([sig(a), sig(-a) * sig(b), sig(-a) * sig(-b)], dim=-1)
        jac = sig(a) * sig(-a) * sig(-a) * sig(b) * sig(-b)  # d(z1, z2)/d(a, b)
        return (dist.log_prob(z).exp() * jac).numpy()

    res = integrate.cubature(f2, [-np.inf, -np.inf], [np.inf, np.inf], rtol=1e-9, atol=1e-10)
    assert res.status == "converged"
    return float(res.estimate)


# ==================================================================================================
# InvertibleGaussian
# ==================================================================================================
IGR_CASES_K2 = [  # (loc, scale, tau, delta)
    ([0.0], [1.0], 1.0, 1.0),
    ([0.7], [2.0], 0.3, 2.0),
    ([-1.5], [0.4], 0.1, 0.5),
]
IGR_CASES_K3 = [
    ([0.3, -0.4], [0.5, 1.0], 1.0, 1.0),
    ([0.5, -1.0], [0.8, 1.5], 0.5, 1.5),
]


@pytest.mark.parametrize("loc, scale, tau, delta", IGR_CASES_K2 + IGR_CASES_K3)
def test_igr_density_integrates_to_one(loc, scale, tau, delta):
    # A wrong inverse (e.g. forgetting tau or log(delta)) or a wrong log-det integrates to a
    # visibly different number (one public version gives ~15).
    d = InvertibleGaussian(tau, torch.tensor(loc, dtype=F64), torch.tensor(scale, dtype=F64), delta)
    assert integrate_simplex(d) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.1, 0.05])
@pytest.mark.parametrize("loc", [10.0, -10.0, "mixed"])
def test_igr_log_prob_of_samples_finite_float32(loc, tau):
    # loc=10, tau=0.1 is where a softmax without max-subtraction overflows to inf/inf = NaN.
    torch.manual_seed(0)
    loc_t = torch.tensor([10.0, -10.0, 3.0, 0.0]) if loc == "mixed" else torch.full((4,), loc)
    loc_t.requires_grad_(True)
    d = InvertibleGaussian(tau, loc_t, torch.full((4,), 1.0))
    z = d.rsample((2000,))
    assert z.dtype == torch.float32
    assert torch.isfinite(z).all() and (z >= 0).all()
    assert torch.allclose(z.sum(-1), torch.ones(()), atol=1e-5)
    lp = d.log_prob(z)
    assert torch.isfinite(lp).all()
    lp.mean().backward()
    assert torch.isfinite(loc_t.grad).all()


def test_igr_log_prob_without_cache_uses_the_right_inverse():
    # The cached path uses the Gaussian draw; the uncached path inverts z. They must agree.
    torch.manual_seed(1)
    d = InvertibleGaussian(torch.tensor(0.6, dtype=F64), torch.tensor([0.4, -0.3, 1.2], dtype=F64),
                           torch.tensor([0.7, 1.3, 0.9], dtype=F64), torch.tensor(1.7, dtype=F64))
    z = d.rsample((500,))
    torch.testing.assert_close(d.log_prob(z.clone()), d.log_prob(z), rtol=1e-9, atol=1e-9)
    y = d._cache[1]
    torch.testing.assert_close(d.inverse(torch.log(z)), y, rtol=1e-9, atol=1e-9)


def _igr_definition_numpy(loc, scale, tau, delta, n, seed):
    """Float64 Monte-Carlo straight from the definition (no log-space tricks; parameters moderate)."""
    rng = np.random.default_rng(seed)
    y = loc + scale * rng.standard_normal((n, len(loc)))
    e = np.exp(y / tau)
    denom = e.sum(-1, keepdims=True) + delta
    return np.concatenate([e / denom, delta / denom], axis=-1)


def test_igr_sample_statistics_match_float64_definition():
    # scale=2 vs 0.5 makes "variance passed as std" change every statistic by tens of standard errors.
    loc, scale, tau, delta = np.array([0.5, -1.0, 2.0]), np.array([2.0, 0.5, 1.0]), 0.7, 1.5
    n = 40_000
    ref = _igr_definition_numpy(loc, scale, tau, delta, n, seed=123)
    torch.manual_seed(123)
    d = InvertibleGaussian(tau, torch.tensor(loc, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32), delta)
    z = d.sample((n,)).double().numpy()
    # Two-sample z-tests on the mean and the second moment of each of the K=4 coordinates:
    # |t| < 5 has a false-alarm rate of 5.7e-7 per statistic, < 5e-6 for all 8.
    for stat in (lambda x: x, lambda x: x**2):
        a, b = stat(z), stat(ref)
        se = np.sqrt(a.var(0) / n + b.var(0) / n)
        t = (a.mean(0) - b.mean(0)) / se
        assert np.all(np.abs(t) < 5), t


def test_igr_scale_is_a_standard_deviation():
    # log z_k - log z_K = y_k / tau - log(delta) exactly, so tau * (that + log delta) ~ N(loc, scale^2).
    torch.manual_seed(3)
    scale = torch.tensor([0.5, 2.0, 3.0])
    d = InvertibleGaussian(0.4, torch.tensor([1.0, -2.0, 0.0]), scale, 2.0)
    y = d.inverse(torch.log(d.sample((50_000,))))
    # sample std of 50k normals has relative s.e. 1/sqrt(2n) = 0.3%; 2% is > 6 s.e.
    torch.testing.assert_close(y.std(0), scale, rtol=0.02, atol=0)
    torch.testing.assert_close(y.mean(0), d.loc, rtol=0, atol=0.05)


def test_igr_kl_equals_monte_carlo_and_checks_temperatures():
    torch.manual_seed(4)
    tau, delta = 0.6, 1.3
    p = InvertibleGaussian(tau, torch.tensor([0.5, -0.2, 1.0], dtype=F64), torch.tensor([0.6, 1.2, 0.9], dtype=F64),
                           delta)
    q = InvertibleGaussian(tau, torch.tensor([0.0, 0.3, 0.2], dtype=F64), torch.tensor([1.0, 0.8, 1.5], dtype=F64),
                           delta)
    z = p.sample((100_000,))
    # q.log_prob goes through the inverse of z (no cache), so this also checks the full density
    diff = p.log_prob(z) - q.log_prob(z.clone())
    kl = kl_divergence(p, q)
    se = diff.std() / math.sqrt(diff.numel())
    assert abs(kl - diff.mean()) < 5 * se  # false-alarm rate 5.7e-7
    assert kl_divergence(p, p).abs() < 1e-12
    other_tau = InvertibleGaussian(0.5, q.loc, q.scale, delta)
    with pytest.raises(NotImplementedError, match="temperature.*Monte Carlo"):
        kl_divergence(p, other_tau)
    other_delta = InvertibleGaussian(tau, q.loc, q.scale, 1.0)
    with pytest.raises(NotImplementedError, match="delta.*Monte Carlo"):
        kl_divergence(p, other_delta)


def test_igr_low_temperature_limit_is_one_hot_at_argmax():
    # As tau -> 0, z -> one-hot at argmax(y_1, ..., y_{K-1}, tau*log(delta) -> 0).
    torch.manual_seed(5)
    d = InvertibleGaussian(1e-3, torch.tensor([0.3, -0.2, 0.1]), 1.0, 1.0)
    z = d.sample((4000,))
    y = d._cache[1]
    winner = torch.cat([y, torch.zeros(y.shape[:-1] + (1,))], -1).argmax(-1)
    # near-ties |y_i - y_j| < ~0.01 (probability ~1%) are the only soft ones
    assert (z.argmax(-1) == winner).all()
    assert (z.max(-1).values > 0.99).float().mean() > 0.97


def test_igr_shapes_expand_and_independent_noise():
    torch.manual_seed(6)
    d = InvertibleGaussian(torch.full((5,), 0.5), torch.zeros(5, 2), torch.ones(5, 2))
    assert d.batch_shape == (5,) and d.event_shape == (3,)
    z = d.rsample((7,))
    assert z.shape == (7, 5, 3) and d.log_prob(z).shape == (7, 5)
    e = InvertibleGaussian(0.5, torch.zeros(2), 1.0).expand((4000, 2))
    assert e.batch_shape == (4000, 2) and e.loc.shape == (4000, 2, 2)
    z = e.sample()
    # identical parameters, but every batch element gets its own noise: correlation ~ N(0, 1/n),
    # |r| < 5/sqrt(n) has false-alarm rate 5.7e-7.
    r = np.corrcoef(z[:, 0, 0].numpy(), z[:, 1, 0].numpy())[0, 1]
    assert abs(r) < 5 / math.sqrt(4000)
    assert not torch.equal(z[0], z[1])


@pytest.mark.parametrize("kwargs, name", [
    (dict(loc=torch.tensor([float("nan"), 0.0]), scale=1.0, temperature=1.0), "loc"),
    (dict(loc=torch.zeros(2), scale=0.0, temperature=1.0), "scale"),
    (dict(loc=torch.zeros(2), scale=torch.tensor([1.0, -1.0]), temperature=1.0), "scale"),
    (dict(loc=torch.zeros(2), scale=1.0, temperature=0.0), "temperature"),
    (dict(loc=torch.zeros(2), scale=1.0, temperature=-0.5), "temperature"),
    (dict(loc=torch.zeros(2), scale=1.0, delta=0.0, temperature=1.0), "delta"),
    (dict(loc=torch.tensor(0.0), scale=1.0, temperature=1.0), "loc"),
])
def test_igr_validation_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        InvertibleGaussian(**kwargs, validate_args=True)


# ==================================================================================================
# Gumbel-top-k / Plackett-Luce
# ==================================================================================================
def _plackett_luce_numpy(p: np.ndarray, k: int) -> dict:
    """Exact law of ordered draws without replacement, by the product of conditionals."""
    out = {}
    for tup in itertools.permutations(range(len(p)), k):
        prob, left = 1.0, 1.0
        for i in tup:
            prob *= p[i] / left
            left -= p[i]
        out[tup] = prob
    return out


def _chi_square_pvalue(indices: torch.Tensor, law: dict) -> float:
    keys = list(law)
    index = {t: j for j, t in enumerate(keys)}
    counts = np.zeros(len(keys))
    for t in map(tuple, indices.reshape(-1, indices.shape[-1]).tolist()):
        counts[index[t]] += 1  # a repeated index (sampling with replacement) raises KeyError
    expected = np.array([law[t] for t in keys]) * counts.sum()
    return stats.chisquare(counts, expected).pvalue


@pytest.mark.parametrize("K, k", [(4, 2), (5, 3), (3, 3)])
def test_topk_hard_samples_follow_plackett_luce(K, k):
    # p chosen so that "probs treated as logits" (softmax(p)) is far from p.
    p = np.array([0.45, 0.3, 0.15, 0.07, 0.03][:K])
    p = p / p.sum()
    law = _plackett_luce_numpy(p, k)
    n = 30_000
    gen = torch.Generator().manual_seed(10 + K)
    probs = torch.tensor(p, dtype=torch.float32)
    # Each chi-square test: false-alarm rate 1e-4 (p-value threshold); 4 tests per case.
    for sampler in (
        lambda: PlackettLuce(k, probs=probs).sample((n,), generator=gen),
        lambda: PlackettLuce(k, logits=probs.log() + 3.0).sample((n,), generator=gen),
        lambda: GumbelTopK(0.5, k, probs=probs).rsample_with_hard((n,), generator=gen)[1],
        lambda: GumbelTopK(0.5, k, probs=probs).expand((n,)).sample_hard(generator=gen),
    ):
        idx = sampler()
        assert idx.shape == (n, k) and idx.dtype == torch.long
        assert _chi_square_pvalue(idx, law) > 1e-4


def test_plackett_luce_log_prob_is_exact_and_normalised():
    p = np.array([0.5, 0.2, 0.2, 0.1])
    law = _plackett_luce_numpy(p, 3)
    d = PlackettLuce(3, probs=torch.tensor(p, dtype=F64))
    values = d.enumerate_support()
    lp = d.log_prob(values)
    expected = torch.tensor([math.log(law[tuple(v)]) for v in values.tolist()], dtype=F64)
    torch.testing.assert_close(lp, expected, rtol=1e-12, atol=1e-12)
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    # logits are defined up to a shift; probs given as probs equal their log as logits
    d2 = PlackettLuce(3, logits=torch.tensor(p, dtype=F64).log() - 7.0)
    torch.testing.assert_close(d2.log_prob(values), expected, rtol=1e-12, atol=1e-12)
    # batched: broadcasting of logits (B, K) against indices (S, B, k)
    logits = torch.randn(6, 4, dtype=F64)
    idx = PlackettLuce(2, logits=logits).sample((5,))
    lp = plackett_luce_log_prob(logits, idx)
    manual = torch.stack([
        torch.stack([
            logits[b, idx[s, b, 0]] - logits[b].logsumexp(0)
            + logits[b, idx[s, b, 1]] - logits[b][torch.arange(4) != idx[s, b, 0]].logsumexp(0)
            for b in range(6)])
        for s in range(5)])
    torch.testing.assert_close(lp, manual)


def _hard_mask_1e10(keys, k, t):
    """Negative control: successive softmax whose chosen item is pushed down by 1e10 times a
    straight-through one-hot (hard forward, soft backward) -- a public "-1e10 mask" pattern."""
    alpha = keys
    z = torch.zeros_like(keys)
    for _ in range(k):
        a = torch.softmax(alpha / t, dim=-1)
        z = z + a
        hard = torch.zeros_like(a).scatter(-1, a.argmax(-1, keepdim=True), 1.0)
        alpha = alpha - 1e10 * (hard - a.detach() + a)
    return z


def _naive_log_mask(keys, k, t):
    """Negative control: the same relaxation with log(1 - a) taken of the rounded a."""
    alpha = keys
    z = torch.zeros_like(keys)
    for _ in range(k):
        a = torch.softmax(alpha / t, dim=-1)
        z = z + a
        alpha = alpha + torch.log(1 - a)
    return z


def _max_abs_jacobian(fn, logits, noise):
    jac = torch.func.vmap(torch.func.jacrev(lambda l, g: fn(l + g)))(logits, noise)
    return jac


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("t", [1.0, 0.5, 0.2, 0.1])
def test_topk_relaxation_gradients_bounded(k, t):
    # Bounded inputs (logits in [-5, 5]); 2000 noise draws each. The relaxation's own derivatives
    # grow as t shrinks (order 1/t per masking step at near-ties); for t >= 0.1 they stay below
    # 1e3, whereas a -1e10 straight-through mask reaches ~1e9 (checked below: the bound has teeth).
    gen = torch.Generator().manual_seed(20 + k)
    logits = torch.rand(2000, 10, generator=gen) * 10 - 5
    noise = sample_gumbel(logits.shape, logits.dtype, logits.device, gen)
    jac = _max_abs_jacobian(lambda r: relaxed_topk(r, k, torch.tensor(t)), logits, noise)
    assert torch.isfinite(jac).all()
    assert jac.abs().max() < 1e3
    if k > 1 and t == 0.1:
        bad = _max_abs_jacobian(lambda r: _hard_mask_1e10(r, k, t), logits[:200], noise[:200])
        assert not (torch.isfinite(bad).all() and bad.abs().max() < 1e3)


@pytest.mark.parametrize("t", [1.0, 0.05, 1e-3])
def test_topk_masks_never_nan_or_inf(t):
    # extreme gaps (keys far apart: masks saturate), exact ties, and zero probabilities
    cases = [
        torch.tensor([[1e3, 0.0, -1e3, 5.0, 5.0]]),
        torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]]),
        torch.tensor([[80.0, 79.0, -80.0, 0.0, 1.0]]),
    ]
    for logits in cases:
        logits = logits.clone().requires_grad_(True)
        d = GumbelTopK(t, 4, logits=logits)
        z, idx = d.rsample_with_hard((64,), generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(z).all()
        (z * torch.linspace(-1, 1, 5)).sum().backward()
        assert torch.isfinite(logits.grad).all()
    probs = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0], requires_grad=True)
    d = GumbelTopK(t, 3, probs=probs)
    z, idx = d.rsample_with_hard((64,))
    (z[..., 0].sum() + d.log_prob_hard(idx).sum()).backward()
    assert torch.isfinite(z).all() and torch.isfinite(probs.grad).all()
    assert set(idx[:, :2].reshape(-1).tolist()) <= {0, 1}  # zero-probability items come last


def test_topk_naive_mask_control_does_produce_nan():
    # Power check of the test above: log(1 - a) of a rounded a gives -inf keys and NaN gradients
    # on its first case at t = 0.05, where ours stays finite.
    logits = torch.tensor([[1e3, 0.0, -1e3, 5.0, 5.0]], requires_grad=True)
    noise = sample_gumbel((64, 5), torch.float32, "cpu", torch.Generator().manual_seed(0))
    z = _naive_log_mask(logits + noise, 4, 0.05)
    (z * torch.linspace(-1, 1, 5)).sum().backward()
    assert not (torch.isfinite(z).all() and torch.isfinite(logits.grad).all())


def test_topk_relaxation_sums_to_k_and_tends_to_the_hard_sample():
    gen = torch.Generator().manual_seed(30)
    logits = torch.randn(3, 8)
    for t in (1.0, 0.3):
        z = GumbelTopK(t, 3, logits=logits).rsample((500,), generator=gen)
        assert (z >= 0).all()
        torch.testing.assert_close(z.sum(-1), torch.full((500, 3), 3.0), rtol=0, atol=1e-5)
    # t -> 0: the relaxed vector becomes the k-hot vector of the hard sample from the same noise.
    # Draws whose top keys nearly tie (gap of order t) stay soft, so the fraction of rows that are
    # not within 1e-3 of the k-hot vector must shrink roughly like t (observed: 23%, 2.4%, 0.3%).
    # A relaxation decoupled from the hard sample's noise would stay near 100%.
    far = []
    for t in (1e-2, 1e-3, 1e-4):
        z, idx = GumbelTopK(t, 3, logits=logits).rsample_with_hard((4000,), generator=gen)
        khot = topk_khot(idx, 8)
        far.append(((z - khot).abs().max(-1).values > 1e-3).float().mean().item())
    assert far[0] > far[1] > far[2] and far[1] < 0.05 and far[2] < 0.01, far
    assert torch.equal(khot.sum(-1), torch.full((4000, 3), 3.0))


def test_topk_shapes_expand_and_independent_noise():
    torch.manual_seed(31)
    logits = torch.randn(4, 6, 10)  # batch of 4, N = 6 groups, K = 10
    d = GumbelTopK(torch.tensor(0.5), 3, logits=logits)
    assert d.batch_shape == (4, 6) and d.event_shape == (10,)
    z, idx = d.rsample_with_hard((2,))
    assert z.shape == (2, 4, 6, 10) and idx.shape == (2, 4, 6, 3)
    assert d.log_prob_hard(idx).shape == (2, 4, 6)
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()  # without replacement
    e = GumbelTopK(0.5, 2, logits=torch.zeros(10)).expand((500,))
    z, idx = e.rsample_with_hard()
    # uniform logits: if noise were shared across the batch every row would be identical
    assert len({tuple(r) for r in idx.tolist()}) > 60  # 90 ordered pairs; expected ~ 88 distinct
    with pytest.raises(NotImplementedError):
        d.log_prob(z)


@pytest.mark.parametrize("make, name", [
    (lambda: GumbelTopK(0.5, 0, logits=torch.zeros(4)), "k"),
    (lambda: GumbelTopK(0.5, 5, logits=torch.zeros(4)), "k"),
    (lambda: GumbelTopK(0.5, 2.0, logits=torch.zeros(4)), "k"),
    (lambda: PlackettLuce(5, logits=torch.zeros(4)), "k"),
    (lambda: GumbelTopK(0.0, 2, logits=torch.zeros(4)), "temperature"),
    (lambda: GumbelTopK(0.5, 2, logits=torch.tensor([0.0, float("nan"), 0.0])), "logits"),
    (lambda: GumbelTopK(0.5, 2, probs=torch.tensor([0.5, 0.6, 0.1])), "probs"),
    (lambda: PlackettLuce(2, probs=torch.tensor([0.5, -0.1, 0.6])), "probs"),
])
def test_topk_validation_names_the_argument(make, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        make()


def test_plackett_luce_rejects_tuples_with_repeats():
    d = PlackettLuce(2, logits=torch.zeros(4), validate_args=True)
    with pytest.raises(ValueError, match="distinct"):
        d.log_prob(torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="value"):
        d.log_prob(torch.tensor([0, 4]))


# ==================================================================================================
# Laplace bridge and LogisticNormalSoftmax
# ==================================================================================================
def test_bridge_matches_hand_computed_case():
    # alpha = (1, 2, 4), K = 3: mean log alpha = log 2, so mu = (-log 2, 0, log 2);
    # sum 1/alpha = 7/4, Sigma_kk = (1/3)/alpha_k + 7/36 = (19, 13, 10)/36.
    mu, sigma = dirichlet_to_logistic_normal(torch.tensor([1.0, 2.0, 4.0], dtype=F64))
    ln2 = math.log(2)
    torch.testing.assert_close(mu, torch.tensor([-ln2, 0.0, ln2], dtype=F64))
    torch.testing.assert_close(sigma, torch.tensor([19.0, 13.0, 10.0], dtype=F64) / 36)
    # and back by the inverse map: exp(mu_k) sum_l exp(-mu_l) = alpha_k * 7/4 here, so
    # alpha_k = (1 - 2/3 + 7/36 * alpha_k) / Sigma_kk
    alpha = logistic_normal_to_dirichlet(mu, sigma)
    torch.testing.assert_close(alpha, torch.tensor([1.0, 2.0, 4.0], dtype=F64))


@pytest.mark.parametrize("K", [2, 3, 10])
def test_bridge_round_trip_is_exact(K):
    gen = torch.Generator().manual_seed(K)
    alpha = torch.exp(torch.randn(50, K, generator=gen, dtype=F64) * 2)  # spans ~1e-3 .. 1e3
    mu, sigma = dirichlet_to_logistic_normal(alpha)
    torch.testing.assert_close(mu.sum(-1), torch.zeros(50, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(logistic_normal_to_dirichlet(mu, sigma), alpha, rtol=1e-12, atol=0)
    torch.testing.assert_close(logistic_normal_to_dirichlet(mu + 3.0, sigma), alpha, rtol=1e-12, atol=0)
    a32 = alpha.float()
    torch.testing.assert_close(logistic_normal_to_dirichlet(*dirichlet_to_logistic_normal(a32)), a32,
                               rtol=1e-5, atol=0)
    # passing standard deviations where variances are expected is not a round trip
    assert not torch.allclose(logistic_normal_to_dirichlet(mu, sigma.sqrt()), alpha, rtol=1e-3)


def test_bridge_mode_matches_dirichlet_mode():
    alpha = torch.tensor([2.0, 3.0, 5.0, 1.5], dtype=F64)
    # Exact statement (the paper's construction): the Gaussian's mode mu maps to alpha / alpha_0, the mode of
    # the Dirichlet in the softmax basis.
    for c in (1.0, 10.0):
        mu, _ = dirichlet_to_logistic_normal(c * alpha)
        torch.testing.assert_close(torch.softmax(mu, -1), alpha / alpha.sum(), rtol=1e-12, atol=0)
    # On the simplex, the logistic normal's mode approaches the Dirichlet mode (alpha-1)/(alpha0-K)
    # at rate 1/alpha (the Laplace approximation's error); symmetric alpha: equal by symmetry.
    for c, tol in ((1.0, 0.05), (2.0, 0.025), (10.0, 0.005), (100.0, 5e-4)):
        a = c * alpha
        q = LogisticNormalSoftmax.from_dirichlet(a)
        w = torch.zeros(3, dtype=F64, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = -q.log_prob(torch.softmax(torch.cat([w, w.new_zeros(1)]), -1))
            loss.backward()
            return loss

        opt.step(closure)
        ln_mode = torch.softmax(torch.cat([w, w.new_zeros(1)]), -1).detach()
        dir_mode = (a - 1) / (a.sum() - 4)
        assert (ln_mode - dir_mode).abs().max() < tol
        assert (ln_mode - dir_mode).abs().max() < (a / a.sum() - dir_mode).abs().max()  # closer than the mean
    q = LogisticNormalSoftmax.from_dirichlet(torch.full((3,), 4.0, dtype=F64))
    center = torch.full((3,), 1 / 3, dtype=F64)
    g = torch.autograd.functional.jacobian(lambda v: q.log_prob(torch.softmax(torch.cat([v, v.new_zeros(1)]), -1)),
                                           torch.zeros(2, dtype=F64))
    assert g.abs().max() < 1e-12 and torch.allclose(torch.softmax(q.loc, -1), center)


LNS_CASES = [
    ([0.4, -0.3], [0.8, 1.2]),
    ([3.0, -1.0], [2.0, 0.3]),
    ([0.3, -0.5, 1.0], [0.5, 1.0, 0.8]),
    ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),
]


@pytest.mark.parametrize("loc, scale", LNS_CASES)
def test_logistic_normal_density_integrates_to_one(loc, scale):
    # Catches a density that treats softmax on R^K as injective (no sum-to-zero/reference handling),
    # a dropped log-det, or variance-vs-std confusion in the log-ratio covariance.
    d = LogisticNormalSoftmax(torch.tensor(loc, dtype=F64), torch.tensor(scale, dtype=F64))
    assert integrate_simplex(d) == pytest.approx(1.0, abs=1e-6)
    bridge = LogisticNormalSoftmax.from_dirichlet(torch.tensor([2.0, 3.5, 1.2][: len(loc)], dtype=F64))
    assert integrate_simplex(bridge) == pytest.approx(1.0, abs=1e-6)


def test_logistic_normal_log_prob_matches_full_covariance_gaussian():
    # Independent route: torch's MultivariateNormal on the log-ratios with the dense covariance.
    torch.manual_seed(40)
    loc = torch.randn(5, 4, dtype=F64)
    scale = torch.rand(5, 4, dtype=F64) + 0.2
    d = LogisticNormalSoftmax(loc, scale)
    z = d.sample((100,))
    var = scale**2
    cov = torch.diag_embed(var[:, :-1]) + var[:, -1:, None]
    mvn = MultivariateNormal(loc[:, :-1] - loc[:, -1:], covariance_matrix=cov)
    w = torch.log(z[..., :-1]) - torch.log(z[..., -1:])
    expected = mvn.log_prob(w) - torch.log(z).sum(-1)
    torch.testing.assert_close(d.log_prob(z.clone()), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d.log_prob(z), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("loc", [10.0, -10.0, 200.0, "mixed"])
@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
def test_logistic_normal_log_prob_of_samples_finite_float32(loc, scale):
    # loc/scale up to 200 = loc 10 at temperature 0.05 in relaxation terms
    torch.manual_seed(41)
    loc_t = torch.tensor([200.0, -200.0, 10.0, 0.0]) if loc == "mixed" else torch.full((4,), loc)
    loc_t = loc_t.requires_grad_(True)
    d = LogisticNormalSoftmax(loc_t, torch.full((4,), scale))
    z = d.rsample((1000,))
    lp = d.log_prob(z)
    assert torch.isfinite(z).all() and torch.isfinite(lp).all()
    lp.mean().backward()
    assert torch.isfinite(loc_t.grad).all()


def test_logistic_normal_scale_is_a_standard_deviation():
    # w_k = y_k - y_K has variance scale_k^2 + scale_K^2; with variance passed as std it would be
    # scale_k^4 + scale_K^4 (here 16.25 instead of 4.25 for k = 1).
    torch.manual_seed(42)
    scale = torch.tensor([2.0, 0.5, 1.0, 0.5])
    d = LogisticNormalSoftmax(torch.tensor([1.0, 0.0, -1.0, 0.5]), scale)
    z = d.sample((50_000,))
    w = torch.log(z[:, :-1]) - torch.log(z[:, -1:])
    expected_var = scale[:-1] ** 2 + scale[-1] ** 2
    # relative s.e. of a variance from 50k normals: sqrt(2/n) = 0.6%; 4% is > 6 s.e.
    torch.testing.assert_close(w.var(0), expected_var, rtol=0.04, atol=0)
    torch.testing.assert_close(LogisticNormalSoftmax.from_dirichlet(torch.tensor([2.0, 3.0, 4.0])).variance_y,
                               dirichlet_to_logistic_normal(torch.tensor([2.0, 3.0, 4.0]))[1])


def test_logistic_normal_kl_closed_forms():
    torch.manual_seed(43)
    p = LogisticNormalSoftmax(torch.randn(4, dtype=F64), torch.rand(4, dtype=F64) + 0.3)
    q = LogisticNormalSoftmax(torch.randn(4, dtype=F64), torch.rand(4, dtype=F64) + 0.3)
    kl = kl_divergence(p, q)
    # (a) against torch's dense-covariance Gaussian KL of the log-ratios
    def alr(d):
        var = d.scale**2
        return MultivariateNormal(d.loc[:-1] - d.loc[-1], torch.diag(var[:-1]) + var[-1])
    torch.testing.assert_close(kl, kl_divergence(alr(p), alr(q)), rtol=1e-10, atol=1e-12)
    # (b) against Monte-Carlo on the simplex; 5 s.e., false-alarm rate 5.7e-7
    z = p.sample((100_000,))
    diff = p.log_prob(z) - q.log_prob(z.clone())
    assert abs(kl - diff.mean()) < 5 * diff.std() / math.sqrt(diff.numel())
    # (c) never more than ProdLDA's KL between the K-dimensional Gaussians (data processing)
    prodlda = kl_divergence(Normal(p.loc, p.scale), Normal(q.loc, q.scale)).sum()
    assert kl <= prodlda + 1e-12
    # (d) Dirichlet || logistic normal: closed form vs Monte-Carlo
    dirichlet = Dirichlet(torch.tensor([2.0, 0.7, 3.0, 1.5], dtype=F64))
    kl_dq = kl_divergence(dirichlet, q)
    z = dirichlet.sample((100_000,))
    diff = dirichlet.log_prob(z) - q.log_prob(z)
    assert abs(kl_dq - diff.mean()) < 5 * diff.std() / math.sqrt(diff.numel())
    # the bridge's own approximation is closer to the Dirichlet than an arbitrary logistic normal
    assert kl_divergence(dirichlet, LogisticNormalSoftmax.from_dirichlet(dirichlet.concentration)) < kl_dq


def test_logistic_normal_shapes_and_expand():
    d = LogisticNormalSoftmax(torch.zeros(3, 1, 4), torch.ones(5, 4))
    assert d.batch_shape == (3, 5) and d.event_shape == (4,)
    z = d.rsample((2,))
    assert z.shape == (2, 3, 5, 4) and d.log_prob(z).shape == (2, 3, 5)
    e = d.expand((7, 3, 5))
    assert e.batch_shape == (7, 3, 5) and e.sample().shape == (7, 3, 5, 4)
    torch.manual_seed(44)
    z = LogisticNormalSoftmax(torch.zeros(4), 1.0).expand((4000, 2)).sample()
    r = np.corrcoef(z[:, 0, 0].numpy(), z[:, 1, 0].numpy())[0, 1]
    assert abs(r) < 5 / math.sqrt(4000)  # independent noise per batch element; false alarm 5.7e-7
    dirichlet = LogisticNormalSoftmax.from_dirichlet(torch.tensor([[2.0, 3.0, 4.0]])).to_dirichlet()
    torch.testing.assert_close(dirichlet.concentration, torch.tensor([[2.0, 3.0, 4.0]]))


@pytest.mark.parametrize("make, name", [
    (lambda: dirichlet_to_logistic_normal(torch.tensor([1.0, 0.0, 2.0])), "alpha"),
    (lambda: dirichlet_to_logistic_normal(torch.tensor([1.0])), "alpha"),
    (lambda: logistic_normal_to_dirichlet(torch.zeros(3), torch.tensor([1.0, -1.0, 1.0])), "Sigma"),
    (lambda: logistic_normal_to_dirichlet(torch.tensor([0.0, float("nan")]), torch.ones(2)), "mu"),
    (lambda: LogisticNormalSoftmax(torch.tensor([0.0, float("nan")]), 1.0, validate_args=True), "loc"),
    (lambda: LogisticNormalSoftmax(torch.zeros(3), 0.0, validate_args=True), "scale"),
    (lambda: LogisticNormalSoftmax(torch.zeros(1), 1.0), "loc"),
])
def test_bridge_validation_names_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_laplace_bridge_figure_script_writes_a_png(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "laplace_bridge.py"
    out = tmp_path / "fig" / "bridge.png"
    run = subprocess.run([sys.executable, str(script), str(out), "--seed", "3", "--grid", "40"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    alpha, rest = run.stdout.split("alpha=")[1].split("  alpha_back=")
    back, rest = rest.split("  KL(Dir || bridge)=")
    assert alpha.strip() == back.strip()  # the round trip, as printed
    kl_bridge, kl_diag = (float(v) for v in rest.split("  KL(Dir || diagonal)="))
    assert 0 < kl_bridge < kl_diag  # the figure's bridge is the full-covariance law, not the diagonal one


# ==================================================================================================
# the shared Gumbel sampler and Gumbel-max
# ==================================================================================================
def test_one_gumbel_sampler_under_every_name():
    import relaxrun.distributions as dists
    from relaxrun.distributions import concrete, gumbel

    assert sample_gumbel is concrete.sample_gumbel is gumbel.sample_gumbel is dists.sample_gumbel
    assert dists.gumbel_max_one_hot is gumbel.gumbel_max_one_hot


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_sample_gumbel_is_finite_standard_gumbel(dtype):
    g = sample_gumbel((200_000,), dtype, "cpu", torch.Generator().manual_seed(0))
    assert g.shape == (200_000,) and g.dtype == dtype and torch.isfinite(g).all()
    if dtype in (torch.float32, torch.float64):
        # Gumbel(0, 1): mean Euler's gamma, variance pi^2 / 6 (standard errors 0.003 and 0.007)
        assert abs(g.double().mean().item() - 0.5772156649) < 0.015
        assert abs(g.double().var().item() - math.pi ** 2 / 6) < 0.04


def test_gumbel_max_one_hot_is_an_exact_categorical_draw():
    from relaxrun.distributions import gumbel_max_one_hot

    logits = torch.tensor([[1.0, -0.5, 0.3, 2.0], [0.0, 0.0, -3.0, 0.5]], dtype=F64, requires_grad=True)
    c = gumbel_max_one_hot(logits, (50_000,), generator=torch.Generator().manual_seed(1))
    assert c.shape == (50_000, 2, 4) and c.dtype == F64 and not c.requires_grad
    assert torch.equal(c.sum(-1), torch.ones(50_000, 2, dtype=F64)) and bool(((c == 0) | (c == 1)).all())
    # the same uniforms give argmax(logits + g) exactly
    g = sample_gumbel((50_000, 2, 4), F64, "cpu", torch.Generator().manual_seed(1))
    assert torch.equal(c.argmax(-1), (logits.detach() + g).argmax(-1))
    # frequencies: chi-square against softmax(logits) per row (false alarm 1e-4 each)
    p = torch.softmax(logits.detach(), -1).numpy()
    counts = c.sum(0).numpy()
    for row in range(2):
        assert stats.chisquare(counts[row], 50_000 * p[row]).pvalue > 1e-4
