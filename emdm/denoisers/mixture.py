r"""Isotropic Gaussian mixtures: exact denoiser, exact posterior covariance, exact posterior.

For a prior :math:`p(x) = \sum_k w_k \, \mathcal{N}(x \mid \mu_k, s_k^2 I)` in
:math:`\mathbb{R}^D` and :math:`x_t = x + \sigma z`, let :math:`v_k = s_k^2 + \sigma^2`. Then

.. math::
    p(k \mid x_t) & \propto w_k \, \mathcal{N}(x_t \mid \mu_k, v_k I) \\
    m_k & = \mathbb{E}[x \mid x_t, k] = (\sigma^2 \mu_k + s_k^2 x_t) / v_k \\
    \mathbb{E}[x \mid x_t] & = \sum_k p(k \mid x_t) \, m_k \\
    \mathbb{V}[x \mid x_t] & = \sum_k p(k \mid x_t) \big( c_k I
        + (m_k - \mathbb{E}[x \mid x_t]) (m_k - \mathbb{E}[x \mid x_t])^T \big),
        \quad c_k = s_k^2 \sigma^2 / v_k

and :math:`\mathbb{V}[x \mid x_t] = \sigma^2 I + \sigma^4 \nabla^2 \log p_\sigma(x_t)`, the
Hessian form of Tweedie's formula. Responsibilities are computed in log-space, in float64
around the mixture's mean, with every sum over components a matrix product (no
:math:`(B, K, D)` intermediate), so they stay accurate in float32 far from the components.

Under a linear-Gaussian observation :math:`y = A x + \varepsilon`,
:math:`\varepsilon \sim \mathcal{N}(0, \Sigma_y)`, the posterior is again a mixture,

.. math::
    p(x \mid y) & = \sum_k \pi_k \, \mathcal{N}(x \mid m_k^y, C_k), \quad
    C_k = (s_k^{-2} I + A^T \Sigma_y^{-1} A)^{-1}, \quad
    m_k^y = C_k (s_k^{-2} \mu_k + A^T \Sigma_y^{-1} y) \\
    \pi_k & \propto w_k \, \mathcal{N}(y \mid A \mu_k, s_k^2 A A^T + \Sigma_y)

and the exact likelihood of a noisy point is a mixture too,

.. math:: p(y \mid x_t) = \sum_k p(k \mid x_t) \,
    \mathcal{N}(y \mid A m_k, \Sigma_y + c_k A A^T).

References:
    | Pattern Recognition and Machine Learning, §2.3.3 (Bishop, 2006)
"""

__all__ = ["GaussianMixture", "MixtureDenoiser"]

import math

import torch
from torch import Tensor, nn

from .base import broadcast_sigma


class MixtureDenoiser(nn.Module):
    r"""Creates the exact denoiser of an isotropic Gaussian mixture.

    Arguments:
        means: The component means :math:`\mu_k`, with shape :math:`(K, D)`.
        std: The component standard deviations :math:`s_k`, a scalar or shape :math:`(K,)`.
        weights: The component weights :math:`w_k`, with shape :math:`(K,)`, normalized
            internally. Defaults to uniform.
    """

    def __init__(self, means: Tensor, std: Tensor | float, weights: Tensor | None = None):
        super().__init__()
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        K = means.shape[0]
        std = torch.as_tensor(std, dtype=means.dtype, device=means.device)
        std = std.expand(K) if std.ndim == 0 else std
        if std.shape != (K,):
            raise ValueError(f"std must be a scalar or have shape ({K},), got {tuple(std.shape)}")
        if not bool(torch.all(std >= 0)):
            raise ValueError("std must be non-negative")
        if weights is None:
            weights = torch.ones(K, dtype=means.dtype, device=means.device)
        if weights.shape != (K,) or not bool(torch.all(weights >= 0)):
            raise ValueError(f"weights must be non-negative with shape ({K},)")
        self.register_buffer("means", means)
        self.register_buffer("std", std.clone())
        self.register_buffer("log_weights", (weights / weights.sum()).log())
        center = means.double().mean(dim=0)
        self.register_buffer("center", center)
        self.register_buffer("centered", means.double() - center)

    @property
    def features(self) -> int:
        return self.means.shape[1]

    def _flat(self, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        sigma = broadcast_sigma(sigma, x_t, check=False)
        x = x_t.reshape(x_t.shape[0], -1)
        if x.shape[1] != self.features:
            raise ValueError(
                f"x_t must have {self.features} features per sample, got {x.shape[1]}"
            )
        return x, sigma

    def _posterior_terms(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""Returns :math:`\log p(k \mid x_t)` and :math:`v_k`, each with shape :math:`(B, K)`,
        and :math:`x_t - \bar{\mu}`, with shape :math:`(B, D)`, all in float64.

        Distances are expanded, :math:`\|x\|^2 - 2 x^T \mu_k + \|\mu_k\|^2`, so that every
        product over :math:`K` is a matrix product rather than a :math:`(B, K, D)` tensor; they
        are computed in float64 around the mixture's mean :math:`\bar{\mu}`, which keeps the
        expansion accurate (absolute error :math:`\sim 10^{-16} \|x - \bar{\mu}\|^2`).
        """
        x = x.double() - self.center
        means = self.centered
        var = self.std.double() ** 2 + sigma.double()[:, None] ** 2  # (B, K)
        d2 = x.square().sum(-1, keepdim=True) - 2 * x @ means.T + means.square().sum(-1)
        log_r = self.log_weights.double() - d2.clamp_min(0) / (2 * var)
        return log_r - 0.5 * self.features * var.log(), var, x

    def log_prob(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        r"""Returns :math:`\log p_\sigma(x_t)`, with shape :math:`(B,)`."""
        x, sigma = self._flat(x_t, sigma)
        log_r, _, _ = self._posterior_terms(x, sigma)
        log_p = torch.logsumexp(log_r, dim=-1) - 0.5 * self.features * math.log(2 * math.pi)
        return log_p.to(x.dtype)

    def responsibilities(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        r"""Returns :math:`p(k \mid x_t)`, with shape :math:`(B, K)`."""
        x, sigma = self._flat(x_t, sigma)
        log_r, _, _ = self._posterior_terms(x, sigma)
        return torch.softmax(log_r, dim=-1).to(x.dtype)

    def _weights(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Returns :math:`r_k = p(k \mid x_t)`, :math:`a_k = \sigma^2 / v_k` and
        :math:`b_k = s_k^2 / v_k` (each :math:`(B, K)`), with
        :math:`m_k - \bar{\mu} = a_k \tilde{\mu}_k + b_k \tilde{x}_t`, and the centred
        :math:`\tilde{x}_t`."""
        log_r, var, xc = self._posterior_terms(x, sigma)
        r = torch.softmax(log_r, dim=-1)
        a = sigma.double()[:, None] ** 2 / var
        b = self.std.double() ** 2 / var
        return r, a, b, xc

    def forward(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        r"""Returns :math:`\mathbb{E}[x \mid x_t]`, with the shape of `x_t`."""
        x, sigma = self._flat(x_t, sigma)
        r, a, b, xc = self._weights(x, sigma)
        mean = (r * a) @ self.centered + (r * b).sum(-1, keepdim=True) * xc  # (B, D)
        return (mean + self.center).to(x.dtype).reshape(x_t.shape)

    def covariance(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        r"""Returns :math:`\mathbb{V}[x \mid x_t]`, dense with shape :math:`(B, D, D)`."""
        x, sigma = self._flat(x_t, sigma)
        r, a, b, xc = self._weights(x, sigma)
        B, D = xc.shape
        mu = self.centered
        mean = (r * a) @ mu + (r * b).sum(-1, keepdim=True) * xc
        # sum_k r_k m_k m_kᵀ by matrix products: a² μμᵀ + ab (μ xᵀ + x μᵀ) + b² x xᵀ
        outer = ((r * a * a) @ (mu[:, :, None] * mu[:, None, :]).reshape(-1, D * D)).reshape(
            B, D, D
        )
        cross = ((r * a * b) @ mu)[:, :, None] * xc[:, None, :]
        second = outer + cross + cross.mT
        second = second + (r * b * b).sum(-1)[:, None, None] * (xc[:, :, None] * xc[:, None, :])
        cov = second - mean[:, :, None] * mean[:, None, :]
        c = (r * a * self.std.double() ** 2).sum(-1)  # sum_k r_k c_k
        cov = cov + c[:, None, None] * torch.eye(D, dtype=cov.dtype, device=cov.device)
        return cov.to(x.dtype)

    def log_likelihood(
        self, x_t: Tensor, sigma: Tensor, A: Tensor, y: Tensor, cov_y: Tensor | float
    ) -> Tensor:
        r"""Returns the exact :math:`\log p(y \mid x_t)`, with shape :math:`(B,)`, in float64.

        Arguments:
            x_t: The noisy points, with shape :math:`(B, D)`.
            sigma: The noise levels, with shape :math:`(B,)` or :math:`()`.
            A: The observation matrix, with shape :math:`(M, D)`.
            y: The observation, with shape :math:`(M,)` (shared) or :math:`(B, M)`.
            cov_y: The noise covariance: a scalar, or a dense :math:`(M, M)` matrix.
        """
        x, sigma = self._flat(x_t, sigma)
        r, a, b, xc = self._weights(x, sigma)
        A = A.double()
        M = A.shape[0]
        cov_y = torch.as_tensor(cov_y, dtype=torch.float64, device=x.device)
        if cov_y.ndim == 0:
            cov_y = cov_y * torch.eye(M, dtype=torch.float64, device=x.device)
        # S_k = Σ_y + c_k A Aᵀ = L (I + c_k Q Λ Qᵀ) Lᵀ with Σ_y = L Lᵀ and
        # L⁻¹ A Aᵀ L⁻ᵀ = Q Λ Qᵀ: one M×M decomposition, then everything is elementwise
        L = torch.linalg.cholesky(cov_y)
        G = torch.linalg.solve_triangular(L, A, upper=False)  # L⁻¹ A, (M, D)
        lam, Q = torch.linalg.eigh(G @ G.T)
        P = Q.T @ G  # (M, D): whitened and rotated observation rows
        # P m_k = P μ̄ + a_k P μ̃_k + b_k P x̃_t, without a (B, K, D) intermediate
        Pm = a[..., None] * (self.centered @ P.T) + b[..., None] * (xc @ P.T)[:, None]
        y_w = Q.T @ torch.linalg.solve_triangular(L, y.double().reshape(-1, M).T, upper=False)
        z = y_w.T[:, None] - P @ self.center - Pm  # (B, K, M), Qᵀ L⁻¹ (y - A m_k)
        c = a * self.std.double() ** 2  # (B, K), c_k = s_k² σ² / v_k
        s = 1 + c[..., None] * lam.clamp_min(0)  # (B, K, M)
        log_n = (
            -0.5 * (z.square() / s).sum(-1)
            - 0.5 * s.log().sum(-1)
            - L.diagonal().log().sum()
            - 0.5 * M * math.log(2 * math.pi)
        )
        return torch.logsumexp(r.log() + log_n, dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""Draws `n` prior samples, with shape :math:`(n, D)`."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(
            (n, self.features),
            generator=generator,
            dtype=self.means.dtype,
            device=self.means.device,
        )
        return self.means[k] + self.std[k, None] * z

    def posterior(self, A: Tensor, y: Tensor, cov_y: Tensor | float) -> "GaussianMixture":
        r"""Returns the exact posterior :math:`p(x \mid y)` under :math:`y = A x + \varepsilon`.

        Arguments:
            A: The matrices, with shape :math:`(B, M, D)` or :math:`(M, D)`.
            y: The observations, with shape :math:`(B, M)`.
            cov_y: The noise covariance :math:`\Sigma_y`: a scalar, a diagonal with shape
                :math:`(M,)` or :math:`(B, M)`, or a dense matrix with shape :math:`(B, M, M)`.
        """
        B, M = y.shape
        A = A.to(y.dtype).expand(B, M, self.features)
        cov_y = torch.as_tensor(cov_y, dtype=y.dtype, device=y.device)
        if cov_y.ndim <= 2:
            cov_y = torch.diag_embed(cov_y.expand(B, M))
        s2 = (self.std.to(y.dtype) ** 2)[None, :, None, None]  # (1, K, 1, 1)
        means = self.means.to(y.dtype)
        eye = torch.eye(self.features, dtype=y.dtype, device=y.device)
        P = A.mT @ torch.linalg.solve(cov_y, A)  # (B, D, D), A^T Σ_y^{-1} A
        covs = torch.linalg.inv(eye / s2 + P[:, None])  # (B, K, D, D)
        Aty = (A.mT @ torch.linalg.solve(cov_y, y[..., None])).squeeze(-1)  # (B, D)
        rhs = means[None] / s2[..., 0] + Aty[:, None, :]  # (B, K, D)
        post_means = (covs @ rhs[..., None]).squeeze(-1)
        # evidence of each component: N(y | A μ_k, s_k² A Aᵀ + Σ_y)
        y_cov = s2 * (A @ A.mT)[:, None] + cov_y[:, None]  # (B, K, M, M)
        y_mean = torch.einsum("bmd,kd->bkm", A, means)
        L = torch.linalg.cholesky(y_cov)
        z = torch.linalg.solve_triangular(L, (y[:, None] - y_mean)[..., None], upper=False)
        log_ev = (
            -0.5 * z.squeeze(-1).pow(2).sum(-1)
            - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            - 0.5 * M * math.log(2 * math.pi)
        )
        log_weights = torch.log_softmax(self.log_weights.to(y.dtype) + log_ev, dim=-1)
        return GaussianMixture(log_weights, post_means, covs)


class GaussianMixture:
    r"""A batch of Gaussian mixtures with full covariances,
    :math:`\sum_k \pi_{bk} \, \mathcal{N}(m_{bk}, C_{bk})`.

    Arguments:
        log_weights: The log-weights :math:`\log \pi`, with shape :math:`(B, K)`.
        means: The means :math:`m`, with shape :math:`(B, K, D)`.
        covs: The covariances :math:`C`, with shape :math:`(B, K, D, D)`.
    """

    def __init__(self, log_weights: Tensor, means: Tensor, covs: Tensor):
        self.log_weights, self.means, self.covs = log_weights, means, covs

    def mean(self) -> Tensor:
        r"""Returns the mixture means, with shape :math:`(B, D)`."""
        return torch.einsum("bk,bkd->bd", self.log_weights.exp(), self.means)

    def covariance(self) -> Tensor:
        r"""Returns the mixture covariances, with shape :math:`(B, D, D)`."""
        w = self.log_weights.exp()
        dm = self.means - self.mean()[:, None, :]
        return torch.einsum("bk,bkij->bij", w, self.covs) + torch.einsum(
            "bk,bki,bkj->bij", w, dm, dm
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""Draws `n` samples per mixture, with shape :math:`(B, n, D)`."""
        B, _, D = self.means.shape
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        L = torch.linalg.cholesky(self.covs)  # (B, K, D, D)
        z = torch.randn((B, n, D, 1), generator=generator, dtype=self.means.dtype)
        z = z.to(self.means.device)
        idx = torch.arange(B, device=k.device)[:, None]
        return self.means[idx, k] + (L[idx, k] @ z).squeeze(-1)
