"""The two calibration rows that check gradcheck's bias test, and their verdict.

* ``ref_reinforce_loo``: the registered ``reinforce`` method (score function, leave-one-out
  baseline) with 4 draws per input. Unbiased for the discrete objective, so it must not be flagged.
* ``ref_reinforce_loo_x1.2``: the same estimator with its score-function term (the E_q[f] part of
  the gradient) scaled by 1.2, a bias of 20 % on the expectation problems by construction; it must
  be flagged on ``toy_vector`` and ``vae``. The scaling lives here, in :class:`ScaledReinforce`,
  not among the method's user options.
"""

from __future__ import annotations

import torch

from ..config import method_options
from ..methods.base import Method
from ..methods.reinforce import ReinforceMethod

REF_NAME, REF_SCALED_NAME, REF_SCALE = "ref_reinforce_loo", "ref_reinforce_loo_x1.2", 1.2
REF_NAMES = (REF_NAME, REF_SCALED_NAME)
REF_SAMPLES = 4  # draws per input of the reference


class ScaledReinforce(ReinforceMethod):
    """``reinforce`` with its score-function surrogate multiplied by :data:`REF_SCALE` (biased on purpose)."""

    def score_term(self, advantage: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        return REF_SCALE * super().score_term(advantage, log_q)


def build_reference(name: str, problem_kind: str, shape: tuple[int, ...], dtype) -> Method:
    """The calibration method ``name`` (one of :data:`REF_NAMES`) sized for a problem."""
    if name not in REF_NAMES:
        raise ValueError(f"not a calibration row: {name!r}")
    sizes = {"latent": problem_kind, "latent_dim": shape[0]}
    if problem_kind == "categorical":
        sizes["categories"] = shape[1]
    cfg = method_options("reinforce", samples=REF_SAMPLES, baseline="loo", **sizes)
    m = (ScaledReinforce if name == REF_SCALED_NAME else ReinforceMethod)(cfg)
    m.name = name
    return m.to(dtype)


def calibration_failures(rows: list[dict]) -> list[str]:
    """Calibration rows that contradict what they are: the unbiased reference flagged biased, or
    the scaled reference not flagged on the vector problems."""
    bad = []
    for r in rows:
        if r.get("status") != "ok":
            continue
        if r["method"] == REF_NAME and r["biased"]:
            bad.append(f"{REF_NAME} (unbiased) flagged biased on {r['problem']} (p={r['p_value']:.2g})")
        if r["method"] == REF_SCALED_NAME and r["problem"] != "toy" and not r["biased"]:
            bad.append(f"{REF_SCALED_NAME} (biased by construction) not flagged on {r['problem']} "
                       f"(p={r['p_value']:.2g})")
    return bad
