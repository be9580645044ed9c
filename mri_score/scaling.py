"""The one intensity scaling used everywhere: training, sampling, baselines.

An image is divided by :func:`reference_scale` of its **ACS low-resolution**
estimate: the 99th percentile of the magnitude of the Hann-windowed centre of
k-space (the same ``center_fraction`` of columns a fastMRI mask keeps), combined
with the ACS coil maps (SENSE-1).  At test time only undersampled k-space is
needed; at training time the same low-resolution image is computed from the
training image, so the network sees data at the scale the samplers feed it.
"""

from __future__ import annotations

import torch

from operators.coils import acs_width, lowres_coil_images, lowres_sense1
from operators.fft import fft2c

#: Percentile of the low-resolution magnitude that is mapped to 1.
SCALE_QUANTILE = 0.99
#: ACS fraction used to compute the training-time scale (fastMRI's default centre fraction).
TRAIN_CENTER_FRACTION = 0.08


def reference_scale(lowres_image: torch.Tensor) -> torch.Tensor:
    """``quantile(|lowres|, 0.99)`` over the last two dims: ``(..., H, W)`` -> ``(...)``, clamped > 0."""
    mag = lowres_image.abs().reshape(*lowres_image.shape[:-2], -1).float()
    return torch.quantile(mag, SCALE_QUANTILE, dim=-1).clamp_min(1e-12)


def image_scale(image: torch.Tensor, center_fraction: float = TRAIN_CENTER_FRACTION) -> torch.Tensor:
    """Scale of a complex image ``(..., H, W)`` from its own ACS low-resolution version (training side)."""
    width = max(4, round(image.shape[-1] * center_fraction))
    low = lowres_coil_images(fft2c(image), width)
    return reference_scale(low)


def kspace_scale(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Scale from undersampled multi-coil k-space ``(coils, H, W)``, its mask and ACS maps (test side).

    ``width`` is the mask's ACS width when the caller already knows it (:func:`operators.acs_width`).
    """
    m = torch.as_tensor(mask)
    width = acs_width(m) if width is None else int(width)
    two_d = m.ndim >= 2 and m.shape[-2] > 1
    return reference_scale(lowres_sense1(kspace, maps, width, two_d))
