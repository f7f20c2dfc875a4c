r"""Linear operators with explicit adjoints.

A linear operator :math:`A` maps signals :math:`x` with shape :math:`(B, *)` to
measurements :math:`y = A x` with shape :math:`(B, *)`, sample by sample. Its adjoint
:math:`A^T` satisfies :math:`\langle A x, y \rangle = \langle x, A^T y \rangle`.

Any callable on :math:`(B, *)` tensors is accepted where an operator is expected. When it has
no `.T`, its adjoint is the vector-Jacobian product of the (linear) map,
:math:`A^T u = \nabla_x \langle A x, u \rangle`, computed by autograd (:func:`transpose`).
"""

__all__ = ["AutogradAdjoint", "Identity", "LinearOperator", "transpose"]

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor


class LinearOperator(ABC):
    r"""Abstract linear operator with an explicit adjoint."""

    @abstractmethod
    def __call__(self, x: Tensor) -> Tensor:
        r"""Returns :math:`A x`."""

    @abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        r"""Returns :math:`A^T y`."""

    @property
    def T(self) -> "LinearOperator":
        r"""The adjoint operator :math:`A^T`."""
        return _Adjoint(self)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        r"""Returns the shape of :math:`A x` for `x` of shape `in_shape`, or raises a
        `ValueError` if `in_shape` is not accepted. `None` means unknown without evaluating."""
        return None


class _Adjoint(LinearOperator):
    def __init__(self, A: LinearOperator):
        self.A = A

    def __call__(self, y: Tensor) -> Tensor:
        return self.A.adjoint(y)

    def adjoint(self, x: Tensor) -> Tensor:
        return self.A(x)

    @property
    def T(self) -> LinearOperator:
        return self.A

    def __repr__(self) -> str:
        return f"{self.A!r}.T"


class Identity(LinearOperator):
    r"""The identity operator :math:`A = I`."""

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(in_shape)

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
