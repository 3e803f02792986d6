"""relaxrun's distributions inside Pyro, as they are (no subclassing): pyro.sample, expand, to_event,
plates, Trace_ELBO / TraceGraph_ELBO SVI, Predictive, and exact enumeration with TraceEnum_ELBO for the
laws with a finite support. Skipped without pyro-ppl (``pip install "relaxrun[pyro]"``; CI installs it).

Every SVI test runs 50 steps from a guide far from what the data want and checks that the ELBO,
estimated with 4 x 100 vectorised particles before and after (fixed seeds), improved by more than ten
times the estimate's standard error.
"""

from __future__ import annotations

import math

import pytest
import torch

pyro = pytest.importorskip("pyro")
import pyro.distributions as pdist  # noqa: E402
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, config_enumerate  # noqa: E402
from pyro.distributions.torch_distribution import TorchDistributionMixin  # noqa: E402

from library_cases import N, cases, summary  # noqa: E402
from relaxrun.distributions import (GeneralizedGumbelSoftmax, GumbelTopK, PlackettLuce, RelaxedBernoulli,  # noqa: E402
                                    StochasticTimesSmooth, StraightThroughBernoulli)

CASES = {c.name: c for c in cases()}
DATA = torch.linspace(-1.0, 3.0, N)


def _model_guide(case):
    def site(law):
        law = law.expand(torch.Size([N]) + case.extra_batch)
        return law.to_event(len(case.extra_batch)) if case.extra_batch else law

    def model(data):
        with pyro.plate("data", N):
            if case.shared_prior:  # the prior takes the guide's parameter: its support moves with it
                prior = case.guide(pyro.param("a", case.init.clone()))
            else:
                prior = case.prior()
            z = pyro.sample("z", site(prior))
            pyro.sample("x", pdist.Normal(summary(z, case), 0.5), obs=data)

    def guide(data):
        a = pyro.param("a", case.init.clone())
        with pyro.plate("data", N):
            pyro.sample("z", site(case.guide(a)))

    return model, guide


def _elbo_estimate(model, guide, seed=123, particles=100):
    pyro.set_rng_seed(seed)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        losses = torch.stack([torch.as_tensor(elbo.loss(model, guide, DATA)) for _ in range(4)])
    return losses.mean().item(), losses.std().item() / 2


@pytest.mark.parametrize("estimator", [Trace_ELBO, TraceGraph_ELBO])
@pytest.mark.parametrize("name", list(CASES))
def test_svi_improves_the_elbo(name, estimator):
    case = CASES[name]
    model, guide = _model_guide(case)
    pyro.clear_param_store()
    before, se_before = _elbo_estimate(model, guide)
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), estimator(max_plate_nesting=1))
    for _ in range(50):
        svi.step(DATA)
    after, se_after = _elbo_estimate(model, guide)
    assert after < before - 10 * math.hypot(se_before, se_after), (before, after)


@pytest.mark.parametrize("name", list(CASES))
def test_predictive_and_shapes(name):
    case = CASES[name]
    model, guide = _model_guide(case)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    out = Predictive(model, guide=guide, num_samples=7)(DATA)
    assert out["z"].shape == (7, N) + case.extra_batch + case.event_shape
    assert out["x"].shape == (7, N)
    law = case.guide(case.init)
    assert isinstance(law, TorchDistributionMixin)  # a Pyro distribution as it is
    assert law().shape == law.shape() == law.batch_shape + law.event_shape  # callable, like pyro's own
    masked = law.mask(torch.zeros(law.batch_shape, dtype=torch.bool))
    assert torch.all(masked.log_prob(law.sample()) == 0)


def test_gumbel_topk_samples_in_pyro_and_says_why_it_cannot_be_scored():
    d = GumbelTopK(0.5, 2, logits=torch.zeros(N, 4))

    def model():
        with pyro.plate("data", N):
            return pyro.sample("z", d)

    pyro.set_rng_seed(2)
    out = Predictive(model, num_samples=3)()
    torch.testing.assert_close(out["z"].sum(-1), torch.full((3, N), 2.0))  # relaxed 2-hot vectors
    with pytest.raises(NotImplementedError, match="log_prob_hard"):
        pyro.poutine.trace(model).get_trace().log_prob_sum()


def _enum_loss(model):
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    return elbo.loss(config_enumerate(model, "parallel"), lambda x: None, x)


x = torch.tensor([0.3, -1.2, 2.5, 0.9])


@pytest.mark.parametrize("law, values", [
    (lambda: StraightThroughBernoulli(probs=torch.tensor(0.3)), lambda d: torch.tensor([0.0, 1.0])),
    (lambda: GeneralizedGumbelSoftmax(0.5, torch.tensor([-1.0, 0.5, 2.0]), probs=torch.tensor([0.2, 0.5, 0.3])),
     lambda d: d.support_values),
    (lambda: StochasticTimesSmooth(probs=torch.tensor(0.49)), lambda d: torch.tensor([0.0, 0.7])),
])
def test_trace_enum_elbo_marginalises_finite_supports_exactly(law, values):
    # the model x_i ~ N(z, 1), z from the law: TraceEnum_ELBO with no guide is -log p(x) summed exactly
    def model(data):
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", law().expand([len(data)]))
            pyro.sample("x", pdist.Normal(z, 1.0), obs=data)

    d = law()
    v = values(d)
    log_w = d.expand(v.shape).log_prob(v)  # log P(z = v_k)
    exact = -torch.logsumexp(log_w + torch.distributions.Normal(v, 1.0).log_prob(x[:, None]), -1).sum()
    assert _enum_loss(model) == pytest.approx(exact.item(), rel=1e-5)


def test_trace_enum_elbo_plackett_luce_tuples():
    pl = PlackettLuce(2, logits=torch.tensor([0.5, -0.3, 1.0]))

    def model(data):
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", pl.expand([len(data)]))
            pyro.sample("x", pdist.Normal(z.to(data.dtype).sum(-1), 1.0), obs=data)

    tuples = pl.enumerate_support(expand=False).reshape(-1, 2)
    log_w = pl.log_prob(tuples)
    exact = -torch.logsumexp(log_w + torch.distributions.Normal(tuples.sum(-1).float(), 1.0).log_prob(x[:, None]),
                             -1).sum()
    assert _enum_loss(model) == pytest.approx(exact.item(), rel=1e-5)


def test_kl_inside_pyro_independent_is_the_registered_one():
    # pyro's to_event wraps in pyro's Independent; torch's (Independent, Independent) KL reaches ours
    p = RelaxedBernoulli(0.5, logits=torch.tensor([0.2, -1.0])).to_event(1)
    q = RelaxedBernoulli(0.5, logits=torch.tensor([1.0, 0.5])).to_event(1)
    kl = torch.distributions.kl_divergence(p, q)
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(p.base_dist, q.base_dist).sum())


@pytest.mark.parametrize("name", ["RelaxedBernoulli", "HardConcrete", "LaplaceBridge"])
def test_trace_mean_field_elbo_uses_the_registered_kl(name):
    # TraceMeanField_ELBO replaces the sampled log q - log p by kl_divergence(guide site, model site):
    # the same expectation as Trace_ELBO's (4 s.e. of the difference of the two estimates)
    from pyro.infer import TraceMeanField_ELBO

    case = CASES[name]
    model, guide = _model_guide(case)
    pyro.clear_param_store()

    def estimates(elbo, repeats):
        pyro.set_rng_seed(3)
        with torch.no_grad():
            v = torch.tensor([float(elbo.loss(model, guide, DATA)) for _ in range(repeats)])
        return v.mean().item(), v.std().item() / math.sqrt(repeats)

    mf, se_mf = estimates(TraceMeanField_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=1), 4)
    tr, se_tr = estimates(Trace_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=1), 8)
    assert abs(mf - tr) < 4 * math.hypot(se_mf, se_tr), (mf, tr, se_mf, se_tr)
    assert se_mf < se_tr  # the exact KL removes its share of the noise
