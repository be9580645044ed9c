"""Simulated non-Cartesian multi-coil acquisitions (radial, spiral): the library side of ``simulate --trajectory``.

Physics as :mod:`mri_score.simulation`: ``y_c = F_nu(S_c x) + n_c`` with RSS-normalised birdcage maps
(:func:`operators.birdcage_maps`) or given maps, ``F_nu`` the orthonormal NUFFT of
:mod:`operators.nufft` (on a Cartesian grid it is the simulator's ``fft2c``) and complex Gaussian noise.

Noise.  ``snr = p99(|x|) / σ`` as in :mod:`mri_score.simulation`, where ``σ`` is the noise std per
complex sample of a Cartesian readout at the Nyquist spacing of the field of view (one sample per
cycle/FOV).  A trajectory sampled more densely along its readout (spacing ``Δk < 1``) needs a
proportionally shorter dwell time, i.e. a wider receive bandwidth, so each of its samples carries
variance ``σ² / Δk``: both trajectories here read out at ``Δk = 0.5`` (:data:`READOUT_SPACING`, the
usual two-fold readout oversampling), so their samples have std ``σ √2`` and the same information per
unit of k-space as a Cartesian scan at ``σ``.

Trajectories (:func:`trajectory`): **radial**, ``spokes`` uniformly rotated full diameters over 180°
(:func:`operators.trajectories.radial`, readout ``2 N``, ``N = min(H, W)``), fully sampled inside
``|k| < spokes / π``; **spiral**, ``interleaves`` arms of a variable-density spiral
(:func:`operators.trajectories.spiral` with density power :data:`SPIRAL_DENSITY_POWER` and ``N / 16`` turns,
so :data:`SPIRAL_NYQUIST_INTERLEAVES` interleaves would sample the edge of k-space at Nyquist: the edge
is undersampled ``16 / interleaves``-fold, the centre less), resampled to a constant spacing
``Δk`` along each arm (a gradient-amplitude-limited readout, not the uniform-in-parameter samples
whose density diverges at the centre).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mri_score.errors import InputError
from mri_score.noncartesian import NonCartesianVolume
from operators import birdcage_maps
from operators.errors import OperatorInputError
from operators.nufft import nufft
from operators.trajectories import pipe_menon_density, radial, spiral

#: Trajectory kinds :func:`simulate_noncartesian` makes.
KINDS = ("radial", "spiral")
#: Sample spacing along every readout, cycles/FOV (two-fold readout oversampling).
READOUT_SPACING = 0.5
#: Density power ``p`` of the spiral (``|k| ∝ τ^p``; 1 would be uniform density).
SPIRAL_DENSITY_POWER = 2.0
#: Interleaves of the spiral design that would sample the edge of k-space at the Nyquist spacing.
SPIRAL_NYQUIST_INTERLEAVES = 16
#: Samples per arm of the dense spiral that is resampled to constant spacing.
_DENSE_ARM = 200_000


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= int(value) <= 100_000:
        raise InputError(f"{what} must be an integer in [1, 100000], got {value!r}")
    return int(value)


def spiral_trajectory(interleaves: int, matrix: int, spacing: float = READOUT_SPACING) -> tuple[np.ndarray, int]:
    """Variable-density spiral arms at a constant sample spacing along each arm.

    Parameters
    ----------
    interleaves : int
        Arms ``L`` (rotated by ``2π l / L``).
    matrix : int
        ``N``: the arms reach ``|k| < N/2``.
    spacing : float
        Distance between consecutive samples of an arm, cycles/FOV.

    Returns
    -------
    coords : np.ndarray
        float32 ``(L · R, 2)`` cycles/FOV, readout-fastest.
    readout : int
        ``R``, samples per arm.
    """
    interleaves = _count(interleaves, "interleaves")
    turns = SPIRAL_DENSITY_POWER * matrix / (2.0 * SPIRAL_NYQUIST_INTERLEAVES)
    dense = spiral(interleaves, _DENSE_ARM, matrix, SPIRAL_DENSITY_POWER, turns).astype(np.float64)
    arms = dense.reshape(interleaves, _DENSE_ARM, 2)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(arms[0], axis=0), axis=1))])
    readout = int(arc[-1] // spacing) + 1
    at = np.interp(np.arange(readout) * spacing, arc, np.arange(_DENSE_ARM, dtype=np.float64))
    lo = np.floor(at).astype(np.int64)
    hi = np.minimum(lo + 1, _DENSE_ARM - 1)
    frac = (at - lo)[None, :, None]
    coords = arms[:, lo] * (1.0 - frac) + arms[:, hi] * frac
    return coords.reshape(-1, 2).astype(np.float32), readout


def trajectory(kind: str, count: int, matrix: tuple[int, int]) -> tuple[np.ndarray, int]:
    """The simulator's trajectory: ``(coords (M, 2) float32 cycles/FOV, readout)`` (see the module docstring).

    ``kind`` ``radial`` (``count`` spokes) or ``spiral`` (``count`` interleaves); ``matrix`` ``(H, W)``,
    the trajectory covering the disc of diameter ``min(H, W)``.
    """
    n = int(min(matrix))
    if kind == "radial":
        count = _count(count, "spokes")
        readout = int(round(n / READOUT_SPACING))
        return radial(count, readout, matrix=n), readout
    if kind == "spiral":
        return spiral_trajectory(count, n)
    raise InputError(f"unknown trajectory {kind!r}; choose one of {', '.join(KINDS)}")


def simulate_noncartesian(
    images: np.ndarray,
    trajectory_kind: str,
    spokes_or_interleaves: int,
    coils: int = 8,
    snr: float = 50.0,
    seed: int = 0,
    *,
    maps: np.ndarray | None = None,
    noise_cov: np.ndarray | None = None,
    pixel_mm: tuple[float, float] | None = None,
    density: bool = True,
) -> NonCartesianVolume:
    """Noisy non-Cartesian multi-coil samples of complex ``images``, with the noise-free magnitude as target.

    Parameters
    ----------
    images : np.ndarray
        Complex (or real) ``(slices, H, W)``.
    trajectory_kind : str
        ``radial`` or ``spiral`` (:func:`trajectory`).
    spokes_or_interleaves : int
        Spokes (radial) or interleaves (spiral).
    coils : int
        Birdcage coils when ``maps`` is None (1: a uniform single coil).
    snr : float
        ``p99(|images|) / σ`` with ``σ`` the Cartesian-equivalent noise std (module docstring); the samples'
        std is ``σ / √Δk``.  Ignored when ``noise_cov`` is given.
    seed : int
        Seeds the noise.
    maps : np.ndarray, optional
        complex ``(coils, H, W)`` RSS-normalised maps (e.g. from
        :func:`mri_score.data.real_physics.simulate_real_acquisition`), shared by all slices.
    noise_cov : np.ndarray, optional
        complex ``(coils, coils)`` Cartesian-equivalent noise covariance (e.g. ``simulate_real_acquisition``'s
        ``noise_cov``); the samples' covariance is ``noise_cov / Δk``.
    pixel_mm : tuple of float, optional
        Recorded in the volume.
    density : bool
        Compute the Pipe–Menon density weights (:func:`operators.trajectories.pipe_menon_density`).

    Returns
    -------
    NonCartesianVolume
        ``samples`` complex64 ``(slices, coils, M)``, ``coords``, ``density``, ``noise_cov`` (per sample),
        ``target`` float32 ``|images|`` (the RSS of the noise-free coil images: the maps are normalised),
        ``trajectory`` and ``readout``.
    """
    imgs = np.asarray(images)
    if imgs.ndim != 3 or imgs.shape[0] < 1 or min(imgs.shape[1:]) < 2 or not np.isfinite(imgs).all():
        raise InputError(f"images must be finite (slices, H, W), got shape {imgs.shape}")
    if not (isinstance(snr, int | float) and math.isfinite(snr) and snr > 0) and noise_cov is None:
        raise InputError(f"snr must be a finite number > 0, got {snr!r}")
    s, h, w = imgs.shape
    coords, readout = trajectory(trajectory_kind, spokes_or_interleaves, (h, w))
    x = torch.from_numpy(imgs.astype(np.complex64))
    if maps is None:
        if isinstance(coils, bool) or not isinstance(coils, int | np.integer) or not 1 <= coils <= 64:
            raise InputError(f"coils must be an integer in [1, 64], got {coils!r}")
        sens = torch.from_numpy(birdcage_maps(int(coils), (h, w))) if coils > 1 else torch.ones(1, h, w,
                                                                                               dtype=torch.complex64)
    else:
        sens = torch.from_numpy(np.asarray(maps).astype(np.complex64))
        if sens.ndim != 3 or tuple(sens.shape[1:]) != (h, w):
            raise InputError(f"maps must be (coils, {h}, {w}), got {tuple(sens.shape)}")
    c = sens.shape[0]
    try:
        clean = nufft(sens[None] * x[:, None], coords).numpy()  # (S, C, M)
    except OperatorInputError as err:
        raise InputError(str(err)) from None
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)) / np.sqrt(2.0)
    if noise_cov is None:
        sigma = float(np.percentile(np.abs(imgs), 99)) / float(snr)
        cov = (sigma**2 / READOUT_SPACING) * np.eye(c, dtype=np.complex128)
    else:
        base = np.asarray(noise_cov, dtype=np.complex128)
        if base.shape != (c, c):
            raise InputError(f"noise_cov must be ({c}, {c}), got {base.shape}")
        cov = base / READOUT_SPACING
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise InputError("noise_cov must be Hermitian positive definite") from None
    noise = np.einsum("ij,sjm->sim", chol, z)
    target = np.abs(imgs).astype(np.float32)
    return NonCartesianVolume(
        samples=(clean + noise).astype(np.complex64), coords=coords, matrix=(h, w),
        density=pipe_menon_density(coords, (h, w)) if density else None, pixel_mm=pixel_mm, noise_cov=cov,
        target=target, trajectory=trajectory_kind, readout=readout,
    )
