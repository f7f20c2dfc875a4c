r"""Observations :math:`y = A x + \varepsilon`, :math:`\varepsilon \sim \mathcal{N}(0, \Sigma_y)`.

An :class:`Observation` holds the three things every consumer of observations needs together
(the posterior denoisers of :mod:`emdm.guidance`, the E-step, the Gaussian start): the operator
:math:`A`, the observations :math:`y` of shape :math:`(N, *)` and their noise covariance
:math:`\Sigma_y` as a :class:`emdm.covariance.Covariance`. It is checked once, at construction
(finite :math:`y`, a positive definite covariance that fits it, an operator whose per-sample
batch matches), and it is restricted to a batch of observations or moved to a device as one
object, so that no caller slices or moves its parts by hand.
"""

__all__ = ["Observation"]

from collections.abc import Callable, Iterator

from torch import Tensor

from .checks import check_finite
from .covariance import Covariance, as_covariance
from .dplr import DPLR
from .operators.base import LinearOperator, batch_index


class Observation:
    r"""Creates the observations :math:`y_i = A_i x_i + \varepsilon_i`.

    Arguments:
        A: The operator: a :class:`emdm.LinearOperator` (shared, or per sample with one
            :math:`A_i` per observation), or any callable on :math:`(N, *)` tensors (its
            adjoint then comes from autograd; it cannot be sliced or moved).
        y: The observations, with shape :math:`(N, *)`, :math:`N \geq 1`, finite.
        cov_y: :math:`\Sigma_y`: a positive float, a diagonal tensor (with the shape of `y`:
            per observation), a :class:`DPLR` or a :class:`Covariance`; see
            :func:`emdm.covariance.as_covariance`. Cast to `y`'s dtype and device.
    """

    def __init__(
        self, A: Callable[[Tensor], Tensor], y: Tensor, cov_y: "float | Tensor | DPLR | Covariance"
    ):
        if not callable(A):
            raise ValueError(f"A must be a callable linear operator, got {type(A).__name__}")
        if not isinstance(y, Tensor) or y.ndim < 1 or len(y) == 0:
            raise ValueError("y must be a tensor with shape (N, *) and N >= 1")
        check_finite(y, "y")  # once here: one host synchronization on CUDA
        batch = getattr(A, "batch_size", None)
        if batch is not None and batch != len(y):
            raise ValueError(
                f"A holds {batch} per-sample operators, but y has {len(y)} observations"
            )
        self.A, self.y, self.cov_y = A, y, as_covariance(cov_y, y)

    @classmethod
    def _trusted(cls, A, y: Tensor, cov_y: Covariance) -> "Observation":
        # a restriction or a move of a checked observation: nothing to check again
        self = cls.__new__(cls)
        self.A, self.y, self.cov_y = A, y, cov_y
        return self

    def __len__(self) -> int:
        return len(self.y)

    def __iter__(self) -> Iterator:
        r"""`A, y, cov_y = observation`."""
        return iter((self.A, self.y, self.cov_y))

    @property
    def dtype(self):
        return self.y.dtype

    @property
    def device(self):
        return self.y.device

    def __getitem__(self, index: slice | Tensor) -> "Observation":
        r"""The observations `index` (a slice or an index tensor), with their operators and
        covariances."""
        index = batch_index(index)
        return Observation._trusted(self._operator()[index], self.y[index], self.cov_y[index])

    def to(self, device=None, dtype=None) -> "Observation":
        r"""A copy on `device` in `dtype` (floating-point tensors only, as `nn.Module.to`)."""
        A = self.A
        if device is not None or dtype is not None:
            A = self._operator().to(device=device, dtype=dtype)
        y = self.y.to(device=device, dtype=dtype)
        return Observation._trusted(A, y, self.cov_y.to(device=device, dtype=y.dtype))

    def _operator(self) -> LinearOperator:
        if not isinstance(self.A, LinearOperator):
            raise ValueError(
                f"this observation's A is a {type(self.A).__name__}, not a LinearOperator: it "
                f"cannot be sliced or moved (wrap it in a LinearOperator subclass)"
            )
        return self.A

    def __repr__(self) -> str:
        return f"Observation(A={self.A!r}, y={tuple(self.y.shape)}, cov_y={self.cov_y!r})"
