r"""The Laplace bridge between Dirichlet and logistic-normal laws (Hobbhahn, Kristiadi and Hennig,
"Fast Predictive Uncertainty for Classification with Bayesian Deep Networks", UAI 2022;
arXiv:2003.01227, 2020), and the logistic normal that stays in :math:`K` dimensions.

**Bridge.** The Laplace approximation of :math:`\mathrm{Dir}(\alpha)` in the softmax basis
(:math:`z = \mathrm{softmax}(y)`, where the density of :math:`y` is
:math:`\propto \prod_k z_k^{\alpha_k}`) is a Gaussian :math:`\mathcal N(\mu, \Sigma)` in
:math:`\mathbb R^K` with the full covariance

.. math::
    \mu_k = \log\alpha_k - \frac1K\sum_{l}\log\alpha_l,\qquad
    \Sigma_{ij} = \frac{\delta_{ij}}{\alpha_i} - \frac1K\Big(\frac1{\alpha_i} + \frac1{\alpha_j}
        - \frac1K\sum_k\frac1{\alpha_k}\Big),

that is :math:`\Sigma = P\,\mathrm{diag}(1/\alpha)\,P` with the centring :math:`P = I - \mathbf 1\mathbf
1^\top/K` (rank K-1: :math:`\Sigma\mathbf 1 = 0`, the direction softmax ignores), a diagonal plus a
rank-2 matrix. Its diagonal is

.. math::
    \Sigma_{kk} = \frac{1}{\alpha_k}\Big(1 - \frac2K\Big) + \frac{1}{K^2}\sum_l \frac{1}{\alpha_l}.

:class:`LaplaceBridge` is this law on the simplex. Because :math:`A P = A` for the log-ratio map
:math:`A = [I_{K-1}, -\mathbf 1]`, its log-ratios have covariance
:math:`A\Sigma A^\top = \mathrm{diag}(1/\alpha_{1:K-1}) + (1/\alpha_K)\mathbf 1\mathbf 1^\top`: the law on
the simplex is that of ``LogisticNormalSoftmax(mu, alpha ** -0.5)``, and every density and KL is
O(K). Keeping only the diagonal :math:`\Sigma_{kk}` as *independent* coordinates (ProdLDA's prior,
and relaxrun's bridge before) is another law, whose log-ratio variances are about half the bridge's
for large alpha (0.50 at alpha = (20, 30)); its KL from the Dirichlet does not vanish as alpha grows
(0.166 nats at (20, 30) against 0.00087 for the bridge).

The paper's inverse map takes the diagonal only (a Dirichlet cannot hold correlations): inverting the
formulas for :math:`\mu` and :math:`\Sigma_{kk}`,

.. math::
    \alpha_k = \frac{1}{\Sigma_{kk}}\Big(1 - \frac2K + \frac{e^{\mu_k}}{K^2}\sum_l e^{-\mu_l}\Big).

:math:`\Sigma` holds **variances** (the diagonal of the covariance); a standard deviation is
:math:`\sqrt{\Sigma_{kk}}`. The round trip :math:`\alpha \to (\mu, \Sigma) \to \alpha` is exact.
The Gaussian's mode maps to :math:`\mathrm{softmax}(\mu) = \alpha / \sum_l \alpha_l`, the mode of
the Dirichlet in the softmax basis; on the simplex itself the logistic normal's mode is close to,
not equal to, the Dirichlet mode :math:`(\alpha_k - 1)/(\alpha_0 - K)` (they agree as
:math:`\alpha` grows, the regime where a Laplace approximation is accurate).

**LogisticNormalSoftmax.** :math:`z = \mathrm{softmax}(y)`, :math:`y \sim \mathcal N(\mathrm{loc},
\mathrm{diag}(\mathrm{scale}^2))` in :math:`\mathbb R^K` (``scale`` is a standard deviation).
Softmax from :math:`\mathbb R^K` is not injective (:math:`y` and :math:`y + c\mathbf 1` give the
same :math:`z`), so the density is computed through a bijection: we **fix the last coordinate** as
reference and use the additive log-ratios :math:`w_k = y_k - y_K = \log z_k - \log z_K`,
:math:`k < K`, which are exactly Gaussian,

.. math::
    w \sim \mathcal N\big(m, C\big),\quad m_k = \mathrm{loc}_k - \mathrm{loc}_K,\quad
    C = \mathrm{diag}(\mathrm{scale}_{1:K-1}^2) + \mathrm{scale}_K^2\,\mathbf 1\mathbf 1^\top,

and :math:`z_{1:K-1}` is the softmax of :math:`(w, 0)`, whose Jacobian determinant is
:math:`\prod_{k=1}^K z_k`. Hence

.. math::
    \log p(z) = \log\mathcal N(w; m, C) - \sum_{k=1}^K \log z_k,

with respect to Lebesgue measure on the first :math:`K-1` coordinates of :math:`z`, the convention of
:class:`torch.distributions.Dirichlet`, so the two can be compared and mixed in KL terms. The
diagonal-plus-rank-one :math:`C` is handled with the matrix determinant lemma and
Sherman-Morrison: :math:`O(K)` per point. Unlike :class:`torch.distributions.LogisticNormal`
(stick-breaking, ``K-1`` parameters), this is the softmax-of-Gaussian law of ProdLDA and of the
Laplace bridge.

Closed-form KL divergences registered (they cover :class:`LaplaceBridge`, a subclass, on either
side): ``LogisticNormalSoftmax || LogisticNormalSoftmax`` (the KL
of the log-ratio Gaussians: exact on the simplex, and no larger than ProdLDA's KL between the two
``K``-dimensional Gaussians, which is an upper bound) and ``Dirichlet || LogisticNormalSoftmax``
(log-ratios of a Dirichlet have digamma means and trigamma covariances). ``LogisticNormalSoftmax ||
Dirichlet`` has no closed form (it needs :math:`E[\log z_k]` under a logistic normal).

Shapes: ``alpha``, ``mu``, ``Sigma``, ``loc``, ``scale``: ``batch_shape + (K,)``; ``event_shape``
is ``(K,)``.
"""

from __future__ import annotations

import torch
from torch.distributions import Dirichlet, constraints
from torch.distributions.kl import register_kl
from torch.distributions.utils import broadcast_all

from ._common import LOG_2PI, DeclaredExpand, RelaxrunDistribution, SampleCache, as_tensor, normal_noise

__all__ = [
    "dirichlet_to_logistic_normal",
    "logistic_normal_to_dirichlet",
    "LogisticNormalSoftmax",
    "LaplaceBridge",
    "laplace_bridge_covariance",
]

_NAME = "LogisticNormalSoftmax"


def _check_last_dim(x: torch.Tensor, name: str, where: str) -> int:
    if x.dim() < 1 or x.shape[-1] < 2:
        raise ValueError(f"{where}: {name} must have a last dimension of size K >= 2; got shape {tuple(x.shape)}")
    return x.shape[-1]


def _check_positive_tensor(x: torch.Tensor, name: str, where: str) -> None:
    ok = torch.isfinite(x) & (x > 0)
    if not bool(ok.all()):
        bad = x.detach().reshape(-1)[~ok.reshape(-1)][0].item()
        raise ValueError(f"{where}: {name} must be finite and > 0; got {bad:.6g}")


def laplace_bridge_covariance(alpha) -> torch.Tensor:
    r"""The bridge's full covariance :math:`\Sigma = P\,\mathrm{diag}(1/\alpha)\,P`, dense ``(..., K, K)``:
    :math:`\Sigma_{ij} = \delta_{ij}/\alpha_i - (1/\alpha_i + 1/\alpha_j - \sum_k (1/\alpha_k)/K)/K`."""
    where = "laplace_bridge_covariance"
    alpha = as_tensor(alpha, name="alpha", dist=where)
    K = _check_last_dim(alpha, "alpha", where)
    _check_positive_tensor(alpha, "alpha", where)
    d = alpha.reciprocal()
    s = d.sum(-1, keepdim=True).unsqueeze(-1)
    return torch.diag_embed(d) - (d.unsqueeze(-1) + d.unsqueeze(-2)) / K + s / K**2


def dirichlet_to_logistic_normal(alpha, validate: bool = True):
    r"""Laplace bridge ``Dir(alpha) -> N(mu, diag(Sigma))`` in the softmax basis (Hobbhahn et al.).

    Args:
        alpha: concentrations ``(..., K)``, K >= 2, all > 0.

    Returns:
        ``(mu, Sigma)``, both ``(..., K)``: ``mu_k = log alpha_k - mean_l log alpha_l`` (sums to 0),
        ``Sigma_kk = (1 - 2/K)/alpha_k + sum_l(1/alpha_l)/K^2``, the **variances**: the diagonal of the
        bridge's covariance, the input of the inverse map. The law with the full covariance is
        :class:`LaplaceBridge` (and :func:`laplace_bridge_covariance` the dense matrix); treating these
        variances as independent coordinates is a different, worse approximation.
    """
    where = "dirichlet_to_logistic_normal"
    alpha = as_tensor(alpha, name="alpha", dist=where)
    K = _check_last_dim(alpha, "alpha", where)
    if validate:
        _check_positive_tensor(alpha, "alpha", where)
    log_alpha = torch.log(alpha)
    mu = log_alpha - log_alpha.mean(-1, keepdim=True)
    inv = alpha.reciprocal()
    sigma = inv * (1.0 - 2.0 / K) + inv.sum(-1, keepdim=True) / K**2
    return mu, sigma


def logistic_normal_to_dirichlet(mu, sigma, validate: bool = True) -> torch.Tensor:
    r"""Inverse Laplace bridge ``N(mu, diag(Sigma)) -> Dir(alpha)`` (Hobbhahn et al.).

    Args:
        mu: means ``(..., K)`` (any shift ``mu + c`` gives the same alpha).
        sigma: the **variances** ``Sigma_kk`` ``(..., K)``, > 0 (not standard deviations).

    Returns:
        ``alpha_k = (1 - 2/K + exp(mu_k) sum_l exp(-mu_l) / K^2) / Sigma_kk``, shape ``(..., K)``.
    """
    where = "logistic_normal_to_dirichlet"
    mu = as_tensor(mu, name="mu", dist=where)
    sigma = as_tensor(sigma, like=mu, name="Sigma", dist=where)
    mu, sigma = broadcast_all(mu, sigma)
    K = _check_last_dim(mu, "mu", where)
    if validate:
        if not bool(torch.isfinite(mu).all()):
            bad = mu.detach().reshape(-1)[~torch.isfinite(mu).reshape(-1)][0].item()
            raise ValueError(f"{where}: mu must be finite real numbers; got {bad:.6g}")
        _check_positive_tensor(sigma, "Sigma (the variances)", where)
    # exp(mu_k) * sum_l exp(-mu_l) = exp(mu_k + logsumexp(-mu)): no overflow for large |mu|
    cross = torch.exp(mu + torch.logsumexp(-mu, dim=-1, keepdim=True))
    return (1.0 - 2.0 / K + cross / K**2) / sigma


def _alr_gaussian(loc: torch.Tensor, var: torch.Tensor):
    """Log-ratio Gaussian of softmax(N(loc, diag(var))): mean m, C = diag(d) + s 11^T."""
    m = loc[..., :-1] - loc[..., -1:]
    d = var[..., :-1]
    s = var[..., -1]
    return m, d, s


def _dpr1_logdet_and_quad(d: torch.Tensor, s: torch.Tensor, r: torch.Tensor):
    """For C = diag(d) + s 11^T: log det C and r^T C^{-1} r (r broadcasts with d)."""
    inv_d = d.reciprocal()
    sum_inv = inv_d.sum(-1)
    one_plus = 1.0 + s * sum_inv
    logdet = torch.log(d).sum(-1) + torch.log(one_plus)
    r_over_d = r * inv_d
    quad = (r * r_over_d).sum(-1) - s * r_over_d.sum(-1).pow(2) / one_plus
    return logdet, quad


def _dpr1_trace(d2, s2, d1, s1):
    """tr(C2^{-1} C1) for C_i = diag(d_i) + s_i 11^T (Sherman-Morrison), O(K)."""
    inv = d2.reciprocal()
    sum_inv = inv.sum(-1)
    one_plus = 1.0 + s2 * sum_inv
    tr_diag = (d1 * inv).sum(-1) - s2 * (d1 * inv * inv).sum(-1) / one_plus
    ones_quad = sum_inv - s2 * sum_inv.pow(2) / one_plus  # 1^T C2^{-1} 1
    return tr_diag + s1 * ones_quad


class LogisticNormalSoftmax(DeclaredExpand, SampleCache, RelaxrunDistribution):
    """Softmax of a diagonal Gaussian in ``R^K``: a law on the open ``K``-simplex.

    Args:
        loc: Gaussian mean ``(..., K)``, K >= 2, finite.
        scale: Gaussian **standard deviation** (not variance), broadcastable with ``loc``, > 0.

    ``log_prob`` is the exact density on the simplex, computed through the additive log-ratios to
    the last coordinate (see the module docstring), with respect to Lebesgue measure on the first
    ``K-1`` coordinates. ``log_prob`` of the tensor most recently returned by ``rsample``/``sample``
    uses the Gaussian draw and ``log z`` computed with it, so it stays exact where float32 rounded a
    coordinate to 0. Both are functions of ``z`` alone (the log-ratios of the draw are those of
    ``z``, whatever the parameters), so this holds at a fixed sample and along the sample path alike.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.simplex
    has_rsample = True
    _expand_params = {"loc": 1, "scale": 1}

    def __init__(self, loc, scale, validate_args=None):
        loc = as_tensor(loc, name="loc", dist=_NAME)
        scale = as_tensor(scale, like=loc, name="scale", dist=_NAME)
        loc, scale = broadcast_all(loc, scale)
        _check_last_dim(loc, "loc", _NAME)
        self.loc, self.scale = loc, scale
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    @staticmethod
    def from_dirichlet(alpha, validate_args=None) -> "LaplaceBridge":
        """The Laplace-bridge approximation of ``Dir(alpha)`` with its full covariance: :class:`LaplaceBridge`."""
        return LaplaceBridge(alpha, validate_args=validate_args)

    def to_dirichlet(self) -> Dirichlet:
        """The paper's inverse map applied to ``loc`` and the variances ``variance_y`` of ``y``."""
        return Dirichlet(logistic_normal_to_dirichlet(self.loc, self.variance_y))

    @property
    def variance_y(self) -> torch.Tensor:
        """Variances of the underlying Gaussian ``y`` (``scale**2``)."""
        return self.scale.pow(2)

    def rsample_gaussian(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """Differentiable ``y ~ N(loc, scale^2)``, independent per element, ``sample_shape + batch + (K,)``."""
        shape = self._extended_shape(sample_shape)
        eps = normal_noise(shape, self.loc.dtype, self.loc.device, generator)
        return self.loc + self.scale * eps

    def rsample(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        y = self.rsample_gaussian(sample_shape, generator)
        log_z = torch.log_softmax(y, dim=-1)
        z = log_z.exp()
        # value auxiliaries (see SampleCache): only y's log-ratios are used, and they are log z's
        self._remember("_cache", z, y, log_z)
        return z

    def _log_prob_alr(self, w: torch.Tensor, log_z: torch.Tensor) -> torch.Tensor:
        m, d, s = _alr_gaussian(self.loc, self.scale.pow(2))
        logdet, quad = _dpr1_logdet_and_quad(d, s, w - m)
        k_minus_1 = self.event_shape[0] - 1
        return -0.5 * (k_minus_1 * LOG_2PI + logdet + quad) - log_z.sum(-1)

    def log_prob_gaussian(self, y: torch.Tensor) -> torch.Tensor:
        """log p(z) at ``z = softmax(y)``, computed from ``y`` (density with respect to z).

        Any ``y`` in the fibre ``y + c 1`` gives the same value; exact where z itself rounds to 0.
        """
        return self._log_prob_alr(y[..., :-1] - y[..., -1:], torch.log_softmax(y, dim=-1))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        record = self._recall("_cache", value)
        if record is not None:
            _, y, log_z = record
            w = y[..., :-1] - y[..., -1:]
        else:
            if self._validate_args:
                self._validate_sample(value)
            log_z = torch.log(value.clamp_min(torch.finfo(value.dtype).tiny))
            w = log_z[..., :-1] - log_z[..., -1:]
        return self._log_prob_alr(w, log_z)

    _unavailable = {
        "mean": "E[softmax(y)] of a Gaussian y has no closed form; estimate it from samples",
        "variance": "no closed form (as the mean); estimate it from samples",
        "mode": "no closed form on the simplex (softmax(loc) is the image of the Gaussian's mode, not the density's)",
        "entropy": "it needs E[log z_k] under a logistic normal, which has no closed form; estimate -log_prob "
                   "from samples",
        "cdf": "the law is multivariate (on the simplex)",
        "icdf": "the law is multivariate (on the simplex)",
        "enumerate_support": "the law is continuous on the simplex",
    }

    def __repr__(self):
        return f"{_NAME}(loc: {tuple(self.loc.shape)}, scale: {tuple(self.scale.shape)})"


class LaplaceBridge(LogisticNormalSoftmax):
    r"""The Laplace bridge of ``Dir(alpha)`` (Hobbhahn et al.): ``z = softmax(y)``, ``y ~ N(mu, Sigma)`` in
    ``R^K`` with the **full** covariance :math:`\Sigma = P\,\mathrm{diag}(1/\alpha)\,P` of the module
    docstring (diagonal plus rank 2, singular along :math:`\mathbf 1`).

    Args:
        alpha: the Dirichlet's concentrations ``(..., K)``, K >= 2, all > 0 (``concentration`` is an
            alias, torch's name).

    ``rsample_gaussian`` draws ``y`` with mean ``mu`` and covariance exactly ``Sigma`` (a diagonal draw
    centred: ``P (mu + alpha^{-1/2} eps)``, O(K)); ``rsample`` is its softmax. ``log_prob`` is the exact
    density on the simplex (Lebesgue measure on the first K-1 coordinates, as
    :class:`torch.distributions.Dirichlet`), through the log-ratio Gaussian
    :math:`\mathcal N(A\mu, \mathrm{diag}(1/\alpha_{1:K-1}) + \mathbf 1\mathbf 1^\top/\alpha_K)`: O(K) per point
    (matrix determinant lemma, Sherman-Morrison). As a law on the simplex it equals
    ``LogisticNormalSoftmax(mu, alpha ** -0.5)`` (``loc`` and ``scale`` hold that representation), so the
    closed-form KLs registered for :class:`LogisticNormalSoftmax` apply on either side, among them
    ``kl_divergence(Dirichlet(alpha), LaplaceBridge(alpha))``.
    """

    arg_constraints = {"alpha": constraints.independent(constraints.positive, 1)}

    def __init__(self, alpha, validate_args=None):
        where = "LaplaceBridge"
        alpha = as_tensor(alpha, name="alpha", dist=where)
        _check_last_dim(alpha, "alpha", where)
        if validate_args is not False:
            _check_positive_tensor(alpha, "alpha", where)
        self.alpha = alpha
        log_alpha = torch.log(alpha)
        super().__init__(log_alpha - log_alpha.mean(-1, keepdim=True), alpha.rsqrt(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LaplaceBridge, _instance)
        batch_shape = torch.Size(batch_shape)
        new = super().expand(batch_shape, _instance=new)  # loc and scale, the base's initialisation
        new.alpha = self.alpha.expand(batch_shape + self.event_shape)
        return new

    @property
    def concentration(self) -> torch.Tensor:
        """Alias of ``alpha`` (torch's Dirichlet calls it so)."""
        return self.alpha

    @property
    def cov_diag(self) -> torch.Tensor:
        r"""The diagonal part ``1/alpha`` of :math:`\Sigma = \mathrm{diag}(1/\alpha) + U M U^\top`, ``(..., K)``."""
        return self.alpha.reciprocal()

    @property
    def cov_low_rank(self):
        r"""``(U, M)`` of :math:`\Sigma = \mathrm{diag}(d) + U M U^\top`: ``U = [d, 1]`` ``(..., K, 2)`` and
        ``M = [[0, -1/K], [-1/K, sum(d)/K^2]]`` ``(..., 2, 2)``, with ``d = 1/alpha``."""
        d = self.cov_diag
        K = d.shape[-1]
        U = torch.stack([d, torch.ones_like(d)], dim=-1)
        s = d.sum(-1)
        off = torch.full_like(s, -1.0 / K)
        M = torch.stack([torch.stack([torch.zeros_like(s), off], -1), torch.stack([off, s / K**2], -1)], -2)
        return U, M

    @property
    def covariance_matrix(self) -> torch.Tensor:
        """The dense ``Sigma``, ``(..., K, K)`` (O(K^2); the law itself never forms it)."""
        return laplace_bridge_covariance(self.alpha)

    @property
    def variance_y(self) -> torch.Tensor:
        """The diagonal ``Sigma_kk`` of the covariance of ``y`` (the paper's variances)."""
        d = self.cov_diag
        K = d.shape[-1]
        return d * (1.0 - 2.0 / K) + d.sum(-1, keepdim=True) / K**2

    def to_dirichlet(self) -> Dirichlet:
        """The paper's inverse map of (mu, diag Sigma): ``Dir(alpha)`` again (the round trip is exact)."""
        return Dirichlet(logistic_normal_to_dirichlet(self.loc, self.variance_y))

    def rsample_gaussian(self, sample_shape=torch.Size(), generator=None) -> torch.Tensor:
        """Differentiable ``y ~ N(mu, Sigma)``, ``sample_shape + batch_shape + (K,)``: ``y`` sums to 0."""
        y = super().rsample_gaussian(sample_shape, generator)
        return y - y.mean(-1, keepdim=True)

    def __repr__(self):
        return f"LaplaceBridge(alpha: {tuple(self.alpha.shape)})"


def _gaussian_kl_dpr1(m1, d1, s1, m2, d2, s2) -> torch.Tensor:
    """KL(N(m1, C1) || N(m2, C2)) for C_i = diag(d_i) + s_i 11^T."""
    n = m1.shape[-1]
    logdet1, _ = _dpr1_logdet_and_quad(d1, s1, torch.zeros_like(m1))
    logdet2, quad = _dpr1_logdet_and_quad(d2, s2, m2 - m1)
    return 0.5 * (_dpr1_trace(d2, s2, d1, s1) + quad - n + logdet2 - logdet1)


@register_kl(LogisticNormalSoftmax, LogisticNormalSoftmax)
def _kl_lns_lns(p: LogisticNormalSoftmax, q: LogisticNormalSoftmax) -> torch.Tensor:
    """Exact KL on the simplex = KL of the (K-1)-dimensional log-ratio Gaussians."""
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL({_NAME} || {_NAME}): K differs ({p.event_shape[0]} vs {q.event_shape[0]})")
    return _gaussian_kl_dpr1(*_alr_gaussian(p.loc, p.scale.pow(2)), *_alr_gaussian(q.loc, q.scale.pow(2)))


@register_kl(Dirichlet, LogisticNormalSoftmax)
def _kl_dirichlet_lns(p: Dirichlet, q: LogisticNormalSoftmax) -> torch.Tensor:
    r"""KL(Dir(alpha) || LNS) = -H(Dir) - E_Dir[log q(z)], all terms closed form.

    Under the Dirichlet, w_k = log z_k - log z_K has mean psi(alpha_k) - psi(alpha_K) and
    covariance diag(psi'(alpha_{1:K-1})) + psi'(alpha_K) 11^T, and E[log z_k] = psi(alpha_k) - psi(alpha_0), so
    E[log q] = -1/2 ((K-1) log 2pi + log det C + tr(C^{-1} Cov w) + (E w - m)^T C^{-1} (E w - m)) - sum_k E[log z_k].
    """
    alpha = p.concentration
    if alpha.shape[-1] != q.event_shape[0]:
        raise ValueError(f"KL(Dirichlet || {_NAME}): K differs ({alpha.shape[-1]} vs {q.event_shape[0]})")
    alpha0 = alpha.sum(-1, keepdim=True)
    dig = torch.digamma(alpha)
    tri = torch.polygamma(1, alpha)
    mean_w = dig[..., :-1] - dig[..., -1:]
    m, d, s = _alr_gaussian(q.loc, q.scale.pow(2))
    n = alpha.shape[-1] - 1
    logdet, quad = _dpr1_logdet_and_quad(d, s, mean_w - m)
    trace = _dpr1_trace(d, s, tri[..., :-1], tri[..., -1])
    e_log_z_sum = (dig - torch.digamma(alpha0)).sum(-1)
    e_log_q = -0.5 * (n * LOG_2PI + logdet + trace + quad) - e_log_z_sum
    return -p.entropy() - e_log_q


# the same closed form, registered for the bridge by name (dispatch would find the base's anyway)
register_kl(Dirichlet, LaplaceBridge)(_kl_dirichlet_lns)
