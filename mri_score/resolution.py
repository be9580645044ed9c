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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mri_score.errors import InputError

#: Pixel range (mm) of a prior whose metadata has no ``pixel_mm``: the round-one shipped prior's corpus.
DEFAULT_PRIOR_PIXEL_MM = (0.8, 1.5)
#: Largest grid refinement per axis (cost grows with its square).
MAX_GRID_FACTOR = 4.0


def prior_pixel_range(meta: Mapping[str, Any] | None) -> tuple[float, float]:
    """``(lo, hi)`` in mm from a prior's metadata (``pixel_mm``, else ``config.data.pixel_mm``, else the default).

    Raises :class:`InputError` when the stored value is not two positive numbers ``lo ≤ hi``.
    """
    meta = meta or {}
    value = meta.get("pixel_mm")
    if value is None:
        data = (meta.get("config") or {}).get("data") or {}
        value = data.get("pixel_mm") if isinstance(data, Mapping) else None
    if value is None:
        return DEFAULT_PRIOR_PIXEL_MM
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
