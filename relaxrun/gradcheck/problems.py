"""The problems gradcheck runs: a fixed f(z) = bernoulli_nll(decode(z), x) and encoder outputs.

``toy`` and ``toy_vector`` (objective ``expectation``) and ``vae`` (objective ``elbo``), each for a
Bernoulli, a categorical or a count latent; see :mod:`relaxrun.gradcheck` for what they are.

Sizes (configurations enumerated): Bernoulli D = 1 / 10 / 10 (2 / 1024 / 1024); categorical
N x K = 1 x 2 / 3 x 4 / 3 x 4 (2 / 64 / 64); count N x K = 1 x 4 / 5 x 4 / 3 x 4 (4 / 1024 / 64),
where a count problem's decoder takes the N values (``latent_dim = N``) and K is the support size
the method is built with (counts 0..K-1).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

TOY_TARGET = 0.499
TOY_OFFSET = 1.0  # c in f(z) = (z - t)^2 + c; any c > 0 keeps expm1 positive
BERNOULLI_UNITS = 10
CATEGORICAL_SHAPE = (3, 4)  # N variables x K categories
#: count problems, N units x K support points (the counts 0..K-1): toy, toy_vector, vae
COUNT_SHAPES = {"toy": (1, 4), "toy_vector": (5, 4), "vae": (3, 4)}
KINDS = ("bernoulli", "categorical", "count")
VAE_BATCH, VAE_HIDDEN, VAE_PIXELS = 4, 32, 64
PROBLEMS = ("toy", "toy_vector", "vae")


@dataclass
class Problem:
    """A fixed f(z) = bernoulli_nll(decode(z), x) and encoder outputs for one latent kind."""

    name: str
    kind: str                      # "bernoulli" | "categorical" | "count"
    objective: str                 # "expectation" | "elbo"
    shape: tuple[int, ...]         # (D,) or (N, K)
    decode: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor                # [B, pixels]
    make_params: Callable[[int], torch.Tensor]  # param_dim -> [B, param_dim]

    @property
    def latent_dim(self) -> int:
        """The decoder's input size: D, N*K (one-hots) or N (count values)."""
        return self.shape[0] if self.kind == "count" else math.prod(self.shape)


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
    """The problem ``name`` in ``PROBLEMS`` for latent ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown latent kind {kind!r}; choose from {', '.join(KINDS)}")
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose from {', '.join(PROBLEMS)}")
    if kind == "count":
        return _count_problem(name, seed, dtype)
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
    return Problem(name, kind, "elbo", shape, decode, x, _vae_params(seed, kind, dtype))


def _vae_params(seed: int, kind: str, dtype):
    p_seed = _stable_seed(seed, "vae-params", kind)

    def make_params(param_dim):
        return 1.5 * torch.randn(VAE_BATCH, param_dim, dtype=dtype, generator=torch.Generator().manual_seed(p_seed))

    return make_params


def _count_problem(name: str, seed: int, dtype) -> Problem:
    """The count version of ``name``: N units over the counts 0..K-1 (:data:`COUNT_SHAPES`), the
    decoder fed the N values.

    * toy / toy_vector: f(c) = sum_n (c_n - t)^2 + const through :func:`toy_decoder`, with the Bernoulli
      toy's target rescaled to the support, t = 0.499 (K - 1): just below the middle of 0..K-1, so f is
      nearly symmetric about it (for K = 2 this is the Bernoulli toy). Encoder outputs 0 (toy) and
      linspace(-2.5, 2.5, N) (toy_vector).
    * vae: the MLP decoder of N inputs applied to c / (K - 1) (the counts mapped into [0, 1], the range
      of the other problems' inputs), x drawn from it at counts uniform on 0..K-1, encoder outputs
      ~ N(0, 1.5^2) as for the other kinds.
    """
    shape = COUNT_SHAPES[name]
    n, k = shape
    if name in ("toy", "toy_vector"):
        target = torch.full((n,), TOY_TARGET * (k - 1), dtype=dtype)

        def make_params(param_dim, _name=name):
            if _name == "toy":
                return torch.zeros(1, param_dim, dtype=dtype)
            return torch.linspace(-2.5, 2.5, param_dim, dtype=dtype)[None]

        return Problem(name, "count", "expectation", shape, toy_decoder(target), torch.zeros(1, n, dtype=dtype),
                       make_params)
    g = torch.Generator().manual_seed(_stable_seed(seed, "vae", "count"))
    mlp = mlp_decoder(n, g, dtype)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return mlp(z / (k - 1))

    c0 = torch.randint(k, (VAE_BATCH, n), generator=g).to(dtype)
    x = torch.bernoulli(torch.sigmoid(decode(c0)), generator=g)
    return Problem(name, "count", "elbo", shape, decode, x, _vae_params(seed, "count", dtype))


def _stable_seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


