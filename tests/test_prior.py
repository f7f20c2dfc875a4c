"""The image-prior pipeline end to end at toy size: lap 0, EM laps, evaluation, resume."""

import pytest
import torch

from emdm import VESchedule
from emdm.data import cifar_observations, color_shapes
from emdm.em import EMConfig
from emdm.errors import UserError
from emdm.observation import Observation
from emdm.operators import MaskOperator
from emdm.prior import GaussianStart, MLPConfig, UNetConfig, draw, learn_prior, load_prior

SCHEDULE = VESchedule(1e-3, 1e2)
NET = UNetConfig(hid_channels=(8, 16), hid_blocks=(1, 1), attention=(1,), heads=2,
                 emb_features=16, dropout=0.0)  # fmt: skip
CFG = EMConfig(iterations=2, train_steps=2, batch_size=16, steps=2, sample_batch=16, ema=0.5,
               keep_range=0, flip=True, shift=1, seeding="batch", mean_samples=24)  # fmt: skip
START = GaussianStart(rank=4, iterations=1, observations=24, steps=2, cg_iterations=2)


def problem(n=32):
    x = color_shapes(n, 8, torch.Generator().manual_seed(0))
    mask, y = cifar_observations(x, 50, torch.Generator().manual_seed(1))
    return Observation(MaskOperator(mask), y, 1e-6)


def model():
    torch.manual_seed(0)
    return NET.build()


class Stop(Exception):
    pass


def test_learn_prior_runs_evaluates_and_resumes(tmp_path):
    obs = problem()
    seen, evaluated = [], []

    def evaluate(k, prior, mean):
        evaluated.append(k)
        assert mean.shape == (3, 8, 8)
        return {"mean_norm": float(mean.norm())}

    full, mean = learn_prior(model(), obs, (3, 8, 8), CFG, SCHEDULE, START,
                             directory=tmp_path / "full", evaluate=evaluate,
                             callback=lambda k, x, m: seen.append((k, x.shape, set(m))),
                             net=NET)  # fmt: skip
    assert evaluated == [0, 1, 2] and [k for k, _, _ in seen] == [0, 1, 2]
    assert all(shape == (32, 3, 8, 8) for _, shape, _ in seen)
    assert {"loss", "kept", "guard", "mean_norm"} <= seen[-1][2]
    assert torch.isfinite(full).all() and (tmp_path / "full" / "q0.pt").exists()
    # the start mean moved to the mean of the samples (the paper's PPCA mean)
    torch.testing.assert_close(mean, full[:24].mean(0))

    def die(k, x, m):
        if k == 2:
            raise Stop

    with pytest.raises(Stop):
        learn_prior(model(), obs, (3, 8, 8), CFG, SCHEDULE, START, directory=tmp_path / "cut",
                    callback=die)  # fmt: skip
    resumed, _ = learn_prior(model(), obs, (3, 8, 8), CFG, SCHEDULE, START,
                             directory=tmp_path / "cut", resume=True)  # fmt: skip
    assert torch.equal(full, resumed)

    # the folder describes itself: the network's config, the last lap and every lap's prior
    last, last_mean = load_prior(tmp_path / "full")
    lap2, lap2_mean = load_prior(tmp_path / "full", lap=2)
    lap1, _ = load_prior(tmp_path / "full", lap=1)
    torch.testing.assert_close(last_mean, mean) and torch.testing.assert_close(lap2_mean, mean)
    for name, p in last.state_dict().items():
        assert torch.equal(p, lap2.state_dict()[name]), name
    assert any(not torch.equal(p, lap1.state_dict()[n]) for n, p in last.state_dict().items())
    with pytest.raises(UserError, match=r"model\.json is missing: pass net="):
        load_prior(tmp_path / "cut")  # made without net=
    load_prior(tmp_path / "cut", net=NET)
    with pytest.raises(FileNotFoundError, match=r"prior_7\.pt is absent"):
        load_prior(tmp_path / "full", lap=7)
    with pytest.raises(ValueError, match="holds a run already"):
        learn_prior(model(), obs, (3, 8, 8), CFG, SCHEDULE, START, directory=tmp_path / "cut")


def test_pixel_shuffled_unet_and_draw():
    net = UNetConfig(channels=4, hid_channels=(8, 16), hid_blocks=(1, 1), attention=(),
                     emb_features=16, dropout=0.0, pixel_shuffle=2).build()  # fmt: skip
    x = torch.randn(3, 8, 8)  # (B, H, W) images, unshuffled to (B, 4, 4, 4) inside
    assert net(x, torch.full((3,), 0.5)).shape == (3, 8, 8)
    samples = draw(net, torch.zeros(8, 8), 5, SCHEDULE, "ddim", 3, batch=2,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert samples.shape == (5, 8, 8) and torch.isfinite(samples).all()


def test_learn_prior_of_vectors_with_q0s_covariance_and_load_prior(tmp_path):
    # Figure 3 at toy size: the manifold seen through 2-D projections, a TimeMLP prior, the
    # paper's code's E-step (MMPS with q_0's fixed covariance: run_em refuses "cov_x" unless
    # learn_prior passes it q_0's)
    from emdm.data import RandomManifold, observe, random_projections
    from emdm.gaussian import gaussian_start
    from emdm.operators import DenseOperator

    g = torch.Generator().manual_seed(0)
    x = RandomManifold(5, generator=torch.Generator().manual_seed(0)).sample(64, generator=g)
    A = random_projections(64, 5, 2, g, dtype=torch.float32)
    obs = Observation(DenseOperator(A), observe(x.float(), A, 0.01, g), 0.01**2)
    net = MLPConfig(hidden_features=(16, 16), emb_features=8)
    cfg = EMConfig(iterations=2, train_steps=4, batch_size=16, steps=4, sample_batch=32,
                   covariance="cov_x", solver="dense", keep_range=0)  # fmt: skip
    start = GaussianStart(rank=5, iterations=2, observations=48, steps=4, cg_iterations=2)
    schedule = VESchedule(1e-3, 10.0)
    torch.manual_seed(0)
    trained = net.build()
    seen = []
    samples, mean = learn_prior(trained, obs, (5,), cfg, schedule, start, directory=tmp_path,
                                callback=lambda k, x, m: seen.append((k, x)), net=net)  # fmt: skip
    assert [k for k, _ in seen] == [0, 1, 2]
    assert samples.shape == (64, 5) and torch.isfinite(samples).all()
    # lap 0 is gaussian_start's, from the laps' seed: q_0 fitted on the first 48 only
    g0 = torch.Generator().manual_seed(cfg.seed)
    q0_mean, q0_cov, q0 = gaussian_start(obs, (5,), start, cfg, schedule, generator=g0)
    assert torch.equal(seen[0][1], q0) and torch.equal(mean, q0_mean)
    saved = torch.load(tmp_path / "q0.pt", weights_only=True)
    torch.testing.assert_close(saved["cov_D"], q0_cov.D, rtol=0, atol=0)

    prior, loaded_mean = load_prior(tmp_path)  # model.json names the MLP: nothing to pass
    assert isinstance(prior.network, type(trained.network))
    assert torch.equal(loaded_mean, mean)
    x_t, sigma = torch.randn((7, 5), generator=g), torch.rand(7, generator=g) + 0.1
    with torch.no_grad():
        assert torch.equal(prior(x_t, sigma), trained.eval()(x_t, sigma))
    lap1, _ = load_prior(tmp_path, lap=1)
    with torch.no_grad():
        assert not torch.equal(lap1(x_t, sigma), prior(x_t, sigma))


def test_learn_prior_checks_the_disk_before_the_gaussian_fit(tmp_path, monkeypatch):
    import shutil

    import emdm.prior

    def fit(*args, **kwargs):
        raise AssertionError("the Gaussian fit ran")

    monkeypatch.setattr(emdm.prior, "gaussian_start", fit)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=100_000))
    obs = problem()
    match = r"checkpoints \(q0\.pt of .*, last\.pt of .*, 2 lap snapshot\(s\) of .*has 100 kB free"
    with pytest.raises(UserError, match=match):
        learn_prior(model(), obs, (3, 8, 8), CFG, SCHEDULE, START, directory=tmp_path / "run")
    assert not (tmp_path / "run" / "q0.pt").exists()
