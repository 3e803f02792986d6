"""``method=arm`` and ``method=disarm``: unbiased against exact enumeration, the antithetic pair's law,
DisARM as the Rao-Blackwellisation of ARM, the surrogate loss and the options.

Every statistical assertion uses a fixed seed; the false-alarm rate of each is stated where it is made.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from relaxrun import gradcheck as gc
from relaxrun.checks import ConfigError
from relaxrun.config import method_options
from relaxrun.methods import available_methods, get_method_class
from relaxrun.methods.arm import ARMMethod, antithetic_pair
from relaxrun.methods.base import bernoulli_nll
from relaxrun.methods.disarm import DisARMMethod

DT = torch.float64
NAMES = ("arm", "disarm")
EXTRAS = ("f_mean", "f_gap", "pair_disagreement", "estimate_std")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; threads only contend with the rest of the suite
    yield
    torch.set_num_threads(n)


def method(name: str, **overrides):
    return get_method_class(name)(method_options(name, **overrides))


def sized(name: str, d: int, **overrides):
    return method(name, latent_dim=d, **overrides).to(DT)


def chi2_sf(stat: float, dof: int) -> float:
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=DT), torch.tensor(stat / 2, dtype=DT)))


# -- options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_with_the_yaml_defaults(name):
    assert name in available_methods()
    cfg = method_options(name)
    assert (cfg.name, cfg.latent_dim, cfg.prior_probs, cfg.tau) == (name, 200, 0.5, 1.0)
    m = method(name)
    assert (m.param_dim, m.latent_dim, m.metric_kind, m.latent_type) == (200, 200, "discrete", "Bernoulli")
    assert list(m.parameters()) == []
    assert isinstance(m, ARMMethod if name == "arm" else DisARMMethod)
    law = m.discrete_law(torch.zeros(2, 200), 1.0)
    assert law.kind == "bernoulli" and float(law.prior_logits) == 0.0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad, key", [({"latent_dim": 0}, "method.latent_dim"),
                                      ({"prior_probs": 1.0}, "method.prior_probs"),
                                      ({"prior_probs": 0.0}, "method.prior_probs"),
                                      ({"tau": 0.0}, "method.tau"),
                                      ({"latent": "categorical"}, "method.latent")])
def test_ranges_are_checked_and_name_the_option(name, bad, key):
    with pytest.raises(ConfigError, match=key):
        method_options(name, **bad)


# -- unbiased against exact enumeration ---------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("problem", ["toy", "toy_vector", "vae"])
def test_unbiased_against_exact_enumeration(name, problem):
    """gradcheck's toy (1 unit, E_q[f] alone), toy_vector (10 units, E_q[f] alone) and vae (10 units, the
    whole discrete negative ELBO with the analytic KL) problems: Hotelling's test does not flag the mean of
    100000 single-pair gradients (false-alarm rate 1e-3 per case) and the mean points where the exact
    gradient does. (DisARM on toy, a single unit at p = 1/2, is deterministic and exact.)"""
    prob = gc.make_problem(problem, "bernoulli")
    st = gc.check_row(sized(name, prob.shape[0]), prob, 1.0, samples=100000, seed=0, level=0.999, alpha=1e-3)
    assert not st["biased"], st
    assert st["cos"] > 0.95, st


def _scaled(cls, factor):
    class Scaled(cls):
        def estimate(self, *args):
            return factor * super().estimate(*args)

    return Scaled


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("factor", [1.2, -1.0])
@pytest.mark.parametrize("problem", ["toy_vector", "vae"])
def test_a_scaled_or_sign_flipped_estimate_is_flagged(name, factor, problem):
    """The same estimator times 1.2 (a 20 % bias of the E_q[f] part) or times -1 is flagged on 20000 draws
    (at this size the 1.2 bias is over 5 noise standard deviations on each problem, so a miss is unlikely
    and, with the fixed seed, would fail the same way every time)."""
    prob = gc.make_problem(problem, "bernoulli")
    cls = ARMMethod if name == "arm" else DisARMMethod
    m = _scaled(cls, factor)(method_options(name, latent_dim=prob.shape[0])).to(DT)
    st = gc.check_row(m, prob, 1.0, samples=20000, seed=0, level=0.999, alpha=1e-3, label=f"{name}x{factor}")
    assert st["biased"], st


# -- the antithetic pair ---------------------------------------------------------------------------
def test_the_pair_is_the_antithetic_coupling_of_two_bernoulli_draws():
    """Per logit, the four cells (b, b~) of 200000 draws against P(1, 1) = max(0, 2p - 1),
    P(0, 0) = max(0, 1 - 2p), P(1, 0) = P(0, 1) = min(p, 1 - p): cells of probability 0 are empty, and a
    chi-square test of the others is not rejected at 2e-4 per logit (1e-3 over the five logits). That the
    joint law is right implies each of b, b~ is marginally Bernoulli(p); checked also by a two-sided
    normal test of each marginal count (|z| < 4.4, false-alarm rate 1e-5 each)."""
    torch.manual_seed(0)
    n = 200000
    logits = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], dtype=DT)
    u, b, bt = antithetic_pair(logits.expand(n, -1))
    assert not (u.requires_grad or b.requires_grad or bt.requires_grad)
    assert ((u >= 0) & (u < 1)).all()
    for j, p in enumerate(torch.sigmoid(logits).tolist()):
        probs = {(1, 1): max(0.0, 2 * p - 1), (0, 0): max(0.0, 1 - 2 * p), (1, 0): min(p, 1 - p), (0, 1): min(p, 1 - p)}
        stat, dof = 0.0, -1
        for (x, y), pr in probs.items():
            count = int(((b[:, j] == x) & (bt[:, j] == y)).sum())
            if pr == 0.0:
                assert count == 0, (p, x, y, count)
                continue
            stat += (count - n * pr) ** 2 / (n * pr)
            dof += 1
        assert chi2_sf(stat, dof) > 2e-4, (p, stat, dof)
        for draws in (b[:, j], bt[:, j]):
            z = (float(draws.sum()) - n * p) / math.sqrt(n * p * (1 - p))
            assert abs(z) < 4.4, (p, z)


def test_the_pair_is_fresh_per_example_and_unit():
    """Two identical rows of a batch get their own uniforms: the pairs of 200 units at p = 1/2 agree
    everywhere with probability 2^-200."""
    torch.manual_seed(1)
    m = sized("disarm", 200)
    params = torch.zeros(2, 200, dtype=DT, requires_grad=True)
    x = torch.full((2, 784), 0.3, dtype=DT)
    decode = nn.Linear(200, 784).to(DT)
    with torch.random.fork_rng():
        t = m.loss(params, decode, x, 1.0)
    u, b, _ = antithetic_pair(params)  # the same stream as inside the loss
    assert not torch.equal(u[0], u[1]) and not torch.equal(b[0], b[1])
    assert float(t.recon[0].detach()) != float(t.recon[1].detach())


# -- the estimates, exactly -------------------------------------------------------------------------
def _one_step(name: str, seed: int = 3, batch: int = 3, d: int = 6):
    """(params, u, b, b~, f(b), f(b~), gradient of loss - mean(kl) w.r.t. params, terms) on a random decoder."""
    g = torch.Generator().manual_seed(seed)
    decode = gc.mlp_decoder(d, g, DT, hidden=8, pixels=20)
    x = torch.bernoulli(torch.full((batch, 20), 0.4, dtype=DT), generator=g)
    params = (1.5 * torch.randn(batch, d, dtype=DT, generator=g)).requires_grad_(True)
    m = sized(name, d)
    torch.manual_seed(seed)
    with torch.random.fork_rng():
        terms = m.loss(params, decode, x, 1.0)
    u, b, bt = antithetic_pair(params)
    (grad,) = torch.autograd.grad(terms.loss - terms.kl.mean(), params)
    with torch.no_grad():
        f, ft = bernoulli_nll(decode(b), x), bernoulli_nll(decode(bt), x)
    return params.detach(), u, b, bt, f, ft, grad * batch, terms


def test_the_loss_gradient_is_the_arm_formula():
    """The surrogate's gradient w.r.t. the logits (KL removed) is, row by row, (f(b~) - f(b)) (u - 1/2)."""
    params, u, b, bt, f, ft, grad, _ = _one_step("arm")
    torch.testing.assert_close(grad, (ft - f)[:, None] * (u - 0.5), rtol=1e-12, atol=1e-12)


def test_the_loss_gradient_is_the_disarm_formula_and_zero_where_the_pair_agrees():
    """DisARM's gradient is 1/2 (f(b) - f(b~)) (-1)^b~ 1[b != b~] sigmoid(|a|): exactly 0 on every unit
    where b = b~ (there are some: the logits are large), while ARM's is not."""
    params, u, b, bt, f, ft, grad, _ = _one_step("disarm")
    sign = torch.where(bt == 1, -1.0, 1.0).to(DT) * (b != bt).to(DT)
    torch.testing.assert_close(grad, 0.5 * (f - ft)[:, None] * sign * torch.sigmoid(params.abs()), rtol=1e-12,
                               atol=1e-12)
    agree = b == bt
    assert agree.any() and (~agree).any()
    assert (grad[agree] == 0).all()
    _, _, b_arm, bt_arm, _, _, grad_arm, _ = _one_step("arm")  # same seed: the same pair
    assert torch.equal(b_arm, b) and torch.equal(bt_arm, bt)
    assert (grad_arm[agree] != 0).any()


@pytest.mark.parametrize("name", NAMES)
def test_a_constant_f_gives_no_estimate(name):
    """f(b) = f(b~) for every pair (a decoder that ignores z): the estimate is exactly 0."""
    m = sized(name, 5)
    params = torch.randn(4, 5, dtype=DT, requires_grad=True)
    bias = torch.randn(784, dtype=DT)
    t = m.loss(params, lambda z: 0.0 * z.sum(-1, keepdim=True) + bias, torch.zeros(4, 784, dtype=DT), 1.0)
    (grad,) = torch.autograd.grad(t.loss - t.kl.mean(), params)
    assert (grad == 0).all() and float(t.extras["estimate_std"]) == 0.0


def test_disarm_is_arm_averaged_over_u_given_the_pair():
    """With the same uniforms (the same seed), ARM - DisARM has mean 0 (DisARM = E[ARM | b, b~]): Hotelling's
    test of 20000 paired differences on the vae problem against 0 is not rejected (false-alarm rate 1e-3).
    So the two have the same expectation; and their variances, with the same draws, are ordered."""
    prob = gc.make_problem("vae", "bernoulli")
    params = prob.make_params(prob.shape[0])
    draws = {}
    for name in NAMES:
        with torch.random.fork_rng():
            torch.manual_seed(11)
            draws[name] = gc.estimator_draws(sized(name, prob.shape[0]), prob, params, 1.0, 20000)
    st = gc.gradient_stats(draws["arm"] - draws["disarm"], torch.zeros(draws["arm"].shape[1], dtype=DT), 0.999, 1e-3)
    assert not st["biased"], st
    assert float(draws["disarm"].var(0).sum()) <= float(draws["arm"].var(0).sum())


def test_disarm_variance_is_not_larger_than_arms():
    """The variance column of gradcheck on the vae problem (100000 draws each, ~0.48 for DisARM, ~0.65
    for ARM; the estimates are within about 1 % of the true variances): DisARM's <= 1.05 x ARM's."""
    prob = gc.make_problem("vae", "bernoulli")
    var = {name: gc.check_row(sized(name, prob.shape[0]), prob, 1.0, 100000, 0)["variance"] for name in NAMES}
    assert var["disarm"] <= 1.05 * var["arm"], var


# -- loss value, extras, tau --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_loss_value_is_the_monte_carlo_negative_elbo_and_extras_are_finite(name):
    params, u, b, bt, f, ft, _, t = _one_step(name)
    torch.testing.assert_close(t.loss, (t.recon + t.kl).mean())
    torch.testing.assert_close(t.recon, 0.5 * (f + ft))
    torch.testing.assert_close(t.kl, sized(name, 6).exact_kl(params))
    assert t.recon.shape == t.kl.shape == (3,)
    assert set(t.extras) == set(EXTRAS), t.extras
    for k, v in t.extras.items():
        assert v.dim() == 0 and not v.requires_grad and math.isfinite(float(v)), (k, v)
    assert float(t.extras["pair_disagreement"]) == pytest.approx(float((b != bt).to(DT).mean()))
    torch.testing.assert_close(t.extras["f_mean"], 0.5 * (f + ft).mean())


@pytest.mark.parametrize("name", NAMES)
def test_decoder_gets_the_gradient_of_the_pair_mean_and_tau_is_unused(name):
    torch.manual_seed(0)
    m = sized(name, 8)
    decode = nn.Linear(8, 784).to(DT)
    x = torch.bernoulli(torch.full((5, 784), 0.2, dtype=DT))
    params = torch.randn(5, 8, dtype=DT, requires_grad=True)
    losses = []
    for tau in (0.3, 2.0):
        torch.manual_seed(5)
        losses.append(m.loss(params, decode, x, tau).loss)
    assert torch.equal(losses[0], losses[1])
    torch.manual_seed(5)
    u, b, bt = antithetic_pair(params)
    (got,) = torch.autograd.grad(losses[0], decode.weight)
    pair = 0.5 * (bernoulli_nll(decode(b), x) + bernoulli_nll(decode(bt), x)).mean()
    (want,) = torch.autograd.grad(pair, decode.weight)
    torch.testing.assert_close(got, want)
