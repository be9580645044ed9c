"""Volume-level reconstruction: the mask to use, per-slice calibration and sampling, crop, output file.

:func:`reconstruct_volume` is the one loop over slices that the ``reconstruct``
command line, every benchmark and the tests share; :func:`reconstruct_file` adds
reading a fastMRI file, choosing its mask, the output file and the PNG panel.
Both take one :class:`~mri_score.request.ReconRequest`.  No argument parsing here:
the command line (:mod:`mri_score.reconstruct`) turns flags into a request.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mri_score.adapt import adapt_denoiser
from mri_score.batching import free_memory, resolve_batch_slices, slice_working_set
from mri_score.calibration import Calibration, check_acs
from mri_score.errors import InputError, one_line
from mri_score.fastmri_io import (
    FastMRIVolume,
    center_crop,
    recon_crop_size,
    save_reconstruction,
    write_fastmri_file,
)
from mri_score.inputs import input_kind, read_volume
from mri_score.likelihood import Likelihood
from mri_score.metrics import volume_metrics
from mri_score.network import EDMDenoiser
from mri_score.posterior import VolumeResult, reconstruct_slices
from mri_score.precision import choose_precision, precision_name
from mri_score.prior import ComplexPrior
from mri_score.request import ReconRequest
from mri_score.resolution import fine_shape
from mri_score.uncertainty import settings_key
from operators.errors import OperatorInputError
from operators.grid import fourier_resample
from operators.masks import make_mask

#: Retrospective acceleration used for a fully sampled file when none is asked for.
DEFAULT_ACCELERATION = 4.0


#: A trajectory's slice works on the Toeplitz embedding, twice the sampling grid along each axis (4x its pixels).
TOEPLITZ_WORKSPACE = 4


def check_memory(vol: FastMRIVolume, samples: int, device: torch.device, grid_factor: float = 1.0) -> None:
    """Refuse (:class:`InputError` naming the file) before allocating when one slice's working set would not fit.

    The working set is that of the sampling grid (:func:`mri_score.resolution.fine_shape` of the
    matrix and ``grid_factor``), so a header whose field of view asks ``--grid auto`` for a much finer
    grid is refused here, not by the operating system.
    """
    _, c, h, w = vol.kspace.shape
    require_fits(vol.path, samples, c, (h, w), fine_shape((h, w), grid_factor), device)


def require_fits(path: str | os.PathLike[str], samples: int, coils: int, matrix: tuple[int, int],
                 grid: tuple[int, int], device: torch.device, workspace: int = 1) -> None:
    """Refuse (:class:`InputError` naming ``path``) when one slice of ``samples`` posterior samples on ``coils`` coils
    would not fit in :func:`mri_score.batching.free_memory`: :func:`mri_score.batching.slice_working_set` on the
    sampling ``grid`` (``(H, W)``, the measured ``matrix`` refined by ``--grid``) times ``workspace`` (1 on the
    Cartesian path; 4 on a trajectory, whose Toeplitz Gram works on the twice-as-large embedding of every axis)."""
    need = workspace * slice_working_set(samples, coils, grid)
    free = free_memory(device)
    if need > free:
        where = "" if tuple(grid) == tuple(matrix) else \
            f" on its {grid[0]}x{grid[1]} sampling grid (--grid; native is {matrix[0]}x{matrix[1]})"
        raise InputError(f"{path}: one slice needs about {need / 2**30:.1f} GiB{where} but only "
                         f"{free / 2**30:.1f} GiB is free")


def undersampling_mask(vol: FastMRIVolume, request: ReconRequest) -> tuple[np.ndarray, float, str]:
    """The mask to reconstruct ``vol`` with.

    A test-split file (undersampled) uses its own mask unless ``request.accel`` is given; otherwise a
    retrospective fastMRI mask of ``request.mask_type`` at ``request.accel`` (default 4) with
    ``request.center_fraction`` is drawn, seeded by the file name, with the columns outside the
    header's encoded range removed.

    Returns
    -------
    mask : np.ndarray
        float32 ``(W,)`` or ``(H, W)``.
    acceleration : float
        The file's ``acceleration`` attr (or its sampled fraction) or the retrospective one.
    source : str
        ``"file"`` or the mask type.
    """
    h, w = vol.kspace.shape[-2:]
    accel, mask_type = request.accel, request.mask_type
    if vol.is_undersampled and accel is None:
        mask = vol.sampling_mask
        acc = float(vol.attrs.get("acceleration", w / max(1.0, float(mask.sum()) / (h if mask.ndim == 2 else 1))))
        return mask, acc, "file"
    acc = accel if accel is not None else DEFAULT_ACCELERATION
    mask, _ = make_mask(mask_type, acc, request.center_fraction, (h, w), vol.path.name)
    if mask.ndim == 1:
        mask[: vol.padding_left] = 0
        mask[vol.padding_right :] = 0
    return mask, acc, f"{mask_type}"


def require_every_coil(request: ReconRequest, where: str = "") -> None:
    """Cartesian data keep every coil: a number of virtual coils in ``request`` is refused in one line (``where``
    prefixes it, e.g. the file); ``auto`` and ``all`` pass."""
    if isinstance(request.virtual_coils, int):
        raise InputError(f"{where}virtual coils ({request.virtual_coils}) apply to radial and spiral data only; "
                         "Cartesian data keep every coil (auto or all)")


def reconstruct_volume(
    kspace: np.ndarray,
    mask: np.ndarray,
    prior: EDMDenoiser | ComplexPrior,
    request: ReconRequest,
    calibrations: Sequence[Calibration | None] | None = None,
    crop: tuple[int, int] | None = None,
    extra_terms: Sequence[Likelihood] = (),
    pixel_mm: tuple[float, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_slices: int | str = "auto",
) -> VolumeResult:
    """Reconstruct every slice of a volume in batches of slices; slice ``i`` is sampled with seed ``request.seed + i``.

    Parameters
    ----------
    kspace : np.ndarray
        complex64 ``(slices, coils, H, W)``; multiplied by ``mask`` before use (never modified).
    mask : np.ndarray
        float32 ``(W,)`` or ``(H, W)``, shared by all slices.
    prior : EDMDenoiser or ComplexPrior
        The score network, on the device to use, or its runtime made once per run (e.g. a guided prior,
        :class:`mri_score.guidance.GuidedPrior`).
    request : ReconRequest
        The settings.  ``request.grid`` ``auto`` is resolved once for ``pixel_mm``
        (:meth:`ReconRequest.for_pixels`); ``request.adapt`` turns on test-time adaptation
        (:mod:`mri_score.adapt`: a pilot reconstruction, the prior fine-tuned on its means at the
        sampling grid, then the reconstruction with the adapted copy).
    calibrations : sequence of Calibration, optional
        One per slice (e.g. computed once and shared with baselines); computed from each
        undersampled slice when None (or where an entry is None).
    crop : tuple of int, optional
        ``(h, w)`` centre crop of the outputs (fastMRI's recon size); no crop when None.
    extra_terms : sequence of Likelihood
        Likelihood terms besides each slice's k-space data (e.g. classifier guidance), in the scaled units.
    pixel_mm : tuple of float, optional
        In-plane pixel size in mm (a file header's field of view over its matrix); unknown when None.
    progress : callable, optional
        Called as ``progress(done, total)`` after each batch of slices (e.g. a progress bar).
    batch_slices : int or "auto"
        Slices sampled together (:func:`mri_score.posterior.reconstruct_slices`; ``auto``: as many as fit in the
        free memory, :func:`mri_score.batching.resolve_batch_slices`).  It changes the speed and the memory,
        not the result (to floating-point rounding).  A batch that runs out of CUDA memory is halved and rerun.

    Returns
    -------
    VolumeResult
    """
    s = kspace.shape[0]
    if calibrations is not None and len(calibrations) != s:
        raise InputError(f"{len(calibrations)} calibrations for {s} slices")
    require_every_coil(request)
    runtime = prior if isinstance(prior, ComplexPrior) else ComplexPrior(prior)
    request = request.for_pixels(pixel_mm, getattr(runtime.model, "meta", None), mask, tuple(kspace.shape[-2:]))
    if request.adapt is not None:
        return _reconstruct_adapted(kspace, mask, runtime, request, calibrations, crop, extra_terms, batch_slices)
    grid = fine_shape(tuple(kspace.shape[-2:]), request.grid_factor)
    batch = resolve_batch_slices(batch_slices, s, request.samples, kspace.shape[1], grid, runtime.device)
    mask_t = torch.from_numpy(np.asarray(mask))
    out = VolumeResult(image=np.empty(0), std=None, zero_filled=np.empty(0), grid_factor=request.grid_factor,
                       batch_slices=batch)
    i = 0
    while i < s:
        b = min(batch, s - i)
        try:
            results = reconstruct_slices(torch.from_numpy(kspace[i : i + b]), mask_t, runtime,
                                         request.replace(seed=request.seed + i),
                                         calibrations=None if calibrations is None else list(calibrations[i : i + b]),
                                         extra_terms=extra_terms)
        except torch.cuda.OutOfMemoryError:  # the same class as torch.OutOfMemoryError (torch >= 2.5)
            if b == 1:
                raise
            batch = out.batch_slices = b // 2  # each slice's seed and noise are its own: the rerun is the same
            if runtime.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        for res in results:
            out.add_slice(res.image, res.std, res.zero_filled.abs(), crop, res.nfe, res.seconds, res.calibration,
                          res.mean)
        i += b
        if progress is not None:
            progress(i, s)
    return out.finish()


def _reconstruct_adapted(
    kspace: np.ndarray,
    mask: np.ndarray,
    runtime: ComplexPrior,
    request: ReconRequest,
    calibrations: Sequence[Calibration | None] | None,
    crop: tuple[int, int] | None,
    extra_terms: Sequence[Likelihood],
    batch_slices: int | str = "auto",
) -> VolumeResult:
    """:func:`reconstruct_volume` with test-time adaptation (pilot, adapt, final pass; see :mod:`mri_score.adapt`)."""
    adapt = request.adapt
    assert adapt is not None
    if type(runtime) is not ComplexPrior:
        raise InputError("test-time adaptation works on the plain prior; it cannot be combined with guidance")
    t0 = time.perf_counter()
    pilot_nfe = adapt.pilot_nfe if adapt.pilot_nfe is not None else max(1, int(request.steps) // 2)
    plain = request.replace(adapt=None)
    pilot = reconstruct_volume(kspace, mask, runtime, plain.replace(steps=pilot_nfe, samples=1),
                               calibrations=calibrations, extra_terms=extra_terms, batch_slices=batch_slices)
    images = torch.stack([m / cal.scale for m, cal in zip(pilot.means, pilot.calibrations)])
    grid = fine_shape(kspace.shape[-2:], request.grid_factor)
    if grid != tuple(images.shape[-2:]):  # adapt at the pixel size the final pass samples at (its values kept)
        images = fourier_resample(images, grid)
    adapted = adapt_denoiser(runtime.model, images, adapt, seed=request.seed)
    overhead = time.perf_counter() - t0
    out = reconstruct_volume(kspace, mask, adapted, plain, calibrations=pilot.calibrations, crop=crop,
                             extra_terms=extra_terms, batch_slices=batch_slices)
    s = kspace.shape[0]
    out.nfe = [a + b for a, b in zip(out.nfe, pilot.nfe)]
    out.seconds = [sec + overhead / s for sec in out.seconds]
    out.adapted = {**adapted.adapted, "pilot_nfe_per_slice": pilot_nfe, "pilot_and_adapt_seconds": overhead}
    return out


def reconstruct_file(
    path: Path,
    prior: ComplexPrior,
    request: ReconRequest,
    out_dir: str | os.PathLike[str],
    prior_name: str = "default",
    extra_terms: Sequence[Likelihood] = (),
    extra_attrs: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_slices: int | str = "auto",
    std_calibration_lookup: Callable[[str], dict | None] | None = None,
    kind: str | None = None,
) -> dict:
    """Reconstruct one input file (:func:`mri_score.inputs.read_volume`) into ``out_dir/<stem>.h5``; return a summary.

    With ``request.png`` a PNG panel ``<stem>.png`` is written, and ``request.exports`` adds
    ``<stem>.nii.gz``/``<stem>_std.nii.gz`` (NIfTI), ``<stem>_dicom/``/``<stem>_std_dicom/`` (DICOM series) and
    ``<stem>_reconstruction.{cfl,hdr}`` (BART): :func:`output_paths`.  Every output is written atomically, and
    when one fails the others of this file are removed (nothing partial is left).

    The output holds ``reconstruction`` (float32, recon-size crop), ``reconstruction_std`` (with
    ``request.samples > 1``), the ``mask`` used, the request's identity as the ``request`` attr
    (:meth:`ReconRequest.identity`) and its main settings as attrs (``precision``: the network's
    arithmetic, bf16 or fp32; ``grid_factor``: the sampling grid used, an ``auto`` grid resolved
    for the header's pixel size).  ``prior`` is the run's prior runtime (made once per run; a
    guided prior for a condition); ``prior_name`` is recorded in the attrs and names the prior in
    error messages.  The summary has the timing, NFE, acceleration, mask source, the output path
    and, for a fully sampled file with a target, PSNR/SSIM/NMSE against it (``target`` says which);
    it is also stored in the output's ``summary`` attr (JSON).  ``extra_attrs`` are added to the
    output's attrs (e.g. :func:`mri_score.runs.run_key` as ``run_settings``); ``extra_terms`` are
    passed to every slice.  ``std_calibration_lookup(key)`` returns the prior's calibration sidecar entry for a
    calibration key (e.g. :func:`mri_score.reconstruct.std_calibration_entry`, None when there is none): the entry of
    the request's key (:func:`mri_score.uncertainty.settings_key`) scales ``reconstruction_std`` by its ``factor``,
    and the ``std_calibration`` attr records the factor used, or ``none`` (raw K-sample std).  ``kind`` is the
    input's :func:`mri_score.inputs.input_kind` when the caller has sniffed it already.  ``progress`` is called
    as ``progress(done, total)`` after each batch of slices.  ``batch_slices`` (a count or ``auto``) is how many
    slices are sampled together (:func:`reconstruct_volume`); it changes the speed and the memory, not the output,
    and is recorded in the summary (``batch_slices``), not in the request.

    The summary's metrics are against the file's noise-free ``truth`` where it has one (simulated data: the
    like-for-like target of the default ``sense`` output), else against its fastMRI target (the noisy RSS of
    the fully sampled data, which ``--magnitude rss`` matches); ``target`` in the summary says which.

    A non-Cartesian MRD file (radial, spiral) goes through :func:`reconstruct_noncartesian_file`, which looks its
    std calibration up with the same ``std_calibration_lookup`` under its trajectory's key.
    """
    kind = kind or input_kind(path)
    if kind == "mrd_noncartesian":
        return reconstruct_noncartesian_file(path, prior, request, out_dir, prior_name, extra_terms, extra_attrs,
                                             std_calibration_lookup)
    require_every_coil(request, f"{path}: ")
    std_calibration = None if std_calibration_lookup is None else std_calibration_lookup(settings_key(request))
    vol = read_volume(path, kind)
    mask, accel_used, mask_src = undersampling_mask(vol, request)
    check_acs(mask, str(path))
    channels = prior.model.cfg.in_channels
    if channels != 2:
        raise InputError(f"{prior_name}: prior has {channels} image channels; complex MR images need 2")
    try:
        request = request.for_pixels(vol.pixel_mm, getattr(prior.model, "meta", None), mask, vol.kspace.shape[-2:])
    except InputError as err:
        raise InputError(f"{prior_name}: {err}") from None
    check_memory(vol, request.samples, prior.device, request.grid_factor)
    s, _, h, w = vol.kspace.shape
    crop = recon_crop_size((h, w), vol.recon_size)
    t0 = time.time()
    try:
        res = reconstruct_volume(vol.kspace, mask, prior, request, crop=crop, extra_terms=extra_terms,
                                 progress=progress, batch_slices=batch_slices)
    except (OperatorInputError, np.linalg.LinAlgError) as err:  # coil maps or a solver failed on this file's data
        raise InputError(f"{path}: {one_line(err)}") from None
    seconds = time.time() - t0
    nfe = sum(res.nfe)
    summary = {"file": str(path), "seconds": seconds, "seconds_per_slice": seconds / s, "nfe_per_slice": nfe // s,
               "slices": s, "batch_slices": res.batch_slices, "acceleration": accel_used, "mask": mask_src}
    target, what = None, ""
    if vol.truth is not None:
        target, what = vol.truth, "the file's noise-free truth"
    elif vol.target is not None and not vol.is_undersampled:
        target, what = vol.target, "the file's noisy RSS target"
    if target is not None:
        target = center_crop(target, recon_crop_size(target.shape[-2:], vol.recon_size))
        try:
            summary.update(volume_metrics(target, res.image))
            summary["target"] = what
        except ValueError as err:  # never dropped silently: the summary says why there is no score
            summary["target"] = f"not scored against {what}: {one_line(err)}"
        if target.shape != res.image.shape:
            target = None  # the PNG's |error| panel needs the same grid
    attrs = {"sampler": request.sampler, "steps": int(request.steps), "samples": request.samples,
             "seed": request.seed, "magnitude": request.magnitude, "acceleration": accel_used,
             "mask_source": mask_src, "nfe_per_slice": nfe // s, "grid_factor": float(res.grid_factor),
             "precision": precision_name(choose_precision(prior.device, request.precision)),
             "prior": prior_name, "options": json.dumps(request.options.as_dict()),
             "request": json.dumps(request.identity(), sort_keys=True),
             "acquisition": str(vol.attrs.get("acquisition", "")), "patient_id": str(vol.attrs.get("patient_id", "")),
             "summary": json.dumps({k: v for k, v in summary.items() if k != "file"}, default=float),
             "adapt": "none" if res.adapted is None else json.dumps(res.adapted, sort_keys=True),
             **(extra_attrs or {})}
    geometry = ExportGeometry.of_volume(vol)
    return write_outputs(path, out_dir, request, res, {"mask": mask}, attrs, summary, target, geometry, prior_name,
                         std_calibration, title=f"{path.name} {request.sampler} R={accel_used:g}")


def reconstruct_noncartesian_file(path: Path, prior: ComplexPrior, request: ReconRequest,
                                  out_dir: str | os.PathLike[str], prior_name: str = "default",
                                  extra_terms: Sequence[Likelihood] = (), extra_attrs: dict | None = None,
                                  std_calibration_lookup: Callable[[str], dict | None] | None = None) -> dict:
    """Reconstruct one non-Cartesian MRD file (:func:`mri_score.noncartesian.read_noncartesian_mrd`, prewhitened)
    with the request's sampler on the NUFFT SENSE operator; outputs as :func:`reconstruct_file`.

    The std is calibrated per trajectory: ``std_calibration_lookup(key)`` (e.g.
    :func:`mri_score.reconstruct.std_calibration_entry` of the run's prior) is asked for the prior's sidecar entry
    under ``key = mri_score.noncartesian.calibration_key(request, volume)`` (the request's settings, the trajectory
    kind, its number of spokes or interleaves and the matrix; fitted by ``benchmarks/run_noncartesian_calibration.py``),
    and an entry found scales ``reconstruction_std`` by its ``factor`` (the ``std_calibration`` attr records it, key
    included).  Without one (or without a lookup) the std is the raw K-sample std and the ``std_calibration`` attr
    names the key looked up; a factor fitted on Cartesian masks or for another trajectory never applies.  Metrics
    are against the file's noise-free target when it has one.
    """
    from mri_score.noncartesian import (
        calibration_key,
        read_noncartesian_mrd,
        reconstruct_noncartesian_volume,
        resolve_grid,
        virtual_coil_count,
    )

    vol = read_noncartesian_mrd(path)
    resolved = resolve_grid(request, vol, getattr(prior.model, "meta", None))  # the request keeps `auto` for its key
    grid = fine_shape(vol.matrix, resolved.grid_factor)
    require_fits(path, request.samples, virtual_coil_count(vol.coils, request.virtual_coils), vol.matrix, grid,
                 prior.device, workspace=TOEPLITZ_WORKSPACE)
    key = calibration_key(request, vol)
    std_cal = std_calibration_lookup(key) if std_calibration_lookup is not None else None
    t0 = time.time()
    try:
        res = reconstruct_noncartesian_volume(vol, prior, resolved, extra_terms=extra_terms)
    except (OperatorInputError, np.linalg.LinAlgError) as err:
        raise InputError(f"{path}: {one_line(err)}") from None
    seconds = time.time() - t0
    s = vol.samples.shape[0]
    nfe = sum(res.nfe)
    summary = {"file": str(path), "seconds": seconds, "seconds_per_slice": seconds / s, "nfe_per_slice": nfe // s,
               "slices": s, "acceleration": float("nan"), "mask": f"{vol.trajectory} trajectory"}
    target = vol.target
    if target is not None:
        try:
            summary.update(volume_metrics(target, res.image))
            summary["target"] = "the file's noise-free truth"
        except ValueError as err:
            summary["target"] = f"not scored against the file's noise-free truth: {one_line(err)}"
        if target.shape != res.image.shape:
            target = None
    attrs = {"sampler": request.sampler, "steps": int(request.steps), "samples": request.samples,
             "seed": request.seed, "magnitude": request.magnitude, "trajectory": vol.trajectory,
             "nfe_per_slice": nfe // s, "grid_factor": float(res.grid_factor),
             "virtual_coils": virtual_coil_count(vol.coils, request.virtual_coils), "coils": vol.coils,
             "precision": precision_name(choose_precision(prior.device, request.precision)),
             "prior": prior_name, "request": json.dumps(resolved.identity(), sort_keys=True),
             "summary": json.dumps({k: v for k, v in summary.items() if k != "file"}, default=float),
             **(extra_attrs or {})}
    if res.std is not None:  # a found entry replaces it (write_outputs); one sample: write_outputs says so
        attrs["std_calibration"] = f"none (raw std of the K samples: no calibration for the non-Cartesian key {key!r})"
    geometry = ExportGeometry(vol.pixel_mm, None, "ANONYMOUS", path)
    return write_outputs(path, out_dir, request, res, {"trajectory": vol.coords.astype(np.float32)}, attrs, summary,
                         target, geometry, prior_name, std_cal, title=f"{path.name} {request.sampler} {vol.trajectory}")


@dataclass(frozen=True)
class ExportGeometry:
    """What the image exports need of an input: ``pixel_mm`` ``(dy, dx)`` and ``slice_mm`` (None: unknown, 1 mm is
    written and the series description says so), the patient id and the input's path."""

    pixel_mm: tuple[float, float] | None
    slice_mm: float | None
    patient_id: str
    path: Path

    @classmethod
    def of_volume(cls, vol: FastMRIVolume) -> ExportGeometry:
        """From a fastMRI-layout volume's header (:func:`mri_score.export.voxel_mm`)."""
        from mri_score import export

        try:
            dy, dx, slice_mm = export.voxel_mm(vol)
            pixel: tuple[float, float] | None = (dy, dx)
        except InputError:
            pixel, slice_mm = None, None
        return cls(pixel, slice_mm, str(vol.attrs.get("patient_id", "") or "ANONYMOUS"), vol.path)


def write_outputs(path: Path, out_dir: str | os.PathLike[str], request: ReconRequest, res: VolumeResult,
                  extra: dict[str, np.ndarray], attrs: dict, summary: dict, target: np.ndarray | None,
                  geometry: ExportGeometry, prior_name: str, std_calibration: dict | None, title: str) -> dict:
    """Write one input's outputs (:func:`output_paths`): the ``.h5`` (``reconstruction``, the std calibrated by
    ``std_calibration`` when given, ``extra`` datasets, ``attrs``), the PNG and the exports; on any failure the ones
    already written are removed.  Returns ``summary`` with the output paths added."""
    extra = dict(extra)
    if res.std is not None:
        std = res.std
        attrs.setdefault("std_calibration", "none (raw std of the K samples)")
        if std_calibration is not None:
            std = (res.std * float(std_calibration["factor"])).astype(np.float32)
            attrs["std_calibration"] = json.dumps(std_calibration, sort_keys=True)
        extra = {"reconstruction_std": std, **extra}
    elif "std_calibration" not in attrs:
        attrs["std_calibration"] = "none (one sample: no reconstruction_std)"
    outputs = output_paths(path, out_dir, request, res.std is not None)
    written: list[Path] = []
    try:
        out = save_reconstruction(out_dir, outputs["h5"].name, res.image, extra, attrs)
        written.append(out)
        summary["output"] = str(out)
        if request.png:
            from mri_score.figures import recon_panel

            recon_panel(outputs["png"], res.zero_filled, res.image, extra.get("reconstruction_std"), target, title=title)
            written.append(outputs["png"])
            summary["png"] = str(outputs["png"])
        written += export_volume(geometry, res.image, extra.get("reconstruction_std"), outputs, request, prior_name)
    except BaseException:
        remove_outputs(written)
        raise
    if request.exports:
        summary["exports"] = ", ".join(str(p) for p in written[1 + bool(request.png):])
    return summary


def output_paths(path: Path, out_dir: str | os.PathLike[str], request: ReconRequest, std: bool = True) -> dict[str, Path]:
    """Every output of one input ``path``: ``h5`` (always), ``png``, and per export format its files or series.

    Keys: ``h5``, ``png`` (with ``request.png``), ``nifti``/``nifti_std``, ``dicom``/``dicom_std`` (directories),
    ``cfl``/``cfl_hdr``; the std outputs only when ``std`` (more than one sample).
    """
    out = Path(out_dir)
    stem = path.name[:-len(path.suffix)] if path.suffix else path.name
    paths = {"h5": out / f"{stem}.h5"}
    if request.png:
        paths["png"] = out / f"{stem}.png"
    if "nifti" in request.exports:
        paths["nifti"] = out / f"{stem}.nii.gz"
        if std:
            paths["nifti_std"] = out / f"{stem}_std.nii.gz"
    if "dicom" in request.exports:
        paths["dicom"] = out / f"{stem}_dicom"
        if std:
            paths["dicom_std"] = out / f"{stem}_std_dicom"
    if "cfl" in request.exports:
        paths["cfl"] = out / f"{stem}_reconstruction.cfl"
        paths["cfl_hdr"] = out / f"{stem}_reconstruction.hdr"
    return paths


def export_volume(geometry: ExportGeometry, image: np.ndarray, std: np.ndarray | None, paths: dict[str, Path],
                  request: ReconRequest, prior_name: str) -> list[Path]:
    """Write the request's exports of ``image`` (and ``std``) ``(slices, h, w)`` float32; returns what was written.

    The voxel size is the input's (``geometry``); an input without a field of view (a BART file) is exported at
    1 mm, and the series description says so.
    """
    if not request.exports:
        return []
    from mri_score import export

    note = ""
    dy, dx = geometry.pixel_mm if geometry.pixel_mm is not None else (1.0, 1.0)
    slice_mm = geometry.slice_mm if geometry.slice_mm is not None else 1.0
    if geometry.pixel_mm is None:
        note = "; pixel size unknown (1 mm written)"
    elif geometry.slice_mm is None:
        note = "; slice thickness unknown (1 mm written)"
    description = export.series_description(f"mri-score {request.sampler}", {
        "steps": request.steps, "K": request.samples, "magnitude": request.magnitude, "prior": prior_name}) + note
    written: list[Path] = []
    try:
        for key, volume in (("nifti", image), ("nifti_std", std)):
            if key in paths and volume is not None:
                export.write_nifti(paths[key], volume, (dy, dx), slice_mm, description=description + (
                    ", posterior std" if key.endswith("std") else ""))
                written.append(paths[key])
        study = None
        for number, (key, volume) in enumerate((("dicom", image), ("dicom_std", std)), start=1):
            if key in paths and volume is not None:
                from pydicom.uid import generate_uid

                study = study or generate_uid()
                export.write_dicom_series(paths[key], volume, (dy, dx), slice_mm, description + (
                    ", posterior std" if key.endswith("std") else ""), series_number=number, study_uid=study,
                    patient_id=geometry.patient_id, inputs=[geometry.path])
                written.append(paths[key])
        if "cfl" in paths:
            from mri_score.cfl import write_cfl

            write_cfl(paths["cfl"].with_suffix(""), np.moveaxis(image, 0, -1).astype(np.complex64))
            written += [paths["cfl"], paths["cfl_hdr"]]
    except BaseException:
        remove_outputs(written)
        raise
    return written


def remove_outputs(paths: Sequence[Path]) -> None:
    """Remove outputs written earlier in a run that failed (files or DICOM series directories)."""
    import shutil

    for p in paths:
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError:
            pass


def demo_volume(cache: Path | None = None) -> Path:
    """The README's sample volume: simulated once from the corpus's test split and cached.

    It keeps its noise-free truth (the ``truth`` dataset), so the demo scores the anatomy output like for
    like.  ``cache`` defaults to ``$MRI_SCORE_CACHE`` or ``~/.cache/mri_score``.
    """
    from mri_score.simulation import corpus_volume, noise_free_target, simulate_volume

    if cache is None:
        cache = Path(os.environ.get("MRI_SCORE_CACHE", Path.home() / ".cache" / "mri_score"))
    path = cache / "demo-v2" / "demo_brain_t2.h5"
    if not path.is_file():
        imgs = corpus_volume("test", 0, 2, (192, 192), "t2", seed=0)
        ksp, target, _ = simulate_volume(imgs, coils=8, snr=50.0, seed=0)
        write_fastmri_file(path, ksp, target, "SYN_T2", "demo000", truth=noise_free_target(imgs, 8))
    return path
