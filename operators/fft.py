"""Centred orthonormal 2-D FFT, the fastMRI convention (``fastmri.fftc``).

Both functions act on the last two dimensions of a complex tensor of any
leading shape, are unitary (``norm="ortho"``) and differentiable.
"""

from __future__ import annotations

import torch

from operators.errors import OperatorInputError

_DIMS = (-2, -1)


def _check_complex(x: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(x):
        raise OperatorInputError(f"{name} expects a torch tensor, got {type(x).__name__}")
    if not torch.is_complex(x):
        raise OperatorInputError(f"{name} expects a complex tensor, got dtype {x.dtype}")
    if x.ndim < 2:
        raise OperatorInputError(f"{name} expects at least 2 dims (..., H, W), got shape {tuple(x.shape)}")


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal FFT: image ``(..., H, W)`` complex -> k-space, same shape."""
    _check_complex(x, "fft2c")
    x = torch.fft.ifftshift(x, dim=_DIMS)
    x = torch.fft.fft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse FFT: k-space ``(..., H, W)`` complex -> image, same shape."""
    _check_complex(k, "ifft2c")
    k = torch.fft.ifftshift(k, dim=_DIMS)
    k = torch.fft.ifft2(k, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(k, dim=_DIMS)
