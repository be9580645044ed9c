"""Posterior sampling of k-space slices: calibration, a sampler, mean and std in the output convention.

This module is the shared core of :func:`mri_score.pipeline.reconstruct_volume`
(the ``reconstruct`` command line and the benchmarks).  :func:`reconstruct_slices` samples a batch of
slices of one volume together (the network and the data-consistency step see ``B·K`` images at once);
:func:`reconstruct_slice` is its batch of one.  Only the undersampled
k-space and its mask are used (never a fully sampled answer).

Output convention (:data:`mri_score.request.MAGNITUDES`, ``ReconRequest.magnitude``): the default
``sense`` is the coil-combined posterior-mean magnitude ``|x|``, the estimate of the
anatomy; ``rss`` is the expected root-sum-of-squares of the *noisy* coil images
(:func:`operators.expected_rss`, noise floor included), the option for scoring against
fastMRI's noisy RSS targets.  The std follows the same convention.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mri_score.calibration import Calibration, calibrate, check_acs
from mri_score.errors import InputError
from mri_score.fastmri_io import center_crop
from mri_score.likelihood import GaussianKspaceLikelihood, Likelihood
from mri_score.network import EDMDenoiser
from mri_score.prior import ComplexPrior
from mri_score.request import MAGNITUDES, ReconRequest
from mri_score.resolution import fine_shape
from mri_score.samplers import SAMPLERS
from mri_score.samplers.dds import CoarseStage, DDSConfig, sample_dds
from operators import Sense, expected_rss, fourier_resample, ifft2c, image_to_grid, sense1_combine
from operators.noise import estimate_sigma_y

# re-exported: the σ_y estimator (operators.noise) and the ACS check (mri_score.calibration)
__all__ = ["MAGNITUDES", "Calibration", "SliceResult", "check_acs", "estimate_sigma_y", "output_magnitude",
           "reconstruct_slice", "reconstruct_slices"]

@dataclass
class SliceResult:
    """One slice's reconstruction.

    ``image`` and ``std``: reconstruction and per-pixel std (real, ``request.magnitude`` convention; the std
    is None for one sample);
    ``mean``: complex posterior mean; ``zero_filled``: complex SENSE-1 zero-filled image (all in the
    data's units, ``(H, W)``, on the CPU); ``nfe``: network evaluations; ``seconds``: wall time;
    ``sigma_y`` and ``scale``: from ``calibration``, the slice's :class:`Calibration`.
    """

    image: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor | None
    zero_filled: torch.Tensor
    nfe: int
    seconds: float
    sigma_y: float
    scale: float
    calibration: Calibration


@dataclass
class VolumeResult:
    """A reconstructed volume in the output convention (``request.magnitude``), cropped.

    Attributes
    ----------
    image, zero_filled : np.ndarray
        float32 ``(slices, h, w)``: reconstruction and ``|zero-filled SENSE-1|``.
    std : np.ndarray or None
        float32 ``(slices, h, w)``: per-pixel posterior std; None with one sample (``request.samples == 1``).
    grid_factor : float
        The sampling grid used, over the measured matrix (an ``auto`` grid resolved).
    nfe : list of int
        Network evaluations per slice.
    seconds : list of float
        Wall time per slice (sampling and, when not given, calibration).
    calibrations : list of Calibration
        The per-slice calibrations used.
    means : list of torch.Tensor
        complex64 ``(H, W)`` per slice: the posterior mean in the data's units, uncropped.
    adapted : dict, optional
        With test-time adaptation: the pilot's NFE and seconds and the adaptation's record
        (:func:`mri_score.adapt.adapt_denoiser`); both are included in ``nfe`` and ``seconds``.
    batch_slices : int
        Slices sampled together (the last batch of a volume may be smaller); 1 when slice by slice.
    """

    image: np.ndarray
    std: np.ndarray | None
    zero_filled: np.ndarray
    grid_factor: float = 1.0
    nfe: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    calibrations: list[Calibration] = field(default_factory=list)
    means: list[torch.Tensor] = field(default_factory=list)
    adapted: dict | None = None
    batch_slices: int = 1
    _parts: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)

    def add_slice(self, image: torch.Tensor, std: torch.Tensor | None, zero_filled: torch.Tensor,
                  crop: tuple[int, int] | None, nfe: int, seconds: float, calibration: Calibration,
                  mean: torch.Tensor) -> None:
        """Append one slice's real ``(H, W)`` image, std (or None) and ``|zero-filled|`` (centre-cropped to ``crop``)
        and its record; :meth:`finish` stacks them."""
        if crop is not None:
            image, zero_filled = center_crop(image, crop), center_crop(zero_filled, crop)
            std = None if std is None else center_crop(std, crop)
        self._parts.setdefault("image", []).append(image.numpy())
        self._parts.setdefault("zero_filled", []).append(zero_filled.numpy())
        if std is not None:
            self._parts.setdefault("std", []).append(std.numpy())
        self.nfe.append(nfe)
        self.seconds.append(seconds)
        self.calibrations.append(calibration)
        self.means.append(mean)

    def finish(self) -> VolumeResult:
        """Stack the added slices into ``image``, ``std`` (None without) and ``zero_filled`` (float32); returns self."""
        parts = self._parts
        self.image = np.stack(parts["image"]).astype(np.float32)
        self.std = np.stack(parts["std"]).astype(np.float32) if parts.get("std") else None
        self.zero_filled = np.stack(parts["zero_filled"]).astype(np.float32)
        return self


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
    request: ReconRequest,
    calibration: Calibration | None = None,
    extra_terms: Sequence[Likelihood] = (),
    pixel_mm: tuple[float, float] | None = None,
) -> SliceResult:
    """Sample the posterior for one slice: :func:`reconstruct_slices` of a batch of one.

    Parameters
    ----------
    kspace : torch.Tensor
        Undersampled k-space, complex ``(coils, H, W)`` (zeros where not sampled).
    mask : torch.Tensor
        ``(W,)`` or ``(H, W)`` sampling mask.
    prior : EDMDenoiser or ComplexPrior
        The score network (on the device to use), or its runtime made once for many slices.
    request : ReconRequest
        The settings; the slice is sampled with ``request.seed``.
    calibration : Calibration, optional
        The slice's calibration (:func:`mri_score.calibration.calibrate`); computed here when None.
    extra_terms : sequence of Likelihood
        Likelihood terms besides the k-space data (e.g. classifier guidance), in scaled units.
    pixel_mm : tuple of float, optional
        In-plane pixel size (mm) for an ``auto`` grid; unknown (native grid) when None.

    Returns
    -------
    SliceResult
    """
    return reconstruct_slices(kspace[None], mask, prior, request, calibrations=[calibration], extra_terms=extra_terms,
                              pixel_mm=pixel_mm)[0]


def _data_term(kspace: torch.Tensor, mask: torch.Tensor, cal: Calibration, grid: tuple[int, int]
               ) -> tuple[GaussianKspaceLikelihood, float]:
    """One slice's k-space term on the sampling ``grid`` and the scale its samples are multiplied by (see Notes above)."""
    measured = tuple(kspace.shape[-2:])
    if grid == measured:
        return GaussianKspaceLikelihood(Sense(cal.maps, mask), kspace / cal.scale, cal.sigma_y_scaled), cal.scale
    grid_scale = cal.scale / ((grid[0] * grid[1]) / (measured[0] * measured[1])) ** 0.5
    op = Sense(fourier_resample(cal.maps, grid), mask, kspace_shape=measured)
    return GaussianKspaceLikelihood(op, kspace / grid_scale, max(cal.sigma_y / grid_scale, 1e-4)), grid_scale


def _coarse_stage(kspace: torch.Tensor, mask: torch.Tensor, cals: Sequence[Calibration], grid: tuple[int, int],
                  k: int, extra_terms: Sequence[Likelihood], request: ReconRequest) -> CoarseStage | None:
    """DDS's first steps (:meth:`~mri_score.samplers.dds.DDSConfig.coarse_count`) on the measured matrix when the
    sampling ``grid`` is finer (:class:`mri_score.samplers.dds.CoarseStage`): the slices' data terms there, their
    zero-filled start repeated ``k`` times, and the lift to ``grid`` (:func:`operators.fourier_resample`: the fine
    grid's scaled units, since its data are divided by ``scale / a``, Notes of :func:`reconstruct_slices`).  None when
    there is nothing coarser or the option is off."""
    measured = tuple(kspace.shape[-2:])
    if grid == measured or not isinstance(request.options, DDSConfig) or request.options.coarse_count(
            int(request.steps)) <= 0:
        return None
    data = GaussianKspaceLikelihood.stack([_data_term(kspace[b], mask, cal, measured)[0] for b, cal in enumerate(cals)])
    return CoarseStage(likelihoods=[data, *extra_terms], x_init=_repeat_samples(data.zero_filled(), k),
                       lift=lambda x: fourier_resample(x, grid))


def _repeat_samples(start: torch.Tensor, k: int) -> torch.Tensor:
    """Each slice's start ``(B, H, W)`` repeated for its ``k`` samples: ``(B·k, H, W)``, rows ``b·k … b·k + k − 1``
    slice ``b``'s (:mod:`mri_score.samplers.base`)."""
    return start[:, None].expand(start.shape[0], k, *start.shape[-2:]).reshape(-1, *start.shape[-2:]).clone()


def reconstruct_slices(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    prior: EDMDenoiser | ComplexPrior,
    request: ReconRequest,
    calibrations: Sequence[Calibration | None] | None = None,
    extra_terms: Sequence[Likelihood] = (),
    pixel_mm: tuple[float, float] | None = None,
) -> list[SliceResult]:
    """Sample the posterior of ``B`` slices of one volume together (one batch through the network and the data step).

    Slice ``b`` is sampled with seed ``request.seed + b`` from its own generator, its own calibration,
    σ_y and data weight, so its result is the one it gets alone (:func:`reconstruct_slice`) to
    floating-point rounding (the network and the FFTs run on a larger batch); the batch only changes
    the speed and the memory used.

    Parameters
    ----------
    kspace : torch.Tensor
        Undersampled k-space, complex ``(B, coils, H, W)`` (zeros where not sampled).
    mask : torch.Tensor
        ``(W,)`` or ``(H, W)`` sampling mask shared by the slices.
    prior : EDMDenoiser or ComplexPrior
        The score network (on the device to use), or its runtime made once for many slices.
    request : ReconRequest
        The settings.  An ``auto`` grid is resolved here for ``pixel_mm``, the mask and the matrix
        (:meth:`ReconRequest.for_pixels`).
    calibrations : sequence of Calibration or None, optional
        One per slice (:func:`mri_score.calibration.calibrate`); a slice's is computed here when it is None.
    extra_terms : sequence of Likelihood
        Likelihood terms besides the k-space data that act on each image alone (e.g. classifier guidance),
        in scaled units; they see the whole batch ``(B·K, H, W)``.
    pixel_mm : tuple of float, optional
        In-plane pixel size (mm) for an ``auto`` grid; unknown (native grid) when None.

    Returns
    -------
    list of SliceResult
        One per slice; ``seconds`` is the batch's wall time over ``B`` and ``nfe`` the network evaluations
        each slice received.

    Notes
    -----
    With a grid factor ``f > 1`` (``request.grid``) the sampler works on the ``(fH, fW)`` grid
    (:func:`mri_score.resolution.fine_shape`): the forward model is
    ``Sense(maps_fine, mask, kspace_shape=(H, W))`` (fine-grid k-space cropped to the measured
    matrix, then masked), so ``y`` and σ_y are the measured ones; the maps are Fourier-interpolated
    (:func:`operators.fourier_resample`).  The fine grid's image of the same object has amplitude
    ``1/a``, ``a = √(fH·fW / (H·W))`` (orthonormal FFT), so the data are divided by ``scale / a``
    and the prior sees the intensities it was trained at.  The samples come back to the measured
    grid through k-space (:func:`operators.image_to_grid`).
    """
    t0 = time.time()
    b_count = int(kspace.shape[0])
    if calibrations is not None and len(calibrations) != b_count:
        raise InputError(f"{len(calibrations)} calibrations for {b_count} slices")
    cprior = prior if isinstance(prior, ComplexPrior) else ComplexPrior(prior)
    cprior.set_precision(request.precision)
    request = request.for_pixels(pixel_mm, getattr(cprior.model, "meta", None), mask, tuple(kspace.shape[-2:]))
    device = cprior.device
    mask_t = torch.as_tensor(mask, dtype=torch.float32).to(device)
    kspace = kspace.to(device) * mask_t
    cals = [calibrate(kspace[b], mask_t, request.maps, maps_phase=request.maps_phase,
                      maps_threshold=request.maps_threshold)
            if calibrations is None or calibrations[b] is None else calibrations[b].to(device) for b in range(b_count)]  # type: ignore[union-attr]
    measured = tuple(kspace.shape[-2:])
    grid = fine_shape(measured, request.grid_factor)
    terms, scales = zip(*(_data_term(kspace[b], mask_t, cals[b], grid) for b in range(b_count)))
    data = GaussianKspaceLikelihood.stack(terms)
    gens = [torch.Generator(device="cpu").manual_seed(int(request.seed) + b) for b in range(b_count)]
    k = request.samples
    start = data.zero_filled()  # (B, fH, fW)
    x_init = _repeat_samples(start, k)
    run = SAMPLERS[request.sampler]
    # the coarse stage is DDS's own argument: a sampler registered in its place keeps the documented interface
    extra = {"coarse": _coarse_stage(kspace, mask_t, cals, grid, k, extra_terms, request)} if run is sample_dds else {}
    result = run(cprior, [data, *extra_terms], x_init, gens, int(request.steps), request.options, **extra)
    batch = result.samples.detach().reshape(b_count, k, *start.shape[-2:])
    seconds = (time.time() - t0) / b_count
    out = []
    for b, cal in enumerate(cals):
        samples = batch[b] * scales[b]
        if grid != measured:
            samples = image_to_grid(samples, measured)
        mean = samples.mean(dim=0)
        std = output_magnitude(samples, cal.maps, cal.sigma_y, request.magnitude).std(dim=0).cpu() if k > 1 else None
        out.append(SliceResult(
            image=output_magnitude(mean, cal.maps, cal.sigma_y, request.magnitude).cpu(), mean=mean.cpu(), std=std,
            zero_filled=sense1_combine(ifft2c(kspace[b]), cal.maps).cpu(), nfe=result.nfe, seconds=seconds,
            sigma_y=cal.sigma_y, scale=cal.scale, calibration=cal,
        ))
    return out
