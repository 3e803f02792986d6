r"""Correlated relaxed Bernoulli through a Gaussian copula (Lee, Imrie, van der Schaar 2022,
"Self-Supervision Enhanced Feature Selection with Correlated Gates", ICLR).

With a D x D correlation matrix R = L L^T (L its Cholesky factor), logits ``logits`` = logit(pi)
and temperature tau:

.. math::
    \epsilon \sim N(0, I_D),\quad w = L\epsilon,\quad u_i = \Phi(w_i),\quad
    z_i = \sigma\!\left(\frac{\mathrm{logit}(u_i) + \mathrm{logit}(\pi_i)}{\tau}\right).

Each w_i is N(0, 1), so each u_i is uniform and each z_i is exactly Binary Concrete(logits_i, tau)
(:class:`~relaxrun.distributions.binary_concrete.RelaxedBernoulli`); R only couples them. By
Sklar's theorem the joint density of z is the Gaussian-copula density at u(z) times the marginals:

.. math::
    \log p(z) = -\tfrac12\log\det R - \tfrac12\,x^\top (R^{-1} - I)\,x + \sum_i \log q_{BC}(z_i),
    \qquad x_i = \Phi^{-1}(u_i),\ \ \mathrm{logit}(u_i) = \tau\,\mathrm{logit}(z_i) - \mathrm{logits}_i,

with :math:`x^\top R^{-1} x = \lVert L^{-1}x\rVert^2` and :math:`\log\det R = 2\sum_i\log L_{ii}`.

Numerics: sampling forms logit(u) = log Phi(w) - log Phi(-w) with ``log_ndtr`` (no u rounding to 0
or 1); the inverse map Phi^{-1}(sigmoid(t)) is taken in float64 on the side where sigmoid does
not round (|t| is clamped at 700, where float64 sigmoid would underflow). The copula term is
computed in float64 and added in the parameters' dtype. ``log_prob`` of the tensor most recently
returned by ``rsample``/``sample`` uses the logit(z) computed with that sample, so it is exact on
the distribution's own float32 samples even where z rounded to 0 or 1. The latent w drawn with the
sample is reused only if the sample carries its autograd history (``rsample``): at a fixed z (a
``sample()`` from parameters that require grad) w = Phi^{-1}(u(z)) is a function of ``logits`` and
tau, so it is recomputed from the stored logit and the gradient is that of the density (see
:class:`~relaxrun.distributions._common.SampleCache`).

Building R (all return tensors; pass them as ``correlation=`` or ``scale_tril=``):

* :func:`identity_correlation` — independent coordinates (the copula term is then 0);
* :func:`equicorrelation` — R = (1 - rho) I + rho 11^T, valid for -1/(D-1) < rho < 1;
* :func:`correlation_cholesky_from_params` — learnable R: D(D-1)/2 unconstrained reals fill the
  strict lower triangle of a unit-diagonal lower-triangular matrix A, and each row of A is divided
  by its Euclidean norm. The result L is lower triangular with positive diagonal and unit-norm
  rows, so R = L L^T is symmetric, positive definite and has unit diagonal for every value of the
  parameters; every Cholesky factor of a PD correlation matrix arises this way (take A = L /
  diag(L)), so no correlation matrix is out of reach. Zero parameters give R = I.
"""

from __future__ import annotations

import math
from numbers import Number

import torch
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from ._common import (BinaryProbsLogits, RelaxrunDistribution, SampleCache, check_positive, keeps_sample_path, logit,
                      normal_noise, open_unit_interval, probs_or_logits)
from .binary_concrete import RelaxedBernoulli, binary_concrete_logit_log_prob

__all__ = [
    "CorrelatedRelaxedBernoulli",
    "identity_correlation",
    "equicorrelation",
    "correlation_cholesky_from_params",
    "num_correlation_params",
]

_NAME = "CorrelatedRelaxedBernoulli"


# -- building R ----------------------------------------------------------------------------------
def identity_correlation(dim: int, dtype=None, device=None) -> torch.Tensor:
    """R = I_D: independent Binary Concrete coordinates. Shape (dim, dim)."""
    return torch.eye(int(dim), dtype=dtype or torch.get_default_dtype(), device=device)


def equicorrelation(rho, dim: int, dtype=None, device=None) -> torch.Tensor:
    """R = (1 - rho) I + rho 11^T, shape (dim, dim); positive definite iff -1/(dim-1) < rho < 1."""
    dim = int(dim)
    if isinstance(rho, torch.Tensor):
        rho_t = rho.to(dtype or rho.dtype)
    elif isinstance(rho, Number) and not isinstance(rho, bool):
        rho_t = torch.tensor(float(rho), dtype=dtype or torch.get_default_dtype(), device=device)
    else:
        raise ValueError(f"equicorrelation: rho must be a number; got {type(rho).__name__}")
    lo = -1.0 / (dim - 1) if dim > 1 else -math.inf
    r = float(rho_t.detach())
    if not (lo < r < 1):
        raise ValueError(f"equicorrelation: rho must lie in ({lo:.6g}, 1) for dim={dim}; got {r:.6g}")
    eye = torch.eye(dim, dtype=rho_t.dtype, device=rho_t.device)
    return (1 - rho_t) * eye + rho_t * torch.ones_like(eye)


def num_correlation_params(dim: int) -> int:
    """Number of unconstrained parameters of :func:`correlation_cholesky_from_params`: D(D-1)/2."""
    return int(dim) * (int(dim) - 1) // 2


def correlation_cholesky_from_params(params: torch.Tensor, dim: int) -> torch.Tensor:
    """Cholesky factor L of a valid correlation matrix from unconstrained reals.

    ``params`` (..., D(D-1)/2) fill the strict lower triangle (row-major, ``torch.tril_indices``
    order) of A = I + strict_lower; L = A / ||rows of A||. Returns (..., D, D), differentiable.
    """
    dim = int(dim)
    n = num_correlation_params(dim)
    if params.dim() < 1 or params.shape[-1] != n:
        raise ValueError(f"correlation_cholesky_from_params: params must have last dimension "
                         f"D(D-1)/2 = {n} for dim={dim}; got shape {tuple(params.shape)}")
    rows, cols = torch.tril_indices(dim, dim, offset=-1, device=params.device)
    A = torch.zeros(params.shape[:-1] + (dim, dim), dtype=params.dtype, device=params.device)
    A[..., rows, cols] = params  # A is a fresh buffer, so this in-place write is autograd-safe
    A = A + torch.eye(dim, dtype=params.dtype, device=params.device)
    # the diagonal of A is 1, so every row norm is >= 1: the division is always safe
    return A / torch.linalg.vector_norm(A, dim=-1, keepdim=True)


# -- checks ----------------------------------------------------------------------------------------
def _tol(dtype) -> float:
    # rounding in a matrix built by L @ L.T in float32 is a few eps; a user's typo is not
    return max(1e-6, 1000 * torch.finfo(dtype).eps)


def _check_square(m: torch.Tensor, dim: int, arg: str, validate: bool = True) -> None:
    if m.dim() < 2 or m.shape[-1] != m.shape[-2] or m.shape[-1] != dim:
        raise ValueError(f"{_NAME}: {arg} must be a {dim} x {dim} matrix (D = last dimension of the "
                         f"logits/probs); got shape {tuple(m.shape)}")
    if validate and not bool(torch.isfinite(m).all()):  # a host sync: skipped when not validating
        raise ValueError(f"{_NAME}: {arg} must have finite entries")


def _renormalise_rows(L: torch.Tensor) -> torch.Tensor:
    # removes the rounding left in a valid factor, so diag(L L^T) is 1 to working precision
    return L / torch.linalg.vector_norm(L, dim=-1, keepdim=True)


def _cholesky_of_correlation(R: torch.Tensor, dim: int, validate: bool) -> torch.Tensor:
    _check_square(R, dim, "correlation", validate)
    tol = _tol(R.dtype)
    if validate:
        asym = (R - R.transpose(-1, -2)).abs().max().item()
        if asym > tol:
            raise ValueError(f"{_NAME}: correlation must be symmetric; max |R - R^T| = {asym:.3g}")
        diag = R.diagonal(dim1=-2, dim2=-1)
        off = (diag - 1).abs().max().item()
        if off > tol:
            bad = diag.reshape(-1)[(diag - 1).abs().reshape(-1).argmax()].item()
            raise ValueError(f"{_NAME}: correlation must have unit diagonal; got a diagonal entry {bad:.6g}")
    L, info = torch.linalg.cholesky_ex(R)
    if bool((info != 0).any()):
        raise ValueError(f"{_NAME}: correlation must be positive definite (its Cholesky factorisation failed)")
    return _renormalise_rows(L)


def _check_corr_cholesky(L: torch.Tensor, dim: int, validate: bool) -> torch.Tensor:
    _check_square(L, dim, "scale_tril", validate)
    if validate:
        tol = _tol(L.dtype)
        upper = torch.triu(L, diagonal=1).abs().max().item() if dim > 1 else 0.0
        if upper > tol:
            raise ValueError(f"{_NAME}: scale_tril must be lower triangular; max |upper entry| = {upper:.3g}")
        diag = L.diagonal(dim1=-2, dim2=-1)
        if not bool((diag > 0).all()):
            bad = diag.reshape(-1)[(diag <= 0).reshape(-1)][0].item()
            raise ValueError(f"{_NAME}: scale_tril must have a positive diagonal; got {bad:.6g}")
        norms = torch.linalg.vector_norm(L, dim=-1)
        if (norms - 1).abs().max().item() > tol:
            bad = norms.reshape(-1)[(norms - 1).abs().reshape(-1).argmax()].item()
            raise ValueError(f"{_NAME}: scale_tril must have rows of unit norm (the Cholesky factor of a "
                             f"correlation matrix); got a row norm {bad:.6g}")
    return _renormalise_rows(torch.tril(L))


def _ndtri_of_sigmoid(t: torch.Tensor) -> torch.Tensor:
    """Phi^{-1}(sigmoid(t)) in float64, by symmetry on the tail where sigmoid(-|t|) does not round."""
    t = t.to(torch.float64).clamp(-700.0, 700.0)
    x = torch.special.ndtri(torch.sigmoid(-t.abs()))  # <= 0
    return torch.where(t > 0, -x, x)


# -- the distribution ------------------------------------------------------------------------------
class CorrelatedRelaxedBernoulli(BinaryProbsLogits, SampleCache, RelaxrunDistribution):
    """D Binary Concrete coordinates coupled by a Gaussian copula with correlation matrix R.

    Args:
        temperature: tau > 0, broadcastable to the logits' shape ``batch_shape + (D,)``.
        probs: pi in [0, 1], shape ``(..., D)``; or
        logits: logit(pi), shape ``(..., D)``. Exactly one of the two.
        correlation: R, shape ``(..., D, D)``: symmetric, positive definite, unit diagonal; or
        scale_tril: L, shape ``(..., D, D)``: lower triangular, positive diagonal, unit-norm rows
            (e.g. from :func:`correlation_cholesky_from_params`). At most one of the two; neither
            means R = I.

    Shapes: ``event_shape`` is ``(D,)``; ``batch_shape`` is the broadcast of the parameters' batch
    dimensions (logits' ``[:-1]``, R's ``[:-2]``); ``rsample(sample_shape)`` returns
    ``sample_shape + batch_shape + (D,)`` with independent eps for every sample and batch element.
    """

    arg_constraints = {
        "probs": constraints.unit_interval,
        "logits": constraints.real,
        "temperature": constraints.positive,
    }
    support = constraints.independent(constraints.unit_interval, 1)
    has_rsample = True
    _expand_params = {"probs": 1, "logits": 1, "temperature": 1, "_scale_tril": 2}
    _expand_copy = ("_L_shared",)

    def __init__(self, temperature, probs=None, logits=None, correlation=None, scale_tril=None,
                 validate_args=None):
        name, param = probs_or_logits(probs, logits, _NAME, is_binary=True)
        if param.dim() < 1:
            raise ValueError(f"{_NAME}: {name} must have at least one dimension (the event dimension D)")
        dim = param.shape[-1]
        validate = validate_args is not False
        temperature = check_positive(temperature, "temperature", _NAME, like=param, validate=validate)
        if correlation is not None and scale_tril is not None:
            raise ValueError(f"{_NAME}: give at most one of correlation or scale_tril (got both)")
        if scale_tril is not None:
            L = _check_corr_cholesky(torch.as_tensor(scale_tril).to(param.dtype), dim, validate)
        elif correlation is not None:
            L = _cholesky_of_correlation(torch.as_tensor(correlation).to(param.dtype), dim, validate)
        else:
            L = torch.eye(dim, dtype=param.dtype, device=param.device)
        temperature, param = broadcast_all(temperature, param)
        batch_shape = torch.broadcast_shapes(param.shape[:-1], L.shape[:-2])
        setattr(self, name, param.expand(batch_shape + (dim,)))
        self.temperature = temperature.expand(batch_shape + (dim,))
        self._scale_tril = L.expand(batch_shape + (dim, dim))
        self._L_shared = L if L.dim() == 2 else None  # one R for the whole batch: solve it once
        super().__init__(batch_shape, torch.Size((dim,)), validate_args=validate_args)

    @property
    def scale_tril(self) -> torch.Tensor:
        """L, the Cholesky factor of R, shape ``batch_shape + (D, D)``."""
        return self._scale_tril

    @property
    def correlation(self) -> torch.Tensor:
        """R = L L^T, shape ``batch_shape + (D, D)``."""
        return self._scale_tril @ self._scale_tril.transpose(-1, -2)

    def marginal(self) -> RelaxedBernoulli:
        """The exact law of each coordinate: Binary Concrete, ``batch_shape + (D,)`` (event ``()``)."""
        return RelaxedBernoulli(self.temperature, logits=self.logits, validate_args=False)

    # -- sampling -------------------------------------------------------------------------------
    def rsample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        return self.rsample_with_logit(sample_shape, generator)[0]

    def rsample_with_logit(self, sample_shape=torch.Size(), generator=None):
        """(z, y): the differentiable sample z, ``sample_shape + batch_shape + (D,)``, and y = logit(z)
        as computed (exact where z has rounded to 0 or 1; use it for log densities in logit space)."""
        shape = self._extended_shape(sample_shape)
        eps = normal_noise(shape, self.logits.dtype, self.logits.device, generator)
        if self._L_shared is not None:
            w = eps @ self._L_shared.transpose(-1, -2)  # row vectors: (L eps)^T = eps^T L^T
        else:
            w = (self._scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
        # logit(Phi(w)) from log-CDFs: exact for |w| where Phi(w) itself would round to 0 or 1
        logit_u = torch.special.log_ndtr(w) - torch.special.log_ndtr(-w)
        y = (logit_u + self.logits) / self.temperature
        z = open_unit_interval(torch.sigmoid(y))  # never exactly 0 or 1 (see RelaxedBernoulli)
        # y = logit(z) is a value auxiliary; w is a path auxiliary, kept only where it gives the
        # density's gradient (see SampleCache) and otherwise recomputed from y by log_prob
        keep_w = keeps_sample_path(z, (self.logits, self.temperature, self._scale_tril))
        self._remember("_cache", z, y, w if keep_w else None)
        return z, y

    # -- the law --------------------------------------------------------------------------------
    def _logit_and_latent(self, value: torch.Tensor):
        """(y, w): logit(z) and the latent w = Phi^{-1}(sigmoid(tau y - logits)) of a value z."""
        record = self._recall("_cache", value)
        if record is None:
            if self._validate_args:
                self._validate_sample(value)
            y = logit(value)
        else:
            _, y, w = record
            if w is not None:
                return y, w
        return y, self._latent_from_logit(y)

    def _latent_from_logit(self, y: torch.Tensor) -> torch.Tensor:
        return _ndtri_of_sigmoid(self.temperature * y - self.logits)

    def to_gaussian(self, value: torch.Tensor) -> torch.Tensor:
        """The latent w = Phi^{-1}(u(z)) ~ N(0, R) of a value z, shape ``(..., D)``."""
        w = self._logit_and_latent(value)[1]
        return w.to(self.logits.dtype)

    def copula_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log c_R(u(z)) = -1/2 log det R - 1/2 x^T (R^{-1} - I) x, shape ``sample_shape + batch_shape``."""
        _, w = self._logit_and_latent(value)
        return self._copula_from_latent(w)

    def _copula_from_latent(self, w: torch.Tensor) -> torch.Tensor:
        x = w.to(torch.float64)
        if self._L_shared is not None:
            # one factor for every row: a single triangular solve with many right-hand sides,
            # instead of materialising a (D, D) copy per sample
            L = self._L_shared.to(torch.float64)
            v = torch.linalg.solve_triangular(L, x.reshape(-1, x.shape[-1]).T, upper=False).T.reshape(x.shape)
        else:
            L = self._scale_tril.to(torch.float64)
            L_b = L.expand(x.shape[:-1] + L.shape[-2:])
            v = torch.linalg.solve_triangular(L_b, x.unsqueeze(-1), upper=False).squeeze(-1)
        half_logdet = torch.log(L.diagonal(dim1=-2, dim2=-1)).sum(-1)
        out = -half_logdet - 0.5 * (v.pow(2) - x.pow(2)).sum(-1)
        return out.to(self.logits.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Exact log density: Gaussian-copula term + sum of Binary Concrete marginal log densities."""
        return self._log_prob_from(*self._logit_and_latent(value))

    def log_prob_logit(self, y: torch.Tensor) -> torch.Tensor:
        """log p(z) at z = sigmoid(y), computed from y = logit(z), shape ``(..., D)`` -> ``(...)``.

        The density is still with respect to z; y only carries z without rounding (z within 1e-17
        of 0 or 1 in float64, 1e-8 in float32, is representable through its logit).
        """
        return self._log_prob_from(y, self._latent_from_logit(y))

    def _log_prob_from(self, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        marginals = binary_concrete_logit_log_prob(y, self.logits, self.temperature).sum(-1)
        return marginals + self._copula_from_latent(w)

    @property
    def mean(self) -> torch.Tensor:
        """E[z_i], that of the Binary Concrete marginal (1-D quadrature; the copula does not change it)."""
        return self.marginal().mean

    @property
    def variance(self) -> torch.Tensor:
        """Var z_i, that of the Binary Concrete marginal (1-D quadrature)."""
        return self.marginal().variance

    _unavailable = {
        "entropy": "the Gaussian copula's part E[log c_R(u)] has no closed form for these marginals; estimate "
                   "-log_prob from samples",
        "mode": "the mode depends on tau and R",
        "cdf": "the law is multivariate (D coordinates); the marginal CDF is marginal().cdf",
        "icdf": "the law is multivariate (D coordinates); the marginal quantile is marginal().icdf",
        "enumerate_support": "the law is continuous on (0, 1)^D",
    }

    def __repr__(self):
        return (f"CorrelatedRelaxedBernoulli(logits: {tuple(self.logits.shape)}, "
                f"scale_tril: {tuple(self._scale_tril.shape)})")
