r"""Random smooth manifolds and their linear observations (protocols §2.1–2.2).

A random manifold of dimension :math:`m` in :math:`\mathbb{R}^n` (after randman, Zenke & Vogels
2021) maps a latent :math:`z \in [0, 1]^m` to

.. math:: f_j(z) = \prod_{l=1}^{m} \sum_{k=1}^{K} a_{jlk} \, k^{-\alpha}
    \sin\big(2 \pi (k \, b_{jlk} z_l + c_{jlk})\big), \quad a, b, c \sim \mathcal{U}[0, 1],

with :math:`K = \lceil \epsilon^{-1/\alpha} \rceil` harmonics (10 for :math:`\alpha = 3`,
:math:`\epsilon = 10^{-3}`), then rescaled coordinate by coordinate to :math:`[-2, 2]`.

The paper rescales each drawn sample by its own minimum and maximum. Here the affine map is
fixed once, from :math:`2^{16}` latent points (a regular grid when :math:`m = 1`), so that data
and reference samples drawn separately share the same coordinates.

Observations are :math:`y_i = A_i x_i + \sigma_y \varepsilon_i` with one
:math:`A_i \in \mathbb{R}^{2 \times n}` per sample, Gaussian entries and unit-norm rows.

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
    | The remarkable robustness of surrogate gradient learning (Zenke & Vogels, 2021)
    | https://doi.org/10.1162/neco_a_01367
"""

__all__ = [
    "ManifoldProblem",
    "RandomManifold",
    "manifold_problem",
    "observe",
    "random_projections",
]

import dataclasses
import math

import torch
from torch import Tensor

from ..observation import Observation
from ..operators.dense import DenseOperator


class RandomManifold:
    r"""Creates a random smooth manifold.

    Arguments:
        features: The ambient dimension :math:`n`.
        latent: The manifold dimension :math:`m`.
        alpha: The smoothness :math:`\alpha` (harmonic :math:`k` has amplitude
            :math:`k^{-\alpha}`).
        eps: The amplitude below which harmonics are dropped, sets :math:`K`.
        generator: The generator of the manifold's parameters.
        dtype: The dtype of the parameters and samples.
    """

    def __init__(
        self,
        features: int,
        latent: int = 1,
        alpha: float = 3.0,
        eps: float = 1e-3,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ):
        if features < 1 or latent < 1:
            raise ValueError(f"features and latent must be >= 1, got {features} and {latent}")
        if not alpha > 0 or not 0 < eps < 1:
            raise ValueError(f"need alpha > 0 and 0 < eps < 1, got {alpha} and {eps}")
        self.features, self.latent, self.alpha, self.eps = features, latent, alpha, eps
        self.harmonics = math.ceil(eps ** (-1 / alpha))
        shape = (features, latent, self.harmonics)
        self.a, self.b, self.c = (
            torch.rand(shape, generator=generator, dtype=dtype) for _ in "abc"
        )
        if latent == 1:
            z = torch.linspace(0, 1, 2**16, dtype=dtype)[:, None]
        else:
            z = torch.rand((2**16, latent), generator=generator, dtype=dtype)
        f = self.embed(z)
        self.low, self.high = f.min(dim=0).values, f.max(dim=0).values

    def embed(self, z: Tensor) -> Tensor:
        r"""Returns the raw :math:`f(z)`, with shape :math:`(N, n)`, for :math:`z` of shape
        :math:`(N, m)`."""
        k = torch.arange(1, self.harmonics + 1, dtype=z.dtype)  # (K,)
        phase = 2 * math.pi * (k * self.b * z[:, None, :, None] + self.c)  # (N, n, m, K)
        terms = (self.a * k ** (-self.alpha) * phase.sin()).sum(dim=-1)  # (N, n, m)
        return terms.prod(dim=-1)

    def __call__(self, z: Tensor) -> Tensor:
        r"""Returns the rescaled points :math:`4 (f(z) - f_{min}) / (f_{max} - f_{min}) - 2`."""
        return 4 * (self.embed(z) - self.low) / (self.high - self.low) - 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""Draws `n` points :math:`f(z)`, :math:`z \sim \mathcal{U}[0, 1]^m`, with shape
        :math:`(n, n_\text{features})`."""
        z = torch.rand((n, self.latent), generator=generator, dtype=self.a.dtype)
        return self(z)


def random_projections(
    n: int,
    features: int,
    measurements: int = 2,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""Draws `n` matrices :math:`A_i` with i.i.d. Gaussian entries and unit-norm rows, with
    shape :math:`(n, M, D)`."""
    A = torch.randn((n, measurements, features), generator=generator, dtype=dtype)
    return A / torch.linalg.vector_norm(A, dim=-1, keepdim=True)


def observe(
    x: Tensor, A: Tensor, sigma_y: float, generator: torch.Generator | None = None
) -> Tensor:
    r"""Returns :math:`y_i = A_i x_i + \sigma_y \varepsilon_i`, with shape :math:`(N, M)`, for
    :math:`x` of shape :math:`(N, D)` and :math:`A` of shape :math:`(N, M, D)`."""
    if x.ndim != 2 or A.shape[0] != x.shape[0] or A.shape[-1] != x.shape[1]:
        raise ValueError(
            f"expected x (N, D) and A (N, M, D), got {tuple(x.shape)} and {tuple(A.shape)}"
        )
    y = (A @ x[..., None])[..., 0]
    return y + sigma_y * torch.randn(y.shape, generator=generator, dtype=y.dtype)


@dataclasses.dataclass(frozen=True)
class ManifoldProblem:
    r"""Figure 3's problem: the curve, the hidden points :math:`x` :math:`(N, 5)`, their
    observations (operators :math:`(N, 2, 5)`, :math:`y` :math:`(N, 2)`) and `truth`, fresh
    points of the curve to score samples against."""

    manifold: RandomManifold
    x: Tensor
    obs: Observation
    truth: Tensor


def manifold_problem(
    observations: int, sigma_y: float = 0.01, seed: int = 0, truth: int = 0
) -> ManifoldProblem:
    r"""Figure 3's data (protocols §2): `observations` points of the random curve in
    :math:`\mathbb{R}^5` of seed 0, each seen through its own 2-D random projection with noise
    `sigma_y`, and `truth` fresh points, all in float32 and drawn on the CPU in that order from
    one generator of `seed`, so that they do not depend on the device."""
    g = torch.Generator().manual_seed(seed)
    manifold = RandomManifold(5, generator=torch.Generator().manual_seed(0))
    x = manifold.sample(observations, generator=g).float()
    A = random_projections(observations, 5, 2, g, dtype=torch.float32)
    y = observe(x, A, sigma_y, g)
    points = manifold.sample(truth, generator=g).float()
    return ManifoldProblem(manifold, x, Observation(DenseOperator(A), y, sigma_y**2), points)
