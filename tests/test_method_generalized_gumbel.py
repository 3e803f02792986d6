"""``method=generalized_gumbel``: count latents through the generalized Gumbel-Softmax (Joo et al. 2020).

The model's truncation and prior against scipy, its reported bound and IWAE weights against the
exact values of the truncated-count model (enumerating all K^N counts of a small model), the relaxed
gradient against the exact gradient of that model, option checks, and a run of the real loop.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from scipy import stats

from relaxrun import gradcheck as gc
from relaxrun.config import ConfigError, method_options, register_configs
from relaxrun.methods import build_method
from relaxrun.methods.base import bernoulli_nll
from relaxrun.models import VAE

register_configs()
DT = torch.float64
N, K, PIXELS, B = 2, 4, 12, 3


def make(**options):
    return build_method(method_options("generalized_gumbel", **options)).to(DT)


def small_problem(seed=0):
    """A fixed decoder of N count inputs, a batch of B binary x and encoder outputs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, PIXELS, generator=g, dtype=DT) * 0.8
    b = torch.randn(PIXELS, generator=g, dtype=DT)

    def decode(z):
        return 2 * torch.tanh(z @ w + b)

    x = torch.bernoulli(torch.full((B, PIXELS), 0.5, dtype=DT), generator=g)
    params = torch.randn(B, N, generator=g, dtype=DT)
    return decode, x, params


def configs(k=K, n=N):
    """All k^n count vectors, ``[M, n]`` long."""
    return torch.tensor(list(itertools.product(range(k), repeat=n)), dtype=torch.long)


def log_q_of(logits, c):
    """sum_n log pi_n[c_n]: ``logits`` [B, N, K], ``c`` [M, N] -> [B, M]."""
    full = logits[:, None].expand(logits.shape[0], c.shape[0], *logits.shape[1:])
    return full.gather(-1, c[None, :, :, None].expand(logits.shape[0], -1, -1, 1)).squeeze(-1).sum(-1)


def exact_neg_elbo(m, params, decode, x):
    """[B] exact negative ELBO of the truncated-count model: sum_c q(c) f(c) + sum_c q(c) log q(c) / p(c)."""
    q = m.law(params, 1.0)
    c = configs(m.support_size)
    log_q = log_q_of(q.logits, c)
    log_p = m.prior_logits(DT)[c].sum(-1)  # [M]
    f = bernoulli_nll(decode(c.to(DT))[None], x[:, None])
    qc = log_q.exp()
    return (qc * f).sum(-1), (qc * (log_q - log_p)).sum(-1), f, log_p


def family_options(family):
    return {"family": family, "latent_dim": N, "support_size": K, **({"trials": 3} if family == "binomial" else {})}


def test_defaults_truncate_poisson_at_tolerance_with_the_prior_on_the_same_support():
    m = build_method(method_options("generalized_gumbel"))
    cfg = m.cfg
    assert (cfg.latent_dim, cfg.family, cfg.prior_rate, cfg.max_rate, cfg.truncation_tol, cfg.support_size,
            cfg.hard) == (20, "poisson", 1.0, 10.0, 1e-6, None, False)
    assert m.param_dim == m.latent_dim == 20 and m.metric_kind == "discrete"
    k = m.support_size
    assert stats.poisson(10.0).sf(k - 1) <= 1e-6 < stats.poisson(10.0).sf(k - 2)  # the smallest such K
    expected = stats.poisson(1.0).logpmf(np.arange(k)) - np.log(stats.poisson(1.0).cdf(k - 1))
    np.testing.assert_allclose(m.prior_logits(DT).numpy(), expected, rtol=1e-12, atol=1e-12)
    # every rate the encoder can give (< max_rate) drops at most the tolerance
    q = m.law(torch.tensor([[-5.0, 0.0, 30.0]], dtype=DT), 1.0)
    assert bool((q.dropped_mass <= 1e-6).all())
    g = make(family="geometric")
    assert (10 / 11) ** g.support_size <= 1e-6 < (10 / 11) ** (g.support_size - 1)
    assert make(family="binomial", trials=7, prior_rate=2.0).support_size == 8


@pytest.mark.parametrize("family", ["poisson", "geometric", "binomial"])
def test_rates_are_the_capped_sigmoid_of_the_encoder_output(family):
    m = make(family=family, latent_dim=3)
    a = torch.tensor([[-2.0, 0.3, 1.5]], dtype=DT)
    cap = m.cfg.trials if family == "binomial" else m.cfg.max_rate
    rate = (cap * torch.sigmoid(a)).numpy()[0]
    q = m.law(a, 0.5)
    k = m.support_size
    for n in range(3):
        law = {"poisson": stats.poisson(rate[n]), "geometric": stats.geom(1 / (1 + rate[n]), loc=-1),
               "binomial": stats.binom(m.cfg.trials, rate[n] / m.cfg.trials)}[family]
        expected = law.logpmf(np.arange(k)) - np.log(law.cdf(k - 1))
        np.testing.assert_allclose(q.logits[0, n].numpy(), expected, rtol=1e-9, atol=1e-9)
        assert law.mean() == pytest.approx(rate[n], rel=1e-12)  # "rate" is the untruncated mean
    # the prior is the law at rate prior_rate
    p0 = m.law(torch.tensor(m.prior_param, dtype=DT), 1.0)
    assert torch.allclose(p0.logits, m.prior_logits(DT), atol=1e-12)


@pytest.mark.parametrize("family", ["poisson", "geometric", "binomial"])
def test_reported_bound_is_the_exact_discrete_elbo_in_expectation(family):
    m = make(**family_options(family))
    decode, x, params = small_problem()
    e_f, kl, _, _ = exact_neg_elbo(m, params, decode, x)
    s = 20000
    torch.manual_seed(0)
    with torch.no_grad():
        t = m.bound(params.repeat(s, 1), decode, x.repeat(s, 1), 1.0)
    assert torch.allclose(t.kl.reshape(s, B)[0], kl, rtol=1e-10)  # the KL is exact, not estimated
    recon = t.recon.reshape(s, B)
    se = recon.std(0) / math.sqrt(s)
    assert bool(((recon.mean(0) - e_f).abs() < 4.5 * se).all()), (recon.mean(0), e_f, se)
    # the decoder saw exact counts in 0..K-1
    c = m.reconstruct_input(params, 1.0)
    assert bool(((c == c.round()) & (c >= 0) & (c < m.support_size)).all())


@pytest.mark.parametrize("family", ["poisson", "binomial"])
def test_iwae_weights_are_unbiased_for_the_marginal_likelihood(family):
    m = make(**family_options(family))
    decode, x, params = small_problem(1)
    _, _, f, log_p = exact_neg_elbo(m, params, decode, x)
    log_px = torch.logsumexp(log_p - f, -1)  # [B] exact log p(x) of the truncated-count model
    s = 20000
    torch.manual_seed(1)
    with torch.no_grad():
        log_w = m.iwae_log_weights(params, decode, x, 1.0, s)  # [s, B]
    assert log_w.shape == (s, B)
    w = (log_w - log_px).exp()  # E_q[w / p(x)] = 1
    se = w.std(0) / math.sqrt(s)
    assert bool(((w.mean(0) - 1).abs() < 4.5 * se).all()), (w.mean(0), se)
    # each weight is log p(x | c) + log p(c) - log q(c) at its own c: check one draw by hand
    torch.manual_seed(2)
    q = m.law(params, 1.0)
    idx = q.sample_index((1,))
    torch.manual_seed(2)
    one = m.iwae_log_weights(params, decode, x, 1.0, 1)[0]
    c = idx[0]
    by_hand = (-bernoulli_nll(decode(c.to(DT)), x) + m.prior_logits(DT)[c].sum(-1)
               - q.logits.gather(-1, c[..., None]).squeeze(-1).sum(-1))
    assert torch.allclose(one, by_hand, rtol=1e-12)


@pytest.mark.parametrize("family", ["poisson", "geometric", "binomial"])
def test_relaxed_gradient_approaches_the_exact_gradient_of_the_count_model(family):
    """The GenGS estimator (relaxed counts through the decoder, exact KL) against the exact gradient of
    the enumerated negative ELBO: close at tau = 0.1 (relative error, Monte Carlo noise included), and
    closer than at tau = 1 (the relaxation's bias grows with tau)."""
    decode, x, params = small_problem(2)
    errs = []
    for tau in (0.1, 1.0):
        m = make(**family_options(family), tau=tau)
        p = params.clone().requires_grad_()
        e_f, kl, _, _ = exact_neg_elbo(m, p, decode, x)
        (exact,) = torch.autograd.grad((e_f + kl).mean(), p)
        s = 4000
        rep = params.repeat(s, 1).requires_grad_()
        torch.manual_seed(3)
        (g,) = torch.autograd.grad(m.loss(rep, decode, x.repeat(s, 1), tau).loss, rep)
        mean = (g.reshape(s, B, N) * s).mean(0)  # each replica's own draw, averaged
        errs.append(float((mean - exact).norm() / exact.norm()))
    assert errs[0] < 0.15 and errs[0] < errs[1], errs


@pytest.mark.parametrize("options", [{}, {"family": "geometric"}, {"family": "binomial", "trials": 5},
                                     {"hard": True}, {"support_size": 3}])
def test_loss_prior_samples_and_extras(options):
    torch.manual_seed(0)
    m = build_method(method_options("generalized_gumbel", latent_dim=5, **options))
    model = VAE(m.param_dim, m.latent_dim, [16])
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    t = m.loss(model.encoder(x), model.decode, x, m.tau)
    assert torch.isfinite(t.loss) and t.recon.shape == t.kl.shape == (6,)
    assert set(t.extras) == {"mean_count"} and 0 <= float(t.extras["mean_count"]) <= m.support_size - 1
    t.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    z = m.prior_sample(7, "cpu")
    assert z.shape == (7, 5) and bool(((z == z.round()) & (z >= 0) & (z < m.support_size)).all())
    if options.get("hard"):  # straight-through: exact counts reach the decoder in training too
        z = m.law(model.encoder(x), m.tau).rsample()
        assert bool((z == z.round()).all())


def test_prior_samples_follow_the_prior():
    m = build_method(method_options("generalized_gumbel", latent_dim=4))
    torch.manual_seed(4)
    z = m.prior_sample(10000, "cpu").long().flatten()
    probs = m.prior_logits(DT).exp().numpy()
    counts = np.bincount(z.numpy(), minlength=m.support_size)
    cut = int(np.nonzero(40000 * probs >= 5)[0].max())
    obs, exp = np.append(counts[:cut], counts[cut:].sum()), 40000 * np.append(probs[:cut], probs[cut:].sum())
    assert stats.chisquare(obs, exp).pvalue > 1e-3


@pytest.mark.parametrize("override,key", [
    ({"family": "negbin"}, "method.family"),
    ({"prior_rate": 0.0}, "method.prior_rate"),
    ({"prior_rate": 12.0}, "method.prior_rate"),
    ({"max_rate": -1.0}, "method.max_rate"),
    ({"truncation_tol": 0.0}, "method.truncation_tol"),
    ({"truncation_tol": 1.0}, "method.truncation_tol"),
    ({"support_size": 1}, "method.support_size"),
    ({"family": "binomial", "trials": 4, "prior_rate": 4.0}, "method.prior_rate"),
    ({"family": "binomial", "trials": 4, "support_size": 6}, "method.support_size"),
    ({"trials": 0}, "method.trials"),
    ({"latent_dim": 0}, "method.latent_dim"),
])
def test_options_are_checked(override, key):
    with pytest.raises(ConfigError, match=key):
        method_options("generalized_gumbel", **override)


def test_gradcheck_judges_it_on_the_count_problem():
    """Its discrete law is the truncated-count model (posterior, prior, values 0..K-1), so gradcheck runs
    it on the count version of a problem, sized latent_dim = N, support_size = K."""
    m = make(**family_options("poisson"))
    decode, x, params = small_problem()
    law = m.discrete_law(params, 0.5)
    assert law.kind == "count" and law.logits.shape == (B, N, K)
    assert torch.equal(law.logits, m.law(params, 0.5).logits) and torch.equal(law.prior_logits, m.prior_logits(DT))
    assert torch.equal(law.values, torch.arange(K, dtype=DT))
    rows = gc.run([gc.Spec.parse("generalized_gumbel")], ["vae"], [0.5], 8, 0, 0.95, 1e-3, log=lambda *a: None)
    assert [(r["status"], r["kind"]) for r in rows] == [("ok", "count")]


def test_a_run_of_the_real_loop(mnist_root, tmp_path):
    from relaxrun.train import train

    with initialize_config_module(config_module="relaxrun.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "method=generalized_gumbel", "method.family=geometric", "method.hard=true", "method.latent_dim=6",
            f"data.root={mnist_root}", "data.download=false", "model.hidden=[16]", "trainer.max_steps=6",
            "trainer.batch_size=50", "trainer.progress=false", "trainer.log_every=3", "trainer.images=2",
            "eval.iwae_samples=3"])
    metrics = train(cfg, tmp_path / "run")
    assert metrics["steps"] == 6 and metrics["test_neg_elbo_kind"] == "discrete"
    for key in ("test_neg_elbo", "test_relaxed_objective", "train_objective", "test_iwae"):
        assert math.isfinite(metrics[key]), key
    assert metrics["test_iwae"] <= metrics["test_neg_elbo"] + 1.0
