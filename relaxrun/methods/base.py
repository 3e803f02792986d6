"""The method interface: how a relaxation / gradient estimator plugs into the training loop.

A *method* owns the latent variable: its posterior family, its prior, its KL term, and how a
training loss is formed. The loop never asks a method for "a sample z"; it asks for

* :meth:`Method.loss` -- the training objective of a batch, given the encoder output and the
  decoder. Reparameterised relaxations return the relaxed negative ELBO; straight-through,
  score-function (REINFORCE with baselines, several samples per input) and antithetic estimators
  (two decoder calls) build whatever surrogate they need inside this one call.
* :meth:`Method.bound` -- per-example terms of a *valid* bound on -log p(x) for the model the
  method trains (the number users compare). For discrete latents this is the hard-sample
  negative ELBO with the exact KL; ``metric_kind`` names what it is.
* :meth:`Method.relaxed` -- per-example terms of the relaxed objective, evaluated on test data
  next to the bound so the gap is visible.
* :meth:`Method.prior_sample` -- decoder inputs drawn from the prior (image grids of samples).
* :meth:`Method.reconstruct_input` -- a decoder input for reconstructions (hard where the latent
  is discrete).

Writing a new method
--------------------
1. Subclass :class:`MethodConfig` (a dataclass; every option with a default; range checks in
   ``__post_init__`` raising :class:`relaxrun.config.ConfigError` via ``config.require``/``positive``).
   ``tau`` interpolates the top-level ``tau`` in the YAML (``tau: ${tau}``).
2. Subclass :class:`Method`, set ``Config`` and ``metric_kind``, implement ``param_dim``,
   ``latent_dim`` and the methods below, and decorate the class with ``@register("<name>")``.
   Modules in ``relaxrun/methods/`` are imported automatically.
3. Add ``configs/method/<name>.yaml`` with ``name: <name>`` and the options.

Shapes: ``params`` is the encoder output ``[B, param_dim]``; ``x`` is ``[B, 784]`` in [0, 1];
``decode(z)`` maps ``[..., latent_dim]`` to Bernoulli logits ``[..., 784]``. Term tensors are
per-example ``[B]`` in nats (summed over pixels / latent units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import positive, one_of
from ..distributions.concrete import log_softmax

Decoder = Callable[[torch.Tensor], torch.Tensor]

METHODS: dict[str, type["Method"]] = {}


def register(name: str):
    """Class decorator adding a Method subclass to the registry under ``name``."""

    def wrap(cls):
        if name in METHODS and METHODS[name] is not cls:
            raise RuntimeError(f"method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


class Terms(NamedTuple):
    """Per-example reconstruction NLL and KL (or KL estimate) in nats; ``loss`` is what to minimise.

    ``loss`` is a scalar (batch mean of recon + kl for reparameterised methods; a surrogate
    whose gradient is the estimator's for the others). ``recon``/``kl`` are ``[B]`` values for
    logging and reporting.
    """

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


class DiscreteLaw(NamedTuple):
    """The discrete latent a method's gradient is judged against (``relaxrun-gradcheck``).

    * ``kind == "bernoulli"``: D independent units, ``logits`` ``[..., D]``; the discrete model
      feeds the decoder b in {0, 1}^D.
    * ``kind == "categorical"``: N independent K-way variables, ``logits`` ``[..., N, K]``
      (unnormalised log-probabilities); the discrete model feeds the decoder the flattened one-hot
      ``[..., N*K]``.

    ``logits`` must be a differentiable function of the encoder output ``params``;
    ``prior_logits`` (broadcastable to ``logits``) are the prior of the same discrete model.
    """

    kind: str
    logits: torch.Tensor
    prior_logits: torch.Tensor


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z) of independent Bernoulli pixels, summed over the last dim: ``[..., D] -> [...]``."""
    logits, x = torch.broadcast_tensors(logits, x)
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def bernoulli_kl(logits_q: torch.Tensor, logits_p: torch.Tensor | float) -> torch.Tensor:
    """KL(Bern(sigmoid(lq)) || Bern(sigmoid(lp))) elementwise, from logits (stable for |l| large)."""
    logits_p = torch.as_tensor(logits_p, dtype=logits_q.dtype, device=logits_q.device)
    q = torch.sigmoid(logits_q)
    return q * (F.logsigmoid(logits_q) - F.logsigmoid(logits_p)) + (1 - q) * (
        F.logsigmoid(-logits_q) - F.logsigmoid(-logits_p)
    )


def categorical_kl_uniform(logits_q: torch.Tensor) -> torch.Tensor:
    """KL(Cat(softmax(l)) || Uniform(K)) over the last dim: ``[..., K] -> [...]``."""
    log_q = log_softmax(logits_q)
    return (log_q.exp() * (log_q + math.log(logits_q.shape[-1]))).sum(-1)


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Forward value ``hard``, gradient of ``soft`` (hard + soft - stopgrad(soft))."""
    return hard + (soft - soft.detach())


@dataclass
class MethodConfig:
    name: str = "?"
    tau: float = 1.0

    def __post_init__(self):
        positive("method.tau", self.tau)

    def check_compatible(self, run) -> None:  # pragma: no cover - hook for conflicting options
        """Raise ConfigError when this method cannot run with the rest of the config ``run``."""


class Method(nn.Module):
    """Base class; see the module docstring. May own learnable parameters (trained with the VAE)."""

    Config = MethodConfig
    name = "?"
    #: what :meth:`bound` is: "discrete" (hard samples, exact KL), "mixed" (atoms + density, valid ELBO),
    #: "relaxed" (ELBO of the relaxed-latent model), "approximate-prior" (see the method's docs)
    metric_kind = "discrete"
    #: human-readable latent description for docs and hparams
    latent_type = "?"

    def __init__(self, cfg: MethodConfig):
        super().__init__()
        self.cfg = cfg

    # sizes ---------------------------------------------------------------------------------
    @property
    def param_dim(self) -> int:
        """Encoder output size."""
        raise NotImplementedError

    @property
    def latent_dim(self) -> int:
        """Decoder input size (flattened latent)."""
        raise NotImplementedError

    # training / evaluation -----------------------------------------------------------------
    def loss(self, params: torch.Tensor, decode: Decoder, x: torch.Tensor, tau: float) -> Terms:
        raise NotImplementedError

    def bound(self, params: torch.Tensor, decode: Decoder, x: torch.Tensor, tau: float) -> Terms:
        raise NotImplementedError

    def relaxed(self, params: torch.Tensor, decode: Decoder, x: torch.Tensor, tau: float) -> Terms:
        """Relaxed objective on evaluation data; by default the training loss terms."""
        return self.loss(params, decode, x, tau)

    def prior_sample(self, n: int, device, dtype=torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def reconstruct_input(self, params: torch.Tensor, tau: float) -> torch.Tensor:
        raise NotImplementedError

    def iwae_log_weights(self, params: torch.Tensor, decode: Decoder, x: torch.Tensor, tau: float,
                         k: int) -> torch.Tensor:
        """``[k, B]`` log p(x, z_i) - log q(z_i | x) for k posterior samples (IWAE), if supported."""
        raise NotImplementedError(f"method {self.name} has no importance-weighted bound")

    def discrete_law(self, params: torch.Tensor, tau: float) -> DiscreteLaw:
        """The discrete latent model this method's estimator stands in for, if one can be enumerated.

        ``relaxrun-gradcheck`` compares the gradient of :meth:`loss` w.r.t. ``params`` with the exact
        gradient of the discrete objective E_{b ~ q}[-log p(x | b)] (+ KL(q || prior) for the
        whole negative ELBO), computed by summing over all 2^D / K^N configurations of b.
        Relaxations return the law their hard limit samples (e.g. the law of round(z)), so
        their bias w.r.t. the discrete model is what gets measured.

        Raise ``NotImplementedError`` with the reason when there is no such independent discrete
        law (gradcheck then reports the method as skipped with that reason); this default does.
        """
        raise NotImplementedError(f"method {self.name} defines no enumerable discrete counterpart "
                                  f"(Method.discrete_law)")

    def hparams(self) -> dict:
        """Flat dict of this method's options for the TensorBoard hparams table."""
        return {f"method.{k}": v for k, v in vars(self.cfg).items() if isinstance(v, (int, float, str, bool))}
