r"""Diffusion samplers on the VE process :math:`x_t = x + \sigma_t z` (protocols §1.5).

With :math:`N` steps and :math:`\Delta = 1 / N`, the time grid is :math:`t_i = 1 - i \Delta`,
:math:`i = 0, \dots, N - 1`, and each step goes from :math:`t = t_i` to :math:`s = t - \Delta`.
The last step ends at :math:`\sigma(0) = \sigma_{min}`, not at 0; the sampler then returns one
more denoiser call :math:`d(x, \sigma(0))`. Subclasses implement only :meth:`Sampler.step`
(and, for another time grid, :meth:`Sampler.grid`).

:class:`VPDDIM` is guided-diffusion's DDIM(:math:`\eta`) on a respaced :class:`VPSchedule`
(protocols §6.1), the sampler of the posterior-sampling benchmark: its state is the VP
:math:`x_t`, its denoiser still works in VE coordinates.

References:
    | Denoising Diffusion Probabilistic Models (Ho et al., 2020)
    | https://arxiv.org/abs/2006.11239
    | Denoising Diffusion Implicit Models (Song et al., 2021)
    | https://arxiv.org/abs/2010.02502
    | Score-Based Generative Modeling through Stochastic Differential Equations (Song et al., 2021)
    | https://arxiv.org/abs/2011.13456
"""

__all__ = [
    "DDIM",
    "DDPM",
    "SAMPLERS",
    "VPDDIM",
    "PredictorCorrector",
    "Sampler",
    "randn_like",
    "sample",
    "samplers_for",
]

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .denoisers.base import SplitDenoiser
from .guidance.base import positive_sigma
from .progress import bar
from .schedule import Schedule, VPSchedule

Generator = torch.Generator | Sequence[torch.Generator] | None


def randn_like(x: Tensor, generator: Generator = None) -> Tensor:
    r"""Draws :math:`z \sim \mathcal{N}(0, I)` with the shape of `x`.

    With a sequence of generators, one per sample, sample :math:`b` draws from generator
    :math:`b` only, so its noise does not depend on the batch it is in.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"expected one generator per sample ({x.shape[0]}), got {len(generator)}")
    return torch.stack(
        [
            torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device).to(x.device)
            for g in generator
        ]
    )


class Sampler(ABC):
    r"""Abstract diffusion sampler.

    Arguments:
        denoiser: A denoiser :math:`d(x_t, \sigma)`, e.g. an :class:`emdm.MMPS`.
        schedule: The noise schedule.
        steps: The number of steps :math:`N`.
        progress: Whether to show a progress bar.
        check_finite: Whether to check the state after every step and raise a
            `FloatingPointError` naming :math:`\sigma_t` of the first step after which it is
            not finite. The check stays on the device (a flag per step, no synchronization);
            it is read once, after the last step or when a step raises.

    The denoiser is called inside :func:`emdm.guidance.base.positive_sigma` whenever the
    step's :math:`\sigma_t` is positive (checked on the host, where the grid is computed), so
    that a posterior denoiser skips its own check; :math:`\sigma_t` reaches the device by a
    fill, not a copy. A step thus never waits for the device.
    """

    #: The number of denoiser calls per step.
    calls_per_step: int = 1
    #: Whether the output is one more denoiser call after the last step.
    final_denoise: bool = True
    #: The schedules it runs on.
    schedule_type: type[Schedule] = Schedule

    def __init__(
        self,
        denoiser: Callable[[Tensor, Tensor], Tensor],
        schedule: Schedule,
        steps: int = 64,
        progress: bool = False,
        check_finite: bool = False,
    ):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be an emdm Schedule, got {type(schedule).__name__}")
        self.denoiser, self.schedule, self.steps, self.progress = (
            denoiser,
            schedule,
            steps,
            progress,
        )
        self.check_finite = check_finite

    def level(self, t: float) -> float:
        r"""Returns :math:`\sigma_t` (VE coordinates) as a float, computed on the host."""
        return float(self.schedule.sigma_ve(torch.tensor(t, dtype=torch.float64)))

    def sigma(self, t: float, x: Tensor) -> Tensor:
        r"""Returns :math:`\sigma_t` with shape :math:`(B,)`, in the dtype and on the device of
        `x` (a fill: no host-to-device copy)."""
        return torch.full((x.shape[0],), self.level(t), dtype=x.dtype, device=x.device)

    def denoise(self, x_t: Tensor, t: float) -> Tensor:
        r"""Returns :math:`d(x_t, \sigma_t)`."""
        return self.call(self.denoiser, x_t, t)

    def call(self, f: Callable[[Tensor, Tensor], Tensor], x_t: Tensor, t: float):
        r"""Returns `f(x_t, sigma_t)`, inside :func:`emdm.guidance.base.positive_sigma`
        when :math:`\sigma_t` is positive in `x_t`'s dtype."""
        level = self.level(t)
        sigma = torch.full((x_t.shape[0],), level, dtype=x_t.dtype, device=x_t.device)
        with positive_sigma(level >= torch.finfo(x_t.dtype).tiny):  # stays > 0 once cast
            return f(x_t, sigma)

    @abstractmethod
    def step(self, x_t: Tensor, t: float, s: float, generator: Generator = None) -> Tensor:
        r"""Returns :math:`x_s` given :math:`x_t`, for :math:`s < t`."""

    def grid(self) -> list[tuple[float, float]]:
        r"""The steps :math:`(t, s)`: by default :math:`t_i = 1 - i / N`, :math:`s = t_{i+1}`."""
        delta = 1 / self.steps
        return [(1 - i * delta, 1 - (i + 1) * delta) for i in range(self.steps)]

    @torch.no_grad()
    def __call__(self, x_1: Tensor, generator: Generator = None) -> Tensor:
        r"""
        Arguments:
            x_1: The initial state at :math:`t = 1`, with shape :math:`(B, *)`, :math:`B \geq 1`,
                finite (checked once per call: one host synchronization).
            generator: A generator, or one per sample, for the noise of stochastic steps.

        Returns:
            The final estimate :math:`d(x_{t=0}, \sigma(0))`, with shape :math:`(B, *)`.
        """
        if not isinstance(x_1, Tensor) or x_1.ndim < 1 or not x_1.is_floating_point():
            raise ValueError("x_1 must be a floating-point tensor with shape (B, *)")
        if x_1.shape[0] == 0:
            raise ValueError(
                f"x_1 has shape {tuple(x_1.shape)}: an empty batch, expected at least one sample"
            )
        # once per call, not per step: a non-finite start only gives non-finite samples
        if not bool(torch.isfinite(x_1).all()):
            raise ValueError(
                f"x_1 of shape {tuple(x_1.shape)} has {int((~torch.isfinite(x_1)).sum())} NaN "
                "or infinite entries: expected a finite start, e.g. mean + sigma(1) z"
            )
        x = x_1
        grid = self.grid()
        watch = _FiniteWatch(x, len(grid)) if self.check_finite else None
        try:
            for i, (t, s) in enumerate(bar(grid, self.progress, desc="sampling", leave=False)):
                x = self.step(x, t, s, generator)
                if watch is not None:
                    watch.update(x, i)
        except Exception:
            if watch is not None:  # an error caused by an earlier non-finite state names it
                watch.check(grid, self.level)
            raise
        if watch is not None:
            watch.check(grid, self.level)
        return self.denoise(x, 0.0) if self.final_denoise else x


class _FiniteWatch:
    r"""Records on the device the first step after which a sampler's state is not finite.

    Each :meth:`update` is a few small device operations and no synchronization; :meth:`check`
    reads the record once (one synchronization) and raises a `FloatingPointError` naming that
    step and its :math:`\sigma_t`.

    Arguments:
        x: A state, whose device the record lives on.
        steps: The number of steps :math:`N`.
    """

    def __init__(self, x: Tensor, steps: int):
        self.steps = steps
        self.first = torch.full((), steps, dtype=torch.int64, device=x.device)  # N: none yet

    def update(self, x: Tensor, i: int) -> None:
        r"""Records the state `x` after step `i` (from 0)."""
        bad = torch.where(torch.isfinite(x).all(), self.steps, i)
        self.first = torch.minimum(self.first, bad)

    def check(self, grid: Sequence[tuple[float, float]], level: Callable[[float], float]):
        r"""Raises a `FloatingPointError` if a recorded state was not finite, naming the first
        step of `grid` after which it was and :math:`\sigma_t` = `level(t)` of that step."""
        first = int(self.first)
        if first < self.steps:
            raise FloatingPointError(
                f"non-finite samples after the step from sigma_t = {level(grid[first][0]):.4g} "
                f"(step {first + 1} of {len(grid)})"
            )


class DDPM(Sampler):
    r"""Ancestral (DDPM) sampler.

    .. math:: x_s = x_t - \tau (x_t - d(x_t, \sigma_t)) + \sigma_s \sqrt{\tau} \, \varepsilon,
        \quad \tau = 1 - \sigma_s^2 / \sigma_t^2
    """

    def step(self, x_t: Tensor, t: float, s: float, generator: Generator = None) -> Tensor:
        sigma_t, sigma_s = self.sigma(t, x_t)[0], self.sigma(s, x_t)[0]
        tau = 1 - (sigma_s / sigma_t) ** 2
        x_hat = self.denoise(x_t, t)
        return x_t - tau * (x_t - x_hat) + sigma_s * tau.sqrt() * randn_like(x_t, generator)


class DDIM(Sampler):
    r"""Deterministic DDIM sampler.

    .. math:: x_s = x_t - (1 - \sigma_s / \sigma_t) (x_t - d(x_t, \sigma_t))
    """

    def step(self, x_t: Tensor, t: float, s: float, generator: Generator = None) -> Tensor:
        sigma_t, sigma_s = self.sigma(t, x_t)[0], self.sigma(s, x_t)[0]
        x_hat = self.denoise(x_t, t)
        return x_t - (1 - sigma_s / sigma_t) * (x_t - x_hat)


class PredictorCorrector(DDIM):
    r"""DDIM predictor followed by Langevin corrections at level :math:`s`.

    .. math:: x \leftarrow x - \tau (x - d(x, \sigma_s)) + \sigma_s \sqrt{2 \tau} \, \varepsilon

    Arguments:
        corrections: The number of Langevin corrections per step.
        tau: The Langevin step size :math:`\tau` (0.1 in the paper).
        kwargs: The arguments of :class:`Sampler`.
    """

    def __init__(self, *args, corrections: int = 1, tau: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(corrections, int) or corrections < 0:
            raise ValueError(f"corrections must be a non-negative integer, got {corrections!r}")
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.corrections, self.tau = corrections, tau
        self.calls_per_step = 1 + corrections

    def step(self, x_t: Tensor, t: float, s: float, generator: Generator = None) -> Tensor:
        x_s = super().step(x_t, t, s, generator)
        sigma_s = self.sigma(s, x_s)[0]
        for _ in range(self.corrections):
            x_hat = self.denoise(x_s, s)
            z = randn_like(x_s, generator)
            x_s = x_s - self.tau * (x_s - x_hat) + sigma_s * math.sqrt(2 * self.tau) * z
        return x_s


class VPDDIM(Sampler):
    r"""DDIM(:math:`\eta`) on a respaced variance-preserving schedule, as guided-diffusion and
    the posterior-sampling benchmark run it (protocols §6.1).

    The state is the VP :math:`x_t = \sqrt{\bar{\alpha}_t} x + \sqrt{1 - \bar{\alpha}_t} z`.
    With :math:`\hat{x} = d(x_t / \sqrt{\bar{\alpha}_t}, \tilde{\sigma}_t)` (the denoiser in
    VE coordinates, :math:`\tilde{\sigma}_t^2 = (1 - \bar{\alpha}_t) / \bar{\alpha}_t`), a step
    from :math:`t` to :math:`s` is

    .. math::
        \hat{\varepsilon} & = (x_t - \sqrt{\bar{\alpha}_t} \hat{x}) / \sqrt{1 - \bar{\alpha}_t} \\
        \varsigma & = \eta \sqrt{(1 - \bar{\alpha}_s) / (1 - \bar{\alpha}_t)}
            \sqrt{1 - \bar{\alpha}_t / \bar{\alpha}_s} \\
        x_s & = \sqrt{\bar{\alpha}_s} \hat{x}
            + \sqrt{1 - \bar{\alpha}_s - \varsigma^2} \, \hat{\varepsilon} + \varsigma z

    over the respaced indices :math:`\mathrm{round}(i (T - 1) / (N - 1))`; the last step lands on
    :math:`\bar{\alpha} = 1`, where :math:`x_s = \hat{x}`: :math:`N` denoiser calls in all. A
    posterior denoiser (MMPS) that returns :math:`\hat{x} + \Delta` thus adds
    :math:`c_s \Delta` to :math:`x_s`, with
    :math:`c_s = \partial x_s / \partial \hat{x} = \sqrt{\bar{\alpha}_s}
    - \sqrt{1 - \bar{\alpha}_s - \varsigma^2} \sqrt{\bar{\alpha}_t / (1 - \bar{\alpha}_t)}`,
    the benchmark's weighting. A :class:`emdm.denoisers.SplitDenoiser` instead gives
    :math:`\hat{x}` and :math:`\Delta` apart (`split`), and :math:`x_s` receives
    :math:`\kappa \Delta` with the weight :math:`\kappa` it states (`vp_weight`, given
    :math:`\bar{\alpha}_t`, :math:`\bar{\alpha}_s` and :math:`c_s`): the step is then
    computed from :math:`\hat{x}`, and :math:`\Delta` enters only through :math:`\kappa`.

    Arguments:
        denoiser: A denoiser :math:`d(\tilde{x}_t, \tilde{\sigma}_t)` in VE coordinates.
        schedule: A :class:`emdm.VPSchedule`.
        steps: The number of steps :math:`N`.
        eta: :math:`\eta` (0: deterministic DDIM; 1: DDPM's posterior variance, the benchmark's).
        kwargs: The other arguments of :class:`Sampler`.
    """

    final_denoise = False
    schedule_type = VPSchedule

    def __init__(self, denoiser, schedule: VPSchedule, steps: int = 100, eta: float = 1.0,
                 **kwargs):  # fmt: skip
        if not isinstance(schedule, self.schedule_type):
            raise ValueError(f"VPDDIM needs a VPSchedule, got {type(schedule).__name__}")
        super().__init__(denoiser, schedule, steps, **kwargs)
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.eta = eta
        schedule.respaced(steps)  # validates steps against T

    def grid(self) -> list[tuple[float, float]]:
        n = self.schedule.respaced(self.steps)
        return [(self.schedule.step_time(a), self.schedule.step_time(b))
                for a, b in zip(n, [*n[1:], -1], strict=True)]  # fmt: skip

    def coefficients(self, t: float, s: float) -> tuple[float, float, float, float]:
        r"""Returns :math:`(\sqrt{\bar{\alpha}_t}, \sqrt{\bar{\alpha}_s},
        \sqrt{1 - \bar{\alpha}_s - \varsigma^2} / \sqrt{1 - \bar{\alpha}_t}, \varsigma)`."""
        ab_t, ab_s = (self.schedule.alpha_bar(torch.tensor(u, dtype=torch.float64)).item()
                      for u in (t, s))  # fmt: skip
        var = self.eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
        return (
            math.sqrt(ab_t),
            math.sqrt(ab_s),
            math.sqrt(max(1 - ab_s - var, 0.0) / (1 - ab_t)),
            math.sqrt(var),
        )

    def step(self, x_t: Tensor, t: float, s: float, generator: Generator = None) -> Tensor:
        a_t, a_s, k, std = self.coefficients(t, s)
        if isinstance(self.denoiser, SplitDenoiser):
            x_hat, delta = self.call(self.denoiser.split, x_t / a_t, t)
        else:
            x_hat, delta = self.denoise(x_t / a_t, t), None
        x_s = a_s * x_hat + k * (x_t - a_t * x_hat)
        if delta is not None:  # the correction with the weight its method states
            x_s = x_s + self.denoiser.vp_weight(a_t**2, a_s**2, a_s - k * a_t) * delta
        return x_s + std * randn_like(x_t, generator) if std > 0 else x_s


SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPM,
    "ddim": DDIM,
    "pc": PredictorCorrector,
    "ddim_vp": VPDDIM,
}


def samplers_for(schedule: type[Schedule]) -> tuple[str, ...]:
    r"""The names of the samplers of :data:`SAMPLERS` that run on a schedule of the type
    `schedule` (e.g. :class:`emdm.VESchedule`: all but `"ddim_vp"`)."""
    return tuple(name for name, s in SAMPLERS.items() if issubclass(schedule, s.schedule_type))


def sample(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x1: Tensor,
    schedule: Schedule,
    sampler: str = "ddpm",
    steps: int = 64,
    generator: Generator = None,
    progress: bool = False,
    **kwargs,
) -> Tensor:
    r"""Draws samples by running a sampler from :math:`x_1` to :math:`t = 0`.

    Arguments:
        denoiser: A denoiser :math:`d(x_t, \sigma)`, e.g. an :class:`emdm.MMPS`.
        x1: The initial state, typically :math:`\mu + \sigma(1) z`, with shape :math:`(B, *)`,
            :math:`B \geq 1`, finite (checked once, before the first step), and of the dtype of
            the observations of a posterior denoiser.
        schedule: The noise schedule.
        sampler: One of `"ddpm"`, `"ddim"`, `"pc"` or `"ddim_vp"` (with a VP schedule).
        steps: The number of steps.
        generator: A generator, or one per sample, for the noise of stochastic steps.
        progress: Whether to show a progress bar.
        kwargs: Extra arguments of the sampler (e.g. `corrections`, `tau` for `"pc"`).

    Returns:
        The samples, with shape :math:`(B, *)`.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    return SAMPLERS[sampler](denoiser, schedule, steps=steps, progress=progress, **kwargs)(
        x1, generator
    )
