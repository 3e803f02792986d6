"""Distributions for discrete latents and their relaxations, as torch.distributions subclasses (and, with
pyro-ppl installed, Pyro distributions). A guide with runnable examples: docs/library.md."""

from .binary_concrete import RelaxedBernoulli
from .concrete import GumbelSoftmax
from .conditional_gumbel import conditional_gumbel, conditional_perturbed_logits
from .correlated_bernoulli import (CorrelatedRelaxedBernoulli, correlation_cholesky_from_params, equicorrelation,
                                   identity_correlation, num_correlation_params)
from .generalized_gumbel import GeneralizedGumbelSoftmax, discrete_kl, geometric_support_size, poisson_support_size
from .gumbel import gumbel_max_one_hot, sample_gumbel
from .gumbel_topk import GumbelTopK, PlackettLuce, plackett_luce_log_prob, relaxed_topk, topk_khot
from .hard_concrete import HardConcrete
from .invertible_gaussian import InvertibleGaussian
from .laplace_bridge import (LaplaceBridge, LogisticNormalSoftmax, dirichlet_to_logistic_normal, laplace_bridge_covariance,
                             logistic_normal_to_dirichlet)
from .stochastic_gates import StochasticGate
from .stochastic_times_smooth import StochasticTimesSmooth
from .straight_through import StraightThroughBernoulli

__all__ = [
    "RelaxedBernoulli", "GumbelSoftmax", "HardConcrete", "StochasticGate", "StraightThroughBernoulli",
    "StochasticTimesSmooth", "CorrelatedRelaxedBernoulli", "identity_correlation", "equicorrelation",
    "correlation_cholesky_from_params", "num_correlation_params", "InvertibleGaussian", "GumbelTopK",
    "PlackettLuce", "plackett_luce_log_prob", "relaxed_topk", "topk_khot", "LogisticNormalSoftmax", "LaplaceBridge",
    "laplace_bridge_covariance",
    "dirichlet_to_logistic_normal", "logistic_normal_to_dirichlet", "sample_gumbel", "gumbel_max_one_hot",
    "conditional_gumbel", "conditional_perturbed_logits", "GeneralizedGumbelSoftmax", "discrete_kl",
    "poisson_support_size", "geometric_support_size",
]
