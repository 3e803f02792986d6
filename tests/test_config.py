"""Config composition through Hydra's compose API, and the schema's checks."""

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from relaxrun.cli import group_options
from relaxrun.config import ConfigError, register_configs, validate
from relaxrun.methods import available_methods

register_configs()


def composed(*overrides):
    with initialize_config_module(config_module="relaxrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_every_method_config_has_a_registered_method_and_back():
    assert group_options("method") == available_methods()


@pytest.mark.parametrize("method", group_options("method"))
def test_top_level_tau_reaches_every_method(method):
    tau = 1.37 if method == "reinmax" else 0.37  # ReinMax's temperature must be >= 1
    cfg = composed(f"method={method}", f"tau={tau}")
    run, mcfg = validate(cfg)
    assert mcfg.tau == pytest.approx(tau) and mcfg.name == method
    assert OmegaConf.select(cfg, "method.tau") == pytest.approx(tau)


@pytest.mark.parametrize("override,key", [
    ("tau=0", "tau"), ("optim.lr=-1", "optim.lr"), ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.batch_size=0", "trainer.batch_size"), ("data.binarize=sometimes", "data.binarize"),
    ("eval.iwae_samples=-5", "eval.iwae_samples"), ("method.kl=exact", "method.kl"),
    ("trainer.tau_schedule=cosine", "trainer.tau_schedule"), ("device=tpu", "device"),
])
def test_out_of_range_values_are_refused(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(composed(override))


def test_defaults_are_valid_and_documented_values():
    run, mcfg = validate(composed())
    assert (mcfg.name, mcfg.latent_dim, mcfg.categories) == ("gumbel_softmax", 20, 10)
    assert run.model.hidden == [512, 256] and run.trainer.batch_size == 100 and run.optim.lr == 1e-3
