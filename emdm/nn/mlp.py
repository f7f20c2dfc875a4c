r"""Time-conditioned multi-layer perceptron of the manifold experiment (protocols §1.11).

.. math:: F(x, e) = W_L \, h_{L-1}, \quad
    h_i = \mathrm{LN}\big(\mathrm{SiLU}(W_i h_{i-1} + b_i)\big), \quad h_0 = [x, e]

The layer norms have no affine parameters.
"""

__all__ = ["TimeMLP"]

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .init import fan_in_uniform_


class TimeMLP(nn.Module):
    r"""Creates a time-conditioned MLP, :math:`(x, e) \mapsto F(x, e)`.

    Arguments:
        features: The number of input and output features :math:`D`.
        emb_features: The number of embedding features :math:`E`.
        hidden_features: The widths of the hidden layers.
    """

    def __init__(
        self,
        features: int,
        emb_features: int = 64,
        hidden_features: Sequence[int] = (256, 256, 256),
    ):
        super().__init__()
        layers = []
        width = features + emb_features
        for hidden in hidden_features:
            layers += [
                nn.Linear(width, hidden),
                nn.SiLU(),
                nn.LayerNorm(hidden, elementwise_affine=False),
            ]
            width = hidden
        layers.append(nn.Linear(width, features))
        self.net = fan_in_uniform_(nn.Sequential(*layers))
        self.features, self.emb_features = features, emb_features

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        r"""
        Arguments:
            x: The inputs, with shape :math:`(B, D)`.
            emb: The embeddings, with shape :math:`(B, E)`.

        Returns:
            The outputs, with shape :math:`(B, D)`.
        """
        return self.net(torch.cat((x, emb), dim=-1))
