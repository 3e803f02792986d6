"""The problems gradcheck runs: a fixed f(z) = bernoulli_nll(decode(z), x) and encoder outputs.

``toy`` and ``toy_vector`` (objective ``expectation``) and ``vae`` (objective ``elbo``), each for a
Bernoulli or a categorical latent; see :mod:`relaxrun.gradcheck` for what they are.
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
VAE_BATCH, VAE_HIDDEN, VAE_PIXELS = 4, 32, 64
PROBLEMS = ("toy", "toy_vector", "vae")


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


