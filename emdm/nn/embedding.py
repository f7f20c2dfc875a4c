r"""Sinusoidal embedding of the log noise level.

.. math:: e(c) = \big[\sin(f_0 c), \dots, \sin(f_{E/2-1} c),
    \cos(f_0 c), \dots, \cos(f_{E/2-1} c)\big], \quad f_j = 10^{-4 j / (E/2 - 1)}

with :math:`c = \ln \sigma` (protocols §1.3).

References:
    | Attention Is All You Need (Vaswani et al., 2017)
    | https://arxiv.org/abs/1706.03762
"""

__all__ = ["SinusoidalEmbedding"]

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    r"""Creates a sinusoidal embedding.

    Arguments:
        features: The number of features :math:`E`, even and at least 4.
    """

    def __init__(self, features: int):
        super().__init__()
        if features < 4 or features % 2:
            raise ValueError(f"features must be an even integer >= 4, got {features}")
        self.features = features
        j = torch.arange(features // 2, dtype=torch.float64)
        self.register_buffer("freqs", (10.0 ** (-4 * j / (features // 2 - 1))).float())

    def forward(self, c: Tensor) -> Tensor:
        r"""
        Arguments:
            c: The inputs, with shape :math:`(*)`.

        Returns:
            The embeddings, with shape :math:`(*, E)`.
        """
        phase = c[..., None] * self.freqs.to(c.dtype)
        return torch.cat((phase.sin(), phase.cos()), dim=-1)
