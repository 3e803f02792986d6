"""``method=vimco``: the k-sample bound, its exact enumeration, the leave-one-out signals, and the
estimator against the exact gradient of the k-sample bound.

Every statistical assertion uses a fixed seed; the false-alarm rate of each is stated where it is made.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from relaxrun import gradcheck as gc
from relaxrun.checks import ConfigError
from relaxrun.config import method_options
from relaxrun.gradcheck.enumeration import MAX_TUPLES, exact_objective, row_objective
from relaxrun.methods import available_methods, get_method_class
from relaxrun.methods.base import DiscreteLaw
from relaxrun.methods.vimco import VimcoMethod, leave_one_out_bounds

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def vimco(kind: str = "bernoulli", shape=(10,), **overrides) -> VimcoMethod:
    sizes = {"latent": kind, "latent_dim": shape[0], **({"categories": shape[1]} if kind == "categorical" else {})}
    return get_method_class("vimco")(method_options("vimco", **sizes, **overrides)).to(DT)


def test_registered_with_the_yaml_defaults_and_checked_options():
    assert "vimco" in available_methods()
    cfg = method_options("vimco")
    assert (cfg.latent, cfg.latent_dim, cfg.categories, cfg.prior_probs, cfg.samples) == ("bernoulli", 200, 10, 0.5, 2)
    m = get_method_class("vimco")(cfg)
    assert (m.param_dim, m.latent_dim, m.metric_kind, m.estimand(), m.objective_kind()) == (
        200, 200, "discrete", "iwae-2", "iwae-2")
    with pytest.raises(ConfigError, match=r"method.samples must be at least 2"):
        method_options("vimco", samples=1)
    for bad in ({"latent": "gaussian"}, {"prior_probs": 0.0}, {"categories": 1}):
        with pytest.raises(ConfigError):
            method_options("vimco", **bad)


def test_leave_one_out_bounds_by_definition():
    torch.manual_seed(0)
    lw = 50 * torch.randn(4, 3, dtype=DT)  # large log-weights: computed in log space
    got = leave_one_out_bounds(lw)
    for j in range(4):
        others = torch.cat([lw[:j], lw[j + 1:]])
        want = torch.logsumexp(torch.cat([others, others.mean(0, keepdim=True)]), 0) - math.log(4)
        torch.testing.assert_close(got[j], want)


def brute_force_iwae(law: DiscreteLaw, decode, x, k: int) -> torch.Tensor:
    """-E log mean_j w(b_j) by an explicit loop over k-tuples of Bernoulli configurations."""
    d = law.logits.shape[-1]
    configs = gc.enumerate_configs("bernoulli", (d,), DT)
    total = torch.zeros((), dtype=DT)
    for row in range(x.shape[0]):
        l, lp = law.logits[row], law.prior_logits
        for tup in itertools.product(range(configs.shape[0]), repeat=k):
            bs = configs[list(tup)]
            log_q = (bs * torch.nn.functional.logsigmoid(l) + (1 - bs) * torch.nn.functional.logsigmoid(-l)).sum(-1)
            log_p = (bs * torch.nn.functional.logsigmoid(lp) + (1 - bs) * torch.nn.functional.logsigmoid(-lp)).sum(-1)
            log_px = -gc.problems.F.binary_cross_entropy_with_logits(
                decode(bs), x[row].expand(k, -1), reduction="none").sum(-1)
            total = total + log_q.sum().exp() * (torch.logsumexp(log_px + log_p - log_q, 0) - math.log(k))
    return -total / x.shape[0]


def test_exact_k_sample_objective_against_an_explicit_sum_and_the_elbo():
    g = torch.Generator().manual_seed(3)
    decode = gc.mlp_decoder(3, g, DT, hidden=8, pixels=6)
    x = torch.bernoulli(torch.full((2, 6), 0.4, dtype=DT), generator=g)
    law = DiscreteLaw("bernoulli", torch.randn(2, 3, dtype=DT, generator=g), torch.tensor(0.3, dtype=DT))
    for k in (1, 2, 3):
        torch.testing.assert_close(exact_objective(law, decode, x, f"iwae-{k}"), brute_force_iwae(law, decode, x, k))
    elbo = exact_objective(law, decode, x, "elbo")
    torch.testing.assert_close(exact_objective(law, decode, x, "iwae-1"), elbo)
    # the k-sample negative bound decreases with k (Burda et al. 2016, theorem 1)
    vals = [float(exact_objective(law, decode, x, f"iwae-{k}")) for k in (1, 2, 3, 4)]
    assert all(a > b for a, b in zip(vals, vals[1:])), vals
    big = DiscreteLaw("bernoulli", torch.zeros(1, 12, dtype=DT), torch.tensor(0.0, dtype=DT))
    assert 4096 ** 2 > MAX_TUPLES
    with pytest.raises(NotImplementedError, match="configuration tuples"):
        exact_objective(big, gc.mlp_decoder(12, g, DT, pixels=6), x[:1], "iwae-2")


def test_loss_value_is_the_k_sample_bound_of_its_draws():
    torch.manual_seed(0)
    m = vimco(shape=(5,), samples=4)
    decode = nn.Linear(5, 784).to(DT)
    x = torch.bernoulli(torch.full((3, 784), 0.2, dtype=DT))
    params = torch.randn(3, 5, dtype=DT, requires_grad=True)
    with torch.random.fork_rng():
        t = m.loss(params, decode, x, 1.0)
    lw = m.family.iwae_log_weights(params, decode, x, 1.0, 4)  # same stream: the same 4 draws
    torch.testing.assert_close(t.loss, -(torch.logsumexp(lw, 0) - math.log(4)).mean())
    torch.testing.assert_close(t.loss, (t.recon + t.kl).mean())
    assert set(t.extras) == {"iwae_k", "elbo_1", "signal_std", "ess"}
    assert all(v.dim() == 0 and not v.requires_grad and math.isfinite(float(v)) for v in t.extras.values())
    assert 0.25 <= float(t.extras["ess"]) <= 1.0
    assert float(t.extras["elbo_1"]) >= float(t.extras["iwae_k"])  # Jensen, draw by draw
    t.loss.backward()
    assert torch.isfinite(params.grad).all() and decode.weight.grad is not None


@pytest.mark.parametrize("kind,problem", [("bernoulli", "toy"), ("bernoulli", "toy_vector"), ("bernoulli", "vae"),
                                          ("categorical", "vae")])
def test_unbiased_for_the_k_sample_bound(kind, problem):
    """Judged against the exact gradient of the 2-sample bound (enumerated over all pairs of
    configurations), 1e5 draws (2e4 on the toy) are not flagged by Hotelling's test at false-alarm
    rate 1e-3, and on the vector problems their mean points where the exact gradient does."""
    prob = gc.make_problem(problem, kind)
    m = vimco(kind, prob.shape)
    assert row_objective(m, prob) == "iwae-2"
    st = gc.check_row(m, prob, 1.0, samples=20000 if problem == "toy" else 100000, seed=0, level=0.999, alpha=1e-3)
    assert not st["biased"], st
    if problem != "toy":  # at params = 0 the toy's exact gradient is nearly 0: cos is noise there
        assert st["cos"] > 0.99, st


class DrawDependentSignal(VimcoMethod):
    """A wrong control variate: draw j's own log-weight as its baseline (depends on b_j)."""

    def loss(self, params, decode, x, tau):
        log_w, log_q = self._log_weights(params, decode, x)
        bound = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
        score = ((bound.detach() - log_w.detach()) * log_q).sum(0)
        neg = -(bound + score - score.detach())
        return self.family.bound(params, decode, x, tau)._replace(loss=neg.mean())


class JudgedOnTheElbo(VimcoMethod):
    def estimand(self):
        return "elbo"


def test_the_check_has_power_a_wrong_baseline_or_target_is_flagged():
    prob = gc.make_problem("vae", "bernoulli")
    for cls in (DrawDependentSignal, JudgedOnTheElbo):
        m = cls(method_options("vimco", latent_dim=10)).to(DT)
        st = gc.check_row(m, prob, 1.0, samples=20000, seed=0)
        assert st["biased"], (cls.__name__, st)


def test_leave_one_out_signal_lowers_the_variance():
    """Against the plain multi-sample score function (learning signal L for every draw, also unbiased),
    the leave-one-out signals cut the per-draw gradient variance on the vae problem (k = 3)."""

    class PlainSignal(VimcoMethod):
        def loss(self, params, decode, x, tau):
            log_w, log_q = self._log_weights(params, decode, x)
            bound = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
            score = (bound.detach() * log_q).sum(0)
            neg = -(bound + score - score.detach())
            return self.family.bound(params, decode, x, tau)._replace(loss=neg.mean())

    prob = gc.make_problem("vae", "categorical")  # 64 configurations: 64^3 tuples
    var = {}
    for cls in (VimcoMethod, PlainSignal):
        m = cls(method_options("vimco", latent="categorical", latent_dim=3, categories=4, samples=3)).to(DT)
        st = gc.check_row(m, prob, 1.0, samples=4000, seed=0)
        assert not st["biased"], st
        var[cls.__name__] = st["variance"]
    assert var["VimcoMethod"] < 0.5 * var["PlainSignal"], var
