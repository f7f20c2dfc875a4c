r"""Parameter initialization of the paper's code (inox 0.5, protocols §1.11).

Weights of linear and convolutional layers are drawn from
:math:`\mathcal{U}(-1/\sqrt{\text{fan}_\text{in}}, 1/\sqrt{\text{fan}_\text{in}})` with
:math:`\text{fan}_\text{in} = C_\text{in} \prod_i k_i`; biases start at zero.
"""

__all__ = ["fan_in_uniform_"]

import math

import torch
from torch import nn


@torch.no_grad()
def fan_in_uniform_(module: nn.Module) -> nn.Module:
    r"""Re-initializes every `nn.Linear` and `nn.Conv*d` of `module` in place; returns it."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            fan_in = m.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            m.weight.uniform_(-bound, bound)
            if m.bias is not None:
                m.bias.zero_()
    return module
