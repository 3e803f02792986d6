"""The categorical / simplex-family methods (issue 4): invertible_gaussian, gumbel_topk, laplace_bridge.

End-to-end runs go through the real loop in-process (Hydra compose -> relaxrun.train.train) on the
tiny generated IDX files of ``conftest.mnist_root``. The KL terms are checked against exact values
(enumeration over ordered tuples, closed forms) and the gumbel_topk score-function gradient against
the exact gradient of the KL.
"""

import itertools
import json
import math

import pytest
import torch
from hydra import compose, initialize_config_module

from relaxrun.config import method_options, ConfigError, register_configs, validate
from relaxrun.distributions.gumbel_topk import plackett_luce_log_prob
from relaxrun.distributions.laplace_bridge import LogisticNormalSoftmax, dirichlet_to_logistic_normal
from relaxrun.methods import build_method, get_method_class
from relaxrun.models import VAE

register_configs()

KINDS = {"invertible_gaussian": "relaxed", "gumbel_topk": "discrete", "laplace_bridge": "approximate-prior"}
METHODS = sorted(KINDS)


def composed(*overrides):
    with initialize_config_module(config_module="relaxrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def make(name, **options):
    small = {"invertible_gaussian": dict(latent_dim=4, categories=5),
             "gumbel_topk": dict(latent_dim=4, categories=6, subset_size=2),
             "laplace_bridge": dict(latent_dim=2, categories=8)}[name]
    cls = get_method_class(name)
    return build_method(method_options(name, **{"tau": 0.5, **small, **options}))


def toy_data(n=64, seed=0):
    """Two binary prototypes with 5% flipped pixels: a VAE can learn them in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(2, 784, generator=g) < 0.3).float()
    x = protos[torch.randint(0, 2, (n,), generator=g)]
    flip = torch.rand(n, 784, generator=g) < 0.05
    return torch.where(flip, 1 - x, x)


def zero_decoder(z):
    """One pixel with logit 0 whatever z is: recon = log 2, so log-weights expose the KL terms."""
    return torch.zeros(*z.shape[:-1], 1, dtype=z.dtype)


@pytest.mark.parametrize("name", METHODS)
def test_end_to_end_training_run(name, mnist_root, tmp_path):
    cfg = composed(f"method={name}", "tau=0.5", f"data.root={mnist_root}", "data.download=false",
                   "model.hidden=[64,32]", "method.latent_dim=4", "trainer.epochs=1", "trainer.progress=false",
                   "trainer.log_every=2", "trainer.images=4", "eval.iwae_samples=4")
    from relaxrun.train import train

    metrics = train(cfg, tmp_path / "run")
    assert metrics["test_neg_elbo_kind"] == KINDS[name]
    for key in ("test_neg_elbo", "test_relaxed_objective", "train_objective", "test_iwae"):
        assert math.isfinite(metrics[key]), key
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == name


@pytest.mark.parametrize("name", METHODS)
def test_a_few_steps_reduce_the_training_loss(name):
    torch.manual_seed(0)
    method = make(name)
    model = VAE(method.param_dim, method.latent_dim, [32])
    opt = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=5e-3)
    x = toy_data(32)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only spin, and slow a shared CPU down
    try:
        for _ in range(40):
            terms = method.loss(model.encoder(x), model.decode, x, 0.5)
            opt.zero_grad()
            terms.loss.backward()
            opt.step()
            assert torch.isfinite(terms.loss)
            losses.append(terms.loss.item())
    finally:
        torch.set_num_threads(threads)
    assert sum(losses[-8:]) < 0.8 * sum(losses[:8])


@pytest.mark.parametrize("name", METHODS)
def test_bound_and_iwae_are_finite_and_iwae_is_tighter(name):
    torch.manual_seed(1)
    method = make(name)
    model = VAE(method.param_dim, method.latent_dim, [32])
    x = toy_data(16)
    with torch.no_grad():
        params = model.encoder(x)
        elbo = torch.stack([method.bound(params, model.decode, x, 0.5).loss for _ in range(20)]).mean()
        log_w = method.iwae_log_weights(params, model.decode, x, 0.5, 32)
        assert log_w.shape == (32, 16) and torch.isfinite(log_w).all()
        iwae = -(torch.logsumexp(log_w, 0) - math.log(32)).mean()
        assert iwae < elbo  # -log p(x) <= IWAE-32 <= ELBO (in expectation)
        assert method.prior_sample(5, "cpu").shape == (5, method.latent_dim)
        assert method.reconstruct_input(params, 0.5).shape == (16, method.latent_dim)


# --- invertible_gaussian ---------------------------------------------------------------------------
def test_igr_kl_term_is_the_kl_to_the_configured_prior():
    # The analytic KL in loss/bound must equal E_q[log q(z) - log p(z)] with p = IGR(prior_loc,
    # prior_scale) -- estimated from the IWAE weights, whose densities come from a separate path.
    torch.manual_seed(2)
    method = make("invertible_gaussian", latent_dim=2, categories=3, prior_loc=0.5, prior_scale=2.0, delta=1.5)
    params = torch.randn(1, method.param_dim, dtype=torch.float64)
    x = torch.zeros(1, 1, dtype=torch.float64)
    kl = method.bound(params, zero_decoder, x, 0.5).kl
    log_w = method.iwae_log_weights(params, zero_decoder, x, 0.5, 50_000)
    mc = -(log_w[:, 0] + math.log(2))
    assert abs(kl.item() - mc.mean().item()) < 5 * mc.std().item() / math.sqrt(mc.numel())  # false alarm 5.7e-7
    prior_z = method.prior_sample(20_000, "cpu", torch.float64).reshape(20_000, 2, 3)
    # prior_loc = 0.5, prior_scale = 2 (std): tau * (log z_k - log z_K + log delta) ~ N(0.5, 4)
    y = 0.5 * (prior_z[..., :-1].log() - prior_z[..., -1:].log() + math.log(1.5))
    assert abs(y.mean().item() - 0.5) < 0.05 and abs(y.std().item() - 2.0) < 0.05


# --- gumbel_topk -----------------------------------------------------------------------------------
def _exact_topk_kl(logits, k):
    """KL(PlackettLuce(logits, k) || uniform over ordered k-tuples), summed over groups, by enumeration."""
    K = logits.shape[-1]
    tuples = torch.tensor(list(itertools.permutations(range(K), k)))
    lq = plackett_luce_log_prob(logits.unsqueeze(-2), tuples)  # [..., N, T]
    return (lq.exp() * (lq + math.log(len(tuples)))).sum((-1, -2))


def test_topk_kl_value_and_score_gradient_match_exact_enumeration():
    torch.manual_seed(3)
    method = make("gumbel_topk", latent_dim=2, categories=4, subset_size=2, kl_samples=4)
    logits = torch.randn(1, 8, dtype=torch.float64, requires_grad=True)
    exact = _exact_topk_kl(method.split(logits), 2)
    exact_grad, = torch.autograd.grad(exact.sum(), logits)
    # Replicate the input: the batch-mean gradient is then an average of independent estimates.
    # The decoder ignores z, so the whole gradient is the KL's score-function estimator.
    n = 20_000
    params = logits.expand(n, 8).clone().requires_grad_(True)
    terms = method.loss(params, zero_decoder, torch.zeros(n, 1, dtype=torch.float64), 0.5)
    assert abs(terms.kl.mean().item() - exact.item()) < 5 * terms.kl.std().item() / math.sqrt(n)
    per_example, = torch.autograd.grad(terms.loss * n, params)
    mean, se = per_example.mean(0), per_example.std(0) / math.sqrt(n)
    # 8 coordinates at 5 s.e.: false-alarm rate < 5e-6. Naive differentiation of log q(s) at fixed s
    # would give mean 0 here while the exact gradient has entries of size ~0.5.
    assert exact_grad.abs().max() > 0.2
    assert torch.all((mean - exact_grad[0]).abs() < 5 * se + 1e-6), (mean, exact_grad)
    # the bound's KL is the single-sample log q(s) - log p(s): unbiased for the same exact KL
    b = method.bound(logits.detach().expand(n, 8), zero_decoder, torch.zeros(n, 1, dtype=torch.float64), 0.5)
    assert abs(b.kl.mean().item() - exact.item()) < 5 * b.kl.std().item() / math.sqrt(n)


def test_topk_bound_feeds_the_decoder_hard_k_hot_vectors():
    method = make("gumbel_topk")
    seen = []

    def decode(z):
        seen.append(z)
        return torch.zeros(*z.shape[:-1], 784)

    params = torch.randn(5, method.param_dim)
    method.bound(params, decode, torch.zeros(5, 784), 0.5)
    z = seen[-1].reshape(5, 4, 6)
    assert set(z.unique().tolist()) <= {0.0, 1.0} and torch.equal(z.sum(-1), torch.full((5, 4), 2.0))
    method.loss(params, decode, torch.zeros(5, 784), 0.5)
    z = seen[-1].reshape(5, 4, 6)
    torch.testing.assert_close(z.sum(-1), torch.full((5, 4), 2.0))  # relaxed, still sums to k
    assert (make("gumbel_topk", subset_size=1).discrete_law(params[:, :24], 0.5).logits.shape == (5, 4, 6))
    with pytest.raises(NotImplementedError, match="Plackett-Luce"):
        method.discrete_law(params, 0.5)


# --- laplace_bridge --------------------------------------------------------------------------------
def test_laplace_bridge_prior_and_kl_forms():
    torch.manual_seed(4)
    method = make("laplace_bridge", prior_alpha=0.7)
    mu, _ = dirichlet_to_logistic_normal(torch.full((8,), 0.7, dtype=torch.float64))
    torch.testing.assert_close(method.prior_loc.double(), mu)
    # the bridge's full covariance: on the simplex the law of softmax(N(mu, I / alpha))
    torch.testing.assert_close(method.prior_scale.double() ** 2, torch.full((8,), 1 / 0.7, dtype=torch.float64),
                               rtol=1e-6, atol=0)
    params = torch.randn(3, method.param_dim, dtype=torch.float64)
    x = torch.zeros(3, 1, dtype=torch.float64)
    exact = method.bound(params, zero_decoder, x, 1.0).kl
    loose = make("laplace_bridge", kl="gaussian").loss(params, zero_decoder, x, 1.0).kl
    assert torch.all(exact <= loose + 1e-9)  # ProdLDA's K-dim KL is an upper bound
    # the exact KL agrees with Monte-Carlo E_q[log q - log p] from the IWAE weights
    log_w = method.iwae_log_weights(params, zero_decoder, x, 1.0, 40_000)
    mc = -(log_w + math.log(2))
    se = mc.std(0) / math.sqrt(mc.shape[0])
    assert torch.all((mc.mean(0) - exact).abs() < 5 * se)  # false alarm < 2e-6 for 3 inputs
    assert isinstance(method.posterior(params), LogisticNormalSoftmax)


@pytest.mark.parametrize("method,override,key", [
    ("gumbel_topk", "method.subset_size=11", "method.subset_size"),
    ("gumbel_topk", "method.kl_samples=0", "method.kl_samples"),
    ("gumbel_topk", "method.categories=1", "method.categories"),
    ("invertible_gaussian", "method.prior_scale=0", "method.prior_scale"),
    ("invertible_gaussian", "method.delta=-1", "method.delta"),
    ("laplace_bridge", "method.prior_alpha=0", "method.prior_alpha"),
    ("laplace_bridge", "method.kl=analytic", "method.kl"),
])
def test_method_config_ranges_are_checked(method, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(composed(f"method={method}", override))
