"""``method=reinforce``: unbiased against exact enumeration, the baselines, the options, and the learned
baseline's own optimizer.

Every statistical assertion uses a fixed seed; the false-alarm rate of each is stated where it is made.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from relaxrun import gradcheck as gc
from relaxrun.checks import ConfigError
from relaxrun.config import method_options
from relaxrun.methods import available_methods, get_method_class
from relaxrun.methods.base import StepTools
from relaxrun.methods.reinforce import ReinforceMethod

DT = torch.float64
EXTRAS = ("baseline", "advantage_std", "f_mean")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; threads only contend with the rest of the suite
    yield
    torch.set_num_threads(n)


def reinforce(**overrides) -> ReinforceMethod:
    return get_method_class("reinforce")(method_options("reinforce", **overrides))


def sized(kind: str, shape, **overrides) -> ReinforceMethod:
    sizes = {"latent": kind, "latent_dim": shape[0], **({"categories": shape[1]} if kind == "categorical" else {})}
    return reinforce(**sizes, **overrides).to(DT)


# -- options ------------------------------------------------------------------------------------------
def test_registered_with_the_yaml_defaults():
    assert "reinforce" in available_methods()
    cfg = method_options("reinforce")
    assert (cfg.latent, cfg.latent_dim, cfg.categories, cfg.prior_probs, cfg.samples, cfg.baseline, cfg.baseline_lr,
            cfg.tau) == ("bernoulli", 200, 10, 0.5, 2, "loo", 1e-3, 1.0)
    m = reinforce()
    assert (m.param_dim, m.latent_dim, m.metric_kind, m.latent_type) == (200, 200, "discrete", "Bernoulli")
    m = reinforce(latent="categorical", latent_dim=20)  # the 20 x 10 setting
    assert (m.param_dim, m.latent_dim, m.latent_type) == (200, 200, "categorical")
    assert list(m.parameters()) == [] and list(reinforce(baseline="none").parameters()) == []


def test_loo_needs_two_samples_and_ranges_are_checked():
    with pytest.raises(ConfigError, match=r"baseline=loo needs method.samples >= 2"):
        method_options("reinforce", samples=1)
    method_options("reinforce", samples=1, baseline="none")
    method_options("reinforce", samples=1, baseline="learned")
    for bad in ({"baseline": "mean"}, {"latent": "gaussian"}, {"samples": 0}, {"baseline_lr": 0.0},
                {"prior_probs": 1.0}, {"categories": 1}, {"latent_dim": 0}):
        with pytest.raises(ConfigError):
            method_options("reinforce", **bad)


# -- the estimator against exact enumeration -------------------------------------------------------
@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
@pytest.mark.parametrize("baseline", ["loo", "none"])
def test_unbiased_for_the_discrete_negative_elbo(kind, baseline):
    """On gradcheck's VAE problem (10 Bernoulli units / 3 x 4 categorical, the whole negative ELBO,
    analytic KL included), Hotelling's test does not flag the mean of 20000 draws (false-alarm rate
    1e-3 per case) and the mean points where the exact gradient does."""
    prob = gc.make_problem("vae", kind)
    st = gc.check_row(sized(kind, prob.shape, baseline=baseline), prob, 1.0, samples=20000, seed=0, level=0.999,
                      alpha=1e-3)
    assert not st["biased"], st
    assert st["cos"] > 0.95, st


def wide_problem() -> gc.Problem:
    """A 784-pixel problem (the learned baseline reads 784 pixels): 4 Bernoulli units, 16 configurations."""
    g = torch.Generator().manual_seed(7)
    decode = gc.mlp_decoder(4, g, DT, hidden=16, pixels=784)
    x = torch.bernoulli(torch.full((2, 784), 0.3, dtype=DT), generator=g)
    params = torch.tensor([[-1.0, 0.3, 1.2, -0.2], [0.5, -1.5, 0.0, 2.0]], dtype=DT)
    return gc.Problem("wide", "bernoulli", "elbo", (4,), decode, x, lambda d: params)


def test_learned_baseline_is_unbiased_whatever_its_weights():
    """An input-dependent baseline, however far from f (random weights, an arbitrary running mean), adds
    no bias: not flagged at false-alarm rate 1e-3 over 20000 single-draw gradients."""
    prob = wide_problem()
    m = sized("bernoulli", prob.shape, baseline="learned", samples=1)
    with torch.no_grad():
        m.baseline_net.weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
        m.center_sum.fill_(300.0)
        m.center_weight.fill_(1.0)
    st = gc.check_row(m, prob, 1.0, samples=20000, seed=0, level=0.999, alpha=1e-3)
    assert not st["biased"], st


def test_leave_one_out_lowers_the_variance():
    """Same draws per input (2): the LOO baseline's per-draw gradient variance is a small fraction of
    plain REINFORCE's (about 1/20 on this problem; with 4000 draws each the estimated variances are
    within a few percent, so the factor-4 margin leaves no realistic false alarm)."""
    prob = gc.make_problem("vae", "bernoulli")
    var = {b: gc.check_row(sized("bernoulli", prob.shape, baseline=b), prob, 1.0, 4000, 0)["variance"]
           for b in ("loo", "none")}
    assert var["loo"] < 0.25 * var["none"], var


def test_loss_value_is_the_monte_carlo_negative_elbo_and_extras_are_finite():
    torch.manual_seed(0)
    prob = gc.make_problem("vae", "categorical")
    for baseline in ("loo", "learned", "none"):
        m = sized("categorical", prob.shape, baseline=baseline, samples=3)
        decode = nn.Linear(m.latent_dim, 784).to(DT)
        x = torch.bernoulli(torch.full((5, 784), 0.2, dtype=DT))
        params = torch.randn(5, m.param_dim, dtype=DT, requires_grad=True)
        t = m.loss(params, decode, x, 1.0)
        torch.testing.assert_close(t.loss, (t.recon + t.kl).mean())
        assert t.recon.shape == t.kl.shape == (5,)
        assert set(t.extras) == set(EXTRAS), t.extras
        for k, v in t.extras.items():
            assert v.dim() == 0 and not v.requires_grad and math.isfinite(float(v)), (k, v)
        t.loss.backward()
        assert torch.isfinite(params.grad).all() and decode.weight.grad is not None


# -- the learned baseline's own optimizer -------------------------------------------------------------
class TinyVAE(nn.Module):
    def __init__(self, param_dim: int, latent_dim: int):
        super().__init__()
        self.encoder = nn.Linear(784, param_dim)
        self.decoder = nn.Linear(latent_dim, 784)

    def decode(self, z):
        return self.decoder(z)


def test_learned_baseline_has_its_own_optimizer_and_trains():
    torch.manual_seed(0)
    m = reinforce(latent_dim=8, baseline="learned", samples=1, baseline_lr=1e-2)
    model = TinyVAE(m.param_dim, m.latent_dim)
    opts = m.configure_optimizers(model, SimpleNamespace(lr=1e-3, weight_decay=0.0))
    assert set(opts) == {"main", "baseline"}
    tools = StepTools(opts)
    own = {id(p) for p in m.baseline_net.parameters()}
    main = {id(p) for p in tools.params("main")}
    assert {id(p) for p in tools.params("baseline")} == own and not own & main
    assert main == {id(p) for p in model.parameters()}
    assert opts["baseline"].param_groups[0]["lr"] == 1e-2 and opts["main"].param_groups[0]["lr"] == 1e-3

    phases = []
    tools.phase = phases.append
    before = [p.detach().clone() for p in (*m.baseline_net.parameters(), *model.parameters())]
    x = torch.bernoulli(torch.full((16, 784), 0.2))
    for step in range(3):
        terms = m.training_step(model, x, step, tools)
        assert set(terms.extras) == set(EXTRAS)
        assert all(math.isfinite(float(v)) for v in terms.extras.values())
    assert phases == ["forward", "backward", "optimizer"] * 3
    after = [p.detach() for p in (*m.baseline_net.parameters(), *model.parameters())]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    # the running mean has moved to the scale of f; the baseline tracks it
    center = float(m.center_sum / m.center_weight)
    assert 0.5 * float(terms.extras["f_mean"]) < center < 2 * float(terms.extras["f_mean"])
    assert "center_sum" in m.state_dict() and "baseline_net.weight" in m.state_dict()


def test_default_baselines_keep_the_default_step():
    torch.manual_seed(0)
    m = reinforce(latent="categorical", latent_dim=3, categories=4)
    model = TinyVAE(m.param_dim, m.latent_dim)
    opts = m.configure_optimizers(model, SimpleNamespace(lr=1e-3, weight_decay=0.0))
    assert set(opts) == {"main"}
    w = model.encoder.weight.detach().clone()
    terms = m.training_step(model, torch.bernoulli(torch.full((8, 784), 0.2)), 0, StepTools(opts))
    assert not torch.equal(w, model.encoder.weight) and set(terms.extras) == set(EXTRAS)
    # bound, prior samples and reconstructions come from the categorical family: one-hots
    assert m.prior_sample(5, "cpu").reshape(5, 3, 4).sum(-1).eq(1).all()
    params = model.encoder(torch.zeros(2, 784))
    assert m.reconstruct_input(params, 1.0).reshape(2, 3, 4).sum(-1).eq(1).all()
    assert m.bound(params, model.decode, torch.zeros(2, 784), 1.0).recon.shape == (2,)
    assert m.iwae_log_weights(params, model.decode, torch.zeros(2, 784), 1.0, 7).shape == (7, 2)
