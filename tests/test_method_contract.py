"""The contract every registered method keeps, checked for each one automatically.

A method added under relaxrun/methods/ (with its YAML) is picked up by ``available_methods()`` and
lands in every test here: its loss is finite and differentiable, its bound is of a known kind,
``prior_sample``/``reconstruct_input`` have the decoder's shapes, 20 steps of the real loop on
generated data stay finite, a run stopped after its first epoch and resumed ends exactly where an
uninterrupted run does, and ``relaxrun-gradcheck`` gives it a row. A few option variants that switch
on another code path (a second optimizer, another latent family) run beside the defaults.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hydra import compose, initialize_config_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from relaxrun import gradcheck as gc
from relaxrun.config import group_options, method_options, register_configs
from relaxrun.methods import BOUND_KINDS, available_methods, build_method, get_method_class
from relaxrun.models import build_model
from relaxrun.train import CHECKPOINT, train

register_configs()

LATENT_DIM, CATEGORIES = 6, 4
#: option variants on another code path than the defaults: "name:key=value:..."
VARIANTS = ["reinforce:baseline=learned", "reinforce:latent=categorical", "gumbel_softmax:hard=true",
            "vimco:latent=categorical", "gst:gap_rule=p", "decoupled_st:tau_forward=2.0"]
SPECS = available_methods() + VARIANTS


def parse(spec: str) -> tuple[str, dict]:
    parsed = gc.Spec.parse(spec)
    return parsed.name, parsed.overrides


def sizes(name: str) -> dict:
    fields = {f.name for f in dataclasses.fields(get_method_class(name).Config)}
    out = {"latent_dim": LATENT_DIM}
    if "categories" in fields:
        out["categories"] = CATEGORIES
    return out


def small_method(spec: str):
    name, overrides = parse(spec)
    return build_method(method_options(name, **sizes(name), **overrides))


def small_model(method):
    return build_model(group_options("model", "mlp", hidden=[16]), method.param_dim, method.latent_dim)


def overrides(spec: str, root, *extra) -> list[str]:
    name, opts = parse(spec)
    method = [f"method={name}"] + [f"method.{k}={v}" for k, v in {**sizes(name), **opts}.items()]
    return method + ["model.hidden=[16]", f"data.root={root}", "trainer.batch_size=50", "trainer.progress=false",
                     "trainer.log_every=5", "trainer.images=2", "eval.iwae_samples=3", "device=cpu", *extra]


def config(spec: str, root, *extra):
    with initialize_config_module(config_module="relaxrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=overrides(spec, root, *extra))


def batch(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 784), 0.3), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", SPECS)
def test_loss_is_finite_and_differentiable_and_bound_has_a_known_kind(spec):
    torch.manual_seed(0)
    method = small_method(spec)
    model = small_model(method)
    x = batch()
    assert method.metric_kind in BOUND_KINDS
    terms = method.loss(model.encoder(x), model.decode, x, method.tau)
    assert terms.loss.dim() == 0 and torch.isfinite(terms.loss)
    assert terms.recon.shape == (8,) and terms.kl.shape == (8,)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.extras.values()), dict(terms.extras)
    terms.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    enc = [p.grad for p in model.encoder.parameters()]
    assert any(g.abs().sum() > 0 for g in enc), "the loss gives the encoder no gradient"

    with torch.no_grad():
        bound = method.bound(model.encoder(x), model.decode, x, method.tau)
    assert bound.recon.shape == (8,) and bound.kl.shape == (8,)
    assert torch.isfinite(bound.recon).all() and torch.isfinite(bound.kl).all()


@pytest.mark.parametrize("spec", SPECS)
def test_prior_sample_and_reconstruction_have_the_decoders_shapes(spec):
    torch.manual_seed(0)
    method = small_method(spec)
    model = small_model(method)
    z = method.prior_sample(5, "cpu")
    assert z.shape == (5, method.latent_dim) and torch.isfinite(z).all()
    with torch.no_grad():
        r = method.reconstruct_input(model.encoder(batch(3)), method.tau)
    assert r.shape == (3, method.latent_dim) and torch.isfinite(r).all()
    assert model.decode(z).shape == (5, 784)


def comparable(metrics):
    drop = {"seconds", "seconds_per_epoch", "config"}
    out = {k: v for k, v in metrics.items() if k not in drop}
    out["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]
    return out


@pytest.mark.parametrize("spec", SPECS)
def test_twenty_steps_stay_finite_and_a_resumed_run_is_exact(spec, mnist_root, tmp_path):
    # 600 generated images, batch 50: 12 steps per epoch; the reference runs 20 steps in one go
    reference = train(config(spec, mnist_root, "trainer.epochs=2", "trainer.max_steps=20"), tmp_path / "ref")
    assert reference["steps"] == 20
    for key in ("test_neg_elbo", "test_relaxed_objective", "train_objective", "test_iwae"):
        assert math.isfinite(reference[key]), (key, reference[key])

    resumed_dir = tmp_path / "resumed"
    train(config(spec, mnist_root, "trainer.epochs=1"), resumed_dir)
    resumed = train(config(spec, mnist_root, "trainer.epochs=2", "trainer.max_steps=20", "resume=true"), resumed_dir)
    assert comparable(resumed) == comparable(reference)
    ref = torch.load(tmp_path / "ref" / CHECKPOINT, weights_only=True)
    got = torch.load(resumed_dir / CHECKPOINT, weights_only=True)
    assert ref["model"].keys() == got["model"].keys()
    assert all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"])
    assert ref["optimizers"].keys() == got["optimizers"].keys()


@pytest.mark.parametrize("spec", SPECS)
def test_gradcheck_gives_every_method_a_row(spec):
    rows = gc.run([gc.Spec.parse(spec)], ["toy", "vae"], [0.5], 8, 0, 0.95, 1e-3, log=lambda *a: None)
    assert {r["problem"] for r in rows} == {"toy", "vae"}
    for r in rows:
        assert r["method"] == spec and r["status"] in ("ok", "skipped"), r
        if r["status"] == "ok":
            assert math.isfinite(r["rel_err"]) and math.isfinite(r["variance"]), r
        else:
            assert r["reason"], r


def test_scheduled_temperature_reaches_sample_grids_hparams_and_metrics(mnist_root, tmp_path, monkeypatch):
    import relaxrun.train as train_module

    tau0, rate, steps = 0.9, 0.05, 10
    cls = get_method_class("hard_concrete")  # its prior_sample reads the temperature
    seen_by_prior, hparams = [], []
    original_prior, original_hparams = cls.prior_sample, train_module.log_hparams

    def spy_prior(self, n, device, dtype=torch.float32):
        seen_by_prior.append(self.tau)
        return original_prior(self, n, device, dtype)

    def spy_hparams(writer, hp, metrics, step):
        hparams.append(hp)
        return original_hparams(writer, hp, metrics, step)

    monkeypatch.setattr(cls, "prior_sample", spy_prior)
    monkeypatch.setattr(train_module, "log_hparams", spy_hparams)
    run_dir = tmp_path / "run"
    metrics = train(config("hard_concrete", mnist_root, f"tau={tau0}", "trainer.tau_schedule=exponential",
                           f"trainer.tau_rate={rate}", f"trainer.max_steps={steps}"), run_dir)
    expected = tau0 * math.exp(-rate * (steps - 1))  # the temperature of the last step taken (0-based)
    assert metrics["steps"] == steps
    assert metrics["tau"] == pytest.approx(expected, rel=1e-12)
    assert metrics["history"][-1]["tau"] == pytest.approx(expected, rel=1e-12)
    assert seen_by_prior and seen_by_prior[-1] == pytest.approx(expected, rel=1e-12)
    assert hparams[-1]["tau"] == pytest.approx(tau0) and hparams[-1]["tau_final"] == pytest.approx(expected)
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    logged = acc.Scalars("train/tau")
    assert logged[0].value == pytest.approx(tau0, rel=1e-6) and logged[-1].value == pytest.approx(expected, rel=1e-6)


def test_a_methods_extras_are_logged_as_method_scalars(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    train(config("reinforce:baseline=learned", mnist_root, "trainer.max_steps=10"), run_dir)
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {f"method/{k}" for k in ("baseline", "advantage_std", "f_mean")}
    assert expected <= tags, tags
    for tag in expected:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [5, 10] and all(math.isfinite(e.value) for e in events)
    # the learned baseline has its own optimizer, checkpointed beside the main one
    ck = torch.load(run_dir / CHECKPOINT, weights_only=True)
    assert set(ck["optimizers"]) == {"main", "baseline"}


def test_no_import_cycles_and_a_method_agnostic_model():
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(repo / "scripts" / "check_imports.py")], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    models = (repo / "relaxrun" / "models.py").read_text()
    assert not re.search(r"import.*Method|from \.methods", models)
