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
import json
import math
import sys
import time

import torch

from emdm.config import config_dict, parse_scaled
from emdm.denoisers import MixtureDenoiser
from emdm.likelihood import LIKELIHOODS, log_likelihood, resample
from emdm.metrics import ot_score
from emdm.plots import pairs, save
from emdm.provenance import write_results

TITLES = {"exact": "p(x_t | y)", "tweedie": "V[x | x_t]", "cov_x": "(Σx⁻¹+Σt⁻¹)⁻¹",
          "sigma_t": "Σt", "zero": "0"}  # fmt: skip


@dataclasses.dataclass
class Fig1Config:
    samples: int = 65536
    sigma_t: float = 0.25
    ot_samples: int = 2048
    seed: int = 0
    scale: str = "paper"
    name: str = "fig1"
    out: str = "results"
    dry_run: bool = False


QUICK = Fig1Config(samples=16384, scale="quick", name="fig1_quick")
PAPER = Fig1Config()


def helix(n: int = 256) -> torch.Tensor:
    theta = torch.linspace(0, 2 * math.pi, n, dtype=torch.float64)
    z = torch.linspace(-2, 2, n, dtype=torch.float64)
    return torch.stack((2 * theta.sin(), 2 * theta.cos(), z), dim=-1)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_scaled(Fig1Config, argv, quick=QUICK, paper=PAPER, prog="reproduce/fig1.py")
    if cfg.dry_run:
        print(json.dumps(config_dict(cfg), indent=2))
        return 0
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
    csv, _ = write_results(
        cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
        out_dir=cfg.out, quick=cfg.scale == "quick", device="cpu",
    )  # fmt: skip
    save(pairs({TITLES[k]: v for k, v in panels.items()}), csv.with_suffix(".png"))
    for row in rows:
        print(f"{row['covariance']:>8}  {row['value']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
