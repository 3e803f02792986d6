"""Every public relaxrun distribution, built the way a library user would, for the library-contract
and Pyro tests (tests/test_library_*.py).

A case gives the prior of a small model (unbatched parameters, to be ``expand``-ed by the caller),
the guide's law from one unconstrained parameter tensor, the parameter's starting value (far from
what the data want), and how many trailing batch dimensions go into ``to_event`` so that the site has
batch shape ``(N,)``. All laws of one case share their support (so the prior's density is finite at
the guide's samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from relaxrun.distributions import (CorrelatedRelaxedBernoulli, GeneralizedGumbelSoftmax, GumbelSoftmax, HardConcrete,
                                    InvertibleGaussian, LaplaceBridge, LogisticNormalSoftmax, PlackettLuce,
                                    RelaxedBernoulli, StochasticGate, StochasticTimesSmooth,
                                    StraightThroughBernoulli, equicorrelation)

N = 6  # plate size
D = 3  # units per plate element (scalar-event laws)
K = 4  # categories / simplex dimension (vector-event laws)


@dataclass
class Case:
    name: str
    prior: Callable[[], torch.distributions.Distribution]  # unbatched; expanded to (N,) + extra_batch
    guide: Callable[[torch.Tensor], torch.distributions.Distribution]  # batch (N,) + extra_batch
    init: torch.Tensor  # starting value of the guide's parameter
    extra_batch: tuple  # batch dims after N that to_event reinterprets
    event_shape: tuple
    shared_prior: bool = False  # the prior takes the guide's parameter (a law whose support moves with it)


VALUES = torch.arange(4.0)  # GeneralizedGumbelSoftmax support


def cases() -> list[Case]:
    return [
        Case("RelaxedBernoulli", lambda: RelaxedBernoulli(0.5, probs=torch.tensor(0.5)),
             lambda a: RelaxedBernoulli(0.5, logits=a), torch.full((N, D), -3.0), (D,), ()),
        Case("HardConcrete", lambda: HardConcrete(2 / 3, logits=torch.tensor(0.0)),
             lambda a: HardConcrete(2 / 3, logits=a), torch.full((N, D), -3.0), (D,), ()),
        Case("StochasticGate", lambda: StochasticGate(torch.tensor(0.5), 0.5),
             lambda a: StochasticGate(a, 0.5), torch.full((N, D), -1.0), (D,), ()),
        Case("StraightThroughBernoulli", lambda: StraightThroughBernoulli(probs=torch.tensor(0.5)),
             lambda a: StraightThroughBernoulli(logits=a), torch.full((N, D), -3.0), (D,), ()),
        Case("StochasticTimesSmooth", lambda: None, lambda a: StochasticTimesSmooth(logits=a),
             torch.full((N, D), -3.0), (D,), (), shared_prior=True),
        Case("GeneralizedGumbelSoftmax",
             lambda: GeneralizedGumbelSoftmax(0.5, VALUES, probs=torch.full((4,), 0.25)),
             lambda a: GeneralizedGumbelSoftmax(0.5, VALUES, logits=a, hard=True),
             torch.tensor([3.0, 0.0, 0.0, 0.0]).repeat(N, D, 1), (D,), ()),
        Case("GumbelSoftmax", lambda: GumbelSoftmax(0.5, logits=torch.zeros(K)),
             lambda a: GumbelSoftmax(0.5, logits=a), torch.tensor([3.0, 0, 0, 0]).repeat(N, 2, 1), (2,), (K,)),
        Case("CorrelatedRelaxedBernoulli", lambda: CorrelatedRelaxedBernoulli(0.5, probs=torch.full((D,), 0.5)),
             lambda a: CorrelatedRelaxedBernoulli(0.5, logits=a, correlation=equicorrelation(0.3, D)),
             torch.full((N, D), -3.0), (), (D,)),
        Case("InvertibleGaussian", lambda: InvertibleGaussian(0.5, torch.zeros(K - 1), 1.0),
             lambda a: InvertibleGaussian(0.5, a, 0.5), torch.full((N, K - 1), -2.0), (), (K,)),
        Case("LogisticNormalSoftmax", lambda: LogisticNormalSoftmax(torch.zeros(K), 1.0),
             lambda a: LogisticNormalSoftmax(a, 0.5), torch.tensor([-2.0, 0, 0, 2]).repeat(N, 1), (), (K,)),
        Case("LaplaceBridge", lambda: LaplaceBridge(torch.full((K,), 2.0)),
             lambda a: LaplaceBridge(F.softplus(a) + 0.1), torch.tensor([-3.0, 0, 0, 3]).repeat(N, 1), (), (K,)),
        Case("PlackettLuce", lambda: PlackettLuce(2, logits=torch.zeros(K)),
             lambda a: PlackettLuce(2, logits=a), torch.tensor([3.0, 0, 0, 0]).repeat(N, 1), (), (2,)),
    ]


def summary(z: torch.Tensor, case: Case) -> torch.Tensor:
    """One real number per plate element from a latent value (what the toy likelihood sees)."""
    return z.to(torch.get_default_dtype()).reshape(z.shape[: z.dim() - len(case.extra_batch) - len(case.event_shape)]
                                                   + (-1,)).sum(-1)
