r"""Image quality metrics with the conventions of the paper's Table 4 (images in :math:`[0, 1]`,
one value per image), and the one map of emdm's pixel ranges onto :math:`[0, 1]`.

* PSNR: :math:`10 \log_{10}(1 / \mathrm{MSE})`;
* SSIM: the mean over the image of
  :math:`\frac{(2 \mu_x \mu_y + C_1)(2 \sigma_{xy} + C_2)}{(\mu_x^2 + \mu_y^2 + C_1)
  (\sigma_x^2 + \sigma_y^2 + C_2)}` with local statistics from an 11 x 11 Gaussian window of
  standard deviation 1.5 (valid positions only), :math:`C_1 = (0.01)^2`,
  :math:`C_2 = (0.03)^2`, averaged over channels (piqa's defaults).

emdm's images have one of two pixel ranges, named in :data:`PIXEL_RANGES`:

* `"paper"`, :math:`[-2, 2]`: the data the priors are learned from, the paper's convention
  (:math:`x = 4 u - 2` for intensities :math:`u \in [0, 1]`): CIFAR-10
  (:func:`emdm.data.load_cifar10`), the colour shapes (:func:`emdm.data.color_shapes`), the
  fastMRI slices and the MRI phantoms (:func:`emdm.data.load_fastmri`,
  :func:`emdm.data.phantoms`);
* `"benchmark"`, :math:`[-1, 1]`: the benchmark's images (:func:`emdm.data.load_images`) and
  the pretrained VP denoisers they go with (:math:`x = 2 u - 1`).

:func:`to_unit` maps either onto :math:`[0, 1]`, :math:`u = \mathrm{clip}((x - a) / (b - a))`
for the range :math:`[a, b]`: the input of PSNR, SSIM and LPIPS, and what figures show.

References:
    | Image Quality Assessment: From Error Visibility to Structural Similarity
    | (Wang et al., 2004) https://doi.org/10.1109/TIP.2003.819861
"""

__all__ = ["PIXEL_RANGES", "psnr", "ssim", "to_unit"]

import torch
import torch.nn.functional as F
from torch import Tensor

from ..operators.blur import gaussian_kernel

#: The pixel ranges :math:`[a, b]` of emdm's images, by name (see the module's docstring).
PIXEL_RANGES: dict[str, tuple[float, float]] = {"paper": (-2.0, 2.0), "benchmark": (-1.0, 1.0)}


def to_unit(x: Tensor, pixels: str = "benchmark") -> Tensor:
    r"""Maps images in the range named `pixels` (a key of :data:`PIXEL_RANGES`) to
    :math:`[0, 1]`: :math:`\mathrm{clip}((x - a) / (b - a), 0, 1)`, e.g. :math:`(x + 1) / 2`
    for `"benchmark"` and :math:`(x + 2) / 4` for `"paper"`.

    Raises:
        ValueError: `pixels` names no range.
    """
    if pixels not in PIXEL_RANGES:
        raise ValueError(f"unknown pixel range {pixels!r}; choose one of {sorted(PIXEL_RANGES)}")
    low, high = PIXEL_RANGES[pixels]
    return ((x - low) / (high - low)).clamp(0, 1)


def _check(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"expected two image batches (B, C, H, W) of one shape, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )


def psnr(x: Tensor, y: Tensor) -> Tensor:
    r"""Returns the PSNR of each image pair in :math:`[0, 1]`, with shape :math:`(B,)`."""
    _check(x, y)
    mse = (x - y).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


def ssim(x: Tensor, y: Tensor, window: int = 11, std: float = 1.5) -> Tensor:
    r"""Returns the SSIM of each image pair in :math:`[0, 1]`, with shape :math:`(B,)`."""
    _check(x, y)
    if min(x.shape[-2:]) < window:
        raise ValueError(f"SSIM's {window}x{window} window needs images at least that large")
    C = x.shape[1]
    g = gaussian_kernel(window, std, x.dtype).to(x.device).expand(C, 1, window, window)

    def blur(u):
        return F.conv2d(u, g, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return s.flatten(1).mean(1)
