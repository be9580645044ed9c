"""Posterior sampling of one k-space slice: coil maps and scaling from the ACS, a sampler, mean and std.

This module is the shared core of ``reconstruct`` and the benchmarks.  Only
the undersampled k-space and its mask are used (never a fully sampled answer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mri_score.errors import InputError
from mri_score.network import EDMDenoiser
from mri_score.samplers import DEFAULT_STEPS, SAMPLERS, ComplexPrior, Problem
from mri_score.scaling import kspace_scale
from operators import Sense, acs_width, estimate_maps, expected_rss, ifft2c, sense1_combine

#: Output magnitude conventions: ``rss`` estimates the fastMRI target (RSS of the noisy fully
#: sampled coil images, noise floor included); ``sense`` is the coil-combined ``|x|``.
MAGNITUDES = ("rss", "sense")


@dataclass
class SamplerSettings:
    """How to sample: sampler name, NFE budget, posterior samples K, seed, output magnitude and sampler options."""

    sampler: str = "dds"
    steps: int | None = None
    samples: int = 2
    seed: int = 0
    maps: str = "auto"
    sigma_y: float | None = None
    magnitude: str = "rss"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps is None:
            self.steps = DEFAULT_STEPS[self.sampler]
        if self.steps < 1:
            raise InputError(f"--steps must be >= 1, got {self.steps}")
        if self.samples < 1:
            raise InputError(f"--samples must be >= 1, got {self.samples}")
        if self.magnitude not in MAGNITUDES:
            raise InputError(f"unknown magnitude {self.magnitude!r}; choose one of {', '.join(MAGNITUDES)}")


@dataclass
class SliceResult:
    """Reconstruction and per-pixel std (real, ``settings.magnitude`` convention), complex posterior mean,
    zero-filled image (all original units, ``(H, W)``), NFE, seconds, estimated σ_y and the scale."""

    image: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    zero_filled: torch.Tensor
    nfe: int
    seconds: float
    sigma_y: float
    scale: float


def estimate_sigma_y(kspace: torch.Tensor, mask: torch.Tensor, edge_fraction: float = 1 / 16) -> float:
    """Noise std per complex k-space sample (``E|n|² = σ²``) from the outermost readout rows.

    The top and bottom ``edge_fraction`` of the rows of the *sampled* columns
    hold almost no signal; a median-absolute-deviation estimate on their real
    and imaginary parts is robust to what signal remains.
    """
    m = torch.as_tensor(mask).to(kspace.device)
    h = kspace.shape[-2]
    n = max(1, int(round(h * edge_fraction)))
    sampled = (m.expand(kspace.shape[-2:]) != 0) if m.ndim >= 1 else torch.ones(kspace.shape[-2:], dtype=torch.bool)
    rows = torch.zeros(h, dtype=torch.bool, device=kspace.device)
    rows[:n] = True
    rows[h - n:] = True
    sel = sampled & rows[:, None]
    vals = kspace[..., sel]
    parts = torch.cat([vals.real.reshape(-1), vals.imag.reshape(-1)])
    parts = parts[parts != 0]
    if parts.numel() < 16:
        return 0.0
    mad = (parts - parts.median()).abs().median()
    return float(1.4826 * mad * 2**0.5)


def output_magnitude(image: torch.Tensor, maps: torch.Tensor, sigma_y: float, magnitude: str = "rss") -> torch.Tensor:
    """Real magnitude of a complex image ``(..., H, W)``: ``|x|`` (``sense``) or the expected noisy RSS (``rss``).

    ``rss`` is what fastMRI's targets are (:func:`operators.expected_rss` with the
    data's own σ_y, estimated from the undersampled k-space); every SENSE-type
    method in the benchmarks is reported with the same convention.
    """
    if magnitude == "sense":
        return image.abs()
    if magnitude == "rss":
        return expected_rss(image, maps.to(image.device), sigma_y)
    raise InputError(f"unknown magnitude {magnitude!r}; choose one of {', '.join(MAGNITUDES)}")


def reconstruct_slice(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    prior: EDMDenoiser,
    settings: SamplerSettings,
    maps: torch.Tensor | None = None,
) -> SliceResult:
    """Sample the posterior for one slice.

    Parameters
    ----------
    kspace : torch.Tensor
        Undersampled k-space, complex ``(coils, H, W)`` (zeros where not sampled).
    mask : torch.Tensor
        ``(W,)`` or ``(H, W)`` sampling mask.
    prior : EDMDenoiser
        The score network (on the device to use).
    settings : SamplerSettings
    maps : torch.Tensor, optional
        Coil maps ``(coils, H, W)``; estimated from the ACS when None.
    """
    t0 = time.time()
    device = next(prior.parameters()).device
    kspace = kspace.to(device)
    mask_t = torch.as_tensor(mask, dtype=torch.float32).to(device)
    kspace = kspace * mask_t
    if maps is None:
        maps = estimate_maps(kspace, mask_t, method=settings.maps)
    maps = maps.to(device)
    scale = float(kspace_scale(kspace, mask_t, maps))
    sigma_y = settings.sigma_y if settings.sigma_y is not None else estimate_sigma_y(kspace, mask_t)
    sigma_y_scaled = max(sigma_y / scale, 1e-4)
    op = Sense(maps, mask_t)
    y = kspace / scale
    problem = Problem(op=op, y=y, sigma_y=sigma_y_scaled)
    zero_filled = sense1_combine(ifft2c(kspace), maps)
    gen = torch.Generator(device="cpu").manual_seed(int(settings.seed))
    cprior = ComplexPrior(prior)
    x_init = problem.zero_filled().expand(settings.samples, -1, -1).clone()
    run = SAMPLERS[settings.sampler]
    result = run(cprior, problem, x_init, gen, steps=int(settings.steps), **settings.options)
    samples = result.samples.detach() * scale
    mean = samples.mean(dim=0)
    mags = output_magnitude(samples, maps, sigma_y, settings.magnitude)
    std = mags.std(dim=0) if settings.samples > 1 else torch.zeros_like(mags[0])
    return SliceResult(
        image=output_magnitude(mean, maps, sigma_y, settings.magnitude).cpu(),
        mean=mean.cpu(), std=std.cpu(), zero_filled=zero_filled.cpu(), nfe=result.nfe,
        seconds=time.time() - t0, sigma_y=sigma_y, scale=scale,
    )


def check_acs(mask: torch.Tensor | np.ndarray, name: str) -> int:
    """ACS width of a mask, or an :class:`InputError` when it is too narrow to estimate coil maps."""
    from operators.coils import MIN_ACS

    width = acs_width(torch.as_tensor(mask))
    if width < MIN_ACS:
        raise InputError(f"{name}: ACS too narrow for coil estimation ({width} centre lines, need >= {MIN_ACS})")
    return width
