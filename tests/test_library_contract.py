"""relaxrun.distributions as a torch.distributions library: one constructor convention, exact KLs
against 1e5-sample Monte Carlo, closed-form and quadrature moments against Monte Carlo, clear
NotImplementedError messages, the open interval (0, 1), and the Laplace bridge's full covariance.

Monte Carlo checks use fixed seeds and 4 standard errors (false-alarm rate 6.3e-5 per check at a
fresh seed); the deterministic checks compare with independent routes (scipy quadrature, dense
matrices, closed forms at special points).
"""

from __future__ import annotations

import doctest
import inspect
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from torch.distributions import Dirichlet, Independent, MultivariateNormal, kl_divergence

import relaxrun.distributions as rd
from relaxrun.distributions import (CorrelatedRelaxedBernoulli, GeneralizedGumbelSoftmax, GumbelSoftmax, GumbelTopK,
                                    HardConcrete, InvertibleGaussian, LaplaceBridge, LogisticNormalSoftmax,
                                    PlackettLuce, RelaxedBernoulli, StochasticGate, StochasticTimesSmooth,
                                    StraightThroughBernoulli, equicorrelation, laplace_bridge_covariance)
from relaxrun.distributions.binary_concrete import _kl_same_scale_logistic

F64 = torch.float64
MC = 100_000


def t(*v):
    return torch.tensor(v if len(v) > 1 else v[0], dtype=F64)


# -- the seed page's example -------------------------------------------------------------------------
def test_seed_page_example_doctest():
    import relaxrun.distributions.binary_concrete as module

    result = doctest.testmod(module, verbose=False)
    assert result.attempted >= 3 and result.failed == 0


# -- one constructor convention ------------------------------------------------------------------------
TEMPERATURE_FIRST = [RelaxedBernoulli, GumbelSoftmax, HardConcrete, CorrelatedRelaxedBernoulli, InvertibleGaussian,
                     GumbelTopK, GeneralizedGumbelSoftmax]
PROBS_LOGITS = [RelaxedBernoulli, GumbelSoftmax, HardConcrete, CorrelatedRelaxedBernoulli, GumbelTopK,
                GeneralizedGumbelSoftmax, StraightThroughBernoulli, StochasticTimesSmooth, PlackettLuce]


@pytest.mark.parametrize("cls", sorted({*TEMPERATURE_FIRST, *PROBS_LOGITS, StochasticGate, LogisticNormalSoftmax,
                                        LaplaceBridge}, key=lambda c: c.__name__))
def test_constructor_convention(cls):
    params = list(inspect.signature(cls.__init__).parameters)[1:]
    assert params[-1] == "validate_args"
    if cls in TEMPERATURE_FIRST:
        assert params[0] == "temperature"
    else:
        assert "temperature" not in params
    if cls in PROBS_LOGITS:
        i = params.index("probs")
        assert params[i + 1] == "logits" and all(p not in params for p in ("log_alpha", "beta"))


@pytest.mark.parametrize("make", [
    lambda **kw: RelaxedBernoulli(0.5, **kw), lambda **kw: HardConcrete(0.5, **kw),
    lambda **kw: GumbelSoftmax(0.5, **kw), lambda **kw: StraightThroughBernoulli(**kw),
    lambda **kw: CorrelatedRelaxedBernoulli(0.5, **kw), lambda **kw: PlackettLuce(1, **kw),
])
def test_exactly_one_of_probs_and_logits(make):
    p = torch.full((3,), 0.5)
    with pytest.raises(ValueError, match="exactly one of probs or logits"):
        make(probs=p, logits=p)
    with pytest.raises(ValueError, match="exactly one of probs or logits"):
        make()


# -- KL: every registered pair against Monte Carlo ---------------------------------------------------------
KL_PAIRS = {
    "RB same tau": (lambda: RelaxedBernoulli(t(0.4), logits=t(0.3, -2.0, 1.5)),
                    lambda: RelaxedBernoulli(t(0.4), logits=t(-1.2, 0.5, 1.4))),
    "RB other tau": (lambda: RelaxedBernoulli(t(0.4, 1.0, 0.2), logits=t(0.3, -2.0, 1.5)),
                     lambda: RelaxedBernoulli(t(0.8, 0.5, 0.25), logits=t(-1.2, 0.5, 1.4))),
    "HardConcrete": (lambda: HardConcrete(t(0.66, 0.3, 1.5), logits=t(0.5, -1.0, 2.0)),
                     lambda: HardConcrete(t(0.66, 0.8, 0.5), logits=t(-1.0, 0.2, 0.0))),
    "StochasticGate": (lambda: StochasticGate(t(0.3, 0.9, -0.2), t(0.5, 0.2, 0.7)),
                       lambda: StochasticGate(t(0.6, 0.4, 0.5), t(0.3, 0.5, 0.4))),
    "StraightThrough": (lambda: StraightThroughBernoulli(logits=t(0.3, -2.0)),
                        lambda: StraightThroughBernoulli(logits=t(-1.0, 0.5))),
    "IGR": (lambda: InvertibleGaussian(0.5, t(0.5, -0.2, 1.0), t(0.6, 1.2, 0.9)),
            lambda: InvertibleGaussian(0.5, t(0.0, 0.3, 0.2), t(1.0, 0.8, 1.5))),
    "LNS": (lambda: LogisticNormalSoftmax(t(0.5, -0.2, 1.0), t(0.6, 1.2, 0.9)),
            lambda: LogisticNormalSoftmax(t(0.0, 0.3, 0.2), t(1.0, 0.8, 1.5))),
    "Dirichlet-LNS": (lambda: Dirichlet(t(2.0, 0.7, 3.0)), lambda: LogisticNormalSoftmax(t(0.0, 0.3, 0.2), t(1.0, 0.8, 1.5))),
    "Dirichlet-bridge": (lambda: Dirichlet(t(2.0, 0.7, 3.0)), lambda: LaplaceBridge(t(2.0, 0.7, 3.0))),
    "bridge-bridge": (lambda: LaplaceBridge(t(2.0, 0.7, 3.0)), lambda: LaplaceBridge(t(1.0, 1.0, 4.0))),
    "LNS-bridge": (lambda: LogisticNormalSoftmax(t(0.5, -0.2, 1.0), t(0.6, 1.2, 0.9)), lambda: LaplaceBridge(t(1.0, 1.0, 4.0))),
    "GenGS": (lambda: GeneralizedGumbelSoftmax(0.5, t(0.0, 1.0, 2.5), probs=t(0.2, 0.5, 0.3)),
              lambda: GeneralizedGumbelSoftmax(0.5, t(0.0, 1.0, 2.5), probs=t(0.6, 0.1, 0.3))),
    "Independent(RB)": (lambda: Independent(RelaxedBernoulli(t(0.4), logits=t(0.3, -2.0)), 1),
                        lambda: Independent(RelaxedBernoulli(t(0.4), logits=t(-1.2, 0.5)), 1)),
}


@pytest.mark.parametrize("name", list(KL_PAIRS))
def test_registered_kl_matches_monte_carlo(name):
    make_p, make_q = KL_PAIRS[name]
    p, q = make_p(), make_q()
    kl = kl_divergence(p, q)
    torch.manual_seed(sum(map(ord, name)))
    if name.startswith("RB"):
        # in logit space: at tau = 0.2 a float64 z within 1e-16 of 0 or 1 no longer holds its logit, and
        # q's density at the rounded z is another point's (the density ratio is the same at the same y)
        y = p.rsample_logit((MC,))
        diff = p.log_prob_logit(y) - q.log_prob_logit(y)
    else:
        z = p.sample((MC,))
        diff = p.log_prob(z) - q.log_prob(z.clone())  # q at a fresh tensor: its general formula
    mean, se = diff.mean(0), diff.std(0) / math.sqrt(MC)
    assert torch.all((kl - mean).abs() < 4 * se + 1e-12), (kl, mean, se)
    assert torch.all(kl >= -1e-12)


@pytest.mark.parametrize("delta", [1e-4, 0.05, 0.0999, 0.1001, 0.7, 3.0, 30.0, -2.0])
def test_same_temperature_binary_concrete_kl_closed_form(delta):
    # delta coth(delta / 2) - 2 against scipy's adaptive quadrature of the logistic KL (scale 1)
    def integrand(u):
        lp = -u - 2 * np.logaddexp(0, -u)
        v = u - delta
        lq = -v - 2 * np.logaddexp(0, -v)
        return np.exp(lp) * (lp - lq)

    ref, _ = integrate.quad(integrand, -60, 60, points=[0.0, delta], limit=200, epsabs=1e-14, epsrel=1e-12)
    got = _kl_same_scale_logistic(torch.tensor(delta, dtype=F64)).item()
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-15)
    # and through the distributions, at a temperature where samples are near-binary
    p = RelaxedBernoulli(0.05, logits=t(0.2))
    q = RelaxedBernoulli(0.05, logits=t(0.2 + delta))
    assert kl_divergence(p, q).item() == pytest.approx(ref, rel=1e-9, abs=1e-15)


def test_kl_gradients_are_finite_at_equal_parameters():
    a = t(0.3).requires_grad_(True)
    kl = kl_divergence(RelaxedBernoulli(0.5, logits=a), RelaxedBernoulli(0.5, logits=t(0.3)))
    (g,) = torch.autograd.grad(kl, a)
    assert kl.item() == 0 and g.item() == 0


@pytest.mark.parametrize("make_p, make_q, names", [
    (lambda: GumbelSoftmax(0.5, logits=torch.zeros(3)), lambda: GumbelSoftmax(0.5, logits=torch.ones(3)),
     ("GumbelSoftmax", "GumbelSoftmax")),
    (lambda: RelaxedBernoulli(0.5, logits=torch.zeros(3)), lambda: HardConcrete(0.5, logits=torch.zeros(3)),
     ("RelaxedBernoulli", "HardConcrete")),
    (lambda: Independent(GumbelSoftmax(0.5, logits=torch.zeros(2, 3)), 1),
     lambda: Independent(GumbelSoftmax(0.5, logits=torch.ones(2, 3)), 1), ("GumbelSoftmax", "GumbelSoftmax")),
    (lambda: CorrelatedRelaxedBernoulli(0.5, logits=torch.zeros(3), correlation=equicorrelation(0.2, 3)),
     lambda: CorrelatedRelaxedBernoulli(0.5, logits=torch.ones(3)),
     ("CorrelatedRelaxedBernoulli", "CorrelatedRelaxedBernoulli")),
    (lambda: torch.distributions.Bernoulli(logits=torch.zeros(3)), lambda: RelaxedBernoulli(0.5, logits=torch.zeros(3)),
     ("Bernoulli", "RelaxedBernoulli")),
    (lambda: LogisticNormalSoftmax(torch.zeros(3), 1.0), lambda: Dirichlet(torch.ones(3)),
     ("LogisticNormalSoftmax", "Dirichlet")),
])
def test_unregistered_kl_names_the_pair_and_the_monte_carlo_estimate(make_p, make_q, names):
    with pytest.raises(NotImplementedError) as err:
        kl_divergence(make_p(), make_q())
    msg = str(err.value)
    assert f"kl_divergence({names[0]} || {names[1]})" in msg and "Monte Carlo" in msg


def test_hard_concrete_kl_needs_the_same_stretch():
    with pytest.raises(NotImplementedError, match=r"same stretch \(l, r\).*Monte Carlo"):
        kl_divergence(HardConcrete(0.5, logits=torch.zeros(2)), HardConcrete(0.5, logits=torch.zeros(2), l=-0.2))


# -- moments and entropies against Monte Carlo --------------------------------------------------------------
MOMENT_LAWS = {
    "RB tau 0.05": lambda: RelaxedBernoulli(t(0.05), logits=t(0.8, -3.0, 0.0)),
    "RB tau 0.5": lambda: RelaxedBernoulli(t(0.5), logits=t(0.8, -3.0, 5.0)),
    "RB tau 5": lambda: RelaxedBernoulli(t(5.0), logits=t(0.8, -3.0, 5.0)),
    "HardConcrete": lambda: HardConcrete(t(2 / 3, 0.1, 3.0), logits=t(0.5, -1.0, 2.0)),
    "StochasticGate": lambda: StochasticGate(t(0.3, 1.2, -0.1), t(0.5, 0.2, 0.8)),
    "StraightThrough": lambda: StraightThroughBernoulli(logits=t(0.3, -2.0)),
    "StochasticTimesSmooth": lambda: StochasticTimesSmooth(logits=t(0.3, -2.0)),
    "GenGS": lambda: GeneralizedGumbelSoftmax(0.5, t(0.0, 1.0, 2.5), probs=t(0.2, 0.5, 0.3)),
    "CorrelatedRB": lambda: CorrelatedRelaxedBernoulli(0.3, logits=t(0.8, -3.0, 0.0), correlation=equicorrelation(0.5, 3).double()),
}


@pytest.mark.parametrize("name", list(MOMENT_LAWS))
def test_moments_and_entropy_match_monte_carlo(name):
    d = MOMENT_LAWS[name]()
    torch.manual_seed(sum(map(ord, name)))
    z = d.sample((MC,))
    m = z.mean(0)
    se_m = z.std(0) / math.sqrt(MC)
    assert torch.all((d.mean - m).abs() < 4 * se_m + 1e-12), (d.mean, m)
    c2 = (z - m) ** 2
    se_v = c2.std(0) / math.sqrt(MC)
    assert torch.all((d.variance - c2.mean(0)).abs() < 4 * se_v + 1e-12), (d.variance, c2.mean(0))
    if name != "CorrelatedRB":  # its entropy has no closed form (copula); checked to say so below
        nlp = -d.log_prob(z)
        se_h = nlp.std(0) / math.sqrt(MC)
        assert torch.all((d.entropy() - nlp.mean(0)).abs() < 4 * se_h + 1e-12), (d.entropy(), nlp.mean(0))


@pytest.mark.parametrize("logit", [-4.0, -0.3, 0.7, 6.0])
def test_binary_concrete_quadrature_is_exact_at_tau_one(logit):
    # at tau = 1, E[z] is the CDF at l of the sum of two standard logistics: e^l (e^l - 1 - l) / (e^l - 1)^2;
    # its entropy is that of the logistic, 2, plus E[softplus(y) + softplus(-y)], y ~ Logistic(l, 1)
    e = math.exp(logit)
    d = RelaxedBernoulli(1.0, logits=t(logit))
    assert d.mean.item() == pytest.approx(e * (e - 1 - logit) / (e - 1) ** 2, rel=1e-11)

    def sp(y):
        return np.logaddexp(0, y)

    def dens(y):
        a = y - logit
        return np.exp(-a - 2 * np.logaddexp(0, -a))

    ref, _ = integrate.quad(lambda y: dens(y) * (sp(y) + sp(-y)), -80, 80, points=[0.0, logit], limit=200)
    assert d.entropy().item() == pytest.approx(2 - ref, rel=1e-9)  # H(z) = H(y) + E[log sigmoid'(y)]


@pytest.mark.parametrize("name", list(MOMENT_LAWS)[3:5])
def test_quantile_functions_invert_the_cdf(name):
    d = MOMENT_LAWS[name]()
    q = torch.linspace(0.001, 0.999, 199, dtype=F64).unsqueeze(-1)
    x = d.icdf(q)
    c = d.cdf(x)
    # inf{x: F(x) >= q}: F(x) >= q, and inside the open part F is continuous, so F(x) = q there
    assert torch.all(c >= q - 1e-9)
    inside = (x > 0) & (x < 1)
    torch.testing.assert_close(c[inside], q.expand_as(c)[inside], rtol=1e-9, atol=1e-9)


def test_unavailable_quantities_say_what_and_why():
    laws = [GumbelSoftmax(0.5, logits=torch.zeros(3)), InvertibleGaussian(0.5, torch.zeros(2), 1.0),
            LogisticNormalSoftmax(torch.zeros(3), 1.0), LaplaceBridge(torch.ones(3)),
            GumbelTopK(0.5, 2, logits=torch.zeros(4)), PlackettLuce(2, logits=torch.zeros(4)),
            CorrelatedRelaxedBernoulli(0.5, logits=torch.zeros(3)), RelaxedBernoulli(0.5, logits=torch.zeros(2)),
            HardConcrete(0.5, logits=torch.zeros(2)), StochasticGate(torch.zeros(2), 0.5),
            StochasticTimesSmooth(logits=torch.zeros(2)), StraightThroughBernoulli(logits=torch.zeros(2)),
            GeneralizedGumbelSoftmax(0.5, torch.arange(3.0), logits=torch.zeros(3))]
    raised = 0
    for d in laws:
        for what, call in (("mean", lambda: d.mean), ("variance", lambda: d.variance), ("mode", lambda: d.mode),
                           ("entropy", d.entropy), ("cdf", lambda: d.cdf(torch.tensor(0.5))),
                           ("icdf", lambda: d.icdf(torch.tensor(0.5))), ("enumerate_support", d.enumerate_support)):
            try:
                value = call()
            except NotImplementedError as err:
                raised += 1
                msg = str(err)
                assert msg.startswith(f"{type(d).__name__}: {what} is not available: ") and len(msg) > 60, msg
            else:
                assert torch.is_tensor(value) and not torch.isnan(value.double()).any(), (type(d).__name__, what)
    assert raised > 20  # the simplex laws have few exact quantities: the check saw real refusals


# -- the open interval ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relaxed_bernoulli_family_never_returns_0_or_1(dtype):
    torch.manual_seed(5)
    logits = torch.linspace(-30, 30, 1000, dtype=dtype)
    n = 1000 if dtype == torch.float32 else 100  # 10^6 float32 values, 10^5 float64
    laws = [RelaxedBernoulli(0.05, logits=logits),
            RelaxedBernoulli(0.05, probs=torch.full((1000,), 0.7, dtype=dtype)),
            CorrelatedRelaxedBernoulli(0.05, logits=logits.reshape(100, 10),
                                       correlation=equicorrelation(0.5, 10, dtype=dtype))]
    for d in laws:
        z = d.rsample((n,))
        assert z.numel() == n * 1000
        assert not ((z == 0) | (z == 1)).any()
        assert ((z > 0) & (z < 1)).all()
        # the check can fail: sigmoid of the very logits drawn rounds to exactly 0 or 1 here
        y = d._cache[1]
        assert ((torch.sigmoid(y) == 0) | (torch.sigmoid(y) == 1)).any()
        lp = d.log_prob(z)
        assert torch.isfinite(lp).all()


def test_open_interval_keeps_the_pathwise_gradient():
    a = torch.tensor([40.0, -200.0, 0.3], requires_grad=True)
    d = RelaxedBernoulli(0.05, logits=a)
    torch.manual_seed(6)
    z = d.rsample()
    (g,) = torch.autograd.grad(z.sum(), a)
    y = d._cache[1].detach()
    expected = torch.sigmoid(y) * torch.sigmoid(-y) / 0.05  # dz/da of sigmoid((a + u) / tau)
    torch.testing.assert_close(g, expected)
    assert z[0] < 1 and z[1] > 0


# -- the Laplace bridge's full covariance ---------------------------------------------------------------------
def test_bridge_covariance_is_the_seed_formula_and_diagonal_plus_low_rank():
    alpha = t(2.0, 3.0, 4.0, 0.5)
    K = 4
    sigma = laplace_bridge_covariance(alpha)
    inv = 1 / alpha
    seed = torch.empty(K, K, dtype=F64)
    for i in range(K):
        for j in range(K):
            seed[i, j] = (i == j) / alpha[i] - (inv[i] + inv[j] - inv.sum() / K) / K
    torch.testing.assert_close(sigma, seed, rtol=1e-14, atol=1e-14)
    b = LaplaceBridge(alpha)
    U, M = b.cov_low_rank
    torch.testing.assert_close(torch.diag(b.cov_diag) + U @ M @ U.T, seed, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(b.covariance_matrix, seed)
    torch.testing.assert_close(b.variance_y, torch.diagonal(seed))
    torch.testing.assert_close(b.to_dirichlet().concentration, alpha)


def test_bridge_samples_have_the_seed_covariance():
    alpha = t(2.0, 3.0, 4.0)
    b = LaplaceBridge(alpha)
    torch.manual_seed(7)
    y = b.rsample_gaussian((MC,))
    torch.testing.assert_close(y.mean(0), b.loc, rtol=0, atol=0.02)
    torch.testing.assert_close(torch.cov(y.T), b.covariance_matrix, rtol=0.05, atol=0.005)
    z = b.rsample((MC,))
    A = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]], dtype=F64)
    target = A @ laplace_bridge_covariance(alpha) @ A.T  # the seed's A Sigma A^T, from the dense matrix
    w = torch.log(z[:, :-1]) - torch.log(z[:, -1:])
    ratio = torch.cov(w.T) / target
    assert torch.all((ratio - 1).abs() < 0.05), ratio
    # the law that keeps only the variances as independent coordinates misses it (ratio 0.66-0.75)
    mu, var = rd.dirichlet_to_logistic_normal(alpha)
    zd = LogisticNormalSoftmax(mu, var.sqrt()).sample((MC,))
    wd = torch.log(zd[:, :-1]) - torch.log(zd[:, -1:])
    assert torch.all(torch.diagonal(torch.cov(wd.T) / target) < 0.8)


def test_bridge_log_prob_is_the_log_ratio_gaussian_of_the_dense_covariance():
    alpha = t(2.0, 0.7, 3.0, 1.5)
    b = LaplaceBridge(alpha)
    torch.manual_seed(8)
    z = b.sample((50,))
    A = torch.cat([torch.eye(3, dtype=F64), -torch.ones(3, 1, dtype=F64)], 1)
    mvn = MultivariateNormal(A @ b.loc, covariance_matrix=A @ b.covariance_matrix @ A.T)
    w = torch.log(z[..., :-1]) - torch.log(z[..., -1:])
    torch.testing.assert_close(b.log_prob(z.clone()), mvn.log_prob(w) - torch.log(z).sum(-1), rtol=1e-10, atol=1e-10)
    assert b.expand((5, 2)).sample().shape == (5, 2, 4) and b.expand((5, 2)).alpha.shape == (5, 2, 4)


def test_bridge_kl_from_the_dirichlet_decreases_towards_zero():
    base = t(2.0, 3.0, 4.0)
    kls = [kl_divergence(Dirichlet(c * base), LaplaceBridge(c * base)).item() for c in (1.0, 10.0, 100.0)]
    assert kls[0] > kls[1] > kls[2] > 0 and kls[2] < 1e-3
    assert kls[0] / kls[2] > 100  # about 1/c^... : 0.0648, 0.00387, 0.000362
    # the diagonal-only law does not approach the Dirichlet
    diag = [kl_divergence(Dirichlet(c * base), LogisticNormalSoftmax(*map(lambda v, i: v if i == 0 else v.sqrt(),
            rd.dirichlet_to_logistic_normal(c * base), (0, 1)))).item() for c in (1.0, 10.0, 100.0)]
    assert min(diag) > 0.05


# -- without pyro ------------------------------------------------------------------------------------------------
def test_without_pyro_nothing_imports_it_and_nothing_changes():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['pyro'] = None  # as if pyro-ppl were not installed\n"
        "import torch\n"
        "import relaxrun.distributions as rd\n"
        "from relaxrun.methods import available_methods\n"
        "assert len(available_methods()) > 10  # every method module imported\n"
        "assert not rd._common.PYRO_AVAILABLE\n"
        "assert not [m for m, v in sys.modules.items() if v is not None and m.split('.')[0] == 'pyro']\n"
        "d = rd.RelaxedBernoulli(0.5, probs=0.7)\n"
        "assert type(d).__mro__[-2] is torch.distributions.Distribution\n"
        "z = d.sample((100,))\n"
        "assert bool(((z > 0) & (z < 1)).all())\n"
        "assert float(torch.distributions.kl_divergence(d, rd.RelaxedBernoulli(0.5, probs=0.2))) > 0\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("pair", ["RB other tau", "HardConcrete"])
def test_quadrature_kl_of_expanded_laws_is_the_expanded_kl_with_the_same_gradient(pair):
    # the quadrature runs once per distinct parameter (stride-0 dimensions are cut) and is expanded back
    make_p, make_q = KL_PAIRS[pair]
    p, q = make_p(), make_q()
    a = p.logits.clone().requires_grad_(True)
    p1 = type(p)(p.temperature, logits=a)
    kl = kl_divergence(p1, q)
    (g,) = torch.autograd.grad(kl.sum() * 1000, a)
    pe, qe = p1.expand((1000, 3)), q.expand((1000, 3))
    kl_e = kl_divergence(pe, qe)
    (g_e,) = torch.autograd.grad(kl_e.sum(), a)
    assert kl_e.shape == (1000, 3)
    torch.testing.assert_close(kl_e, kl.expand(1000, 3).detach(), rtol=1e-12, atol=0, check_stride=False)
    torch.testing.assert_close(g_e, g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["StraightThrough", "StochasticTimesSmooth", "GenGS", "HardConcrete",
                                  "StochasticGate"])
def test_quantile_is_the_smallest_point_whose_cdf_reaches_q(name):
    # icdf(q) = inf{x : F(x) >= q}: F(icdf(q)) >= q, and F just below it is < q (atoms included)
    d = MOMENT_LAWS[name]()
    q = torch.linspace(0.005, 0.995, 199, dtype=F64).unsqueeze(-1)
    x = d.icdf(q)
    assert torch.all(d.cdf(x) >= q - 1e-12)
    assert torch.all(d.cdf(x - 1e-9) < q + 1e-7)
    # and against the empirical quantiles of samples (Monte Carlo; 1e5 draws)
    torch.manual_seed(9)
    z = d.sample((MC,))
    for level in (0.1, 0.5, 0.9):
        emp = (z <= d.icdf(torch.tensor(level, dtype=F64))).to(F64).mean(0)
        assert torch.all(emp >= level - 4 * math.sqrt(level * (1 - level) / MC))
