r"""Gaussian approximations of the likelihood :math:`p(y \mid x_t)` (Section 3, Figure 2).

With :math:`p(x \mid x_t) \approx \mathcal{N}(\mathbb{E}[x \mid x_t], V_t)` and
:math:`y = W x + \varepsilon`, :math:`\varepsilon \sim \mathcal{N}(0, \Sigma_y)`,

.. math:: q(y \mid x_t) = \mathcal{N}\big(y \mid W \mathbb{E}[x \mid x_t],
    \Sigma_y + W V_t W^T\big),

for the covariances compared by the paper (protocols §3.1):

* `"tweedie"`: the exact :math:`\mathbb{V}[x \mid x_t]` of a Gaussian mixture prior (Hessian
  form of Tweedie's formula), what MMPS approximates with :math:`\sigma_t^2 J`;
* `"cov_x"`: :math:`(\Sigma_x^{-1} + \sigma_t^{-2} I)^{-1}`, with :math:`\Sigma_x` the prior's
  covariance;
* `"sigma_t"`: :math:`\sigma_t^2 I`;
* `"zero"`: :math:`0`;

and, as a reference, `"exact"`: the exact :math:`p(y \mid x_t)` of the mixture (itself a
Gaussian mixture, :meth:`emdm.MixtureDenoiser.log_likelihood`). Resampling with it gives
:math:`p(x_t \mid y)` up to the resampling itself, so its score is the resampling noise floor.

Resampling prior draws :math:`x_t` with weights :math:`\propto q(y \mid x_t)` gives samples of
the approximate posterior :math:`q(x_t \mid y) \propto p(x_t) \, q(y \mid x_t)`.

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024) https://arxiv.org/abs/2405.13712
"""

__all__ = ["EXACT", "LIKELIHOODS", "log_likelihood", "resample"]

import math

import torch
from torch import Tensor

from .denoisers import MixtureDenoiser

LIKELIHOODS = ("tweedie", "cov_x", "sigma_t", "zero")
EXACT = "exact"


def log_likelihood(
    prior: MixtureDenoiser,
    x_t: Tensor,
    sigma: float,
    W: Tensor,
    y: Tensor,
    cov_y: float,
    covariance: str,
    cov_x: Tensor | None = None,
    chunk: int = 2048,
) -> Tensor:
    r"""Returns :math:`\log q(y \mid x_t)`, with shape :math:`(B,)`.

    Arguments:
        prior: The Gaussian mixture prior.
        x_t: The noisy points, with shape :math:`(B, D)`.
        sigma: The noise level :math:`\sigma_t`.
        W: The observation matrix, with shape :math:`(M, D)`.
        y: The observation, with shape :math:`(M,)`.
        cov_y: The noise variance, :math:`\Sigma_y = \sigma_y^2 I`.
        covariance: One of `"tweedie"`, `"cov_x"`, `"sigma_t"`, `"zero"`, or `"exact"`.
        cov_x: The prior covariance :math:`\Sigma_x`, with shape :math:`(D, D)`, for `"cov_x"`.
        chunk: How many points to process at once: (chunk, K) intermediates that fit in cache
            are several times faster than larger ones.
    """
    if covariance not in (*LIKELIHOODS, EXACT):
        raise ValueError(f"covariance must be one of {(*LIKELIHOODS, EXACT)}, got {covariance!r}")
    if covariance == "cov_x" and cov_x is None:
        raise ValueError("covariance 'cov_x' needs the prior covariance cov_x")
    D, M = x_t.shape[1], W.shape[0]
    eye = torch.eye(D, dtype=x_t.dtype, device=x_t.device)
    if covariance == "cov_x":
        V_fixed = torch.linalg.inv(torch.linalg.inv(cov_x) + eye / sigma**2)
    elif covariance == "sigma_t":
        V_fixed = sigma**2 * eye
    else:
        V_fixed = 0 * eye
    out = []
    for x in x_t.split(chunk):
        s = torch.full((len(x),), sigma, dtype=x.dtype, device=x.device)
        if covariance == EXACT:
            out.append(prior.log_likelihood(x, s, W, y, cov_y).to(x.dtype))
            continue
        mean = prior(x, s)
        V = prior.covariance(x, s) if covariance == "tweedie" else V_fixed
        S = cov_y * torch.eye(M, dtype=x.dtype, device=x.device) + W @ V @ W.T  # (B, M, M)
        r = y - mean @ W.T  # (B, M)
        L = torch.linalg.cholesky(S)
        z = torch.linalg.solve_triangular(L.expand(len(x), M, M), r[..., None], upper=False)
        logdet = 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        out.append(-0.5 * (z[..., 0].square().sum(-1) + logdet + M * math.log(2 * math.pi)))
    return torch.cat(out)


def resample(x: Tensor, log_weights: Tensor, n: int, generator: torch.Generator | None = None):
    r"""Draws `n` points of `x` with replacement, with probabilities
    :math:`\propto \exp(\text{log\_weights})`."""
    p = torch.softmax(log_weights, dim=0)
    return x[torch.multinomial(p, n, replacement=True, generator=generator)]
