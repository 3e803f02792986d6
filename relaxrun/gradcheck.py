r"""``relaxrun-gradcheck``: every method's gradient bias and variance against exact enumeration.

For a method with an enumerable discrete counterpart (:meth:`Method.discrete_law`, a product of
Bernoulli or categorical laws) and a small problem -- a fixed "decoder" ``decode(z)`` and a fixed
batch ``x`` giving f(z) = -log p(x | z) = ``bernoulli_nll(decode(z), x)`` -- gradcheck compares

* the method's real training estimator: the gradient w.r.t. the encoder output ``params`` of
  ``Method.loss(params, decode, x, tau).loss`` (objective ``elbo``), or of ``loss - mean(kl)``
  (objective ``expectation``, the estimator of grad E_q[f] alone), drawn ``S`` times; with
* the exact gradient of the discrete objective: L(params) = mean over the batch of
  sum_b q(b | params) f(b) (+ KL(q || prior) for ``elbo``), summed over all 2^D / K^N
  configurations b and differentiated by autograd.

Problems (``--problems``):

* ``toy``: Tucker et al. 2017 (REBAR) / Grathwohl et al. 2018 (RELAX): f(b) = (b - t)^2, t = 0.499,
  one unit at params = 0; objective ``expectation``. It goes through the decoder interface exactly:
  with x = 0 the NLL of a pixel is softplus(logit), so decode(z) = log(expm1((z - t)^2 + c)) gives
  f(z) = (z - t)^2 + c, also for relaxed z. Categorical methods see a one-hot with K = 2 and
  targets t = (0.499, 0.501): f = 2 (b - 0.499)^2 + const with b = 1[category 0].
* ``toy_vector``: the same with 10 units at params = linspace(-2.5, 2.5) (categorical: 3 x 4, targets
  evenly spaced in [0.499, 0.501], params = linspace(-1.5, 1.5)); objective ``expectation``.
* ``vae``: a fixed random MLP decoder (D -> 32 -> 64 pixels, tanh), a batch of 4 binary x drawn from
  it, encoder outputs params ~ N(0, 1.5^2); D = 10 Bernoulli units (1024 configurations) or 3 x 4
  categorical (64); objective ``elbo``, the whole discrete negative ELBO with the method's prior:
  methods that estimate the KL (relaxed or mixed-latent KL) are judged on it too.

Statistics over the S gradient draws g_s (flattened, n = batch x param_dim coordinates), with g* the
exact gradient and d = mean(g_s) - g*:

* ``rel_err`` = |d| / |g*|, the relative error of the mean estimate (includes the Monte Carlo noise,
  whose expected size for an unbiased estimator is ``noise`` = sqrt(tr Cov / S) / |g*|);
* ``bias_lo``, ``bias_hi``: a ``--level`` confidence interval for the true relative bias
  |E g - g*| / |g*|, from the unbiased U-statistic |d|^2 - tr(Cov)/S and its normal approximation;
* ``p_value`` of Hotelling's test of E g = g* (T^2 = S d' Cov^-1 d, chi-square on the rank of Cov);
  ``biased`` when p < ``--alpha``;
* ``cos`` = cos(mean g, g*); ``variance`` = mean per-coordinate variance of a single draw; ``snr`` =
  mean over coordinates of |mean| / std (both as in training's ``grad/variance``, ``grad/snr``).

Two calibration rows run with the methods: ``ref_reinforce_loo``, a score-function estimator with a
leave-one-out baseline (4 draws per input; unbiased, so it must not be flagged), and
``ref_reinforce_loo_x1.2``, the same with its E_q[f] gradient scaled by 1.2 (must be flagged on the
vector problems). The command exits with status 1 when either check fails.

Assumption: the estimator treats the rows of a batch independently. gradcheck draws S samples in
one call by repeating the batch S times (``--chunk`` rows at a time), which is exact for every method
in the project; a method whose estimator pools across the batch would be measured with a larger pool.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .methods import available_methods, get_method_class
from .methods.base import DiscreteLaw, Method, MethodConfig, Terms, bernoulli_kl, bernoulli_nll

TOY_TARGET = 0.499
TOY_OFFSET = 1.0  # c in f(z) = (z - t)^2 + c; any c > 0 keeps expm1 positive
BERNOULLI_UNITS = 10
CATEGORICAL_SHAPE = (3, 4)  # N variables x K categories
VAE_BATCH, VAE_HIDDEN, VAE_PIXELS = 4, 32, 64
DEFAULT_TAUS = (0.1, 0.5, 1.0)
DEFAULT_VARIANTS = ("relaxed_bernoulli:hard=true", "gumbel_softmax:hard=true", "gumbel_topk:subset_size=1")
REF_NAME, REF_SCALED_NAME, REF_SCALE = "ref_reinforce_loo", "ref_reinforce_loo_x1.2", 1.2
PROBLEMS = ("toy", "toy_vector", "vae")


# -- problems ------------------------------------------------------------------------------------
@dataclass
class Problem:
    """A fixed f(z) = bernoulli_nll(decode(z), x) and encoder outputs for one latent kind."""

    name: str
    kind: str                      # "bernoulli" | "categorical"
    objective: str                 # "expectation" | "elbo"
    shape: tuple[int, ...]         # (D,) or (N, K)
    decode: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor                # [B, pixels]
    make_params: Callable[[int], torch.Tensor]  # param_dim -> [B, param_dim]

    @property
    def latent_dim(self) -> int:
        return math.prod(self.shape)


def toy_decoder(target: torch.Tensor, offset: float = TOY_OFFSET):
    """decode(z) = log(expm1((z - t)^2 + c)), so that bernoulli_nll(decode(z), 0) = sum (z - t)^2 + c."""

    def decode(z: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.expm1((z - target) ** 2 + offset))

    return decode


def mlp_decoder(d_in: int, generator: torch.Generator, dtype, hidden: int = VAE_HIDDEN, pixels: int = VAE_PIXELS):
    """A fixed random MLP z -> tanh -> Bernoulli logits; weights scaled so logits are O(1-3)."""
    w1 = torch.randn(d_in, hidden, generator=generator, dtype=dtype) * (2.0 / math.sqrt(d_in))
    b1 = torch.randn(hidden, generator=generator, dtype=dtype) * 0.5
    w2 = torch.randn(hidden, pixels, generator=generator, dtype=dtype) * (2.5 / math.sqrt(hidden))
    b2 = torch.randn(pixels, generator=generator, dtype=dtype) * 0.5

    def decode(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ w1 + b1) @ w2 + b2

    return decode


def make_problem(name: str, kind: str, seed: int = 0, dtype=torch.float64) -> Problem:
    """The problem ``name`` in ``PROBLEMS`` for latent ``kind`` ("bernoulli" or "categorical")."""
    if kind not in ("bernoulli", "categorical"):
        raise ValueError(f"unknown latent kind {kind!r}")
    if name in ("toy", "toy_vector"):
        if kind == "bernoulli":
            shape = (1,) if name == "toy" else (BERNOULLI_UNITS,)
            target = torch.full(shape, TOY_TARGET, dtype=dtype)
        else:
            shape = (1, 2) if name == "toy" else CATEGORICAL_SHAPE
            target = torch.linspace(TOY_TARGET, 1 - TOY_TARGET, shape[1], dtype=dtype).repeat(shape[0])
        lo_hi = 2.5 if kind == "bernoulli" else 1.5

        def make_params(param_dim, _name=name, _lo_hi=lo_hi):
            if _name == "toy":
                return torch.zeros(1, param_dim, dtype=dtype)
            return torch.linspace(-_lo_hi, _lo_hi, param_dim, dtype=dtype)[None]

        d = math.prod(shape)
        return Problem(name, kind, "expectation", shape, toy_decoder(target), torch.zeros(1, d, dtype=dtype),
                       make_params)
    if name == "vae":
        shape = (BERNOULLI_UNITS,) if kind == "bernoulli" else CATEGORICAL_SHAPE
        g = torch.Generator().manual_seed(_stable_seed(seed, "vae", kind))
        decode = mlp_decoder(math.prod(shape), g, dtype)
        # x drawn from the model at prior draws of the latent, so the posterior is not degenerate
        if kind == "bernoulli":
            z0 = torch.bernoulli(torch.full((VAE_BATCH, shape[0]), 0.5, dtype=dtype), generator=g)
        else:
            idx = torch.randint(shape[1], (VAE_BATCH, shape[0]), generator=g)
            z0 = F.one_hot(idx, shape[1]).to(dtype).flatten(-2)
        x = torch.bernoulli(torch.sigmoid(decode(z0)), generator=g)
        p_seed = _stable_seed(seed, "vae-params", kind)

        def make_params(param_dim):
            return 1.5 * torch.randn(VAE_BATCH, param_dim, dtype=dtype,
                                     generator=torch.Generator().manual_seed(p_seed))

        return Problem(name, kind, "elbo", shape, decode, x, make_params)
    raise ValueError(f"unknown problem {name!r}; choose from {', '.join(PROBLEMS)}")


def _stable_seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


# -- exact objective by enumeration --------------------------------------------------------------
def enumerate_configs(kind: str, shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    """All configurations as decoder inputs: ``[2^D, D]`` 0/1 rows, or ``[K^N, N*K]`` flattened one-hots."""
    if kind == "bernoulli":
        (d,) = shape
        codes = torch.arange(2 ** d)
        return ((codes[:, None] >> torch.arange(d)) & 1).to(dtype)
    n, k = shape
    codes = torch.arange(k ** n)
    digits = (codes[:, None] // (k ** torch.arange(n))) % k
    return F.one_hot(digits, k).to(dtype).flatten(-2)


def exact_objective(law: DiscreteLaw, decode, x: torch.Tensor, objective: str) -> torch.Tensor:
    """Batch mean of E_{b~q}[bernoulli_nll(decode(b), x)] (+ KL(q || prior) when ``objective == "elbo"``).

    The expectation is the sum over every configuration of q(b) f(b) (``law.logits`` ``[B, D]`` or
    ``[B, N, K]``), so autograd through it gives the exact gradient.
    """
    logits = law.logits
    if law.kind == "bernoulli":
        shape = (logits.shape[-1],)
        configs = enumerate_configs("bernoulli", shape, logits.dtype)
        log_q = F.logsigmoid(logits) @ configs.T + F.logsigmoid(-logits) @ (1 - configs).T  # [B, M]
        kl = bernoulli_kl(logits, law.prior_logits).sum(-1)
    elif law.kind == "categorical":
        shape = tuple(logits.shape[-2:])
        configs = enumerate_configs("categorical", shape, logits.dtype)
        log_p = torch.log_softmax(logits, -1)
        log_q = torch.einsum("bnk,mnk->bm", log_p, configs.reshape(-1, *shape))
        log_prior = torch.log_softmax(torch.as_tensor(law.prior_logits, dtype=logits.dtype).expand_as(logits), -1)
        kl = (log_p.exp() * (log_p - log_prior)).sum((-1, -2))
    else:
        raise ValueError(f"unknown discrete law kind {law.kind!r}")
    f = bernoulli_nll(decode(configs)[None], x[:, None])  # [B, M]
    value = (log_q.exp() * f).sum(-1)
    if objective == "elbo":
        value = value + kl
    elif objective != "expectation":
        raise ValueError(f"unknown objective {objective!r}")
    return value.mean()


def exact_gradient(method: Method, problem: Problem, params: torch.Tensor, tau: float) -> torch.Tensor:
    """d/d params of the enumerated discrete objective of ``method``'s discrete law, ``params``' shape."""
    p = params.detach().clone().requires_grad_(True)
    law = method.discrete_law(p, tau)
    (g,) = torch.autograd.grad(exact_objective(law, problem.decode, problem.x, problem.objective), p)
    return g


# -- the estimator -------------------------------------------------------------------------------
def estimator_draws(method: Method, problem: Problem, params: torch.Tensor, tau: float, samples: int,
                    chunk: int = 8192) -> torch.Tensor:
    """``[S, B * param_dim]`` single-draw gradients of the method's training loss w.r.t. ``params``.

    The batch is repeated m times in one call; with the loss a mean over m * B rows, the gradient of
    replica s times m is that replica's own draw (rows are independent given ``params``).
    """
    b = params.shape[0]
    per_call = max(1, chunk // b)
    out = []
    done = 0
    while done < samples:
        m = min(per_call, samples - done)
        p = params.detach().repeat(m, 1).requires_grad_(True)
        terms: Terms = method.loss(p, problem.decode, problem.x.repeat(m, 1), tau)
        loss = terms.loss if problem.objective == "elbo" else terms.loss - terms.kl.mean()
        (g,) = torch.autograd.grad(loss, p, allow_unused=True)
        g = torch.zeros_like(p) if g is None else g
        out.append(g.reshape(m, -1) * m)
        done += m
    return torch.cat(out)


def expectation_is_isolated(method: Method, problem: Problem, params: torch.Tensor, tau: float) -> bool:
    """Whether ``loss - mean(kl)`` estimates grad E_q[f] alone: with a constant f its gradient must be 0.

    Fails for a method that adds a separate KL-gradient surrogate to its loss (e.g. a score-function
    KL), whose gradient ``mean(kl)`` does not remove.
    """
    pixels = problem.x.shape[-1]
    const = dataclasses.replace(problem, decode=lambda z: (0.0 * z.sum(-1, keepdim=True)).expand(*z.shape[:-1], pixels))
    with torch.random.fork_rng():
        torch.manual_seed(54321)
        g = estimator_draws(method, const, params, tau, 64)
    return bool(g.abs().max() <= 1e-12)


def _uses_tau(method: Method, problem: Problem, params: torch.Tensor) -> bool:
    """Whether the loss changes with tau (same random stream at two temperatures)."""
    draws = []
    for tau in (0.3, 0.9):
        with torch.random.fork_rng():
            torch.manual_seed(12345)
            draws.append(estimator_draws(method, problem, params, tau, 4))
    try:
        laws = [method.discrete_law(params, t).logits for t in (0.3, 0.9)]
    except NotImplementedError:
        laws = [0, 0]
    return not torch.equal(draws[0], draws[1]) or not torch.equal(torch.as_tensor(laws[0]), torch.as_tensor(laws[1]))


# -- statistics ----------------------------------------------------------------------------------
def gradient_stats(draws: torch.Tensor, exact: torch.Tensor, level: float = 0.95, alpha: float = 1e-3) -> dict:
    """Bias / variance statistics of gradient draws ``[S, n]`` against the exact gradient ``[n]``.

    See the module docstring for the definitions. ``bias_lo``/``bias_hi`` bound |E g - g*| / |g*| at
    confidence ``level``; ``biased`` is Hotelling's test of E g = g* at false-alarm rate ``alpha``.
    """
    draws = draws.to(torch.float64)
    exact = exact.reshape(-1).to(torch.float64)
    s, n = draws.shape
    if s < 2:
        raise ValueError("need at least 2 gradient draws")
    mean = draws.mean(0)
    d = mean - exact
    centred = draws - mean
    cov = centred.T @ centred / (s - 1)
    norm = float(exact.norm())
    scale = norm if norm > 0 else 1.0
    tr = float(cov.trace())
    # unbiased estimate of |E g - g*|^2 and its variance (normal approximation)
    u = float(d @ d) - tr / s
    var_u = 4.0 * float(d @ cov @ d) / s + 2.0 * float((cov * cov).sum()) / (s * (s - 1))
    z = float(torch.special.ndtri(torch.tensor(0.5 + level / 2, dtype=torch.float64)))
    lo = math.sqrt(max(u - z * math.sqrt(max(var_u, 0.0)), 0.0)) / scale
    hi = math.sqrt(max(u + z * math.sqrt(max(var_u, 0.0)), 0.0)) / scale
    # Hotelling's T^2 on the span of the draws; bias outside that span has zero noise
    evals, evecs = torch.linalg.eigh(cov)
    # directions with only rounding noise (sd < 1e-10 |g|) count as deterministic
    size2 = max(norm, float(mean.norm())) ** 2
    keep = evals > max(1e-12 * float(evals.max()), 1e-20 * size2, 1e-300)
    proj = evecs[:, keep].T @ d
    t2 = float(s * (proj ** 2 / evals[keep]).sum())
    dof = int(keep.sum())
    outside = float((d - evecs[:, keep] @ proj).norm())
    if outside > 1e-8 * scale + 1e-300:
        p_value = 0.0
    elif dof == 0:
        p_value = 1.0
    else:
        # (S - n) / (S - 1) T^2 ~ n F(n, S - n) ~ chi^2_n for S >> n
        stat = t2 * (s - dof) / (s - 1) if s > dof else t2
        p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                                torch.tensor(stat / 2, dtype=torch.float64)))
    std = centred.pow(2).sum(0).div(s - 1).sqrt()
    nz = std > 1e-10 * mean.abs()  # a coordinate with only rounding noise is deterministic, not infinitely good
    snr = float((mean.abs()[nz] / std[nz]).mean()) if bool(nz.any()) else float("nan")
    cos = float(F.cosine_similarity(mean, exact, dim=0, eps=1e-300))
    return {"samples": s, "coords": n, "exact_norm": norm, "rel_err": float(d.norm()) / scale,
            "bias_lo": lo, "bias_hi": hi, "noise": math.sqrt(tr / s) / scale, "cos": cos,
            "variance": tr / n, "snr": snr, "t2": t2, "dof": dof, "p_value": p_value,
            "biased": bool(p_value < alpha)}


# -- calibration reference: score function with a leave-one-out baseline -------------------------
@dataclass
class ScoreFunctionConfig(MethodConfig):
    name: str = REF_NAME
    latent_dim: int = BERNOULLI_UNITS
    categories: int = 0            # 0: Bernoulli units; >= 2: latent_dim variables with this many categories
    draws: int = 4
    scale: float = 1.0             # multiplies the E_q[f] gradient (1.0: unbiased)


class ScoreFunctionReference(Method):
    """REINFORCE with a leave-one-out baseline (Kool et al. 2019), analytic KL: an unbiased
    estimator of the discrete negative ELBO's gradient, used to calibrate gradcheck (not registered
    as a training method). Per input, M draws b_m ~ q; surrogate (1/M) sum_m stopgrad(f(b_m) -
    mean_{j != m} f(b_j)) log q(b_m), times ``scale``."""

    Config = ScoreFunctionConfig
    latent_type = "reference"

    @property
    def param_dim(self) -> int:
        return self.cfg.latent_dim * max(self.cfg.categories, 1)

    @property
    def latent_dim(self) -> int:
        return self.param_dim

    def discrete_law(self, params, tau) -> DiscreteLaw:
        zero = torch.zeros((), dtype=params.dtype, device=params.device)
        if self.cfg.categories:
            return DiscreteLaw("categorical", params.reshape(*params.shape[:-1], self.cfg.latent_dim,
                                                             self.cfg.categories), zero)
        return DiscreteLaw("bernoulli", params, zero)

    def loss(self, params, decode, x, tau) -> Terms:
        law = self.discrete_law(params, tau)
        m = self.cfg.draws
        with torch.no_grad():
            if law.kind == "bernoulli":
                b = torch.bernoulli(torch.sigmoid(law.logits).expand(m, *law.logits.shape))
            else:
                idx = torch.distributions.Categorical(logits=law.logits).sample((m,))
                b = F.one_hot(idx, self.cfg.categories).to(params.dtype)
            f = bernoulli_nll(decode(b.flatten(-2) if law.kind == "categorical" else b), x)  # [M, B]
            adv = f - (f.sum(0, keepdim=True) - f) / (m - 1)
        if law.kind == "bernoulli":
            log_q = (b * F.logsigmoid(law.logits) + (1 - b) * F.logsigmoid(-law.logits)).sum(-1)
            kl = bernoulli_kl(law.logits, law.prior_logits).sum(-1)
        else:
            log_p = torch.log_softmax(law.logits, -1)
            log_q = (b * log_p).sum((-1, -2))
            kl = (log_p.exp() * (log_p + math.log(self.cfg.categories))).sum((-1, -2))
        surrogate = self.cfg.scale * (adv * log_q).mean(0)
        recon = f.mean(0)
        return Terms((recon + surrogate - surrogate.detach() + kl).mean(), recon, kl)

    def bound(self, params, decode, x, tau) -> Terms:  # pragma: no cover - not a training method
        raise NotImplementedError


# -- one row -------------------------------------------------------------------------------------
@dataclass
class Spec:
    """A method name with config overrides, ``name[:key=value...]``."""

    label: str
    name: str
    overrides: dict

    @classmethod
    def parse(cls, text: str) -> "Spec":
        import yaml

        name, *rest = text.split(":")
        overrides = {}
        for item in rest:
            if "=" not in item:
                raise ValueError(f"method spec {text!r}: expected key=value after ':', got {item!r}")
            k, v = item.split("=", 1)
            overrides[k.strip()] = yaml.safe_load(v)
        return cls(text, name.strip(), overrides)


def build(spec: Spec, problem_kind: str, shape: tuple[int, ...], dtype) -> Method:
    """The method of ``spec`` sized for a problem: latent_dim = D, or latent_dim = N, categories = K."""
    if spec.name in (REF_NAME, REF_SCALED_NAME):
        scale = REF_SCALE if spec.name == REF_SCALED_NAME else 1.0
        cfg = ScoreFunctionConfig(name=spec.name, latent_dim=shape[0],
                                  categories=shape[1] if problem_kind == "categorical" else 0, scale=scale)
        m = ScoreFunctionReference(cfg)
        m.name = spec.name
        return m.to(dtype)
    cls = get_method_class(spec.name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(spec.overrides) - fields
    if unknown:
        raise ValueError(f"method {spec.name} has no option(s) {', '.join(sorted(unknown))}")
    values = dict(spec.overrides)
    values["latent_dim"] = shape[0]
    if problem_kind == "categorical" and "categories" in fields:
        values["categories"] = shape[1]
    return cls(cls.Config(**{k: v for k, v in values.items() if k in fields})).to(dtype)


def law_kind(spec: Spec, dtype=torch.float64) -> str:
    """"bernoulli" or "categorical"; raises NotImplementedError (the reason) when there is none."""
    if spec.name in (REF_NAME, REF_SCALED_NAME):
        return "bernoulli"
    m = build(spec, "bernoulli", (3,), dtype)
    return m.discrete_law(torch.zeros(1, m.param_dim, dtype=dtype), 0.5).kind


def check_row(method: Method, problem: Problem, tau: float, samples: int, seed: int, level: float = 0.95,
              alpha: float = 1e-3, chunk: int = 8192, label: str | None = None) -> dict:
    """Exact gradient, S estimator draws and their statistics for one method / problem / tau."""
    label = label or method.name
    params = problem.make_params(method.param_dim)
    if method.latent_dim != problem.latent_dim:
        raise ValueError(f"decoder input size {method.latent_dim} != problem latent size {problem.latent_dim}")
    method.train()
    exact = exact_gradient(method, problem, params, tau)
    with torch.random.fork_rng():
        torch.manual_seed(_stable_seed(seed, problem.name, problem.kind, label, tau))
        draws = estimator_draws(method, problem, params, tau, samples, chunk)
    return gradient_stats(draws, exact, level, alpha)


# -- the command ---------------------------------------------------------------------------------
COLUMNS = ("problem", "objective", "method", "tau", "kind", "status", "samples", "coords", "exact_norm", "rel_err",
           "bias_lo", "bias_hi", "noise", "cos", "variance", "snr", "t2", "dof", "p_value", "biased", "reason")


def run(specs: list[Spec], problems: list[str], taus: list[float], samples: int, seed: int, level: float,
        alpha: float, chunk: int = 8192, dtype=torch.float64, log=print) -> list[dict]:
    """All rows (one per problem x method x tau; tau-free methods once per problem; skips with reasons)."""
    rows = []
    kinds: dict[str, str | Exception] = {}
    for spec in specs:
        try:
            kinds[spec.label] = law_kind(spec, dtype)
        except NotImplementedError as err:
            kinds[spec.label] = err
    for pname in problems:
        probs = {k: make_problem(pname, k, seed, dtype) for k in ("bernoulli", "categorical")}
        for spec in specs:
            kind = kinds[spec.label]
            base = {"problem": pname, "method": spec.label}
            if isinstance(kind, Exception):
                rows.append({**base, "status": "skipped", "reason": _reason(kind), "tau": ""})
                continue
            problem = probs[kind]
            base.update(objective=problem.objective, kind=kind)
            try:
                method = build(spec, kind, problem.shape, dtype)
                params = problem.make_params(method.param_dim)
                if problem.objective == "expectation" and not expectation_is_isolated(method, problem, params,
                                                                                        taus[0]):
                    rows.append({**base, "status": "skipped", "tau": "", "reason": (
                        "loss - mean(kl) still has a gradient when f is constant (the loss carries a separate "
                        "KL-gradient surrogate), so E_q[f]'s estimator cannot be isolated on this problem")})
                    continue
                tau_list = taus if _uses_tau(method, problem, params) else [None]
                for tau in tau_list:
                    t0 = time.perf_counter()
                    st = check_row(method, problem, taus[0] if tau is None else tau, samples, seed, level, alpha,
                                   chunk, spec.label)
                    rows.append({**base, "tau": "" if tau is None else tau, "status": "ok", "reason": "", **st})
                    log(f"  {pname:<10} {spec.label:<28} tau={'-' if tau is None else tau:<4} "
                        f"rel_err={st['rel_err']:.3g} ({time.perf_counter() - t0:.2f}s)")
            except NotImplementedError as err:
                rows.append({**base, "status": "skipped", "reason": _reason(err), "tau": ""})
    return rows


def _reason(err: Exception) -> str:
    return (str(err) or type(err).__name__).splitlines()[0]


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


def _fmt(v, digits=3) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.{max(digits - 1, 1)}e}"
    return str(v)


def markdown_table(rows: list[dict], level: float) -> str:
    head = ["problem", "method", "tau", f"rel. bias [{level:.0%} CI]", "rel. error", "cos", "variance", "SNR",
            "p", "biased"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            continue
        tau = "-" if r["tau"] == "" else _fmt(float(r["tau"]), 2)
        lines.append("| " + " | ".join([
            r["problem"], f"`{r['method']}`", tau, f"[{_fmt(r['bias_lo'])}, {_fmt(r['bias_hi'])}]",
            _fmt(r["rel_err"]), _fmt(r["cos"]), _fmt(r["variance"]), _fmt(r["snr"]), _fmt(r["p_value"], 2),
            "**yes**" if r["biased"] else "no"]) + " |")
    skipped = _skipped(rows)
    if skipped:
        lines.append("")
        lines += [f"Skipped `{m}`{where}: {why}.  " for m, where, why in skipped]
    return "\n".join(lines) + "\n"


def _skipped(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(method, " on p1, p2" or "" when skipped on every problem run, reason), one per method and reason."""
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    groups: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r["status"] != "ok":
            groups.setdefault((r["method"], r["reason"]), []).append(r["problem"])
    return [(m, "" if len(ps) == len(problems) else " on " + ", ".join(ps), why) for (m, why), ps in groups.items()]


def text_table(rows: list[dict], level: float) -> str:
    head = ("problem", "method", "tau", "rel.bias CI", "rel.err", "cos", "variance", "SNR", "p", "biased")
    body = []
    for r in rows:
        if r["status"] != "ok":
            continue
        tau = "-" if r["tau"] == "" else _fmt(float(r["tau"]), 2)
        body.append((r["problem"], r["method"], tau, f"[{_fmt(r['bias_lo'])}, {_fmt(r['bias_hi'])}]",
                     _fmt(r["rel_err"]), _fmt(r["cos"]), _fmt(r["variance"]), _fmt(r["snr"]),
                     _fmt(r["p_value"], 2), "BIASED" if r["biased"] else "no"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [head, *body]]
    out += [f"skipped {m}{where}: {why}" for m, where, why in _skipped(rows)]
    out.append(f"(rel. bias CI: {level:.0%} interval for |E g - g*| / |g*|; biased: Hotelling test p below alpha)")
    return "\n".join(out) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def plot(rows: list[dict], path: Path, taus: list[float]) -> None:
    """Relative error of the mean gradient (bars: CI of the bias; hollow: not flagged biased) and
    per-draw variance vs tau, one row of panels per problem; tau-free methods as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r["method"] != REF_SCALED_NAME]
    problems = list(dict.fromkeys(r["problem"] for r in ok))
    if not problems:
        return
    methods = list(dict.fromkeys(r["method"] for r in ok))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(m for m in methods if not m.startswith("ref_"))}
    fig, axes = plt.subplots(len(problems), 2, figsize=(11, 3.3 * len(problems)), squeeze=False)
    x_lo, x_hi = min(taus) / 1.3, max(taus) * 1.3
    for i, pname in enumerate(problems):
        ax_b, ax_v = axes[i]
        prow = [r for r in ok if r["problem"] == pname]
        floor = 0.3 * min([r["rel_err"] for r in prow if r["rel_err"] > 0] or [1e-3])
        for j, m in enumerate(methods):
            rs = [r for r in prow if r["method"] == m]
            if not rs:
                continue
            color = "0.35" if m.startswith("ref_") else colors[m]
            if rs[0]["tau"] == "":
                r = rs[0]
                ls = ":" if m.startswith("ref_") else "--"
                ax_b.hlines(r["rel_err"], x_lo, x_hi, linestyles=ls, colors=[color], label=m)
                ax_v.hlines(r["variance"], x_lo, x_hi, linestyles=ls, colors=[color], label=m)
                continue
            # small horizontal offsets keep the error bars of different methods apart
            t = [float(r["tau"]) * (1 + 0.025 * (j - len(methods) / 2)) for r in rs]
            y = [r["rel_err"] for r in rs]
            lo = [y_ - max(r["bias_lo"], floor) if r["bias_lo"] < y_ else 0.0 for y_, r in zip(y, rs)]
            hi = [max(r["bias_hi"] - y_, 0.0) for y_, r in zip(y, rs)]
            ax_b.plot(t, y, color=color, label=m)
            ax_b.errorbar(t, y, yerr=[lo, hi], fmt="none", ecolor=color, capsize=2, lw=1)
            for tt, yy, r in zip(t, y, rs):
                ax_b.plot([tt], [yy], marker="o", color=color, markerfacecolor=color if r["biased"] else "white")
            ax_v.plot(t, [r["variance"] for r in rs], marker="o", color=color, label=m)
        objective = prow[0]["objective"]
        ax_b.set_title(f"{pname} ({objective}): relative error of the mean gradient", fontsize=9)
        ax_v.set_title(f"{pname}: per-draw gradient variance (mean over coordinates)", fontsize=9)
        ax_b.set_ylim(floor, 2.0 * max(max(r["rel_err"], r["bias_hi"]) for r in prow))
        for ax in (ax_b, ax_v):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(x_lo, x_hi)
            ax.set_xlabel("tau")
            ax.set_xticks(taus, [f"{t:g}" for t in taus])
            ax.minorticks_off()
            ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    rows_legend = math.ceil(len(labels) / 5)
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    fig.text(0.5, 1.0, "gradient vs exact enumeration: bars = CI of |E g - g*| / |g*|, filled = flagged biased, "
             "dashed = tau not used", ha="center", va="top", fontsize=8)
    fig.tight_layout(rect=(0, 0.03 * rows_legend + 0.01, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_doc(path: Path, table: str) -> None:
    """Replace the text between the gradcheck table markers in ``path`` with ``table``."""
    begin, end = "<!-- gradcheck:table:begin -->", "<!-- gradcheck:table:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path} has no '{begin}' ... '{end}' markers")
    pre, rest = text.split(begin, 1)
    _, post = rest.split(end, 1)
    path.write_text(f"{pre}{begin}\n{table}{end}{post}")


def _float_list(text: str) -> list[float]:
    try:
        vals = [float(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not (v > 0 and math.isfinite(v)) for v in vals):
        raise argparse.ArgumentTypeError(f"temperatures must be finite numbers > 0, got {text!r}")
    return vals


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {v}")
    return v


def _prob(text: str) -> float:
    v = float(text)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="relaxrun-gradcheck",
        description="Measure every method's gradient bias and variance against exact gradients computed by "
                    "enumerating the discrete latent (Tucker et al. 2017 toy, its vector version, and a small "
                    "VAE-like problem with a fixed random decoder). Writes gradcheck.csv, gradcheck.png and "
                    "gradcheck_table.md to --out and prints the table.",
        epilog="method specs: NAME or NAME:key=value[:key=value], e.g. relaxed_bernoulli:hard=true or "
               "gumbel_softmax:kl=relaxed (latent sizes are set by the problem). Calibration rows "
               f"{REF_NAME} (unbiased) and {REF_SCALED_NAME} (biased) are added unless --no-calibration; "
               "the exit status is 1 when they come out wrong.\n\nexamples:\n"
               "  relaxrun-gradcheck                                   # all methods, tau 0.1 0.5 1\n"
               "  relaxrun-gradcheck --methods hard_concrete straight_through --taus 0.2,0.67 --samples 5000\n"
               "  relaxrun-gradcheck --out docs --doc docs/gradcheck.md   # regenerate the README figure/table",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/gradcheck", type=Path,
                        help="folder for gradcheck.csv, gradcheck.png, gradcheck_table.md (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", metavar="SPEC",
                        help="method specs to check (default: every registered method, plus "
                             + ", ".join(DEFAULT_VARIANTS) + ")")
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS),
                        help="problems to run (default: all)")
    parser.add_argument("--taus", type=_float_list, default=list(DEFAULT_TAUS),
                        help="comma-separated temperatures (default: 0.1,0.5,1); methods whose loss does not "
                             "depend on tau are run once")
    parser.add_argument("--samples", type=_positive_int, default=100000,
                        help="gradient draws S per row (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problems and the draws (default: 0)")
    parser.add_argument("--level", type=_prob, default=0.95, help="confidence level of the bias interval "
                                                                   "(default: %(default)s)")
    parser.add_argument("--alpha", type=_prob, default=1e-3,
                        help="false-alarm rate of the 'biased' test (default: %(default)s)")
    parser.add_argument("--no-calibration", action="store_true", help="leave out the REINFORCE calibration rows")
    parser.add_argument("--chunk", type=_positive_int, default=8192,
                        help="rows per loss call when drawing (memory vs speed; default: %(default)s)")
    parser.add_argument("--doc", type=Path, help="write the markdown table between the "
                                                 "'<!-- gradcheck:table:begin/end -->' markers of this file "
                                                 "(instead of OUT/gradcheck_table.md)")
    parser.add_argument("--quiet", action="store_true", help="no per-row progress lines")
    args = parser.parse_args(argv)

    if args.doc is not None and (not args.doc.is_file() or "<!-- gradcheck:table:begin -->" not in args.doc.read_text()):
        parser.error(f"--doc {args.doc}: not a file with '<!-- gradcheck:table:begin -->' ... "
                     f"'<!-- gradcheck:table:end -->' markers")
    t_start = time.perf_counter()
    texts = args.methods or [*available_methods(),
                             *(v for v in DEFAULT_VARIANTS if v.split(":")[0] in available_methods())]
    try:
        specs = [Spec.parse(t) for t in texts]
        for s in specs:
            if s.name not in (REF_NAME, REF_SCALED_NAME) and s.name not in available_methods():
                raise ValueError(f"unknown method {s.name!r}; available: {', '.join(available_methods())}")
            try:
                law_kind(s)
            except NotImplementedError:
                pass  # reported as skipped, with the reason
            except (ValueError, TypeError) as err:  # a bad option or value in the spec
                raise ValueError(f"method spec {s.label!r}: {err}") from None
    except ValueError as err:
        parser.error(str(err))
    if not args.no_calibration and not any(s.name == REF_NAME for s in specs):
        specs += [Spec(REF_NAME, REF_NAME, {}), Spec(REF_SCALED_NAME, REF_SCALED_NAME, {})]
    torch.set_num_threads(1)  # tiny tensors: extra threads only add contention
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, flush=True))
    rows = run(specs, args.problems, args.taus, args.samples, args.seed, args.level, args.alpha, args.chunk,
               log=log)

    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "gradcheck.csv")
    plot(rows, args.out / "gradcheck.png", args.taus)
    table = markdown_table(rows, args.level)
    if args.doc:
        update_doc(args.doc, table)
        table_at = args.doc
    else:
        table_at = args.out / "gradcheck_table.md"
        table_at.write_text(table)
    print(text_table(rows, args.level))
    print(f"wrote {args.out / 'gradcheck.csv'}, {args.out / 'gradcheck.png'} and {table_at} "
          f"in {time.perf_counter() - t_start:.1f}s")
    bad = calibration_failures(rows)
    for msg in bad:
        print(f"relaxrun-gradcheck: calibration failed: {msg}", file=sys.stderr)
    return 1 if bad else 0


def _console() -> None:  # pragma: no cover
    raise SystemExit(main())


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
