"""Calibration of one slice from its undersampled k-space alone: ACS width, coil maps, intensity scale, σ_y.

Everything the samplers, the baselines and the output stage need to know about a
slice besides the data is computed here, once per slice, from the *undersampled*
k-space and its mask (never from a fully sampled answer), and passed on as one
:class:`Calibration`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mri_score.errors import InputError
from mri_score.scaling import kspace_scale
from operators import acs_width, estimate_maps
from operators.coils import DEFAULT_MAP_PHASE, MAP_PHASES, MAPS_THRESHOLD, MIN_ACS
from operators.noise import estimate_sigma_y


@dataclass(frozen=True)
class Calibration:
    """What is known about one slice from its ACS and noise.

    Attributes
    ----------
    acs_width : int
        Lines in the fully sampled centre block of the mask.
    maps : torch.Tensor
        Coil maps, complex ``(coils, H, W)``, ``Σ_c |S_c|² = 1``.
    scale : float
        Reference intensity scale (:func:`mri_score.scaling.kspace_scale`): data are divided by it
        before sampling so that the ACS image's 99th percentile is 1.
    sigma_y : float
        Noise std per complex k-space sample in the data's units (``E|n|² = σ_y²``).
    """

    acs_width: int
    maps: torch.Tensor
    scale: float
    sigma_y: float

    @property
    def sigma_y_scaled(self) -> float:
        """σ_y in the scaled units the samplers work in (floored at 1e-4 so the likelihood stays finite)."""
        return max(self.sigma_y / self.scale, 1e-4)

    def to(self, device: torch.device | str) -> Calibration:
        """The same calibration with the maps on ``device``."""
        return Calibration(self.acs_width, self.maps.to(device), self.scale, self.sigma_y)


def check_acs(mask: torch.Tensor | np.ndarray, name: str) -> int:
    """ACS width of a mask, or an :class:`InputError` naming ``name`` when it is too narrow for coil maps."""
    width = acs_width(torch.as_tensor(mask))
    if width < MIN_ACS:
        raise InputError(f"{name}: ACS too narrow for coil estimation ({width} centre lines, need >= {MIN_ACS})")
    return width


def resolve_map_phase(maps_phase: str, auto: str = DEFAULT_MAP_PHASE) -> str:
    """The phase reference (one of :data:`operators.coils.MAP_PHASES`) a request's ``maps_phase`` names: ``auto`` is
    ``auto`` (Cartesian data: :data:`operators.coils.DEFAULT_MAP_PHASE`; trajectories pass ``estimator``)."""
    if maps_phase == "auto":
        return auto
    if maps_phase not in MAP_PHASES:
        raise InputError(f"unknown coil-map phase reference {maps_phase!r}; choose auto, {', '.join(MAP_PHASES)}")
    return maps_phase


def calibrate(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    maps_method: str = "auto",
    maps: torch.Tensor | None = None,
    sigma_y: float | None = None,
    maps_phase: str = "auto",
    maps_threshold: float | str | None = None,
) -> Calibration:
    """Calibrate one slice from its undersampled k-space.

    Parameters
    ----------
    kspace : torch.Tensor
        Undersampled k-space, complex ``(coils, H, W)``, zero where not sampled; the
        calibration is computed on its device.
    mask : torch.Tensor
        float32 ``(W,)`` or ``(H, W)`` sampling mask.
    maps_method : str
        Coil-map estimator for :func:`operators.estimate_maps` (``auto``, ``espirit``, ``lowres``).
    maps : torch.Tensor, optional
        Coil maps to use instead of estimating them (e.g. the simulation's true maps).
    sigma_y : float, optional
        Known noise std per complex sample, instead of :func:`estimate_sigma_y`.
    maps_phase : str
        Phase reference of estimated maps (:func:`resolve_map_phase`); given ``maps`` are used as they are.
    maps_threshold : float or str, optional
        ESPIRiT's relative singular-value threshold, or ``"noise"`` (:data:`operators.coils.NOISE_THRESHOLD`: the
        calibration matrix's noise edge at this slice's σ_y, :func:`operators.espirit_noise_threshold`);
        :data:`operators.coils.MAPS_THRESHOLD` when None.

    Returns
    -------
    Calibration
    """
    mask_t = torch.as_tensor(mask, dtype=torch.float32).to(kspace.device)
    width = acs_width(mask_t)
    sy = float(sigma_y) if sigma_y is not None else estimate_sigma_y(kspace, mask_t)
    if maps is None:
        maps = estimate_maps(kspace, mask_t, method=maps_method, width=width, phase=resolve_map_phase(maps_phase),
                             thresh=MAPS_THRESHOLD if maps_threshold is None else maps_threshold, noise_std=sy)
    maps = maps.to(kspace.device)
    scale = float(kspace_scale(kspace, mask_t, maps, width))
    return Calibration(acs_width=width, maps=maps, scale=scale, sigma_y=sy)
