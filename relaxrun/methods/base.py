"""The method interface: a relaxation / gradient estimator owns its whole training step.

Where things go
---------------
A new estimator is **one file** ``relaxrun/methods/<name>.py`` (a ``@register("<name>")`` class)
plus **one YAML** ``configs/method/<name>.yaml`` (its options with their defaults and a comment
each). Nothing else changes: the loop (``relaxrun/train.py``) never branches on a method's name or
kind, and the model (``relaxrun/models.py``) knows sizes only. Shared latent families (D Bernoulli
units, N K-way categoricals) live in ``relaxrun/methods/families.py``; the distributions in
``relaxrun/distributions/``.

What the loop asks of a method
------------------------------
* :meth:`Method.configure_optimizers` -- once, before training: a dict of named optimizers. The
  default is ``{"main": Adam}`` over the VAE's and the method's own parameters. A method may put
  its own parameters in a second parameter group with their own learning rate, or return a second
  optimizer stepped on a different objective (RELAX's control variate). Every optimizer is
  checkpointed by its name, so resuming is exact.
* :meth:`Method.training_step` -- every step: the surrogate loss of the batch, its backward pass
  and the optimizer steps (the default: :meth:`loss`, then ``tools.minimize`` on ``"main"``).
  It returns :class:`Terms`: the loss and per-example recon / KL for the progress log, and
  ``extras``, scalar tensors (baseline value, control-variate weight, effective temperature ...)
  that the loop averages over ``trainer.log_every`` steps and logs as ``method/<key>`` in
  TensorBoard. Extras stay on the device: the loop reads them in the one host sync per log
  interval that it already makes, so they cost no extra synchronisation.
* ``self.temperature`` (:class:`Temperature`) -- the run's temperature schedule, shared: the
  training step sets it (``self.temperature.at(step)``), and ``prior_sample``, image grids,
  hparams, evaluation and metrics.json all read ``self.tau``, its current value. A method that
  learns its temperature (REBAR) overrides the ``tau`` property.
* For evaluation and images: :meth:`bound` (per-example terms of a *valid* bound on -log p(x);
  ``metric_kind`` names what it is), :meth:`relaxed` (the relaxed objective next to it),
  :meth:`iwae_log_weights`, :meth:`prior_sample`, :meth:`reconstruct_input`; for
  ``relaxrun-gradcheck``: :meth:`discrete_law`.

Shapes: ``params`` is the encoder output ``[B, param_dim]``; ``x`` is ``[B, 784]`` in [0, 1];
``decode(z)`` maps ``[..., latent_dim]`` to Bernoulli logits ``[..., 784]``. Term tensors are
per-example ``[B]`` in nats (summed over pixels / latent units).

Worked example: a new estimator in one file
-------------------------------------------
::

    # relaxrun/methods/my_st.py
    @dataclass
    class MySTConfig(BernoulliLatentConfig):      # latent_dim, prior_probs come with the family
        slope: float = MISSING                    # typed here, default in the YAML

        def __post_init__(self):
            super().__post_init__()
            positive("method.slope", self.slope)

    @register("my_st")
    class MyST(BernoulliLatentMethod):
        Config = MySTConfig

        def loss(self, params, decode, x, tau):
            p = torch.sigmoid(self.cfg.slope * params)
            z = straight_through(torch.bernoulli(p.detach()), p)
            recon = bernoulli_nll(decode(z), x)
            kl = self.exact_kl(params)
            return Terms((recon + kl).mean(), recon, kl, extras={"mean_p": p.detach().mean()})

    # configs/method/my_st.yaml: every option, its default and what it means
    name: my_st
    tau: ${relaxrun.default:${tau},1.0}           # not used by this method
    latent_dim: 200                               # Bernoulli units
    prior_probs: 0.5
    slope: 1.0                                    # scale of the logits in the surrogate

``bound``, ``prior_sample``, ``iwae_log_weights`` and ``discrete_law`` come from the Bernoulli
family. The contract test (tests/test_method_contract.py) picks the new method up by itself.

Own optimizers: a RELAX-style method
------------------------------------
A control-variate estimator trains its own parameters (a network c_phi, a log-temperature) on a
different objective, the variance of the encoder gradient (Grathwohl et al. 2018, sec. 3.3). It
declares a second optimizer and writes its own step (a sketch; the full methods are
``relaxrun/methods/rebar.py`` and ``relax.py``)::

    def configure_optimizers(self, model, optim):
        cv = list(self.control_variate.parameters()) + [self.log_tau]
        return {"main": adam(model.parameters(), optim),
                "control_variate": adam(cv, optim, lr=self.cfg.cv_lr)}

    def training_step(self, model, x, step, tools):
        params = model.encoder(x)
        terms = self.loss(params, model.decode, x, self.tau)   # surrogate with c_phi inside
        enc = list(model.encoder.parameters())
        g = torch.autograd.grad(terms.loss, enc, create_graph=True)   # the estimator itself
        variance = sum((gi ** 2).sum() for gi in g)                 # single-sample variance
        cv = tools.optimizers["control_variate"]
        cv.zero_grad(set_to_none=True)
        phi_grads = torch.autograd.grad(variance, [p for grp in cv.param_groups for p in grp["params"]])
        ...assign phi_grads, then tools.step("control_variate")
        tools.minimize(terms.loss)                                  # VAE step on "main"
        return terms._replace(extras={"tau": variance.new_tensor(self.tau), "variance": variance.detach()})

The loop checkpoints both optimizers and logs the extras; train.py does not change.

Writing a new method, the checklist
-----------------------------------
1. Subclass :class:`MethodConfig` (a dataclass; types and range checks in ``__post_init__``
   raising :class:`relaxrun.checks.ConfigError` via ``checks.require``/``positive``/...).
2. Subclass :class:`Method` (or a family in ``families.py``), set ``Config`` and ``metric_kind``,
   implement ``param_dim``, ``latent_dim`` and ``loss`` / ``bound`` / ``prior_sample`` /
   ``reconstruct_input``; override ``training_step`` / ``configure_optimizers`` only when the
   default (one loss, one Adam) does not fit. Decorate the class with ``@register("<name>")``.
3. Add ``configs/method/<name>.yaml`` with ``name: <name>``, ``tau``, and every option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import ConfigError, positive
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
    """What a step or an evaluation returns, in nats.

    ``loss`` is a scalar to minimise (batch mean of recon + kl for reparameterised methods; a
    surrogate whose gradient is the estimator's for the others). ``recon``/``kl`` are per-example
    ``[B]`` values for logging and reporting. ``extras`` maps names to scalar tensors the method
    wants logged (``method/<name>`` in TensorBoard, averaged over ``trainer.log_every`` steps); the
    keys must be the same at every step of a run.
    """

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    extras: Mapping[str, torch.Tensor] = MappingProxyType({})


class DiscreteLaw(NamedTuple):
    """The discrete latent a method's gradient is judged against (``relaxrun-gradcheck``).

    * ``kind == "bernoulli"``: D independent units, ``logits`` ``[..., D]``; the discrete model
      feeds the decoder b in {0, 1}^D.
    * ``kind == "categorical"``: N independent K-way variables, ``logits`` ``[..., N, K]``
      (unnormalised log-probabilities); the discrete model feeds the decoder the flattened one-hot
      ``[..., N*K]``.
    * ``kind == "count"``: N independent variables over K real support values, ``logits``
      ``[..., N, K]`` (log-probabilities of the K points, normalised or not); the discrete model
      feeds the decoder the N values themselves ``[..., N]`` (not one-hots). ``values`` are the
      support values, ``[K]`` (shared) or ``[N, K]``, constants; None means the counts 0..K-1.

    ``logits`` must be a differentiable function of the encoder output ``params``;
    ``prior_logits`` (broadcastable to ``logits``) are the prior of the same discrete model.
    ``values`` is used by ``"count"`` only (positional construction with three fields still works).
    """

    kind: str
    logits: torch.Tensor
    prior_logits: torch.Tensor
    values: torch.Tensor | None = None


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z) of independent Bernoulli pixels, summed over the last dim: ``[..., D] -> [...]``."""
    logits, x = torch.broadcast_tensors(logits, x)
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


#: rows (samples x images) decoded per matrix product by :func:`decoded_log_likelihood`: large enough
#: that the decoder's products run at the GEMM rate, small enough (8 MB of float32 logits at 784
#: pixels) that the elementwise passes over the logits that follow stay in the CPU's cache
DECODE_ROWS = 2560


def decoded_log_likelihood(decode: Decoder, z: torch.Tensor, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """log p(x | z) = -:func:`bernoulli_nll` of ``decode(z)`` for many latent draws, for evaluation
    (the IWAE bound): ``z`` ``[S, B, latent]``, ``x`` ``[B, D]`` -> ``[S, B]``.

    The S draws are decoded ``rows // B`` at a time (``rows``: :data:`DECODE_ROWS` on the CPU, all S
    at once on a GPU), one matrix product per decoder layer, and the per-pixel term is computed in place on the logits
    buffer, with the value of ``binary_cross_entropy_with_logits``: for logit l, target x in [0, 1],

        -log p(x | l) = relu(l) - x l + log(1 + exp(-|l|)) = |l| / 2 + (1/2 - x) l - log sigmoid(|l|),

    with sigmoid(|l|) in [1/2, 1): every term finite for any finite l, and the transcendental part
    two vectorised passes (torch's CPU log1p, which softplus and binary_cross_entropy_with_logits
    use, is scalar code, about 15x the cost of its vectorised log). The two forms differ by at most
    one float32 rounding of sigmoid(|l|) near 1, 6e-8 nats per pixel. With autograd recording (a
    caller that differentiates), this is -:func:`bernoulli_nll` of ``decode(z)``, unchanged."""
    if torch.is_grad_enabled():
        return -bernoulli_nll(decode(z), x)
    S, B = z.shape[0], z.shape[1]
    half_minus_x = 0.5 - x  # [B, D]
    out = []
    if rows is None:  # a GPU has no cache to keep the logits in, and wants few, large launches
        rows = DECODE_ROWS if z.device.type == "cpu" else S * B
    step = max(1, rows // max(B, 1))
    for j in range(0, S, step):
        zb = z[j:j + step]
        logits = decode(zb.reshape(-1, zb.shape[-1]))  # [s B, D]: one matrix product per layer
        if logits._base is not None or logits.data_ptr() == zb.data_ptr():
            logits = logits.clone()  # a view (e.g. an identity decoder): not ours to overwrite
        logits = logits.view(zb.shape[0], B, -1)
        if logits.dtype != half_minus_x.dtype:
            half_minus_x = half_minus_x.to(logits.dtype)
        e = logits.abs()
        logits.mul_(half_minus_x).add_(e, alpha=0.5)  # relu(l) - x l
        logits.sub_(e.sigmoid_().log_())  # + log(1 + exp(-|l|)) = -log sigmoid(|l|), sigmoid(|l|) in [1/2, 1)
        out.append(logits.sum(-1).neg_())
    return out[0] if len(out) == 1 else torch.cat(out, 0)


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


MISSING = "???"  # omegaconf's marker of a value the YAML must give


@dataclass
class MethodConfig:
    """Options every method has. Defaults live in ``configs/method/<name>.yaml`` (one source); the
    dataclass types and range-checks them. Build one with :func:`relaxrun.config.method_options`."""

    name: str = MISSING
    tau: float = MISSING

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) == MISSING:
                raise ConfigError(f"method.{f.name} has no value; give it in configs/method/{self.name}.yaml "
                                  f"or as method.{f.name}=...")
        positive("method.tau", self.tau)

    def check_compatible(self, run) -> None:  # pragma: no cover - hook for conflicting options
        """Raise ConfigError when this method cannot run with the rest of the config ``run``."""


class Temperature:
    """The run's temperature tau_t, one object shared by everything that reads it.

    ``constant``: tau_t = tau0. ``exponential``: tau_t = max(tau_min, tau0 * exp(-rate * t))
    (Jang et al. 2017, sec. 4). :meth:`at` moves it to step t (the training step calls it) and
    returns the value; ``value`` is the current one, which prior samples, image grids, hparams,
    evaluation and metrics.json read, so they all report the temperature the model was trained at.
    """

    def __init__(self, tau0: float, schedule: str = "constant", tau_min: float = 0.0, rate: float = 0.0):
        self.tau0, self.schedule, self.tau_min, self.rate = float(tau0), schedule, float(tau_min), float(rate)
        self.value = self.tau0

    @classmethod
    def from_trainer(cls, tau0: float, trainer) -> "Temperature":
        """From ``trainer.tau_schedule``, ``trainer.tau_min`` and ``trainer.tau_rate``."""
        return cls(tau0, trainer.tau_schedule, trainer.tau_min, trainer.tau_rate)

    def value_at(self, step: int) -> float:
        if self.schedule == "constant":
            return self.tau0
        return max(self.tau_min, self.tau0 * math.exp(-self.rate * step))

    def at(self, step: int) -> float:
        self.value = self.value_at(step)
        return self.value


def adam(params, optim, lr: float | None = None) -> torch.optim.Adam:
    """Adam with ``optim.lr`` (or ``lr``) and ``optim.weight_decay``, on torch's fused kernel where this
    torch and device have one (CPU from torch 2.4, CUDA): the same update rule in one pass over each
    parameter instead of several, about 3x faster per step on the default model on a 2-core CPU.
    ``params`` may be a list of tensors or of parameter groups (dicts with their own ``lr``)."""
    params = list(params)
    kwargs = {"lr": optim.lr if lr is None else lr, "weight_decay": optim.weight_decay}
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # older torch or a device without the fused kernel
        return torch.optim.Adam(params, **kwargs)


def _no_phase(name: str) -> None:
    return None


class StepTools:
    """What the loop hands a training step: the optimizers :meth:`Method.configure_optimizers`
    built (by name), the gradient-norm clip, and ``phase``, a hook the step calls after its
    ``"forward"``, ``"backward"`` and ``"optimizer"`` parts (a no-op in training; the benchmark
    times the real step with it)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], grad_clip: float = 0.0,
                 phase: Callable[[str], None] = _no_phase):
        self.optimizers = optimizers
        self.grad_clip = grad_clip
        self.phase = phase
        self._params = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in optimizers.items()}

    def params(self, name: str = "main") -> list[torch.Tensor]:
        return self._params[name]

    def step(self, name: str = "main") -> None:
        """Clip (``trainer.grad_clip``) the gradients already in optimizer ``name``'s parameters, step it."""
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self._params[name], self.grad_clip)
        self.optimizers[name].step()

    def minimize(self, loss: torch.Tensor, name: str = "main") -> None:
        """zero_grad, ``loss.backward()``, clip and step optimizer ``name``."""
        self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        self.phase("backward")
        self.step(name)
        self.phase("optimizer")


#: the kinds of bound a method may report (:attr:`Method.metric_kind`)
BOUND_KINDS = ("discrete", "mixed", "relaxed", "approximate-prior")


class Method(nn.Module):
    """Base class; see the module docstring. May own learnable parameters (trained with the VAE)."""

    Config = MethodConfig
    name = "?"
    #: what :meth:`bound` is: "discrete" (hard samples, exact KL), "mixed" (atoms + density, valid ELBO),
    #: "relaxed" (ELBO of the relaxed-latent model), "approximate-prior" (see the method's docs)
    metric_kind = "discrete"
    #: human-readable latent description for docs and hparams
    latent_type = "?"

    def __init__(self, cfg: MethodConfig, temperature: Temperature | None = None):
        super().__init__()
        self.cfg = cfg
        self.temperature = temperature if temperature is not None else Temperature(cfg.tau)

    @property
    def tau(self) -> float:
        """The current temperature (see :class:`Temperature`)."""
        return self.temperature.value

    # sizes ---------------------------------------------------------------------------------
    @property
    def param_dim(self) -> int:
        """Encoder output size."""
        raise NotImplementedError

    @property
    def latent_dim(self) -> int:
        """Decoder input size (flattened latent)."""
        raise NotImplementedError

    # the training step ---------------------------------------------------------------------
    def configure_optimizers(self, model: nn.Module, optim) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers; by default ``{"main": Adam}`` over the model's and this method's parameters."""
        return {"main": adam([*model.parameters(), *self.parameters()], optim)}

    def training_step(self, model: nn.Module, x: torch.Tensor, step: int, tools: StepTools) -> Terms:
        """One optimisation step on batch ``x`` at step ``step`` (0-based); returns its terms.

        Default: tau_t from the schedule, :meth:`loss` of the batch, one backward pass and one step
        of ``"main"``. Override for estimators with several objectives or optimizers.
        """
        tau = self.temperature.at(step)
        terms = self.loss(model.encoder(x), model.decode, x, tau)
        tools.phase("forward")
        tools.minimize(terms.loss)
        return terms

    # training / evaluation terms -----------------------------------------------------------
    def loss(self, params: torch.Tensor, decode: Decoder, x: torch.Tensor, tau: float) -> Terms:
        raise NotImplementedError

    def bound(self, params: torch.Tensor, decode: Decoder, x: torch.Tensor, tau: float) -> Terms:
        raise NotImplementedError

    def relaxed(self, params: torch.Tensor, decode: Decoder, x: torch.Tensor, tau: float) -> Terms:
        """Relaxed objective on evaluation data; by default the training loss terms."""
        return self.loss(params, decode, x, tau)

    def prior_sample(self, n: int, device, dtype=torch.float32) -> torch.Tensor:
        """``[n, latent_dim]`` decoder inputs from the prior, at the current temperature ``self.tau``."""
        raise NotImplementedError

    def reconstruct_input(self, params: torch.Tensor, tau: float) -> torch.Tensor:
        raise NotImplementedError

    def iwae_log_weights(self, params: torch.Tensor, decode: Decoder, x: torch.Tensor, tau: float,
                         k: int) -> torch.Tensor:
        """``[k, B]`` log p(x, z_i) - log q(z_i | x) for k posterior samples (IWAE), if supported."""
        raise NotImplementedError(f"method {self.name} has no importance-weighted bound")

    def objective_kind(self) -> str:
        """What :meth:`relaxed` is (``test_relaxed_objective_kind`` in metrics.json): by default
        ``"training-loss"``, the method's training objective on evaluation data; VIMCO: ``"iwae-<k>"``."""
        return "training-loss"

    def estimand(self) -> str:
        """What the gradient of :meth:`loss` estimates, for ``relaxrun-gradcheck``: ``"elbo"`` (the default:
        the discrete negative ELBO, or E_q[f] alone on gradcheck's expectation problems) or ``"iwae-<k>"``
        (the k-sample importance-weighted negative bound of the discrete model, VIMCO's objective)."""
        return "elbo"

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
