"""The multi-coil SENSE forward model ``A x = M · F(S · x)`` (fastMRI / sigpy convention), built from primitives."""

from __future__ import annotations

import torch

from operators.errors import OperatorInputError
from operators.linop import FFT2C, Diagonal, LinearOperator


class CoilSensitivities(LinearOperator):
    """``S``: image ``(..., H, W)`` -> coil images ``(..., coils, H, W)`` = ``S_c · x``; adjoint ``Σ_c conj(S_c) · y_c``.

    Parameters
    ----------
    maps : torch.Tensor
        Coil sensitivities, complex ``(..., coils, H, W)``.
    """

    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        _check_maps(maps)
        self.register_buffer("maps", maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(..., H, W)`` -> coil images ``(..., coils, H, W)``."""
        return self.maps * x.unsqueeze(-3)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Coil images ``(..., coils, H, W)`` -> image ``(..., H, W)``."""
        return (torch.conj(self.maps) * y).sum(dim=-3)


def _check_maps(maps: torch.Tensor) -> None:
    if not torch.is_tensor(maps) or not torch.is_complex(maps):
        raise OperatorInputError("Sense maps must be a complex tensor of shape (..., coils, H, W)")
    if maps.ndim < 3:
        raise OperatorInputError(f"Sense maps must have shape (..., coils, H, W), got {tuple(maps.shape)}")
    if maps.shape[-3] < 1:
        raise OperatorInputError("Sense maps have zero coils")


def _as_mask(mask: torch.Tensor | None, maps: torch.Tensor) -> torch.Tensor:
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
    return mask


class Sense(LinearOperator):
    """Multi-coil Cartesian SENSE operator ``A = M ∘ F ∘ S`` (mask, centred FFT, coil sensitivities).

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
    The three factors are :attr:`coils` (:class:`CoilSensitivities`), :attr:`fft`
    (:class:`~operators.linop.FFT2C`) and :attr:`sampling` (a real
    :class:`~operators.linop.Diagonal`).  ``gram`` overrides ``AᴴA`` with a faster
    form that uses constants derived from ``maps`` and ``mask``; :meth:`update`
    replaces the mask or the maps and refreshes them.
    """

    def __init__(self, maps: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        _check_maps(maps)
        self.coils = CoilSensitivities(maps)
        self.fft = FFT2C()
        self.sampling = Diagonal(_as_mask(mask, maps))
        self._refresh_gram()

    @property
    def maps(self) -> torch.Tensor:
        """Coil sensitivities ``(..., coils, H, W)``."""
        return self.coils.maps

    @property
    def mask(self) -> torch.Tensor:
        """Sampling mask (real, broadcastable to ``(..., coils, H, W)``)."""
        return self.sampling.weights

    def update(self, mask: torch.Tensor | None = None, maps: torch.Tensor | None = None) -> Sense:
        """Replace the mask and/or the maps in place and refresh the Gram constants; returns ``self``.

        The new maps must have the old maps' shape (the operator's domain and range stay the same);
        the new mask must broadcast to them.
        """
        if maps is not None:
            _check_maps(maps)
            if maps.shape != self.maps.shape:
                raise OperatorInputError(f"new maps {tuple(maps.shape)} differ in shape from {tuple(self.maps.shape)}")
            self.coils.maps = maps.to(self.maps.device)
        if mask is not None:
            self.sampling.weights = _as_mask(mask, self.maps)
        self._refresh_gram()
        return self

    def _refresh_gram(self) -> None:
        # Gram-operator constants (see :meth:`gram`): the centring shifts folded into maps and mask once.
        maps, mask = self.maps, self.mask
        self._column_mask = mask.ndim < 2 or mask.shape[-2] == 1
        self._gram_dims = (-1,) if self._column_mask else (-2, -1)
        shifted = torch.fft.ifftshift(maps, dim=self._gram_dims)
        self.register_buffer("_gram_maps", shifted, persistent=False)
        self.register_buffer("_gram_maps_conj", shifted.conj().resolve_conj(), persistent=False)
        self.register_buffer("_gram_mask", torch.fft.ifftshift(mask, dim=self._gram_dims[-mask.ndim:]),
                             persistent=False)

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
        return self.sampling(self.fft(self.coils(x)))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Multi-coil k-space ``(..., coils, H, W)`` -> image ``(..., H, W)``."""
        if not torch.is_complex(y):
            raise OperatorInputError(f"Sense adjoint expects complex k-space, got {y.dtype}")
        return self.coils.adjoint(self.fft.adjoint(self.sampling.adjoint(y)))

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """``AᴴA x = Σ_c conj(S_c) Fᴴ M F (S_c x)``, image ``(..., H, W)`` -> same; the inner loop of CG.

        Equal to ``adjoint(forward(x))`` at about a quarter of its cost (8 coils, 256², column
        mask): the centring shifts are folded into pre-shifted maps and mask (``F_c = Q F P`` with
        ``P = ifftshift``, ``Q = fftshift``, so ``F_cᴴ M F_c = P⁻¹ Fᴴ (Q⁻¹M) F P``), and for a
        column mask (constant along H) the FFT along H cancels against its inverse, so only
        1-D FFTs along W are taken.
        """
        self._check_image(x)
        dims = self._gram_dims
        z = torch.fft.ifftshift(x, dim=dims).unsqueeze(-3) * self._gram_maps
        if self._column_mask:
            k = torch.fft.fft(z, dim=-1, norm="ortho")
            k.mul_(self._gram_mask)
            z = torch.fft.ifft(k, dim=-1, norm="ortho")
        else:
            k = torch.fft.fft2(z, dim=dims, norm="ortho")
            k.mul_(self._gram_mask)
            z = torch.fft.ifft2(k, dim=dims, norm="ortho")
        z.mul_(self._gram_maps_conj)
        return torch.fft.fftshift(z.sum(dim=-3), dim=dims)
