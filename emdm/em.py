r"""Expectation-maximization of a diffusion prior from observations (Algorithm 1 of the paper).

Given observations :math:`y_i = A_i x_i + \varepsilon_i` and samples of an initial prior
:math:`q_0` (a Gaussian fitted by :func:`emdm.gaussian.fit_gaussian`), each EM iteration

1. (M-step) trains the denoiser :math:`d_{\theta_k}` on the current samples
   :math:`\{x_i\} \sim q_k(x \mid y_i)` with the denoising loss, warm-started from
   :math:`\theta_{k-1}`;
2. (E-step) draws one posterior sample per observation, :math:`x_i \sim q_{k+1}(x \mid y_i)`,
   with a diffusion sampler whose denoiser is :class:`emdm.MMPS` around :math:`d_{\theta_k}`.

After every iteration the model, optimizer, EMA, samples and random states are written to
`<directory>/last.pt` (atomically), so that `resume=True` continues a killed run from its last
complete iteration with identical results.

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["EMConfig", "batch_cov_y", "e_step", "m_step", "run_em"]

import copy
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .dplr import DPLR
from .loss import denoiser_loss
from .mmps import COVARIANCES, MMPS, SOLVERS
from .samplers import SAMPLERS, sample
from .schedule import Schedule


@dataclasses.dataclass
class EMConfig:
    r"""Settings of the EM loop; the paper's manifold values are in comments."""

    iterations: int = 32  # EM laps (64)
    train_steps: int = 1024  # Adam steps per lap (65 536)
    batch_size: int = 1024  # (1024)
    lr: float = 1e-3  # (1e-3)
    lr_end: float = 1e-6  # linear decay from lr to lr_end within a lap; lr_end = lr: constant
    restart_optimizer: bool = True  # a fresh Adam state each lap, as the paper does
    clip: float = 1.0  # global gradient-norm clip (1.0)
    ema: float = 0.0  # EMA decay of the weights used by the E-step; 0: none (none)
    sampler: str = "pc"  # ("pc")
    steps: int = 256  # (4096)
    covariance: str = "tweedie"  # or a heuristic; "cov_x": q_0's covariance, the code's default
    cg_iterations: int = 2  # (until converged, rtol 1e-3)
    solver: str = "cg"  # or "dense": the exact solve, symmetrized and guarded (small y only)
    sample_batch: int = 4096  # observations per E-step batch
    keep_range: float = 3.0  # drop samples with a coordinate outside (-r, r); 0: keep all (3)
    seed: int = 0

    def __post_init__(self):
        for name in ("iterations", "train_steps", "batch_size", "steps", "cg_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {self.sampler!r}")
        if self.covariance not in (*COVARIANCES, "cov_x"):
            raise ValueError(
                f"covariance must be one of {(*COVARIANCES, 'cov_x')}, got {self.covariance!r}"
            )
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")


def batch_cov_y(cov_y: float | Tensor, y: Tensor, index: slice) -> float | Tensor:
    r"""Restricts :math:`\Sigma_y` to a batch of observations: a tensor with the shape of `y` is
    per observation and is sliced like `y`; anything else is shared and kept."""
    if isinstance(cov_y, Tensor) and cov_y.shape == y.shape:
        return cov_y[index]
    return cov_y


def _learning_rate(cfg: EMConfig, step: int) -> float:
    r"""The paper's linear schedule: :math:`l_0 + (l_1 - l_0) \min((k + 1) / (S + 1), 1)`."""
    return cfg.lr + (cfg.lr_end - cfg.lr) * min((step + 1) / (cfg.train_steps + 1), 1.0)


def m_step(
    denoiser: nn.Module,
    samples: Tensor,
    cfg: EMConfig,
    schedule: Schedule,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    ema: nn.Module | None = None,
    progress: bool = False,
    desc: str = "M-step",
) -> float:
    r"""Trains `denoiser` for `cfg.train_steps` Adam steps on batches drawn with replacement
    from `samples`; returns the mean loss of the last tenth of the steps."""
    denoiser.train()
    losses = []
    bar = tqdm(range(cfg.train_steps), disable=not progress, desc=desc, leave=False)
    for step in bar:
        index = torch.randint(
            len(samples), (cfg.batch_size,), generator=generator, device=generator.device
        )
        x = samples[index.to(samples.device)]
        loss = denoiser_loss(denoiser, x, schedule, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(denoiser.parameters(), cfg.clip)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(cfg, step)
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), denoiser.parameters(), strict=True):
                    p_ema.lerp_(p, 1 - cfg.ema)
        losses.append(loss.detach())
        if step % 64 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    denoiser.eval()
    tail = torch.stack(losses[-max(1, len(losses) // 10) :])
    return tail.mean().item()


def e_step(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    A,
    y: Tensor,
    cov_y: float | Tensor,
    cfg: EMConfig,
    schedule: Schedule,
    mean: Tensor,
    generator: torch.Generator,
    progress: bool = False,
    covariance: str | DPLR | None = None,
) -> tuple[Tensor, int]:
    r"""Draws one posterior sample per observation with MMPS, in batches.

    Arguments:
        denoiser: The prior denoiser.
        A: The operator of all observations, indexable by sample (e.g. a per-sample
            :class:`emdm.DenseOperator`).
        y: The observations, with shape :math:`(N, *)`.
        cov_y: The noise covariance: a float, or a per-observation tensor with shape of `y`.
        cfg: The EM settings (sampler, steps, covariance, CG iterations, batch size).
        schedule: The noise schedule.
        mean: The state at :math:`t = 1` is :math:`\mu + \sigma(1) z`: the mean :math:`\mu`,
            with the event shape of :math:`x`.
        generator: The generator of every random draw.
        covariance: MMPS's covariance, if not `cfg.covariance` (e.g. a Gaussian prior's DPLR).

    Returns:
        The samples, with shape :math:`(N, *)`, and how often MMPS's solver guard fired (CG:
        non-positive curvature; dense: eigenvalues reflected above the floor).
    """
    covariance = cfg.covariance if covariance is None else covariance
    out, guard = [], 0
    sigma_1 = schedule.sigma_ve(torch.ones((), dtype=torch.float64)).item()
    batches = range(0, len(y), cfg.sample_batch)
    for i in tqdm(batches, disable=not progress, desc="E-step", leave=False):
        index = slice(i, i + cfg.sample_batch)
        y_i = y[index]
        c_i = batch_cov_y(cov_y, y, index)
        posterior = MMPS(
            denoiser, A[index], y_i, c_i, covariance, cfg.cg_iterations, solver=cfg.solver
        )
        shape = (len(y_i), *mean.shape)
        z = torch.randn(shape, generator=generator, dtype=y.dtype, device=generator.device)
        x1 = mean + sigma_1 * z.to(y.device)
        x = sample(
            posterior,
            x1,
            schedule,
            cfg.sampler,
            cfg.steps,
            generator=generator,
            check_finite=True,
        )
        out.append(x)
        guard += int(posterior.nonpositive)
    return torch.cat(out), guard


def _write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _differences(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def run_em(
    denoiser: nn.Module,
    A,
    y: Tensor,
    cov_y: float | Tensor,
    samples: Tensor,
    cfg: EMConfig,
    schedule: Schedule,
    *,
    mean: Tensor | None = None,
    directory: str | os.PathLike | None = None,
    resume: bool = False,
    identity: dict[str, Any] | None = None,
    callback: Callable[[int, Tensor, dict[str, float]], None] | None = None,
    prior_cov: DPLR | None = None,
    progress: bool = False,
) -> Tensor:
    r"""Runs `cfg.iterations` EM iterations from the samples of :math:`q_0`.

    Arguments:
        denoiser: The denoiser to train (an `nn.Module`), initialized by the caller.
        A: The operator of all observations, indexable by sample.
        y: The observations, with shape :math:`(N, *)`.
        cov_y: The noise covariance, a float or a per-observation tensor.
        samples: Samples of :math:`q_0(x \mid y_i)`, one per observation, with shape
            :math:`(N, *)`.
        cfg: The EM settings.
        schedule: The noise schedule.
        mean: The mean :math:`\mu` of the sampler's initial state :math:`\mu + \sigma(1) z`
            (the paper uses :math:`q_0`'s mean). Defaults to zero.
        directory: Where to write `config.json` and the checkpoint `last.pt`, or `None`.
        resume: Whether to continue the run in `directory` from its last complete iteration.
            It refuses if the run was made with a different config or `identity`.
        identity: Anything else that defines the run (data, model), compared on resume.
        callback: Called after each iteration `k` (from 1) with the samples of :math:`q_k` and
            the iteration's metrics (`loss`, `kept`, `guard`).
        prior_cov: The covariance :math:`\Sigma_x` that `cfg.covariance = "cov_x"` uses in
            MMPS, :math:`V_t = (\Sigma_x^{-1} + \sigma_t^{-2} I)^{-1}` (the paper's code uses
            :math:`q_0`'s, fixed for all iterations).
        progress: Whether to show progress bars.

    Returns:
        The samples of the last iteration.
    """
    if len(samples) != len(y):
        raise ValueError(f"expected one q_0 sample per observation ({len(y)}), got {len(samples)}")
    if cfg.covariance == "cov_x" and not isinstance(prior_cov, DPLR):
        raise ValueError("covariance 'cov_x' needs prior_cov, the prior covariance as a DPLR")
    covariance = prior_cov if cfg.covariance == "cov_x" else None
    mean = torch.zeros_like(samples[0]) if mean is None else mean.reshape(samples.shape[1:])
    generator = torch.Generator(y.device).manual_seed(cfg.seed)
    ema = copy.deepcopy(denoiser).requires_grad_(False) if cfg.ema > 0 else None
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr)
    start = 0

    record = {"config": dataclasses.asdict(cfg), "identity": identity or {}}
    record = json.loads(json.dumps(record, default=str))  # as saved: tuples become lists
    if directory is not None:
        directory = Path(directory)
        checkpoint = directory / "last.pt"
        if checkpoint.exists() and not resume:
            raise ValueError(
                f"{directory} holds a run already: pass resume=True (--resume) to continue it "
                f"or choose another directory"
            )
        if resume and checkpoint.exists():
            saved = json.loads((directory / "config.json").read_text())
            differing = _differences(saved["config"], record["config"])
            differing += [
                f"identity.{k}" for k in _differences(saved["identity"], record["identity"])
            ]
            if differing:
                raise ValueError(
                    f"cannot resume {directory}: it was run with a different config; differing "
                    f"keys: {', '.join(differing)}"
                )
            state = torch.load(checkpoint, weights_only=True)
            denoiser.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            samples, start = state["samples"].to(y.device), state["iteration"]
        else:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "config.json").write_text(json.dumps(record, indent=2))

    for k in tqdm(range(start, cfg.iterations), disable=not progress, desc="EM", initial=start):
        if cfg.restart_optimizer:
            optimizer = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr)
        if ema is not None:
            ema.load_state_dict(denoiser.state_dict())  # re-initialized each lap
        loss = m_step(
            denoiser,
            samples,
            cfg,
            schedule,
            optimizer,
            generator,
            ema,
            progress,
            f"M-step {k + 1}",
        )
        prior = ema if ema is not None else denoiser
        try:
            samples, guard = e_step(
                prior, A, y, cov_y, cfg, schedule, mean, generator, progress, covariance
            )
        except FloatingPointError as error:
            raise FloatingPointError(f"EM iteration {k + 1}: {error}") from None
        kept = len(samples)
        if cfg.keep_range > 0:
            inside = (samples.abs() < cfg.keep_range).flatten(1).all(dim=1)
            samples = samples[inside]
            kept = int(inside.sum())
        if kept == 0:
            raise FloatingPointError(
                f"EM iteration {k + 1}: every sample left (-{cfg.keep_range}, {cfg.keep_range})"
            )
        metrics = {"loss": loss, "kept": kept, "guard": guard}
        # the callback first: if the run dies before the checkpoint, a resume redoes this
        # iteration identically and the callback rewrites what it wrote
        if callback is not None:
            callback(k + 1, samples, metrics)
        if directory is not None:
            _write_checkpoint(
                directory / "last.pt",
                {
                    "iteration": k + 1,
                    "model": denoiser.state_dict(),
                    "ema": None if ema is None else ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "samples": samples.cpu(),
                    "metrics": metrics,
                },
            )
    return samples
