"""Posterior sampling of one k-space slice: calibration, a sampler, mean and std in the output convention.

This module is the shared core of :func:`mri_score.pipeline.reconstruct_volume`
(the ``reconstruct`` command line and the benchmarks).  Only the undersampled
k-space and its mask are used (never a fully sampled answer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mri_score.calibration import Calibration, calibrate, check_acs, estimate_sigma_y
from mri_score.errors import InputError
from mri_score.network import EDMDenoiser
from mri_score.samplers import DEFAULT_STEPS, SAMPLERS, ComplexPrior, Problem
from operators import Sense, expected_rss, ifft2c, sense1_combine

# re-exported: the σ_y estimator and the ACS check live in mri_score.calibration
__all__ = ["MAGNITUDES", "Calibration", "SamplerSettings", "SliceResult", "check_acs", "estimate_sigma_y",
           "output_magnitude", "reconstruct_slice"]

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
    magnitude: str = "rss"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps is None:
            self.steps = DEFAULT_STEPS[self.sampler]
        if self.steps < 1:
            raise InputError(f"steps (the NFE budget) must be >= 1, got {self.steps}")
        if self.samples < 1:
            raise InputError(f"samples must be >= 1, got {self.samples}")
        if self.magnitude not in MAGNITUDES:
            raise InputError(f"unknown magnitude {self.magnitude!r}; choose one of {', '.join(MAGNITUDES)}")


@dataclass
class SliceResult:
    """One slice's reconstruction.

    ``image`` and ``std``: reconstruction and per-pixel std (real, ``settings.magnitude`` convention);
    ``mean``: complex posterior mean; ``zero_filled``: complex SENSE-1 zero-filled image (all in the
    data's units, ``(H, W)``, on the CPU); ``nfe``: network evaluations; ``seconds``: wall time;
    ``sigma_y`` and ``scale``: from ``calibration``, the slice's :class:`Calibration`.
    """

    image: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    zero_filled: torch.Tensor
    nfe: int
    seconds: float
    sigma_y: float
    scale: float
    calibration: Calibration


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
    calibration: Calibration | None = None,
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
    calibration : Calibration, optional
        The slice's calibration (:func:`mri_score.calibration.calibrate`); computed here when None.

    Returns
    -------
    SliceResult
    """
    t0 = time.time()
    device = next(prior.parameters()).device
    kspace = kspace.to(device)
    mask_t = torch.as_tensor(mask, dtype=torch.float32).to(device)
    kspace = kspace * mask_t
    cal = calibrate(kspace, mask_t, settings.maps) if calibration is None else calibration.to(device)
    maps, scale, sigma_y = cal.maps, cal.scale, cal.sigma_y
    op = Sense(maps, mask_t)
    y = kspace / scale
    problem = Problem(op=op, y=y, sigma_y=cal.sigma_y_scaled)
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
        seconds=time.time() - t0, sigma_y=sigma_y, scale=scale, calibration=cal,
    )
