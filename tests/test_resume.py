"""Interrupted runs resume to exactly the result of an uninterrupted run (CPU, same seed)."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from hydra import compose, initialize_config_module

from relaxrun import data as data_module
from relaxrun.config import register_configs
from relaxrun.train import CHECKPOINT, Interrupted, TrainingError, train

register_configs()


def config(root, *extra):
    with initialize_config_module(config_module="relaxrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=[
            "method=relaxed_bernoulli", "method.latent_dim=8", "model.hidden=[32]", f"data.root={root}",
            "trainer.batch_size=50", "trainer.progress=false", "trainer.log_every=3", "trainer.images=2",
            "device=cpu", "trainer.tau_schedule=exponential", "trainer.tau_rate=0.01", *extra])


def comparable(metrics):
    drop = {"seconds", "seconds_per_epoch", "config"}
    out = {k: v for k, v in metrics.items() if k not in drop}
    out["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]
    return out


def params(run_dir):
    return torch.load(run_dir / CHECKPOINT, weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(mnist_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return run_dir, train(config(mnist_root, "trainer.epochs=3"), run_dir)


def test_signal_mid_epoch_then_resume_gives_identical_result(mnist_root, tmp_path, reference, monkeypatch):
    ref_dir, ref_metrics = reference
    calls = {"n": 0}
    original = data_module.Data.train_batch

    def batch_then_signal(self, idx, generator):
        calls["n"] += 1
        if calls["n"] == 17:  # epoch 2 (12 steps per epoch), mid-epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, idx, generator)

    monkeypatch.setattr(data_module.Data, "train_batch", batch_then_signal)
    with pytest.raises(Interrupted, match="resume=true"):
        train(config(mnist_root, "trainer.epochs=3"), tmp_path)
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ck["state"]["step"] == 17 and ck["state"]["batch"] == 5 and ck["state"]["epoch"] == 1
    monkeypatch.setattr(data_module.Data, "train_batch", original)

    metrics = train(config(mnist_root, "trainer.epochs=3", "resume=true"), tmp_path)
    assert comparable(metrics) == comparable(ref_metrics)
    ref, got = params(ref_dir), params(tmp_path)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_resume_from_epoch_checkpoint_after_kill_gives_identical_result(mnist_root, tmp_path, reference):
    # a kill -9 loses what followed the last checkpoint; training up to epoch 2 leaves exactly that state
    ref_dir, ref_metrics = reference
    train(config(mnist_root, "trainer.epochs=2"), tmp_path)
    metrics = train(config(mnist_root, "trainer.epochs=3", "resume=true"), tmp_path)
    assert comparable(metrics) == comparable(ref_metrics)
    ref, got = params(ref_dir), params(tmp_path)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_corrupt_or_incompatible_checkpoint_is_refused_and_left_alone(mnist_root, tmp_path):
    train(config(mnist_root, "trainer.max_steps=2"), tmp_path)
    ck_path = tmp_path / CHECKPOINT
    good = ck_path.read_bytes()
    with pytest.raises(TrainingError, match="another model|same method"):
        train(config(mnist_root, "trainer.max_steps=4", "resume=true", "method.latent_dim=9"), tmp_path)
    assert ck_path.read_bytes() == good
    ck_path.write_bytes(good[: len(good) // 2])  # truncated
    truncated = ck_path.read_bytes()
    with pytest.raises(TrainingError, match="cannot read checkpoint"):
        train(config(mnist_root, "trainer.max_steps=4", "resume=true"), tmp_path)
    assert ck_path.read_bytes() == truncated
    ck_path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(TrainingError, match="cannot read checkpoint"):
        train(config(mnist_root, "trainer.max_steps=4", "resume=true"), tmp_path)


def test_flush_denormal_is_on_while_training_and_restored_after(mnist_root, tmp_path, monkeypatch):
    from relaxrun import train as train_module
    from relaxrun.methods.base import Temperature

    seen = []
    original = Temperature.at

    def spy(*a, **k):  # called once per training step
        seen.append(train_module.flush_denormal_is_on())
        return original(*a, **k)

    monkeypatch.setattr(Temperature, "at", spy)
    assert not train_module.flush_denormal_is_on()
    train(config(mnist_root, "trainer.max_steps=3", "eval.iwae_samples=0"), tmp_path / "on")
    assert seen and all(seen) and not train_module.flush_denormal_is_on()
    seen.clear()
    train(config(mnist_root, "trainer.max_steps=3", "eval.iwae_samples=0", "trainer.flush_denormal=false"),
          tmp_path / "off")
    assert seen and not any(seen)
    with train_module.flush_denormal(True):  # an outer setting survives an inner block
        with train_module.flush_denormal(True):
            pass
        assert train_module.flush_denormal_is_on()
        with train_module.flush_denormal(False):
            assert not train_module.flush_denormal_is_on()
        assert train_module.flush_denormal_is_on()
    assert not train_module.flush_denormal_is_on()


def test_optimizer_is_adam_with_the_configured_rate_fused_where_available():
    from types import SimpleNamespace

    from relaxrun.methods.base import adam as build_optimizer

    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([p], SimpleNamespace(lr=0.1, weight_decay=0.0))
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == 0.1
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert bool(opt.defaults.get("fused")) == ((major, minor) >= (2, 4))
    # the fused kernel makes Adam's first step: p <- p - lr * sign(g) (bias-corrected m / sqrt(v) = g / |g|)
    p.grad = torch.tensor([2.0, -3.0, 0.5])
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([0.9, 1.1, 0.9]), atol=1e-6)
