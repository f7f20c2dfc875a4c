r"""asv benchmarks of the EM loop on the manifold experiment's network, so that a regression of
the M-step, the Gaussian start or a whole lap shows in `asv continuous`.

* :class:`MStep`: 8 Adam steps of :func:`emdm.em.m_step` (EDM 3 x 256 TimeMLP, D = 5, batch
  1024, on CUDA where there is one), with the M-step's multi-tensor Adam or Adam's fused
  update (`optimizer`).
* :class:`GaussianStart`: the fit of :math:`q_0` (:func:`emdm.gaussian.fit_gaussian`, rank 5) on
  1024 random 2-D projections, 2 Monte-Carlo EM iterations of 16 DDIM steps.
* :class:`Lap`: one EM lap (:func:`emdm.em.run_em`, one iteration) on 512 observations: 32 Adam
  steps of batch 256 and an E-step of 8 PC steps with the dense solve, as Figure 3's.

Inputs are seeded; every timed call goes through `emdm`. As in `bench/bench_mmps.py`:

    .venv/bin/asv run --python=same --quick --show-stderr --bench bench_em
"""

import torch

import emdm
from emdm.data import manifold_problem
from emdm.em import EMConfig, m_step, optimizer_for, run_em
from emdm.observation import Observation
from emdm.prior import MLPConfig

from .common import Bounded, synchronizer

SCHEDULE = emdm.VESchedule(1e-3, 10.0)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def manifold_observations(n: int) -> tuple[Observation, torch.Tensor]:
    r"""Figure 3's data at `n` observations (2-D projections of a curve in R⁵, σ_y = 0.01), and
    standard normal stand-ins for :math:`q_0`'s samples."""
    q0 = torch.randn((n, 5), generator=torch.Generator().manual_seed(1))
    return manifold_problem(n, 0.01, seed=0).obs, q0


class MStep(Bounded):
    r"""8 Adam steps of the manifold M-step."""

    params = (["foreach", "fused"],)
    param_names = ("optimizer",)

    def setup(self, optimizer: str):
        torch.manual_seed(0)
        self.denoiser = MLPConfig().build().to(DEVICE)
        self.cfg = EMConfig(train_steps=8, batch_size=1024)
        self.optimizer = optimizer_for(self.denoiser, self.cfg)
        if optimizer == "fused":
            self.optimizer = torch.optim.Adam(self.denoiser.parameters(), lr=1e-3, fused=True)
        self.samples = torch.randn((8192, 5), generator=torch.Generator().manual_seed(1))
        self.samples = self.samples.to(DEVICE)
        self.generator = torch.Generator(DEVICE).manual_seed(0)
        self.sync = synchronizer(DEVICE)
        self.time_steps(optimizer)  # warm-up

    def time_steps(self, optimizer: str):
        m_step(self.denoiser, self.samples, self.cfg, SCHEDULE, self.optimizer, self.generator)
        self.sync()


class GaussianStart(Bounded):
    r"""The Monte-Carlo EM fit of :math:`q_0` on 1024 observations."""

    def setup(self):
        self.obs, _ = manifold_observations(1024)

    def time_fit(self):
        emdm.fit_gaussian(self.obs, 5, shape=(5,), iterations=2, schedule=SCHEDULE, steps=16,
                          cg_iterations=2, generator=torch.Generator().manual_seed(0))  # fmt: skip


class Lap(Bounded):
    r"""One EM lap on 512 observations."""

    timeout = 300

    def setup(self):
        self.obs, self.q0 = manifold_observations(512)
        self.cfg = EMConfig(iterations=1, train_steps=32, batch_size=256, steps=8,
                            solver="dense")  # fmt: skip

    def time_lap(self):
        torch.manual_seed(0)
        run_em(MLPConfig().build(), self.obs, self.q0, self.cfg, SCHEDULE)
