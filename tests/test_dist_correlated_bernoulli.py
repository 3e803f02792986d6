"""CorrelatedRelaxedBernoulli (Gaussian copula; Lee, Imrie, van der Schaar 2022) and its R helpers.

References are computed here with scipy from the construction (Phi, logistic, multivariate
normal), not with the class under test. Statistical tests use a fixed seed and level 1e-3
(false-alarm probability 0.001 per assertion under a fresh seed); correlation checks use
4 standard errors (two-sided false-alarm rate about 6e-5 each).
"""

import math

import numpy as np
import pytest
import torch
from numpy.polynomial.hermite_e import hermegauss
from scipy import integrate, special, stats

from relaxrun.distributions.binary_concrete import RelaxedBernoulli
from relaxrun.distributions.correlated_bernoulli import (
    CorrelatedRelaxedBernoulli,
    correlation_cholesky_from_params,
    equicorrelation,
    identity_correlation,
    num_correlation_params,
)

ALPHA = 1e-3
F64 = torch.float64


def example_R():
    """A generic 3 x 3 correlation (positive and negative entries) built by the helper."""
    L = correlation_cholesky_from_params(torch.tensor([0.9, -0.6, -0.8], dtype=F64), 3)
    return L @ L.T


def latent_from_z(z, logits, tau):
    """w = Phi^{-1}(u), logit(u) = tau logit(z) - logits: the copula's Gaussian, by scipy."""
    return stats.norm.ppf(special.expit(tau * special.logit(z) - logits))


# -- helpers building R -----------------------------------------------------------------------------
def test_parameterisation_always_gives_a_correlation_matrix_and_reaches_every_one():
    g = torch.Generator().manual_seed(0)
    for dim in (1, 2, 5):
        params = 3 * torch.randn(4, num_correlation_params(dim), generator=g, dtype=F64)
        L = correlation_cholesky_from_params(params, dim)
        R = L @ L.transpose(-1, -2)
        assert torch.allclose(R, R.transpose(-1, -2))
        assert torch.allclose(R.diagonal(dim1=-2, dim2=-1), torch.ones(4, dim, dtype=F64))
        assert (torch.linalg.eigvalsh(R) > 0).all()
        assert torch.equal(L, torch.tril(L))
    assert torch.allclose(correlation_cholesky_from_params(torch.zeros(10, dtype=F64), 5), torch.eye(5, dtype=F64))
    # every PD correlation matrix arises: params = strict lower triangle of L / diag(L)
    R = equicorrelation(-0.2, 4, dtype=F64) + 0.0
    L = torch.linalg.cholesky(R)
    A = L / L.diagonal().unsqueeze(-1)
    rows, cols = torch.tril_indices(4, 4, offset=-1)
    L2 = correlation_cholesky_from_params(A[rows, cols], 4)
    assert torch.allclose(L2 @ L2.T, R, atol=1e-12)


def test_equicorrelation_and_identity():
    R = equicorrelation(0.3, 3, dtype=F64)
    assert torch.allclose(R, torch.tensor([[1, .3, .3], [.3, 1, .3], [.3, .3, 1]], dtype=F64))
    assert torch.equal(identity_correlation(3, dtype=F64), torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match="rho"):
        equicorrelation(-0.5, 3)  # -1/(D-1) = -0.5 is singular
    with pytest.raises(ValueError, match="rho"):
        equicorrelation(1.0, 3)


# -- the law ----------------------------------------------------------------------------------------
def test_log_prob_is_the_change_of_variables_density():
    tau, logits = 0.7, np.array([-0.8, 0.2, 1.1])
    R = example_R()
    d = CorrelatedRelaxedBernoulli(tau, logits=torch.tensor(logits), correlation=R)
    z = d.sample((200,), generator=torch.Generator().manual_seed(1))
    lp_cached = d.log_prob(z).numpy()
    lp = d.log_prob(z.clone()).numpy()
    zn = z.numpy()
    w = latent_from_z(zn, logits, tau)
    u = special.expit(tau * special.logit(zn) - logits)
    # z_i = sigmoid((logit Phi(w_i) + logits_i)/tau):  dz/dw = z(1-z)/tau * phi(w) / (u(1-u))
    log_jac = (np.log(zn) + np.log1p(-zn) - math.log(tau) + stats.norm.logpdf(w) - np.log(u) - np.log1p(-u)).sum(-1)
    ref = stats.multivariate_normal(mean=np.zeros(3), cov=R.numpy()).logpdf(w) - log_jac
    np.testing.assert_allclose(lp, ref, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(lp_cached, ref, rtol=1e-7, atol=1e-7)


def test_total_probability_is_one():
    tau, logits = 0.6, torch.tensor([0.3, -0.5], dtype=F64)
    d = CorrelatedRelaxedBernoulli(tau, logits=logits, correlation=equicorrelation(0.7, 2, dtype=F64))
    # integrate over y = logit(z) (no rounding of z near 0 and 1): dz = prod z(1-z) dy
    y = torch.linspace(-45, 45, 1201, dtype=F64)
    Y = torch.stack(torch.meshgrid(y, y, indexing="ij"), -1)
    logf = d.log_prob_logit(Y) + (torch.nn.functional.logsigmoid(Y) + torch.nn.functional.logsigmoid(-Y)).sum(-1)
    total = integrate.simpson(integrate.simpson(logf.exp().numpy(), x=y.numpy()), x=y.numpy())
    assert total == pytest.approx(1.0, abs=1e-3)
    # the integrand is the density itself (an independent-marginals density would integrate to 1 too)
    inner = Y[::50, ::50].reshape(-1, 2)
    inner = inner[inner.abs().max(-1).values < 20]
    torch.testing.assert_close(d.log_prob_logit(inner), d.log_prob(torch.sigmoid(inner)))
    assert d.copula_log_prob(torch.sigmoid(inner)).abs().max() > 0.1


def test_identity_correlation_reduces_to_independent_binary_concretes():
    logits = torch.tensor([-1.0, 0.0, 2.0], dtype=F64)
    d = CorrelatedRelaxedBernoulli(0.5, logits=logits)
    z = d.sample((50,))
    torch.testing.assert_close(d.copula_log_prob(z), torch.zeros(50, dtype=F64))
    torch.testing.assert_close(d.log_prob(z.clone()), RelaxedBernoulli(0.5, logits=logits).log_prob(z.clone()).sum(-1))


def test_marginals_are_binary_concrete_and_latent_correlation_is_R():
    n, tau, logits = 20000, 0.5, np.array([-1.0, 0.5, 2.0])
    R = example_R()
    d = CorrelatedRelaxedBernoulli(tau, logits=torch.tensor(logits), correlation=R)
    z = d.sample((n,), generator=torch.Generator().manual_seed(21)).numpy()
    for i in range(3):
        bc_cdf = lambda x, i=i: special.expit(tau * special.logit(x) - logits[i])  # noqa: E731
        assert stats.kstest(z[:, i], bc_cdf).pvalue > ALPHA
    w = latent_from_z(z, logits, tau)
    emp = np.corrcoef(w.T)
    Rn = R.numpy()
    se = (1 - Rn ** 2) / math.sqrt(n)  # standard error of a sample correlation
    iu = np.triu_indices(3, 1)
    assert np.all(np.abs(emp[iu] - Rn[iu]) < 4 * se[iu] + 1e-3), (emp, Rn)
    assert np.abs(Rn[iu]).min() > 0.2  # a test with R ~ I could not tell correlated from shared noise
    np.testing.assert_allclose(d.to_gaussian(torch.from_numpy(z)).numpy(), w, rtol=1e-6, atol=1e-6)


def test_noise_is_independent_across_sample_and_batch_elements():
    n = 20000
    R = equicorrelation(0.8, 2, dtype=F64)
    d = CorrelatedRelaxedBernoulli(1.0, logits=torch.zeros(2, 2, dtype=F64), correlation=R)
    assert d.batch_shape == (2,) and d.event_shape == (2,)
    torch.manual_seed(0)
    z = d.sample((n,))
    w = d.to_gaussian(z).numpy()  # (n, 2 batch, 2 event)
    assert abs(np.corrcoef(w[:, 0, 0], w[:, 0, 1])[0, 1] - 0.8) < 4 * 0.36 / math.sqrt(n)
    assert abs(np.corrcoef(w[:, 0, 0], w[:, 1, 0])[0, 1]) < 4 / math.sqrt(n)  # batch elements
    assert abs(np.corrcoef(w[:-1, 0, 0], w[1:, 0, 0])[0, 1]) < 4 / math.sqrt(n)  # sample elements
    e = d.expand((3, 2))
    we = e.to_gaussian(e.sample((n,))).numpy().reshape(n, 6, 2)[:, :, 0]
    assert np.abs(np.corrcoef(we.T)[np.triu_indices(6, 1)]).max() < 4 / math.sqrt(n)


def test_shapes_expand_and_batched_R():
    L = correlation_cholesky_from_params(torch.randn(5, 3), 3)  # a batch of 5 matrices
    d = CorrelatedRelaxedBernoulli(torch.tensor(0.5), logits=torch.zeros(4, 1, 3), scale_tril=L)
    assert d.batch_shape == (4, 5) and d.event_shape == (3,)
    z = d.rsample((2, 7))
    assert z.shape == (2, 7, 4, 5, 3) and d.log_prob(z).shape == (2, 7, 4, 5)
    e = d.expand((6, 4, 5))
    assert e.batch_shape == (6, 4, 5) and e.rsample().shape == (6, 4, 5, 3) and e.correlation.shape == (6, 4, 5, 3, 3)
    assert d.marginal().batch_shape == (4, 5, 3)
    # a batch of factors gives, element by element, the law of each factor alone
    zc = z.detach().clone()
    lp = d.log_prob(zc)
    for b in range(5):
        single = CorrelatedRelaxedBernoulli(torch.tensor(0.5), logits=torch.zeros(3), scale_tril=L[b])
        torch.testing.assert_close(lp[..., b], single.log_prob(zc[..., b, :]))


# -- gradients --------------------------------------------------------------------------------------
def ref_E_z1z2(theta, logits, tau, n_nodes=80):
    """E[z1 z2] by Gauss-Hermite quadrature over eps ~ N(0, I_2), rho = theta / sqrt(1 + theta^2)."""
    x, wts = hermegauss(n_nodes)
    wts = wts / math.sqrt(2 * math.pi)
    rho = theta / math.sqrt(1 + theta ** 2)
    e1, e2 = np.meshgrid(x, x, indexing="ij")
    W = np.outer(wts, wts)
    w1, w2 = e1, rho * e1 + math.sqrt(1 - rho ** 2) * e2
    g = lambda w, a: special.expit((special.log_ndtr(w) - special.log_ndtr(-w) + a) / tau)  # noqa: E731
    return float((W * g(w1, logits[0]) * g(w2, logits[1])).sum())


def test_pathwise_gradients_reach_R_params_and_logits_and_match_finite_differences():
    th0, logits0, tau = 0.7, [0.4, -0.3], 0.8
    theta = torch.tensor([th0], dtype=F64, requires_grad=True)
    logits = torch.tensor(logits0, dtype=F64, requires_grad=True)
    g = torch.Generator().manual_seed(17)
    grads = []
    for _ in range(20):
        d = CorrelatedRelaxedBernoulli(tau, logits=logits, scale_tril=correlation_cholesky_from_params(theta, 2))
        z = d.rsample((5000,), generator=g)
        gt, gl = torch.autograd.grad((z[:, 0] * z[:, 1]).mean(), (theta, logits))
        grads.append([gt.item(), gl[0].item()])
    grads = np.array(grads)
    est, se = grads.mean(0), grads.std(0, ddof=1) / math.sqrt(len(grads))
    h = 1e-4
    fd = np.array([
        (ref_E_z1z2(th0 + h, logits0, tau) - ref_E_z1z2(th0 - h, logits0, tau)) / (2 * h),
        (ref_E_z1z2(th0, [logits0[0] + h, logits0[1]], tau)
         - ref_E_z1z2(th0, [logits0[0] - h, logits0[1]], tau)) / (2 * h),
    ])
    assert abs(fd[0]) > 10 * se[0]  # R genuinely moves the expectation, so a dead gradient would fail
    assert np.all(np.abs(est - fd) < 4 * se + 1e-6), (est, se, fd)


def test_log_prob_gradients_reach_every_parameter():
    theta = torch.tensor([0.5, -0.2, 0.3], requires_grad=True)
    logits = torch.tensor([0.1, -0.4, 0.9], requires_grad=True)
    tau = torch.tensor(0.5, requires_grad=True)
    d = CorrelatedRelaxedBernoulli(tau, logits=logits, scale_tril=correlation_cholesky_from_params(theta, 3))
    z = d.rsample((64,))
    for value in (z, z.detach().clone()):  # through the sample and through the density alone
        grads = torch.autograd.grad(d.log_prob(value).mean(), (theta, logits, tau), allow_unused=True,
                                    retain_graph=True)
        assert all(gr is not None and torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads)


# -- numerics and validation ----------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0])
def test_log_prob_finite_on_own_float32_samples(tau):
    logits = torch.tensor([-20.0, -1.0, 1.0, 20.0])
    for kw in ({"correlation": equicorrelation(0.9, 4)},
               {"scale_tril": correlation_cholesky_from_params(torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0, 1.0]), 4)}):
        d = CorrelatedRelaxedBernoulli(tau, logits=logits, **kw)
        z = d.rsample((1000,))
        assert z.dtype == torch.float32
        assert torch.isfinite(d.log_prob(z)).all()
        assert torch.isfinite(d.log_prob(z.clone())).all()  # rounded to 0/1 and recomputed: still finite


def test_bad_arguments_raise_value_errors_naming_them():
    C = CorrelatedRelaxedBernoulli
    with pytest.raises(ValueError, match="probs"):
        C(0.5, probs=torch.tensor([0.2, 1.5]))
    with pytest.raises(ValueError, match="logits"):
        C(0.5, logits=torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="temperature"):
        C(0.0, logits=torch.zeros(2))
    with pytest.raises(ValueError, match="temperature"):
        C(torch.tensor([0.5, -1.0]), logits=torch.zeros(2))
    with pytest.raises(ValueError, match="correlation must be symmetric"):
        C(0.5, logits=torch.zeros(2), correlation=torch.tensor([[1.0, 0.5], [0.2, 1.0]]))
    with pytest.raises(ValueError, match="correlation must be positive definite"):
        C(0.5, logits=torch.zeros(2), correlation=torch.tensor([[1.0, 1.2], [1.2, 1.0]]))
    with pytest.raises(ValueError, match="correlation must have unit diagonal"):
        C(0.5, logits=torch.zeros(2), correlation=torch.tensor([[2.0, 0.5], [0.5, 1.0]]))
    with pytest.raises(ValueError, match="correlation must be a 2 x 2"):
        C(0.5, logits=torch.zeros(2), correlation=torch.eye(3))
    with pytest.raises(ValueError, match="scale_tril must be lower triangular"):
        C(0.5, logits=torch.zeros(2), scale_tril=torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="scale_tril must have rows of unit norm"):
        C(0.5, logits=torch.zeros(2), scale_tril=torch.tensor([[1.0, 0.0], [0.5, 1.0]]))
    with pytest.raises(ValueError, match="at most one"):
        C(0.5, logits=torch.zeros(2), correlation=torch.eye(2), scale_tril=torch.eye(2))
    with pytest.raises(ValueError, match="at least one dimension"):
        C(0.5, logits=torch.tensor(0.0))
    with pytest.raises(ValueError):
        C(0.5, logits=torch.zeros(2)).log_prob(torch.tensor([0.5, 1.5]))
