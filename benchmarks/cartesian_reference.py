"""Cartesian DDS as the time reference of DDS on a trajectory (issue #32's target: at most twice its Cartesian time at
the same matrix), shared by ``run_noncartesian.py``, ``run_noncartesian_tuning.py`` and ``run_noncartesian_grid.py``.

:func:`cartesian_reference` simulates the same images as a Cartesian acquisition (fastMRI equispaced 4x, centre
fraction 0.08: :data:`CARTESIAN`), :func:`cartesian_seconds` times one DDS run on it, and :func:`bracketed` times a
run with the reference around it, so both see the machine in the same state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from benchmarks.harness import undersample
from mri_score.pipeline import reconstruct_volume
from mri_score.prior import ComplexPrior
from mri_score.request import ReconRequest
from mri_score.simulation import simulate_volume

#: The Cartesian reference for DDS's time: fastMRI equispaced mask, acceleration, centre fraction.
CARTESIAN = ("equispaced", 4.0, 0.08)
T = TypeVar("T")


def cartesian_reference(vol: dict, seed: int, coils: int, snr: float) -> dict:
    """The Cartesian acquisition of ``vol`` (``{name, images (S, H, W) complex}``) that DDS's time is compared with: the
    same images and matrix, ``coils`` birdcage coils at ``snr``, fastMRI equispaced 4x, centre fraction 0.08
    (:data:`CARTESIAN`), calibrated once (``under``, ``mask``, ``cals``: :func:`benchmarks.harness.undersample`)."""
    ksp, _, _ = simulate_volume(vol["images"], coils, snr, seed=seed)
    return undersample(ksp, *CARTESIAN, vol["name"] + ".h5")


def cartesian_seconds(acq: dict, prior: ComplexPrior, request: ReconRequest) -> float:
    """Seconds per slice of one timed run of Cartesian DDS with ``request`` on :func:`cartesian_reference`'s
    acquisition (a numeric or native grid is used as it is: pass the grid the trajectory run resolved)."""
    t0 = time.perf_counter()
    reconstruct_volume(acq["under"], acq["mask"], prior, request, calibrations=acq["cals"])
    return (time.perf_counter() - t0) / acq["under"].shape[0]


def bracketed(run: Callable[[], T], reference: Callable[[], float], repeats: int) -> tuple[T, float, float]:
    """``(run()'s result, its seconds, the median of reference()'s)``, the reference timed ``repeats`` times around the
    run: ``ceil(repeats / 2)`` before it and the rest after, so both see the machine in the same state (single
    timings here drift by about ±20 % over minutes, and a reference timed at the start of a benchmark ran faster)."""
    before = [reference() for _ in range((repeats + 1) // 2)]
    t0 = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - t0
    after = [reference() for _ in range(repeats // 2)]
    return result, seconds, float(np.median(before + after))
