"""Non-Cartesian (radial, spiral) multi-coil reconstruction with the score samplers: data, MRD I/O, calibration, sampling.

The Cartesian path (:mod:`mri_score.calibration`, :mod:`mri_score.posterior`, :mod:`mri_score.pipeline`)
carried over to k-space samples on a trajectory, with the forward model
:class:`operators.nufft.NonCartesianSense` (coil maps, then an orthonormal 2-D type-2 NUFFT whose
coordinates are in cycles per field of view, row frequency first; on integer coordinates it is
:func:`operators.fft.fft2c`, so images have the same units as on the Cartesian path).

* :class:`NonCartesianVolume`: a volume's samples ``(slices, coils, M)``, its trajectory ``(M, 2)`` and
  what is known about it (density, matrix, pixel size, noise covariance, noise-free target).
* :func:`read_noncartesian_mrd` / :func:`write_noncartesian_mrd`: ISMRMRD files whose acquisitions
  carry a trajectory (one acquisition per spoke or interleaf, ``traj`` ``(samples, 2)`` in cycles/FOV
  of the recon matrix, image rows following ``traj[:, 0]``), prewhitened with the noise acquisitions;
  :func:`is_noncartesian_mrd` tells them from the Cartesian files of :mod:`mri_score.mrd`.
* :func:`calibrate_noncartesian`: coil maps, intensity scale and σ_y from the fully sampled centre of
  k-space, in the conventions of :class:`mri_score.calibration.Calibration`.  (ESPIRiT maps, as on the
  Cartesian path, are unreliable at the edge of the field of view where an object touches it: there
  ``maps="lowres"`` is the better choice.)
* :class:`NonCartesianKspaceLikelihood`: :class:`~mri_score.likelihood.GaussianKspaceLikelihood` made
  right for an operator whose ``‖AᴴA‖`` is far above 1 (see its notes).
* :func:`reconstruct_noncartesian_volume`: the same samplers (:data:`mri_score.samplers.SAMPLERS`) slice
  by slice, as :func:`mri_score.pipeline.reconstruct_volume` does for Cartesian data.
* :func:`calibration_key`: the key of a request's std calibration on a volume's trajectory (kind, spokes or
  interleaves, matrix: :func:`trajectory_key`) in the prior's sidecar (:mod:`mri_score.uncertainty`).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from mri_score import limits
from mri_score.calibration import Calibration, resolve_map_phase
from mri_score.errors import InputError, one_line
from mri_score.fastmri_io import MAX_KSPACE_BYTES, READ_COPIES, atomic_h5_write, dataset, open_input, read_array
from mri_score.likelihood import GaussianKspaceLikelihood, Likelihood
from mri_score.mrd import (  # the Cartesian reader's checks
    DEFAULT_GROUP,
    MAX_CHANNELS,
    REFERENCE_GROUP,
    acquisition_kinds,
    acquisition_rows,
    acquisition_samples,
    find_mrd_group,
    flag_bit,
    ismrmrd_module,
    noise_covariance,
    noise_whitening,
    one_value,
    open_acquisitions,
    read_heads,
    read_mrd_header,
    readout_layout,
    unique_values,
)
from mri_score.posterior import VolumeResult
from mri_score.prior import ComplexPrior
from mri_score.request import ReconRequest
from mri_score.resolution import fine_shape
from mri_score.samplers import SAMPLERS
from mri_score.scaling import reference_scale
from operators.coils import (
    ESPIRIT_THRESHOLD,
    MIN_ACS,
    MIN_ESPIRIT_ACS,
    NOISE_THRESHOLD,
    coil_compression_matrix,
    compress_coils,
    espirit_threshold,
    maps_espirit,
    normalize_maps,
    rss,
    sense1_combine,
    virtual_coil_phase,
)
from operators.errors import OperatorInputError
from operators.fft import fft2c
from operators.grid import fourier_resample, image_to_grid
from operators.noise import complex_gaussian, mad_sigma
from operators.nufft import NonCartesianSense, NufftPlan, check_coordinates
from operators.trajectories import grid_coverage, pipe_menon_density

#: Trajectory kinds a volume records (the MRD header's ``trajectory``; ``goldenangle`` is read as radial).
TRAJECTORIES = ("radial", "spiral", "other")
#: Where :func:`write_noncartesian_mrd` keeps the noise-free magnitude ``(slices, H, W)`` for scoring (not MRD).
TARGET_KEY = f"{REFERENCE_GROUP}/target"
#: A lattice point of k-space counts as sampled when a sample lies within this distance (cycles/FOV): half the
#: Nyquist spacing of the field of view, so a ring of radial spokes is "fully sampled" while the arc between
#: neighbouring spokes is at most one cycle/FOV (radius ``spokes / π`` for uniform full diameters).
ACS_MAX_GAP = 0.5
#: Diameter of the Hann-windowed low-resolution disc the intensity scale is computed from, as a fraction of the
#: matrix.  1.5 x the training scale's column band (:data:`mri_score.scaling.TRAIN_CENTER_FRACTION`): over 32
#: corpus slices and 11 real development slices at 128² the scale of this disc divided by the training-side
#: :func:`mri_score.scaling.image_scale` was 1.01 ± 0.05 (0.94-1.16); a disc of the band's own width gave
#: 1.10 ± 0.11.  So the prior sees the intensities it was trained at, as on the Cartesian path.
SCALE_DISC_FRACTION = 0.12
#: ``maps_method`` values of :func:`calibrate_noncartesian` (those of :data:`mri_score.request.MAP_ESTIMATORS`).
MAP_METHODS = ("auto", "espirit", "lowres")
#: Regulariser of the low-resolution maps (as :func:`operators.coils.maps_lowres`): × the 99th percentile of the RSS.
LOWRES_EPS = 0.05
#: Power iterations for the norm of the density-weighted normal operator (PC's data step).
NORM_ITERATIONS = 20


# ----------------------------------------------------------------------------------------------------------------------
# the volume


@dataclass
class NonCartesianVolume:
    """A multi-slice non-Cartesian acquisition: one trajectory shared by every slice.

    Attributes
    ----------
    samples : np.ndarray
        complex64 ``(slices, coils, M)``: the k-space samples, readout-fastest (acquisition ``a`` is
        ``[:, :, a·readout : (a+1)·readout]``).
    coords : np.ndarray
        float32 ``(M, 2)``: sample positions in cycles/FOV, row frequency first, within ``±matrix/2``
        (:mod:`operators.nufft`).
    matrix : tuple of int
        ``(H, W)`` of the image grid.
    density : np.ndarray, optional
        float32 ``(M,)`` density-compensation weights in (cycles/FOV)² (e.g.
        :func:`operators.trajectories.pipe_menon_density`); computed where needed when None.
    pixel_mm : tuple of float, optional
        In-plane pixel size ``(rows, columns)`` in mm.
    noise_cov : np.ndarray, optional
        complex128 ``(coils, coils)``: covariance of the noise per complex sample of ``samples`` (the
        identity after prewhitening); None when unknown.
    target : np.ndarray, optional
        float32 ``(slices, H, W)``: the noise-free magnitude ``|x|`` for scoring (simulations).
    trajectory : str
        One of :data:`TRAJECTORIES`.
    readout : int, optional
        Samples per acquisition (spoke or interleaf); default ``M`` (one acquisition).
    name : str
        The source (a file name) for error messages.
    """

    samples: np.ndarray
    coords: np.ndarray
    matrix: tuple[int, int]
    density: np.ndarray | None = None
    pixel_mm: tuple[float, float] | None = None
    noise_cov: np.ndarray | None = None
    target: np.ndarray | None = None
    trajectory: str = "other"
    readout: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        where = f"{self.name}: " if self.name else ""
        try:
            h, w = (int(v) for v in self.matrix)
        except (TypeError, ValueError):
            raise InputError(f"{where}matrix must be two integers (H, W), got {self.matrix!r}") from None
        if h < 2 or w < 2:
            raise InputError(f"{where}matrix must be at least 2 x 2, got {(h, w)}")
        self.matrix = (h, w)
        s = np.asarray(self.samples)
        if not np.iscomplexobj(s) or s.ndim != 3 or min(s.shape) < 1:
            raise InputError(f"{where}samples must be complex (slices, coils, M), got {s.dtype} {s.shape}")
        if not np.isfinite(s).all():
            raise InputError(f"{where}samples contain NaN or Inf")
        self.samples = s.astype(np.complex64, copy=False)
        m = s.shape[-1]
        c = np.asarray(self.coords)
        if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] != m:
            raise InputError(f"{where}coords must be (M, 2) with M = {m} (the samples' last axis), got {c.shape}")
        try:
            check_coordinates(c, (h, w))
        except OperatorInputError as err:
            raise InputError(f"{where}trajectory: {one_line(err)}") from None
        self.coords = c.astype(np.float32, copy=False)
        if self.density is not None:
            d = np.asarray(self.density)
            if d.shape != (m,) or d.dtype.kind not in "fiu" or not np.isfinite(d).all() or (d < 0).any():
                raise InputError(f"{where}density must be finite non-negative ({m},), got {d.dtype} {d.shape}")
            self.density = d.astype(np.float32, copy=False)
        if self.noise_cov is not None:
            cov = np.asarray(self.noise_cov)
            if cov.shape != (s.shape[1],) * 2 or not np.isfinite(cov).all():
                raise InputError(f"{where}noise_cov must be finite ({s.shape[1]}, {s.shape[1]}), got {cov.shape}")
            self.noise_cov = cov.astype(np.complex128, copy=False)
        if self.target is not None:
            t = np.asarray(self.target)
            if t.shape != (s.shape[0], h, w) or np.iscomplexobj(t) or not np.isfinite(t).all():
                raise InputError(f"{where}target must be real finite {(s.shape[0], h, w)}, got {t.dtype} {t.shape}")
            self.target = t.astype(np.float32, copy=False)
        if self.trajectory not in TRAJECTORIES:
            raise InputError(f"{where}trajectory must be one of {', '.join(TRAJECTORIES)}, got {self.trajectory!r}")
        readout = m if self.readout is None else self.readout
        if isinstance(readout, bool) or int(readout) != readout or not 1 <= int(readout) <= m or m % int(readout):
            raise InputError(f"{where}readout must divide the {m} samples per coil, got {self.readout!r}")
        self.readout = int(readout)
        if self.pixel_mm is not None:
            px = tuple(float(v) for v in self.pixel_mm)
            if len(px) != 2 or not all(0 < v < 1e6 for v in px):
                raise InputError(f"{where}pixel_mm must be two positive numbers, got {self.pixel_mm!r}")
            self.pixel_mm = px  # type: ignore[assignment]

    @property
    def slices(self) -> int:
        """Number of slices."""
        return int(self.samples.shape[0])

    @property
    def coils(self) -> int:
        """Number of receive coils."""
        return int(self.samples.shape[1])

    @property
    def num_points(self) -> int:
        """``M``: samples per coil and slice."""
        return int(self.samples.shape[2])

    @property
    def acquisitions(self) -> int:
        """Spokes or interleaves per slice: ``M / readout``."""
        return self.num_points // int(self.readout or self.num_points)

    def density_weights(self) -> np.ndarray:
        """``density``, or the Pipe–Menon weights of the trajectory (computed once and kept)."""
        if self.density is None:
            self.density = pipe_menon_density(self.coords, self.matrix)
        return self.density

    def known_sigma(self) -> float | None:
        """Noise std per complex sample, ``sqrt(mean(diag(noise_cov)))``, or None when the covariance is unknown."""
        if self.noise_cov is None:
            return None
        return float(np.sqrt(np.mean(np.real(np.diag(self.noise_cov)))))


#: ``{trajectory kind: ((coverage, steps), ...)}``: per kind, CG steps by grid coverage, in increasing coverage.
CoverageTables = Mapping[str, tuple[tuple[float, int], ...]]

#: DDS's CG steps per step on a trajectory by its kind and grid coverage (:func:`operators.trajectories.grid_coverage`):
#: per kind (:data:`TRAJECTORIES`), ``(coverage, steps)`` of each tuned setting, in increasing coverage, fitted by
#: rule version 3 of ``benchmarks/run_noncartesian_tuning.py`` on the synthetic tuning subjects under version 5's data
#: weight floors (0.173 radial, 0.0577 spiral, no final step; kept under version 7's floors and final step, where the
#: rule's counts were fewer and 0.04 dB below these: ``benchmarks/results/noncartesian_tuning_fd_check.md``), on the
#: CLI's grid (``benchmarks/results/noncartesian_tuning.md``:
#: radial 16-96 spokes and spirals of 4-16 interleaves at 128², the 2x grid, 1-14 steps, a count kept only within
#: twice the Cartesian time); read by :func:`cg_steps_for_coverage`.  Sparse radial data want the most steps tried
#: (14 up to 32 spokes, at 1.49-1.54x the Cartesian time), 10 at 48 spokes, dense radial data 6, spirals 3 at every
#: coverage; +0.13 dB over the best single count (14) and +0.18 dB over 10 steps, averaged over the nine settings.
#: The tables before (tuned at the floor 1 on the native grid: 8 / 4 radial, 2 spirals) are in
#: ``benchmarks/results/archive/noncartesian_tuning_v3_floor1.md``.
NONCARTESIAN_CG_BY_COVERAGE: CoverageTables = MappingProxyType({
    "radial": ((0.161, 14), (0.241, 14), (0.315, 14), (0.451, 10), (0.575, 6), (0.766, 6)),
    "spiral": ((0.364, 3), (0.706, 3), (0.998, 3)),
})


#: DDS's data-weight floor on a trajectory by its kind (:data:`TRAJECTORIES`), where ``gamma_min_noncartesian`` is not
#: given (:meth:`mri_score.samplers.dds.DDSConfig.gamma_floor`); a kind without an entry (``other``) keeps
#: ``gamma_min``.  Chosen with :data:`NONCARTESIAN_FINAL_DENOISE` by rule version 2 of
#: ``benchmarks/run_noncartesian_floor.py`` on the synthetic tuning subjects
#: (``benchmarks/results/noncartesian_floor_final_denoise.md``: radial 16-96 spokes and spirals of 4-16 interleaves at
#: 128² on the 2x grid): radial the floor 1 with the final denoising step, +0.48 dB over version 6's floor 0.173
#: without it (+0.05 at 16 spokes to +0.83 at 96); spirals 0.3 with the step, +0.11 dB over 0.0577 without it (−0.02
#: at 4 interleaves, +0.24 at 8).  Version 1's floors (0.173, 0.0577; ``benchmarks/results/noncartesian_floor_tuning.md``)
#: were tuned without the step.
NONCARTESIAN_GAMMA_FLOOR: Mapping[str, float] = MappingProxyType({"radial": 1.0, "spiral": 0.3})
#: DDS's final denoising step per trajectory kind (``final_denoise_noncartesian`` ``auto``: the kind's entry, none: off):
#: chosen with the floor by rule version 2 of ``benchmarks/run_noncartesian_floor.py`` (``--final-denoise``, above);
#: the step denoises the last data-consistent estimate at the noise its solve carried (k = 1, the matched level).
NONCARTESIAN_FINAL_DENOISE: Mapping[str, float] = MappingProxyType({"radial": 1.0, "spiral": 1.0})


def _nearest_steps(table: tuple[tuple[float, int], ...], coverage: float) -> int:
    """The steps of ``table``'s row nearest ``coverage`` (the lower coverage's on a tie)."""
    return int(min(table, key=lambda row: (abs(row[0] - coverage), row[0]))[1])


def cg_steps_for_coverage(coverage: float, kind: str = "other", tables: CoverageTables | None = None) -> int:
    """CG steps per DDS step for a trajectory of ``kind`` and grid ``coverage``: those of the kind's tuned setting
    nearest in coverage.

    Parameters
    ----------
    coverage : float
        :func:`operators.trajectories.grid_coverage` of the trajectory, in ``[0, 1]``.
    kind : str
        The trajectory kind (:data:`TRAJECTORIES`).  A kind without a table (``other``) takes the most steps any
        kind's table gives at that coverage: no such trajectory was tuned, and more steps are the cautious side
        (non-increasing in coverage, as every table is).
    tables : mapping of str to tuple of (float, int), optional
        Per kind ``(coverage, steps)`` in increasing coverage (default :data:`NONCARTESIAN_CG_BY_COVERAGE`); below
        the first or above the last entry its steps hold (no extrapolation), between two the nearer one's (the
        lower coverage's on a tie).

    Returns
    -------
    int
        CG steps, ``≥ 0``.

    Raises
    ------
    ValueError
        A coverage that is not a finite number, no table at all, or an empty table.
    """
    tables = NONCARTESIAN_CG_BY_COVERAGE if tables is None else tables
    cov = float(coverage)
    if not math.isfinite(cov):
        raise ValueError(f"cg_steps_for_coverage needs a finite coverage, got {coverage!r}")
    if not tables or any(not rows for rows in tables.values()):
        raise ValueError("cg_steps_for_coverage needs a non-empty table for every kind")
    if kind in tables:
        return _nearest_steps(tables[kind], cov)
    return max(_nearest_steps(rows, cov) for rows in tables.values())


#: Virtual coils of ``virtual_coils="auto"`` on trajectories (:func:`coil_compression`): chosen by the rule of
#: ``benchmarks/run_coil_compression.py`` on the synthetic tuning subjects with 8 coils (``benchmarks/results/
#: coil_compression.md``: 3 virtual coils at most 0.02 dB below all 8 at radial 16-64 spokes and spirals of 4 and 8
#: interleaves, 1.29 against 1.69 s per slice; 2 lose 0.17 dB at 16 spokes).
NONCARTESIAN_VIRTUAL_COILS = 3


def virtual_coil_count(coils: int, virtual_coils: str | int) -> int:
    """The coils the sampler works on for ``coils`` receive coils and :attr:`ReconRequest.virtual_coils`."""
    if virtual_coils == "all":
        return int(coils)
    target = NONCARTESIAN_VIRTUAL_COILS if virtual_coils == "auto" else int(virtual_coils)
    return min(int(coils), target)


def coil_compression(volume: NonCartesianVolume, virtual_coils: str | int) -> torch.Tensor | None:
    """The SVD coil compression ``reconstruct`` applies to ``volume``: ``U`` per slice, complex64, or None.

    Parameters
    ----------
    volume : NonCartesianVolume
        The acquisition.  With white (or prewhitened) noise the virtual coils' noise stays white with the same
        σ_y; with correlated noise (no noise scans to whiten with) the σ_y estimated on every coil is an
        approximation for the virtual coils, as it already is for the correlated coils.
    virtual_coils : str or int
        ``"auto"`` (:data:`NONCARTESIAN_VIRTUAL_COILS`), ``"all"`` or a count (:attr:`ReconRequest.virtual_coils`).

    Returns
    -------
    torch.Tensor or None
        ``(slices, coils, V)``: per slice, :func:`operators.coils.coil_compression_matrix` of its samples weighted
        by the density weights (so every area of k-space counts alike, not the densely sampled centre; per slice,
        as the coils see each slice differently and a slice's result does not depend on the others); None when
        ``volume`` has no more coils than asked for (:func:`virtual_coil_count`).  The samples ``y`` become
        ``Uᴴ y`` and maps ``S`` estimated from all coils become ``Uᴴ S`` (:func:`operators.coils.compress_coils`),
        so ``Uᴴ A x = A' x`` holds exactly: estimating the maps on the virtual coils instead cost 0.13-0.18 dB on
        the tuning subjects at any count, the truncation itself at most 0.02 dB down to 3 of 8 coils.
    """
    count = virtual_coil_count(volume.coils, virtual_coils)
    if count == volume.coils:
        return None
    weights = torch.from_numpy(volume.density_weights())
    return torch.stack([coil_compression_matrix(torch.from_numpy(np.ascontiguousarray(y)), count, weights)
                        for y in volume.samples])


#: Version of the sampling defaults that hold on trajectories only, part of :func:`calibration_key` (as a sampler's
#: ``defaults_version`` is of every key): 2 since DDS took ``cg_iters_noncartesian`` (8) CG steps per step on
#: non-Cartesian data instead of the Cartesian ``cg_iters`` (10), 3 since the count follows the trajectory's grid
#: coverage (:data:`NONCARTESIAN_CG_BY_COVERAGE`) and the coils are compressed (:data:`NONCARTESIAN_VIRTUAL_COILS`),
#: 4 since the count follows the trajectory's kind as well, within a time budget, and ``--grid auto`` samples on the
#: 2x grid (:data:`mri_score.resolution.TRAJECTORY_GRID_MIN_COVERAGE`), 5 since the data weight's floor follows the
#: trajectory's kind (:data:`NONCARTESIAN_GAMMA_FLOOR`), 6 since the CG tables were re-tuned under those floors, 7
#: since the floors were re-chosen with DDS's final denoising step (:data:`NONCARTESIAN_FINAL_DENOISE`); factors
#: fitted before version 2 name no version.
NONCARTESIAN_DEFAULTS_VERSION = 7
#: The last part of every :func:`calibration_key`: the non-Cartesian defaults' version.
CALIBRATION_KEY_SUFFIX = f"/nc@v{NONCARTESIAN_DEFAULTS_VERSION}"


#: The trajectory part of a calibration key (:func:`trajectory_key`), so a free-text value elsewhere in a key (a path)
#: that happens to hold ``/traj=`` does not make it a trajectory key.
_TRAJECTORY_KEY_PART = re.compile(r"/traj=[^/]+/readouts=\d+x\d+/matrix=\d+x\d+/kmax=[-\d.]+(/|$)")


def superseded_calibration_key(key: str) -> bool:
    """Whether ``key`` is a trajectory std calibration key fitted under older non-Cartesian defaults.

    A key with a trajectory part (``traj=…``, :func:`trajectory_key`) that does not end with this version's
    :data:`CALIBRATION_KEY_SUFFIX` can never match a request again (:func:`calibration_key`); Cartesian keys are
    never superseded by this rule.
    """
    return _TRAJECTORY_KEY_PART.search(key) is not None and not key.endswith(CALIBRATION_KEY_SUFFIX)


def trajectory_key(volume: NonCartesianVolume) -> str:
    """The acquisition that the posterior std depends on, as a calibration key part: ``traj=…/readouts=…/matrix=…/kmax=…``.

    The trajectory kind (:data:`TRAJECTORIES`), its number of acquisitions (spokes or interleaves,
    :attr:`NonCartesianVolume.acquisitions`) times the samples of each, the image matrix and the largest sampled
    radius ``kmax`` (cycles/FOV, one decimal: centre-out half spokes and full diameters, or spirals of another
    extent, differ), e.g. ``traj=radial/readouts=32x256/matrix=128x128/kmax=64.0``.
    """
    h, w = volume.matrix
    kmax = float(np.sqrt((volume.coords.astype(np.float64) ** 2).sum(axis=1)).max()) if volume.coords.size else 0.0
    per_readout = int(volume.readout or volume.num_points)
    return f"traj={volume.trajectory}/readouts={volume.acquisitions}x{per_readout}/matrix={h}x{w}/kmax={kmax:.1f}"


def calibration_key(request: ReconRequest, volume: NonCartesianVolume) -> str:
    """The std calibration key of ``request`` on ``volume``'s trajectory: ``settings_key/traj=…/…/nc@vN``.

    :func:`mri_score.uncertainty.settings_key` followed by :func:`trajectory_key`, so a factor fitted on
    Cartesian masks never applies to a trajectory, nor one fitted for radial-32 to radial-64, then
    ``virtual_coils=N`` when the request's virtual coils (:func:`virtual_coil_count`, the count actually used)
    differ from ``auto``'s on this volume, and :data:`NONCARTESIAN_DEFAULTS_VERSION`, so a factor fitted under
    older non-Cartesian defaults never matches.
    """
    used = virtual_coil_count(volume.coils, request.virtual_coils)
    coils = "" if used == virtual_coil_count(volume.coils, "auto") else f"/virtual_coils={used}"
    return f"{trajectory_settings_key(request)}/{trajectory_key(volume)}{coils}{CALIBRATION_KEY_SUFFIX}"


def trajectory_settings_key(request: ReconRequest) -> str:
    """:func:`mri_score.uncertainty.settings_key` of ``request`` on a trajectory: the Cartesian default threshold
    (the noise edge, left out of the Cartesian key) is not the trajectories' default, so it is named here."""
    from mri_score import uncertainty

    extra = f"/maps_threshold={NOISE_THRESHOLD}" if request.maps_threshold == NOISE_THRESHOLD else ""
    return uncertainty.settings_key(request) + extra


# ----------------------------------------------------------------------------------------------------------------------
# MRD


def _header_matrix(header: Any, ref: int, path: Path) -> tuple[str, tuple[int, int], tuple[float, float] | None]:
    """Trajectory kind, recon matrix ``(H, W)`` and pixel size of encoding ``ref``; refusals of the header."""
    if ref >= len(header.encoding):
        raise InputError(f"{path}: acquisitions refer to encoding space {ref}, the MRD header has {len(header.encoding)}")
    enc = header.encoding[ref]
    kind = str(getattr(enc.trajectory, "value", enc.trajectory))
    if kind in ("cartesian", "epi"):
        raise InputError(f"{path}: MRD trajectory is '{kind}': read it with the Cartesian reader (mri_score.mrd), "
                         "not the non-Cartesian one")
    space = enc.reconSpace
    sizes = []
    for axis in "xyz":
        value = getattr(space.matrixSize, axis, None)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= 65535:
            raise InputError(f"{path}: MRD header reconSpace/matrixSize/{axis} must be an integer in [1, 65535], "
                             f"got {str(value)[:40]!r}")
        sizes.append(int(value))
    enc_z = getattr(enc.encodedSpace.matrixSize, "z", 1) or 1
    if sizes[2] > 1 or enc_z > 1:
        raise InputError(f"{path}: 3-D MRD encoding (matrix z = {max(sizes[2], enc_z)}); only 2-D multi-slice "
                         "non-Cartesian data is read")
    if min(sizes[:2]) < 2:
        raise InputError(f"{path}: MRD recon matrix {sizes[0]} x {sizes[1]} is too small")
    pixel = None
    fov = getattr(space, "fieldOfView_mm", None)
    if fov is not None:
        try:
            fx, fy = float(fov.x), float(fov.y)
        except (TypeError, ValueError):
            fx = fy = 0.0
        if 0 < fx < 1e6 and 0 < fy < 1e6:
            pixel = (fx / sizes[0], fy / sizes[1])
    kind = {"goldenangle": "radial", "radial": "radial", "spiral": "spiral"}.get(kind, "other")
    return kind, (sizes[0], sizes[1]), pixel


def is_noncartesian_mrd(path: str | os.PathLike[str], group: str | None = None) -> bool:
    """True when ``path`` is an MRD file whose first encoding's trajectory is not Cartesian (nor EPI).

    For a command line to choose :func:`read_noncartesian_mrd` over :func:`mri_score.mrd.load_mrd`.  Never
    raises: a missing, unreadable, non-MRD or Cartesian file is False (the Cartesian reader then says why).
    """
    try:
        with open_input(path) as hf:
            grp = find_mrd_group(hf, Path(path), group)
            header, _ = read_mrd_header(hf, Path(path), grp)
            kind = str(getattr(header.encoding[0].trajectory, "value", header.encoding[0].trajectory))
            return kind not in ("cartesian", "epi")
    except (InputError, OSError, RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False


def read_noncartesian_mrd(path: str | os.PathLike[str], group: str | None = None, prewhiten: bool = True,
                          load_target: bool = True) -> NonCartesianVolume:
    """Read a 2-D multi-slice non-Cartesian MRD (ISMRMRD) file: acquisitions that carry a trajectory.

    Every imaging acquisition is one spoke or interleaf: ``traj`` float32 ``(number_of_samples,
    trajectory_dimensions)`` in cycles/FOV of the recon matrix (``±N/2`` spans it), ``traj[:, 0]`` along the
    image rows (the header's ``x``, ``H``), ``traj[:, 1]`` along the columns (``y``, ``W``); a third
    trajectory dimension (e.g. Gadgetron's density weights) is ignored.  ``discard_pre``/``discard_post``
    samples are dropped.  Readout oversampling needs no special treatment: the coordinates define the
    sampling, an oversampled readout is just denser.  Acquisitions are ordered by ``kspace_encode_step_1``;
    repeats (averages) are averaged; every slice must have the same acquisitions and trajectory.
    Acquisitions flagged ``ACQ_IS_NOISE_MEASUREMENT`` give the noise covariance (at the imaging dwell time,
    :func:`mri_score.mrd.noise_whitening`) with which the samples are prewhitened.

    Parameters
    ----------
    path : path-like
        The MRD file, opened read-only.
    group : str, optional
        The MRD group (default ``dataset``, else the first that qualifies).
    prewhiten : bool
        Whiten the coils with the noise covariance (a file without noise acquisitions is read as it is).
    load_target : bool
        Read the noise-free magnitude :data:`TARGET_KEY` when present.

    Returns
    -------
    NonCartesianVolume
        ``samples`` complex64 ``(slices, coils, acquisitions · readout)``, ``coords`` float32, ``matrix``
        the recon matrix, ``pixel_mm`` the recon field of view over it, ``noise_cov`` the identity after
        prewhitening (the raw covariance without it; None without noise acquisitions), ``density`` None.

    Raises
    ------
    InputError
        One line naming the file: not MRD, a Cartesian or 3-D encoding, a missing trajectory, shapes that
        disagree, coordinates outside ``±N/2``, slices with different trajectories, non-finite values.
    """
    path = Path(path)
    with open_acquisitions(path, group) as (hf, _, header, dset):
        if "traj" not in (dset.dtype.names or ()):
            raise InputError(f"{path}: MRD acquisition table has no 'traj' field (no trajectory)")
        heads = read_heads(dset, path)
        _, noise, skipped = acquisition_kinds(heads)
        used = ~noise & ~skipped
        if not used.any():
            raise InputError(f"{path}: MRD file holds no imaging acquisitions ({int(noise.sum())} noise acquisitions)")
        h = heads[used]
        idx = h["idx"]
        ref = one_value(h["encoding_space_ref"], path, "encoding spaces (encoding_space_ref)")
        kind, matrix, pixel_mm = _header_matrix(header, ref, path)
        dims = h["trajectory_dimensions"].astype(np.int64)
        if (dims == 0).any():
            row = int(np.flatnonzero(used)[np.flatnonzero(dims == 0)[0]])
            raise InputError(f"{path}: MRD acquisition {row} carries no trajectory (trajectory_dimensions 0); "
                             "non-Cartesian data needs one per acquisition")
        ndim = one_value(dims, path, "trajectory dimensions")
        if ndim not in (2, 3):
            raise InputError(f"{path}: MRD trajectories have {ndim} dimensions; 2-D k-space needs 2 (or 3)")
        if (idx["kspace_encode_step_2"] > 0).any():
            raise InputError(f"{path}: 3-D MRD encoding (kspace_encode_step_2 > 0); only 2-D multi-slice data is read")
        channels, ns, pre, post = readout_layout(h, path)
        readout = ns - pre - post
        if readout < 1:
            raise InputError(f"{path}: MRD readouts of {ns} samples discard {pre} + {post}: nothing is left")
        e1 = idx["kspace_encode_step_1"].astype(np.int64)
        slice_ids = unique_values(idx["slice"])
        slice_of = np.searchsorted(np.asarray(slice_ids), idx["slice"])
        steps = unique_values(e1)
        for s in range(len(slice_ids)):
            got = unique_values(e1[slice_of == s])
            if got != steps:
                raise InputError(f"{path}: MRD slice {slice_ids[s]} has {len(got)} acquisitions, the file {len(steps)} "
                                 "(one trajectory for every slice is required)")
        step_of = np.searchsorted(np.asarray(steps), e1)
        m = len(steps) * readout
        shape = (len(slice_ids), channels, m)
        nbytes = float(np.prod(shape, dtype=np.float64)) * 8
        if nbytes > MAX_KSPACE_BYTES:
            raise InputError(f"{path}: MRD samples of shape {shape} are too large to load ({MAX_KSPACE_BYTES} bytes max)")
        limits.check_fits(nbytes * READ_COPIES + path.stat().st_size, f"{path}: MRD samples of shape {shape}")

        rows = np.flatnonzero(used)
        position = {int(r): i for i, r in enumerate(rows)}
        coords = np.full((len(steps), readout, 2), np.nan, dtype=np.float64)
        for row, raw in acquisition_rows(dset, rows, path, "traj"):
            i = position[row]
            arr = np.asarray(raw)
            if arr.dtype.kind != "f" or arr.size != ndim * ns:
                raise InputError(f"{path}: MRD acquisition {row} has a trajectory of {arr.size} values; its header says "
                                 f"{ns} samples x {ndim} dimensions ({ns * ndim})")
            traj = arr.astype(np.float64).reshape(ns, ndim)[pre : ns - post, :2]
            if not np.isfinite(traj).all():
                raise InputError(f"{path}: MRD acquisition {row} has a non-finite trajectory")
            peak = np.abs(traj).max(axis=0)
            if peak[0] > matrix[0] / 2 or peak[1] > matrix[1] / 2:
                raise InputError(f"{path}: MRD acquisition {row} has a trajectory outside ±N/2 = ±({matrix[0] / 2:g}, "
                                 f"{matrix[1] / 2:g}) cycles/FOV of the recon matrix {matrix}: max |k| = "
                                 f"({peak[0]:g}, {peak[1]:g}) (expected cycles/FOV, i.e. ±0.5 × matrix)")
            k = int(step_of[i])
            if np.isnan(coords[k, 0, 0]):
                coords[k] = traj
            elif not np.allclose(coords[k], traj, rtol=0, atol=1e-4):
                raise InputError(f"{path}: MRD acquisition {row} (step {int(e1[i])}, slice {int(idx['slice'][i])}) has "
                                 "another trajectory than the same step elsewhere; one trajectory for every slice and "
                                 "average is required")
        coords = coords.reshape(m, 2)
        try:
            check_coordinates(coords, matrix)
        except OperatorInputError as err:
            raise InputError(f"{path}: MRD trajectory: {one_line(err)}") from None

        covariance, _ = noise_covariance(dset, heads, noise, channels, h["sample_time_us"], path)
        whitening = noise_whitening(covariance, path) if (prewhiten and covariance is not None) else None
        samples = np.zeros(shape, dtype=np.complex128)
        count = np.zeros((len(slice_ids), len(steps)), dtype=np.int64)
        for row, raw in acquisition_rows(dset, rows, path):
            i = position[row]
            line = acquisition_samples(raw, row, channels, ns, path)[:, pre : ns - post]
            if whitening is not None:
                line = whitening @ line
            s, k = int(slice_of[i]), int(step_of[i])
            samples[s, :, k * readout : (k + 1) * readout] += line
            count[s, k] += 1
        samples /= np.repeat(np.maximum(count, 1), readout, axis=1)[:, None, :]
        target = None
        if load_target:
            tset = dataset(hf, TARGET_KEY, path, "fiu", (3,), MAX_KSPACE_BYTES, f"reference target '{TARGET_KEY}'",
                           "(slices, H, W)")
            if tset is not None:
                if tuple(tset.shape) != (len(slice_ids), *matrix):
                    raise InputError(f"{path}: reference target '{TARGET_KEY}' has shape {tset.shape}, the MRD data "
                                     f"gives {(len(slice_ids), *matrix)}")
                target = read_array(tset, path, TARGET_KEY).astype(np.float32)
    noise_cov = None if covariance is None else (np.eye(channels, dtype=np.complex128) if whitening is not None
                                                 else covariance)
    try:
        return NonCartesianVolume(samples=samples.astype(np.complex64), coords=coords.astype(np.float32), matrix=matrix,
                                  pixel_mm=pixel_mm, noise_cov=noise_cov, target=target, trajectory=kind,
                                  readout=readout, name=str(path))
    except InputError as err:  # e.g. non-finite samples or a target with NaN: already names the file
        raise InputError(one_line(err)) from None


def _mrd_header_xml(volume: NonCartesianVolume, acquisitions: int, slice_mm: float, protocol_name: str,
                    patient_id: str) -> bytes:
    xsd = ismrmrd_module().xsd
    h, w = volume.matrix
    px = volume.pixel_mm or (1.0, 1.0)
    fov = (h * px[0], w * px[1], float(slice_mm))

    def space() -> object:
        return xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=h, y=w, z=1),
                                     fieldOfView_mm=xsd.fieldOfViewMm(x=fov[0], y=fov[1], z=fov[2]))

    def limit(maximum: int, center: int = 0) -> object:
        return xsd.limitType(minimum=0, maximum=maximum, center=center)

    kind = {"radial": xsd.trajectoryType.RADIAL, "spiral": xsd.trajectoryType.SPIRAL}.get(volume.trajectory,
                                                                                          xsd.trajectoryType.OTHER)
    encoding = xsd.encodingType(
        encodedSpace=space(), reconSpace=space(),
        encodingLimits=xsd.encodingLimitsType(
            kspace_encoding_step_0=limit(int(volume.readout or 1) - 1),
            kspace_encoding_step_1=limit(acquisitions - 1), kspace_encoding_step_2=limit(0),
            slice=limit(volume.slices - 1), average=limit(0), contrast=limit(0), phase=limit(0), repetition=limit(0),
            set=limit(0), segment=limit(0)),
        trajectory=kind,
    )
    header = xsd.ismrmrdHeader(
        version=1,
        subjectInformation=xsd.subjectInformationType(patientID=patient_id),
        measurementInformation=xsd.measurementInformationType(protocolName=protocol_name,
                                                              patientPosition=xsd.patientPositionType.HFS),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            systemVendor="mri-score", systemModel="simulated", systemFieldStrength_T=3.0, receiverChannels=volume.coils),
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_700_000),
        encoding=[encoding],
    )
    return xsd.ToXML(header, encoding="utf-8").encode("utf-8")


def write_noncartesian_mrd(
    path: str | os.PathLike[str],
    volume: NonCartesianVolume,
    *,
    noise_scans: int = 8,
    noise_samples: int | None = None,
    dwell_us: float = 2.0,
    slice_mm: float = 5.0,
    keep_target: bool = True,
    protocol_name: str = "MRI_SCORE_NONCARTESIAN",
    patient_id: str = "sim",
    seed: int = 0,
) -> Path:
    """Write ``volume`` as a non-Cartesian MRD file (atomically: complete or absent).

    One acquisition per spoke / interleaf and slice (``kspace_encode_step_1`` = its index, ``traj`` its
    ``readout`` coordinates, ``trajectory_dimensions`` 2), the header's trajectory ``radial``, ``spiral`` or
    ``other``, encoded and recon space the volume's matrix and field of view (``pixel_mm``, 1 mm when
    unknown).  With a known ``noise_cov`` and ``noise_scans > 0``, noise-only acquisitions
    (``ACQ_IS_NOISE_MEASUREMENT``) drawn with that covariance come first, so a reader can prewhiten.
    The samples are written as they are (their noise is the volume's).  The noise-free ``target`` is
    kept in :data:`TARGET_KEY` (not part of MRD; other readers ignore it).

    Parameters
    ----------
    path : path-like
        Output file (:func:`mri_score.atomic.atomic_output`; an input is never replaced).
    volume : NonCartesianVolume
        The data; ``readout`` sets the acquisitions.
    noise_scans : int
        Noise acquisitions written (when ``noise_cov`` is known).
    noise_samples : int, optional
        Samples per noise acquisition (default: ``readout``).
    dwell_us : float
        Dwell time of every acquisition in microseconds (noise and imaging alike).
    slice_mm : float
        Slice thickness (the field of view's ``z``).
    keep_target : bool
        Keep ``volume.target`` in :data:`TARGET_KEY`.
    protocol_name, patient_id : str
        Header ``protocolName`` and ``patientID``.
    seed : int
        Seeds the noise acquisitions.

    Returns
    -------
    Path
        ``path``.
    """
    ismrmrd = ismrmrd_module(path)
    readout = int(volume.readout or volume.num_points)
    acquisitions = volume.acquisitions
    if readout > 65535 or acquisitions > 65535 or volume.slices > 65535 or volume.coils > MAX_CHANNELS:
        raise InputError(f"{path}: volume exceeds the MRD counters (readout {readout}, {acquisitions} acquisitions, "
                         f"{volume.slices} slices, {volume.coils} coils; 65535 / {MAX_CHANNELS} coils at most)")
    if not (isinstance(noise_scans, int) and 0 <= noise_scans <= 100_000) or not 0 < float(dwell_us) < 1e6:
        raise InputError(f"{path}: noise_scans must be an integer >= 0 and dwell_us > 0")
    noise_samples = readout if noise_samples is None else int(noise_samples)
    if not 1 <= noise_samples <= 65535:
        raise InputError(f"{path}: noise_samples must be in [1, 65535], got {noise_samples}")
    rows: list[tuple[int, int, int, np.ndarray, np.ndarray | None]] = []  # (flags, slice, step, data, traj)
    if volume.noise_cov is not None and noise_scans:
        try:
            chol = np.linalg.cholesky(volume.noise_cov)
        except np.linalg.LinAlgError:
            raise InputError(f"{path}: the volume's noise_cov is not positive definite") from None
        rng = np.random.default_rng(seed)
        for _ in range(noise_scans):
            z = (rng.standard_normal((volume.coils, noise_samples))
                 + 1j * rng.standard_normal((volume.coils, noise_samples))) / np.sqrt(2.0)
            rows.append((flag_bit("ACQ_IS_NOISE_MEASUREMENT"), 0, 0, chol @ z, None))
    coords = volume.coords.reshape(acquisitions, readout, 2)
    for sl in range(volume.slices):
        first = len(rows)
        for a in range(acquisitions):
            rows.append((0, sl, a, volume.samples[sl, :, a * readout : (a + 1) * readout], coords[a]))
        rows[first] = (rows[first][0] | flag_bit("ACQ_FIRST_IN_SLICE"), *rows[first][1:])
        rows[-1] = (rows[-1][0] | flag_bit("ACQ_LAST_IN_SLICE"), *rows[-1][1:])
    rows[-1] = (rows[-1][0] | flag_bit("ACQ_LAST_IN_MEASUREMENT"), *rows[-1][1:])

    table = np.zeros(len(rows), dtype=ismrmrd.hdf5.acquisition_dtype)
    head = table["head"]
    mask_bits = np.zeros(16, dtype=np.uint64)
    for ch in range(volume.coils):
        mask_bits[ch // 64] |= np.uint64(1) << np.uint64(ch % 64)
    h, w = volume.matrix
    thickness = float(slice_mm)
    for i, (flags, sl, step, data, traj) in enumerate(rows):
        head["version"][i] = 1
        head["flags"][i] = flags
        head["measurement_uid"][i] = seed % 2**32
        head["scan_counter"][i] = i
        head["acquisition_time_stamp"][i] = i
        head["number_of_samples"][i] = data.shape[1]
        head["available_channels"][i] = volume.coils
        head["active_channels"][i] = volume.coils
        head["channel_mask"][i] = mask_bits
        head["sample_time_us"][i] = dwell_us
        head["position"][i] = (0.0, 0.0, (sl - (volume.slices - 1) / 2) * thickness)
        head["read_dir"][i] = (1.0, 0.0, 0.0)
        head["phase_dir"][i] = (0.0, 1.0, 0.0)
        head["slice_dir"][i] = (0.0, 0.0, 1.0)
        head["idx"]["kspace_encode_step_1"][i] = step
        head["idx"]["slice"][i] = sl
        if traj is None:
            table["traj"][i] = np.zeros(0, dtype=np.float32)
        else:
            head["trajectory_dimensions"][i] = 2
            head["center_sample"][i] = int(np.argmin(np.hypot(traj[:, 0], traj[:, 1])))
            table["traj"][i] = np.ascontiguousarray(traj, dtype=np.float32).reshape(-1)
        table["data"][i] = np.ascontiguousarray(data.astype(np.complex64)).view(np.float32).reshape(-1)

    import h5py

    xml = np.array([_mrd_header_xml(volume, acquisitions, slice_mm, protocol_name, patient_id)],
                   dtype=h5py.special_dtype(vlen=bytes))
    datasets: dict[str, np.ndarray] = {f"{DEFAULT_GROUP}/xml": xml, f"{DEFAULT_GROUP}/data": table}
    if keep_target and volume.target is not None:
        datasets[TARGET_KEY] = volume.target.astype(np.float32)
    return atomic_h5_write(Path(path), datasets, {})


# ----------------------------------------------------------------------------------------------------------------------
# calibration


def acs_radius(coords: np.ndarray | torch.Tensor, matrix: Sequence[int], max_gap: float = ACS_MAX_GAP) -> float:
    """Radius (cycles/FOV) of the fully sampled k-space centre of a trajectory.

    Every lattice point ``k`` of the matrix's k-space with ``|k|`` below the radius has a sample within
    ``max_gap`` of it; the first lattice point (by ``|k|``) without one sets the radius.

    Parameters
    ----------
    coords : np.ndarray or torch.Tensor
        ``(M, 2)`` in cycles/FOV.
    matrix : (int, int)
        ``(H, W)``.
    max_gap : float
        Largest distance from a lattice point to its nearest sample, in cycles/FOV.

    Returns
    -------
    float
        The radius; ``min(H, W) / 2`` when the whole disc is covered, 0 when the centre itself is not.
    """
    from scipy.spatial import cKDTree

    c = coords.detach().cpu().numpy() if torch.is_tensor(coords) else np.asarray(coords)
    h, w = (int(v) for v in matrix)
    top = min(h, w) / 2.0
    n = int(math.floor(top))
    k0, k1 = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    pts = np.stack([k0.ravel(), k1.ravel()], axis=-1).astype(np.float64)
    radius = np.hypot(pts[:, 0], pts[:, 1])
    keep = radius <= top
    pts, radius = pts[keep], radius[keep]
    dist, _ = cKDTree(np.asarray(c, dtype=np.float64)).query(pts, distance_upper_bound=max_gap + 1e-9)
    holes = radius[~(dist <= max_gap)]
    return float(holes.min()) if holes.size else float(top)


def _hann_disc(coords: torch.Tensor, radius: float) -> torch.Tensor:
    """``cos²(π|k| / 2R)`` inside ``|k| < R``, 0 outside: the radial Hann taper, ``(M,)`` float."""
    r = torch.linalg.vector_norm(coords.to(torch.float64), dim=-1)
    return torch.where(r < radius, torch.cos(math.pi * r / (2.0 * radius)) ** 2, torch.zeros_like(r))


def estimate_sigma_noncartesian(samples: torch.Tensor, coords: torch.Tensor, outer_fraction: float = 1 / 8) -> float:
    """Noise std per complex sample (``E|n|² = σ²``) from the samples in the outermost ``outer_fraction`` of radius.

    The k-space periphery holds almost no signal; a median-absolute-deviation estimate on the real and
    imaginary parts there (:func:`operators.noise.mad_sigma`) is robust to what remains (as
    :func:`operators.noise.estimate_sigma_y` does with the outermost Cartesian rows).  ``samples``
    complex ``(coils, M)``, ``coords`` ``(M, 2)``; 0.0 when fewer than 16 values are available.
    """
    r = torch.linalg.vector_norm(coords.to(torch.float64), dim=-1)
    sel = r >= (1.0 - outer_fraction) * float(r.max())
    return mad_sigma(samples[..., sel.to(samples.device)])


def _as_samples(samples: np.ndarray | torch.Tensor) -> torch.Tensor:
    s = samples if torch.is_tensor(samples) else torch.from_numpy(np.asarray(samples))
    if not s.is_complex() or s.ndim != 2:
        raise InputError(f"samples must be complex (coils, M), got {s.dtype} {tuple(s.shape)}")
    return s.to(torch.complex64)


def calibrate_noncartesian(
    samples: np.ndarray | torch.Tensor,
    coords: np.ndarray | torch.Tensor,
    matrix: Sequence[int],
    density: np.ndarray | torch.Tensor | None = None,
    maps_method: str = "auto",
    maps: torch.Tensor | None = None,
    sigma_y: float | None = None,
    radius: float | None = None,
    maps_phase: str = "auto",
    maps_threshold: float | str | None = None,
) -> Calibration:
    """Coil maps, intensity scale and σ_y of one slice from its non-Cartesian samples alone.

    * ACS: the fully sampled centre ``|k| < r`` (:func:`acs_radius`, or ``radius``).
    * Maps (``maps_method``): ``espirit``: the samples with ``|k| < r + 1``, density compensated and
      gridded (``Aᴴ(w·y)`` per coil on the full matrix, then :func:`operators.fft.fft2c`), give a Cartesian
      k-space whose centre square inscribed in the disc (side ``g = ⌊√2 r⌋``, even) is ESPIRiT's
      calibration region (:func:`operators.coils.maps_espirit`, crop 0: every pixel keeps a map);
      ``lowres``: the Hann-tapered disc ``|k| < r`` gridded to low-resolution coil images divided by
      their regularised RSS (as :func:`operators.coils.maps_lowres`); ``auto``: ESPIRiT when ``g >=``
      :data:`operators.coils.MIN_ESPIRIT_ACS`, as the Cartesian rule for a square region. Their phase
      (``maps_phase``): ``auto`` and ``estimator`` keep the estimator's (ESPIRiT: coil 0 real), ``virtual``
      references them to a virtual body coil (:func:`operators.coils.virtual_coil_phase`, weighted by the RSS of
      the gridded Hann-tapered ACS disc); the defaults of trajectories were tuned with ``estimator``.
    * Scale: the 99th percentile of the SENSE-1 combination of the Hann-tapered disc of diameter
      :data:`SCALE_DISC_FRACTION` × matrix (:func:`mri_score.scaling.reference_scale`), so the prior sees
      about unit images as on the Cartesian path (see :data:`SCALE_DISC_FRACTION`).
    * σ_y: ``sigma_y`` when known (e.g. from the noise covariance), else
      :func:`estimate_sigma_noncartesian`; per complex sample, in the data's units.

    Parameters
    ----------
    samples : np.ndarray or torch.Tensor
        complex ``(coils, M)`` k-space samples of one slice.
    coords : np.ndarray or torch.Tensor
        ``(M, 2)`` cycles/FOV.
    matrix : (int, int)
        ``(H, W)``.
    density : array, optional
        ``(M,)`` density-compensation weights; Pipe–Menon's when None.
    maps_method : str
        One of :data:`MAP_METHODS`.
    maps : torch.Tensor, optional
        Coil maps ``(coils, H, W)`` to use instead of estimating them.
    sigma_y : float, optional
        Known noise std per complex sample.
    radius : float, optional
        The ACS radius instead of :func:`acs_radius`.
    maps_phase : str
        ``auto``, ``virtual`` or ``estimator`` (above); given ``maps`` are used as they are.
    maps_threshold : float or str, optional
        ESPIRiT's relative singular-value threshold (:func:`operators.coils.maps_espirit`'s default when None), or
        ``"noise"``: the noise edge of the gridded calibration data, whose noise is neither white nor of the
        samples' σ_y, so a draw of complex Gaussian noise at σ_y on the same samples (seed 0) is gridded the same
        way and its calibration matrix's largest singular value is the edge (``noise_kspace`` of
        :func:`operators.coils.maps_espirit`).

    Returns
    -------
    Calibration
        ``acs_width`` the ACS diameter ``⌊2r⌋`` in lattice lines, maps ``(coils, H, W)`` complex64
        (``Σ_c |S_c|² = 1``), ``scale`` and ``sigma_y`` in the data's units.
    """
    if maps_method not in MAP_METHODS:
        raise InputError(f"unknown coil-map method {maps_method!r}; choose one of {', '.join(MAP_METHODS)}")
    phase = resolve_map_phase(maps_phase, auto="estimator")  # trajectories' defaults were tuned with ESPIRiT's
    y = _as_samples(samples)
    h, w = (int(v) for v in matrix)
    try:
        c = check_coordinates(coords, (h, w))
    except OperatorInputError as err:
        raise InputError(f"trajectory: {one_line(err)}") from None
    if c.ndim != 2 or c.shape[0] != y.shape[-1]:
        raise InputError(f"samples {tuple(y.shape)} do not match {tuple(c.shape)} coordinates")
    dens = pipe_menon_density(c, (h, w)) if density is None else density
    wts = torch.as_tensor(np.asarray(dens) if not torch.is_tensor(dens) else dens).to(torch.float64)
    if tuple(wts.shape) != (c.shape[0],):
        raise InputError(f"density must have shape ({c.shape[0]},), got {tuple(wts.shape)}")
    try:
        thresh = ESPIRIT_THRESHOLD if maps_threshold is None else espirit_threshold(maps_threshold)
    except OperatorInputError as err:
        raise InputError(f"coil maps: {one_line(err)}") from None
    r = acs_radius(c, (h, w)) if radius is None else float(radius)
    if 2 * r < MIN_ACS:
        raise InputError(f"fully sampled k-space centre too small for coil estimation (radius {r:g} cycles/FOV, "
                         f"need a diameter >= {MIN_ACS})")
    radius_k = torch.linalg.vector_norm(c, dim=-1)
    scale_r = (max(4, round(min(h, w) * SCALE_DISC_FRACTION)) + 1) / 2.0
    near = radius_k < max(r + 1.0, scale_r)
    plan = NufftPlan(c[near], (h, w))
    y_near, w_near, c_near = y[:, near], wts[near], c[near]

    def gridded(taper: torch.Tensor, values: torch.Tensor = y_near) -> torch.Tensor:
        return plan.apply_adjoint(values * (w_near * taper).to(torch.float32))

    sy = float(sigma_y) if sigma_y is not None else estimate_sigma_noncartesian(y, c)

    coils = y.shape[0]
    if maps is not None:
        if tuple(maps.shape) != (coils, h, w):
            raise InputError(f"maps must have shape {(coils, h, w)}, got {tuple(maps.shape)}")
        maps = maps.to(torch.complex64).cpu()
    elif coils == 1:
        maps = torch.ones(1, h, w, dtype=torch.complex64)
    else:
        side = 2 * int(math.floor(math.sqrt(2.0) * r / 2.0))
        method = maps_method if maps_method != "auto" else ("espirit" if side >= MIN_ESPIRIT_ACS else "lowres")
        if method == "espirit":
            box = (torch.linalg.vector_norm(c_near, dim=-1) < r + 1.0).to(torch.float64)
            ks = fft2c(gridded(box))
            noise_ks = None
            if thresh == NOISE_THRESHOLD:  # the same samples' noise at σ_y, gridded as the data are
                noise = complex_gaussian(tuple(y_near.shape), sy, 0, y_near.dtype).to(y_near.device)
                noise_ks = fft2c(gridded(box, noise))
            try:
                maps = maps_espirit(ks, max(side, 2), two_d=True, thresh=thresh, noise_kspace=noise_ks)
            except OperatorInputError as err:
                raise InputError(f"coil maps: {one_line(err)}") from None
        else:
            low = gridded(_hann_disc(c_near, r))
            sos = rss(low, dim=-3)
            ref = torch.quantile(sos.reshape(-1).float(), 0.99)
            maps = normalize_maps(low / (sos + LOWRES_EPS * ref).unsqueeze(-3))
        if phase == "virtual":
            maps = virtual_coil_phase(maps, rss(gridded(_hann_disc(c_near, r)), dim=-3))
    low = gridded(_hann_disc(c_near, scale_r))
    scale = float(reference_scale(sense1_combine(low, maps)))
    return Calibration(acs_width=int(math.floor(2 * r)), maps=maps, scale=scale, sigma_y=sy)


# ----------------------------------------------------------------------------------------------------------------------
# the likelihood


def circulant_normal_diagonal(op: NonCartesianSense) -> torch.Tensor:
    """The diagonal of ``FᴴF`` in the Fourier basis of the image grid (T. Chan's optimal circulant approximation).

    ``ρ(k) = ⟨e_k, Fᴴ F e_k⟩`` for the NUFFT ``F`` alone (coil maps left out: with ``Σ_c |S_c|² = 1`` and
    smooth maps ``AᴴA ≈ FᴴF``): the sample density averaged by the Fejér kernel of the matrix, computed
    from the operator's Toeplitz kernel (its point-spread function ``T``) as the FFT of ``T`` times the
    triangle ``(H − |d₀|)(W − |d₁|) / (H W)``, at the even frequencies of the doubled grid.

    Returns
    -------
    torch.Tensor
        Real ``(H, W)`` in ``torch.fft.fft2`` order, ``≥ 0``, on the operator's device.
    """
    h, w = op.image_shape
    kernel = op._kernel_fft if op._kernel_fft is not None else op._toeplitz_kernel()  # the Toeplitz PSF's spectrum
    psf = torch.fft.ifft2(kernel.to(torch.complex128))
    d0 = torch.fft.fftfreq(2 * h, 1.0 / (2 * h), dtype=torch.float64, device=psf.device).abs()
    d1 = torch.fft.fftfreq(2 * w, 1.0 / (2 * w), dtype=torch.float64, device=psf.device).abs()
    tri = ((h - d0).clamp_min(0) / h)[:, None] * ((w - d1).clamp_min(0) / w)[None, :]
    diag = torch.fft.fft2(psf * tri).real[::2, ::2]
    return diag.clamp_min(0).to(op.maps.real.dtype).contiguous()


def preconditioned_cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor,
                      precondition: Callable[[torch.Tensor], torch.Tensor] | None, iters: int,
                      tol: float = 0.0) -> torch.Tensor:
    """Batched preconditioned CG for ``N x = b`` (``N`` Hermitian positive definite), one system per leading index.

    Parameters
    ----------
    apply : callable
        ``x -> N x`` on ``(K, H, W)``.
    b, x0 : torch.Tensor
        Complex ``(K, H, W)`` right-hand side and start.
    precondition : callable or None
        ``r -> M⁻¹ r`` (Hermitian positive definite); None: plain CG.
    iters : int
        Iterations (each one ``apply``).
    tol : float
        Stop early when every ``‖r‖ / ‖b‖ <= tol``.

    Returns
    -------
    torch.Tensor
        The iterate ``(K, H, W)``.
    """
    shape = (b.shape[0],) + (1,) * (b.ndim - 1)

    def dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vecdot(u.reshape(b.shape[0], -1), v.reshape(b.shape[0], -1)).real.reshape(shape)

    x = x0.clone()
    r = b - apply(x)
    z = precondition(r) if precondition is not None else r
    p = z.clone()
    rz = dot(r, z)
    bnorm = dot(b, b).sqrt().clamp_min(1e-30)
    for _ in range(int(iters)):
        if tol > 0 and bool((dot(r, r).sqrt() / bnorm <= tol).all()):
            break
        ap = apply(p)
        pap = dot(p, ap)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-30), torch.zeros_like(rz))
        x = x + alpha * p
        r = r - alpha * ap
        z = precondition(r) if precondition is not None else r
        rz_new = dot(r, z)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    return x


class NonCartesianKspaceLikelihood(GaussianKspaceLikelihood):
    """``y = A x + n`` for a non-Cartesian SENSE operator, white complex Gaussian ``n`` of ``E|n|² = σ_y²`` per sample.

    :class:`~mri_score.likelihood.GaussianKspaceLikelihood`'s exact terms (:meth:`grad`, :meth:`prox`'s
    solution, :meth:`error_variance`) hold for any linear ``A``; what assumed ``AᴴA ≤ I`` (the Cartesian
    operator with normalised maps) is replaced here, where ``‖AᴴA‖`` is the largest sample density (tens
    to thousands at the centre of radial and spiral k-space):

    * :meth:`prox` (DDS): the same problem, ``(I + γAᴴA) z = x + γAᴴy``, by ``iters`` steps of CG from
      ``x`` as the Cartesian term (exact for any ``A``); ``preconditioned=True`` preconditions them by the
      circulant ``(I + γ ρ)⁻¹`` (:func:`circulant_normal_diagonal`), which converges faster on the spread
      of the sample density but, with DDS's partial solves (10 steps, the count then), changed its PSNR by −0.7 to +0.15 dB
      on 12 radial and spiral slices at 128² (mean −0.06 dB), so it is off by default.
    * :meth:`data_step` (PC): ``x + λ Aᴴ W̃ (y − A x)`` with the density weights ``W̃ = W / max(1,
      ‖AᴴWA‖)``, so ``λ < 2`` is stable (the Cartesian ``x + λ Aᴴ(y − A x)`` diverges for ``λ > 2 / ‖AᴴA‖``).
    * :meth:`inflated_grad` (Langevin, guidance) and :meth:`tweedie_correction` (DPS): the noise the prior
      level σ adds in x reaches the samples with covariance ``σ² AAᴴ``, which the Cartesian term takes as
      ``σ² I``; here ``AAᴴ ≈ W⁻¹`` (``AᴴWA ≈ I`` defines the density weights), so every sample's variance
      is ``v_y + σ²/w_m`` (``σ_y² + r²/w_m`` for DPS) and the steps stay as stable as the Cartesian ones.

    Parameters
    ----------
    op : NonCartesianSense
        The forward model, with density weights (``dcf``).
    y : torch.Tensor
        Samples ``(coils, M)`` divided by the calibration's scale.
    sigma_y : float
        Noise std per complex sample in the same units.
    preconditioned : bool
        Circulant-preconditioned CG in :meth:`prox` (plain CG, as the Cartesian term, by default).
    trajectory : str
        The trajectory's kind (:data:`TRAJECTORIES`, :attr:`NonCartesianVolume.trajectory`), which with the coverage
        sets DDS's CG steps (:meth:`tuned_cg_steps`) and alone its data-weight floor and final denoising factor
        (:meth:`tuned_gamma_floor`, :meth:`tuned_final_denoise`).
    """

    noncartesian = True

    def __init__(self, op: NonCartesianSense, y: torch.Tensor, sigma_y: float, preconditioned: bool = False,
                 trajectory: str = "other") -> None:
        if not isinstance(op, NonCartesianSense):
            raise InputError(f"NonCartesianKspaceLikelihood needs a NonCartesianSense operator, got {type(op).__name__}")
        if op.dcf is None:
            raise InputError("NonCartesianKspaceLikelihood needs density-compensation weights: build the operator "
                             "with dcf=... (e.g. operators.trajectories.pipe_menon_density)")
        super().__init__(op, y, sigma_y)
        self.weights = op.dcf.clamp_min(0)
        self.preconditioned = bool(preconditioned)
        if trajectory not in TRAJECTORIES:
            raise InputError(f"trajectory must be one of {', '.join(TRAJECTORIES)}, got {trajectory!r}")
        self.trajectory = trajectory
        self._diag: torch.Tensor | None = None
        self._grid: torch.Tensor | None = None
        self._dc_weights: torch.Tensor | None = None
        self._coverage: float | None = None

    def coverage(self) -> float:
        """The trajectory's grid coverage on the image matrix (:func:`operators.trajectories.grid_coverage`, cached)."""
        if self._coverage is None:
            self._coverage = grid_coverage(self.op.coord, self.op.image_shape)
        return self._coverage

    def tuned_cg_steps(self) -> int:
        """DDS's CG steps for this trajectory's kind and density: :func:`cg_steps_for_coverage` of :meth:`coverage`."""
        return cg_steps_for_coverage(self.coverage(), self.trajectory)

    def tuned_gamma_floor(self) -> float | None:
        """DDS's data-weight floor for this trajectory's kind: :data:`NONCARTESIAN_GAMMA_FLOOR`'s entry (None: none)."""
        return NONCARTESIAN_GAMMA_FLOOR.get(self.trajectory)

    def tuned_final_denoise(self) -> float | None:
        """DDS's final denoising factor for this trajectory's kind: :data:`NONCARTESIAN_FINAL_DENOISE`'s entry (None:
        none)."""
        return NONCARTESIAN_FINAL_DENOISE.get(self.trajectory)

    def gridded(self) -> torch.Tensor:
        """``Aᴴ(W y)``: the density-compensated (gridding) SENSE-1 image ``(H, W)``, the sampler's start (computed once).

        The Cartesian term starts from ``Aᴴy`` (the zero-filled image); here ``Aᴴy`` weights the densely
        sampled centre of k-space by its density and is no image of the object.
        """
        if self._grid is None:
            self._grid = self.op.density_compensated_adjoint(self.y)
        return self._grid

    def _fourier_diagonal(self) -> torch.Tensor:
        """The Gram's circulant diagonal (:func:`circulant_normal_diagonal`), computed once."""
        if self._diag is None:
            self._diag = circulant_normal_diagonal(self.op)
        return self._diag

    def _precondition(self, gamma: float) -> Callable[[torch.Tensor], torch.Tensor]:
        inv = 1.0 / (1.0 + gamma * self._fourier_diagonal())
        return lambda r: torch.fft.ifft2(torch.fft.fft2(r) * inv)

    def prox(self, x: torch.Tensor, gamma: float, iters: int) -> torch.Tensor:
        """``argmin_z ½‖z − x‖² + γ/2 ‖A z − y‖²``: ``iters`` steps of (preconditioned) CG from ``x``."""
        aty = self.zero_filled()
        pre = self._precondition(gamma) if self.preconditioned else None
        return preconditioned_cg(lambda v: torch.add(v, self.op.gram(v), alpha=gamma), x + gamma * aty, x, pre, iters)

    def carried_noise_std(self, gamma: float | torch.Tensor) -> float:
        """Std per real component of the measurement noise in :meth:`prox`'s exact solution at ``gamma``, mean over pixels.

        As the Cartesian term (:meth:`mri_score.likelihood.GaussianKspaceLikelihood.carried_noise_std`), with the
        Gram's eigenvalues ``ρ_k`` approximated by its circulant diagonal (:func:`circulant_normal_diagonal`):
        ``σ_y / √2 · √(mean_k γ²ρ_k / (1 + γρ_k)²)``.  The densely sampled centre (``γρ ≫ 1``) passes its noise
        at the level ``σ_y / √ρ``, the sparse edge hardly any.
        """
        g = float(gamma)
        rho = self._fourier_diagonal().to(torch.float64)
        return float(self.sigma_y / 2**0.5 * (g * g * rho / (1.0 + g * rho).square()).mean().sqrt())

    def dc_weights(self) -> torch.Tensor:
        """``W̃ = W / max(1, ‖AᴴWA‖)`` ``(M,)``: density weights scaled so the weighted normal operator is ``≤ I``."""
        if self._dc_weights is None:
            gen = torch.Generator().manual_seed(0)
            h, w = self.op.image_shape
            real = self.op.maps.real.dtype
            v = torch.complex(torch.randn(h, w, generator=gen, dtype=real), torch.randn(h, w, generator=gen, dtype=real))
            v = v.to(self.op.maps.device)
            norm = 0.0
            with torch.no_grad():
                for _ in range(NORM_ITERATIONS):
                    v = v / torch.linalg.vector_norm(v).clamp_min(1e-30)
                    v = self.op.adjoint(self.weights * self.op(v))
                    norm = float(torch.linalg.vector_norm(v))
            self._dc_weights = self.weights / max(1.0, 1.05 * norm)
        return self._dc_weights

    def data_step(self, x: torch.Tensor, weight: float) -> torch.Tensor:
        """Density-weighted Landweber step ``x + λ Aᴴ W̃ (y − A x)`` (:meth:`dc_weights`; ``λ < 2`` is stable)."""
        return x + weight * self.op.adjoint(self.dc_weights() * (self.y - self.op(x)))

    def _sample_variance(self, extra: float, base: float) -> torch.Tensor:
        """Per-sample variance ``base + extra / w_m`` ``(M,)`` (``AAᴴ ≈ W⁻¹``); infinite where ``w_m = 0``."""
        return base + extra / self.weights.clamp_min(1e-30)

    def inflated_grad(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``Aᴴ((y − A x) / (v_y + σ²/w))``: the likelihood of ``x_σ``, the prior noise reaching sample m as ``σ²/w_m``."""
        return self.op.adjoint((self.y - self.op(x)) / self._sample_variance(sigma**2, self.v_y))

    def tweedie_correction(
        self, x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_data: float, zeta: float = 1.0,
        clip: bool = True, retain_graph: bool = False,
    ) -> torch.Tensor:
        """DPS: ``−ζ σ² J_{x̂₀}ᴴ Aᴴ((A x̂₀ − y) / (σ_y² + r²/w))``, ``r² = σ² σ_d² / (σ² + σ_d²)``.

        As the Cartesian term with the per-sample variance ``σ_y² + r²/w_m`` (``AAᴴ ≈ W⁻¹``); with ``clip``
        the step is never longer than the density-compensated data-consistency step ``Aᴴ W (A x̂₀ − y)``.
        """
        r2 = sigma**2 * sigma_data**2 / (sigma**2 + sigma_data**2)
        var = self._sample_variance(r2, self.sigma_y**2)
        res = self.op(x0) - self.y
        loss = 0.5 * ((res.real.square() + res.imag.square()) / var).sum()
        (grad,) = torch.autograd.grad(loss, x, retain_graph=retain_graph)
        step = zeta * sigma**2 * grad
        if clip:
            dc = self.op.adjoint(self.weights * res.detach())
            limit = torch.linalg.vector_norm(dc.reshape(dc.shape[0], -1), dim=1)
            norm = torch.linalg.vector_norm(step.reshape(step.shape[0], -1), dim=1)
            step = step * (limit / norm.clamp_min(1e-12)).clamp(max=1.0)[:, None, None]
        return -step.detach()


# ----------------------------------------------------------------------------------------------------------------------
# reconstruction


def calibrate_volume_noncartesian(volume: NonCartesianVolume, maps_method: str = "auto",
                                  use_noise_cov: bool = True, maps_phase: str = "auto",
                                  maps_threshold: float | str | None = None) -> list[Calibration]:
    """One :func:`calibrate_noncartesian` per slice of ``volume``, shared by every method.

    σ_y is ``volume.known_sigma()`` when the noise covariance is known and ``use_noise_cov``, else estimated
    from each slice's outer samples (:func:`estimate_sigma_noncartesian`; the Cartesian benchmarks estimate it
    too).  ``maps_method`` is one of :data:`MAP_METHODS`, ``maps_phase`` and ``maps_threshold`` as
    :func:`calibrate_noncartesian`'s.
    """
    dens = volume.density_weights()
    r = acs_radius(volume.coords, volume.matrix)
    known = volume.known_sigma() if use_noise_cov else None
    out = []
    for i in range(volume.slices):
        try:
            out.append(calibrate_noncartesian(volume.samples[i], volume.coords, volume.matrix, dens, maps_method,
                                              sigma_y=known, radius=r, maps_phase=maps_phase,
                                              maps_threshold=maps_threshold))
        except InputError as err:
            raise InputError(f"{volume.name}: {one_line(err)}" if volume.name else one_line(err)) from None
    return out


def resolve_grid(request: ReconRequest, volume: NonCartesianVolume, prior_meta: Mapping[str, Any] | None) -> ReconRequest:
    """``request`` with an ``auto`` grid resolved for ``volume``: its pixel size against the prior's range
    (``prior_meta``) and its trajectory's grid coverage on its matrix (:meth:`mri_score.request.ReconRequest.for_pixels`);
    other grids as they are.  The grid :func:`reconstruct_noncartesian_volume` samples on."""
    return request.for_pixels(volume.pixel_mm, prior_meta, matrix=volume.matrix,
                              coverage=grid_coverage(volume.coords, volume.matrix))


def reconstruct_noncartesian_volume(
    volume: NonCartesianVolume,
    prior: torch.nn.Module | ComplexPrior,
    request: ReconRequest,
    calibrations: Sequence[Calibration] | None = None,
    crop: tuple[int, int] | None = None,
    extra_terms: Sequence[Likelihood] = (),
    preconditioned: bool = False,
) -> VolumeResult:
    """Posterior sampling of every slice of a non-Cartesian volume with the request's sampler.

    Per slice ``i`` (seed ``request.seed + i``, as :func:`mri_score.pipeline.reconstruct_volume`): the calibration
    (given, or :func:`calibrate_noncartesian` with ``request.maps``), the samples and maps compressed to
    ``request.virtual_coils`` virtual coils (:func:`coil_compression`), the term
    :class:`NonCartesianKspaceLikelihood` on ``NonCartesianSense(maps, coords, dcf)`` with the samples
    divided by the scale, ``request.samples`` samples of ``SAMPLERS[request.sampler]`` started from the
    gridding image, their mean and std.  ``request.grid`` is honoured as on the Cartesian path (``auto``
    resolved for ``volume.pixel_mm`` and the trajectory's grid coverage on its matrix, :func:`resolve_grid`): on a
    finer grid the maps are Fourier-interpolated, the same
    coordinates address it, the data are divided by ``scale / a`` (``a = √(fH fW / (H W))``) and the
    samples come back to the matrix through k-space.

    Parameters
    ----------
    volume : NonCartesianVolume
        The data (density: ``volume.density`` or Pipe–Menon's, computed once).
    prior : torch.nn.Module or ComplexPrior
        The score network on the device to use, or its runtime.
    request : ReconRequest
        The settings; ``magnitude`` must be ``sense`` (``|x|``) and ``adapt`` None.
    calibrations : sequence of Calibration, optional
        One per slice (e.g. shared with the baselines), on all the volume's coils; computed when None.
    crop : (int, int), optional
        Centre crop of the outputs.
    extra_terms : sequence of Likelihood
        Further terms (e.g. classifier guidance), in scaled units.
    preconditioned : bool
        Circulant-preconditioned CG in DDS's proximal step (:class:`NonCartesianKspaceLikelihood`; off by default).

    Returns
    -------
    VolumeResult
        ``image`` |posterior mean| and ``std`` (``sense`` convention), ``zero_filled`` the gridding image's
        magnitude, float32 ``(slices, h, w)``; NFE, seconds, calibrations and complex means per slice.
    """
    if request.magnitude != "sense":
        raise InputError("non-Cartesian reconstruction outputs the coil-combined magnitude |x| (magnitude sense); "
                         f"got {request.magnitude!r}")
    if request.adapt is not None:
        raise InputError("test-time adaptation is not available for non-Cartesian data")
    s = volume.slices
    if calibrations is not None and len(calibrations) != s:
        raise InputError(f"{len(calibrations)} calibrations for {s} slices")
    cprior = prior if isinstance(prior, ComplexPrior) else ComplexPrior(prior)
    cprior.set_precision(request.precision)
    request = resolve_grid(request, volume, getattr(cprior.model, "meta", None))
    device = cprior.device
    matrix = volume.matrix
    grid = fine_shape(matrix, request.grid_factor)
    dens = torch.from_numpy(volume.density_weights())
    coords = torch.from_numpy(volume.coords)
    if calibrations is None:
        calibrations = calibrate_volume_noncartesian(volume, request.maps, maps_phase=request.maps_phase,
                                                     maps_threshold=request.maps_threshold)
    compression = coil_compression(volume, request.virtual_coils)
    if compression is not None:
        compression = compression.to(device)
    out = VolumeResult(image=np.empty(0), std=None, zero_filled=np.empty(0), grid_factor=request.grid_factor)
    native_op: NonCartesianSense | None = None
    fine_op: NonCartesianSense | None = None
    run = SAMPLERS[request.sampler]
    for i in range(s):
        t0 = time.time()
        cal = calibrations[i].to(device)
        maps = cal.maps.to(torch.complex64)
        y = torch.from_numpy(volume.samples[i]).to(device)
        if compression is not None:
            maps, y = compress_coils(maps, compression[i]), compress_coils(y, compression[i], coil_dim=-2)
        if native_op is None:
            native_op = NonCartesianSense(maps, coords, dcf=dens)
        else:
            native_op.update(maps=maps)
        if grid == matrix:
            op, grid_scale = native_op, cal.scale
        else:
            fine_maps = fourier_resample(maps, grid)
            if fine_op is None:
                fine_op = NonCartesianSense(fine_maps, coords, dcf=dens)
            else:
                fine_op.update(maps=fine_maps)
            op, grid_scale = fine_op, cal.scale / ((grid[0] * grid[1]) / (matrix[0] * matrix[1])) ** 0.5
        data = NonCartesianKspaceLikelihood(op, y / grid_scale, max(cal.sigma_y / grid_scale, 1e-4), preconditioned,
                                            volume.trajectory)
        gen = torch.Generator(device="cpu").manual_seed(int(request.seed) + i)
        x_init = data.gridded().expand(request.samples, -1, -1).clone()
        result = run(cprior, [data, *extra_terms], x_init, gen, int(request.steps), request.options)
        samples = result.samples.detach() * grid_scale
        if grid != matrix:
            samples = image_to_grid(samples, matrix)
        mean = samples.mean(dim=0)
        std = samples.abs().std(dim=0).cpu() if request.samples > 1 else None
        image = mean.abs().cpu()
        zf = native_op.density_compensated_adjoint(y).abs().cpu()
        out.add_slice(image, std, zf, crop, result.nfe, time.time() - t0, calibrations[i],
                      mean.cpu().to(torch.complex64))
    return out.finish()
