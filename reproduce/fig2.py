r"""Figure 2: how far q(x_t | y) is from p(x_t | y) for each covariance V[x | x_t], against σ_t.

Protocol (protocols §3.1): per seed, a Gaussian mixture prior of 256 components (std 0.01) on
a random 1-D manifold in R³, one observation y = W x* + ε (W ∈ R^{1×3}, σ_y = 0.01, x* the
first centre). For each σ_t, the exact p(x_t | y) (closed-form posterior samples plus noise) is
compared with q(x_t | y) ∝ p(x_t) q(y | x_t) (prior draws resampled by the Gaussian likelihood
of each covariance) by the debiased OT score S = OT(u₁, v) − OT(u₁, u₂). Two references: the
noise floor, S with a third exact sample as v, and the resampling floor, S of prior draws
resampled with the exact likelihood p(y | x_t) (a Gaussian mixture): what the resampling itself
costs, so that a curve near it is limited by the finite prior draws, not by its covariance.
Medians over seeds with the 25–75 % band.

    python reproduce/fig2.py --quick     # 4 seeds, 2^17 prior draws, exact OT on 2048: ~10 min
    python reproduce/fig2.py --device cuda   # 64 seeds, 2^20 draws, the paper's Sinkhorn on 16384
    python reproduce/fig2.py --smoke     # 1 seed, 1 σ_t, 1 Sinkhorn iteration: ~10 s

Expected (paper): the Tweedie covariance orders of magnitude below the heuristics for σ_t in
[0.1, 1]; V = 0 worst at large σ_t. Writes results/fig2[_quick].{csv,json,png}.
"""

import dataclasses
import sys
import time

import numpy as np
import pandas as pd
import torch

from emdm.config import (
    POSITIVE,
    check_device,
    config_dict,
    option,
)
from emdm.data import RandomManifold
from emdm.denoisers import MixtureDenoiser
from emdm.errors import cli
from emdm.experiment import DeviceRun, parse_run
from emdm.likelihood import EXACT, LIKELIHOODS, log_likelihood, resample
from emdm.metrics import METHODS as OT_METHODS
from emdm.metrics import ot_cost
from emdm.plots import figure
from emdm.progress import bar
from emdm.provenance import write_results
from emdm.publish import check_writable

LABELS = {
    "tweedie": r"$\mathbb{V}[x \mid x_t]$",
    "cov_x": r"$(\Sigma_x^{-1} + \Sigma_t^{-1})^{-1}$",
    "sigma_t": r"$\Sigma_t$",
    "zero": r"$0$",
    "exact": "exact likelihood (resampling floor)",
    "floor": "noise floor",
}


@dataclasses.dataclass
class Fig2Config(DeviceRun):
    r"""Figure 2: the distance from q(x_t | y) to p(x_t | y) per covariance, against σ_t."""

    seeds: int = option(64, "seeds (problems) 0, 1, ..., seeds - 1 (paper: 64)", check=POSITIVE)
    components: int = option(256, "Gaussians of the prior (paper: 256)", check=POSITIVE)
    std: float = option(0.01, "std of each Gaussian (paper: 0.01)", check=POSITIVE)
    sigma_y: float = option(0.01, "observation noise std σ_y (paper: 0.01)", check=POSITIVE)
    prior_samples: int = option(2**20, "prior draws resampled per σ_t", check=POSITIVE)
    ot_samples: int = option(16384, "draws per side of each OT cost", check=POSITIVE)
    method: str = option("sinkhorn", "OT solver (paper: sinkhorn)", choices=OT_METHODS)
    ot_iterations: int = option(1024, "at most this many Sinkhorn iterations (paper: 1024)",
                                check=POSITIVE)  # fmt: skip
    sigmas: tuple[float, ...] = option(
        (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
        "noise levels σ_t",
        check=POSITIVE,
    )


QUICK = Fig2Config(
    seeds=4, prior_samples=2**17, ot_samples=2048, method="emd", scale="quick", name="fig2_quick"
)
PAPER = Fig2Config(name="fig2")
# the paper's problem (256 Gaussians, the likelihoods' (2048, 256) chunks) and Sinkhorn: one
# seed, one σ_t, 2^14 prior draws (8 chunks of the paper's 512), one Sinkhorn iteration on 1024
# OT samples per side: at the paper's 16 384, each cost holds several (16 384, 16 384) float64
# matrices (2 GiB each), beyond 2 shared CPU cores
SMOKE = Fig2Config(seeds=1, sigmas=(1.0,), prior_samples=2**14, ot_samples=1024,
                   ot_iterations=1, scale="smoke", name="fig2_smoke")  # fmt: skip


def one_seed(seed: int, cfg: Fig2Config) -> list[dict]:
    # every draw is made on the CPU (the results do not depend on the device); the
    # likelihoods and the OT costs, the bulk of the work, run on cfg.device
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(seed)
    means = RandomManifold(3, generator=g).sample(cfg.components, generator=g)
    prior = MixtureDenoiser(means, cfg.std)
    W = torch.randn((1, 3), generator=g, dtype=torch.float64)
    W = W / W.norm()
    y = W @ means[0] + cfg.sigma_y * torch.randn(1, generator=g, dtype=torch.float64)
    x = prior.sample(cfg.prior_samples, generator=g)
    cov_x = torch.cov(x.T)
    n = cfg.ot_samples
    exact = prior.posterior(W, y[None], cfg.sigma_y**2).sample(3 * n, generator=g)[0]
    g_exact = torch.Generator().manual_seed(2**32 + seed)  # the other draws stay as they were

    rows = []
    for sigma in cfg.sigmas:
        u1, u2, u3 = (exact + sigma * torch.randn(exact.shape, generator=g, dtype=x.dtype)).split(
            n
        )
        x_t = x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
        u1 = u1.to(device)
        on = (prior.to(device), x_t.to(device), sigma, W.to(device), y.to(device))
        ot = {"method": cfg.method, "iterations": cfg.ot_iterations}
        base = ot_cost(u1, u2.to(device), **ot)
        approx = {"floor": u3}
        for cov in (*LIKELIHOODS, EXACT):
            logw = log_likelihood(*on, cfg.sigma_y**2, cov, cov_x.to(device)).cpu()
            approx[cov] = resample(x_t, logw, n, generator=g_exact if cov == EXACT else g)
        for cov, v in approx.items():
            score = max(float(ot_cost(u1, v.to(device), **ot) - base), 1e-6)
            rows.append(
                {"seed": seed, "sigma_t": sigma, "covariance": cov, "method": cfg.method,
                 "metric": "score", "value": score}
            )  # fmt: skip
    return rows


def plot(frame: pd.DataFrame):
    fig, axes = figure(1, 1, (4.5, 3.5))
    ax = axes[0, 0]
    for cov, label in LABELS.items():
        q = frame[frame.covariance == cov].groupby("sigma_t")["value"].quantile([0.25, 0.5, 0.75])
        q = q.unstack()
        style = {"floor": {"linestyle": "--", "color": "gray"},
                 "exact": {"linestyle": ":", "color": "black"}}.get(cov, {})  # fmt: skip
        ax.plot(q.index, q[0.5], label=label, **style)
        band = {"color": style["color"]} if style else {}
        ax.fill_between(q.index, q[0.25], q[0.75], alpha=0.2, **band)
    ax.set(xscale="log", yscale="log", xlabel=r"$\sigma_t$",
           ylabel=r"$S(p(x_t \mid y) \,\|\, q(x_t \mid y))$")  # fmt: skip
    ax.legend(fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(
        Fig2Config, argv, quick=QUICK, paper=PAPER, smoke=SMOKE, prog="reproduce/fig2.py"
    )
    if cfg is None:  # --dry-run
        return 0
    device, _ = check_device(cfg.device), check_writable(cfg.out)
    start = time.perf_counter()
    rows = []
    for seed in bar(range(cfg.seeds), not cfg.quiet, desc="seeds"):
        rows += one_seed(seed, cfg)
    frame = pd.DataFrame(rows)
    csv, _ = write_results(
        cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
        out_dir=cfg.out, quick=cfg.scale, device=device,
        figures={f"{cfg.name}.png": plot(frame)},
    )  # fmt: skip
    if not cfg.quiet:
        table = frame.pivot_table(index="sigma_t", columns="covariance", values="value",
                                  aggfunc="median")  # fmt: skip
        print(table.to_string(float_format=lambda v: f"{v:.3g}"))
        print(f"wrote {csv}, its .json and .png")
    return 0 if np.isfinite(frame.value).all() else 1


if __name__ == "__main__":
    sys.exit(cli(main))
