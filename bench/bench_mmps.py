r"""asv benchmarks of MMPS, its conjugate gradient solver and one sampler step.

* :class:`MMPSStep`: one call :math:`(x_t, \sigma_t) \mapsto \mathbb{E}[x \mid x_t, y]` of
  :class:`emdm.MMPS` on the problem of `bench/mmps_cost.py` (an EDM 3 x 256 MLP denoiser,
  :math:`B = 256`, :math:`D = 64`, a per-sample dense :math:`A_b` with :math:`M = 16` rows).
* :class:`CG`: :func:`emdm.cg` on :math:`C x = b` with the fixed SPD
  :math:`C = \mathrm{diag}(d) + U U^T`, a shared :class:`emdm.DPLR` of rank 16, with each
  update by the torch reference or the Triton kernel (`provider`; Triton on CUDA only).
* :class:`SamplerStep`: one :meth:`emdm.DDPM.step` with an MMPS denoiser.

Inputs are seeded; every timed call goes through `emdm`, nothing is re-implemented here. Each
class bounds its samples so that the suite runs in about a minute on CPU:

    .venv/bin/asv run --python=same --quick --show-stderr   # one sample each, a smoke test
    .venv/bin/asv run --python=same --show-stderr           # the full measurement
"""

import torch

import emdm

from .common import Bounded, MMPSProblem, mmps_problem, synchronizer

CPU = torch.device("cpu")


class MMPSStep(Bounded):
    r"""One MMPS call with `iterations` CG iterations and covariance `covariance`."""

    params = ([1, 3, 5], ["tweedie", "sigma_t"])
    param_names = ("iterations", "covariance")

    def setup(self, iterations: int, covariance: str):
        cfg = MMPSProblem(iterations=(iterations,))
        p = mmps_problem(cfg, CPU)
        self.x_t, self.sigma = p["x_t"], p["sigma"]
        self.mmps = emdm.MMPS(
            p["denoiser"],
            emdm.DenseOperator(p["A"]),
            p["y"],
            cov_y=cfg.cov_y,
            covariance=covariance,
            iterations=iterations,
        )
        self.time_call(iterations, covariance)  # warm-up: --quick times a single call

    def time_call(self, iterations: int, covariance: str):
        with torch.no_grad():
            self.mmps(self.x_t, self.sigma)


class CG(Bounded):
    r"""Eight CG iterations on :math:`B` systems of size :math:`D`, with per-sample or
    batch-wide inner products."""

    params = (["ref", "triton"], [64, 256], [3072], ["sample", "batch"])
    param_names = ("provider", "B", "D", "dot")
    iterations = 8

    def setup(self, provider: str, B: int, D: int, dot: str):
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if provider == "triton" and device.type != "cuda":
            raise NotImplementedError("the Triton provider is benchmarked on CUDA only")
        g = torch.Generator().manual_seed(0)
        d = 1 + torch.rand(D, generator=g)  # (D,)
        U = torch.randn(D, 16, generator=g) / D**0.5  # (D, 16)
        self.C = emdm.DPLR(d, U).to(device)
        self.b = torch.randn(B, D, generator=g).to(device)
        self.sync = synchronizer(device)
        self.time_cg(provider, B, D, dot)  # warm-up

    def time_cg(self, provider: str, B: int, D: int, dot: str):
        emdm.cg(lambda v: self.C @ v, self.b, self.iterations, dot=dot, provider=provider)
        self.sync()


class SamplerStep(Bounded):
    r"""One DDPM step from :math:`t = 1/2` to :math:`s = 1/2 - 1/64` with a Tweedie MMPS
    denoiser (one CG iteration)."""

    def setup(self):
        cfg = MMPSProblem(iterations=(1,))
        p = mmps_problem(cfg, CPU)
        mmps = emdm.MMPS(
            p["denoiser"], emdm.DenseOperator(p["A"]), p["y"], cov_y=cfg.cov_y, iterations=1
        )
        self.sampler = emdm.DDPM(mmps, emdm.VESchedule(), steps=64)
        self.x_t = p["x_t"]
        self.generator = torch.Generator().manual_seed(0)
        self.time_step()  # warm-up

    def time_step(self):
        with torch.no_grad():
            self.sampler.step(self.x_t, 0.5, 0.5 - 1 / 64, self.generator)
