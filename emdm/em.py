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

On images the M-step augments its batches (random horizontal flips and shifts by up to
:math:`k` pixels with reflect padding, protocols §4.3 and §5.3), and the E-step can seed one
generator per batch of observations (`seeding="batch"`), which makes a run independent of how
many processes share it (:mod:`emdm.distributed`).

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = [
    "EMConfig",
    "augment",
    "check_run_disk",
    "checkpoint_bytes",
    "e_step",
    "m_step",
    "optimizer_for",
    "run_em",
]

import copy
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import faults
from .checks import load_torch
from .config import NONNEGATIVE, POSITIVE, Checked, interval, option
from .distributed import Context, local
from .dplr import DPLR
from .errors import UserError
from .guidance import COVARIANCES, MMPS, SOLVERS
from .loss import beta33, denoising_loss
from .observation import Observation
from .profiling import BACKWARD, LOSS, OPTIMIZER, region
from .progress import bar
from .publish import check_disk, size_text
from .runs import write_atomic
from .samplers import sample, samplers_for
from .schedule import Schedule, VESchedule
from .solvers import DOTS
from .threads import refresh


@dataclasses.dataclass
class EMConfig(Checked):
    r"""Settings of the EM loop; the paper's manifold values in the help."""

    iterations: int = option(32, "EM laps (paper: 64)", check=POSITIVE)
    train_steps: int = option(1024, "Adam steps per lap (paper: 65 536)", check=POSITIVE)
    batch_size: int = option(1024, "M-step batch size (paper: 1024)", check=POSITIVE)
    lr: float = option(1e-3, "learning rate at a lap's start (paper: 1e-3)", check=POSITIVE)
    lr_end: float = option(
        1e-6, "learning rate at a lap's end, linear from lr; lr_end = lr: constant", check=POSITIVE
    )
    restart_optimizer: bool = option(True, "a fresh Adam state each lap, as the paper does")
    clip: float = option(1.0, "global gradient-norm clip (paper: 1.0)", check=POSITIVE)
    ema: float = option(
        0.0,
        "EMA decay of the weights the E-step uses; 0: none (paper: none)",
        check=interval(0, 1),
    )
    # the E-step starts at x_1 = mean + sigma(1) z in VE coordinates
    sampler: str = option(
        "pc", "sampler of the E-step (paper: pc)", choices=samplers_for(VESchedule)
    )
    steps: int = option(256, "sampler steps of the E-step (paper: 4096)", check=POSITIVE)
    covariance: str = option(
        "tweedie",
        "MMPS covariance: tweedie, a heuristic, or cov_x: q_0's (the paper's code's default)",
        choices=(*COVARIANCES, "cov_x"),
    )
    cg_iterations: int = option(
        2, "CG iterations of MMPS (paper: until converged, rtol 1e-3)", check=POSITIVE
    )
    solver: str = option(
        "cg",
        "MMPS solver; dense: the exact solve, symmetrized and guarded (small y only)",
        choices=SOLVERS,
    )
    # "batch" as the paper's image code: one jax cg on the batch array, one step size for all
    dot: str = option(
        "sample", "CG inner products per sample, or batch: over each E-step batch", choices=DOTS
    )
    sample_batch: int = option(4096, "observations per E-step batch", check=POSITIVE)
    keep_range: float = option(
        3.0,
        "drop samples with a coordinate outside (-r, r); 0: keep all (paper: 3)",
        check=NONNEGATIVE,
    )
    flip: bool = option(False, "M-step augmentation: random horizontal flips of images")
    shift: int = option(
        0, "M-step augmentation: random shifts by up to this many pixels", check=NONNEGATIVE
    )
    seeding: str = option(
        "stream",
        "E-step noise: one stream, or batch: one generator per batch (any number of ranks)",
        choices=("stream", "batch"),
    )
    mean_samples: int = option(
        0, "n > 0: each E-step starts at the mean of the first n samples", check=NONNEGATIVE
    )
    seed: int = option(0, "seed of the M- and E-steps' generators", check=NONNEGATIVE)
    compile: bool = option(
        False,
        "torch.compile the M-step's loss and backward (minutes to compile; pays on a GPU)",
    )


def _check_observation(obs: Observation) -> None:
    r"""Raises a `TypeError` unless `obs` is an :class:`emdm.observation.Observation`."""
    if not isinstance(obs, Observation):
        raise TypeError(
            f"expected the observations as an Observation(A, y, cov_y), got {type(obs).__name__}"
        )


def _learning_rate(cfg: EMConfig, step: int) -> float:
    r"""The paper's linear schedule: :math:`l_0 + (l_1 - l_0) \min((k + 1) / (S + 1), 1)`."""
    return cfg.lr + (cfg.lr_end - cfg.lr) * min((step + 1) / (cfg.train_steps + 1), 1.0)


def augment(x: Tensor, flip: bool, shift: int, generator: torch.Generator) -> Tensor:
    r"""Randomly flips images :math:`(B, *, H, W)` horizontally (probability 1/2) and shifts
    them by :math:`(\delta_h, \delta_w) \in \{-k, \dots, k\}^2` pixels, filling the border by
    reflection; the draws come from `generator`, one per image."""
    if not flip and shift == 0:
        return x
    if x.ndim < 3:
        raise ValueError(f"augmentation expects images (B, *, H, W), got {tuple(x.shape)}")
    shape = x.shape
    x = x.reshape(shape[0], -1, *shape[-2:])  # (B, C, H, W)
    B, C, H, W = x.shape
    device = generator.device
    if flip:
        flips = torch.rand(B, generator=generator, device=device) < 0.5
        x = torch.where(flips.to(x.device)[:, None, None, None], x.flip(-1), x)
    if shift > 0:
        d = torch.randint(-shift, shift + 1, (B, 2), generator=generator, device=device)
        d = d.to(x.device)
        padded = nn.functional.pad(x, (shift,) * 4, mode="reflect")  # (B, C, H + 2k, W + 2k)
        i = torch.arange(H, device=x.device) + shift - d[:, :1]  # (B, H)
        j = torch.arange(W, device=x.device) + shift - d[:, 1:]  # (B, W)
        rows = padded.gather(2, i[:, None, :, None].expand(-1, C, -1, padded.shape[3]))
        x = rows.gather(3, j[:, None, None, :].expand(-1, C, H, -1))
    return x.reshape(shape)


def optimizer_for(denoiser: nn.Module, cfg: EMConfig) -> torch.optim.Optimizer:
    r"""The M-step's Adam at `cfg.lr`, with its multi-tensor (`foreach`) update: a few ops per
    step for all parameters instead of a few per parameter, with results identical to the
    one-tensor-at-a-time loop to the bit (tested)."""
    return torch.optim.Adam(denoiser.parameters(), lr=cfg.lr, foreach=True)


def _loss_function(denoiser: nn.Module, compile: bool) -> Callable[..., Tensor]:
    r"""The M-step's :func:`emdm.loss.denoising_loss` of `denoiser`, compiled by
    `torch.compile` if asked (its backward then compiled by AOTAutograd too)."""

    def loss(x: Tensor, sigma: Tensor, z: Tensor) -> Tensor:
        return denoising_loss(denoiser, x, sigma, z)

    return torch.compile(loss) if compile else loss


def m_step(
    denoiser: nn.Module,
    samples: Tensor,
    cfg: EMConfig,
    schedule: Schedule,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    ema: nn.Module | None = None,
    progress: bool = False,
    desc: str = "M-step",
    ctx: Context | None = None,
) -> float:
    r"""Trains `denoiser` for `cfg.train_steps` Adam steps on batches drawn with replacement
    from `samples` (augmented per `cfg`); returns the mean loss of the last tenth of the steps.

    In a multi-process run (`ctx`), `denoiser` is the `DistributedDataParallel` module: every
    rank draws the same global batch and trains on its shard of it.
    """
    ctx = local() if ctx is None else ctx
    device = next(denoiser.parameters()).device
    shard = ctx.split(cfg.batch_size)
    denoiser.train()
    compute_loss = _loss_function(denoiser, cfg.compile)
    parameters = [p for p in denoiser.parameters() if p.requires_grad]
    if ema is not None:
        ema_parameters, model_parameters = list(ema.parameters()), list(denoiser.parameters())
        if len(ema_parameters) != len(model_parameters):
            raise ValueError("the EMA model must have the denoiser's parameters")
    losses = []
    steps = bar(range(cfg.train_steps), progress, desc=desc, leave=False)
    for step in steps:
        faults.point("m-step")
        index = torch.randint(
            len(samples), (cfg.batch_size,), generator=generator, device=generator.device
        )
        x = samples[index.to(samples.device)].to(device)
        x = augment(x, cfg.flip, cfg.shift, generator)
        # the draws of the whole batch on every rank, in the order denoiser_loss makes them
        t = beta33(cfg.batch_size, generator, dtype=x.dtype, device=generator.device)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
        sigma = schedule.sigma_ve(t.to(device))
        with region(LOSS):
            loss = compute_loss(x[shard], sigma[shard], z[shard].to(device))
        optimizer.zero_grad(set_to_none=True)
        with region(BACKWARD):
            loss.backward()
        with region(OPTIMIZER):
            nn.utils.clip_grad_norm_(parameters, cfg.clip, foreach=True)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(cfg, step)
            optimizer.step()
            if ema is not None:  # one multi-tensor op for every parameter
                with torch.no_grad():
                    torch._foreach_lerp_(ema_parameters, model_parameters, 1 - cfg.ema)
        losses.append(loss.detach())
        if progress and step % 64 == 0:
            steps.set_postfix(loss=f"{loss.item():.4f}")
    denoiser.eval()
    tail = torch.stack(losses[-max(1, len(losses) // 10) :])
    return tail.mean().item()


def e_step(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    obs: Observation,
    cfg: EMConfig,
    schedule: Schedule,
    *,
    mean: Tensor,
    generator: torch.Generator,
    covariance: str | DPLR | None = None,
    iteration: int = 0,
    ctx: Context | None = None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    r"""Draws one posterior sample per observation with MMPS, in batches.

    Arguments:
        denoiser: The prior denoiser.
        obs: The observations :math:`(A, y, \Sigma_y)`, :math:`y` with shape :math:`(N, *)`,
            on any device: each batch `obs[i:j]` is moved to the device of `mean`.
        cfg: The EM settings (sampler, steps, covariance, CG iterations, batch size, seeding).
        schedule: The noise schedule.
        mean: The state at :math:`t = 1` is :math:`\mu + \sigma(1) z`: the mean :math:`\mu`,
            with the event shape of :math:`x`.
        generator: The generator of every random draw (`seeding="stream"`), or whose device the
            per-batch generators take (`"batch"`: seeded by `cfg.seed`, `iteration`, batch).
        covariance: MMPS's covariance, if not `cfg.covariance` (e.g. a Gaussian prior's DPLR).
        iteration: The EM iteration, part of the per-batch seeds.
        ctx: The processes that share the batches (each gets every P-th); all get every sample.
        progress: Whether to show a progress bar.

    Returns:
        The samples, with shape :math:`(N, *)`, on the device of `obs`, and how often MMPS's
        solver guard fired (CG: non-positive curvature; dense: eigenvalues reflected above
        the floor), summed over this rank's batches.
    """
    _check_observation(obs)
    ctx = local() if ctx is None else ctx
    if ctx.active and cfg.seeding != "batch":
        raise ValueError("a multi-process E-step needs seeding='batch'")
    covariance = cfg.covariance if covariance is None else covariance
    device = mean.device
    out, guard = [], 0
    sigma_1 = schedule.sigma_ve(torch.ones((), dtype=torch.float64)).item()
    starts = range(0, len(obs), cfg.sample_batch)
    mine = [starts[b] for b in ctx.shard(len(starts))]
    for b, i in enumerate(bar(mine, progress, desc="E-step", leave=False)):
        faults.point("e-step")
        A_i, y_i, cov_i = obs[i : i + cfg.sample_batch].to(device)
        posterior = MMPS(
            denoiser,
            A_i,
            y_i,
            cov_i,
            covariance,
            cfg.cg_iterations,
            solver=cfg.solver,
            dot=cfg.dot,
        )
        if cfg.seeding == "batch":  # (seed, iteration, global batch index): rank-independent
            batch = ctx.rank + b * ctx.world
            seed = (cfg.seed * 1_000_003 + iteration) * 1_000_003 + batch
            generator = torch.Generator(generator.device).manual_seed(seed)
        shape = (len(y_i), *mean.shape)
        z = torch.randn(shape, generator=generator, dtype=y_i.dtype, device=generator.device)
        x1 = mean + sigma_1 * z.to(device)
        x = sample(
            posterior,
            x1,
            schedule,
            cfg.sampler,
            cfg.steps,
            generator=generator,
            check_finite=True,
        )
        out.append(x.to(obs.device))
        guard += int(posterior.nonpositive)
    return torch.cat(ctx.gather(out, len(starts), like=obs.y)), guard


def _write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    r"""Writes `state` to `path` atomically, through a temporary file of a unique name."""

    def write(tmp: Path) -> None:
        faults.point("checkpoint")
        torch.save(state, tmp)
        faults.point("checkpoint")

    write_atomic(path, write)


def _load_checkpoint(path: Path, device: torch.device | str | None = None) -> dict[str, Any]:
    r"""Loads a checkpoint, or raises a :class:`UserError` naming the damaged file."""
    message = (
        f"the checkpoint {path} is damaged ({{error}}); delete it to redo the run from its "
        f"start, or start anew in another folder"
    )
    return load_torch(path, message, map_location=device)


def _nbytes(tensors: Any) -> int:
    r"""The bytes of `tensors` in a file of :func:`torch.save`: their data, and at most 1 kB
    each of archive records, alignment and pickled keys (measured: 330-490 bytes for short
    keys, more for a U-Net's long parameter names)."""
    return sum(t.numel() * t.element_size() + 1024 for t in tensors)


def checkpoint_bytes(
    denoiser: nn.Module, samples: Tensor, ema: bool, rank: int = 0
) -> dict[str, int]:
    r"""The sizes of an EM run's checkpoint files, in bytes, from the tensors' sizes alone (a
    model and samples on the `meta` device will do): `last.pt` (weights, EMA weights if `ema`,
    Adam's two moments and step, the samples, the two generator states), a lap's snapshot
    `prior_<k>.pt` (the E-step's weights and start mean) and, if `rank`, lap 0's `q0.pt`
    (:func:`emdm.prior.learn_prior`: the samples, the mean and a DPLR covariance of that rank).
    Above the files written: by under 0.1 % for the MRI U-Net's, by up to 1 kB a tensor for a
    tiny network's (tested)."""
    weights = _nbytes(denoiser.state_dict().values())
    trained = [p for p in denoiser.parameters() if p.requires_grad]
    adam = 2 * _nbytes(trained) + _nbytes(torch.zeros(()) for _ in trained)
    rng = 2 * _nbytes([torch.get_rng_state()])  # the run's generator's and torch's
    last = weights * (2 if ema else 1) + adam + _nbytes([samples]) + rng + 4096
    sizes = {"last.pt": last, "prior_<k>.pt": weights + _nbytes([samples[0]]) + 1024}
    if rank:  # the mean, and PPCA's covariance: its diagonal and U (no V: symmetric)
        sizes["q0.pt"] = _nbytes([samples]) + (2 + rank) * _nbytes([samples[0]]) + 4096
    return sizes


def check_run_disk(
    directory: str | os.PathLike,
    denoiser: nn.Module,
    samples: Tensor,
    ema: bool,
    laps: int,
    snapshots: bool = True,
    rank: int = 0,
    ctx: Context | None = None,
) -> None:
    r"""Refuses, before any work, a run whose checkpoints (:func:`checkpoint_bytes`) would not
    fit on `directory`'s disk: `last.pt`, written beside the old one before it replaces it,
    `laps` snapshots if `snapshots`, and `q0.pt` if `rank`; raises a :class:`UserError` naming
    the files, their sizes, the space needed and the space free. In a multi-process run every
    rank calls it: rank 0, which writes the checkpoints, checks its disk, and every rank stops
    if it refuses (none waits for the others at a collective)."""
    ctx = local() if ctx is None else ctx
    error = None
    if ctx.main:
        try:
            _check_run_disk(Path(directory), denoiser, samples, ema, laps, snapshots, rank)
        except UserError as refused:
            error = refused
    if ctx.sum(error is not None):
        raise error or UserError(f"rank 0 refused the run in {directory}: see its message")


def _check_run_disk(
    directory: Path,
    denoiser: nn.Module,
    samples: Tensor,
    ema: bool,
    laps: int,
    snapshots: bool,
    rank: int,
) -> None:
    sizes = checkpoint_bytes(denoiser, samples, ema, rank)
    # beside the last.pt on disk (or the first one written), one more while it is replaced
    need = sizes["last.pt"] * (1 if (directory / "last.pt").exists() or laps <= 1 else 2)
    parts = [f"last.pt of {size_text(sizes['last.pt'])}, written beside the old one"]
    if snapshots:
        need += laps * sizes["prior_<k>.pt"]
        parts.append(f"{laps} lap snapshot(s) of {size_text(sizes['prior_<k>.pt'])}")
    if rank:
        need += sizes["q0.pt"]
        parts.insert(0, f"q0.pt of {size_text(sizes['q0.pt'])}")
    check_disk(directory, need, f"the EM run's checkpoints ({', '.join(parts)})")


def _differences(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def run_em(
    denoiser: nn.Module,
    obs: Observation,
    samples: Tensor,
    cfg: EMConfig,
    schedule: Schedule,
    *,
    mean: Tensor | None = None,
    directory: str | os.PathLike | None = None,
    resume: bool = False,
    identity: dict[str, Any] | None = None,
    callback: Callable[[int, Tensor, dict[str, float]], None] | None = None,
    evaluate: Callable[[int, nn.Module, Tensor], dict[str, float]] | None = None,
    prior_cov: DPLR | None = None,
    progress: bool = False,
    ctx: Context | None = None,
    snapshots: bool = True,
) -> Tensor:
    r"""Runs `cfg.iterations` EM iterations from the samples of :math:`q_0`.

    Arguments:
        denoiser: The denoiser to train (an `nn.Module`), initialized by the caller.
        obs: The observations :math:`(A, y, \Sigma_y)`, :math:`y` with shape :math:`(N, *)`.
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
            the iteration's metrics (`loss`, `kept`, `guard` and those of `evaluate`).
        evaluate: Called after each iteration `k` with the prior :math:`d_{\theta_k}` that the
            E-step used (the EMA weights, if any) and the sampler's start mean; returns extra
            metrics (e.g. a FID of its unconditional samples). It should draw from its own
            generator, so that the run's draws do not depend on it.
        prior_cov: The covariance :math:`\Sigma_x` that `cfg.covariance = "cov_x"` uses in
            MMPS, :math:`V_t = (\Sigma_x^{-1} + \sigma_t^{-2} I)^{-1}` (the paper's code uses
            :math:`q_0`'s, fixed for all iterations).
        progress: Whether to show progress bars.
        ctx: The processes of a multi-process run (:func:`emdm.distributed.init`): they share
            the E-step's batches and the M-step's batches; rank 0 writes the checkpoints and
            calls `callback`. Every rank must pass the same arguments.
        snapshots: Whether to keep the prior of every lap `k` in `<directory>/prior_<k>.pt`:
            the weights the E-step used (the EMA's, if any) and the sampler's start mean, for
            evaluating any lap later (:func:`emdm.prior.load_prior`); `last.pt` holds only the
            last lap, with what a resume needs.

    Returns:
        The samples of the last iteration.
    """
    _check_observation(obs)
    ctx = local() if ctx is None else ctx
    if ctx.active and cfg.seeding != "batch":
        raise ValueError("a multi-process run needs seeding='batch' (per-batch E-step seeds)")
    if len(samples) != len(obs):
        raise ValueError(
            f"expected one q_0 sample per observation ({len(obs)}), got {len(samples)}"
        )
    if cfg.covariance == "cov_x" and not isinstance(prior_cov, DPLR):
        raise ValueError("covariance 'cov_x' needs prior_cov, the prior covariance as a DPLR")
    covariance = prior_cov if cfg.covariance == "cov_x" else None
    mean = torch.zeros_like(samples[0]) if mean is None else mean.reshape(samples.shape[1:])
    generator = torch.Generator(obs.device).manual_seed(cfg.seed)
    ema = copy.deepcopy(denoiser).requires_grad_(False) if cfg.ema > 0 else None
    trained = ctx.wrap(denoiser)  # DistributedDataParallel in a multi-process run
    optimizer = optimizer_for(denoiser, cfg)
    start = 0

    record = {"config": dataclasses.asdict(cfg), "identity": identity or {}}
    record = json.loads(json.dumps(record, default=str))  # as saved: tuples become lists
    if directory is not None:
        directory = Path(directory)
        checkpoint = directory / "last.pt"
        if checkpoint.exists() and not resume:
            raise UserError(
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
            state = _load_checkpoint(checkpoint)
            denoiser.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            samples, start = state["samples"].to(obs.device), state["iteration"]
            if state.get("mean") is not None:
                mean = state["mean"].to(mean)
        elif ctx.main:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "config.json").write_text(json.dumps(record, indent=2))
        ctx.barrier()  # no rank starts before every rank has checked the directory

    laps = range(start, cfg.iterations)
    if directory is not None:
        check_run_disk(
            directory, denoiser, samples, ema is not None, len(laps), snapshots, ctx=ctx
        )
    for k in bar(laps, progress, desc="EM", initial=start, total=cfg.iterations):
        refresh()  # --threads auto: as many threads as the cores other jobs leave idle now
        if cfg.restart_optimizer:
            optimizer = optimizer_for(denoiser, cfg)
        if ema is not None:
            ema.load_state_dict(denoiser.state_dict())  # re-initialized each lap
        loss = m_step(
            trained,
            samples,
            cfg,
            schedule,
            optimizer,
            generator,
            ema=ema,
            progress=progress,
            desc=f"M-step {k + 1}",
            ctx=ctx,
        )
        prior = ema if ema is not None else denoiser
        try:
            samples, guard = e_step(
                prior,
                obs,
                cfg,
                schedule,
                mean=mean,
                generator=generator,
                covariance=covariance,
                iteration=k + 1,
                ctx=ctx,
                progress=progress,
            )
        except FloatingPointError as error:
            raise FloatingPointError(f"EM iteration {k + 1}: {error}") from None
        guard = int(ctx.sum(guard))
        kept = len(samples)
        if cfg.keep_range > 0:
            inside = (samples.abs() < cfg.keep_range).flatten(1).all(dim=1)
            samples = samples[inside]
            kept = int(inside.sum())
        if kept == 0:
            raise FloatingPointError(
                f"EM iteration {k + 1}: every sample left (-{cfg.keep_range}, {cfg.keep_range})"
            )
        if cfg.mean_samples > 0:  # the paper's images: the next E-step starts at PPCA's mean
            mean = samples[: cfg.mean_samples].mean(dim=0).to(mean)
        metrics = {"loss": ctx.sum(loss) / ctx.world, "kept": kept, "guard": guard}
        if evaluate is not None and ctx.main:
            metrics.update(evaluate(k + 1, prior, mean))
        # the callback first: if the run dies before the checkpoint, a resume redoes this
        # iteration identically and the callback rewrites what it wrote
        if callback is not None and ctx.main:
            callback(k + 1, samples, metrics)
        if directory is not None and ctx.main:
            if snapshots:  # before last.pt: a lap that last.pt counts has its snapshot
                state = {"iteration": k + 1, "model": prior.state_dict(), "mean": mean.cpu()}
                _write_checkpoint(directory / f"prior_{k + 1}.pt", state)
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
                    "mean": mean.cpu() if cfg.mean_samples > 0 else None,
                    "metrics": metrics,
                },
            )
        ctx.barrier()
    return samples
