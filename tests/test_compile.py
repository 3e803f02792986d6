"""``trainer.compile=true`` compiles ``method.loss``: every method's loss must trace under
torch.compile at a dynamic batch size (the evaluation's last, shorter batch makes the size symbolic).

Traced with the ``eager`` backend: dynamo's tracing with fake tensors (where a sampler that passes
``generator=None`` to ``torch.rand`` at a symbolic size fails) without inductor's code generation.
"""

from __future__ import annotations

import pytest
import torch

from relaxrun.config import method_options
from relaxrun.methods import build_method

METHODS = ["gumbel_softmax", "relaxed_bernoulli", "hard_concrete", "stochastic_gates", "invertible_gaussian",
           "laplace_bridge", "correlated_bernoulli"]


@pytest.fixture(autouse=True)
def _keep_distribution_validation():
    """torch.compile turns torch.distributions' default argument validation off process-wide
    (``Distribution._validate_args``); put it back so later tests see the default."""
    from torch.distributions import Distribution

    before = Distribution._validate_args
    yield
    Distribution.set_default_validate_args(before)


@pytest.mark.parametrize("name", METHODS)
def test_loss_traces_at_a_dynamic_batch_size(name):
    torch._dynamo.reset()
    method = build_method(method_options(name, latent_dim=4, **({"categories": 3} if name in (
        "gumbel_softmax", "invertible_gaussian") else {})))
    decoder = torch.nn.Linear(method.latent_dim, 784)
    loss = torch.compile(method.loss, backend="eager", dynamic=True, fullgraph=False)
    for b in (6, 5):  # a second, different size: traced with a symbolic batch dimension
        params = torch.randn(b, method.param_dim, requires_grad=True)
        x = torch.bernoulli(torch.full((b, 784), 0.3))
        terms = loss(params, decoder, x, 0.5)
        terms.loss.backward()
        assert torch.isfinite(terms.loss) and torch.isfinite(params.grad).all()
