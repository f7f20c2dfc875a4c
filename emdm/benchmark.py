r"""The posterior-sampling benchmark (the paper's Appendix E, Tables 4 and 5) at quick scale,
with exact answers.

The prior is an isotropic Gaussian mixture on small grey images, its component means drawn
from seeded synthetic shapes (:func:`shape_mixture`), so that its denoiser, and the posterior
of every task, are closed-form (:class:`emdm.MixtureDenoiser`): each method's samples can be
compared with the exact posterior, not only with the truth. The tasks mirror the paper's four
at small size (:data:`TASKS`), every method runs on :class:`emdm.VPDDIM` (:math:`\eta = 1`),
and :func:`method` builds each posterior denoiser with the benchmark's settings
(protocols §6.3): DPS (:math:`\zeta = 0.5`), ΠGDM, TMPD, DiffPIR (:math:`\lambda = 8`) with 5
GMRES iterations, MMPS with 1, 3 or 5. A :class:`Gallery` passed to a run keeps the
samples it scores of its first images, with the truth and the observations drawn as images
(:func:`observation_image`), for the qualitative figures (the paper's Figures 17 to 19).
"""

__all__ = [
    "METHODS",
    "TASKS",
    "CountingDenoiser",
    "Gallery",
    "Task",
    "dense_matrix",
    "method",
    "observation_image",
    "run_images",
    "run_mixture",
    "shape_mixture",
    "split",
    "task",
]

import copy
import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .denoisers import MixtureDenoiser
from .guidance import BASELINES, MMPS
from .metrics import ot_score, psnr, ssim, to_unit
from .operators import (
    Bicubic,
    Blur,
    LinearOperator,
    MaskOperator,
    box_mask,
    gaussian_kernel,
    motion_kernel,
    random_mask,
)
from .samplers import VPDDIM
from .schedule import VPSchedule

METHODS = ("dps", "pgdm", "tmpd", "diffpir", "mmps1", "mmps3", "mmps5")


def shape_mixture(
    components: int, size: int, std: float, generator: torch.Generator
) -> MixtureDenoiser:
    r"""A mixture of `components` isotropic Gaussians (standard deviation `std`) on
    :math:`(1, H, W)` images in :math:`[-1, 1]`, each mean a dark background with one to three
    bright discs or rectangles at random places."""
    grid = torch.arange(size, dtype=torch.float64)
    ii, jj = torch.meshgrid(grid, grid, indexing="ij")
    means = torch.full((components, size, size), -0.8, dtype=torch.float64)
    for k in range(components):
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            c = torch.rand(2, generator=generator, dtype=torch.float64) * size
            r = (0.1 + 0.2 * torch.rand((), generator=generator, dtype=torch.float64)) * size
            level = 0.8 * torch.rand((), generator=generator, dtype=torch.float64) + 0.2
            if torch.rand((), generator=generator) < 0.5:
                inside = (ii - c[0]) ** 2 + (jj - c[1]) ** 2 < r**2
            else:
                inside = ((ii - c[0]).abs() < r) & ((jj - c[1]).abs() < 0.6 * r)
            means[k][inside] = level
    return MixtureDenoiser(means.flatten(1).float(), std)


@dataclasses.dataclass
class Task:
    r"""An inverse problem: its operator for a batch, and its noise level :math:`\sigma_y`."""

    name: str
    sigma_y: float
    operator: Callable[[int, int, torch.Generator], Callable]  # (batch, size, generator) -> A


def _box(batch, size, generator):
    return box_mask(batch, size, box=size // 2, margin=size // 16, generator=generator)


def _random(batch, size, generator):
    return random_mask(batch, size, fraction=0.98, generator=generator)


def _blur(batch, size, generator):
    return Blur(gaussian_kernel(7, 1.5))


def _motion(batch, size, generator):
    return Blur(motion_kernel(61, 0.5, generator))  # one kernel per run, as the benchmark


def _sr(batch, size, generator):
    return Bicubic(4)


#: The tasks with the paper's noise levels: box inpainting (a box of half the side, with the
#: paper's margin ratio, σ_y = 1), random inpainting (98 % of pixels deleted, 0.01), motion
#: deblurring (a 61 x 61 random-trajectory kernel, intensity 0.5, 0.1; the paper's, for
#: 256 x 256 images), x4 super-resolution (antialiased bicubic, 0.1), and the quick runs'
#: Gaussian deblurring (kernel 7, std 1.5, 0.1) for small images.
TASKS = {
    "box": Task("box", 1.0, _box),
    "random": Task("random", 0.01, _random),
    "motion": Task("motion", 0.1, _motion),
    "sr4": Task("sr4", 0.1, _sr),
    "blur": Task("blur", 0.1, _blur),
}


def task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {name!r}")
    return TASKS[name]


def dense_matrix(A: Callable, size: int) -> Tensor:
    r"""The matrix :math:`(M, D)` of an operator on :math:`(1, 1, H, W)` images (one sample),
    column :math:`d` being :math:`A e_d`."""
    D = size * size
    basis = torch.eye(D, dtype=torch.float64).reshape(D, 1, size, size)
    return A(basis).reshape(D, -1).T


def method(name: str, prior, A, y: Tensor, cov_y: float):
    r"""The posterior denoiser `name` (one of :data:`METHODS`) with the benchmark's settings."""
    if name.startswith("mmps"):
        k = int(name[4:])
        return MMPS(prior, A, y, cov_y, iterations=k, solver="gmres", check=False)
    if name not in BASELINES:
        raise ValueError(f"method must be one of {METHODS}, got {name!r}")
    return BASELINES[name](prior, A, y, cov_y)


class CountingDenoiser(torch.nn.Module):
    r"""Wraps a denoiser and counts its forward passes and the backward passes through its
    output (its vector-Jacobian products), with a hook: the cost measure of Table 5."""

    def __init__(self, denoiser: Callable[[Tensor, Tensor], Tensor]):
        super().__init__()
        self.denoiser, self.forwards, self.backwards = denoiser, 0, 0

    def forward(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        self.forwards += 1
        out = self.denoiser(x_t, sigma)
        if out.requires_grad:
            out.register_hook(self._count)
        return out

    def _count(self, grad: Tensor) -> None:
        self.backwards += 1


def vjps_per_call(name: str) -> int:
    r"""Network VJPs per denoiser call: DPS 1, ΠGDM 1, TMPD 2, DiffPIR 0, MMPS k + 1."""
    if name.startswith("mmps"):
        return int(name[4:]) + 1
    return BASELINES[name].vjps


def component_masses(x: Tensor, means: Tensor) -> Tensor:
    r"""The fraction of samples :math:`(S, D)` nearest to each mean :math:`(K, D)`."""
    nearest = torch.cdist(x.double(), means.double()).argmin(1)
    return torch.bincount(nearest, minlength=len(means)).double() / len(x)


def rmse(x: Tensor, y: Tensor) -> float:
    return math.sqrt(float((x.double() - y.double()).square().mean()))


def split(operator: LinearOperator, i: int, samples: int):
    r"""The operator of image `i` alone, and the operator of all images with each repeated for
    its `samples` samples, in the order of `y.repeat_interleave(samples, 0)` (a shared operator
    is returned as is, by the :class:`emdm.LinearOperator` contract)."""
    if operator.batch_size is None:
        return operator, operator
    index = torch.arange(operator.batch_size).repeat_interleave(samples)
    return operator[i], operator[index]


def observation_image(A: LinearOperator, y: Tensor) -> Tensor:
    r"""The observations :math:`y` of images :math:`(B, C, H, W)` drawn as such images: for a
    mask, the observed pixels :math:`m \odot y` (:math:`A^T y`), NaN where :math:`m = 0` (a
    missing pixel, which :func:`emdm.plots.posterior_grid` paints in a colour of its own); for
    another operator whose observations have the images' shape (a blur), :math:`y` itself;
    otherwise (super-resolution), :math:`y` resized to the shape of :math:`A^T y` by nearest
    neighbour."""
    if isinstance(A, MaskOperator):
        return torch.where(A.mask != 0, y, torch.nan)
    shape = A.in_shape_of(tuple(y.shape))
    if tuple(shape) == tuple(y.shape):
        return y
    return F.interpolate(y, size=shape[-2:], mode="nearest")


@dataclasses.dataclass
class Gallery:
    r"""The images a run of :func:`run_mixture` or :func:`run_images` keeps for the
    qualitative figures, of its first `images` images: their truth, per task their
    observations (:func:`observation_image`), and per task, method and step count the samples
    it scored (the first of each image's samples), each with shape :math:`(N, C, H, W)`, on
    the CPU, in the benchmark's range :math:`[-1, 1]`. A run fills it; nothing more is drawn."""

    images: int = 1
    truth: Tensor | None = None
    observations: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    samples: dict[tuple[str, str, int], Tensor] = dataclasses.field(default_factory=dict)

    def add(self, task: str, method: str, steps: int, x: Tensor) -> None:
        r"""Appends samples :math:`(n, C, H, W)` of the next images of a task, method and
        step count."""
        key, x = (task, method, steps), x.detach().cpu()
        self.samples[key] = torch.cat([self.samples[key], x]) if key in self.samples else x


def run_images(
    prior,
    truth: Tensor,
    tasks: tuple[str, ...],
    methods: tuple[str, ...],
    steps: tuple[int, ...],
    seed: int = 0,
    lpips: Callable | None = None,
    eta: float = 1.0,
    gallery: Gallery | None = None,
) -> list[dict]:
    r"""The paper's protocol on images: per task, per image (batch 1) and per step count, one
    posterior sample by each method with DDIM(η), scored against the truth by PSNR, SSIM and
    (if given) LPIPS on :math:`[0, 1]` images; tidy rows. A `gallery`, if given, is filled
    with the samples of the first `gallery.images` images."""
    device, rows = truth.device, []
    k = 0 if gallery is None else min(gallery.images, len(truth))
    if gallery is not None:
        gallery.truth = truth[:k].cpu()
    g = torch.Generator().manual_seed(seed)
    for name in tasks:
        T = task(name)
        A = T.operator(len(truth), truth.shape[-1], g)
        A = A.to(device)
        y = A(truth)
        y = y + T.sigma_y * torch.randn(y.shape, generator=g).to(device)
        if gallery is not None:
            gallery.observations[name] = observation_image(A[:k], y[:k]).cpu()
        for i in range(len(truth)):
            A_i, x_true = split(A, i, 1)[0], to_unit(truth[i : i + 1])
            for n in steps:
                for m in methods:
                    denoiser = method(m, prior, A_i, y[i : i + 1], T.sigma_y**2)
                    gen = torch.Generator(device).manual_seed(seed + i)
                    x1 = torch.randn(x_true.shape, generator=gen, device=device)
                    x = VPDDIM(denoiser, VPSchedule(), steps=n, eta=eta)(x1, gen)
                    if i < k:
                        gallery.add(name, m, n, x)
                    x = to_unit(x)
                    values = {"psnr": psnr(x, x_true), "ssim": ssim(x, x_true)}
                    if lpips is not None:
                        values["lpips"] = lpips(x, x_true)
                    rows += [{"task": name, "steps": n, "method": m, "image": i, "metric": k,
                              "value": float(v)} for k, v in values.items()]  # fmt: skip
    return rows


def run_mixture(
    prior: MixtureDenoiser,
    truth: Tensor,
    tasks: tuple[str, ...],
    methods: tuple[str, ...],
    steps: tuple[int, ...],
    samples: int,
    generator: torch.Generator,
    seed: int = 0,
    eta: float = 1.0,
    log: Callable[[str], None] | None = None,
    gallery: Gallery | None = None,
) -> list[dict]:
    r"""The quick protocol, with exact answers: per task, the exact posterior of each image
    (a Gaussian mixture), then `samples` posterior samples per image by each method (all images
    in one batch) with DDIM(η), scored against the truth (PSNR, SSIM) and against the exact
    posterior: `mean_rmse`, the RMSE of the sample mean; `nearest_mass_tv`, the total
    variation :math:`\frac{1}{2} \sum_k |\hat{\pi}_k - \pi_k|` between the fraction
    :math:`\hat{\pi}_k` of samples whose nearest prior mean (Euclidean) is :math:`\mu_k`
    (:func:`component_masses`) and the exact posterior masses :math:`\pi_k`; `ot_score`, the
    debiased exact-OT score against exact samples. A `gallery`, if given, is filled with the
    first sample of each of the first `gallery.images` images."""
    prior64 = copy.deepcopy(prior).double()
    S, size, rows = samples, truth.shape[-1], []
    k = 0 if gallery is None else min(gallery.images, len(truth))
    if gallery is not None:
        gallery.truth = truth[:k].cpu()
    for name in tasks:
        T = task(name)
        A = T.operator(len(truth), size, generator)
        y = A(truth)
        y = y + T.sigma_y * torch.randn(y.shape, generator=generator)
        if gallery is not None:
            gallery.observations[name] = observation_image(A[:k], y[:k])
        exact, means, masses = [], [], []
        for i in range(len(truth)):
            A_i = dense_matrix(split(A, i, S)[0], size)[None]
            post = prior64.posterior(A_i, y[i].flatten()[None].double(), T.sigma_y**2)
            exact.append(post.sample(2 * S, generator=generator)[0])  # (2S, D)
            means.append(post.mean()[0])
            masses.append(post.log_weights[0].exp())
        A_rep, y_rep = split(A, 0, S)[1], y.repeat_interleave(S, 0)
        for n in steps:
            for m in methods:
                denoiser = method(m, prior, A_rep, y_rep, T.sigma_y**2)
                gen = torch.Generator().manual_seed(seed + n)
                x1 = torch.randn((len(truth) * S, *truth.shape[1:]), generator=gen)
                x = VPDDIM(denoiser, VPSchedule(), steps=n, eta=eta)(x1, gen)
                if gallery is not None:
                    gallery.add(name, m, n, x[: k * S : S])  # (k, C, H, W)
                for i in range(len(truth)):
                    xi = x[i * S : (i + 1) * S]
                    flat, t = xi.flatten(1), truth[i : i + 1].expand_as(xi)
                    tv = 0.5 * (component_masses(flat, prior.means) - masses[i]).abs().sum()
                    values = {
                        "psnr": psnr(to_unit(xi), to_unit(t)).mean().item(),
                        "ssim": ssim(to_unit(xi), to_unit(t)).mean().item(),
                        "mean_rmse": rmse(flat.mean(0), means[i]),
                        "nearest_mass_tv": tv.item(),
                        "ot_score": float(ot_score(exact[i][:S], exact[i][S:], flat.double())),
                    }
                    rows += [{"task": name, "steps": n, "method": m, "image": i, "metric": k,
                              "value": v} for k, v in values.items()]  # fmt: skip
        if log is not None:
            log(f"task {name} done")
    return rows
