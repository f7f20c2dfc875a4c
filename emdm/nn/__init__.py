r"""Neural networks :math:`F(x, e)` taking an input and a noise embedding."""

from .embedding import SinusoidalEmbedding
from .init import fan_in_uniform_
from .mlp import TimeMLP

__all__ = ["SinusoidalEmbedding", "TimeMLP", "fan_in_uniform_"]
