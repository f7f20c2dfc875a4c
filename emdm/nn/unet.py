r"""The paper's noise-conditional U-Net (protocols §1.11, inox 0.5 semantics).

A network :math:`F(x, e)` with :math:`x` of shape :math:`(B, C_\text{in}, H, W)` and a noise
embedding :math:`e` of shape :math:`(B, E)`. Every residual block is modulated by :math:`e`,

.. math:: (a, b, c) = W_2 \, \mathrm{SiLU}(W_1 e + b_1) + b_2, \qquad
    y = \frac{x + c \odot h\big((1 + a) \odot x + b\big)}{\sqrt{1 + c^2}}

where :math:`h` is either :math:`\mathrm{Conv} \circ \mathrm{Dropout} \circ \mathrm{SiLU} \circ
\mathrm{Conv} \circ \mathrm{LN}` (:class:`ResBlock`) or multi-head self-attention over the
pixels after :math:`\mathrm{LN}` (:class:`AttBlock`). :math:`\mathrm{LN}` normalizes each pixel
over its channels, without affine parameters. With widths :math:`C_0, \dots, C_{L-1}`:

* descent, level :math:`i`: :math:`\mathrm{Conv}(C_\text{in} \to C_0)` at :math:`i = 0`, else
  :math:`\mathrm{LN} \circ \mathrm{Conv}_{\downarrow 2}(C_{i-1} \to C_i)`; then :math:`B_i` blocks;
  the output is the skip :math:`s_i`;
* ascent, :math:`i = L-1, \dots, 0`: at :math:`i < L-1`, the input (the upsampled output of level
  :math:`i+1`, with :math:`C_{i+1}` channels) is concatenated with :math:`s_i` and mixed by
  :math:`\mathrm{Conv}(C_{i+1} + C_i \to C_i)`; at :math:`i = L-1` the input is :math:`s_{L-1}`;
  then :math:`B_i` blocks; then :math:`\mathrm{Up}_{\times 2} \circ \mathrm{LN}` (channels kept)
  at :math:`i > 0`, or a per-pixel :math:`\mathrm{Linear}(C_0 \to C_\text{out})` at :math:`i = 0`.

This is the reading of the paper's code (`priors/nn.py` of francois-rozet/diffusion-priors),
and it gives the paper's parameter counts: 57,560,451 for :meth:`UNet.cifar` (≈57.6M) and
77,648,912 for :meth:`UNet.mri` (≈77.6M).

References:
    | Learning Diffusion Priors from Observations by Expectation Maximization
    | (Rozet et al., 2024)
    | https://arxiv.org/abs/2405.13712

    | U-Net: Convolutional Networks for Biomedical Image Segmentation
    | (Ronneberger et al., 2015)
    | https://arxiv.org/abs/1505.04597
"""

__all__ = ["AttBlock", "Modulation", "PixelShuffleNet", "ResBlock", "UNet", "channel_norm"]

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .init import fan_in_uniform_


def channel_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    r"""Normalizes each pixel over its channels, without affine parameters.

    .. math:: y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}

    with :math:`\mu` and :math:`\sigma^2` the (biased) mean and variance over the channel axis.

    Arguments:
        x: The input, with shape :math:`(B, C, *)`.
        eps: The numerical stability term :math:`\epsilon`.

    Returns:
        The normalized input, with shape :math:`(B, C, *)`.
    """
    var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps)


class ChannelNorm(nn.Module):
    r"""Module form of :func:`channel_norm`."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return channel_norm(x, self.eps)


class Modulation(nn.Module):
    r"""Creates an adaptive modulation, :math:`e \mapsto (a, b, c)`.

    .. math:: (a, b, c) = W_2 \, \mathrm{SiLU}(W_1 e + b_1) + b_2

    :math:`W_2` is scaled by 0.1 after initialization, as in the paper's code (which scales the
    last layer only), so that every block starts close to an identity map.

    Arguments:
        channels: The number of modulated channels :math:`C`.
        emb_features: The number of embedding features :math:`E`.
    """

    def __init__(self, channels: int, emb_features: int):
        super().__init__()
        self.mlp = fan_in_uniform_(
            nn.Sequential(
                nn.Linear(emb_features, emb_features),
                nn.SiLU(),
                nn.Linear(emb_features, 3 * channels),
            )
        )
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.1)

    def forward(self, emb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""
        Arguments:
            emb: The embedding :math:`e`, with shape :math:`(B, E)`.

        Returns:
            The modulations :math:`(a, b, c)`, each with shape :math:`(B, C, 1, 1)`.
        """
        abc = self.mlp(emb)[..., None, None]  # (B, 3C, 1, 1)
        return abc.chunk(3, dim=1)


class _ModulatedBlock(nn.Module, ABC):
    r"""A residual block modulated by the embedding :math:`e`,

    .. math:: y = \frac{x + c \odot h\big((1 + a) \odot x + b\big)}{\sqrt{1 + c^2}}

    with :math:`(a, b, c)` the :class:`Modulation` of :math:`e` and :math:`h` the subclass's
    :meth:`branch`.

    Arguments:
        channels: The number of channels :math:`C`.
        emb_features: The number of embedding features :math:`E`.
    """

    #: Whether to recompute the block in the backward pass rather than store its activations.
    checkpoint: bool = False

    def __init__(self, channels: int, emb_features: int):
        super().__init__()
        self.modulation = Modulation(channels, emb_features)

    @abstractmethod
    def branch(self, h: Tensor) -> Tensor:
        r"""The residual branch :math:`h`, with input and output of shape :math:`(B, C, H, W)`."""

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        a, b, c = self.modulation(emb)
        h = self.branch((1 + a) * x + b)
        return (x + c * h) * torch.rsqrt(1 + c**2)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        r"""
        Arguments:
            x: The input, with shape :math:`(B, C, H, W)`.
            emb: The embedding, with shape :math:`(B, E)`.

        Returns:
            The output, with shape :math:`(B, C, H, W)`.
        """
        if self.checkpoint and torch.is_grad_enabled():
            return _checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)


class ResBlock(_ModulatedBlock):
    r"""Creates a modulated residual convolution block.

    .. math:: y = \frac{x + c \odot \mathrm{Conv}(\mathrm{Dropout}(\mathrm{SiLU}(\mathrm{Conv}(
        \mathrm{LN}((1 + a) \odot x + b)))))}{\sqrt{1 + c^2}}

    Arguments:
        channels: The number of channels :math:`C`.
        emb_features: The number of embedding features :math:`E`.
        dropout: The dropout rate between the two convolutions.
    """

    def __init__(self, channels: int, emb_features: int, dropout: float = 0.0):
        super().__init__(channels, emb_features)
        self.block = fan_in_uniform_(
            nn.Sequential(
                ChannelNorm(),
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.SiLU(),
                nn.Dropout(dropout),
                nn.Conv2d(channels, channels, 3, padding=1),
            )
        )

    def branch(self, h: Tensor) -> Tensor:
        return self.block(h)


class AttBlock(_ModulatedBlock):
    r"""Creates a modulated residual multi-head self-attention block over the pixels.

    .. math:: y = \frac{x + c \odot \mathrm{MHA}(\mathrm{LN}((1 + a) \odot x + b))}
        {\sqrt{1 + c^2}}

    where :math:`\mathrm{MHA}` has biased query, key and value projections, an unbiased output
    projection, head dimension :math:`d = C / N` and scores
    :math:`\mathrm{softmax}(Q K^\top / \sqrt{d})`, without dropout.

    Arguments:
        channels: The number of channels :math:`C`.
        emb_features: The number of embedding features :math:`E`.
        heads: The number of heads :math:`N`, a divisor of :math:`C`.
        checkpoint: Whether to recompute the block in the backward pass rather than store its
            activations (the attention matrix is the largest), as the paper's code does.
    """

    def __init__(self, channels: int, emb_features: int, heads: int = 1, checkpoint: bool = False):
        if heads < 1 or channels % heads:
            raise ValueError(
                f"heads ({heads}) must be a positive divisor of channels ({channels})"
            )
        super().__init__(channels, emb_features)
        self.heads, self.checkpoint = heads, checkpoint
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels, bias=False)
        for layer in (self.q, self.k, self.v, self.out):
            fan_in_uniform_(layer)

    def branch(self, h: Tensor) -> Tensor:
        _, C, H, W = h.shape
        h = channel_norm(h).flatten(2).transpose(1, 2)  # (B, HW, C)
        # head-major channel split, (N d), as inox's rearrange '... L (N H) -> ... N L H'
        q, k, v = (
            f(h).unflatten(-1, (self.heads, C // self.heads)).transpose(1, 2)  # (B, N, HW, d)
            for f in (self.q, self.k, self.v)
        )
        h = F.scaled_dot_product_attention(q, k, v)  # (B, N, HW, d)
        h = self.out(h.transpose(1, 2).flatten(2))  # (B, HW, C)
        return h.transpose(1, 2).unflatten(2, (H, W))  # (B, C, H, W)


class UNet(nn.Module):
    r"""Creates the paper's noise-conditional U-Net, :math:`(x, e) \mapsto F(x, e)`.

    See the module docstring for the architecture. The spatial sizes must be divisible by
    :math:`2^{L-1}`.

    Arguments:
        in_channels: The number of input channels :math:`C_\text{in}`.
        out_channels: The number of output channels :math:`C_\text{out}`.
        hid_channels: The widths :math:`C_0, \dots, C_{L-1}` of the levels.
        hid_blocks: The numbers :math:`B_0, \dots, B_{L-1}` of residual blocks per level, on
            each of the descent and the ascent.
        heads: The number of attention heads of the levels with attention, `{level: heads}`;
            each residual block of those levels is followed by an attention block.
        emb_features: The number of embedding features :math:`E`.
        dropout: The dropout rate of the residual blocks.
        checkpoint: Whether the attention blocks are recomputed in the backward pass.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hid_channels: Sequence[int] = (64, 128, 256),
        hid_blocks: Sequence[int] = (3, 3, 3),
        heads: Mapping[int, int] | None = None,
        emb_features: int = 256,
        dropout: float = 0.0,
        checkpoint: bool = False,
    ):
        super().__init__()
        heads = dict(heads or {})
        L = len(hid_channels)
        if L == 0 or len(hid_blocks) != L:
            raise ValueError(
                f"hid_channels {tuple(hid_channels)} and hid_blocks {tuple(hid_blocks)} must be "
                "non-empty and of the same length"
            )
        if not set(heads) <= set(range(L)):
            raise ValueError(f"heads levels {sorted(heads)} must lie in range({L})")

        def blocks(i: int) -> nn.ModuleList:
            layers = []
            for _ in range(hid_blocks[i]):
                layers.append(ResBlock(hid_channels[i], emb_features, dropout))
                if i in heads:
                    layers.append(
                        AttBlock(hid_channels[i], emb_features, heads[i], checkpoint=checkpoint)
                    )
            return nn.ModuleList(layers)

        # entry[i]: descent level i's first layer; mix[i]: ascent level i's concat convolution
        # (none at L-1); exit[i]: ascent level i's last layer
        self.entry, self.down, self.up = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.mix, self.exit = nn.ModuleList(), nn.ModuleList()
        for i, C in enumerate(hid_channels):
            if i == 0:
                self.entry.append(nn.Conv2d(in_channels, C, 3, padding=1))
                # a per-pixel Linear(C_0 -> C_out), as a 1×1 convolution (fan_in = C_0)
                self.exit.append(nn.Conv2d(C, out_channels, 1))
            else:
                self.entry.append(
                    nn.Sequential(
                        nn.Conv2d(hid_channels[i - 1], C, 3, stride=2, padding=1), ChannelNorm()
                    )
                )
                self.exit.append(
                    nn.Sequential(ChannelNorm(), nn.Upsample(scale_factor=2, mode="nearest"))
                )
            if i < L - 1:
                self.mix.append(nn.Conv2d(C + hid_channels[i + 1], C, 3, padding=1))
            else:
                self.mix.append(nn.Identity())
            self.down.append(blocks(i))
            self.up.append(blocks(i))
        for layers in (self.entry, self.mix, self.exit):
            fan_in_uniform_(layers)  # the blocks initialize themselves (Modulation's 0.1)

        self.hid_channels = tuple(hid_channels)
        self.emb_features = emb_features

    @classmethod
    def cifar(cls, **kwargs) -> "UNet":
        r"""The CIFAR-10 U-Net of the paper (≈57.6M parameters), on :math:`(B, 3, 32, 32)`."""
        config = dict(
            in_channels=3,
            out_channels=3,
            hid_channels=(128, 256, 384),
            hid_blocks=(5, 5, 5),
            heads={1: 4},
            emb_features=256,
            dropout=0.1,
        )
        return cls(**(config | kwargs))

    @classmethod
    def mri(cls, **kwargs) -> "UNet":
        r"""The fastMRI U-Net of the paper (≈77.6M parameters), on :math:`(B, 16, 80, 80)`.

        The paper applies it to :math:`320 \times 320` images pixel-unshuffled by 4, that is
        `PixelShuffleNet(UNet.mri(), factor=4)`.
        """
        config = dict(
            in_channels=16,
            out_channels=16,
            hid_channels=(128, 256, 384, 512),
            hid_blocks=(3, 3, 3, 3),
            heads={3: 4},
            emb_features=256,
            dropout=0.1,
        )
        return cls(**(config | kwargs))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        r"""
        Arguments:
            x: The input, with shape :math:`(B, C_\text{in}, H, W)`, where :math:`H` and
                :math:`W` are divisible by :math:`2^{L-1}`.
            emb: The embedding, with shape :math:`(B, E)`.

        Returns:
            The output, with shape :math:`(B, C_\text{out}, H, W)`.
        """
        factor = 2 ** (len(self.hid_channels) - 1)
        if x.ndim != 4 or x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"expected an input of shape (B, C, H, W) with H and W divisible by {factor}, "
                f"got {tuple(x.shape)}"
            )

        skips = []
        for entry, layers in zip(self.entry, self.down, strict=True):
            x = entry(x)
            for block in layers:
                x = block(x, emb)
            skips.append(x)

        x = skips.pop()
        for i in reversed(range(len(self.hid_channels))):
            if i < len(self.hid_channels) - 1:
                x = self.mix[i](torch.cat((x, skips.pop()), dim=1))  # (B, C_{i+1} + C_i, ...)
            for block in self.up[i]:
                x = block(x, emb)
            x = self.exit[i](x)

        return x


class PixelShuffleNet(nn.Module):
    r"""Wraps a network to work on pixel-unshuffled images.

    .. math:: G(x, e) = \mathrm{shuffle}_r\big(F(\mathrm{unshuffle}_r(x), e)\big)

    where :math:`\mathrm{unshuffle}_r` maps :math:`(B, C, H, W)` to
    :math:`(B, C r^2, H / r, W / r)`, as :func:`torch.nn.functional.pixel_unshuffle` (for
    :math:`C = 1`, the channel order :math:`(r_h, r_w)` is that of the paper's code). The paper's
    MRI network is `PixelShuffleNet(UNet.mri(), factor=4)`, :math:`320^2 \to 16 \times 80^2`.

    Inputs of shape :math:`(B, H, W)`, as the MRI operators use, are read as single-channel
    images and the output is returned without the channel axis.

    Arguments:
        network: A network :math:`F(x, e)` on :math:`(B, C r^2, H / r, W / r)` inputs.
        factor: The shuffle factor :math:`r`.
    """

    def __init__(self, network: nn.Module, factor: int = 4):
        super().__init__()
        self.network, self.factor = network, factor

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        r"""
        Arguments:
            x: The input, with shape :math:`(B, C, H, W)` or :math:`(B, H, W)`, with :math:`H`
                and :math:`W` divisible by :math:`r`.
            emb: The embedding, with shape :math:`(B, E)`.

        Returns:
            The output, with the shape of `x`.
        """
        if x.ndim not in (3, 4) or x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(
                f"expected an input of shape (B, C, H, W) or (B, H, W) with H and W divisible "
                f"by {self.factor}, got {tuple(x.shape)}"
            )
        squeeze = x.ndim == 3
        if squeeze:
            x = x[:, None]  # (B, 1, H, W)
        y = F.pixel_unshuffle(x, self.factor)  # (B, C r², H / r, W / r)
        y = F.pixel_shuffle(self.network(y, emb), self.factor)  # (B, C, H, W)
        return y[:, 0] if squeeze else y
