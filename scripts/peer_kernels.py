#!/usr/bin/env python
"""The peer kernels of scripts/benchmark.py's ``peers`` section, run by the Python of the separate
environment that section creates (relaxit and pyro-ppl installed there, never in relaxrun's own).

    <peer venv>/bin/python scripts/peer_kernels.py OUT.json [--repeats N] [--warmup N] [--calls N] [--threads N]

For every law relaxrun and relaxit 1.2.1 both have, and for torch.distributions' RelaxedBernoulli
and RelaxedOneHotCategorical, one call is what a user's training step does with the distribution:
build it from parameters that require grad, ``rsample()``, ``log_prob`` of that sample, and the
backward pass of ``(z * w).sum() + log_prob.sum()``; ``validate_args=False`` for every library
(relaxrun's training loop builds its laws that way). All variants of a law are timed interleaved
(``measure`` of benchmark.py). A library whose class fails on the call is reported with its error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

B, D = 100, 200  # Bernoulli-type laws: 100 x 200 units (section 3's size)
N, K = 20, 10  # simplex laws: 100 x 20 variables of 10 categories
TAU = 0.5


def leaf(*shape, scale=1.0, shift=0.0):
    return (torch.randn(*shape) * scale + shift).requires_grad_()


def step(z: torch.Tensor, lp: torch.Tensor | None, w: torch.Tensor, params) -> dict:
    loss = (z * w).sum() + (lp.sum() if lp is not None else 0.0)
    loss.backward()
    for p in params:
        p.grad = None
    return {}


def cases() -> dict[str, dict]:
    """law -> {library label: (callable doing one call, how the library's class is called)}."""
    import relaxit.distributions as rx
    import torch.distributions as td

    import relaxrun.distributions as rr

    out: dict[str, dict] = {}
    w_bd = torch.randn(B, D)
    w_nk = torch.randn(B, N, K)

    # Hard Concrete (Louizos et al. 2018): log alpha per unit, beta = 2/3, stretch (-0.1, 1.1)
    la = leaf(B, D)

    def rr_hc():
        d = rr.HardConcrete(2 / 3, logits=la, l=-0.1, r=1.1, validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_bd, [la])

    beta, xi, gamma = torch.tensor(2 / 3), torch.tensor(1.1), torch.tensor(-0.1)

    def rx_hc():
        # relaxit draws u of shape sample_shape + [1] and broadcasts it with alpha: alpha shaped [B, D, 1]
        # and sample_shape (B, D) give one uniform per unit ([B, D, 1]); rsample() alone would share one
        # uniform across all units
        d = rx.HardConcrete(la.exp().unsqueeze(-1), beta, xi, gamma, validate_args=False)
        z = d.rsample((B, D))
        return step(z, d.log_prob(z), w_bd.unsqueeze(-1), [la])

    out["HardConcrete"] = {"relaxrun": (rr_hc, "HardConcrete(2/3, logits=la, l=-0.1, r=1.1)"),
                           "relaxit": (rx_hc, "HardConcrete(exp(la)[..., None], beta, xi, gamma).rsample((B, D))")}

    # Gaussian gate clipped to [0, 1] (Yamada et al. 2020): relaxrun StochasticGate, relaxit GaussianRelaxedBernoulli
    mu = leaf(B, D, scale=0.3, shift=0.5)

    def rr_sg():
        d = rr.StochasticGate(mu, 0.5, validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_bd, [mu])

    scale = torch.full((B, D), 0.5)

    def rx_sg():
        d = rx.GaussianRelaxedBernoulli(mu, scale, validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_bd, [mu])

    out["StochasticGate / GaussianRelaxedBernoulli"] = {
        "relaxrun": (rr_sg, "StochasticGate(mu, 0.5)"), "relaxit": (rx_sg, "GaussianRelaxedBernoulli(mu, scale)")}

    lg = leaf(B, D)
    for name in ("StraightThroughBernoulli", "StochasticTimesSmooth"):
        def rr_b(cls=getattr(rr, name)):
            d = cls(logits=lg, validate_args=False)
            z = d.rsample()
            return step(z, d.log_prob(z), w_bd, [lg])

        def rx_b(cls=getattr(rx, name)):
            d = cls(logits=lg, validate_args=False)
            z = d.rsample()
            return step(z, d.log_prob(z), w_bd, [lg])

        out[name] = {"relaxrun": (rr_b, f"{name}(logits=l)"), "relaxit": (rx_b, f"{name}(logits=l)")}

    # Gaussian-copula correlated relaxed Bernoulli (Wang & Yin 2020): D = 200, an equicorrelation 0.3
    R = torch.full((D, D), 0.3)
    R.fill_diagonal_(1.0)
    lc = leaf(B, D)

    def rr_cb():
        d = rr.CorrelatedRelaxedBernoulli(TAU, logits=lc, correlation=R, validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_bd, [lc])

    def rx_cb():
        d = rx.CorrelatedRelaxedBernoulli(torch.sigmoid(lc), R, torch.tensor(TAU), validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_bd, [lc])

    out["CorrelatedRelaxedBernoulli"] = {
        "relaxrun": (rr_cb, "CorrelatedRelaxedBernoulli(0.5, logits=l, correlation=R)"),
        "relaxit": (rx_cb, "CorrelatedRelaxedBernoulli(sigmoid(l), R, tau)")}

    # Invertible Gaussian reparameterisation (Potapczynski et al. 2020): K - 1 Gaussian coordinates per variable
    loc, lsc = leaf(B, N, K - 1), leaf(B, N, K - 1, scale=0.1)

    def rr_ig():
        d = rr.InvertibleGaussian(TAU, loc, lsc.exp(), validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_nk, [loc, lsc])

    def rx_ig():
        d = rx.InvertibleGaussian(loc, lsc.exp(), torch.tensor(TAU), validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_nk, [loc, lsc])

    out["InvertibleGaussian"] = {"relaxrun": (rr_ig, "InvertibleGaussian(0.5, loc, scale)"),
                                 "relaxit": (rx_ig, "InvertibleGaussian(loc, scale, tau)")}

    # Gumbel top-k (k = 3 of 10 per variable). relaxrun's relaxed k-hot has no density (its log_prob
    # raises): the call uses log_prob_hard, the exact Plackett-Luce probability of the ordered hard
    # draw; relaxit's log_prob is -BCE(probs, value), not a density of its sample (and needs values in
    # [0, 1]: its hard, straight-through k-hot, the class's default)
    lt = leaf(B, N, K)

    def rr_tk():
        d = rr.GumbelTopK(TAU, 3, logits=lt, validate_args=False)
        z, hard = d.rsample_with_hard()
        return step(z, d.log_prob_hard(hard), w_nk, [lt])

    def rx_tk():
        d = rx.GumbelSoftmaxTopK(logits=lt, K=torch.tensor(3), tau=torch.tensor(TAU), validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_nk, [lt])

    out["GumbelTopK / GumbelSoftmaxTopK"] = {
        "relaxrun": (rr_tk, "GumbelTopK(0.5, 3, logits=l): rsample_with_hard, log_prob_hard"),
        "relaxit": (rx_tk, "GumbelSoftmaxTopK(logits=l, K=3, tau=0.5) (hard=True, its default): rsample, log_prob")}

    # logistic-normal softmax (the Laplace bridge's law): K Gaussian coordinates per variable
    ln, ls = leaf(B, N, K), leaf(B, N, K, scale=0.1)

    def rr_ln():
        d = rr.LogisticNormalSoftmax(ln, ls.exp(), validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_nk, [ln, ls])

    def rx_ln():
        d = rx.LogisticNormalSoftmax(ln, ls.exp(), validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_nk, [ln, ls])

    out["LogisticNormalSoftmax"] = {"relaxrun": (rr_ln, "LogisticNormalSoftmax(loc, scale)"),
                                    "relaxit": (rx_ln, "LogisticNormalSoftmax(loc, scale)")}

    def rr_ln_s():
        return step(rr.LogisticNormalSoftmax(ln, ls.exp(), validate_args=False).rsample(), None, w_nk, [ln, ls])

    def rx_ln_s():
        return step(rx.LogisticNormalSoftmax(ln, ls.exp(), validate_args=False).rsample(), None, w_nk, [ln, ls])

    out["LogisticNormalSoftmax, rsample + backward only"] = {
        "relaxrun": (rr_ln_s, "LogisticNormalSoftmax(loc, scale).rsample()"),
        "relaxit": (rx_ln_s, "LogisticNormalSoftmax(loc, scale).rsample()")}

    # torch's own relaxations beside relaxrun's
    lb = leaf(B, D)

    def rr_rb():
        d = rr.RelaxedBernoulli(TAU, logits=lb, validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_bd, [lb])

    def td_rb():
        d = td.RelaxedBernoulli(torch.tensor(TAU), logits=lb, validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_bd, [lb])

    out["RelaxedBernoulli (Binary Concrete)"] = {
        "relaxrun": (rr_rb, "RelaxedBernoulli(0.5, logits=l)"),
        "torch.distributions": (td_rb, "RelaxedBernoulli(0.5, logits=l)")}
    lk = leaf(B, N, K)

    def rr_gs():
        d = rr.GumbelSoftmax(TAU, logits=lk, validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_nk, [lk])

    def td_gs():
        d = td.RelaxedOneHotCategorical(torch.tensor(TAU), logits=lk, validate_args=False)
        z = d.rsample()
        return step(z, d.log_prob(z), w_nk, [lk])

    out["GumbelSoftmax / RelaxedOneHotCategorical"] = {
        "relaxrun": (rr_gs, "GumbelSoftmax(0.5, logits=l)"),
        "torch.distributions": (td_gs, "RelaxedOneHotCategorical(0.5, logits=l)")}
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from benchmark import measure  # the same figures (median, min, max, machine load) as the report

    import relaxit
    import pyro

    torch.manual_seed(0)
    res = {"relaxit": relaxit.__version__, "pyro": pyro.__version__, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "calls": args.calls, "laws": {}}
    for law, libs in cases().items():
        fns, entry = {}, {"libraries": {}}
        for lib, (fn, how) in libs.items():
            info = {"call": how}
            try:
                fn()
                fns[lib] = fn
            except Exception as err:  # noqa: BLE001 - a peer's class failing is a result to report
                info["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
            entry["libraries"][lib] = info

        def per_call(fn):
            def run():
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                return (time.perf_counter() - t0) / args.calls * 1e3
            return run

        figs = measure({lib: per_call(fn) for lib, fn in fns.items()}, args.repeats, args.warmup)
        for lib, fig in figs.items():
            entry["libraries"][lib]["ms"] = fig
        ref = figs.get("relaxrun", {}).get("median")
        for lib, fig in figs.items():
            entry["libraries"][lib]["vs_relaxrun"] = fig["median"] / ref if ref else None
        res["laws"][law] = entry
        print(law, {k: (round(v["ms"]["median"], 3) if "ms" in v else v.get("error")) for k, v in entry["libraries"].items()},
              flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
