r"""The denoiser of an :math:`\varepsilon`-predicting network on a discrete VP schedule.

A network trained as in DDPM or guided-diffusion predicts the noise :math:`\varepsilon` of the
VP state :math:`x_n = \sqrt{\bar{\alpha}_n} x + \sqrt{1 - \bar{\alpha}_n} \varepsilon` at the
step :math:`n`. In VE coordinates, :math:`\tilde{x}_t = x_n / \sqrt{\bar{\alpha}_n} = x +
\tilde{\sigma}_t \varepsilon` with :math:`\tilde{\sigma}_t^2 = (1 - \bar{\alpha}_n) /
\bar{\alpha}_n`, so that

.. math:: \hat{x} = \tilde{x}_t - \tilde{\sigma}_t \,
    \varepsilon_\theta(\sqrt{\bar{\alpha}} \tilde{x}_t, n), \quad
    \bar{\alpha} = 1 / (1 + \tilde{\sigma}_t^2)

is :math:`\mathbb{E}[x \mid \tilde{x}_t]` when :math:`\varepsilon_\theta` is
:math:`\mathbb{E}[\varepsilon \mid x_n]`.

References:
    | Denoising Diffusion Probabilistic Models (Ho et al., 2020)
    | https://arxiv.org/abs/2006.11239
    | Diffusion Models Beat GANs on Image Synthesis (Dhariwal et al., 2021)
    | https://arxiv.org/abs/2105.05233
"""

__all__ = ["EpsilonDenoiser"]

from torch import Tensor, nn

from ..schedule import VPSchedule
from .base import broadcast_sigma, per_sample


class EpsilonDenoiser(nn.Module):
    r"""The denoiser of an :math:`\varepsilon`-predicting network trained on a discrete VP
    schedule (guided-diffusion, DDPM), in VE coordinates.

    .. math:: \hat{x} = \mathrm{clip}(\tilde{x}_t - \tilde{\sigma}_t \,
        \varepsilon_\theta(\sqrt{\bar{\alpha}} \tilde{x}_t, n), -1, 1), \quad
        \bar{\alpha} = 1 / (1 + \tilde{\sigma}_t^2)

    with :math:`n` the (continuous) index of :math:`\tilde{\sigma}_t` on the schedule.

    Arguments:
        network: :math:`(x_t, n) \mapsto \varepsilon`, with :math:`x_t` of shape
            :math:`(B, C, H, W)`; extra output channels (a learned variance) are dropped.
        schedule: The network's :class:`emdm.VPSchedule`.
        clip: Whether to clip :math:`\hat{x}` to :math:`[-1, 1]` (guided-diffusion's
            `clip_denoised`, the benchmark's setting).
    """

    def __init__(self, network: nn.Module, schedule: VPSchedule, clip: bool = True):
        super().__init__()
        if not isinstance(schedule, VPSchedule):
            raise ValueError(f"schedule must be a VPSchedule, got {type(schedule).__name__}")
        self.network, self.schedule, self.clip = network, schedule, clip

    def forward(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        sigma = broadcast_sigma(sigma, x_t)
        s = per_sample(sigma, x_t)
        n = self.schedule.timestep(sigma.detach()).to(x_t.dtype)
        eps = self.network(x_t / (1 + s**2).sqrt(), n)[:, : x_t.shape[1]]  # (B, C, H, W)
        x_hat = x_t - s * eps
        return x_hat.clamp(-1, 1) if self.clip else x_hat
