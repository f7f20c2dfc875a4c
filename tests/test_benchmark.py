import pytest
import torch

from emdm.benchmark import (
    METHODS,
    TASKS,
    component_masses,
    dense_matrix,
    method,
    shape_mixture,
    task,
    vjps_per_call,
)


def test_shape_mixture_and_tasks():
    g = torch.Generator().manual_seed(0)
    prior = shape_mixture(6, 16, 0.1, g)
    assert prior.means.shape == (6, 256)
    assert prior.means.min() >= -1 and prior.means.max() <= 1
    assert len({tuple(m.tolist()) for m in prior.means}) == 6  # distinct shapes
    again = shape_mixture(6, 16, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(prior.means, again.means)
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    for name, T in TASKS.items():
        if name == "motion":  # a 61 x 61 kernel: images of more than 30 pixels
            assert T.operator(1, 64, g)(torch.ones(1, 1, 64, 64)).shape == (1, 1, 64, 64)
            continue
        A = T.operator(3, 16, g)
        if hasattr(A, "mask"):
            A.mask = A.mask.double()
        M = dense_matrix(A if not hasattr(A, "mask") else type(A)(A.mask[:1]), 16)
        torch.testing.assert_close((M @ x[0].flatten()).reshape(A(x[:1]).shape[1:]), A(x[:1])[0])
        assert T.sigma_y > 0, name
    with pytest.raises(ValueError, match="task must be one of"):
        task("deblur")


def test_methods_and_masses():
    g = torch.Generator().manual_seed(0)
    prior = shape_mixture(4, 16, 0.1, g)
    A = TASKS["sr4"].operator(2, 16, g)
    y = torch.zeros(2, 1, 4, 4)
    for name in METHODS:
        out = method(name, prior, A, y, 0.01)(torch.randn(2, 1, 16, 16), torch.ones(2))
        assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all(), name
    assert [vjps_per_call(m) for m in METHODS] == [1, 1, 2, 0, 2, 4, 6]
    masses = component_masses(prior.means[[0, 0, 3]] + 0.01, prior.means)
    torch.testing.assert_close(masses, torch.tensor([2 / 3, 0, 0, 1 / 3], dtype=torch.float64))
    with pytest.raises(ValueError, match="method must be one of"):
        method("red-diff", prior, A, y, 0.01)


def test_observation_image_has_the_images_shape_with_missing_pixels_marked():
    from emdm.benchmark import observation_image

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, generator=g)
    for name in ("box", "random", "blur", "sr4"):
        A = TASKS[name].operator(2, 16, g)
        y = A(x)
        seen = observation_image(A, y)
        assert seen.shape == x.shape, name
        if name in ("box", "random"):  # the observed pixels, NaN where the mask is 0
            assert torch.equal(seen.isnan(), (A.mask == 0).expand_as(x)), name
            assert torch.equal(seen[~seen.isnan()], y[~seen.isnan()]), name
        elif name == "blur":
            assert torch.equal(seen, y)
        else:  # each low-resolution pixel as a 4 x 4 block
            assert torch.equal(seen[..., ::4, ::4], y) and torch.equal(seen[..., 3::4, 3::4], y)


def test_the_gallery_keeps_the_scored_samples_without_changing_the_table():
    from emdm.benchmark import Gallery, run_images, run_mixture
    from emdm.metrics import psnr, to_unit

    prior = shape_mixture(4, 16, 0.1, torch.Generator().manual_seed(0))
    truth = prior.sample(3, generator=torch.Generator().manual_seed(1)).reshape(3, 1, 16, 16)
    args = (("box", "sr4"), ("dps", "mmps1"), (2, 3))
    # one sample per image: each row's PSNR is that of the one sample the gallery keeps
    runs = {
        "mixture": lambda gallery: run_mixture(prior, truth, *args, samples=1, gallery=gallery,
                                               generator=torch.Generator().manual_seed(2)),
        "images": lambda gallery: run_images(prior, truth, *args, seed=2, gallery=gallery),
    }  # fmt: skip
    for run in runs.values():
        gallery = Gallery(images=2)
        rows = run(gallery)
        assert rows == run(None)  # keeping draws nothing more
        assert torch.equal(gallery.truth, truth[:2])
        assert set(gallery.samples) == {(t, m, n) for t in args[0] for m in args[1]
                                        for n in args[2]}  # fmt: skip
        scored = {(r["task"], r["method"], r["steps"], r["image"]): r["value"] for r in rows
                  if r["metric"] == "psnr"}  # fmt: skip
        for (t, m, n), x in gallery.samples.items():
            assert x.shape == (2, 1, 16, 16)
            for i in range(2):
                value = float(psnr(to_unit(x[i : i + 1]), to_unit(truth[i : i + 1])))
                assert value == pytest.approx(scored[t, m, n, i], rel=1e-6), (t, m, n, i)
        for t in args[0]:
            assert gallery.observations[t].shape == (2, 1, 16, 16)
        assert gallery.observations["box"].isnan().any()
        assert not gallery.observations["sr4"].isnan().any()
