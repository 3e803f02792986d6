"""The categorical straight-through family: reinmax, gumbel_rao, gst, decoupled_st.

Options and their checks, the forward value (a hard one-hot), the loss terms, and each estimator's
gradient against a closed form derived here by hand (ReinMax, GST), against ST-GS where the papers
say they coincide (Gumbel-Rao with one sample, decoupled ST at equal temperatures), and against the
exact gradient of the discrete objective (``relaxrun.gradcheck``). Fixed seeds; the false-alarm rate
of every statistical assertion is stated where it is made.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from scipy import stats
from torch import nn

from relaxrun import gradcheck as gc
from relaxrun.checks import ConfigError
from relaxrun.config import method_options, register_configs, validate
from relaxrun.distributions.conditional_gumbel import conditional_perturbed_logits
from relaxrun.methods import available_methods, build_method
from relaxrun.methods.base import bernoulli_nll, categorical_kl_uniform, straight_through
from relaxrun.methods.gst import expected_gumbel_gap, gapped_logits
from relaxrun.methods.reinmax import reinmax_surrogate

register_configs()

DT = torch.float64
NAMES = ("reinmax", "gumbel_rao", "gst", "decoupled_st")
DEFAULTS = {
    "reinmax": {},
    "gumbel_rao": {"samples": 10},
    "gst": {"gap": 1.0, "gap_rule": "fixed"},
    "decoupled_st": {"tau_forward": 1.0},
}
#: specs whose forward pass is checked: the defaults and the variants on other code paths
SPECS = [("reinmax", {}), ("reinmax", {"tau": 2.5}), ("gumbel_rao", {}), ("gumbel_rao", {"samples": 1}),
         ("gst", {}), ("gst", {"gap_rule": "p"}), ("decoupled_st", {}), ("decoupled_st", {"tau_forward": 2.0})]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; threads only contend with the rest of the suite
    yield
    torch.set_num_threads(n)


def make(name, **options):
    return build_method(method_options(name, **options)).to(DT)


def one_hot(i: int, k: int = 3) -> torch.Tensor:
    return F.one_hot(torch.tensor(i), k).to(DT)


def capture(decode):
    """A decoder that records its input."""
    seen = []

    def wrapped(z):
        seen.append(z)
        return decode(z)

    return wrapped, seen


def composed(*overrides):
    with initialize_config_module(config_module="relaxrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# -- options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_with_the_yaml_defaults(name):
    assert name in available_methods()
    cfg = method_options(name)
    assert (cfg.name, cfg.tau, cfg.latent_dim, cfg.categories) == (name, 1.0, 20, 10)
    assert {k: getattr(cfg, k) for k in DEFAULTS[name]} == DEFAULTS[name]
    m = build_method(cfg)
    assert (m.param_dim, m.latent_dim, m.metric_kind, m.latent_type) == (200, 200, "discrete", "categorical")
    assert list(m.parameters()) == []


@pytest.mark.parametrize("name,options,key", [
    ("reinmax", {"tau": 0.5}, r"method\.tau must be a finite number >= 1"),
    ("reinmax", {"categories": 1}, r"method\.categories"),
    ("gumbel_rao", {"samples": 0}, r"method\.samples"),
    ("gumbel_rao", {"tau": 0.0}, r"method\.tau"),
    ("gst", {"gap": 0.0}, r"method\.gap must"),
    ("gst", {"gap_rule": "adaptive"}, r"method\.gap_rule"),
    ("decoupled_st", {"tau_forward": -1.0}, r"method\.tau_forward"),
    ("decoupled_st", {"latent_dim": 0}, r"method\.latent_dim"),
])
def test_bad_options_raise_config_errors_naming_the_option(name, options, key):
    with pytest.raises(ConfigError, match=key):
        method_options(name, **options)


def test_reinmax_temperature_schedule_must_stay_at_or_above_one():
    with pytest.raises(ConfigError, match=r"trainer\.tau_min must be >= 1 for method reinmax"):
        validate(composed("method=reinmax", "trainer.tau_schedule=exponential", "trainer.tau_rate=1e-3",
                          "trainer.tau_min=0.5"))
    validate(composed("method=reinmax", "trainer.tau_schedule=exponential", "trainer.tau_rate=1e-3",
                      "trainer.tau_min=1.0", "tau=2.0"))
    with pytest.raises(ConfigError, match=r"method\.tau must be a finite number >= 1"):
        validate(composed("method=reinmax", "tau=0.5"))


# -- the loss: forward value, terms, gradient ----------------------------------------------------------
@pytest.mark.parametrize("name,options", SPECS)
def test_forward_is_a_hard_one_hot_and_the_loss_is_the_mean_negative_elbo(name, options):
    torch.manual_seed(0)
    m = make(name, latent_dim=4, categories=5, **options)
    decode, seen = capture(nn.Linear(m.latent_dim, 784).to(DT))
    x = torch.bernoulli(torch.full((6, 784), 0.3, dtype=DT))
    params = (2 * torch.randn(6, m.param_dim, dtype=DT)).requires_grad_(True)
    t = m.loss(params, decode, x, m.tau)
    z = seen[-1].reshape(6, 4, 5)
    assert set(z.unique().tolist()) <= {0.0, 1.0} and torch.equal(z.sum(-1), torch.ones(6, 4, dtype=DT))
    assert t.recon.shape == t.kl.shape == (6,)
    torch.testing.assert_close(t.loss, (t.recon + t.kl).mean())
    # analytic KL of the posterior the hard samples come from (decoupled_st: logits l / tau_forward)
    law = m.discrete_law(params, m.tau)
    torch.testing.assert_close(t.kl, categorical_kl_uniform(law.logits).sum(-1))
    t.loss.backward()
    assert torch.isfinite(params.grad).all() and params.grad.abs().sum() > 0


# -- ReinMax ------------------------------------------------------------------------------------------
def reinmax_jacobian_by_hand(theta: np.ndarray, d: int, tau: float) -> np.ndarray:
    """d pi_2 / d theta for pi_2 = 2 pi_1 - pi_0 / 2, written out entrywise: a softmax s has
    d s_i / d theta_j = s_i (delta_ij - s_j); pi_1 enters through softmax(theta + const) whose value is
    pi_1 = (D + softmax(theta / tau)) / 2, and pi_0 = softmax(theta)."""
    k = len(theta)
    e = np.exp(theta - theta.max())
    pi0 = e / e.sum()
    et = np.exp(theta / tau - (theta / tau).max())
    pi1 = (np.eye(k)[d] + et / et.sum()) / 2
    jac = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            delta = 1.0 if i == j else 0.0
            jac[i, j] = 2 * pi1[i] * (delta - pi1[j]) - 0.5 * pi0[i] * (delta - pi0[j])
    return jac


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_reinmax_gradient_is_the_hand_derived_jacobian(tau):
    """One 3-category variable, a random decoder: the estimator's gradient w.r.t. theta is J^T v, v the
    decoder's gradient at the hard sample, J the hand-derived Jacobian (to 1e-6 in float64)."""
    torch.manual_seed(1)
    m = make("reinmax", latent_dim=1, categories=3, tau=tau)
    decoder = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 5)).to(DT)
    x = torch.bernoulli(torch.full((1, 5), 0.5, dtype=DT))
    seen_d = set()
    for trial in range(12):
        theta = torch.randn(1, 3, dtype=DT) * 1.5
        params = theta.clone().requires_grad_(True)
        decode, seen = capture(decoder)
        t = m.loss(params, decode, x, tau)
        (g,) = torch.autograd.grad(t.loss - t.kl.mean(), params)  # the recon term's estimator
        hard = seen[-1].detach()
        assert torch.equal(hard.sum(-1), torch.ones(1, dtype=DT)) and set(hard.unique().tolist()) <= {0.0, 1.0}
        d = int(hard.argmax())
        seen_d.add(d)
        z = hard.clone().requires_grad_(True)
        (v,) = torch.autograd.grad(bernoulli_nll(decoder(z), x).sum(), z)  # the decoder's gradient at z = D
        expected = reinmax_jacobian_by_hand(theta[0].numpy(), d, tau).T @ v[0].numpy()
        np.testing.assert_allclose(g[0].numpy(), expected, atol=1e-6, rtol=0)
    assert len(seen_d) >= 2  # several hard samples were exercised


def _exact_expected_gradient(estimator, theta, dfdz):
    """E_{D ~ Cat(softmax(theta))}[gradient of <dfdz(D), z> through the estimator], summed over the K outcomes."""
    k = theta.shape[-1]
    pi0 = torch.softmax(theta, -1)
    total = torch.zeros_like(theta)
    for d in range(k):
        hard = one_hot(d, k)
        t = theta.clone().requires_grad_(True)
        z = estimator(t, hard)
        (g,) = torch.autograd.grad((z * dfdz(hard)).sum(), t)
        total += pi0[d] * g
    return total


def test_reinmax_is_exact_for_quadratic_functions_at_tau_one_where_straight_through_is_not():
    """The paper's second-order claim made exact: for f(D) = D^T A D / 2 + b^T D (A symmetric) and
    tau = 1, E_D[ReinMax gradient] equals d/dtheta sum_i pi_i f(e_i) exactly (Heun's method integrates
    the quadratic exactly); plain ST (backward through softmax(theta)) is off by O(|A|)."""
    torch.manual_seed(2)
    theta = torch.randn(4, dtype=DT)
    a = torch.randn(4, 4, dtype=DT)
    a = a + a.T
    b = torch.randn(4, dtype=DT)
    pi0 = torch.softmax(theta, -1)
    f_vertices = torch.diagonal(a) / 2 + b
    exact = (torch.diag(pi0) - torch.outer(pi0, pi0)) @ f_vertices
    dfdz = lambda hard: a @ hard + b  # noqa: E731
    rm = _exact_expected_gradient(lambda t, h: straight_through(h, reinmax_surrogate(t, h, 1.0)), theta, dfdz)
    torch.testing.assert_close(rm, exact, rtol=0, atol=1e-12)
    st = _exact_expected_gradient(lambda t, h: straight_through(h, torch.softmax(t, -1)), theta, dfdz)
    assert (st - exact).norm() > 0.05 * exact.norm()
    # at tau = 2.5 the second-order match is lost
    rm2 = _exact_expected_gradient(lambda t, h: straight_through(h, reinmax_surrogate(t, h, 2.5)), theta, dfdz)
    assert (rm2 - exact).norm() > 1e-3


def test_reinmax_is_finite_where_softmax_underflows():
    theta = torch.tensor([[0.0, -900.0, 900.0]], dtype=DT, requires_grad=True)
    z = straight_through(one_hot(1).unsqueeze(0), reinmax_surrogate(theta, one_hot(1).unsqueeze(0), 1.0))
    (g,) = torch.autograd.grad((z * torch.tensor([1.0, -2.0, 0.5], dtype=DT)).sum(), theta)
    assert torch.equal(z.detach(), one_hot(1).unsqueeze(0)) and torch.isfinite(g).all()


# -- Gumbel-Rao ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_gumbel_rao_with_one_sample_is_st_gumbel_softmax_exactly(dtype, tau):
    """samples=1: the one perturbation is the forward draw itself, so the random stream, the decoder
    input and the gradient are those of gumbel_softmax hard=true, bit for bit."""
    x = torch.bernoulli(torch.full((7, 784), 0.3)).to(dtype)
    params = torch.randn(7, 200, dtype=dtype) * 2
    decoder = nn.Linear(200, 784).to(dtype)
    out = []
    for name, opts in (("gumbel_softmax", {"hard": True}), ("gumbel_rao", {"samples": 1})):
        m = build_method(method_options(name, tau=tau, **opts))
        decode, seen = capture(decoder)
        p = params.clone().requires_grad_(True)
        torch.manual_seed(4)
        t = m.loss(p, decode, x, tau)
        (g,) = torch.autograd.grad(t.loss, p)
        out.append((seen[-1].detach(), t.loss.detach(), g, torch.rand(1)))  # the stream after the step too
    for a, b in zip(*out):
        assert torch.equal(a, b)


def test_gumbel_rao_surrogate_is_the_mean_over_conditional_draws():
    """samples=k: z_bar is the mean of softmax((l + g_s) / tau) over the forward draw and k - 1
    conditional draws; recomputed here from the same stream with the sampler itself."""
    m = make("gumbel_rao", latent_dim=3, categories=4, samples=5, tau=0.7)
    logits = torch.randn(2, 3, 4, dtype=DT)
    torch.manual_seed(5)
    hard, z_bar = m.surrogate(logits, 0.7)
    torch.manual_seed(5)
    shifted = logits - logits.amax(-1, keepdim=True)
    g = -torch.log(-torch.log(torch.rand(2, 3, 4, dtype=DT).clamp(torch.finfo(DT).tiny, 1 - torch.finfo(DT).eps / 2)))
    first = torch.softmax((shifted + g) / 0.7, -1)
    assert torch.equal(hard, F.one_hot((shifted + g).argmax(-1), 4).to(DT))
    rest = torch.softmax(conditional_perturbed_logits(shifted, hard, 4) / 0.7, -1)
    torch.testing.assert_close(z_bar, (first + rest.sum(0)) / 5, rtol=0, atol=1e-12)


def test_gumbel_rao_keeps_st_gs_mean_and_lowers_its_variance():
    """Rao-Blackwellisation (Paulus et al. 2021, sec. 3): on gradcheck's 3 x 4 categorical VAE problem
    the mean gradient is ST-GS's (the two 95% bias intervals overlap) and the single-draw variance is
    lower (about 0.57x here at tau = 1 with 10 samples; 4000 draws each estimate it to a few percent, so
    the 0.8 threshold leaves no realistic false alarm)."""
    prob = gc.make_problem("vae", "categorical")
    rows = {}
    for spec in ("gumbel_softmax:hard=true", "gumbel_rao"):
        m = gc.build(gc.Spec.parse(spec), "categorical", prob.shape, DT)
        rows[spec] = gc.check_row(m, prob, 1.0, 4000, 0)
    st, gr = rows["gumbel_softmax:hard=true"], rows["gumbel_rao"]
    assert gr["bias_lo"] <= st["bias_hi"] and st["bias_lo"] <= gr["bias_hi"], (st, gr)
    assert gr["variance"] < 0.8 * st["variance"], (st, gr)


# -- GST ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gap", [1.0, 0.25])
def test_gst_moved_logits_put_the_sample_on_top_by_the_gap(gap):
    torch.manual_seed(6)
    theta = torch.randn(200, 5, dtype=DT) * 2
    hard = F.one_hot(torch.randint(0, 5, (200,)), 5).to(DT)
    moved = gapped_logits(theta, hard, gap)
    top = theta.amax(-1, keepdim=True)
    expected = torch.where(hard > 0, top, torch.minimum(theta, top - gap))
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-12)
    assert torch.equal(moved.argmax(-1), hard.argmax(-1))
    lead = (moved * hard).sum(-1) - moved.masked_fill(hard > 0, -math.inf).amax(-1)
    assert torch.all(lead >= gap - 1e-12)


def test_gst_gradient_is_the_hand_derived_softmax_jacobian_at_the_moved_logits():
    """d out / d theta = (1/tau) (diag p - p p^T), p = softmax(theta~ / tau), on a 3-category example with a
    non-argmax sample (theta~ = (max, min(theta_1, max - kappa), ...), derived here by hand)."""
    theta = torch.tensor([0.4, 1.1, -0.3], dtype=DT)
    hard = one_hot(2)
    tau, kappa = 0.6, 1.0
    # max = 1.1: theta~_2 = 1.1 (raised), theta~_0 = min(0.4, 1.1 - 1) = 0.1, theta~_1 = min(1.1, 0.1) = 0.1
    moved = np.array([0.1, 0.1, 1.1])
    p = np.exp(moved / tau) / np.exp(moved / tau).sum()
    jac = (np.diag(p) - np.outer(p, p)) / tau
    v = np.array([0.3, -1.2, 0.8])
    t = theta.clone().requires_grad_(True)
    soft = torch.softmax(gapped_logits(t, hard, kappa) / tau, -1)
    z = straight_through(hard, soft)
    (g,) = torch.autograd.grad((z * torch.tensor(v, dtype=DT)).sum(), t)
    assert torch.equal(z.detach(), hard)
    np.testing.assert_allclose(g.numpy(), jac.T @ v, atol=1e-12, rtol=0)


def test_gst_p_gap_is_the_expected_gumbel_gap():
    """kappa_p = -log(1 - pi_D) / pi_D, and it is the mean lead of the chosen perturbed logit over the
    runner-up under ST-GS's noise given D (conditional sampler; within 5 s.e., false alarm < 1e-6 each)."""
    theta = torch.tensor([0.5, -0.3, 1.2], dtype=DT)
    pi = torch.softmax(theta, -1)
    torch.manual_seed(7)
    for d in range(3):
        hard = one_hot(d)
        kappa = expected_gumbel_gap(theta, hard)
        torch.testing.assert_close(kappa, -torch.log1p(-pi[d:d + 1]) / pi[d], rtol=1e-12, atol=0)
        y = conditional_perturbed_logits(theta, hard, 100_000)
        lead = y[:, d] - y.masked_fill(hard > 0, -math.inf).amax(-1)
        se = lead.std() / math.sqrt(lead.numel())
        assert abs(lead.mean() - kappa[0]) < 5 * se, (d, lead.mean(), kappa)
    # limits: kappa -> 1 for an unlikely sample, ~ its log-odds for a near-certain one; always finite
    extreme = torch.tensor([[0.0, -200.0, 0.0], [0.0, 200.0, 0.0]], dtype=DT)
    k = expected_gumbel_gap(extreme, one_hot(1).expand(2, 3))
    torch.testing.assert_close(k[:, 0], torch.tensor([1.0, 200.0 - math.log(2)], dtype=DT), rtol=1e-9, atol=1e-9)


# -- decoupled ST -------------------------------------------------------------------------------------
def _loss_and_grad(m, params, decode, x, tau, seed):
    p = params.clone().requires_grad_(True)
    torch.manual_seed(seed)
    t = m.loss(p, decode, x, tau)
    (g,) = torch.autograd.grad(t.loss, p)
    return t, g


def test_decoupled_st_at_equal_temperatures_is_st_gs():
    """tau_f = tau_b = 1 is gumbel_softmax hard=true at tau 1 bit for bit (same stream); tau_f = tau_b =
    tau is ST-GS at temperature 1 on the logits l / tau (the paper's single-temperature form)."""
    x = torch.bernoulli(torch.full((5, 784), 0.3, dtype=DT))
    params = torch.randn(5, 200, dtype=DT) * 2
    decoder = nn.Linear(200, 784).to(DT)
    st = make("gumbel_softmax", hard=True, tau=1.0)
    (ta, ga), (tb, gb) = (_loss_and_grad(m, params, decoder, x, 1.0, 8) for m in (make("decoupled_st"), st))
    assert torch.equal(ta.loss, tb.loss) and torch.equal(ta.recon, tb.recon) and torch.equal(ga, gb)
    tau = 0.4
    t1, g1 = _loss_and_grad(make("decoupled_st", tau=tau, tau_forward=tau), params, decoder, x, tau, 9)
    p = params.clone().requires_grad_(True)
    torch.manual_seed(9)
    t2 = st.loss(p / tau, decoder, x, 1.0)
    (g2,) = torch.autograd.grad(t2.loss, p)
    torch.testing.assert_close(t1.loss, t2.loss)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_decoupled_st_forward_temperature_sets_the_sampling_law_and_tau_only_the_gradient():
    torch.manual_seed(10)
    logits = torch.tensor([1.0, 0.0, -1.0], dtype=DT)
    m = make("decoupled_st", latent_dim=1, categories=3, tau_forward=2.0)
    n = 20000
    decode, seen = capture(lambda z: torch.zeros(*z.shape[:-1], 1, dtype=DT))
    m.loss(logits.expand(n, 3), decode, torch.zeros(n, 1, dtype=DT), 0.5)
    counts = seen[-1].sum(0).numpy()
    # D ~ Cat(softmax(l / tau_f)) = Cat(softmax(l / 2)), chi-square at false-alarm rate 1e-3
    assert stats.chisquare(counts, n * torch.softmax(logits / 2, -1).numpy()).pvalue > 1e-3
    torch.testing.assert_close(m.discrete_law(logits.unsqueeze(0), 0.5).logits[0, 0], logits / 2)
    # the backward temperature changes the gradient, never the forward value
    x = torch.bernoulli(torch.full((4, 784), 0.3, dtype=DT))
    params = torch.randn(4, 200, dtype=DT)
    decoder = nn.Linear(200, 784).to(DT)
    method = make("decoupled_st", tau_forward=1.5)
    (ta, ga), (tb, gb) = (_loss_and_grad(method, params, decoder, x, tau, 11) for tau in (0.5, 2.0))
    assert torch.equal(ta.recon, tb.recon) and not torch.allclose(ga, gb)
