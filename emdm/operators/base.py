r"""Linear operators with explicit adjoints.

A linear operator :math:`A` maps signals :math:`x` with shape :math:`(B, *)` to
measurements :math:`y = A x` with shape :math:`(B, *)`, sample by sample:
:math:`(A x)_b = A_b x_b`. Its adjoint :math:`A^T` satisfies
:math:`\langle A x, y \rangle = \langle x, A^T y \rangle`.

An operator is either *per-sample*, one :math:`A_b` per sample of a batch of
:attr:`~LinearOperator.batch_size` :math:`B` (e.g. a mask per image), or *shared*, one
:math:`A_b = A` for every batch (`batch_size` is `None`). :class:`LinearOperator` states the
contract every operator of :mod:`emdm.operators` keeps:

* `A(x)` and `A.T(u)`, the adjoint as an operator, with `A.T.T` the operator itself;
* `A.out_shape(shape)` and `A.in_shape_of(shape)`, the shapes of :math:`A x` and
  :math:`A^T u`;
* `A[index]` (a slice or an index tensor over the batch), the operator of those samples
  (a shared operator returns itself), so that observations are processed in batches;
* `A.repeat(n)`, the operator of the batch repeated `n` times, in the order of
  `torch.Tensor.repeat` (:math:`A_0, \dots, A_{B-1}, A_0, \dots`), for `n` samples per
  observation `y.repeat(n, ...)`;
* `A.to(device, dtype)`, a copy with every tensor it holds moved.

Any callable on :math:`(B, *)` tensors is accepted where an operator is expected. When it has
no `.T`, its adjoint is the vector-Jacobian product of the (linear) map,
:math:`A^T u = \nabla_x \langle A x, u \rangle`, computed by autograd (:func:`transpose`).
"""

__all__ = ["AutogradAdjoint", "Identity", "LinearOperator", "batch_index", "transpose"]

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor


def _move(t: Tensor, device, dtype) -> Tensor:
    # as nn.Module.to: dtype casts floating-point tensors only (bool and integer masks stay)
    return t.to(device=device, dtype=dtype if t.is_floating_point() else None)


def batch_index(index: slice | int | Tensor) -> slice | Tensor:
    r"""An index over a batch that keeps the batch axis: an integer :math:`i` becomes the
    slice of the one sample :math:`i` (negative too); slices and index tensors pass."""
    if isinstance(index, int):
        return slice(index, index + 1 if index != -1 else None)
    return index


class LinearOperator(ABC):
    r"""Abstract linear operator :math:`x \mapsto A x` with an explicit adjoint.

    A subclass implements :meth:`__call__`, :meth:`adjoint`, :meth:`out_shape` and
    :meth:`in_shape_of`; a per-sample one also names its per-sample tensors in
    :meth:`_per_sample` (each with the batch as leading axis), from which slicing,
    repetition and the batch size follow. :meth:`to` moves every tensor attribute.
    """

    @abstractmethod
    def __call__(self, x: Tensor) -> Tensor:
        r"""Returns :math:`A x`, with `x` of shape :math:`(B, *)` and :math:`A x` of shape
        `self.out_shape(x.shape)`."""

    @abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        r"""Returns :math:`A^T y`, with `y` of shape :math:`(B, *)` and :math:`A^T y` of shape
        `self.in_shape_of(y.shape)`."""

    @abstractmethod
    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        r"""Returns the shape of :math:`A x` for `x` of shape `in_shape` :math:`(B, *)`, or
        raises a `ValueError` if `in_shape` is not accepted."""

    @abstractmethod
    def in_shape_of(self, out_shape: tuple[int, ...]) -> tuple[int, ...]:
        r"""Returns the shape of :math:`A^T y` for `y` of shape `out_shape` :math:`(B, *)`: the
        shape of the inputs whose images have shape `out_shape`."""

    @property
    def T(self) -> "LinearOperator":
        r"""The adjoint operator :math:`A^T`."""
        return _Adjoint(self)

    def _per_sample(self) -> tuple[str, ...]:
        r"""The names of the tensor attributes with one entry per sample along their leading
        axis; empty (the default) for a shared operator."""
        return ()

    @property
    def batch_size(self) -> int | None:
        r"""The number of samples :math:`B` of a per-sample operator, `None` if shared."""
        names = self._per_sample()
        return len(getattr(self, names[0])) if names else None

    def _map(self, f: Callable[[Tensor], Tensor]) -> "LinearOperator":
        # a shallow copy with f applied to the per-sample tensors: __init__'s checks are skipped
        out = copy.copy(self)
        for name in self._per_sample():
            setattr(out, name, f(getattr(self, name)))
        return out

    def __getitem__(self, index: slice | int | Tensor) -> "LinearOperator":
        r"""Returns the operator of the samples `index` (a slice, an integer kept as a batch
        of one, or an index or bool tensor over the batch); a shared operator returns
        itself. For a per-sample operator, `A[index](x[index]) == A(x)[index]`."""
        if self.batch_size is None:
            return self
        index = batch_index(index)
        if not isinstance(index, slice):
            index = torch.as_tensor(index)
            if index.ndim != 1:
                raise IndexError(f"expected a 1-D index over the batch, got shape {index.shape}")
        return self._map(lambda t: t[index.to(t.device) if isinstance(index, Tensor) else index])

    def repeat(self, n: int) -> "LinearOperator":
        r"""Returns the operator of the batch repeated `n` times, :math:`A_0, \dots, A_{B-1},
        A_0, \dots` (a batch of :math:`n B`), the order of `y.repeat(n, ...)`; a shared
        operator returns itself."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if self.batch_size is None:
            return self
        return self._map(lambda t: t.repeat(n, *(1,) * (t.ndim - 1)))

    def to(
        self,
        device: torch.device | str | torch.dtype | None = None,
        dtype: torch.dtype | None = None,
    ) -> "LinearOperator":
        r"""Returns a copy with every tensor it holds (and every operator, e.g. the one an
        adjoint wraps) moved to `device` and, if floating-point, cast to `dtype`. As
        `Tensor.to`, a dtype alone may come first: `A.to(torch.float64)`."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        out = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(out, name, _move(value, device, dtype))
            elif isinstance(value, LinearOperator):
                setattr(out, name, value.to(device, dtype))
        return out


class _Adjoint(LinearOperator):
    r"""The adjoint :math:`A^T` of an operator :math:`A`, per-sample or shared as :math:`A`."""

    def __init__(self, A: LinearOperator):
        self.A = A

    def __call__(self, y: Tensor) -> Tensor:
        return self.A.adjoint(y)

    def adjoint(self, x: Tensor) -> Tensor:
        return self.A(x)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.A.in_shape_of(in_shape)

    def in_shape_of(self, out_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.A.out_shape(out_shape)

    @property
    def T(self) -> LinearOperator:
        return self.A

    @property
    def batch_size(self) -> int | None:
        return self.A.batch_size

    def __getitem__(self, index) -> LinearOperator:
        A = self.A[index]
        return self if A is self.A else A.T  # shared: itself, as any shared operator

    def repeat(self, n: int) -> LinearOperator:
        A = self.A.repeat(n)
        return self if A is self.A else A.T

    def __repr__(self) -> str:
        return f"{self.A!r}.T"


class Identity(LinearOperator):
    r"""The identity operator :math:`A = I` (shared)."""

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(in_shape)

    def in_shape_of(self, out_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(out_shape)

    def __repr__(self) -> str:
        return "Identity()"


class AutogradAdjoint:
    r"""The adjoint of a linear callable :math:`A` by autograd.

    The map :math:`x \mapsto A x` is recorded once at :math:`x = 0`; each call is then one
    vector-Jacobian product, :math:`A^T u = \nabla_x \langle A x, u \rangle`, exact because
    :math:`A` is linear.

    Arguments:
        A: A linear callable on tensors of shape :math:`(B, *)`.
        x: A tensor whose shape, dtype and device the inputs of :math:`A` have.
    """

    def __init__(self, A: Callable[[Tensor], Tensor], x: Tensor):
        self.x = torch.zeros_like(x, requires_grad=True)
        with torch.enable_grad():
            self.y = A(self.x)
        if not self.y.requires_grad:
            raise ValueError(
                "A has no .T and its output does not depend on its input through autograd: "
                "expected a linear map written with differentiable torch operations"
            )

    def __call__(self, u: Tensor) -> Tensor:
        if u.shape != self.y.shape:
            raise ValueError(
                f"expected a tensor of shape {tuple(self.y.shape)}, got {tuple(u.shape)}"
            )
        (out,) = torch.autograd.grad(self.y, self.x, u, retain_graph=True)
        return out


def transpose(A: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[Tensor], Tensor]:
    r"""Returns the adjoint of `A`: its `.T` when it has one, else an :class:`AutogradAdjoint`
    at inputs shaped like `x`."""
    if hasattr(A, "T"):
        return A.T
    return AutogradAdjoint(A, x)
