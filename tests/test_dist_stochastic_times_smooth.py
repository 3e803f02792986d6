"""StochasticTimesSmooth (Bengio et al. 2013): h = b sqrt(p), b ~ Bernoulli(sqrt(p)).

Statistical tests use a fixed seed and level 1e-3 (false-alarm probability 0.001 per assertion
under a fresh seed).
"""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from relaxrun.distributions.stochastic_times_smooth import StochasticTimesSmooth

ALPHA = 1e-3


def test_law_has_two_atoms_with_total_probability_one():
    a = np.array([-20.0, -2.0, 0.0, 1.0, 20.0])
    d = StochasticTimesSmooth(logits=torch.tensor(a, dtype=torch.float64))
    g = np.sqrt(special.expit(a))
    lp0 = d.log_prob(torch.zeros(5, dtype=torch.float64)).numpy()
    lp1 = d.log_prob(torch.tensor(g)).numpy()
    np.testing.assert_allclose(lp1, -0.5 * np.log1p(np.exp(-a)), rtol=1e-10)  # log sqrt(sigmoid(a))
    # log(1 - sqrt p) computed independently: 1 - sqrt(sigmoid(a)) = 1 - 1/sqrt(1 + e^-a)
    np.testing.assert_allclose(lp0, np.log(-np.expm1(-0.5 * np.log1p(np.exp(-a)))), rtol=1e-8)
    np.testing.assert_allclose(np.exp(lp0) + np.exp(lp1), 1.0, atol=1e-12)
    # gate Bernoulli(sqrt p): its logits stay accurate where 1 - sqrt(p) ~ 1e-9
    np.testing.assert_allclose(d.gate_logits.numpy(), lp1 - lp0, rtol=1e-10)
    d32 = StochasticTimesSmooth(logits=torch.tensor(a, dtype=torch.float32))
    np.testing.assert_allclose(d32.gate_logits.numpy(), lp1 - lp0, rtol=1e-4)


def test_samples_match_the_law_and_mean_is_p():
    n = 20000
    p = torch.tensor([0.01, 0.25, 0.5, 0.9], dtype=torch.float64)
    d = StochasticTimesSmooth(probs=p)
    h, b = d.rsample_with_gate((n,), generator=torch.Generator().manual_seed(8))
    g = p.sqrt()
    assert torch.equal(h, b * g)  # values exactly 0 or sqrt(p)
    for k in range(4):
        ones = b[:, k].sum().item()
        exp1 = n * g[k].item()
        assert stats.chisquare([n - ones, ones], [n - exp1, exp1]).pvalue > ALPHA
        hk = h[:, k].numpy()
        assert abs(hk.mean() - p[k].item()) < 4 * hk.std() / math.sqrt(n)  # E[h] = p


def test_noise_is_independent_across_sample_and_batch_elements():
    n = 20000
    torch.manual_seed(0)
    h = StochasticTimesSmooth(probs=torch.full((3,), 0.4, dtype=torch.float64)).sample((n,)).numpy()
    assert np.abs(np.corrcoef(h.T)[np.triu_indices(3, 1)]).max() < 4 / math.sqrt(n)
    assert abs(np.corrcoef(h[:-1, 0], h[1:, 0])[0, 1]) < 4 / math.sqrt(n)
    e = StochasticTimesSmooth(logits=torch.tensor(0.0)).expand((2, 2)).sample((n,)).reshape(n, 4).numpy()
    assert np.abs(np.corrcoef(e.T)[np.triu_indices(4, 1)]).max() < 4 / math.sqrt(n)


def test_shapes_and_expand():
    d = StochasticTimesSmooth(logits=torch.zeros(4, 3))
    assert d.batch_shape == (4, 3) and d.event_shape == ()
    z = d.rsample((5, 2))
    assert z.shape == (5, 2, 4, 3) and d.log_prob(z).shape == (5, 2, 4, 3)
    e = d.expand((6, 4, 3))
    assert e.batch_shape == (6, 4, 3) and e.rsample((2,)).shape == (2, 6, 4, 3)
    assert e.gate.batch_shape == (6, 4, 3)


def test_gradient_flows_through_sqrt_p_only_and_is_half_the_true_derivative():
    a0 = np.array([-1.5, 0.0, 0.8])
    a = torch.tensor(a0, requires_grad=True)
    d = StochasticTimesSmooth(logits=a)
    n = 40000
    h, b = d.rsample_with_gate((n,), generator=torch.Generator().manual_seed(6))
    # per sample: dh/da = b * d sqrt(sigmoid(a))/da = b * sqrt(p) (1 - p) / 2
    p = special.expit(a0)
    per_sample = torch.autograd.functional.jacobian(lambda x: StochasticTimesSmooth(logits=x).gate_probs, a.detach())
    np.testing.assert_allclose(np.diag(per_sample.numpy()), 0.5 * np.sqrt(p) * (1 - p), rtol=1e-10)
    (g,) = torch.autograd.grad(h.sum(0), a, torch.ones(3, dtype=torch.float64))
    np.testing.assert_allclose(g.numpy(), b.sum(0).numpy() * 0.5 * np.sqrt(p) * (1 - p), rtol=1e-10)
    # in expectation: E[b] sqrt(p)'  = p'/2, half of d E[h]/da = p(1-p) (the estimator's known bias)
    per = (b.numpy() * 0.5 * np.sqrt(p) * (1 - p))
    est, se = per.mean(0), per.std(0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(est - 0.5 * p * (1 - p)) < 4 * se)
    assert np.all(np.abs(est - p * (1 - p)) > 10 * se)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_accepts_and_is_finite_on_own_samples(dtype):
    d = StochasticTimesSmooth(logits=torch.tensor([-20.0, -5.0, 0.0, 5.0, 20.0], dtype=dtype))
    h = d.rsample((2000,))
    assert torch.isfinite(d.log_prob(h)).all()  # cached gate
    lp = d.log_prob(h.clone())  # from the values alone: 0 or sqrt(p)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, d.log_prob(h))


def test_bad_arguments_and_values_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="probs"):
        StochasticTimesSmooth(probs=torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="logits"):
        StochasticTimesSmooth(logits=torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="value must be 0 or sqrt"):
        StochasticTimesSmooth(probs=0.25).log_prob(torch.tensor(0.25))  # sqrt(0.25) = 0.5, not 0.25
    lp = StochasticTimesSmooth(probs=0.25, validate_args=False).log_prob(torch.tensor([0.25, 0.5, 0.0]))
    assert torch.isneginf(lp[0]) and lp[1].item() == pytest.approx(math.log(0.5))
    assert lp[2].item() == pytest.approx(math.log(0.5))
