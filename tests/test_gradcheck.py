"""relaxrun-gradcheck: exact gradients by enumeration, the bias test's calibration, and the command.

Every statistical assertion uses a fixed seed; the false-alarm rate of each is stated where it is made.
"""

from __future__ import annotations

import csv
import itertools
import math
from importlib import metadata

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, kl_divergence

from relaxrun import gradcheck as gc
from relaxrun.config import method_options
from relaxrun.methods import available_methods, get_method_class
from relaxrun.methods.reinforce import ReinforceMethod
from relaxrun.methods.base import METHODS, DiscreteLaw, Method, MethodConfig, Terms, bernoulli_nll

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; threads only contend with the rest of the suite
    yield
    torch.set_num_threads(n)


def method(spec: str, kind: str, shape) -> Method:
    return gc.build(gc.Spec.parse(spec), kind, shape, DT)


# -- exact gradients ---------------------------------------------------------------------------------
def test_toy_exact_gradient_is_the_closed_form():
    """d/dtheta E_{b~Bern(sigmoid theta)}[(b - t)^2] = sigmoid'(theta) (1 - 2t), per unit; through the
    stochastic-times-smooth gate q = sqrt(sigmoid(theta)) it is q'(theta) (1 - 2t)."""
    prob = gc.make_problem("toy_vector", "bernoulli")
    theta = prob.make_params(prob.latent_dim)
    t = gc.TOY_TARGET
    s = torch.sigmoid(theta)
    g = gc.exact_gradient(method("relaxed_bernoulli", "bernoulli", prob.shape), prob, theta, 0.5)
    torch.testing.assert_close(g, s * (1 - s) * (1 - 2 * t), rtol=1e-10, atol=1e-15)
    g = gc.exact_gradient(method("stochastic_times_smooth", "bernoulli", prob.shape), prob, theta, 0.5)
    torch.testing.assert_close(g, s * (1 - s) / (2 * s.sqrt()) * (1 - 2 * t), rtol=1e-10, atol=1e-15)


def brute_force_elbo(law: DiscreteLaw, decode, x, objective: str) -> torch.Tensor:
    """The same objective written independently: a Python loop over configurations with
    torch.distributions log-probabilities and KL."""
    if law.kind == "bernoulli":
        q = Bernoulli(logits=law.logits)
        prior = Bernoulli(logits=torch.as_tensor(law.prior_logits, dtype=DT).expand_as(law.logits))
        configs = [torch.tensor(c, dtype=DT) for c in itertools.product((0.0, 1.0), repeat=law.logits.shape[-1])]
        z_of = lambda c: c  # noqa: E731
    else:
        q = Categorical(logits=law.logits)
        prior = Categorical(logits=torch.as_tensor(law.prior_logits, dtype=DT).expand_as(law.logits))
        n, k = law.logits.shape[-2:]
        configs = [torch.tensor(c) for c in itertools.product(range(k), repeat=n)]
        z_of = lambda c: F.one_hot(c, k).to(DT).flatten()  # noqa: E731
    total = torch.zeros(x.shape[0], dtype=DT)
    for c in configs:
        logq = q.log_prob(c.expand(q.batch_shape)).sum(-1)  # [B]
        total = total + logq.exp() * bernoulli_nll(decode(z_of(c)), x)
    if objective == "elbo":
        total = total + kl_divergence(q, prior).sum(-1)
    return total.mean()


@pytest.mark.parametrize("spec,kind", [("stochastic_times_smooth", "bernoulli"), ("hard_concrete", "bernoulli"),
                                       ("stochastic_gates", "bernoulli"), ("gumbel_softmax", "categorical")])
def test_exact_gradient_matches_autograd_on_brute_force_enumeration_and_finite_differences(spec, kind):
    prob = gc.make_problem("vae", kind)
    m = method(spec, kind, prob.shape)
    params = prob.make_params(m.param_dim)
    tau = 0.4
    g = gc.exact_gradient(m, prob, params, tau)

    p = params.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(brute_force_elbo(m.discrete_law(p, tau), prob.decode, prob.x, "elbo"), p)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)

    # central finite differences of the enumerated objective itself (float64)
    def objective(q):
        return gc.exact_objective(m.discrete_law(q, tau), prob.decode, prob.x, "elbo")

    assert torch.autograd.gradcheck(objective, (params.clone().requires_grad_(True),), eps=1e-6, atol=1e-7)
    fd = torch.zeros_like(params)
    h = 1e-5
    for idx in itertools.islice(itertools.product(*map(range, params.shape)), 0, None, 7):
        e = torch.zeros_like(params)
        e[idx] = h
        fd[idx] = (objective(params + e) - objective(params - e)) / (2 * h)
        assert abs(float(fd[idx] - g[idx])) < 1e-7 * (1 + abs(float(g[idx])))


def test_enumeration_covers_every_configuration_once():
    b = gc.enumerate_configs("bernoulli", (4,))
    assert b.shape == (16, 4) and len({tuple(r.tolist()) for r in b}) == 16
    c = gc.enumerate_configs("categorical", (3, 4))
    assert c.shape == (64, 12) and len({tuple(r.tolist()) for r in c}) == 64
    assert torch.equal(c.reshape(64, 3, 4).sum(-1), torch.ones(64, 3, dtype=DT))


# -- every hook describes what its method samples --------------------------------------------------
def _hook_cases():
    cases = []
    for name in available_methods():
        m = get_method_class(name)(method_options(name, latent_dim=3))
        try:
            m.discrete_law(torch.zeros(1, m.param_dim), 0.5)
        except NotImplementedError:
            continue
        cases.append((name, {}))
    cases.append(("hard_concrete", {"l": -0.3, "r": 1.1}))  # asymmetric stretch: P(z > 1/2) != sigmoid(log_alpha)
    cases.append(("stochastic_gates", {"sigma": 0.3}))
    cases.append(("generalized_gumbel", {"family": "binomial", "trials": 5}))  # a count law of another family
    return cases


@pytest.mark.parametrize("name,overrides", _hook_cases(), ids=lambda v: str(v) if v else "")
def test_discrete_law_is_the_law_of_the_hard_decoder_input(name, overrides):
    """round(z) (Bernoulli) / argmax (categorical) / the support point (count) of ``reconstruct_input``
    samples has the hook's law. Two-sided z-tests, Bonferroni over coordinates, overall false-alarm
    rate 1e-3. (Count laws get a small support, so that no point's probability is too small for a z-test.)"""
    torch.manual_seed(1)
    cls = get_method_class(name)
    fields = {f for f in cls.Config.__dataclass_fields__}
    cfg = {"latent_dim": 3, **overrides, **({"categories": 4} if "categories" in fields else {}),
           **({"support_size": 4} if "support_size" in fields else {})}
    m = cls(method_options(name, **cfg)).to(DT)
    tau = 0.5
    params = 1.2 * torch.randn(2, m.param_dim, dtype=DT)
    law = m.discrete_law(params, tau)
    n = 20000
    z = m.reconstruct_input(params.repeat(n, 1), tau).reshape(n, 2, -1)
    if law.kind == "bernoulli":
        freq = z.round().mean(0)
        p = torch.sigmoid(law.logits)
    elif law.kind == "count":
        k = law.logits.shape[-1]
        values = torch.arange(k, dtype=DT) if law.values is None else law.values
        hit = z.unsqueeze(-1) == values  # [n, 2, N, K]: which support point each sample is
        assert bool((hit.sum(-1) == 1).all())
        freq = hit.to(DT).mean(0)
        p = torch.softmax(law.logits, -1)
    else:
        k = law.logits.shape[-1]
        freq = F.one_hot(z.reshape(n, 2, -1, k).argmax(-1), k).to(DT).mean(0)
        p = torch.softmax(law.logits, -1)
    zscore = (freq - p).abs() / (p * (1 - p) / n).sqrt().clamp_min(1e-12)
    crit = float(torch.special.ndtri(torch.tensor(1 - 1e-3 / (2 * p.numel()), dtype=DT)))
    assert float(zscore.max()) < crit, (freq, p)


# -- the bias test and its calibration --------------------------------------------------------------
def test_gradient_stats_false_alarm_rate_and_power_on_synthetic_draws():
    """Unbiased Gaussian draws: p-values are uniform (count of p < 0.05 in 200 trials is Binomial(200,
    0.05); the bounds 2..22 fail with probability < 1e-3). Draws 1.1 g* + noise are flagged."""
    g = torch.Generator().manual_seed(0)
    exact = torch.randn(6, generator=g, dtype=DT)
    small = 0
    for _ in range(200):
        draws = exact + 0.7 * torch.randn(400, 6, generator=g, dtype=DT) @ torch.tril(torch.ones(6, 6, dtype=DT))
        st = gc.gradient_stats(draws, exact)
        small += st["p_value"] < 0.05
        assert st["bias_lo"] <= st["rel_err"] <= st["bias_hi"] + st["noise"] * 5
    assert 2 <= small <= 22
    draws = 1.1 * exact + 0.7 * torch.randn(4000, 6, generator=g, dtype=DT)
    st = gc.gradient_stats(draws, exact)
    assert st["biased"] and st["bias_lo"] < 0.1 < st["bias_hi"]
    # zero-variance draws: exact ones are unbiased, shifted ones biased however small the shift
    assert gc.gradient_stats(exact.expand(10, 6), exact)["p_value"] == 1.0
    assert gc.gradient_stats((exact + 1e-6).expand(10, 6), exact)["biased"]


@pytest.mark.parametrize("problem", ["toy_vector", "vae"])
def test_unbiased_reference_within_its_interval_and_scaled_one_flagged(problem):
    """REINFORCE with a leave-one-out baseline is unbiased for the discrete objective: its bias interval
    (99.9%) contains 0 and Hotelling's test does not flag it (alpha = 1e-3). The same estimator with
    its E_q[f] gradient scaled by 1.2 is flagged, and on the expectation objective its interval
    contains the true relative bias 0.2."""
    prob = gc.make_problem(problem, "bernoulli")
    ref = method(gc.REF_NAME, "bernoulli", prob.shape)
    st = gc.check_row(ref, prob, 1.0, samples=20000, seed=0, level=0.999, alpha=1e-3)
    assert not st["biased"] and st["bias_lo"] == 0.0 and st["rel_err"] <= st["bias_hi"], st
    assert st["cos"] > 0.99
    scaled = method(gc.REF_SCALED_NAME, "bernoulli", prob.shape)
    st = gc.check_row(scaled, prob, 1.0, samples=20000, seed=0, level=0.999, alpha=1e-3)
    assert st["biased"] and st["bias_lo"] > 0.05, st
    if prob.objective == "expectation":
        assert st["bias_lo"] < 0.2 < st["bias_hi"], st


def linear_problem() -> gc.Problem:
    """f(z) = a . z + c exactly (x = 0, decode = log expm1(a z + c) per unit): E_q f is linear in the
    Bernoulli means, so straight-through is exact here while relaxations (E[z] != p) are biased."""
    a = torch.linspace(-1.0, 2.0, 6, dtype=DT)

    def decode(z):
        return torch.log(torch.expm1(a * z + 3.0))

    params = torch.linspace(-1.5, 1.5, 6, dtype=DT)[None].repeat(2, 1) + torch.tensor([[0.0], [0.7]], dtype=DT)
    return gc.Problem("linear", "bernoulli", "expectation", (6,), decode, torch.zeros(2, 6, dtype=DT),
                      lambda d: params)


def test_real_methods_straight_through_unbiased_on_linear_f_relaxation_flagged():
    prob = linear_problem()
    st = gc.check_row(method("straight_through", "bernoulli", prob.shape), prob, 0.5, 20000, 0, 0.999, 1e-3)
    # for linear f the straight-through draw a * sigmoid'(l) does not depend on b: exact every time
    assert not st["biased"] and st["bias_hi"] < 1e-12 and st["variance"] < 1e-25, st
    st = gc.check_row(method("relaxed_bernoulli", "bernoulli", prob.shape), prob, 0.5, 20000, 0, 0.999, 1e-3)
    assert st["biased"] and st["bias_lo"] > 0.01, st


def test_estimator_draws_are_single_draw_gradients():
    """Repeating the batch in one call gives the same draws as separate calls with the same noise."""
    prob = gc.make_problem("vae", "bernoulli")
    m = method("relaxed_bernoulli", "bernoulli", prob.shape)
    params = prob.make_params(m.param_dim)
    torch.manual_seed(3)
    together = gc.estimator_draws(m, prob, params, 0.5, 5)
    torch.manual_seed(3)
    # the Binary Concrete draws one logistic per element in row order, so chunk=B splits the same stream
    apart = gc.estimator_draws(m, prob, params, 0.5, 5, chunk=params.shape[0])
    torch.testing.assert_close(together, apart, rtol=1e-10, atol=1e-12)


# -- the command --------------------------------------------------------------------------------------
class _NoHook(Method):
    """A method without ``discrete_law`` (like one still being written): must be reported as skipped."""

    Config = MethodConfig
    name = "zz_no_hook"

    @property
    def param_dim(self):
        return 3

    @property
    def latent_dim(self):
        return 3

    def loss(self, params, decode, x, tau):  # pragma: no cover - never reached
        raise AssertionError


def test_method_without_hook_is_skipped_with_its_reason(monkeypatch):
    monkeypatch.setitem(METHODS, "zz_no_hook", _NoHook)
    rows = gc.run([gc.Spec.parse("zz_no_hook")], ["toy"], [0.5], 10, 0, 0.95, 1e-3, log=lambda *a: None)
    assert [r["status"] for r in rows] == ["skipped"]
    assert "no enumerable discrete counterpart" in rows[0]["reason"]


def test_console_script_registered():
    eps = [e for e in metadata.entry_points(group="console_scripts") if e.name == "relaxrun-gradcheck"]
    assert eps and eps[0].value == "relaxrun.gradcheck:main"


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        gc.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--samples" in out and "--taus" in out and "--methods" in out and "--out" in out and "--seed" in out
    for bad in (["--taus", "0,1"], ["--samples", "1"], ["--methods", "no_such_method"],
                ["--methods", "relaxed_bernoulli:hard"], ["--methods", "relaxed_bernoulli:kl=bogus"],
                ["--methods", "straight_through:no_such_option=1"], ["--methods", "reinforce:trained=10"],
                ["--methods", "rebar:trained=-1"], ["--methods", "rebar:trained=x"]):
        with pytest.raises(SystemExit) as e:
            gc.main(bad)
        assert e.value.code == 2
        assert "error" in capsys.readouterr().err


def test_main_writes_csv_plot_table_and_doc(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- gradcheck:table:begin -->\nold\n<!-- gradcheck:table:end -->\nafter\n")
    rc = gc.main(["--out", str(tmp_path / "out"), "--samples", "3000", "--taus", "0.5,1", "--problems", "toy_vector",
                  "vae", "--methods", "straight_through", "gumbel_softmax:hard=true", "--doc", str(doc), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "straight_through" in out and "ref_reinforce_loo" in out
    rows = list(csv.DictReader(open(tmp_path / "out" / "gradcheck.csv")))
    got = {(r["problem"], r["method"], r["tau"]) for r in rows}
    # straight_through does not use tau: one row per problem; gumbel_softmax:hard=true one per tau
    assert ("vae", "straight_through", "") in got and ("vae", "gumbel_softmax:hard=true", "0.5") in got
    assert ("toy_vector", "gumbel_softmax:hard=true", "1") in got and len(rows) == 2 * (1 + 2 + 2)
    for r in rows:
        assert r["status"] == "ok" and math.isfinite(float(r["rel_err"])) and -1 <= float(r["cos"]) <= 1
    assert (tmp_path / "out" / "gradcheck.png").stat().st_size > 10_000
    text = doc.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert "| vae | `straight_through` |" in text


class _ExtraSurrogate(ReinforceMethod):
    """The reference plus a gradient-only term outside ``mean(kl)``, like a score-function KL surrogate."""

    def loss(self, params, decode, x, tau):
        t = super().loss(params, decode, x, tau)
        extra = 1e-3 * (params ** 2).sum(-1).mean()
        return Terms(t.loss + extra - extra.detach(), t.recon, t.kl)


def test_expectation_objective_refuses_losses_with_a_separate_kl_surrogate():
    prob = gc.make_problem("toy_vector", "bernoulli")
    cfg = method_options("reinforce", latent_dim=prob.shape[0])
    params = prob.make_params(prob.latent_dim)
    assert gc.expectation_is_isolated(ReinforceMethod(cfg).to(DT), prob, params, 1.0)
    assert not gc.expectation_is_isolated(_ExtraSurrogate(cfg).to(DT), prob, params, 1.0)


def test_correlated_bernoulli_has_no_independent_law_once_correlated():
    cls = get_method_class("correlated_bernoulli")
    m = cls(method_options("correlated_bernoulli", latent_dim=3, correlation="equicorrelated", rho=0.3))
    with pytest.raises(NotImplementedError, match="copula"):
        m.discrete_law(torch.zeros(1, 3), 0.5)


def test_trained_spec_tunes_the_control_variate_before_the_row():
    """``NAME:trained=N`` is a gradcheck option, not a method option: N steps of ``fit_control`` on the
    problem, then the row; the trained control parameters differ from the initial ones and the
    estimator stays unbiased (not flagged at false-alarm rate 1e-3)."""
    spec = gc.Spec.parse("rebar:trained=40")
    assert (spec.name, spec.overrides, spec.trained) == ("rebar", {}, 40)
    prob = gc.make_problem("vae", "bernoulli")
    m = gc.build(spec, "bernoulli", prob.shape, torch.float64)
    eta0 = float(m.eta.detach())
    m.fit_control(prob.make_params(m.param_dim), prob.decode, prob.x, spec.trained)
    assert float(m.eta.detach()) != eta0
    rows = gc.run([spec], ["vae"], [0.5], 4000, 0, 0.95, 1e-3, log=lambda *a: None)
    assert [r["status"] for r in rows] == ["ok"] and not rows[0]["biased"], rows
