"""The multi-coil SENSE forward model ``A x = M · F(S · x)`` (fastMRI / sigpy convention)."""

from __future__ import annotations

import torch

from operators.errors import OperatorInputError
from operators.fft import fft2c, ifft2c
from operators.linop import LinearOperator


class Sense(LinearOperator):
    """Multi-coil Cartesian SENSE operator.

    Parameters
    ----------
    maps : torch.Tensor
        Coil sensitivities, complex, shape ``(..., coils, H, W)``.  A single-coil
        acquisition is ``coils = 1`` with maps of ones.
    mask : torch.Tensor, optional
        Sampling mask broadcastable to ``(..., coils, H, W)`` (e.g. ``(W,)`` for
        fastMRI column masks, ``(H, W)`` for 2-D masks); values 0/1. ``None``
        means fully sampled.

    ``forward``: image ``(..., H, W)`` -> k-space ``(..., coils, H, W)``.
    ``adjoint``: k-space -> image ``Σ_c conj(S_c) · Fᴴ(M · y_c)``.
    Leading batch dims of the image broadcast against those of the maps.
    """

    def __init__(self, maps: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        if not torch.is_tensor(maps) or not torch.is_complex(maps):
            raise OperatorInputError("Sense maps must be a complex tensor of shape (..., coils, H, W)")
        if maps.ndim < 3:
            raise OperatorInputError(f"Sense maps must have shape (..., coils, H, W), got {tuple(maps.shape)}")
        if maps.shape[-3] < 1:
            raise OperatorInputError("Sense maps have zero coils")
        self.register_buffer("maps", maps)
        if mask is None:
            mask = torch.ones(maps.shape[-1], dtype=maps.real.dtype, device=maps.device)
        if not torch.is_tensor(mask):
            mask = torch.as_tensor(mask)
        mask = mask.to(device=maps.device, dtype=maps.real.dtype)
        try:
            torch.broadcast_shapes(mask.shape, maps.shape)
        except RuntimeError as err:
            raise OperatorInputError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to k-space {tuple(maps.shape)}"
            ) from err
        self.register_buffer("mask", mask)

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the images the operator acts on."""
        return tuple(self.maps.shape[-2:])  # type: ignore[return-value]

    def _check_image(self, x: torch.Tensor) -> None:
        if not torch.is_complex(x):
            raise OperatorInputError(f"Sense expects a complex image, got {x.dtype}")
        if tuple(x.shape[-2:]) != self.image_shape:
            raise OperatorInputError(
                f"image shape {tuple(x.shape[-2:])} does not match coil maps {self.image_shape}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(..., H, W)`` -> masked multi-coil k-space ``(..., coils, H, W)``."""
        self._check_image(x)
        return self.mask * fft2c(self.maps * x.unsqueeze(-3))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Multi-coil k-space ``(..., coils, H, W)`` -> image ``(..., H, W)``."""
        if not torch.is_complex(y):
            raise OperatorInputError(f"Sense adjoint expects complex k-space, got {y.dtype}")
        return (torch.conj(self.maps) * ifft2c(self.mask * y)).sum(dim=-3)

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """``AᴴA x`` (the mask is idempotent, so it is applied once)."""
        self._check_image(x)
        k = self.mask * fft2c(self.maps * x.unsqueeze(-3))
        return (torch.conj(self.maps) * ifft2c(k)).sum(dim=-3)
