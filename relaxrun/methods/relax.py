r"""``method=relax``: RELAX for Bernoulli latents (Grathwohl, Choi, Wu, Roeder & Duvenaud 2018,
"Backpropagation through the Void: Optimizing control variates for black-box gradient estimation",
sec. 3.2 and the discrete VAE of sec. 6).

REBAR (:mod:`relaxrun.methods.rebar`, whose machinery this method reuses: the draws z, b = H(z), the
conditional resampling z~ ~ p(z | b), the estimator, the loss, the training step, ``fit_control``) with a
free-form control variate

    c_phi(z) = eta f(sigma_lambda(z)) + r_rho(sigma_lambda(z)),

and the same estimator, unbiased for every phi = (lambda, eta, rho):

    g = [f(b) - c_phi(z~)] d/dtheta log q(b | theta) + d/dtheta c_phi(z) - d/dtheta c_phi(z~).

The paper writes c_phi(z) = f(sigma_lambda(z)) + r_rho(z); here eta (learned, initialised at ``eta``)
weighs the relaxed term as in REBAR, so ``eta: 1.0`` starts from the paper's form. r_rho is an MLP
R^D -> R (hidden sizes ``cv_hidden``, tanh, whose second derivative is not zero, as the variance objective
differentiates r's gradient; ``cv_hidden: []`` is a linear r). It reads the relaxed sample
sigma_lambda(z) in (0, 1)^D -- the decoder's input in the REBAR term, a function of z (and lambda), and
bounded however large the logits -- and not x: the data enter c_phi through f. Its last layer starts
at zero, so training starts from REBAR's control variate.

phi is trained, as in REBAR, by the optimizer ``"control_variate"`` (Adam at ``cv_lr``) on the
single-sample variance of the logit gradient (see :mod:`relaxrun.methods.rebar` for the objective and
why it is taken w.r.t. the logits). Extras: those of ``rebar`` and ``cv_out``, the mean of r_rho over
the batch's z and z~.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..checks import require
from .base import MISSING, bernoulli_nll, register
from .rebar import RebarConfig, RebarMethod


@dataclass
class RelaxConfig(RebarConfig):
    """Options of ``method=relax``; defaults and their meaning in ``configs/method/relax.yaml``."""

    cv_hidden: list[int] = MISSING

    def __post_init__(self):
        super().__post_init__()
        require(all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.cv_hidden),
                "method.cv_hidden", "a list of integers >= 1 (possibly empty)", list(self.cv_hidden))


@register("relax")
class RelaxMethod(RebarMethod):
    """REBAR's estimator with c_phi(z) = eta f(sigma_lambda(z)) + r_rho(sigma_lambda(z)); see the module docstring."""

    Config = RelaxConfig

    def __init__(self, cfg: RelaxConfig, temperature=None):
        super().__init__(cfg, temperature)
        sizes = [cfg.latent_dim, *cfg.cv_hidden, 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        #: r_rho: relaxed sample [..., D] -> [..., 1]
        self.residual = nn.Sequential(*layers)

    def control(self, z, decode_cv, x):
        """c_phi(z) = eta f(s) + r_rho(s), s = sigma_lambda(z), per example; extras ``cv_out`` (mean r_rho)."""
        s = self.relax_sample(z)
        r = self.residual(s).squeeze(-1)
        return self.eta * bernoulli_nll(decode_cv(s), x) + r, {"cv_out": r.detach().mean()}
