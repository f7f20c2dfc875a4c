r"""Evaluation of a run against references: sample sets scored against reference statistics
computed once, and the calibration of posterior samples.

**Fidelity against a reference set** (:class:`FidelityReference`). For features :math:`f(x)`
of the samples and of the reference images (torch-fidelity's extractor, see
:mod:`emdm.metrics.fidelity`), with Gaussian fits :math:`(\mu_1, \Sigma_1)` and
:math:`(\mu_2, \Sigma_2)`,

.. math:: \mathrm{FID} = \|\mu_1 - \mu_2\|^2
    + \mathrm{tr}\big(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2}\big),

the Inception Score of the samples, and the same Fréchet distance between Gaussian fits to the
pixels themselves (`fd_pixels`: the images' second-order statistics). The reference's
statistics, :math:`(\mu_2, \Sigma_2)` of its features and of its pixels, are computed once and
kept in a file, so that each evaluation extracts the samples' features only, and a resumed run
none of the reference's. FID and IS are torch-fidelity's own formulas on its own statistics
(the mean in float32, the covariance in float64): the numbers of
:func:`emdm.metrics.fidelity_metrics`, bit for bit.

**Calibration of posterior samples** (:func:`posterior_calibration`). For the truth :math:`x`
of an observation :math:`y` and two independent posterior samples :math:`\hat{x}_1,
\hat{x}_2 \sim q(x \mid y)`, on the :math:`n` entries :math:`h` that the observation hides,

.. math:: \mathrm{rmse}^2 = \frac{1}{n} \sum_{i \in h} (\hat{x}_{1,i} - x_i)^2, \quad
    \mathrm{spread}^2 = \frac{1}{n} \sum_{i \in h} (\hat{x}_{1,i} - \hat{x}_{2,i})^2 .

If :math:`x \sim p(x \mid y)`, :math:`\mathbb{E}[\mathrm{rmse}^2] = (\mathrm{tr}\, V_p +
\mathrm{tr}\, V_q + \|m_q - m_p\|^2) / n` and :math:`\mathbb{E}[\mathrm{spread}^2] = 2\,
\mathrm{tr}\, V_q / n` (:math:`m, V` the posteriors' means and covariances on :math:`h`): for
exact posterior samples (:math:`q = p`) both are :math:`2\, \mathrm{tr}\, \mathbb{V}[x_h \mid
y] / n`; spread < rmse means samples drawn too narrow (or off-centre), spread > rmse too wide.
"""

__all__ = ["FidelityReference", "posterior_calibration"]

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .fid import frechet_distance, gaussian_statistics
from .fidelity import FidelityFeatures, inception_score


class FidelityReference:
    r"""A reference image set, against which sample sets are scored (FID, IS, `fd_pixels`),
    its statistics computed once (on first use) or read from `cache_dir`.

    Arguments:
        images: The reference images `(N, C, H, W)`, uint8 or float in :math:`[-2, 2)` (e.g.
            :func:`emdm.data.load_cifar10`'s train split).
        feature_extractor, inception_weights, batch_size, device: The extractor of FID's and
            IS's features (:class:`emdm.metrics.fidelity.FidelityFeatures`).
        isc_splits: The number of parts the IS is computed on (the paper: 10).
        cache_dir: A folder for the statistics, `reference_<extractor>.npz`, keyed by a hash of
            the images and the extractor (another reference recomputes and replaces them);
            `None` keeps them in memory only.
    """

    def __init__(
        self,
        images: Tensor,
        *,
        feature_extractor: str | None = None,
        inception_weights: str | os.PathLike | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        isc_splits: int = 10,
        cache_dir: str | os.PathLike | None = None,
    ):
        self.images, self.isc_splits = images, isc_splits
        self.features = FidelityFeatures(
            feature_extractor,
            inception_weights=inception_weights,
            batch_size=batch_size,
            device=device,
        )
        self.cache = None if cache_dir is None else Path(cache_dir) / (
            f"reference_{self.features.name}.npz"
        )  # fmt: skip
        self._statistics: dict[str, Tensor] | None = None

    def _key(self) -> str:
        import torch_fidelity

        pixels = self.images.detach().cpu().contiguous().numpy()
        digest = hashlib.sha256(pixels.reshape(-1).view(np.uint8))  # a view: no copy
        digest.update(str(tuple(self.images.shape)).encode())
        for part in (self.features.name, self.features.layers["fid"], torch_fidelity.__version__):
            digest.update(b"\0" + part.encode())
        return digest.hexdigest()

    @property
    def statistics(self) -> dict[str, Tensor]:
        r"""The reference's 'fid_mu' `(D,)` (float32) and 'fid_sigma' `(D, D)` (float64) of its
        features, and 'pixels_mu' and 'pixels_cov' (float64) of its pixels."""
        if self._statistics is None:
            key = self._key()
            if self.cache is not None and self.cache.exists():
                with np.load(self.cache, allow_pickle=False) as saved:
                    if str(saved["key"]) == key:
                        self._statistics = {k: torch.from_numpy(saved[k]) for k in _STATISTICS}
            if self._statistics is None:
                self._statistics = self._compute()
                if self.cache is not None:
                    _save_npz(self.cache, {"key": np.array(key)} | {
                        k: v.numpy() for k, v in self._statistics.items()
                    })  # fmt: skip
        return self._statistics

    def _compute(self) -> dict[str, Tensor]:
        from torch_fidelity.metric_fid import fid_features_to_statistics

        fid = fid_features_to_statistics(self.features(self.images, "reference")["fid"])
        mu, cov = gaussian_statistics(self.images.detach().cpu().flatten(1))
        return {
            "fid_mu": torch.from_numpy(fid["mu"]),
            "fid_sigma": torch.from_numpy(fid["sigma"]),
            "pixels_mu": mu,
            "pixels_cov": cov,
        }

    def scores(self, samples: Tensor, isc: bool = True) -> dict[str, float]:
        r"""Scores `samples` `(N, C, H, W)` (the reference's formats) against the reference:
        'fid', 'isc' (the IS's mean over the splits; if `isc`) and 'fd_pixels'."""
        from torch_fidelity.metric_fid import (
            KEY_METRIC_FID,
            fid_features_to_statistics,
            fid_statistics_to_metric,
        )

        features = self.features(samples, "samples", self.isc_splits if isc else 2)
        ref = {k: v.numpy() for k, v in self.statistics.items()}
        stats = fid_features_to_statistics(features["fid"])
        reference = {"mu": ref["fid_mu"], "sigma": ref["fid_sigma"]}
        out = {"fid": float(fid_statistics_to_metric(stats, reference, False)[KEY_METRIC_FID])}
        if isc:
            out["isc"] = inception_score(features["isc"], self.isc_splits)[0]
        pixels = gaussian_statistics(samples.detach().cpu().flatten(1))
        fd = frechet_distance(*pixels, self.statistics["pixels_mu"], self.statistics["pixels_cov"])
        return out | {"fd_pixels": float(fd)}


_STATISTICS = ("fid_mu", "fid_sigma", "pixels_mu", "pixels_cov")


def _save_npz(path: Path, arrays: dict[str, Any]) -> None:
    # written beside `path` and renamed over it: a reader sees the former file or the new one
    # (as emdm.runs.write_atomic, which this layer does not import)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def posterior_calibration(
    x: Tensor, first: Tensor, second: Tensor, hidden: Tensor
) -> dict[str, float]:
    r"""Returns the 'rmse' of the posterior samples `first` against the truth `x` and the
    'spread' between `first` and the independent `second`, over the entries where `hidden` is
    true, pooled over the batch (see the module's docstring: equal in expectation for exact
    posterior samples).

    Arguments:
        x: The truth, with shape `(N, *)`.
        first, second: Two independent posterior samples per observation, with the shape of
            `x`.
        hidden: A boolean mask with the shape of `x`: the entries the observations hide
            (none: both are NaN).
    """
    if not (x.shape == first.shape == second.shape == hidden.shape):
        raise ValueError(
            f"expected x, first, second and hidden of one shape, got {tuple(x.shape)}, "
            f"{tuple(first.shape)}, {tuple(second.shape)} and {tuple(hidden.shape)}"
        )
    if hidden.dtype != torch.bool:
        raise ValueError(f"hidden must be a boolean mask, got dtype {hidden.dtype}")
    return {
        name: (first - other)[hidden].square().mean().sqrt().item()
        for name, other in (("rmse", x), ("spread", second))
    }
