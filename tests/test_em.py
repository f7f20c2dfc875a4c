import json

import pytest
import torch

from emdm import DenseOperator, EDMDenoiser, VESchedule
from emdm.em import EMConfig, checkpoint_bytes, run_em
from emdm.nn import TimeMLP
from emdm.observation import Observation

DT = torch.float32
SCHEDULE = VESchedule(1e-3, 10.0)
CFG = EMConfig(iterations=2, train_steps=16, batch_size=64, steps=8, sample_batch=96, seed=3)


def toy(n=192):
    """2-D Gaussian data seen through random 1-D projections, and q_0's samples."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n, 2), generator=g) @ torch.tensor([[1.0, 0.0], [0.8, 0.3]]).T
    A = torch.randn((n, 1, 2), generator=g)
    A = A / A.norm(dim=-1, keepdim=True)
    y = (A @ x[..., None])[..., 0] + 0.05 * torch.randn((n, 1), generator=g)
    q0 = torch.randn((n, 2), generator=g)
    return Observation(DenseOperator(A), y, 0.05**2), q0


def model():
    torch.manual_seed(0)
    return EDMDenoiser(TimeMLP(2, emb_features=16, hidden_features=(32, 32)), emb_features=16)


def test_em_runs_and_reports_metrics(tmp_path):
    obs, q0 = toy()
    seen = []
    out = run_em(model(), obs, q0, CFG, SCHEDULE, directory=tmp_path,
                 callback=lambda k, x, m: seen.append((k, x.shape, m)))  # fmt: skip
    assert [k for k, _, _ in seen] == [1, 2]
    assert out.shape[1:] == (2,) and torch.isfinite(out).all()
    assert all({"loss", "kept", "guard"} <= set(m) for _, _, m in seen)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["config"]["train_steps"] == 16


class Stop(Exception):
    pass


def test_resume_equals_an_uninterrupted_run(tmp_path):
    obs, q0 = toy()
    reference = model()
    full = run_em(reference, obs, q0, CFG, SCHEDULE, directory=tmp_path / "full")

    def die(k, x, m):  # killed during iteration 2, before its checkpoint
        if k == 2:
            raise Stop

    with pytest.raises(Stop):
        run_em(model(), obs, q0, CFG, SCHEDULE, directory=tmp_path / "cut", callback=die)
    resumed_model = model()
    resumed = run_em(
        resumed_model, obs, q0, CFG, SCHEDULE, directory=tmp_path / "cut", resume=True
    )
    assert torch.equal(full, resumed)
    for p, q in zip(reference.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_resume_refuses_another_config_and_overwrite(tmp_path):
    obs, q0 = toy()
    identity = {"sizes": (1, 2)}  # a tuple survives the JSON round trip of the saved config
    run_em(model(), obs, q0, CFG, SCHEDULE, directory=tmp_path, identity=identity)
    run_em(model(), obs, q0, CFG, SCHEDULE, directory=tmp_path, identity=identity, resume=True)
    other = EMConfig(**{**CFG.__dict__, "lr": 5e-4, "steps": 4})
    with pytest.raises(ValueError, match="differing keys: lr, steps"):
        run_em(model(), obs, q0, other, SCHEDULE, directory=tmp_path, resume=True,
               identity=identity)  # fmt: skip
    with pytest.raises(ValueError, match="holds a run already"):
        run_em(model(), obs, q0, CFG, SCHEDULE, directory=tmp_path)


def test_non_finite_samples_name_the_iteration_and_sigma():
    obs, q0 = toy()

    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model()

        def forward(self, x_t, sigma):
            out = self.inner(x_t, sigma)
            return torch.where(sigma[:, None] < 1.0, out * float("nan"), out)

    with pytest.raises(FloatingPointError, match=r"EM iteration 1: .*sigma_t = "):
        run_em(Exploding(), obs, q0, CFG, SCHEDULE)


def test_prior_covariance_option():
    from emdm import DPLR

    obs, q0 = toy()
    cfg = EMConfig(**{**CFG.__dict__, "covariance": "cov_x", "iterations": 1})
    cov = DPLR(torch.ones(2), torch.zeros(2, 1))
    out = run_em(model(), obs, q0, cfg, SCHEDULE, prior_cov=cov)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="needs prior_cov"):
        run_em(model(), obs, q0, cfg, SCHEDULE)


def test_e_step_and_run_em_take_an_observation():
    obs, q0 = toy()
    A, y, cov_y = obs
    with pytest.raises(TypeError, match=r"Observation\(A, y, cov_y\)"):
        run_em(model(), (A, y, cov_y), q0, CFG, SCHEDULE)
    with pytest.raises(ValueError, match="one q_0 sample per observation"):
        run_em(model(), obs, q0[:-1], CFG, SCHEDULE)


def _blur_or_resize(name: str, n: int):
    from emdm.operators import Bicubic, Blur, Downsample, gaussian_kernel

    g = torch.Generator().manual_seed(1)
    return {
        "blur": lambda: Blur(gaussian_kernel(3, 1.0)),
        "blur-per-sample": lambda: Blur(torch.rand((n, 3, 3), generator=g) / 9),
        "downsample": lambda: Downsample(2),
        "bicubic": lambda: Bicubic(2),
    }[name]()


@pytest.mark.parametrize("name", ["blur", "blur-per-sample", "downsample", "bicubic"])
def test_blur_and_super_resolution_run_an_em_lap(name):
    # the E-step restricts the observation to each batch (two here: 4 and 2) and moves it
    from emdm.prior import UNetConfig

    n, shape = 6, (1, 8, 8)
    g = torch.Generator().manual_seed(0)
    A = _blur_or_resize(name, n)
    x = torch.randn((n, *shape), generator=g)
    Ax = A(x)
    obs = Observation(A, Ax + 0.1 * torch.randn(Ax.shape, generator=g), 0.1**2)
    net = UNetConfig(channels=1, hid_channels=(4, 8), hid_blocks=(1, 1), attention=(),
                     emb_features=8, dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    cfg = EMConfig(iterations=1, train_steps=2, batch_size=4, steps=2, sample_batch=4,
                   keep_range=0)  # fmt: skip
    seen = []
    out = run_em(net.build(), obs, torch.randn((n, *shape), generator=g), cfg, SCHEDULE,
                 callback=lambda k, x, m: seen.append(m))  # fmt: skip
    assert out.shape == (n, *shape) and torch.isfinite(out).all()
    assert len(seen) == 1 and seen[0]["kept"] == n


def test_bad_config():
    with pytest.raises(ValueError, match="sampler must be one of"):
        EMConfig(sampler="euler")
    with pytest.raises(ValueError, match="covariance must be one of"):
        EMConfig(covariance="hessian")
    with pytest.raises(ValueError, match="train_steps"):
        EMConfig(train_steps=0)
    with pytest.raises(ValueError, match="solver must be one of"):
        EMConfig(solver="lu")
    with pytest.raises(ValueError, match="dot must be one of"):
        EMConfig(dot="global")


def test_dense_solver_matches_cg_on_scalar_systems():
    # with 1-D observations and a Gaussian prior (PSD Jacobian), one CG iteration is the exact
    # solve: the dense solver gives the same samples and neither guard fires
    from emdm import DPLR, GaussianDenoiser
    from emdm.em import e_step

    obs, _ = toy()
    prior = GaussianDenoiser(torch.zeros(2), DPLR(torch.tensor([1.0, 0.5])))
    runs = {}
    for solver in ("cg", "dense"):
        cfg = EMConfig(**{**CFG.__dict__, "cg_iterations": 1, "solver": solver})
        g = torch.Generator().manual_seed(0)
        runs[solver] = e_step(prior, obs, cfg, SCHEDULE, mean=torch.zeros(2), generator=g)
    assert runs["cg"][1] == runs["dense"][1] == 0
    torch.testing.assert_close(runs["cg"][0], runs["dense"][0], rtol=1e-4, atol=1e-4)


def test_batch_dot_shares_one_cg_step_size_per_e_step_batch():
    # 1-D observations: one per-sample CG step is the exact solve; a batch-global step size
    # (the paper's jax cg on the batch array) is exact only for a batch of one
    from emdm import DPLR, GaussianDenoiser
    from emdm.em import e_step

    obs, _ = toy()
    prior = GaussianDenoiser(torch.zeros(2), DPLR(torch.tensor([1.0, 0.5])))

    def run(dot, sample_batch):
        cfg = EMConfig(**{**CFG.__dict__, "cg_iterations": 1, "dot": dot,
                          "sample_batch": sample_batch, "seeding": "stream"})  # fmt: skip
        g = torch.Generator().manual_seed(0)
        return e_step(prior, obs, cfg, SCHEDULE, mean=torch.zeros(2), generator=g)[0]

    torch.testing.assert_close(run("batch", 1), run("sample", 1), rtol=1e-4, atol=1e-4)
    assert (run("batch", 96) - run("sample", 96)).abs().max() > 1e-2


def test_augment_flips_and_shifts_with_reflection():
    from emdm.em import augment

    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    g = torch.Generator().manual_seed(0)
    assert augment(x, False, 0, g) is x
    out = augment(x, False, 2, torch.Generator().manual_seed(1))
    d = torch.randint(-2, 3, (2, 2), generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for b in range(2):
        i, j = 2 - int(d[b, 0]), 2 - int(d[b, 1])  # out[h, w] = x[h - dh, w - dw], reflected
        torch.testing.assert_close(out[b], padded[b, :, i : i + 5, j : j + 6])
    flips = augment(x[:1].expand(4000, 3, 5, 6), True, 0, g)
    flipped = (flips[:, 0, 0, 0] == x[0, 0, 0, -1]).float()
    assert abs(flipped.mean().item() - 0.5) < 4 * 0.5 / 4000**0.5
    assert torch.equal(flips[flipped.bool()][0], x[0].flip(-1))
    with pytest.raises(ValueError, match="images"):
        augment(torch.zeros(3, 4), True, 0, g)
    torch.testing.assert_close(
        augment(x[:, 0], True, 2, torch.Generator().manual_seed(4)),
        augment(x[:, :1], True, 2, torch.Generator().manual_seed(4))[:, 0],
    )


def _reference_m_step(denoiser, samples, cfg, optimizer, generator, ema):
    """The M-step as written before the multi-tensor updates: clip, Adam and EMA one tensor at
    a time (torch's for-loop Adam), every other draw as m_step makes it."""
    from emdm.em import _learning_rate, augment
    from emdm.loss import beta33, denoising_loss

    for step in range(cfg.train_steps):
        index = torch.randint(len(samples), (cfg.batch_size,), generator=generator)
        x = augment(samples[index], cfg.flip, cfg.shift, generator)
        t = beta33(cfg.batch_size, generator, dtype=x.dtype)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        loss = denoising_loss(denoiser, x, SCHEDULE.sigma_ve(t), z)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), cfg.clip, foreach=False)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(cfg, step)
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), denoiser.parameters(), strict=True):
                p_ema.lerp_(p, 1 - cfg.ema)


def test_multi_tensor_m_step_equals_the_one_tensor_loop_to_the_bit():
    import copy

    from emdm.em import m_step, optimizer_for

    cfg = EMConfig(train_steps=12, batch_size=32, ema=0.9, clip=0.05)  # a clip that acts
    samples = torch.randn((96, 2), generator=torch.Generator().manual_seed(1))
    ours, theirs = model(), model()
    ema_ours = copy.deepcopy(ours).requires_grad_(False)
    ema_theirs = copy.deepcopy(theirs).requires_grad_(False)
    m_step(ours, samples, cfg, SCHEDULE, optimizer_for(ours, cfg),
           torch.Generator().manual_seed(0), ema=ema_ours)  # fmt: skip
    loop = torch.optim.Adam(theirs.parameters(), lr=cfg.lr, foreach=False)
    _reference_m_step(theirs, samples, cfg, loop, torch.Generator().manual_seed(0), ema_theirs)
    for a, b in zip([*ours.parameters(), *ema_ours.parameters()],
                    [*theirs.parameters(), *ema_theirs.parameters()], strict=True):  # fmt: skip
        assert torch.equal(a, b)
    assert not torch.equal(next(ours.parameters()), next(model().parameters()))  # it trained


@pytest.mark.slow
def test_compiled_m_step_gives_the_eager_losses():
    """torch.compile of the loss and its backward: the same training to float rounding (about
    a minute of compilation on 2 CPU cores)."""
    from emdm.em import m_step, optimizer_for

    results = []
    for compile in (False, True):
        cfg = EMConfig(train_steps=20, batch_size=64, compile=compile)
        denoiser = model()
        samples = torch.randn((256, 2), generator=torch.Generator().manual_seed(1))
        loss = m_step(denoiser, samples, cfg, SCHEDULE, optimizer_for(denoiser, cfg),
                      torch.Generator().manual_seed(0))  # fmt: skip
        results.append((loss, torch.cat([p.flatten() for p in denoiser.parameters()])))
    (eager, eager_p), (compiled, compiled_p) = results
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert torch.allclose(compiled_p, eager_p, atol=1e-5)


def test_a_run_whose_checkpoints_do_not_fit_stops_before_any_work(tmp_path, monkeypatch):
    import shutil

    obs, q0 = toy()
    run_em(model(), obs, q0, CFG, SCHEDULE, directory=tmp_path / "full")
    files = {f.name: f.stat().st_size for f in (tmp_path / "full").glob("*.pt")}
    peak = sum(files.values()) + files["last.pt"]  # the new last.pt beside the old
    usage = shutil.disk_usage(tmp_path)

    def free(n):
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=n))

    free(peak - 1)
    seen = []
    with pytest.raises(
        ValueError,
        match=r"checkpoints \(last.pt of .* kB.*2 lap snapshot\(s\) of .* kB\): about .* of disk",
    ):
        run_em(model(), obs, q0, CFG, SCHEDULE, directory=tmp_path / "cut",
               callback=lambda *a: seen.append(a))  # fmt: skip
    assert not seen and not (tmp_path / "cut" / "last.pt").exists()
    sizes = checkpoint_bytes(model(), q0, CFG.ema > 0)
    for name, size in (("last.pt", sizes["last.pt"]), ("prior_1.pt", sizes["prior_<k>.pt"])):
        assert files[name] <= size <= files[name] + 32_000  # 1 kB for each of 8-38 tensors
    free(2 * peak)  # the estimate is no wild overstatement
    run_em(model(), obs, q0, CFG, SCHEDULE, directory=tmp_path / "ok")
