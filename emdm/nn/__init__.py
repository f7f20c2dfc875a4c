r"""Neural networks :math:`F(x, e)` taking an input and a noise embedding."""

from .embedding import SinusoidalEmbedding
from .init import fan_in_uniform_
from .mlp import TimeMLP
from .unet import PixelShuffleNet, UNet

__all__ = ["PixelShuffleNet", "SinusoidalEmbedding", "TimeMLP", "UNet", "fan_in_uniform_"]
