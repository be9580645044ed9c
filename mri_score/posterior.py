"""Posterior sampling of one k-space slice: calibration, a sampler, mean and std in the output convention.

This module is the shared core of :func:`mri_score.pipeline.reconstruct_volume`
(the ``reconstruct`` command line and the benchmarks).  Only the undersampled
k-space and its mask are used (never a fully sampled answer).

Output convention (:data:`MAGNITUDES`, ``SamplerSettings.magnitude``): the default
``sense`` is the coil-combined posterior-mean magnitude ``|x|``, the estimate of the
anatomy; ``rss`` is the expected root-sum-of-squares of the *noisy* coil images
(:func:`operators.expected_rss`, noise floor included), the option for scoring against
fastMRI's noisy RSS targets.  The std follows the same convention.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mri_score.calibration import Calibration, calibrate, check_acs, estimate_sigma_y
from mri_score.errors import InputError
from mri_score.likelihood import GaussianKspaceLikelihood, Likelihood
from mri_score.network import EDMDenoiser
from mri_score.precision import PRECISIONS
from mri_score.resolution import check_grid_factor, fine_shape
from mri_score.samplers import DEFAULT_STEPS, SAMPLERS, ComplexPrior, SamplerConfig, sampler_config
from operators import Sense, expected_rss, fourier_resample, ifft2c, image_to_grid, sense1_combine

# re-exported: the σ_y estimator and the ACS check live in mri_score.calibration
__all__ = ["MAGNITUDES", "Calibration", "SamplerSettings", "SliceResult", "check_acs", "estimate_sigma_y",
           "output_magnitude", "reconstruct_slice"]

#: Output magnitude conventions: ``sense`` (the default) is the coil-combined ``|x|``, the anatomy
#: estimate; ``rss`` estimates the fastMRI target (RSS of the noisy fully sampled coil images,
#: noise floor included), for scoring against fastMRI's noisy RSS targets.
MAGNITUDES = ("sense", "rss")


@dataclass
class SamplerSettings:
    """How to sample one slice.

    Attributes
    ----------
    sampler : str
        One of :data:`mri_score.samplers.SAMPLERS`.
    steps : int, optional
        The budget of network evaluations (NFE) for every sampler; the sampler's default when None.
    samples : int
        Posterior samples K per slice (mean and std).
    seed : int
        Seed of the sampler's noise.
    maps : str
        Coil-map estimator when the slice is calibrated here (``auto``, ``espirit``, ``lowres``).
    magnitude : str
        Output convention, one of :data:`MAGNITUDES`: ``sense`` (default, the anatomy ``|x|``) or
        ``rss`` (expected noisy RSS, for scoring against fastMRI's RSS targets).
    options : mapping or SamplerConfig
        The sampler's options; a mapping is validated into the sampler's
        :class:`~mri_score.samplers.SamplerConfig` (unknown keys refused).
    grid_factor : float
        Sample on a grid this many times finer per axis than the measured matrix (1: the measured
        grid); data consistency stays on the measured matrix (see :func:`reconstruct_slice`).
    precision : str
        How the network runs, one of :data:`mri_score.precision.PRECISIONS`: ``auto`` (default:
        bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere), ``bf16`` or ``fp32``.
        Data consistency and every complex operation stay fp32.
    """

    sampler: str = "dds"
    steps: int | None = None
    samples: int = 2
    seed: int = 0
    maps: str = "auto"
    magnitude: str = "sense"
    options: Mapping[str, Any] | SamplerConfig = field(default_factory=dict)
    grid_factor: float = 1.0
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.options = sampler_config(self.sampler, self.options)
        self.grid_factor = check_grid_factor(self.grid_factor)
        if self.steps is None:
            self.steps = DEFAULT_STEPS[self.sampler]
        self.options.nfe_used(int(self.steps))
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


def output_magnitude(image: torch.Tensor, maps: torch.Tensor, sigma_y: float, magnitude: str = "sense") -> torch.Tensor:
    """Real magnitude of a complex image ``(..., H, W)``: ``|x|`` (``sense``) or the expected noisy RSS (``rss``).

    ``sense`` (the default) is the anatomy estimate.  ``rss`` is what fastMRI's targets are
    (:func:`operators.expected_rss` with the data's own σ_y, estimated from the undersampled
    k-space), for scoring against them; every SENSE-type method in the benchmarks is
    reported with the benchmark's convention.
    """
    if magnitude == "sense":
        return image.abs()
    if magnitude == "rss":
        return expected_rss(image, maps.to(image.device), sigma_y)
    raise InputError(f"unknown magnitude {magnitude!r}; choose one of {', '.join(MAGNITUDES)}")


def reconstruct_slice(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    prior: EDMDenoiser | ComplexPrior,
    settings: SamplerSettings,
    calibration: Calibration | None = None,
    extra_terms: Sequence[Likelihood] = (),
) -> SliceResult:
    """Sample the posterior for one slice.

    Parameters
    ----------
    kspace : torch.Tensor
        Undersampled k-space, complex ``(coils, H, W)`` (zeros where not sampled).
    mask : torch.Tensor
        ``(W,)`` or ``(H, W)`` sampling mask.
    prior : EDMDenoiser or ComplexPrior
        The score network (on the device to use), or an adapter of it made once for many slices.
    settings : SamplerSettings
    calibration : Calibration, optional
        The slice's calibration (:func:`mri_score.calibration.calibrate`); computed here when None.
    extra_terms : sequence of Likelihood
        Likelihood terms besides the k-space data (e.g. classifier guidance), in scaled units.

    Returns
    -------
    SliceResult

    Notes
    -----
    With ``settings.grid_factor`` ``f > 1`` the sampler works on the ``(fH, fW)`` grid
    (:func:`mri_score.resolution.fine_shape`): the forward model is
    ``Sense(maps_fine, mask, kspace_shape=(H, W))`` (fine-grid k-space cropped to the measured
    matrix, then masked), so ``y`` and σ_y are the measured ones; the maps are Fourier-interpolated
    (:func:`operators.fourier_resample`).  The fine grid's image of the same object has amplitude
    ``1/a``, ``a = √(fH·fW / (H·W))`` (orthonormal FFT), so the data are divided by ``scale / a``
    and the prior sees the intensities it was trained at.  The samples come back to the measured
    grid through k-space (:func:`operators.image_to_grid`).
    """
    t0 = time.time()
    cprior = prior if isinstance(prior, ComplexPrior) else ComplexPrior(prior)
    cprior.set_precision(settings.precision)
    device = cprior.device
    kspace = kspace.to(device)
    mask_t = torch.as_tensor(mask, dtype=torch.float32).to(device)
    kspace = kspace * mask_t
    cal = calibrate(kspace, mask_t, settings.maps) if calibration is None else calibration.to(device)
    maps, scale, sigma_y = cal.maps, cal.scale, cal.sigma_y
    measured = tuple(kspace.shape[-2:])
    grid = fine_shape(measured, settings.grid_factor)
    if grid == measured:
        data = GaussianKspaceLikelihood(Sense(maps, mask_t), kspace / scale, cal.sigma_y_scaled)
        grid_scale = scale
    else:
        grid_scale = scale / ((grid[0] * grid[1]) / (measured[0] * measured[1])) ** 0.5
        op = Sense(fourier_resample(maps, grid), mask_t, kspace_shape=measured)
        data = GaussianKspaceLikelihood(op, kspace / grid_scale, max(sigma_y / grid_scale, 1e-4))
    zero_filled = sense1_combine(ifft2c(kspace), maps)
    gen = torch.Generator(device="cpu").manual_seed(int(settings.seed))
    x_init = data.zero_filled().expand(settings.samples, -1, -1).clone()
    run = SAMPLERS[settings.sampler]
    result = run(cprior, [data, *extra_terms], x_init, gen, int(settings.steps), settings.options)
    samples = result.samples.detach() * grid_scale
    if grid != measured:
        samples = image_to_grid(samples, measured)
    mean = samples.mean(dim=0)
    mags = output_magnitude(samples, maps, sigma_y, settings.magnitude)
    std = mags.std(dim=0) if settings.samples > 1 else torch.zeros_like(mags[0])
    return SliceResult(
        image=output_magnitude(mean, maps, sigma_y, settings.magnitude).cpu(),
        mean=mean.cpu(), std=std.cpu(), zero_filled=zero_filled.cpu(), nfe=result.nfe,
        seconds=time.time() - t0, sigma_y=sigma_y, scale=scale, calibration=cal,
    )
