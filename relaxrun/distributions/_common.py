"""Shared helpers for relaxrun's distributions: argument checks with readable errors, and the
mixins that hold what the distributions have in common.

Every distribution in this package derives from :class:`RelaxrunDistribution`, which runs the
``arg_constraints`` check of :class:`torch.distributions.Distribution` itself so that a bad
argument raises a ``ValueError`` naming the distribution, the argument and its allowed range,
e.g. ``RelaxedBernoulli: probs must lie in [0, 1]; got 1.5``.

Mixins (listed before :class:`RelaxrunDistribution` among a class's bases):

* :class:`DeclaredExpand` -- ``expand`` from a declaration of the parameters and their trailing
  (non-batch) dimensions;
* :class:`BinaryProbsLogits` / :class:`CategoricalProbsLogits` (both :class:`DeclaredExpand`) -- one
  of ``probs`` / ``logits`` is given, the other computed on first use (sigmoid/logit, or
  softmax/log), plus ``param_shape``;
* :class:`SampleCache` -- what sampling computed about the latest sample, for ``log_prob`` at that
  very tensor, under the rule that keeps the density's value *and* gradient those of the general
  formula.

**Pyro.** With ``pyro-ppl`` installed (``pip install "relaxrun[pyro]"``), :class:`RelaxrunDistribution`
also derives from Pyro's ``TorchDistributionMixin``, so every distribution here can be used in
``pyro.sample``, ``.to_event()``, ``.mask()``, plates and Pyro's inference algorithms as it is. Without
pyro nothing imports it and the classes are plain torch distributions.

**What is not available says why.** ``mean``, ``variance``, ``entropy``, ``cdf``, ``icdf``,
``enumerate_support`` and ``mode`` that a class does not implement raise ``NotImplementedError`` with
the reason the class declares in ``_unavailable`` (e.g. "no closed form; estimate it from samples"),
and ``kl_divergence`` between relaxrun distributions of a pair with no registered exact form raises
``NotImplementedError`` naming the pair and the Monte Carlo estimate to use instead.
"""

from __future__ import annotations

import importlib.util
import math
from numbers import Number

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.kl import register_kl
from torch.distributions.utils import lazy_property

__all__ = [
    "RelaxrunDistribution",
    "DeclaredExpand",
    "BinaryProbsLogits",
    "CategoricalProbsLogits",
    "SampleCache",
    "keeps_sample_path",
    "describe_constraint",
    "as_tensor",
    "probs_or_logits",
    "check_positive",
    "logit",
    "log_clamped",
    "log1mexp",
    "open_unit_interval",
    "PYRO_AVAILABLE",
    "atoms_and_density",
    "uniform_noise",
    "normal_noise",
]


def describe_constraint(c: constraints.Constraint) -> str:
    """Plain-words range of a torch constraint (used in error messages)."""
    if c is constraints.real or isinstance(c, type(constraints.real)):
        return "be finite real numbers"
    if isinstance(c, constraints.independent):
        return describe_constraint(c.base_constraint)
    if isinstance(c, constraints.interval):
        return f"lie in [{c.lower_bound}, {c.upper_bound}]"
    if isinstance(c, constraints.half_open_interval):
        return f"lie in [{c.lower_bound}, {c.upper_bound})"
    if isinstance(c, constraints.greater_than):
        return f"be finite and > {c.lower_bound}"
    if isinstance(c, constraints.greater_than_eq):
        return f"be finite and >= {c.lower_bound}"
    if isinstance(c, constraints.less_than):
        return f"be < {c.upper_bound}"
    if c is constraints.simplex:
        return "be non-negative and sum to 1 along the last dimension"
    if c is constraints.positive_definite:
        return "be a symmetric positive-definite matrix"
    if c is constraints.lower_cholesky:
        return "be lower triangular with a positive diagonal"
    return f"satisfy {c}"


def _first_bad(value: torch.Tensor, ok: torch.Tensor) -> str:
    bad = value.detach().reshape(-1)[(~ok).reshape(-1)] if ok.shape == value.shape else value.detach().reshape(-1)
    return f"{bad[0].item():.6g}" if bad.numel() else "?"


def _pyro_bases() -> tuple:
    """Pyro's ``TorchDistributionMixin`` as an extra base when pyro is installed; () otherwise.

    ``find_spec`` looks for the package without importing it, so without pyro nothing is imported.
    """
    if importlib.util.find_spec("pyro") is None:
        return ()
    try:
        from pyro.distributions.torch_distribution import TorchDistributionMixin
    except ImportError:  # an incompatible or broken install: stay a plain torch distribution
        return ()
    return (TorchDistributionMixin,)


_PYRO_BASES = _pyro_bases()
#: whether relaxrun's distributions are Pyro distributions in this environment
PYRO_AVAILABLE = bool(_PYRO_BASES)

_NO_CLOSED_FORM = "it has no closed form here; estimate it from samples"
_NOT_DISCRETE = "the law is not discrete (its support is not a finite set)"


class RelaxrunDistribution(Distribution, *_PYRO_BASES):
    """Base class: friendlier ``validate_args`` messages; otherwise a plain torch Distribution (and,
    with pyro installed, a Pyro one).

    A subclass lists in ``_unavailable`` the reason a quantity it does not implement is missing
    (``{"mean": "why", ...}``); the default reason is that there is no closed form.
    """

    _unavailable: dict[str, str] = {}

    def _not_available(self, what: str):
        reason = self._unavailable.get(what)
        if reason is None:
            reason = _NOT_DISCRETE if what == "enumerate_support" else _NO_CLOSED_FORM
        return NotImplementedError(f"{type(self).__name__}: {what} is not available: {reason}")

    @property
    def mean(self) -> torch.Tensor:
        raise self._not_available("mean")

    @property
    def mode(self) -> torch.Tensor:
        raise self._not_available("mode")

    @property
    def variance(self) -> torch.Tensor:
        raise self._not_available("variance")

    def entropy(self) -> torch.Tensor:
        raise self._not_available("entropy")

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        raise self._not_available("cdf")

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        raise self._not_available("icdf")

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        raise self._not_available("enumerate_support")

    def __init__(self, batch_shape=torch.Size(), event_shape=torch.Size(), validate_args=None):
        if validate_args is None:
            validate_args = Distribution._validate_args
        if validate_args:
            for name, c in self.arg_constraints.items():
                if name not in self.__dict__:  # lazy property not set by the user
                    continue
                value = getattr(self, name)
                if not torch.is_tensor(value):
                    continue
                if value.is_floating_point() and not torch.isfinite(value).all() and c is not constraints.real:
                    ok = torch.isfinite(value)
                else:
                    ok = c.check(value)
                    if c is constraints.real or isinstance(c, type(constraints.real)):
                        ok = ok & torch.isfinite(value)
                if not bool(ok.all()):
                    raise ValueError(
                        f"{type(self).__name__}: {name} must {describe_constraint(c)}; "
                        f"got {_first_bad(value, ok)}"
                    )
        # our own check replaces torch's (same constraints, clearer message)
        super().__init__(batch_shape, event_shape, validate_args=False)
        self._validate_args = bool(validate_args)

    def sample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """A draw without autograd history, shape ``sample_shape + batch_shape + event_shape``:
        ``rsample`` under ``no_grad`` (so the same values for the same generator state)."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator)


class DeclaredExpand:
    """Mixin: ``expand`` from a declaration of which attributes are parameters.

    A class declares

    * ``_expand_params``: ``{attribute name: number of trailing non-batch dimensions}`` -- 0 for one
      number per variable (a temperature), 1 for a vector per variable (logits over K categories, D
      coordinates), 2 for a matrix per variable (a D x D Cholesky factor);
    * ``_expand_copy``: attributes shared as they are (integers, stretch limits, a shared factor).

    ``expand(batch_shape)`` gives every declared parameter that is set on the instance the shape
    ``batch_shape + its trailing dimensions`` (a view, as ``Tensor.expand``); a lazily computed one
    (``probs`` or ``logits``) is expanded only if it has been computed. ``event_shape`` and
    ``validate_args`` carry over; sample caches do not (a new instance starts with none). The class
    that declares ``_expand_params`` is the one whose constructor ``expand`` stands in for: a subclass
    with its own ``__init__`` must define its own ``expand`` (torch's rule, via
    ``_get_checked_instance``) or declare its own ``_expand_params``.
    """

    _expand_params: dict[str, int] = {}
    _expand_copy: tuple[str, ...] = ()
    _expand_owner: type | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "_expand_params" in cls.__dict__:
            cls._expand_owner = cls

    def expand(self, batch_shape, _instance=None):
        owner = self._expand_owner
        new = self._get_checked_instance(owner, _instance)
        batch_shape = torch.Size(batch_shape)
        params = self.__dict__
        for name, trailing in self._expand_params.items():
            if name in params:
                v = params[name]
                setattr(new, name, v.expand(batch_shape + v.shape[v.dim() - trailing:]))
        for name in self._expand_copy:
            setattr(new, name, params[name])
        super(owner, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


class _ProbsLogits(DeclaredExpand):
    """What the two kinds of probs/logits parameters share: ``param_shape``."""

    @property
    def param_shape(self) -> torch.Size:
        """Shape of ``probs`` and ``logits`` (``batch_shape``, plus the last dimension that they span
        where there is one: the K categories, or the D coordinates of a multivariate law)."""
        params = self.__dict__
        return (params["probs"] if "probs" in params else self.logits).shape


class BinaryProbsLogits(_ProbsLogits):
    """Mixin for Bernoulli-type parameters: ``probs`` p in [0, 1] and ``logits`` log p - log(1 - p).

    The constructor stores the one it was given (under its own name); the other is computed on first
    use (:func:`logit`, which clamps p into the open interval, or ``sigmoid``) and kept.
    """

    @lazy_property
    def logits(self) -> torch.Tensor:
        return logit(self.probs)

    @lazy_property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


class CategoricalProbsLogits(_ProbsLogits):
    """Mixin for categorical parameters over the last dimension (K categories): ``probs`` on the
    simplex and ``logits``, their logs.

    The constructor stores the one it was given; ``logits`` from ``probs`` is :func:`log_clamped`
    (finite where a probability is 0) and ``probs`` from ``logits`` is ``softmax(logits)``.
    """

    @lazy_property
    def logits(self) -> torch.Tensor:
        return log_clamped(self.probs)

    @lazy_property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=-1)


def keeps_sample_path(value: torch.Tensor, params) -> bool:
    """Whether quantities made from a sample's noise may stand in for the general formula at ``value``.

    At a fixed value the general formula's noise-like terms (the noise recovered from the value, a
    latent Gaussian) depend on the parameters; the stored ones do not. Both have the same derivative
    exactly when it is taken along the sample path, i.e. when ``value`` carries its autograd history,
    and there is no gradient to get wrong when no parameter in ``params`` requires grad. A sample
    made under ``no_grad`` (``sample()``) from parameters that do is neither: it is a fixed point.
    """
    if value.requires_grad:
        return True
    for p in params:
        if p.requires_grad:
            return False
    return True


class SampleCache:
    """Mixin: ``log_prob`` at the distribution's own latest sample from what sampling computed.

    Sampling stores a record ``(value, *aux)`` under an attribute, a *slot* (``_cache``, unless a class
    keeps several), with :meth:`_remember`; :meth:`_recall` returns it only for that very tensor
    (identity, not equality, as torch's transform caches: an equal tensor may be another point as
    far as autograd is concerned). Any other tensor goes through the general formula. What may be
    stored, so that the density has the general formula's value *and* gradient:

    * *value auxiliaries*, functions of the value alone computed without rounding it (its logit, its
      log): always. At a sample without history they carry none either, and the density recomputes
      its parameter-dependent parts from them as the general formula does from the value; at a
      sample with history their derivative is the value's.
    * *path auxiliaries*, functions of the noise (the noise, a latent Gaussian): only where
      :func:`keeps_sample_path` holds. Elsewhere a class stores ``None`` in their place (or clears a
      slot that holds only them) and recomputes them from the value auxiliaries.

    A new instance (also one made by ``expand``) has no records: the slots' class defaults are None.
    """

    _cache = None

    def _remember(self, slot: str, value: torch.Tensor, *aux) -> None:
        self.__dict__[slot] = (value, *aux)

    def _remember_path(self, slot: str, params, value: torch.Tensor, *aux) -> None:
        """Store a record of path auxiliaries where :func:`keeps_sample_path` allows it (else clear
        the slot: a stale record would only keep the previous sample's graph alive)."""
        self.__dict__[slot] = (value, *aux) if keeps_sample_path(value, params) else None

    def _recall(self, slot: str, value: torch.Tensor):
        """The record ``(value, *aux)`` of slot ``slot`` if ``value`` is its sample, else None."""
        record = self.__dict__.get(slot)
        if record is not None and record[0] is value:
            return record
        return None


def as_tensor(x, like: torch.Tensor | None = None, name: str = "argument", dist: str = "") -> torch.Tensor:
    """Tensor from a number or tensor; floating point, on ``like``'s device/dtype when given."""
    if isinstance(x, torch.Tensor):
        if not (x.is_floating_point()):
            if x.dtype == torch.bool or x.is_complex():
                raise ValueError(f"{dist}: {name} must be a floating-point tensor; got dtype {x.dtype}")
            x = x.to(torch.get_default_dtype() if like is None else like.dtype)
        return x
    if isinstance(x, Number) and not isinstance(x, bool):
        if like is not None:
            return torch.tensor(float(x), dtype=like.dtype, device=like.device)
        return torch.tensor(float(x), dtype=torch.get_default_dtype())
    raise ValueError(f"{dist}: {name} must be a number or a floating-point tensor; got {type(x).__name__}")


def probs_or_logits(probs, logits, dist: str, is_binary: bool):
    """Exactly one of probs/logits, as a tensor; returns (name, tensor)."""
    if (probs is None) == (logits is None):
        raise ValueError(f"{dist}: give exactly one of probs or logits (got {'both' if probs is not None else 'neither'})")
    if probs is not None:
        return "probs", as_tensor(probs, name="probs", dist=dist)
    return "logits", as_tensor(logits, name="logits", dist=dist)


def check_positive(x, name: str, dist: str, like: torch.Tensor | None = None, validate: bool = True) -> torch.Tensor:
    """A strictly positive, finite parameter such as a temperature; ValueError otherwise."""
    t = as_tensor(x, like=like, name=name, dist=dist)
    if validate and not bool((torch.isfinite(t) & (t > 0)).all()):
        bad = t.detach().reshape(-1)[~(torch.isfinite(t) & (t > 0)).reshape(-1)][0].item()
        raise ValueError(f"{dist}: {name} must be finite and > 0; got {bad:.6g}")
    return t


def uniform_noise(shape, dtype, device, generator=None) -> torch.Tensor:
    """``torch.rand(shape)``, with ``generator`` passed only when one is given: torch.compile cannot
    trace ``rand(..., generator=None)`` at a dynamic (symbolic) batch size, ``rand(...)`` it can."""
    if generator is None:
        return torch.rand(shape, dtype=dtype, device=device)
    return torch.rand(shape, dtype=dtype, device=device, generator=generator)


def normal_noise(shape, dtype, device, generator=None) -> torch.Tensor:
    """``torch.randn(shape)``; ``generator`` as in :func:`uniform_noise`."""
    if generator is None:
        return torch.randn(shape, dtype=dtype, device=device)
    return torch.randn(shape, dtype=dtype, device=device, generator=generator)


def logit(p: torch.Tensor) -> torch.Tensor:
    """log p - log(1 - p) with p clamped to the open unit interval of its dtype."""
    eps = torch.finfo(p.dtype).eps
    tiny = torch.finfo(p.dtype).tiny
    p = p.clamp(tiny, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def open_unit_interval(z: torch.Tensor) -> torch.Tensor:
    """``z`` with its values moved into the open interval (0, 1) of its dtype: 1.0 becomes the largest
    number below 1 (1 - eps/2) and anything below the smallest normal number becomes that number.

    For samples ``z = sigmoid(y)``: in float32 ``sigmoid`` rounds to exactly 1 for ``y`` above 16.6
    and underflows for ``y`` below -87 (to subnormals, then 0), so a relaxed Bernoulli at a small
    temperature would return points outside its support (0, 1). The move is at most one unit in the
    last place at 1 and below 1.2e-38 at 0 in float32. The gradient is that of ``z`` unmoved (the
    correction is added detached), so the pathwise derivative stays ``sigmoid'(y)`` exactly.
    """
    finfo = torch.finfo(z.dtype)
    inside = z.detach().clamp(finfo.tiny, 1.0 - finfo.eps / 2)
    if not z.requires_grad:
        return inside
    return z + (inside - z.detach())


def log_clamped(p: torch.Tensor) -> torch.Tensor:
    """log max(p, tiny): a zero probability becomes a very negative but finite log (about -87 in
    float32, -708 in float64), so that the sums, keys and gradients made from it stay finite."""
    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012, "Accurately computing
    log(1 - exp(-|a|))"): expm1 near 0, where 1 - exp(x) cancels; log1p far from it."""
    cut = -math.log(2)
    # each branch sees only inputs from its own side, so the branch not taken cannot put an
    # inf (and then 0 * inf = NaN) into the gradient
    near = torch.log(-torch.expm1(torch.clamp(x, min=cut)))
    far = torch.log1p(-torch.exp(torch.clamp(x, max=cut)))
    return torch.where(x > cut, near, far)


def atoms_and_density(value: torch.Tensor, log_mass_zero: torch.Tensor, log_mass_one: torch.Tensor,
                      log_density: torch.Tensor) -> torch.Tensor:
    """log p(value) for a law on [0, 1] with atoms at both ends: the atom's log mass at 0 and at 1,
    ``log_density`` strictly between, -inf outside [0, 1].

    The three are combined as ``w0 * atom0 + w1 * atom1 + (1 - w0 - w1) * density`` with 0/1 weights:
    every product is exact and so is the sum, in value and in gradient, as with nested ``torch.where``,
    which on the CPU costs a mispredicted branch per entry on the random masks a sample of these laws
    makes (forward and twice in backward). Needs finite inputs: finite parameters, and
    ``log_density`` evaluated at the value clamped into the open interval's closure.
    """
    w0 = (value <= 0).to(log_density.dtype)
    w1 = (value >= 1).to(log_density.dtype)
    out = w0 * log_mass_zero + w1 * log_mass_one + (1 - w0 - w1) * log_density
    return out.masked_fill((value < 0) | (value > 1), -math.inf)


LOG_2PI = math.log(2 * math.pi)


# -- KL pairs without an exact form --------------------------------------------------------------
def _no_exact_kl(p: Distribution, q: Distribution):
    raise NotImplementedError(
        f"kl_divergence({type(p).__name__} || {type(q).__name__}) has no exact form registered in relaxrun "
        f"(see docs/library.md for the pairs that have one); use the Monte Carlo estimate "
        f"(p.log_prob(z) - q.log_prob(z)).mean() over z = p.sample((n,)), with its standard error"
    )


# registered for the base class on either side: any pair involving a relaxrun distribution that has
# no more specific registration ends here instead of at torch's bare NotImplementedError
register_kl(RelaxrunDistribution, RelaxrunDistribution)(_no_exact_kl)
register_kl(RelaxrunDistribution, Distribution)(_no_exact_kl)
register_kl(Distribution, RelaxrunDistribution)(_no_exact_kl)

if PYRO_AVAILABLE:
    from pyro.distributions import Delta as _PyroDelta

    @register_kl(_PyroDelta, RelaxrunDistribution)
    def _kl_delta(p, q):
        """KL(Delta(v) || q) = -log q(v), Pyro's rule for a point mass (AutoDelta guides), registered for
        this pair too so that it does not meet the catch-all above as an ambiguous match."""
        return -q.log_prob(p.v)
