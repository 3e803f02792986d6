"""Laplace bridge figure: a random Dirichlet on the 2-simplex, its logistic-normal approximation by the
Laplace bridge with the full covariance Sigma = P diag(1/alpha) P (``LaplaceBridge``), the Dirichlet
mapped back, and for comparison the law that keeps only the variances Sigma_kk as independent
coordinates (Hobbhahn et al. 2020).

    python scripts/laplace_bridge.py out.png [--seed 0] [--alpha 2 5 3]

Four density panels on the triangle (K=3), each titled with its KL from the Dirichlet. All densities are with respect to Lebesgue measure on
(z1, z2), the convention of relaxrun's and torch's log_prob, so the colour scales are comparable.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.tri as mtri  # noqa: E402
import torch  # noqa: E402
from torch.distributions import Dirichlet, kl_divergence  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from relaxrun.distributions.laplace_bridge import (  # noqa: E402
    LaplaceBridge,
    LogisticNormalSoftmax,
    dirichlet_to_logistic_normal,
    logistic_normal_to_dirichlet,
)

# triangle corners for categories 1, 2, 3 (equilateral, unit side)
CORNERS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)


def simplex_grid(n: int = 200):
    """Interior barycentric points (strictly inside, so every log-density is finite) and a mesh."""
    i, j = torch.meshgrid(torch.arange(n + 1), torch.arange(n + 1), indexing="ij")
    keep = (i + j) <= n
    bary = torch.stack([i[keep], j[keep], n - i[keep] - j[keep]], dim=-1).to(torch.float64)
    bary = (bary + 1.0 / 3) / (n + 1)  # shift off the boundary; still sums to 1
    xy = bary @ CORNERS
    return bary, mtri.Triangulation(xy[:, 0].numpy(), xy[:, 1].numpy())


def draw(ax, tri, density, title, vmax):
    levels = torch.linspace(0, vmax, 21).numpy()
    cs = ax.tricontourf(tri, density.clamp(max=vmax).numpy(), levels=levels, cmap="viridis")
    ax.plot(*torch.cat([CORNERS, CORNERS[:1]]).T.numpy(), color="black", lw=1)
    for (x, y), name, dx, dy in zip(CORNERS.tolist(), ("$z_1$", "$z_2$", "$z_3$"),
                                    (-0.05, 0.05, 0.0), (-0.05, -0.05, 0.04)):
        ax.text(x + dx, y + dy, name, ha="center", va="center", fontsize=11)
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_xlim(-0.1, 1.1)
    ax.set_ylim(-0.1, 0.95)
    return cs


def fmt(v: torch.Tensor) -> str:
    return "(" + ", ".join(f"{x:.2f}" for x in v.tolist()) + ")"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="path of the PNG to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random Dirichlet parameters")
    parser.add_argument("--alpha", type=float, nargs=3, default=None, help="use these parameters instead")
    parser.add_argument("--grid", type=int, default=200, help="grid points per simplex edge")
    args = parser.parse_args(argv)

    if args.alpha is not None:
        alpha = torch.tensor(args.alpha, dtype=torch.float64)
    else:
        gen = torch.Generator().manual_seed(args.seed)
        # concentrations in (1.5, 8): interior modes, so all three panels show a visible peak
        alpha = 1.5 + 6.5 * torch.rand(3, generator=gen, dtype=torch.float64)

    mu, sigma = dirichlet_to_logistic_normal(alpha)  # sigma: the variances, diagonal of the covariance
    bridge = LaplaceBridge(alpha)  # the full covariance
    diagonal = LogisticNormalSoftmax(mu, sigma.sqrt())  # the variances as independent coordinates
    alpha_back = logistic_normal_to_dirichlet(mu, sigma)
    dirichlet = Dirichlet(alpha)
    kl_bridge = float(kl_divergence(dirichlet, bridge))
    kl_diag = float(kl_divergence(dirichlet, diagonal))

    bary, tri = simplex_grid(args.grid)
    dens_dir = dirichlet.log_prob(bary).exp()
    dens_ln = bridge.log_prob(bary).exp()
    dens_back = Dirichlet(alpha_back).log_prob(bary).exp()
    dens_diag = diagonal.log_prob(bary).exp()
    vmax = float(max(dens_dir.max(), dens_ln.max(), dens_back.max(), dens_diag.max()))

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6), constrained_layout=True)
    draw(axes[0], tri, dens_dir, f"Dirichlet($\\alpha$)\n$\\alpha$ = {fmt(alpha)}", vmax)
    draw(axes[1], tri, dens_ln,
         f"Laplace bridge, full $\\Sigma = P\\,$diag$(1/\\alpha)\\,P$\n$\\mu$ = {fmt(mu)}, "
         f"KL(Dir || bridge) = {kl_bridge:.4f}", vmax)
    draw(axes[2], tri, dens_back,
         f"Dirichlet mapped back\n$\\alpha'$ = {fmt(alpha_back)}, "
         f"max|$\\alpha'-\\alpha$| = {float((alpha_back - alpha).abs().max()):.1e}", vmax)
    cs = draw(axes[3], tri, dens_diag,
              f"only $\\Sigma_{{kk}}$ = {fmt(sigma)}, independent\n(not the bridge) KL(Dir || this) = {kl_diag:.4f}",
              vmax)
    fig.colorbar(cs, ax=axes, shrink=0.8, label="density w.r.t. $dz_1\,dz_2$")
    fig.suptitle("Laplace bridge (Hobbhahn et al. 2020): Dirichlet $\\to$ logistic normal $\\to$ Dirichlet")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}  alpha={fmt(alpha)}  alpha_back={fmt(alpha_back)}  KL(Dir || bridge)={kl_bridge:.6f}  "
          f"KL(Dir || diagonal)={kl_diag:.6f}")


if __name__ == "__main__":
    main()
