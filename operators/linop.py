"""A small linear-operator algebra in the style of ``sigpy.linop`` and ``mrpro``.

A :class:`LinearOperator` is a ``torch.nn.Module`` (so buffers such as masks
and coil maps follow ``.to(device)``) with ``forward`` (apply) and ``adjoint``.
``A.H`` is the adjoint operator, ``A @ B`` / ``A * B`` the composition
``x -> A(B(x))`` and ``A.gram(x)`` is ``AᴴA x``.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearOperator(nn.Module):
    """Base class: subclasses implement :meth:`forward` and :meth:`adjoint`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Apply the operator."""
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Apply the adjoint operator."""
        raise NotImplementedError

    @property
    def H(self) -> LinearOperator:  # noqa: N802 - mathematical name
        """The adjoint operator ``Aᴴ``."""
        return AdjointOperator(self)

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """The normal operator ``AᴴA x``."""
        return self.adjoint(self.forward(x))

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        """``self ∘ other``."""
        return ComposedOperator(self, other)

    def __mul__(self, other: LinearOperator) -> LinearOperator:
        """``self ∘ other`` (as ``@``)."""
        return ComposedOperator(self, other)


class AdjointOperator(LinearOperator):
    """``Aᴴ`` of an operator ``A``; its own adjoint is ``A``."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᴴ x``."""
        return self.op.adjoint(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A y``."""
        return self.op.forward(y)

    @property
    def H(self) -> LinearOperator:  # noqa: N802
        """``A`` itself."""
        return self.op


class ComposedOperator(LinearOperator):
    """``x -> outer(inner(x))``; adjoint ``innerᴴ(outerᴴ(y))``."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        super().__init__()
        self.outer = outer
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``outer(inner(x))``."""
        return self.outer(self.inner(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``innerᴴ(outerᴴ(y))``."""
        return self.inner.adjoint(self.outer.adjoint(y))


class FFT2C(LinearOperator):
    """The centred orthonormal 2-D FFT as an operator (unitary: ``Aᴴ = A⁻¹``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`operators.fft.fft2c`."""
        from operators.fft import fft2c

        return fft2c(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """:func:`operators.fft.ifft2c`."""
        from operators.fft import ifft2c

        return ifft2c(y)


class Diagonal(LinearOperator):
    """Element-wise multiplication ``x -> d · x`` by a tensor ``d`` broadcasting against ``x``; adjoint ``conj(d) · y``.

    A 0/1 sampling mask is a real ``Diagonal`` (self-adjoint and idempotent).
    """

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``d · x``."""
        return self.weights * x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``conj(d) · y`` (``d · y`` for a real ``d``)."""
        w = self.weights
        return (torch.conj(w) if torch.is_complex(w) else w) * y


def inner(a: torch.Tensor, b: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """Complex inner product ``<a, b> = Σ conj(a)·b`` over ``dims`` (all dims when None)."""
    prod = torch.conj(a) * b
    if dims is None:
        return prod.sum()
    return prod.sum(dim=dims)


def check_adjoint(op: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> float:
    """Relative dot-product-test error ``|<Ax, y> - <x, Aᴴy>| / |<Ax, y>|``.

    ``x`` lies in the domain and ``y`` in the range of ``op``; a correct
    adjoint gives round-off (~1e-7 in complex64).
    """
    lhs = inner(op(x), y)
    rhs = inner(x, op.adjoint(y))
    return float((lhs - rhs).abs() / lhs.abs().clamp_min(1e-30))
