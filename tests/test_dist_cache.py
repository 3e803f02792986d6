"""The sample cache and the density-at-own-sample shortcuts change speed and precision, never the law.

Several distributions remember what ``rsample``/``sample`` computed about their latest sample (the
exact logit or log of the value, the noise, a latent Gaussian) and ``log_prob`` reuses it when it is
handed that very tensor. Whatever is reused, ``log_prob(v)`` must be the same function of the
parameters as the general formula at ``v``:

* (a) ``v = d.sample()`` has no autograd history, so ``d.log_prob(v)`` is the density at a fixed
  point and its gradient is the score (what REINFORCE-type estimators use);
* (b) ``v = d.rsample()`` carries its history, so the gradient also runs through the sample path,
  exactly as autograd gives it on the general formula at the same attached tensor.

Each case is compared with the general formula at the same point (``log_prob`` of a clone of ``v``,
which is another tensor object, or of ``v`` under a fresh distribution), in value and in the
gradient of the sum with respect to every parameter. Everything is float64 with moderate parameters,
where the general formula is accurate, so any difference is a wrong shortcut, not rounding.
"""

from __future__ import annotations

import pytest
import torch

from relaxrun.distributions import (CorrelatedRelaxedBernoulli, GumbelSoftmax, HardConcrete, InvertibleGaussian,
                                    LogisticNormalSoftmax, RelaxedBernoulli, StochasticGate, StochasticTimesSmooth,
                                    correlation_cholesky_from_params, equicorrelation)

F64 = torch.float64
BATCH = (5, 3)
SAMPLES = (4,)


def _randn(*shape, seed, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (shift + scale * torch.randn(*shape, generator=g, dtype=F64)).requires_grad_()


def _pos(value, *shape):
    return torch.full(shape, value, dtype=F64).requires_grad_()


# name -> (make_params() -> dict of leaf tensors, build(**params) -> distribution)
CASES = {
    "RelaxedBernoulli": (
        lambda: dict(logits=_randn(*BATCH, seed=1), temperature=_pos(0.7)),
        lambda logits, temperature: RelaxedBernoulli(temperature, logits=logits),
    ),
    "RelaxedBernoulli(probs)": (
        lambda: dict(probs=torch.rand(*BATCH, generator=torch.Generator().manual_seed(2), dtype=F64)
                     .mul(0.8).add(0.1).requires_grad_(), temperature=_pos(0.9, BATCH[1])),
        lambda probs, temperature: RelaxedBernoulli(temperature, probs=probs),
    ),
    "GumbelSoftmax": (
        lambda: dict(logits=_randn(*BATCH, 4, seed=3), temperature=_pos(0.6, *BATCH)),
        lambda logits, temperature: GumbelSoftmax(temperature, logits=logits),
    ),
    "CorrelatedRelaxedBernoulli(scale_tril)": (
        lambda: dict(logits=_randn(*BATCH, seed=4), temperature=_pos(0.7),
                     theta=_randn(3, seed=5, scale=0.8)),
        lambda logits, temperature, theta: CorrelatedRelaxedBernoulli(
            temperature, logits=logits, scale_tril=correlation_cholesky_from_params(theta, BATCH[1])),
    ),
    "CorrelatedRelaxedBernoulli(batched R)": (
        lambda: dict(logits=_randn(*BATCH, seed=6), temperature=_pos(0.5, *BATCH),
                     theta=_randn(BATCH[0], 3, seed=7, scale=0.8)),
        lambda logits, temperature, theta: CorrelatedRelaxedBernoulli(
            temperature, logits=logits, scale_tril=correlation_cholesky_from_params(theta, BATCH[1])),
    ),
    "CorrelatedRelaxedBernoulli(correlation)": (
        lambda: dict(probs=torch.rand(*BATCH, generator=torch.Generator().manual_seed(8), dtype=F64)
                     .mul(0.8).add(0.1).requires_grad_(), temperature=_pos(0.8)),
        lambda probs, temperature: CorrelatedRelaxedBernoulli(
            temperature, probs=probs, correlation=equicorrelation(0.6, BATCH[1], dtype=F64)),
    ),
    "InvertibleGaussian": (
        lambda: dict(loc=_randn(*BATCH, seed=9), scale=_pos(0.8, *BATCH), temperature=_pos(0.6, BATCH[0]),
                     delta=_pos(1.7, BATCH[0])),
        lambda loc, scale, temperature, delta: InvertibleGaussian(temperature, loc, scale, delta),
    ),
    "LogisticNormalSoftmax": (
        lambda: dict(loc=_randn(*BATCH, seed=10), scale=_pos(0.9, *BATCH)),
        lambda loc, scale: LogisticNormalSoftmax(loc, scale),
    ),
    "StochasticTimesSmooth": (
        lambda: dict(logits=_randn(*BATCH, seed=11)),
        lambda logits: StochasticTimesSmooth(logits=logits),
    ),
    "HardConcrete": (
        lambda: dict(log_alpha=_randn(*BATCH, seed=12, scale=2.0), beta=_pos(0.6)),
        lambda log_alpha, beta: HardConcrete(beta, logits=log_alpha),
    ),
    "StochasticGate": (
        lambda: dict(mu=_randn(*BATCH, seed=13, shift=0.5), sigma=_pos(0.5, BATCH[1])),
        lambda mu, sigma: StochasticGate(mu, sigma),
    ),
}


def _grads(out: torch.Tensor, params: dict) -> list[torch.Tensor]:
    leaves = tuple(params.values())
    if not out.requires_grad:  # no parameter reaches it at all (itself a wrong gradient if ref's is not)
        return [torch.zeros_like(p) for p in leaves]
    grads = torch.autograd.grad(out.sum(), leaves, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]


def _assert_same_law(lp: torch.Tensor, ref: torch.Tensor, params: dict) -> None:
    torch.testing.assert_close(lp, ref, rtol=1e-9, atol=1e-9)
    for name, a, b in zip(params, _grads(lp, params), _grads(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8, msg=lambda m, name=name: f"d/d{name}: {m}")


@pytest.mark.parametrize("name", list(CASES))
def test_log_prob_at_own_sample_is_the_density_at_a_fixed_point(name):
    make_params, build = CASES[name]
    params = make_params()
    d = build(**params)
    v = d.sample(SAMPLES, generator=torch.Generator().manual_seed(20))
    assert not v.requires_grad
    lp = d.log_prob(v)
    ref = d.log_prob(v.clone())  # another tensor object: no cache hit, the general formula
    assert any(g.abs().sum() > 0 for g in _grads(ref, params))  # a dead score would pass trivially
    _assert_same_law(lp, ref, params)


@pytest.mark.parametrize("name", list(CASES))
def test_log_prob_at_own_rsample_differentiates_through_the_sample_path(name):
    make_params, build = CASES[name]
    params = make_params()
    d = build(**params)
    v = d.rsample(SAMPLES, generator=torch.Generator().manual_seed(21))
    assert v.requires_grad
    lp = d.log_prob(v)
    ref = build(**params).log_prob(v)  # a fresh distribution: the general formula at the same attached v
    _assert_same_law(lp, ref, params)


@pytest.mark.parametrize("name", list(CASES))
def test_log_prob_is_the_general_formula_when_no_parameter_requires_grad(name):
    make_params, build = CASES[name]
    params = {k: v.detach() for k, v in make_params().items()}
    d = build(**params)
    v = d.rsample(SAMPLES, generator=torch.Generator().manual_seed(22))
    torch.testing.assert_close(d.log_prob(v), d.log_prob(v.clone()), rtol=1e-9, atol=1e-9)


# -- the log-space entry points of the method paths ------------------------------------------------
def test_gumbel_softmax_log_value_shortcut_at_sample_and_rsample():
    make_params, build = CASES["GumbelSoftmax"]
    params = make_params()
    d = build(**params)
    with torch.no_grad():
        log_z = d.rsample_log(SAMPLES, generator=torch.Generator().manual_seed(23))
    _assert_same_law(d.log_prob_log_value(log_z), d.log_prob_log_value(log_z.clone()), params)
    log_z = d.rsample_log(SAMPLES, generator=torch.Generator().manual_seed(24))
    _assert_same_law(d.log_prob_log_value(log_z), build(**params).log_prob_log_value(log_z), params)


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("CorrelatedRelaxedBernoulli")])
def test_correlated_latent_and_copula_at_own_sample(name):
    make_params, build = CASES[name]
    params = make_params()
    d = build(**params)
    v = d.sample(SAMPLES, generator=torch.Generator().manual_seed(25))
    _assert_same_law(d.copula_log_prob(v), d.copula_log_prob(v.clone()), params)
    _assert_same_law(d.to_gaussian(v).sum(-1), d.to_gaussian(v.clone()).sum(-1), params)
    z, y = d.rsample_with_logit(SAMPLES, generator=torch.Generator().manual_seed(26))
    fresh = build(**params)
    _assert_same_law(d.log_prob(z), fresh.log_prob(z), params)
    _assert_same_law(d.copula_log_prob(z), fresh.copula_log_prob(z), params)
