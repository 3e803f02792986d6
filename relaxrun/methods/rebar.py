r"""``method=rebar``: REBAR (Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein 2017, "REBAR: Low-variance,
unbiased gradient estimates for discrete latent variable models"), and the machinery ``method=relax``
(:mod:`relaxrun.methods.relax`) shares.

Latent: ``latent_dim`` Bernoulli units, posterior q(b | x) = prod_d Bernoulli(sigmoid(theta_d)) with the
encoder's logits theta ``[B, D]``, prior Bernoulli(``prior_probs``). Sizes, the reported bound (one hard
draw, exact KL; ``metric_kind = "discrete"``), prior samples, reconstructions and IWAE weights come from
:class:`~relaxrun.methods.families.BernoulliLatentMethod`; only the gradient estimator is this file's.

Estimator. f(b) = -log p(x | b) per example (``bernoulli_nll(decode(b), x)``). Per example and unit,
fresh u, v ~ U(0, 1), p = sigmoid(theta):

* z = theta + log u - log(1 - u), the reparameterised Logistic(theta), and b = H(z) = 1[z > 0], so that
  b ~ Bernoulli(p) (Tucker et al. 2017, sec. 2.2);
* z~ ~ p(z | b), the conditional resampling (Tucker et al. 2017, sec. 3 and appendix): u' = v (1 - p)
  when b = 0, u' = (1 - p) + v p when b = 1, z~ = theta + log u' - log(1 - u'). Written with the
  logistic noise e_v = log v - log(1 - v) this is

      z~ = softplus(e_v - log(1 - p))        (b = 1),
      z~ = -softplus(-e_v - log p)           (b = 0),

  the same numbers in a form that stays finite for |theta| in the hundreds; a differentiable function of
  theta with b held fixed (:func:`conditional_logit`);
* sigma_lambda(z) = sigmoid(z / lambda), the relaxed sample at temperature lambda, and the control
  variate c(z) = eta f(sigma_lambda(z)) (RELAX: :meth:`RebarMethod.control` adds a network).

The estimator of d/dtheta E_q[f(b)] (Tucker et al. 2017, eq. 6; Grathwohl et al. 2018, eq. 8) is

    g = [f(b) - c(z~)] d/dtheta log q(b | theta) + d/dtheta c(z) - d/dtheta c(z~),

unbiased for every eta, lambda (and network weights): E[c(z~) d log q(b)] + E[d c(z~)] = d E_b E_z~[c],
which equals d E_z[c(z)], and the reparameterised d c(z) is unbiased for the latter. For Bernoulli logits
d log q(b)/dtheta = b - p. :meth:`RebarMethod._estimate` builds g explicitly: the score term in closed
form (its coefficient keeps the control parameters' gradient, which the variance objective needs),
d c(z) - d c(z~) by one autograd pass to theta. The training loss is

    mean_B [ f(b) + sum_d (stopgrad(g) theta - stopgrad(g theta)) + KL(q || prior) ],

whose value is the Monte Carlo negative ELBO (f of the hard draw + the analytic KL) and whose gradient
is g (+ the exact KL gradient) for the encoder and d f(b) alone for the decoder.

Control parameters: the log-temperature ``log_lambda`` (initialised at log ``tau``; :attr:`tau` reports
exp(log_lambda), so hparams, metrics.json and ``train/tau`` show the learned temperature) and ``eta``
(initialised at ``eta``), one of each for the whole latent layer as in the paper. With
``learn_control: true`` they are trained by their own optimizer ``"control_variate"`` (Adam at ``cv_lr``,
no weight decay; "main" leaves them out) on the single-sample variance objective

    V = mean_{B, D} g^2,        gradient dV/d(log_lambda, eta) through g (second-order autograd),

a Monte Carlo estimate of E|g|^2 = tr Cov(g) + |E g|^2 whose second part no control parameter changes, so
minimising it minimises the variance (Tucker et al. 2017, sec. 3.3; Grathwohl et al. 2018, sec. 3.3).
The papers take the variance of the gradient w.r.t. the distribution's parameters, here the encoder's
weights W, whose estimate is sum_i J_i^T g_i with J_i the Jacobian of example i's logits. This method
takes it of the logit gradient g instead: no pass through the encoder for the objective, no second-order
autograd through it. Since E g does not depend on the control parameters both objectives are the
variance of an unbiased estimator, of g under the identity metric and of the weight gradient under J J^T:
they share the perfect control variate and coincide when J J^T is a multiple of the identity.
:meth:`RebarMethod.fit_control` runs that objective at fixed encoder output and decoder.

The decoder evaluations of the control variate (f(sigma_lambda(z)), f(sigma_lambda(z~))) go through a
copy of the decoder with detached weights in :meth:`RebarMethod.training_step` (the decoder's update is
d f(b) alone, and the second-order graph carries no decoder-weight terms); :meth:`RebarMethod.loss`
(what ``relaxrun-gradcheck`` and the diagnostics call) uses ``decode`` for all of them. One code path,
``_estimate(params, decode, x, decode_cv)``. Three decoder evaluations per input (f(b), and the relaxed
pair in one batched call) and two backward passes.

The ``tau`` argument of :meth:`loss` is ignored (the temperature is the learned lambda), so a run's
temperature schedule does not apply: ``trainer.tau_schedule`` must be ``constant``.

Extras logged as ``method/<key>``: ``tau`` (lambda), ``eta``, ``variance`` (V of the batch), ``f_mean``
(mean f(b)). Without gradients (evaluation under ``torch.no_grad``) :meth:`loss` gives the value terms
only, no estimator and no extras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import ConfigError, finite, positive, require
from ..distributions.binary_concrete import sample_logistic
from .base import MISSING, DiscreteLaw, Terms, adam, bernoulli_nll, register
from .families import BernoulliLatentConfig, BernoulliLatentMethod


def conditional_logit(theta: torch.Tensor, b: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z~ ~ p(z | b) for z ~ Logistic(theta) and b = 1[z > 0], from standard logistic ``noise`` (log v -
    log(1 - v), v ~ U(0, 1)): the truncated logistic by inversion (Tucker et al. 2017, appendix),
    differentiable in ``theta`` with ``b`` fixed. z~ > 0 where b = 1 and z~ < 0 where b = 0."""
    pos = F.softplus(noise - F.logsigmoid(-theta))   # theta + logit((1 - p) + v p)
    neg = -F.softplus(-noise - F.logsigmoid(theta))  # theta + logit(v (1 - p))
    return torch.where(b > 0, pos, neg)


@dataclass
class RebarConfig(BernoulliLatentConfig):
    """Options of ``method=rebar``; defaults and their meaning in ``configs/method/rebar.yaml``."""

    eta: float = MISSING
    learn_control: bool = MISSING
    cv_lr: float = MISSING

    def __post_init__(self):
        super().__post_init__()
        finite("method.eta", self.eta)
        require(isinstance(self.learn_control, bool), "method.learn_control", "true or false", self.learn_control)
        positive("method.cv_lr", self.cv_lr)

    def check_compatible(self, run) -> None:
        if run.trainer.tau_schedule != "constant":
            raise ConfigError(f"method {self.name} learns its temperature (method.tau is only its initial value); "
                              f"trainer.tau_schedule must be constant, got {run.trainer.tau_schedule!r}")


class Estimate(NamedTuple):
    """What :meth:`RebarMethod._estimate` returns: the terms, the estimator g ``[B, D]`` w.r.t. the logits
    (None without gradients) and the per-example f(b) ``[B]``."""

    terms: Terms
    g: torch.Tensor | None
    f: torch.Tensor


@register("rebar")
class RebarMethod(BernoulliLatentMethod):
    """REBAR with a learned temperature and control-variate weight; see the module docstring."""

    Config = RebarConfig
    metric_kind = "discrete"

    def __init__(self, cfg: RebarConfig, temperature=None):
        super().__init__(cfg, temperature)
        self.log_lambda = nn.Parameter(torch.tensor(math.log(cfg.tau)))
        self.eta = nn.Parameter(torch.tensor(float(cfg.eta)))

    # the learned temperature and the control parameters -----------------------------------------
    @property
    def tau(self) -> float:
        """The current (learned) temperature lambda = exp(log_lambda) of the control variate's relaxation."""
        return float(self.log_lambda.detach().exp())

    def control_parameters(self) -> list[nn.Parameter]:
        """The parameters the variance objective trains (all of this method's parameters)."""
        return list(self.parameters())

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """Bernoulli(sigmoid(theta)), the law b = H(z) is drawn from; prior Bernoulli(prior_probs)."""
        return DiscreteLaw("bernoulli", params, torch.tensor(self.prior_logits, dtype=params.dtype,
                                                             device=params.device))

    # the control variate -------------------------------------------------------------------------
    def relax_sample(self, z: torch.Tensor) -> torch.Tensor:
        """sigma_lambda(z) = sigmoid(z / lambda), the relaxed sample."""
        return torch.sigmoid(z * torch.exp(-self.log_lambda))

    def control(self, z: torch.Tensor, decode_cv, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """c(z) = eta f(sigma_lambda(z)) per example, ``[..., B, D] -> [..., B]``, and extras (none here)."""
        return self.eta * bernoulli_nll(decode_cv(self.relax_sample(z)), x), {}

    def _estimate(self, params, decode, x, decode_cv=None, create_graph: bool = False) -> Estimate:
        """One draw per input: the terms, the estimator g w.r.t. the logits and f(b).

        ``decode_cv`` (default ``decode``) evaluates the control variate; ``create_graph`` keeps g
        differentiable w.r.t. the control parameters (for the variance objective).
        """
        decode_cv = decode if decode_cv is None else decode_cv
        theta = params
        with torch.no_grad():
            noise_u = sample_logistic(theta.shape, theta.dtype, theta.device)
            noise_v = sample_logistic(theta.shape, theta.dtype, theta.device)
            b = (theta + noise_u > 0).to(theta.dtype)
        f = bernoulli_nll(decode(b), x)  # [B]; carries the decoder's gradient
        kl = self.exact_kl(theta)
        if not (torch.is_grad_enabled() and theta.requires_grad):  # value only (evaluation)
            return Estimate(Terms((f + kl).mean(), f, kl), None, f)
        z = theta + noise_u
        z_tilde = conditional_logit(theta, b, noise_v)
        c, extras = self.control(torch.stack([z, z_tilde]), decode_cv, x)  # [2, B]
        (dc,) = torch.autograd.grad((c[0] - c[1]).sum(), theta, create_graph=create_graph, allow_unused=True)
        dc = torch.zeros_like(theta) if dc is None else dc
        score = b - torch.sigmoid(theta.detach())  # d log q(b | theta) / d theta
        g = (f.detach() - c[1]).unsqueeze(-1) * score + dc
        if not create_graph:
            g = g.detach()
        surrogate = (g.detach() * theta).sum(-1)
        loss = (f + (surrogate - surrogate.detach()) + kl).mean()
        extras = {"tau": self.log_lambda.detach().exp(), "eta": self.eta.detach().clone(),
                  "variance": self.variance_objective(g).detach(), "f_mean": f.detach().mean(), **extras}
        return Estimate(Terms(loss, f, kl, extras), g, f)

    @staticmethod
    def variance_objective(g: torch.Tensor) -> torch.Tensor:
        """V = mean over examples and units of g^2: the single-sample estimate of E|g|^2 / (B D)."""
        return g.pow(2).mean()

    def loss(self, params, decode, x, tau) -> Terms:
        """The training loss of the module docstring (``tau`` is ignored: lambda is learned)."""
        return self._estimate(params, decode, x).terms

    # the control variate's optimizer and the step ------------------------------------------------
    def configure_optimizers(self, model: nn.Module, optim) -> dict[str, torch.optim.Optimizer]:
        """``"main"``: Adam over the model's parameters; with ``learn_control`` also ``"control_variate"``:
        Adam over :meth:`control_parameters` at ``cv_lr`` without weight decay. The two are disjoint."""
        own = {id(p) for p in self.control_parameters()}
        main, seen = [], set()
        for p in [*model.parameters(), *self.parameters()]:  # the model may hold this method: no duplicates
            if id(p) not in own and id(p) not in seen:
                seen.add(id(p))
                main.append(p)
        opts = {"main": adam(main, optim)}
        if self.cfg.learn_control:
            opts["control_variate"] = adam(self.control_parameters(),
                                           SimpleNamespace(lr=self.cfg.cv_lr, weight_decay=0.0))
        return opts

    def training_step(self, model, x, step, tools) -> Terms:
        """One draw per input; with ``learn_control`` the gradient of V w.r.t. the control parameters
        (``torch.autograd.grad``, at the current parameters) and the VAE's gradient (``backward`` of the
        loss), then a step of ``"control_variate"`` and of ``"main"``."""
        self.temperature.at(step)
        learn = self.cfg.learn_control
        est = self._estimate(model.encoder(x), model.decode, x, _frozen_decoder(model), create_graph=learn)
        tools.phase("forward")
        for opt in tools.optimizers.values():
            opt.zero_grad(set_to_none=True)
        if learn:
            ctrl = tools.params("control_variate")
            grads = torch.autograd.grad(self.variance_objective(est.g), ctrl, allow_unused=True)
            for p, gp in zip(ctrl, grads):
                p.grad = torch.zeros_like(p) if gp is None else gp
        est.terms.loss.backward()
        tools.phase("backward")
        if learn:
            tools.step("control_variate")
        tools.step("main")
        tools.phase("optimizer")
        return est.terms

    def fit_control(self, params: torch.Tensor, decode, x: torch.Tensor, steps: int,
                    lr: float | None = None) -> list[float]:
        """``steps`` Adam steps (at ``lr``, default ``cv_lr``) of the variance objective V on the control
        parameters only, at fixed encoder output ``params`` and decoder; a fresh draw per step. Returns
        V of each step (before its update). Repeating rows of ``params``/``x`` averages over more draws."""
        if not (isinstance(steps, int) and steps >= 0):
            raise ValueError(f"steps must be an integer >= 0; got {steps!r}")
        ctrl = self.control_parameters()
        opt = torch.optim.Adam(ctrl, lr=self.cfg.cv_lr if lr is None else lr)
        theta = params.detach().requires_grad_(True)
        out = []
        with torch.enable_grad():
            for _ in range(steps):
                est = self._estimate(theta, decode, x, create_graph=True)
                v = self.variance_objective(est.g)
                grads = torch.autograd.grad(v, ctrl, allow_unused=True)
                for p, gp in zip(ctrl, grads):
                    p.grad = torch.zeros_like(p) if gp is None else gp
                opt.step()
                out.append(float(v.detach()))
        for p in ctrl:
            p.grad = None
        return out


def _frozen_decoder(model: nn.Module):
    """``model.decode`` through the model's ``decoder`` module with detached weights (no gradient reaches
    them); ``model.decode`` itself when the model has no ``decoder`` module."""
    dec = getattr(model, "decoder", None)
    if not isinstance(dec, nn.Module):
        return model.decode
    weights = {n: p.detach() for n, p in dec.named_parameters()}
    return lambda z: torch.func.functional_call(dec, weights, (z,))
