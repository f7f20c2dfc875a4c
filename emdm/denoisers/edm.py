r"""EDM-preconditioned denoiser around a network (protocols §1.3).

.. math:: d_\theta(x_t, \sigma) = c_\text{skip}(\sigma) \, x_t + c_\text{out}(\sigma) \,
    F_\theta\big(c_\text{in}(\sigma) \, x_t, e(c_\text{noise}(\sigma))\big)

with :math:`\sigma_\text{data} = 1`, so :math:`c_\text{skip} = 1 / (\sigma^2 + 1)`,
:math:`c_\text{out} = \sigma / \sqrt{\sigma^2 + 1}`, :math:`c_\text{in} = 1 / \sqrt{\sigma^2 + 1}`
and :math:`c_\text{noise} = \ln \sigma`; :math:`e` is a sinusoidal embedding.

References:
    | Elucidating the Design Space of Diffusion-Based Generative Models (Karras et al., 2022)
    | https://arxiv.org/abs/2206.00364
"""

__all__ = ["EDMDenoiser"]

import torch
from torch import Tensor, nn

from ..nn.embedding import SinusoidalEmbedding
from .base import broadcast_sigma, per_sample


class EDMDenoiser(nn.Module):
    r"""Creates an EDM-preconditioned denoiser.

    Arguments:
        network: A module :math:`F(x, e)` with `x` of shape :math:`(B, *)` and `e` of shape
            :math:`(B, E)`, returning a tensor of the shape of `x`.
        emb_features: The number of embedding features :math:`E`.
    """

    def __init__(self, network: nn.Module, emb_features: int = 64):
        super().__init__()
        self.network = network
        self.embedding = SinusoidalEmbedding(emb_features)

    def forward(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        r"""
        Arguments:
            x_t: The noisy inputs, with shape :math:`(B, *)`.
            sigma: The noise levels, with shape :math:`(B,)`, in :math:`(0, \infty)`: checked on
                the CPU (a `ValueError`), by a device-side assert on CUDA (no synchronization).

        Returns:
            The denoised outputs, with shape :math:`(B, *)`.
        """
        sigma = broadcast_sigma(sigma, x_t, check=False)
        _check_sigma(sigma)
        s = per_sample(sigma, x_t)  # (B, 1, ..., 1)
        c_skip = 1 / (s**2 + 1)
        c_out = s / (s**2 + 1).sqrt()
        c_in = 1 / (s**2 + 1).sqrt()
        emb = self.embedding(sigma.log())  # (B, E)
        return c_skip * x_t + c_out * self.network(c_in * x_t, emb)


def _check_sigma(sigma: Tensor) -> None:
    r"""Checks :math:`0 < \sigma < \infty` (the embedding takes :math:`\ln \sigma`) without a
    host synchronization: directly on the CPU, by a device-side assert on CUDA (which fails the
    next synchronizing call), and not at all elsewhere, nor inside `torch.compile` (the
    compiled M-step draws its noise levels from the schedule)."""
    if torch.compiler.is_compiling():  # a data-dependent branch would split the graph
        return
    valid = (sigma > 0) & torch.isfinite(sigma)
    if sigma.device.type == "cpu":
        if not bool(valid.all()):
            raise ValueError(
                f"EDMDenoiser needs noise levels 0 < sigma < inf (it embeds ln sigma), got "
                f"{sigma[~valid][:4].tolist()} among the {sigma.numel()} of the batch"
            )
    elif sigma.is_cuda:
        torch._assert_async(valid.all(), "EDMDenoiser needs noise levels 0 < sigma < inf")
