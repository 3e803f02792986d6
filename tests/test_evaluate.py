"""Honest evaluation: the IWAE bound against exact enumeration, relaxrun-eval, gradient statistics."""

from __future__ import annotations

import itertools
import json
import math
import subprocess

import pytest
import torch

from relaxrun.evaluate import evaluate, iwae_bound, log_mean_exp
from relaxrun.methods import available_methods, build_method, get_method_class
from relaxrun.methods.base import bernoulli_nll
from relaxrun.config import method_options
from relaxrun.evaluate import gradient_statistics
from relaxrun.methods.gumbel_softmax import GumbelSoftmaxMethod
from relaxrun.methods.relaxed_bernoulli import RelaxedBernoulliMethod
from relaxrun.models import VAE


def tiny_vae(kind: str):
    torch.manual_seed(0)
    if kind == "bernoulli":
        method = RelaxedBernoulliMethod(method_options("relaxed_bernoulli", latent_dim=4, tau=0.5))
        configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))
        log_prior = torch.full((16,), 4 * math.log(0.5))
    else:
        method = GumbelSoftmaxMethod(method_options("gumbel_softmax", latent_dim=2, categories=3, tau=0.5))
        idx = torch.tensor(list(itertools.product(range(3), repeat=2)))
        configs = torch.nn.functional.one_hot(idx, 3).float().flatten(-2)
        log_prior = torch.full((9,), 2 * math.log(1 / 3))
    model = VAE(method.param_dim, method.latent_dim, [16], x_dim=12)
    model.method = method  # the tests below reach the method through the model
    for p in model.parameters():  # a spread-out posterior makes the bounds differ visibly
        p.data.mul_(3)
    x = torch.bernoulli(torch.full((6, 12), 0.4))
    return model, x, configs, log_prior


def exact_log_likelihood(model, x, configs, log_prior):
    with torch.no_grad():
        log_joint = -bernoulli_nll(model.decode(configs).unsqueeze(1), x) + log_prior.unsqueeze(1)  # [C, B]
        return torch.logsumexp(log_joint, 0).mean().item()


def exact_elbo(model, x, configs, log_prior):
    """sum_z q(z|x) [log p(x, z) - log q(z|x)] by enumeration."""
    with torch.no_grad():
        params = model.encoder(x)
        m = model.method
        if isinstance(m, RelaxedBernoulliMethod):
            lq = torch.nn.functional.logsigmoid(params)
            lq0 = torch.nn.functional.logsigmoid(-params)
            log_q = (configs.unsqueeze(1) * lq + (1 - configs.unsqueeze(1)) * lq0).sum(-1)  # [C, B]
        else:
            lq = torch.log_softmax(m.split(params), -1).flatten(-2)
            log_q = (configs.unsqueeze(1) * lq).sum(-1)
        log_joint = -bernoulli_nll(model.decode(configs).unsqueeze(1), x) + log_prior.unsqueeze(1)
        return (log_q.exp() * (log_joint - log_q)).sum(0).mean().item()


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_iwae_converges_to_exact_likelihood_and_increases_with_k(kind):
    model, x, configs, log_prior = tiny_vae(kind)
    exact_nll = -exact_log_likelihood(model, x, configs, log_prior)
    exact_neg_elbo = -exact_elbo(model, x, configs, log_prior)
    x_rep = x.repeat(500, 1)  # 3000 rows: averages out the Monte-Carlo noise of each bound
    torch.manual_seed(1)
    w1 = model.method.iwae_log_weights(model.encoder(x_rep), model.decode, x_rep, 0.5, 1).detach()[0]
    se = w1.std().item() / math.sqrt(w1.numel())
    assert -w1.mean().item() == pytest.approx(exact_neg_elbo, abs=4 * se)  # IWAE-1 is the ELBO in expectation
    bounds = {k: iwae_bound(model, model.method, x_rep, k, batch_size=1000, seed=1) for k in (1, 5, 50)}
    elbo = evaluate(model, model.method, x_rep, batch_size=1000, seed=1)["neg_elbo"]
    assert bounds[1] == pytest.approx(exact_neg_elbo, abs=4 * se)
    assert elbo == pytest.approx(exact_neg_elbo, abs=4 * se)  # the reported bound: same ELBO, exact KL
    assert bounds[1] > bounds[5] > bounds[50] >= exact_nll - 0.02
    assert iwae_bound(model, model.method, x, 4000, batch_size=6, seed=2) == pytest.approx(exact_nll, abs=0.02)
    assert exact_neg_elbo - exact_nll > 0.3  # the test would notice a bound that ignored the posterior


def test_log_mean_exp_is_stable():
    a = torch.tensor([[1000.0, -1000.0], [1000.0, -1001.0]], dtype=torch.float64)
    got = log_mean_exp(a, 0)
    assert torch.allclose(got, torch.tensor([1000.0, -1000.0 + math.log((1 + math.exp(-1)) / 2)],
                                            dtype=torch.float64))


def test_gradient_statistics_measure_noise_and_leave_training_rng_alone():
    model, x, _, _ = tiny_vae("bernoulli")
    torch.manual_seed(5)
    before = torch.get_rng_state()
    stats = gradient_statistics(model, model.method, x, 0.5, 8, seed=3)
    assert torch.equal(before, torch.get_rng_state())
    assert stats["variance"] > 0 and math.isfinite(stats["snr"])
    again = gradient_statistics(model, model.method, x, 0.5, 8, seed=3)
    assert again == stats  # seeded: reproducible
    more = gradient_statistics(model, model.method, x.repeat(50, 1), 0.5, 8, seed=3)
    assert more["variance"] < stats["variance"]  # averaging over more data points reduces estimator noise


def test_relaxrun_eval_updates_metrics_and_tensorboard(relaxrun_exe, mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    subprocess.run([relaxrun_exe, "method=gumbel_softmax", f"data.root={mnist_root}", f"hydra.run.dir={run_dir}",
                    "model.hidden=[32]", "trainer.max_steps=3", "trainer.progress=false",
                    "diagnostics.grad_every=1", "diagnostics.grad_samples=3"],
                   check=True, capture_output=True, cwd=tmp_path, timeout=300)
    exe = relaxrun_exe + "-eval"
    p = subprocess.run([exe, str(run_dir), "eval.iwae_samples=50"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["eval"]["kind"] == "discrete" and m["iwae_samples"] == 50
    assert m["test_iwae"] <= m["eval"]["neg_elbo"] + 1.0  # IWAE-50 is the tighter bound (up to MC noise)
    assert m["eval"]["bits_per_dim"] == pytest.approx(m["eval"]["neg_elbo"] / (784 * math.log(2)))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"eval/neg_elbo", "eval/iwae_50", "grad/variance", "grad/snr"} <= set(tags)
    bad = subprocess.run([exe, str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("relaxrun-eval: error:") and "Traceback" not in bad.stderr


def reference_iwae(model, method, x, k, batch_size, seed, chunk=100):
    """iwae_bound's loop with autograd recording, so every method takes its plain path: hard_sample
    (argmax one-hots) and bernoulli_nll of one decoder call per chunk, as before the evaluation path
    was batched for speed."""
    from relaxrun.runtime import seeded

    total = 0.0
    with seeded(seed, x.device), torch.enable_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            params = model.encoder(xb)
            parts = [method.iwae_log_weights(params, model.decode, xb, method.tau, min(chunk, k - j)).detach()
                     for j in range(0, k, chunk)]
            total += float(-log_mean_exp(torch.cat(parts, 0).double(), 0).sum())
    return total / x.shape[0]


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_iwae_fast_path_gives_the_same_number_as_the_plain_path(kind):
    model, x, _, _ = tiny_vae(kind)
    x = x.repeat(40, 1)  # 240 images: several image batches and sample chunks
    for k, batch, chunk in ((300, 100, 100), (7, 64, 3)):
        fast = iwae_bound(model, model.method, x, k, batch_size=batch, seed=3, chunk=chunk)
        plain = reference_iwae(model, model.method, x, k, batch, seed=3, chunk=chunk)
        assert fast == pytest.approx(plain, rel=1e-6, abs=1e-5)
    other = iwae_bound(model, model.method, x, 300, batch_size=100, seed=4)
    assert abs(other - fast) > 1e-4  # the comparison above can tell two different draws apart


def test_decoded_log_likelihood_matches_bernoulli_nll_at_extreme_logits():
    from relaxrun.methods.base import decoded_log_likelihood

    torch.manual_seed(0)
    z = torch.randn(9, 5, 3)
    w = torch.tensor([1.0, 30.0, 300.0, 3000.0]).repeat_interleave(4)[:13] * torch.randn(3, 13)
    x = torch.cat([torch.bernoulli(torch.full((5, 7), 0.5)), torch.rand(5, 6)], 1)  # binary and grey pixels
    decode = lambda v: v @ w  # noqa: E731 - logits up to a few thousand in magnitude
    want = -bernoulli_nll(decode(z), x)
    for rows in (1, 10, 1000):  # one draw per block, a few, all at once
        with torch.no_grad():
            got = decoded_log_likelihood(decode, z, x, rows=rows)
        assert got.shape == (9, 5) and torch.isfinite(got).all()
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-4)
    identity = z[..., :1].expand(9, 5, 13).contiguous()  # an identity decoder returns its input: left intact
    before = identity.clone()
    with torch.no_grad():
        decoded_log_likelihood(lambda v: v, identity, x)
    assert torch.equal(identity, before)


def test_fast_gumbel_max_draws_what_gumbel_max_one_hot_draws_ties_included(monkeypatch):
    import relaxrun.methods.families as families
    from relaxrun.distributions.gumbel import gumbel_max_one_hot

    logits = torch.randn(50, 20, 10)
    torch.manual_seed(7)
    want = gumbel_max_one_hot(logits, (30,))
    torch.manual_seed(7)
    assert torch.equal(families._gumbel_max_one_hot_cpu(logits, (30,)), want)
    torch.manual_seed(8)
    families._gumbel_max_one_hot_cpu(logits, (30,))
    after_fast = torch.randn(3)
    torch.manual_seed(8)
    gumbel_max_one_hot(logits, (30,))
    assert torch.equal(after_fast, torch.randn(3))  # the same random stream consumed
    # ties: with no noise and equal logits every key in a row ties; the draw is redone by the reference,
    # whose argmax takes the first maximum
    import relaxrun.distributions.gumbel as gumbel

    def zeros(shape, dtype, device, generator=None):
        return torch.zeros(shape, dtype=dtype)

    monkeypatch.setattr(families, "sample_gumbel", zeros)
    monkeypatch.setattr(gumbel, "sample_gumbel", zeros)
    flat = torch.zeros(4, 3, 5)
    hot = families._gumbel_max_one_hot_cpu(flat, (2,))
    assert torch.equal(hot, torch.nn.functional.one_hot(torch.zeros(2, 4, 3, dtype=torch.long), 5).float())
    # ties in real draws: keys rounded to {0, 1}; the redraw restores the generator, so the draws and the
    # random stream after them are the reference's
    def coarse(shape, dtype, device, generator=None):
        return torch.rand(shape, dtype=dtype).mul_(2).floor_()

    monkeypatch.setattr(families, "sample_gumbel", coarse)
    monkeypatch.setattr(gumbel, "sample_gumbel", coarse)
    torch.manual_seed(9)
    fast, after_fast = families._gumbel_max_one_hot_cpu(flat, (2,)), torch.randn(3)
    torch.manual_seed(9)
    ref, after_ref = gumbel_max_one_hot(flat, (2,)), torch.randn(3)
    assert torch.equal(fast, ref) and torch.equal(after_fast, after_ref)
    assert (ref.argmax(-1) == 0).float().mean() < 0.9  # the keys were random, not all tied at index 0


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_every_method_iwae_fast_path_gives_the_plain_paths_number(name):
    import dataclasses

    fields = {f.name for f in dataclasses.fields(get_method_class(name).Config)}
    sizes = {"latent_dim": 6, **({"categories": 3} if "categories" in fields else {})}
    torch.manual_seed(0)
    method = build_method(method_options(name, **sizes))
    model = VAE(method.param_dim, method.latent_dim, [16], x_dim=20)
    x = torch.bernoulli(torch.full((30, 20), 0.3))
    try:
        fast = iwae_bound(model, method, x, 7, batch_size=16, seed=1, chunk=3)
    except NotImplementedError:
        pytest.skip(f"{name} has no importance-weighted bound")
    plain = reference_iwae(model, method, x, 7, 16, seed=1, chunk=3)
    assert math.isfinite(fast) and fast == pytest.approx(plain, rel=1e-6, abs=1e-5)
