r"""``method=reinforce``: the score-function estimator (Williams 1992) with a baseline.

Latent (``latent``): ``bernoulli``, ``latent_dim`` units with prior Bernoulli(``prior_probs``), or
``categorical``, ``latent_dim`` variables of ``categories`` classes with a uniform prior (the decoder
sees the flattened one-hot; the 20 x 10 setting of Jang et al. 2017 is
``method.latent=categorical method.latent_dim=20``). Either way the method delegates sizes, the
reported bound, prior samples, reconstructions and IWAE weights to the family of
:mod:`relaxrun.methods.families`; only the gradient estimator is its own.

Estimator. Per input x, M = ``samples`` hard draws b_m ~ q(b | x) (no gradient flows through b),
f_m = -log p(x | b_m). The training loss is

    mean_m f_m  +  mean_m stopgrad(f_m - c_m) log q(b_m | x)  -  stopgrad(same)  +  KL(q || prior),

so its value is the Monte Carlo negative ELBO (mean f + the analytic KL) and its gradient is: the
decoder's from mean_m f_m, the encoder's from the score-function term plus the exact gradient of the
analytic KL. The baseline c_m (``baseline``) never depends on b_m, so the estimator is unbiased:

* ``loo``: c_m = mean of f over the other M - 1 draws of the same input (Kool, van Hoof & Welling
  2019, "Buy 4 REINFORCE samples, get a baseline for free!"); needs ``samples >= 2``. The average of
  the M terms equals 1/(M - 1) sum_m (f_m - mean f) grad log q(b_m).
* ``learned``: an input-dependent baseline in the manner of NVIL (Mnih & Gregor 2014):
  c(x) = a + w . x + w_0, with a running mean a of f over past training batches (decay
  :data:`CENTER_DECAY`; it only centres, so the linear part learns a small residual) and (w, w_0) a
  linear layer 784 -> 1 trained on mean (f - c(x))^2 by its own Adam at ``baseline_lr``. The method
  declares that optimizer in :meth:`ReinforceMethod.configure_optimizers` (``"baseline"``, next to
  ``"main"``, which excludes the baseline's parameters) and steps both in its own
  :meth:`ReinforceMethod.training_step`; the training loop needs no change for it.
* ``none``: c_m = 0, plain REINFORCE (high variance; for comparison).

``tau`` is not used (the estimator has no temperature). Extras logged as ``method/<key>``:
``baseline`` (mean c), ``advantage_std`` (std of f - c over draws and batch), ``f_mean`` (mean f).
Reported bound (``metric_kind = "discrete"``): one hard draw, -log p(x | b) + analytic KL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import ConfigError, at_least, one_of, positive, require
from .base import MISSING, DiscreteLaw, Method, MethodConfig, Terms, adam, bernoulli_nll, categorical_kl_uniform, register
from .families import BernoulliLatentMethod, CategoricalLatentMethod

LATENTS = ("bernoulli", "categorical")
BASELINES = ("loo", "learned", "none")
#: input size of the learned baseline (MNIST pixels, as the VAE's encoder)
PIXELS = 784
#: decay of the running mean of f that centres the learned baseline
CENTER_DECAY = 0.9


@dataclass
class ScoreFunctionConfig(MethodConfig):
    """Options of the score-function methods (``reinforce``, ``vimco``): the latent family and the number
    of draws per input."""

    latent: str = MISSING
    latent_dim: int = MISSING
    categories: int = MISSING
    prior_probs: float = MISSING
    samples: int = MISSING

    def __post_init__(self):
        super().__post_init__()
        one_of("method.latent", self.latent, LATENTS)
        at_least("method.latent_dim", self.latent_dim, 1)
        at_least("method.categories", self.categories, 2)
        require(isinstance(self.prior_probs, (int, float)) and 0 < self.prior_probs < 1, "method.prior_probs",
                "a number in (0, 1)", self.prior_probs)
        at_least("method.samples", self.samples, 1)


@dataclass
class ReinforceConfig(ScoreFunctionConfig):
    """Options of ``method=reinforce``; defaults and their meaning in ``configs/method/reinforce.yaml``."""

    baseline: str = MISSING
    baseline_lr: float = MISSING

    def __post_init__(self):
        super().__post_init__()
        one_of("method.baseline", self.baseline, BASELINES)
        if self.baseline == "loo" and self.samples < 2:
            raise ConfigError(f"method.baseline=loo needs method.samples >= 2 (the baseline of a draw is the mean "
                              f"of the other draws of the same input); got method.samples={self.samples}. "
                              f"Use method.samples=2 or more, or method.baseline=learned or none")
        positive("method.baseline_lr", self.baseline_lr)


class ScoreFunctionMethod(Method):
    """Shared parts of the score-function methods: ``samples`` hard draws per input from a Bernoulli or a
    categorical family (``latent``), their log q (with gradient) and log prior, and everything else
    (sizes, bound, prior samples, reconstructions, IWAE weights) delegated to the family."""

    metric_kind = "discrete"

    def __init__(self, cfg: ScoreFunctionConfig, temperature=None):
        super().__init__(cfg, temperature)
        family = BernoulliLatentMethod if cfg.latent == "bernoulli" else CategoricalLatentMethod
        #: the latent family (no parameters): sizes, bound, prior samples, reconstructions, IWAE weights
        self.family = family(cfg, self.temperature)

    # sizes and the latent family ----------------------------------------------------------------
    @property
    def categorical(self) -> bool:
        return self.cfg.latent == "categorical"

    @property
    def latent_type(self) -> str:
        return self.family.latent_type

    @property
    def param_dim(self) -> int:
        return self.family.param_dim

    @property
    def latent_dim(self) -> int:
        return self.family.latent_dim

    def discrete_law(self, params, tau) -> DiscreteLaw:
        """The law the draws come from: Bernoulli(sigmoid(l)) with prior Bernoulli(prior_probs), or
        Cat(softmax(l_n)) per variable with a uniform prior."""
        if self.categorical:
            return DiscreteLaw("categorical", self.family.split(params),
                               torch.zeros((), dtype=params.dtype, device=params.device))
        return DiscreteLaw("bernoulli", params, torch.tensor(self.family.prior_logits, dtype=params.dtype,
                                                             device=params.device))

    def bound(self, params, decode, x, tau) -> Terms:
        return self.family.bound(params, decode, x, tau)

    def prior_sample(self, n, device, dtype=torch.float32):
        return self.family.prior_sample(n, device, dtype)

    def reconstruct_input(self, params, tau):
        return self.family.reconstruct_input(params, tau)

    def iwae_log_weights(self, params, decode, x, tau, k):
        return self.family.iwae_log_weights(params, decode, x, tau, k)

    def _draws(self, params: torch.Tensor):
        """M hard draws: (decoder inputs ``[M, B, latent_dim]``, log q of each ``[M, B]``, KL ``[B]``)."""
        m = self.cfg.samples
        if self.categorical:
            logits = self.family.split(params)
            with torch.no_grad():
                c = self.family.hard_sample(logits.detach(), (m,))
            log_q = (c * torch.log_softmax(logits, -1)).sum((-1, -2))
            return c.flatten(-2), log_q, categorical_kl_uniform(logits).sum(-1)
        with torch.no_grad():
            b = torch.bernoulli(torch.sigmoid(params.detach()).expand(m, *params.shape))
        log_q = (b * F.logsigmoid(params) + (1 - b) * F.logsigmoid(-params)).sum(-1)
        return b, log_q, self.family.exact_kl(params)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of decoder inputs ``[..., latent_dim]`` (0/1 units or flattened one-hots) under the prior."""
        if self.categorical:
            n, k = self.cfg.latent_dim, self.cfg.categories
            return z.new_full(z.shape[:-1], -n * math.log(k))
        lp = torch.tensor(self.family.prior_logits, dtype=z.dtype, device=z.device)
        return (z * F.logsigmoid(lp) + (1 - z) * F.logsigmoid(-lp)).sum(-1)


@register("reinforce")
class ReinforceMethod(ScoreFunctionMethod):
    """Score-function estimator with a leave-one-out, learned or no baseline; see the module docstring."""

    Config = ReinforceConfig

    def __init__(self, cfg: ReinforceConfig, temperature=None):
        super().__init__(cfg, temperature)
        self.baseline_net: nn.Linear | None = None
        if cfg.baseline == "learned":
            self.baseline_net = nn.Linear(PIXELS, 1)
            nn.init.zeros_(self.baseline_net.weight)
            nn.init.zeros_(self.baseline_net.bias)
            # running mean of f (bias-corrected: ``center_sum / center_weight``), checkpointed with the model
            self.register_buffer("center_sum", torch.zeros(()))
            self.register_buffer("center_weight", torch.zeros(()))

    # the estimator ------------------------------------------------------------------------------
    def score_term(self, advantage: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """Per-example surrogate ``[B]`` whose gradient is the score-function estimate: the mean over the
        M draws of ``advantage * log_q`` (both ``[M, B]``, ``advantage`` without gradient)."""
        return (advantage * log_q).mean(0)

    def _baseline(self, f: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(baseline ``[M, B]`` without gradient, the learned baseline's prediction ``[B]`` with gradient or None)."""
        f = f.detach()
        if self.cfg.baseline == "loo":
            return (f.sum(0, keepdim=True) - f) / (f.shape[0] - 1), None
        if self.cfg.baseline == "none":
            return torch.zeros_like(f), None
        if x.shape[-1] != self.baseline_net.in_features:
            raise NotImplementedError(f"the learned baseline reads inputs of {self.baseline_net.in_features} "
                                      f"pixels, these have {x.shape[-1]}")
        center = self.center_sum / self.center_weight.clamp_min(1e-12)  # 0 before the first step; no host sync
        predicted = center + self.baseline_net(x).squeeze(-1)
        return predicted.detach().expand_as(f), predicted

    def _estimate(self, params, decode, x):
        """(terms, the learned baseline's prediction or None, f ``[M, B]``)."""
        z, log_q, kl = self._draws(params)
        f = bernoulli_nll(decode(z), x)  # [M, B]; carries the decoder's gradient
        baseline, predicted = self._baseline(f, x)
        advantage = f.detach() - baseline
        surrogate = self.score_term(advantage, log_q)
        recon = f.mean(0)
        loss = (recon + (surrogate - surrogate.detach()) + kl).mean()
        extras = {"baseline": baseline.mean(), "advantage_std": advantage.std(correction=0),
                  "f_mean": f.detach().mean()}
        return Terms(loss, recon, kl, extras), predicted, f

    def loss(self, params, decode, x, tau) -> Terms:
        return self._estimate(params, decode, x)[0]

    # the learned baseline's optimizer and step --------------------------------------------------
    def configure_optimizers(self, model: nn.Module, optim) -> dict[str, torch.optim.Optimizer]:
        """``{"main": Adam}`` as usual; with ``baseline=learned`` also ``"baseline"``: Adam over the
        baseline's linear layer at ``baseline_lr``, whose parameters "main" leaves out."""
        if self.baseline_net is None:
            return super().configure_optimizers(model, optim)
        own = {id(p) for p in self.baseline_net.parameters()}
        main, seen = [], set()
        for p in [*model.parameters(), *self.parameters()]:  # the model may hold this method: no duplicates
            if id(p) not in own and id(p) not in seen:
                seen.add(id(p))
                main.append(p)
        return {"main": adam(main, optim),
                "baseline": adam(self.baseline_net.parameters(), optim, lr=self.cfg.baseline_lr)}

    def training_step(self, model, x, step, tools) -> Terms:
        """With ``baseline=learned``: one forward pass, one backward pass of the sum of the VAE loss and
        the baseline's regression loss mean (f - c(x))^2 (their parameters are disjoint: the VAE loss
        sees c(x) only through stopgrad, the regression sees f only through stopgrad), then a step of
        each optimizer and an update of the running mean. Otherwise the default step."""
        if self.baseline_net is None:
            return super().training_step(model, x, step, tools)
        self.temperature.at(step)
        terms, predicted, f = self._estimate(model.encoder(x), model.decode, x)
        baseline_loss = (f.detach() - predicted).pow(2).mean()
        tools.phase("forward")
        for name in ("main", "baseline"):
            tools.optimizers[name].zero_grad(set_to_none=True)
        (terms.loss + baseline_loss).backward()
        tools.phase("backward")
        tools.step("main")
        tools.step("baseline")
        with torch.no_grad():
            self.center_sum.mul_(CENTER_DECAY).add_((1 - CENTER_DECAY) * f.mean())
            self.center_weight.mul_(CENTER_DECAY).add_(1 - CENTER_DECAY)
        tools.phase("optimizer")
        return terms
