r"""Noise covariances :math:`\Sigma_y` of observations, as a small algebra.

A covariance acts on tensors shaped like the observations :math:`y`, :math:`(B, *)`, sample by
sample: :math:`(\Sigma v)_b = \Sigma_b v_b`. Like a :class:`emdm.LinearOperator` it is either
*shared* by every observation (`batch_size` is `None`) or *per observation*, one
:math:`\Sigma_b` for each of `batch_size` observations, in which case `cov[index]` restricts it
to a batch of them. Three forms cover the paper and its benchmark:

* :class:`Isotropic`: :math:`\Sigma = s I` (:math:`s = \sigma_y^2`), shared;
* :class:`Diagonal`: :math:`\Sigma_b = \mathrm{diag}(d_b)` with :math:`d` broadcastable to
  :math:`y`, shared or per observation;
* :class:`LowRank`: a :class:`emdm.DPLR` :math:`\mathrm{diag}(D) + U V` on the flattened
  event of :math:`y`, shared or per observation.

Each supports `cov @ v` (:math:`\Sigma v`), `cov.solve(v)` (:math:`\Sigma^{-1} v`), `cov[index]`,
`cov.to(...)` and `cov.smallest_eigenvalue()`, and checks at construction that it is finite and
positive definite (a DPLR: a positive diagonal). :func:`as_covariance` turns the forms users
write (a float, a tensor, a DPLR) into one of these, deciding once whether a tensor is per
observation: it is when its leading axis is :math:`y`'s batch.
"""

__all__ = ["Covariance", "Diagonal", "Isotropic", "LowRank", "as_covariance"]

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from .dplr import DPLR
from .operators.base import batch_index


class Covariance(ABC):
    r"""A positive definite :math:`\Sigma`, applied sample by sample to :math:`(B, *)` tensors.

    A subclass implements :meth:`__matmul__`, :meth:`solve`, :meth:`to`,
    :meth:`smallest_eigenvalue` and, if per observation, :attr:`batch_size` and
    :meth:`__getitem__`; :meth:`check` says whether it fits observations `y`.
    """

    @abstractmethod
    def __matmul__(self, v: Tensor) -> Tensor:
        r"""Returns :math:`\Sigma v`, with the shape of `v`."""

    @abstractmethod
    def solve(self, v: Tensor) -> Tensor:
        r"""Returns :math:`\Sigma^{-1} v`, with the shape of `v`."""

    @abstractmethod
    def to(self, *args, **kwargs) -> "Covariance":
        r"""A copy with its tensors moved, as `Tensor.to`."""

    @abstractmethod
    def smallest_eigenvalue(self) -> Tensor:
        r"""The smallest eigenvalue, per observation :math:`(B,)` or shared :math:`()`."""

    @property
    def batch_size(self) -> int | None:
        r"""The number of observations with their own :math:`\Sigma_b`; `None`: shared."""
        return None

    def __getitem__(self, index: slice | int | Tensor) -> "Covariance":
        r"""The covariance of the observations `index`; a shared covariance returns itself."""
        return self

    def check(self, y: Tensor) -> None:
        r"""Raises a `ValueError` unless this covariance applies to observations `y`."""
        if self.batch_size is not None and self.batch_size != len(y):
            raise ValueError(
                f"cov_y holds {self.batch_size} per-observation covariances, but y has "
                f"{len(y)} observations"
            )


class Isotropic(Covariance):
    r"""The isotropic covariance :math:`\Sigma = s I`, shared by every observation.

    Arguments:
        variance: :math:`s > 0`, finite: a float or a 0-d tensor.
    """

    def __init__(self, variance: float | Tensor):
        if not isinstance(variance, Tensor):  # a Python number: kept exact until cast
            variance = torch.tensor(float(variance), dtype=torch.float64)
        if variance.ndim != 0:
            raise ValueError(
                f"an isotropic variance is a scalar, got shape {tuple(variance.shape)}"
            )
        if not bool(torch.isfinite(variance) & (variance > 0)):
            raise ValueError(f"cov_y must be positive and finite, got {variance.item()}")
        self.variance = variance

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.variance.to(v) * v

    def solve(self, v: Tensor) -> Tensor:
        return v / self.variance.to(v)

    def to(self, *args, **kwargs) -> "Isotropic":
        return Isotropic(self.variance.to(*args, **kwargs))

    def smallest_eigenvalue(self) -> Tensor:
        return self.variance

    def __repr__(self) -> str:
        return f"Isotropic({self.variance.item():.4g})"


class Diagonal(Covariance):
    r"""A diagonal covariance :math:`\Sigma_b = \mathrm{diag}(d_b)`.

    Arguments:
        diag: The positive, finite variances: with the shape of the observations
            :math:`(B, *)` if `batched`, else broadcastable to one observation's or to a
            batch's shape (e.g. :math:`(*)` or :math:`(1, *)`).
        batched: Whether the leading axis of `diag` indexes the observations.
    """

    def __init__(self, diag: Tensor, batched: bool = False):
        if not isinstance(diag, Tensor) or (batched and diag.ndim < 1):
            raise ValueError("a diagonal covariance needs a tensor of variances")
        bad = ~(torch.isfinite(diag) & (diag > 0))
        if bool(bad.any()):
            raise ValueError(
                f"cov_y must be positive and finite: of its {diag.numel()} entries, "
                f"{int((diag <= 0).sum())} are <= 0 and {int(diag.isnan().sum())} NaN, "
                f"{int(diag.isinf().sum())} infinite"
            )
        self.diag, self.batched = diag, batched

    @property
    def batch_size(self) -> int | None:
        return len(self.diag) if self.batched else None

    def __getitem__(self, index) -> "Diagonal":
        if not self.batched:
            return self
        return Diagonal(self.diag[batch_index(index)], batched=True)

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.diag * v

    def solve(self, v: Tensor) -> Tensor:
        return v / self.diag

    def to(self, *args, **kwargs) -> "Diagonal":
        return Diagonal(self.diag.to(*args, **kwargs), self.batched)

    def smallest_eigenvalue(self) -> Tensor:
        return self.diag.flatten(1).amin(-1) if self.batched else self.diag.min()

    def check(self, y: Tensor) -> None:
        super().check(y)
        try:
            shape = torch.broadcast_shapes(self.diag.shape, y.shape)
        except RuntimeError:
            shape = None
        if shape != y.shape:
            raise ValueError(
                f"cov_y of shape {tuple(self.diag.shape)} (a diagonal) does not broadcast to y "
                f"of shape {tuple(y.shape)}"
            )

    def __repr__(self) -> str:
        kind = "per observation" if self.batched else "shared"
        return f"Diagonal(shape={tuple(self.diag.shape)}, {kind})"


class LowRank(Covariance):
    r"""A diagonal plus low-rank covariance :math:`\mathrm{diag}(D) + U V` on the flattened
    event of the observations (Woodbury solves, :class:`emdm.DPLR`).

    Arguments:
        matrix: The :class:`DPLR`, unbatched (shared) or with batch shape :math:`(B,)` (per
            observation), finite and with a positive diagonal :math:`D`.
    """

    def __init__(self, matrix: DPLR):
        if not isinstance(matrix, DPLR):
            raise ValueError(f"LowRank needs a DPLR, got {type(matrix).__name__}")
        if len(matrix.batch_shape) > 1:
            raise ValueError(
                f"cov_y has batch shape {tuple(matrix.batch_shape)}, expected () or (B,)"
            )
        factors = [t for t in (matrix.D, matrix.U, matrix.V) if t is not None]
        if not all(bool(torch.isfinite(t).all()) for t in factors):
            raise ValueError("cov_y is a DPLR with NaN or infinite entries in D, U or V")
        if not bool(torch.all(matrix.D > 0)):
            raise ValueError("cov_y must be positive definite: its diagonal D has entries <= 0")
        self.matrix = matrix

    @property
    def batch_size(self) -> int | None:
        shape = self.matrix.batch_shape
        return shape[0] if len(shape) else None

    def __getitem__(self, index) -> "LowRank":
        if self.batch_size is None:
            return self
        index, m = batch_index(index), self.matrix
        factors = [t.expand(*m.batch_shape, *t.shape[-2:])[index] for t in (m.U, m.V)
                   if t is not None]  # fmt: skip
        D = m.D.expand(*m.batch_shape, m.size)[index]
        return LowRank(DPLR(D, *factors))

    def __matmul__(self, v: Tensor) -> Tensor:
        return (self.matrix @ v.flatten(1)).reshape(v.shape)

    def solve(self, v: Tensor) -> Tensor:
        return self.matrix.solve(v.flatten(1)).reshape(v.shape)

    def to(self, *args, **kwargs) -> "LowRank":
        return LowRank(self.matrix.to(*args, **kwargs))

    def smallest_eigenvalue(self) -> Tensor:
        M = self.matrix.to(torch.float64).dense()
        return torch.linalg.eigvalsh((M + M.mT) / 2)[..., 0].to(self.matrix.dtype)

    def check(self, y: Tensor) -> None:
        super().check(y)
        event = math.prod(y.shape[1:])
        if self.matrix.size != event:
            raise ValueError(
                f"cov_y is a DPLR of size {self.matrix.size}, expected the {event} elements of "
                f"y's event shape {tuple(y.shape[1:])}"
            )

    def __repr__(self) -> str:
        kind = "shared" if self.batch_size is None else f"{self.batch_size} observations"
        return f"LowRank(size={self.matrix.size}, rank={self.matrix.rank}, {kind})"


def as_covariance(cov_y: "float | Tensor | DPLR | Covariance", y: Tensor) -> Covariance:
    r"""The :class:`Covariance` that `cov_y` denotes for observations `y` :math:`(B, *)`,
    checked against them and cast to their dtype and device.

    A positive float or 0-d tensor is :class:`Isotropic`; a tensor of `y`'s rank whose leading
    axis has `y`'s length :math:`N` (e.g. :math:`(N, *)` or :math:`(N, 1)`) is a
    per-observation :class:`Diagonal`, any other tensor a shared one (it must broadcast to
    `y`); a :class:`DPLR` is a :class:`LowRank`, per observation if batched.
    """
    if isinstance(cov_y, Covariance):
        out = cov_y
    elif isinstance(cov_y, DPLR):
        out = LowRank(cov_y)
    elif isinstance(cov_y, bool) or not isinstance(cov_y, int | float | Tensor):
        raise ValueError(
            f"cov_y must be a positive float, a diagonal tensor, a DPLR or a Covariance, got "
            f"{type(cov_y).__name__}"
        )
    elif isinstance(cov_y, int | float) or cov_y.ndim == 0:
        if isinstance(cov_y, int | float) and not (cov_y > 0 and math.isfinite(cov_y)):
            raise ValueError(
                f"cov_y must be a positive float (a variance σ_y²) or a covariance; as a "
                f"number, cov_y must be positive and finite, got {cov_y}"
            )
        out = Isotropic(torch.as_tensor(cov_y, dtype=y.dtype, device=y.device))
    else:
        # a leading axis of length N on a tensor of y's rank indexes the observations
        out = Diagonal(cov_y, batched=cov_y.ndim == y.ndim and len(cov_y) == len(y))
    out.check(y)
    return out.to(dtype=y.dtype, device=y.device)
