r"""The Fréchet distance between Gaussians fitted to two feature sets (FID's formula).

.. math:: d^2 = \|\mu_1 - \mu_2\|^2 + \mathrm{tr}\big(\Sigma_1 + \Sigma_2
    - 2 (\Sigma_1 \Sigma_2)^{1/2}\big), \quad
    \mathrm{tr} (\Sigma_1 \Sigma_2)^{1/2} = \sum_i \sqrt{\lambda_i\big(
    \Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}\big)}

computed through the symmetric matrix :math:`\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}` (which
has the eigenvalues of :math:`\Sigma_1 \Sigma_2`), in float64, with negative round-off
eigenvalues clipped to zero.

References:
    | GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium
    | (Heusel et al., 2017) https://arxiv.org/abs/1706.08500
"""

__all__ = ["frechet_distance", "gaussian_statistics"]

import torch
from torch import Tensor


def gaussian_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    r"""The mean :math:`(D,)` and unbiased covariance :math:`(D, D)` of features :math:`(N, D)`,
    in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(
            f"features must have shape (N, D) with N >= 2, got {tuple(features.shape)}"
        )
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> Tensor:
    r"""Returns :math:`d^2` between :math:`\mathcal{N}(\mu_1, \Sigma_1)` and
    :math:`\mathcal{N}(\mu_2, \Sigma_2)`."""
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    if cov1.shape != cov2.shape or mu1.shape != mu2.shape or cov1.shape != mu1.shape * 2:
        raise ValueError(
            f"expected means (D,) and covariances (D, D) of one D, got {tuple(mu1.shape)}, "
            f"{tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}"
        )
    lam, Q = torch.linalg.eigh((cov1 + cov1.T) / 2)
    root = (Q * lam.clamp_min(0).sqrt()) @ Q.T  # Σ1^{1/2}
    inner = torch.linalg.eigvalsh(root @ cov2 @ root)
    trace_sqrt = inner.clamp_min(0).sqrt().sum()
    return (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
