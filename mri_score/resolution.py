"""Matching the reconstruction grid to the pixel size a prior was trained at.

A score prior learns image statistics at the pixel sizes of its training data; the
same anatomy on a coarser grid (fewer, larger pixels) is a different image to it.
Reconstructing on a grid ``f`` times finer (k-space zero-padded, data consistency
kept on the measured matrix: :class:`operators.Sense` with ``kspace_shape``) shows
the prior images at a pixel size inside its range.

* The file's pixel size is the header's encoded field of view over the encoded matrix
  (:attr:`mri_score.fastmri_io.FastMRIVolume.pixel_mm`).
* The prior's range is its metadata's ``pixel_mm: [lo, hi]`` (written by
  :mod:`mri_score.train` from ``data.pixel_mm``).  The shipped round-one prior
  (``weights/prior_brain_synth.safetensors``, the default before the mixed prior) carries none: it was trained on the
  synthetic corpus at 0.8–1.5 mm, so a missing value means :data:`DEFAULT_PRIOR_PIXEL_MM`.
* :func:`auto_grid_factor`: 1 when the pixel is inside the range or finer (a grid coarser
  than the measured one would drop measured samples), else the smallest half-integer
  ``f`` (≤ :data:`MAX_GRID_FACTOR`) with ``pixel / f ≤ hi``.
* :func:`acquisition_grid_factor`: the rule measured on the development data
  (``configs/ablation_prior_dev.yaml`` → ``benchmarks/results/ablation_prior_dev.md``): a 2x finer grid
  everywhere gained +1.69 dB [0.13, 2.35] on the real development volumes at 4x equispaced and +1.69 / +0.56 dB
  on the in-distribution / anatomy-shift synthetic slices, but at 8x random +0.73 [−0.17, 1.36] on the real
  volumes against −0.37 / +0.10 on the synthetic ones (the prior, not the grid, limits 8x).  So ``auto``
  refines by :data:`LOW_ACCEL_FACTOR` when the mask's acceleration is below :data:`LOW_ACCEL_MAX` and the
  measured matrix has at most :data:`LOW_ACCEL_MAX_PIXELS` pixels (128²: the development data's largest matrix;
  the network's time grows with the fine grid's pixels, ×4).
* :func:`trajectory_grid_factor`: the same refinement on radial and spiral trajectories, by their grid coverage
  (:data:`TRAJECTORY_GRID_MIN_COVERAGE`, measured on the synthetic tuning subjects by
  ``benchmarks/run_noncartesian_grid.py``).

The largest of the rules' factors is used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mri_score.errors import InputError

#: Pixel range (mm) of a prior whose metadata has no ``pixel_mm``: the round-one shipped prior's corpus.
DEFAULT_PRIOR_PIXEL_MM = (0.8, 1.5)
#: The pixel range (mm) each synthetic training source draws when its config gives no ``pixel_mm``
#: (:func:`mri_score.training.build_source` uses these defaults; :func:`prior_pixel_range` reads them for a blend).
SOURCE_PIXEL_MM = {"synthetic": DEFAULT_PRIOR_PIXEL_MM, "mixed": (0.5, 3.0), "domain_random": (0.5, 3.0)}
#: Largest grid refinement per axis (cost grows with its square).
MAX_GRID_FACTOR = 4.0
#: ``--grid auto`` refines by this factor at low acceleration (:func:`acquisition_grid_factor`).
LOW_ACCEL_FACTOR = 2.0
#: Below this acceleration the low-acceleration refinement applies (4x measured: gains; 8x: none; between them the
#: geometric midpoint, an interpolation that was not measured).
LOW_ACCEL_MAX = 32**0.5
#: The low-acceleration refinement applies to measured matrices of at most this many pixels: 128², the largest matrix of
#: the development data it was measured on.  A check on larger synthetic matrices kept it (``benchmarks/run_grid_tuning.py
#: --factor 2``, rule fixed before the run, ``benchmarks/results/grid_large_matrix*.md``): at 4x the 2x grid gained
#: +1.20 / +1.32 dB (corpus / domain-randomised) at 2 mm on 128², +0.03 / +0.26 at 1 mm on 192² and −0.18 / +0.05 at
#: 1 mm on 256², at 4-6x the time.
LOW_ACCEL_MAX_PIXELS = 128 * 128
#: On radial and spiral trajectories the low-acceleration refinement applies from this grid coverage
#: (:func:`operators.trajectories.grid_coverage`) up, on matrices of at most :data:`LOW_ACCEL_MAX_PIXELS` pixels
#: (:func:`trajectory_grid_factor`); None: never.  Chosen by the rule of ``benchmarks/run_noncartesian_grid.py``
#: (``benchmarks/results/noncartesian_grid.md``): on the synthetic tuning subjects at 128² the 2x grid gained +0.29 to
#: +1.03 dB at every tuned setting from radial 12 spokes (coverage 0.116, rounded down) up (radial 12-96 spokes,
#: spirals of 4-16 interleaves) and lost 0.22 dB at radial 8 spokes (coverage 0.078), which stays native.  It costs
#: 2.8-3.7x the native grid's seconds per slice, 0.77-1.38x Cartesian DDS's on the same 2x grid.
TRAJECTORY_GRID_MIN_COVERAGE: float | None = 0.116


def prior_pixel_range(meta: Mapping[str, Any] | None) -> tuple[float, float]:
    """``(lo, hi)`` in mm from a prior's metadata: ``pixel_mm``, else ``config.data.pixel_mm``, else for a blend of
    sources (``config.data.source: blend``) the span of its drawn parts' ``config.data.<part>.pixel_mm`` (a part
    without one: :data:`SOURCE_PIXEL_MM`), else :data:`DEFAULT_PRIOR_PIXEL_MM`.

    Raises :class:`InputError` when a stored value is not two positive numbers ``lo ≤ hi``.
    """
    meta = meta or {}
    value = meta.get("pixel_mm")
    if value is not None:
        return _pixel_range(value)
    data = (meta.get("config") or {}).get("data") or {}
    if not isinstance(data, Mapping):
        return DEFAULT_PRIOR_PIXEL_MM
    if data.get("pixel_mm") is not None:
        return _pixel_range(data["pixel_mm"])
    blend = data.get("blend") if data.get("source") == "blend" else None
    if isinstance(blend, Mapping):  # each drawn part: its own pixel_mm, else its source's default
        parts = []
        for name, weight in blend.items():
            section = data.get(name) if isinstance(data.get(name), Mapping) else {}
            if float(weight) > 0:
                stated = section.get("pixel_mm")
                parts.append(_pixel_range(stated) if stated is not None else SOURCE_PIXEL_MM.get(name, DEFAULT_PRIOR_PIXEL_MM))
        if parts:
            return min(lo for lo, _ in parts), max(hi for _, hi in parts)
    return DEFAULT_PRIOR_PIXEL_MM


def _pixel_range(value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"prior metadata pixel_mm must be [lo, hi] in mm, got {value!r}") from None
    if not (0 < lo <= hi < math.inf):
        raise InputError(f"prior metadata pixel_mm must be [lo, hi] with 0 < lo <= hi, got {value!r}")
    return lo, hi


def auto_grid_factor(pixel_mm: float | Sequence[float] | None, trained: tuple[float, float]) -> float:
    """The grid refinement that brings a pixel of ``pixel_mm`` (one value or ``(x, y)``) into ``trained``.

    The coarser in-plane axis decides (one factor for both axes).  Returns 1.0 when the pixel size is
    unknown (None), inside the range or finer than it; else the smallest multiple of 0.5 with
    ``pixel / f ≤ hi``, at most :data:`MAX_GRID_FACTOR`.
    """
    if pixel_mm is None:
        return 1.0
    values = [float(pixel_mm)] if isinstance(pixel_mm, (int, float)) else [float(v) for v in pixel_mm]
    if not values or not all(0 < v < math.inf for v in values):
        return 1.0
    pixel, hi = max(values), float(trained[1])
    if pixel <= hi * (1 + 1e-6):
        return 1.0
    return min(MAX_GRID_FACTOR, math.ceil(2 * pixel / hi - 1e-6) / 2)


def mask_acceleration(mask: np.ndarray | Sequence[float] | None) -> float | None:
    """Acceleration of a sampling mask: its size over the number of sampled entries (None: no mask or none sampled).

    A 1-D ``(W,)`` column mask gives ``W / sampled columns`` (fastMRI's masks, ACS included); a 2-D mask counts
    its sampled points.
    """
    if mask is None:
        return None
    m = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    sampled = int(np.count_nonzero(m))
    return float(m.size) / sampled if sampled else None


def acquisition_grid_factor(accel: float | None, matrix: Sequence[int] | None) -> float:
    """The low-acceleration refinement (module docstring): :data:`LOW_ACCEL_FACTOR` when ``accel`` is below
    :data:`LOW_ACCEL_MAX` and the ``(H, W)`` matrix has at most :data:`LOW_ACCEL_MAX_PIXELS` pixels, else 1.0
    (also when either is unknown)."""
    if accel is None or matrix is None or not math.isfinite(accel):
        return 1.0
    return LOW_ACCEL_FACTOR if accel < LOW_ACCEL_MAX and _refinable(matrix) else 1.0


def _refinable(matrix: Sequence[int]) -> bool:
    """Whether the ``(H, W)`` matrix is small enough for the low-acceleration refinement (:data:`LOW_ACCEL_MAX_PIXELS`)."""
    return int(matrix[-2]) * int(matrix[-1]) <= LOW_ACCEL_MAX_PIXELS


def trajectory_grid_factor(coverage: float | None, matrix: Sequence[int] | None) -> float:
    """The low-acceleration refinement on a trajectory: :data:`LOW_ACCEL_FACTOR` when its grid ``coverage`` is at least
    :data:`TRAJECTORY_GRID_MIN_COVERAGE` and the ``(H, W)`` matrix has at most :data:`LOW_ACCEL_MAX_PIXELS` pixels,
    else 1.0 (also when either is unknown or no threshold is set)."""
    if coverage is None or matrix is None or TRAJECTORY_GRID_MIN_COVERAGE is None or not math.isfinite(coverage):
        return 1.0
    return LOW_ACCEL_FACTOR if coverage >= TRAJECTORY_GRID_MIN_COVERAGE and _refinable(matrix) else 1.0


def fine_shape(shape: Sequence[int], factor: float) -> tuple[int, int]:
    """``(H, W)`` of the grid ``factor`` times finer than ``shape`` (each rounded; never smaller)."""
    h, w = int(shape[-2]), int(shape[-1])
    return max(h, round(h * factor)), max(w, round(w * factor))


def check_grid_factor(factor: float) -> float:
    """``factor`` as a float in ``[1, MAX_GRID_FACTOR]``, else an :class:`InputError`."""
    try:
        f = float(factor)
    except (TypeError, ValueError):
        raise InputError(f"grid factor must be a number in [1, {MAX_GRID_FACTOR:g}], got {factor!r}") from None
    if not 1.0 <= f <= MAX_GRID_FACTOR:
        raise InputError(f"grid factor must be in [1, {MAX_GRID_FACTOR:g}], got {factor!r}")
    return f
