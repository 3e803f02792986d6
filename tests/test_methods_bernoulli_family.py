"""The five Bernoulli-family methods (issue 3): priors, KL terms, honest bounds, and training runs.

End-to-end runs go through the real loop in-process (Hydra compose -> relaxrun.train.train) on the
tiny generated IDX files of ``conftest.mnist_root``.
"""

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_module

from relaxrun.config import method_options, ConfigError, register_configs, validate
from relaxrun.distributions.hard_concrete import HardConcrete
from relaxrun.distributions.stochastic_gates import StochasticGate
from relaxrun.distributions.stochastic_times_smooth import StochasticTimesSmooth
from relaxrun.methods import build_method, get_method_class
from relaxrun.methods.base import bernoulli_kl
from relaxrun.models import VAE

register_configs()

KINDS = {
    "stochastic_gates": "mixed",
    "hard_concrete": "mixed",
    "straight_through": "discrete",
    "stochastic_times_smooth": "discrete",
    "correlated_bernoulli": "relaxed",
}
METHODS = sorted(KINDS)


def composed(*overrides):
    with initialize_config_module(config_module="relaxrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def make(name, **options):
    cls = get_method_class(name)
    return build_method(method_options(name, **{"tau": 0.5, "latent_dim": 6, **options}))


def toy_data(n=64, seed=0):
    """Two binary prototypes with 5% flipped pixels: a VAE can learn them in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(2, 784, generator=g) < 0.3).float()
    x = protos[torch.randint(0, 2, (n,), generator=g)]
    flip = torch.rand(n, 784, generator=g) < 0.05
    return torch.where(flip, 1 - x, x)


@pytest.mark.parametrize("name", METHODS)
def test_end_to_end_training_run(name, mnist_root, tmp_path):
    extra = {"stochastic_gates": ["method.learn_sigma=true", "method.l0_weight=0.01"],
             "hard_concrete": ["method.l0_weight=0.01"]}.get(name, [])
    cfg = composed(f"method={name}", "tau=0.5", f"data.root={mnist_root}", "data.download=false",
                   "model.hidden=[64,32]", "method.latent_dim=16", "trainer.epochs=1", "trainer.progress=false",
                   "trainer.log_every=2", "trainer.images=4", "eval.iwae_samples=4", *extra)
    from relaxrun.train import train

    metrics = train(cfg, tmp_path / "run")
    assert metrics["test_neg_elbo_kind"] == KINDS[name]
    for key in ("test_neg_elbo", "test_relaxed_objective", "train_objective", "test_iwae"):
        assert math.isfinite(metrics[key]), key
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == name
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    if name == "stochastic_gates":  # the learnable noise scale moved away from log(0.5)
        assert (state["method.log_sigma"] - math.log(0.5)).abs().max() > 0
    if name == "correlated_bernoulli":  # R was learned, starting from the identity
        assert state["method.corr_params"].abs().max() > 0


@pytest.mark.parametrize("name", METHODS)
def test_a_few_steps_reduce_the_training_loss(name):
    torch.manual_seed(0)
    method = make(name, latent_dim=8)
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
        # -log p(x) <= IWAE-32 <= ELBO (in expectation; the gap of an untrained model is large)
        assert iwae < elbo
        assert method.prior_sample(5, "cpu").shape == (5, method.latent_dim)
        assert method.reconstruct_input(params, 0.5).shape == (16, method.latent_dim)


def test_stochastic_times_smooth_evaluates_on_the_hard_gate_with_its_analytic_kl():
    method = make("stochastic_times_smooth")
    params = torch.randn(4, 6)
    seen = []

    def decode(z):
        seen.append(z)
        return torch.zeros(*z.shape[:-1], 784)

    x = torch.zeros(4, 784)
    b = method.bound(params, decode, x, 1.0)
    assert set(seen[-1].unique().tolist()) <= {0.0, 1.0}  # the decoder never sees sqrt(p)
    gate = StochasticTimesSmooth(logits=params).gate_logits
    torch.testing.assert_close(b.kl, bernoulli_kl(gate, 0.0).sum(-1))
    t = method.loss(params, decode, x, 1.0)
    g = torch.sqrt(torch.sigmoid(params))
    assert torch.all((seen[-1] == 0) | torch.isclose(seen[-1], g))  # training sees b * sqrt(p)
    torch.testing.assert_close(t.kl, b.kl)


@pytest.mark.parametrize("name,family", [("stochastic_gates", StochasticGate), ("hard_concrete", HardConcrete)])
def test_mixed_kl_estimate_averages_to_the_kl_against_the_same_family_prior(name, family):
    torch.manual_seed(2)
    method = make(name, latent_dim=1)
    params = torch.tensor([[0.8]], dtype=torch.float64)
    zero_decoder = lambda z: torch.zeros(*z.shape[:-1], 784, dtype=z.dtype)  # noqa: E731
    kls = method.iwae_log_weights(params, zero_decoder, torch.zeros(1, 784, dtype=torch.float64), 0.5, 20000)
    kls = -(kls + 784 * math.log(2))  # log_w = -recon - kl with recon = 784 log 2 for zero logits
    q = method.posterior(params) if name == "stochastic_gates" else method.posterior(params, 0.5)
    p = method.prior(params) if name == "stochastic_gates" else method.prior(params, 0.5)
    # exact KL on a fine grid: atoms + midpoint rule inside
    grid = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000
    lq, lp = q.log_prob(grid.unsqueeze(-1)), p.log_prob(grid.unsqueeze(-1))
    inside = (lq.exp() * (lq - lp)).mean()
    atoms = sum((q_lp.exp() * (q_lp - p_lp)).sum() for q_lp, p_lp in (
        (q.log_prob_zero(), p.log_prob_zero()), (q.log_prob_one(), p.log_prob_one())))
    exact = (inside + atoms).item()
    assert exact > 0.01
    assert abs(kls.mean().item() - exact) < 4 * kls.std().item() / math.sqrt(kls.numel())
    assert isinstance(q, family)


def test_learnable_parameters_receive_gradients():
    x = toy_data(8)
    for name, options, attr in (("stochastic_gates", {"learn_sigma": True}, "log_sigma"),
                                ("correlated_bernoulli", {}, "corr_params")):
        method = make(name, **options)
        model = VAE(method.param_dim, method.latent_dim, [32])
        method.loss(model.encoder(x), model.decode, x, 0.5).loss.backward()
        grad = getattr(method, attr).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    fixed = make("stochastic_gates")
    assert not any(p is fixed.log_sigma for p in fixed.parameters())


@pytest.mark.parametrize("override,key", [
    ("method.sigma=0", "method.sigma"), ("method.l0_weight=-1", "method.l0_weight"),
])
def test_stochastic_gates_config_is_checked(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(composed("method=stochastic_gates", override))


@pytest.mark.parametrize("method,override,key", [
    ("hard_concrete", "method.l=0.1", "method.l"), ("hard_concrete", "method.r=0.9", "method.r"),
    ("correlated_bernoulli", "method.correlation=full", "method.correlation"),
    ("correlated_bernoulli", "method.rho=1.0", "method.rho"),
    ("straight_through", "method.prior_probs=1.0", "method.prior_probs"),
    ("stochastic_times_smooth", "method.latent_dim=0", "method.latent_dim"),
])
def test_method_config_ranges_are_checked(method, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(composed(f"method={method}", override))
