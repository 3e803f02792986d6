"""The runnable examples of docs/library.md, run as they are written (each ends with its own asserts).
The Pyro example is skipped without pyro-ppl (CI installs the ``pyro`` extra)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"
BLOCK = re.compile(r"<!-- example: (?P<name>[\w-]+) -->\s*```python\n(?P<code>.*?)```", re.S)


def examples() -> dict[str, str]:
    return {m["name"]: m["code"] for m in BLOCK.finditer(DOC.read_text())}


def test_the_page_has_its_three_examples():
    assert list(examples()) == ["torch-gates", "pyro-svi", "hard-concrete-l0"]


@pytest.mark.parametrize("name", ["torch-gates", "pyro-svi", "hard-concrete-l0"])
def test_example_runs(name):
    code = examples()[name]
    if "import pyro" in code:
        pytest.importorskip("pyro")
    rng = torch.get_rng_state()
    try:
        exec(compile(code, f"docs/library.md:{name}", "exec"), {"__name__": "__docs__"})
    finally:
        torch.set_rng_state(rng)  # the examples seed torch; leave the suite's stream as it was
    assert torch.is_grad_enabled()


def test_the_pages_bridge_numbers_are_the_computed_ones():
    # the KL values quoted in the Laplace-bridge section are what the library computes
    from torch.distributions import Dirichlet, kl_divergence

    from relaxrun.distributions import LaplaceBridge, LogisticNormalSoftmax, dirichlet_to_logistic_normal

    text = " ".join(DOC.read_text().split())
    m = re.search(r"([\d.]+), ([\d.]+), ([\d.]+) nats at α = c·\(2, 3, 4\).*?stays at ([\d.]+), ([\d.]+), ([\d]\.\d+)", text)
    assert m, "the section's numbers moved; update this test"
    quoted = [float(v) for v in m.groups()]
    base = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
    bridge, diagonal = [], []
    for c in (1.0, 10.0, 100.0):
        mu, var = dirichlet_to_logistic_normal(c * base)
        bridge.append(kl_divergence(Dirichlet(c * base), LaplaceBridge(c * base)).item())
        diagonal.append(kl_divergence(Dirichlet(c * base), LogisticNormalSoftmax(mu, var.sqrt())).item())
    for q, v in zip(quoted, bridge + diagonal):
        assert q == pytest.approx(v, rel=5e-3), (q, v)
