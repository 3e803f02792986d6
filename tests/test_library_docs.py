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
