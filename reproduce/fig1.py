r"""Figure 1 (the paper's coil illustration): p(x_t | y) and its Gaussian-likelihood
approximations q(x_t | y) for each covariance V[x | x_t], on a helix.

Protocol (protocols §3.2): a mixture of 256 Gaussians (std 0.01) along the helix
μ_i = (2 sin θ_i, 2 cos θ_i, z_i), θ_i ∈ [0, 2π], z_i ∈ [−2, 2]; y = W x + ε with W = (1, 0, 2),
Σ_y = 10⁻⁴ and y = 0; 65536 draws at σ_t = 0.25. Each panel is a 2-D histogram of consecutive
coordinates; the CSV gives each approximation's debiased exact-OT score against p(x_t | y).

    python reproduce/fig1.py             # about a minute on 2 CPU cores
    python reproduce/fig1.py --quick     # 16384 draws

Writes results/fig1[_quick].{png,csv,json}.
"""

import dataclasses
import math
import sys
import time

import torch

from emdm.config import (
    NONNEGATIVE,
    POSITIVE,
    config_dict,
    option,
)
from emdm.denoisers import MixtureDenoiser
from emdm.errors import cli
from emdm.experiment import Outputs, parse_run
from emdm.likelihood import LIKELIHOODS, log_likelihood, resample
from emdm.metrics import ot_score
from emdm.plots import pairs
from emdm.provenance import write_results
from emdm.publish import check_writable

TITLES = {"exact": "p(x_t | y)", "tweedie": "V[x | x_t]", "cov_x": "(Σx⁻¹+Σt⁻¹)⁻¹",
          "sigma_t": "Σt", "zero": "0"}  # fmt: skip


@dataclasses.dataclass
class Fig1Config(Outputs):
    r"""Figure 1: p(x_t | y) and its Gaussian-likelihood approximations on a helix."""

    samples: int = option(65536, "draws per panel (paper: 65 536)", check=POSITIVE)
    sigma_t: float = option(0.25, "noise level σ_t of x_t (paper: 0.25)", check=POSITIVE)
    ot_samples: int = option(2048, "draws per side of each OT score", check=POSITIVE)
    seed: int = option(0, "seed of every draw", check=NONNEGATIVE)


QUICK = Fig1Config(samples=16384, scale="quick", name="fig1_quick")
PAPER = Fig1Config(name="fig1")  # already CPU-sized: no smoke preset


def helix(n: int = 256) -> torch.Tensor:
    theta = torch.linspace(0, 2 * math.pi, n, dtype=torch.float64)
    z = torch.linspace(-2, 2, n, dtype=torch.float64)
    return torch.stack((2 * theta.sin(), 2 * theta.cos(), z), dim=-1)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_run(Fig1Config, argv, quick=QUICK, paper=PAPER, prog="reproduce/fig1.py")
    if cfg is None:  # --dry-run
        return 0
    check_writable(cfg.out)
    start, g = time.perf_counter(), torch.Generator().manual_seed(cfg.seed)
    prior = MixtureDenoiser(helix(), 0.01)
    W, y, cov_y = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64), torch.zeros(1), 1e-4
    y = y.double()
    x = prior.sample(cfg.samples, generator=g)
    x_t = x + cfg.sigma_t * torch.randn(x.shape, generator=g, dtype=x.dtype)
    exact = prior.posterior(W, y[None], cov_y).sample(cfg.samples + 2 * cfg.ot_samples, g)[0]
    exact = exact + cfg.sigma_t * torch.randn(exact.shape, generator=g, dtype=x.dtype)
    panels = {"exact": exact[: cfg.samples]}
    for cov in LIKELIHOODS:
        logw = log_likelihood(prior, x_t, cfg.sigma_t, W, y, cov_y, cov, torch.cov(x.T))
        panels[cov] = resample(x_t, logw, cfg.samples, generator=g)

    n = cfg.ot_samples
    u1, u2 = exact[-2 * n : -n], exact[-n:]
    rows = [
        {"covariance": cov, "sigma_t": cfg.sigma_t, "metric": "score_emd",
         "value": float(ot_score(u1, u2, v[:n]))}
        for cov, v in panels.items()
    ]  # fmt: skip
    figure = pairs({TITLES[k]: v for k, v in panels.items()})
    write_results(
        cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
        out_dir=cfg.out, quick=cfg.scale == "quick", device="cpu",
        figures={f"{cfg.name}.png": figure},
    )  # fmt: skip
    for row in rows if not cfg.quiet else []:
        print(f"{row['covariance']:>8}  {row['value']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
