"""Changing the image grid through k-space: centred zero-padding, cropping and Fourier resampling.

All functions act on the last two dims ``(..., H, W)`` with the centred orthonormal FFT of
:mod:`operators.fft`; the k-space centre of a size-``N`` axis is index ``N // 2``, so padding
from ``N`` to ``M`` puts the old samples at offset ``M // 2 − N // 2``.  Zero-padding k-space
by a factor ``f`` per axis gives the same object on a grid with ``f``-times smaller pixels (the
orthonormal FFT divides its amplitude by ``f`` in 2-D); :func:`crop_kspace` is its exact inverse
and its adjoint.  :class:`KspaceCrop` is that crop as a linear operator (for a forward model
on a finer grid than the measured one, :class:`operators.sense.Sense` with ``kspace_shape``).
"""

from __future__ import annotations

import torch

from operators.errors import OperatorInputError
from operators.fft import fft2c, ifft2c
from operators.linop import LinearOperator


def _offsets(small: tuple[int, int], large: tuple[int, int]) -> tuple[int, int]:
    if large[0] < small[0] or large[1] < small[1]:
        raise OperatorInputError(f"grid {tuple(large)} is smaller than {tuple(small)}")
    return large[0] // 2 - small[0] // 2, large[1] // 2 - small[1] // 2


def zero_pad_kspace(kspace: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Centred zero-padding of k-space ``(..., H, W)`` to ``(..., *shape)``; also pads masks (any dtype)."""
    h, w = kspace.shape[-2:]
    r0, c0 = _offsets((h, w), tuple(shape))
    out = kspace.new_zeros(*kspace.shape[:-2], *shape)
    out[..., r0 : r0 + h, c0 : c0 + w] = kspace
    return out


def crop_kspace(kspace: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Centre crop of k-space ``(..., H, W)`` to ``(..., *shape)``: the adjoint (and left inverse) of padding."""
    h, w = shape
    r0, c0 = _offsets((h, w), tuple(kspace.shape[-2:]))
    return kspace[..., r0 : r0 + h, c0 : c0 + w]


def pad_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A sampling mask ``(W,)`` or ``(H, W)`` on the padded grid ``shape``: the new outer samples are unsampled."""
    m = torch.as_tensor(mask)
    if m.ndim == 1 or (m.ndim >= 2 and m.shape[-2] == 1):
        line = m.reshape(-1)
        c0 = _offsets((1, line.shape[0]), (1, shape[1]))[1]
        out = line.new_zeros(shape[1])
        out[c0 : c0 + line.shape[0]] = line
        return out if m.ndim == 1 else out.reshape(*m.shape[:-1], shape[1])
    return zero_pad_kspace(m, shape)


def fourier_resample(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Band-limited resampling of an image ``(..., H, W)`` to ``shape`` that keeps its values (not its energy).

    Used for smooth fields (coil maps) moved to a finer or coarser grid.
    """
    h, w = image.shape[-2:]
    k = fft2c(image.to(torch.complex64) if not torch.is_complex(image) else image)
    if shape[0] >= h and shape[1] >= w:
        k = zero_pad_kspace(k, shape)
    elif shape[0] <= h and shape[1] <= w:
        k = crop_kspace(k, shape)
    else:
        raise OperatorInputError(f"resample {tuple(image.shape[-2:])} -> {tuple(shape)}: both axes must grow or shrink")
    return ifft2c(k) * ((shape[0] * shape[1]) / (h * w)) ** 0.5


def image_to_grid(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """An image on a fine grid ``(..., fH, fW)`` brought back to the measured grid ``shape`` through k-space.

    Exactly inverts ``ifft2c(zero_pad_kspace(fft2c(x), fine))``: the result is in the
    original grid's units (the orthonormal FFTs' amplitude factors cancel).
    """
    return ifft2c(crop_kspace(fft2c(image), shape))


class KspaceCrop(LinearOperator):
    """Centre crop of k-space ``(..., *fine_shape)`` -> ``(..., *shape)``; adjoint: centred zero-padding back.

    ``Crop · Cropᴴ = I`` (padding then cropping changes nothing) and ``Cropᴴ · Crop`` is the
    0/1 diagonal that keeps the central ``shape`` block.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` kept (the measured matrix).
    fine_shape : tuple of int
        ``(fH, fW)`` of the input, at least ``shape`` along both axes.
    """

    def __init__(self, shape: tuple[int, int], fine_shape: tuple[int, int]) -> None:
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        self.fine_shape = (int(fine_shape[0]), int(fine_shape[1]))
        _offsets(self.shape, self.fine_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., fH, fW)`` -> ``(..., H, W)``."""
        if tuple(x.shape[-2:]) != self.fine_shape:
            raise OperatorInputError(f"k-space crop expects (..., {self.fine_shape[0]}, {self.fine_shape[1]}), "
                                     f"got {tuple(x.shape)}")
        return crop_kspace(x, self.shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``(..., H, W)`` -> ``(..., fH, fW)`` (zeros outside the centre block)."""
        if tuple(y.shape[-2:]) != self.shape:
            raise OperatorInputError(f"k-space crop adjoint expects (..., {self.shape[0]}, {self.shape[1]}), "
                                     f"got {tuple(y.shape)}")
        return zero_pad_kspace(y, self.fine_shape)
