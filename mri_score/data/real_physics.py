"""Evaluation physics for the real-image set: multi-coil k-space that the training simulator never produces.

The training simulator (:func:`mri_score.simulation.simulate_volume`) uses sigpy birdcage maps,
the image's own phase (zero for a magnitude image) and white noise of equal variance in every
coil.  :func:`simulate_real_acquisition` differs in all three (:mod:`operators.loop_coils`):

=====================  ==========================================  ==========================================
                       training (``simulation.py``)                here
=====================  ==========================================  ==========================================
coil sensitivities     analytic birdcage (sigpy), ``r = 1.5``      Biot–Savart loops, ``B1⁻ ∝ Bx − i·By``,
                                                                   a named or custom array geometry, the
                                                                   real field of view in mm, random
                                                                   per-coil phase
background phase       none (magnitude images) / corpus field       random low-order Legendre polynomial
coil noise             white, equal variance                       Hermitian covariance: unequal variances,
                                                                   neighbour correlation (complex AR(1))
=====================  ==========================================  ==========================================

SNR is defined as in ``simulation.py``: ``snr = p99(|x|) / σ`` with ``p99(|x|)`` the 99th
percentile of the image magnitude and ``σ²`` the **mean** per-coil noise variance per complex
k-space sample (the orthonormal FFT makes image- and k-space noise equal), i.e.
``noise_cov = σ² · R`` with ``mean(diag R) = 1``.  Maps are RSS-normalised
(``Σ_c |S_c|² = 1``), so the noise-free coil-combined image is ``truth`` itself.
"""

from __future__ import annotations

import numpy as np
import torch

from mri_score.errors import InputError
from operators.errors import OperatorInputError
from operators.fft import fft2c
from operators.loop_coils import LoopGeometry, correlated_noise, loop_coil_maps, resolve_geometry, smooth_phase


def simulate_real_acquisition(
    image: np.ndarray,
    pixel_mm: tuple[float, float],
    coils: int = 8,
    geometry: str | LoopGeometry = "head_ring",
    snr: float = 50.0,
    seed: int = 0,
    correlation: float = 0.3,
    phase_order: int = 3,
) -> dict[str, object]:
    """Fully sampled multi-coil k-space of a real magnitude image under the evaluation physics.

    ``kspace_c = F(S_c · x) + n_c`` with ``x = image · exp(iφ)``, ``S`` the loop-coil maps
    (:func:`operators.loop_coils.loop_coil_maps`) and ``n`` correlated complex Gaussian noise
    (:func:`operators.loop_coils.correlated_noise`) scaled to ``snr``.  Everything random —
    per-coil map phase, background phase, noise covariance, noise — is drawn from
    independent streams of ``numpy.random.SeedSequence(seed)``.

    Parameters
    ----------
    image : np.ndarray
        Real, non-negative float ``(H, W)`` magnitude (any units).
    pixel_mm : tuple of float
        In-plane pixel size ``(rows, cols)`` in mm (sets the coils' field of view).
    coils : int
        Number of loops, 4 to 20.
    geometry : str or LoopGeometry
        Array geometry: a name of :data:`operators.loop_coils.GEOMETRIES` or a geometry.
    snr : float
        ``p99(|image|) / σ`` (> 0), ``σ²`` the mean per-coil noise variance per complex sample.
    seed : int
        Random seed.
    correlation : float
        Neighbour-coil noise correlation magnitude, ``[0, 1)``.
    phase_order : int
        Degree of the background-phase polynomial (>= 1).

    Returns
    -------
    dict
        ``kspace`` complex64 ``(C, H, W)`` noisy; ``noise_cov`` complex128 ``(C, C)`` (``σ² R``);
        ``truth`` complex64 ``(H, W)`` = ``image · exp(iφ)``, the noise-free target for scoring
        (its magnitude is ``image``); ``maps`` complex64 ``(C, H, W)``; ``phase`` float32
        ``(H, W)`` radians; ``sigma`` float (σ); ``snr`` float; ``geometry`` the
        :class:`~operators.loop_coils.LoopGeometry`; ``pixel_mm``.
    """
    img = np.asarray(image)
    if img.ndim != 2 or min(img.shape) < 1:
        raise InputError(f"image must be (H, W), got shape {img.shape}")
    if np.iscomplexobj(img):
        raise InputError("image must be a real magnitude (the background phase is simulated here)")
    img = img.astype(np.float32)
    if not np.isfinite(img).all() or (img < 0).any():
        raise InputError("image must be finite and non-negative")
    if not snr > 0:
        raise InputError(f"snr must be > 0, got {snr}")
    ref = float(np.percentile(img, 99))
    if not ref > 0:
        raise InputError("image is (almost) empty: its 99th-percentile magnitude is 0")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3)]
    geo = resolve_geometry(geometry)
    try:
        maps = loop_coil_maps(int(coils), img.shape, (float(pixel_mm[0]), float(pixel_mm[1])), geo, rng=streams[0])
        phase = smooth_phase(img.shape, streams[1], order=int(phase_order))
        noise = correlated_noise(img.shape, int(coils), streams[2], correlation=correlation)
    except OperatorInputError as err:
        raise InputError(str(err)) from err
    truth = (img * np.exp(1j * phase)).astype(np.complex64)
    clean = fft2c(torch.from_numpy(maps) * torch.from_numpy(truth)).numpy()
    sigma = ref / float(snr)
    kspace = (clean + sigma * noise.noise).astype(np.complex64)
    return {
        "kspace": kspace,
        "noise_cov": sigma**2 * noise.cov,
        "truth": truth,
        "maps": maps,
        "phase": phase,
        "sigma": sigma,
        "snr": float(snr),
        "geometry": geo,
        "pixel_mm": (float(pixel_mm[0]), float(pixel_mm[1])),
    }
