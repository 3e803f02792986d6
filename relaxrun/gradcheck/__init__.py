r"""``relaxrun-gradcheck``: every method's gradient bias and variance against exact enumeration.

For a method with an enumerable discrete counterpart (:meth:`Method.discrete_law`, a product of
Bernoulli, categorical or count laws) and a small problem -- a fixed "decoder" ``decode(z)`` and a fixed
batch ``x`` giving f(z) = -log p(x | z) = ``bernoulli_nll(decode(z), x)`` -- gradcheck compares

* the method's real training estimator: the gradient w.r.t. the encoder output ``params`` of
  ``Method.loss(params, decode, x, tau).loss`` (objective ``elbo``), or of ``loss - mean(kl)``
  (objective ``expectation``, the estimator of grad E_q[f] alone), drawn ``S`` times; with
* the exact gradient of the discrete objective: L(params) = mean over the batch of
  sum_b q(b | params) f(b) (+ KL(q || prior) for ``elbo``), summed over all 2^D / K^N
  configurations b and differentiated by autograd.

Latent kinds: ``bernoulli`` (the decoder sees b in {0, 1}^D), ``categorical`` (the flattened one-hot
of N K-way variables) and ``count`` (N variables over K support values, by default the counts
0..K-1; the decoder sees the N values themselves, e.g. ``generalized_gumbel``). Every problem has a
version for each kind; a method runs on the version of its law's kind.

Problems (``--problems``; :mod:`.problems`):

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
* count versions (decoder inputs: the N count values; the method is built with support_size = K):
  ``toy`` N = 1, K = 4 and ``toy_vector`` N = 5, K = 4 (1024 configurations, params = linspace(-2.5,
  2.5)), f(c) = sum_n (c_n - t)^2 + const with t = 0.499 (K - 1), the Bernoulli target rescaled to
  0..K-1 (just below its middle); ``vae`` N = 3, K = 4 (64 configurations), the MLP decoder of 3
  inputs applied to c / (K - 1), x drawn from it at uniform counts, params ~ N(0, 1.5^2).

The exact objective and gradient are in :mod:`.enumeration`. Statistics (:mod:`.statistics`) over
the S gradient draws g_s (flattened, n = batch x param_dim coordinates), with g* the exact gradient
and d = mean(g_s) - g*:

* ``rel_err`` = |d| / |g*|, the relative error of the mean estimate (includes the Monte Carlo noise,
  whose expected size for an unbiased estimator is ``noise`` = sqrt(tr Cov / S) / |g*|);
* ``bias_lo``, ``bias_hi``: a ``--level`` confidence interval for the true relative bias
  |E g - g*| / |g*|, from the unbiased U-statistic |d|^2 - tr(Cov)/S and its normal approximation;
* ``p_value`` of Hotelling's test of E g = g* (T^2 = S d' Cov^-1 d, chi-square on the rank of Cov);
  ``biased`` when p < ``--alpha``;
* ``cos`` = cos(mean g, g*); ``variance`` = mean per-coordinate variance of a single draw; ``snr`` =
  mean over coordinates of |mean| / std (both as in training's ``grad/variance``, ``grad/snr``).

Two calibration rows (:mod:`.calibration`) run with the methods: ``ref_reinforce_loo``, the
registered ``reinforce`` method (score function with a leave-one-out baseline, 4 draws per input;
unbiased, so it must not be flagged), and ``ref_reinforce_loo_x1.2``, the same with its E_q[f]
gradient scaled by 1.2 (must be flagged on the vector problems). The command exits with status 1
when either check fails. ``reinforce`` itself (2 draws, and ``reinforce:latent=categorical``) is
an ordinary row.

Tables, CSV, figure and the doc update are in :mod:`.report`; the command (``main``, specs,
``build``, ``run``) in :mod:`.cli`.

Assumption: the estimator treats the rows of a batch independently. gradcheck draws S samples in
one call by repeating the batch S times (``--chunk`` rows at a time), which is exact for every method
in the project; a method whose estimator pools across the batch would be measured with a larger pool.
"""

from __future__ import annotations

from .calibration import REF_NAME, REF_NAMES, REF_SAMPLES, REF_SCALE, REF_SCALED_NAME, ScaledReinforce, \
    build_reference, calibration_failures
from .cli import DEFAULT_TAUS, DEFAULT_VARIANTS, Spec, _console, build, law_kind, main, run
from .enumeration import enumerate_configs, exact_gradient, exact_objective
from .problems import (BERNOULLI_UNITS, CATEGORICAL_SHAPE, COUNT_SHAPES, KINDS, PROBLEMS, TOY_OFFSET, TOY_TARGET,
                       VAE_BATCH, VAE_HIDDEN, VAE_PIXELS, Problem, make_problem, mlp_decoder, toy_decoder)
from .report import COLUMNS, markdown_table, plot, text_table, update_doc, write_csv
from .statistics import check_row, estimator_draws, expectation_is_isolated, gradient_stats

__all__ = [
    "BERNOULLI_UNITS", "CATEGORICAL_SHAPE", "COLUMNS", "COUNT_SHAPES", "KINDS", "DEFAULT_TAUS", "DEFAULT_VARIANTS", "PROBLEMS", "REF_NAME",
    "REF_NAMES", "REF_SAMPLES", "REF_SCALE", "REF_SCALED_NAME", "TOY_OFFSET", "TOY_TARGET", "VAE_BATCH", "VAE_HIDDEN",
    "VAE_PIXELS", "Problem", "ScaledReinforce", "Spec", "build", "build_reference", "calibration_failures",
    "check_row", "enumerate_configs", "estimator_draws", "exact_gradient", "exact_objective",
    "expectation_is_isolated", "gradient_stats", "law_kind", "main", "make_problem", "markdown_table",
    "mlp_decoder", "plot", "run", "text_table", "toy_decoder", "update_doc", "write_csv",
]
