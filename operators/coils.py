"""Coil combination and coil-sensitivity estimation from the ACS block of undersampled k-space.

Every estimator here looks only at the fully sampled centre (ACS) of the
*undersampled* k-space: never at the fully sampled answer.  Maps are normalised
so that ``Σ_c |S_c|² = 1`` wherever the maps are defined, and they are defined
**everywhere** (no support crop): a pixel with zero maps is unconstrained by
the data and a prior would fill it with hallucinations.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from operators.errors import OperatorInputError
from operators.fft import ifft2c
from operators.noise import complex_gaussian, estimate_sigma_y

#: For a 2-D mask (square calibration region) ESPIRiT needs at least this many
#: ACS lines; below it ``auto`` uses the low-resolution estimate.  Column masks
#: calibrate on a rectangular region and use ESPIRiT from :data:`MIN_ACS` lines.
MIN_ESPIRIT_ACS = 16
#: Below this many ACS lines no map estimate is trustworthy.
MIN_ACS = 4
#: Phase references of estimated maps (:func:`estimate_maps`): ``virtual`` makes a virtual body coil real and
#: non-negative (:func:`virtual_coil_phase`); ``estimator`` keeps the estimator's own phase (ESPIRiT: coil 0 real and
#: non-negative, as sigpy and BART return them; low resolution: the ACS image's).
MAP_PHASES = ("virtual", "estimator")
#: The phase reference of :func:`estimate_maps` and of a reconstruction request's ``maps_phase``.
DEFAULT_MAP_PHASE = "virtual"
#: ESPIRiT's relative singular-value threshold of the signal subspace (sigpy's ``EspiritCalib`` default):
#: :func:`maps_espirit`'s default.
ESPIRIT_THRESHOLD = 0.02
#: The threshold rule named in place of a number: ``noise`` sets ESPIRiT's threshold per slice at the noise edge of
#: the calibration matrix (:func:`espirit_noise_threshold`).
NOISE_THRESHOLD = "noise"
#: The threshold :func:`estimate_maps` (the Cartesian calibration) gives ESPIRiT, and a request's ``maps_threshold``
#: when None: the noise edge (decided on the development data, ``configs/ablation_maps_noise_edge_dev.yaml``).
MAPS_THRESHOLD = NOISE_THRESHOLD
#: Bounds of the noise-edge threshold (data far above the noise keep all but the numerically null vectors; data
#: below it keep the leading ones).
NOISE_THRESHOLD_BOUNDS = (1e-4, 0.5)


def rss(x: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares over the coil dim: ``(..., coils, H, W)`` -> real ``(..., H, W)``."""
    return torch.sqrt((x.abs() ** 2).sum(dim=dim))


def expected_rss(image: torch.Tensor, maps: torch.Tensor, noise_std: float = 0.0) -> torch.Tensor:
    """Root-sum-of-squares magnitude the coil images ``S_c x`` would have with k-space noise of std ``noise_std``.

    fastMRI's targets are the RSS of the *noisy* fully sampled coil images, so they
    carry a noise floor (a non-central chi bias).  With complex Gaussian noise of
    ``E|n|² = σ²`` per sample (the orthonormal FFT keeps σ in image space),
    ``E[RSS²] = |x|² Σ_c |S_c|² + C σ²``; this returns its square root.

    Parameters
    ----------
    image : torch.Tensor
        Complex ``(..., H, W)`` coil-combined image.
    maps : torch.Tensor
        Coil maps ``(coils, H, W)``.
    noise_std : float
        σ per complex k-space sample, in the units of ``image``; 0 gives ``|x| sqrt(Σ|S_c|²)``.

    Returns
    -------
    torch.Tensor
        Real ``(..., H, W)``.
    """
    sos = (maps.abs() ** 2).sum(dim=-3)
    return torch.sqrt(image.abs() ** 2 * sos + maps.shape[-3] * float(noise_std) ** 2)


def sense1_combine(coil_images: torch.Tensor, maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """SENSE-1 / MVUE combination ``Σ conj(S_c) x_c / Σ |S_c|²``: ``(..., coils, H, W)`` -> ``(..., H, W)``."""
    num = (torch.conj(maps) * coil_images).sum(dim=-3)
    den = (maps.abs() ** 2).sum(dim=-3)
    return num / den.clamp_min(eps)


def normalize_maps(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale maps ``(..., coils, H, W)`` so that ``Σ_c |S_c|² = 1`` at every pixel where they are non-zero."""
    norm = rss(maps, dim=-3).unsqueeze(-3)
    return torch.where(norm > eps, maps / norm.clamp_min(eps), torch.zeros_like(maps))


def virtual_coil_phase(maps: torch.Tensor, weights: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """Maps ``(coils, H, W)`` with their phase referenced to a virtual body coil instead of one receive coil.

    Maps are defined up to a phase per pixel: ``S e^{iθ}`` and the image ``x e^{-iθ}`` give the same data. The
    convention decides the phase the image to reconstruct carries, and so what a prior trained on smooth-phase
    images is asked for. ESPIRiT's convention (coil 0 real) gives the image coil 0's phase, which winds around
    wherever that coil's sensitivity vanishes inside the field of view. Here the reference is the dominant
    principal component of the coils, ``u`` = leading eigenvector of ``Σ_r w(r) S(r) S(r)ᴴ`` (a virtual coil that
    sees the whole object, like a body coil; Buehrer et al. 2009): every pixel's maps are rotated so that
    ``Σ_c conj(u_c) S_c`` is real and non-negative. The result depends on the maps' magnitudes and relative
    phases only, not on the phase convention they arrive in.

    Parameters
    ----------
    maps : torch.Tensor
        Complex ``(coils, H, W)`` maps.
    weights : torch.Tensor, optional
        Real non-negative ``(H, W)`` weights of the pixels in the coil covariance (e.g. a low-resolution image
        magnitude, so that the object rather than the background decides the virtual coil); uniform by default.
    eps : float
        Pixels where the virtual coil's magnitude is at most ``eps`` keep their phase.

    Returns
    -------
    torch.Tensor
        Complex ``(coils, H, W)``, the same magnitudes and relative phases as ``maps``.
    """
    if maps.ndim != 3 or not torch.is_complex(maps):
        raise OperatorInputError(f"maps must be complex (coils, H, W), got {maps.dtype} {tuple(maps.shape)}")
    flat = maps.reshape(maps.shape[0], -1).to(torch.complex128)
    w = torch.ones(flat.shape[1], dtype=torch.float64, device=maps.device) if weights is None else \
        weights.reshape(-1).to(device=maps.device, dtype=torch.float64)
    cov = (flat * w) @ flat.conj().T
    u = torch.linalg.eigh(cov)[1][:, -1]
    u = u * (u[u.abs().argmax()].conj() / u.abs().max())  # eigh's phase is arbitrary: largest entry real, positive
    ref = (u.conj()[:, None] * flat).sum(0)
    rot = torch.where(ref.abs() > eps, ref.conj() / ref.abs().clamp_min(eps), torch.ones_like(ref))
    return (flat * rot).reshape(maps.shape).to(maps.dtype)


def coil_compression_matrix(samples: torch.Tensor, virtual: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """SVD coil compression (Buehrer et al. 2007; Huang et al. 2008; BART ``cc -S``): the ``virtual`` dominant
    left singular vectors of the coil data.

    Parameters
    ----------
    samples : torch.Tensor
        Complex k-space ``(..., coils, M)`` (leading dims, e.g. slices, are pooled: one matrix for all).
    virtual : int
        Virtual coils ``V``, ``1 ≤ V ≤ coils``.
    weights : torch.Tensor, optional
        Non-negative ``(M,)`` weight of each sample's energy, e.g. its k-space area (density-compensation weights),
        so that the densely sampled centre of radial or spiral k-space does not dominate; uniform when None.

    Returns
    -------
    torch.Tensor
        ``U`` ``(coils, V)`` with orthonormal columns (dtype of ``samples``): virtual coil ``v`` is
        ``Σ_c conj(U[c, v]) · coil_c`` (:func:`compress_coils`).  White noise stays white with the same variance.
    """
    if not torch.is_tensor(samples) or not samples.is_complex() or samples.ndim < 2:
        raise OperatorInputError(f"coil_compression_matrix takes complex samples (..., coils, M), got "
                                 f"{getattr(samples, 'shape', type(samples).__name__)}")
    coils = int(samples.shape[-2])
    if isinstance(virtual, bool) or int(virtual) != virtual or not 1 <= int(virtual) <= coils:
        raise OperatorInputError(f"virtual coils must be an integer in [1, {coils}], got {virtual!r}")
    data = samples.to(torch.complex128)
    if weights is not None:
        w = torch.as_tensor(weights, device=samples.device).to(torch.float64)
        if w.shape != (samples.shape[-1],) or bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise OperatorInputError(f"weights must be finite and non-negative ({samples.shape[-1]},), got "
                                     f"{tuple(w.shape)}")
        data = data * w.sqrt()
    data = data.movedim(-2, 0).reshape(coils, -1)
    # the left singular vectors of D are the eigenvectors of D Dᴴ (coils x coils, float64): cheap for M >> coils
    gram = data @ data.conj().T
    _, vectors = torch.linalg.eigh(gram)
    return vectors.flip(-1)[:, : int(virtual)].to(samples.dtype).contiguous()


def compress_coils(x: torch.Tensor, matrix: torch.Tensor, coil_dim: int = -3) -> torch.Tensor:
    """Virtual coils ``Uᴴ x`` along ``coil_dim``: k-space ``(..., coils, M)`` with ``coil_dim=-2``, images or
    maps ``(..., coils, H, W)`` with ``-3``; ``matrix`` ``(coils, V)`` from :func:`coil_compression_matrix`."""
    if x.shape[coil_dim] != matrix.shape[0]:
        raise OperatorInputError(f"{x.shape[coil_dim]} coils in dim {coil_dim} do not match a compression matrix for "
                                 f"{matrix.shape[0]}")
    moved = x.movedim(coil_dim, -1)
    return (moved @ matrix.conj().to(x.dtype)).movedim(-1, coil_dim)


def birdcage_maps(coils: int, shape: tuple[int, int], r: float = 1.5) -> np.ndarray:
    """Simulated birdcage sensitivities (``sigpy.mri.birdcage_maps``) normalised so ``Σ_c |S_c|² = 1``.

    Parameters
    ----------
    coils : int
        Number of coils (>= 1).
    shape : tuple of int
        ``(H, W)`` of the image.
    r : float
        Relative radius of the birdcage.

    Returns
    -------
    np.ndarray
        complex64 ``(coils, H, W)``.
    """
    import sigpy.mri

    if coils < 1:
        raise OperatorInputError(f"birdcage maps need at least one coil, got {coils}")
    maps = sigpy.mri.birdcage_maps((coils, *shape), r=r).astype(np.complex64)
    return normalize_maps(torch.from_numpy(maps)).numpy()


def _centre_run_bounds(line: np.ndarray) -> tuple[int, int]:
    """First and one-past-last index of the run of True through ``len // 2`` (``(c, c)`` when the centre is not sampled)."""
    c = line.shape[0] // 2
    if not line[c]:
        return c, c
    lo, hi = c, c
    while lo > 0 and line[lo - 1]:
        lo -= 1
    while hi < line.shape[0] - 1 and line[hi + 1]:
        hi += 1
    return lo, hi + 1


def _centre_run(line: np.ndarray) -> int:
    """Length of the run of True around index ``len // 2`` (0 when the centre is not sampled)."""
    lo, hi = _centre_run_bounds(line)
    return hi - lo


def acs_columns(mask: torch.Tensor) -> tuple[int, int]:
    """``(first, stop)`` of the fully sampled centre columns of a column mask broadcasting to ``(..., W)``.

    The run need not be centred on ``W // 2`` (an equispaced line next to the block lengthens it on
    one side), so calibration regions are placed inside these bounds, not around the centre.
    """
    m = (torch.as_tensor(mask) != 0).cpu().numpy()
    line = m.reshape(-1, m.shape[-1])[0] if m.ndim >= 2 else m.reshape(-1)
    return _centre_run_bounds(line)


def acs_width(mask: torch.Tensor) -> int:
    """Width of the contiguous fully sampled block around the k-space centre.

    ``mask`` broadcasts to ``(..., H, W)``.  For a column mask this is the run of
    sampled columns through ``W // 2``; for a 2-D mask the side of the sampled
    cross through the centre (the smaller of the row and column runs).
    """
    m = (torch.as_tensor(mask) != 0).cpu().numpy()
    if m.ndim >= 2 and m.shape[-2] > 1:
        m2 = m.reshape(-1, *m.shape[-2:])[0]
        h, w = m2.shape
        return int(min(_centre_run(m2[h // 2, :]), _centre_run(m2[:, w // 2])))
    return int(_centre_run(m.reshape(-1)))


def _acs_window(shape: tuple[int, int], width: int, two_d: bool, device: torch.device) -> torch.Tensor:
    """Hann-tapered window keeping the centre ``width`` columns (and rows when ``two_d``)."""
    h, w = shape

    def taper(n: int, keep: int) -> torch.Tensor:
        win = torch.zeros(n, device=device)
        start = (n - keep + 1) // 2
        win[start : start + keep] = torch.hann_window(keep + 2, periodic=False, device=device)[1:-1]
        return win

    col = taper(w, width)
    row = taper(h, width) if two_d else torch.ones(h, device=device)
    return row[:, None] * col[None, :]


def lowres_coil_images(kspace: torch.Tensor, width: int, two_d: bool = False) -> torch.Tensor:
    """Hann-windowed low-resolution coil images from the ACS: ``(..., coils, H, W)`` -> same shape."""
    win = _acs_window(tuple(kspace.shape[-2:]), width, two_d, kspace.device)
    return ifft2c(kspace * win)


def maps_lowres(kspace: torch.Tensor, width: int, two_d: bool = False, rel_eps: float = 0.05) -> torch.Tensor:
    """Robust maps for narrow ACS: low-resolution coil images divided by their RSS.

    A small regulariser (``rel_eps`` × the 99th percentile of the RSS) keeps the
    ratio stable in the background, and the result is renormalised to
    ``Σ |S_c|² = 1`` everywhere.  Shape ``(..., coils, H, W)``.
    """
    low = lowres_coil_images(kspace, width, two_d)
    r = rss(low, dim=-3)
    ref = torch.quantile(r.reshape(*r.shape[:-2], -1).float(), 0.99, dim=-1)[..., None, None]
    maps = low / (r + rel_eps * ref).unsqueeze(-3)
    return normalize_maps(maps)


def _centre_slice(n: int, m: int) -> slice:
    """The ``m`` centred indices of ``n`` (sigpy ``resize``'s placement: start ``n // 2 - m // 2``)."""
    start = n // 2 - m // 2
    return slice(start, start + m)


def espirit_calibration_shape(shape: tuple[int, int], width: int, two_d: bool,
                              calib_width: int = 24, calib_rows: int = 48) -> tuple[int, int]:
    """Rows and columns of the fully sampled ACS region that ESPIRiT calibrates on.

    For a column mask (``two_d`` False) every readout row is sampled, so the
    region is ``min(calib_rows, H)`` rows by ``min(calib_width, width)`` columns: a
    narrow ACS still gives a long calibration region.  For a 2-D mask it is the
    ``min(calib_width, width)`` square inside the sampled cross.
    """
    h, w = shape
    cols = int(min(calib_width, width, w))
    rows = cols if two_d else int(min(calib_rows, h))
    return rows, cols


def espirit_kernel_shape(calib_shape: tuple[int, int], two_d: bool, kernel_width: int = 6) -> tuple[int, int]:
    """ESPIRiT kernel ``(rows, cols)`` for a calibration region ``(rows, cols)``.

    A 2-D mask's square region gets sigpy's square kernel (``kernel_width``, at most
    ``side - 2``).  For a column mask the kernel is ``kernel_width`` along the readout
    and ``cols // 3`` (2 to ``kernel_width``) across the ACS: a narrow kernel leaves
    several positions across a narrow ACS (measured against a 6-wide kernel in
    ``benchmarks/results/maps_acs.md``).
    """
    rows, cols = calib_shape
    if two_d:
        side = int(max(2, min(kernel_width, cols - 2)))
        return side, side
    return int(max(2, min(kernel_width, rows - 2))), int(max(2, min(kernel_width, cols // 3)))


def _kernel_gram(kernels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``G(x) = Σ_k v_k(x) v_k(x)ᴴ`` with ``v_k = ifft2c`` of kernel ``k`` zero-padded (centred) to ``(h, w)``.

    Computed in k-space, exactly: each entry ``G_cd`` is band-limited to the kernels' lags, so it is the
    ``ifft2c`` of ``Σ_k`` the cross-correlation of kernel ``k``'s coils ``c`` and ``d`` (a small FFT),
    placed at the centre and divided by ``√(h w)``.  That takes ``coils²`` image FFTs instead of
    ``kernels × coils`` and the per-pixel outer products (about 100× faster at 15 coils, 320²).

    Parameters
    ----------
    kernels : torch.Tensor
        Complex ``(k, coils, kr, kc)`` k-space kernels, ``kr <= h``, ``kc <= w``.

    Returns
    -------
    torch.Tensor
        Complex ``(h, w, coils, coils)`` Hermitian matrices.
    """
    _, coils, kr, kc = kernels.shape
    spec = torch.fft.fft2(kernels, s=(2 * kr, 2 * kc))
    corr = torch.fft.ifft2(torch.einsum("kcuv,kduv->cduv", spec, spec.conj()))  # lag m at index m mod 2k
    lag_r = torch.arange(-(kr - 1), kr, device=kernels.device)
    lag_c = torch.arange(-(kc - 1), kc, device=kernels.device)
    values = corr[:, :, lag_r % (2 * kr)][:, :, :, lag_c % (2 * kc)].reshape(coils, coils, -1)
    # lag m sits at the centre + m, wrapped (and summed) as the image-domain product wraps on a small grid
    where = (((h // 2 + lag_r) % h)[:, None] * w + ((w // 2 + lag_c) % w)[None, :]).reshape(-1)
    gram = torch.empty(h, w, coils, coils, dtype=kernels.dtype, device=kernels.device)
    for c in range(coils):  # one row of matrices at a time: the peak is the result plus one coil's images
        placed = torch.zeros(coils, h * w, dtype=kernels.dtype, device=kernels.device)
        placed.index_add_(1, where, values[c])
        gram[:, :, c, :] = (ifft2c(placed.reshape(coils, h, w)) / (h * w) ** 0.5).permute(1, 2, 0)
    return gram


def _calibration_matrix(calib: torch.Tensor, kr: int, kc: int) -> torch.Tensor:
    """ESPIRiT's calibration matrix of a ``(coils, rows, cols)`` region: one row per ``kr × kc`` kernel position
    (valid positions only), columns ordered ``(coil, kernel row, kernel col)``."""
    coils = calib.shape[0]
    blocks = calib.unfold(1, kr, 1).unfold(2, kc, 1)  # (coils, nbr, nbc, kr, kc)
    return blocks.permute(1, 2, 0, 3, 4).reshape(-1, coils * kr * kc)


def espirit_threshold(thresh: float | str) -> float | str:
    """ESPIRiT's threshold as given: :data:`NOISE_THRESHOLD` (any case, surrounding blanks allowed) or a number in
    ``(0, 1)``; anything else is an :class:`OperatorInputError`."""
    if isinstance(thresh, str):
        if thresh.strip().lower() == NOISE_THRESHOLD:
            return NOISE_THRESHOLD
        try:
            thresh = float(thresh)
        except ValueError:
            raise OperatorInputError(f"ESPIRiT threshold must be {NOISE_THRESHOLD} or a number in (0, 1), "
                                     f"got {thresh!r}") from None
    value = float(thresh)
    if not 0.0 < value < 1.0:
        raise OperatorInputError(f"ESPIRiT threshold must be {NOISE_THRESHOLD} or a number in (0, 1), got {thresh!r}")
    return value


def espirit_noise_threshold(s_max: float, region: tuple[int, int, int], kernel: tuple[int, int],
                            noise_std: float, seed: int = 0) -> float:
    """ESPIRiT's relative threshold at the noise edge of the calibration matrix.

    The largest singular value of the calibration matrix of pure noise (complex Gaussian, ``E|n|² = σ²`` per
    sample, on the same region with the same kernel, drawn from ``seed``) divided by the data's largest
    singular value ``s_max``, clipped to :data:`NOISE_THRESHOLD_BOUNDS`: the singular vectors kept are those
    whose singular values stand above what noise alone would produce: fewer where the data are noisy or the ACS
    narrow, more where they are clean.  No fixed value fits both (on the development data 0.02 held the joints'
    maps back and 0.002 broke those of narrow-ACS 64² volumes).  The noise is taken white and equal across coils;
    correlated coil noise that was not prewhitened raises the true edge, so the rule then keeps a few noise vectors.

    Parameters
    ----------
    s_max : float
        Largest singular value of the data's calibration matrix (k-space units).
    region : tuple of int
        ``(coils, rows, cols)`` of the calibration region (:func:`espirit_calibration_shape`).
    kernel : tuple of int
        ``(rows, cols)`` of the kernel (:func:`espirit_kernel_shape`).
    noise_std : float
        Noise std per complex k-space sample, in the k-space's units (``>= 0``).
    seed : int
        Seed of the noise draw (the threshold is deterministic).

    Returns
    -------
    float
        The relative threshold in :data:`NOISE_THRESHOLD_BOUNDS`; :data:`ESPIRIT_THRESHOLD` when ``noise_std`` is 0
        (no noise measurable, e.g. a noise-free simulation or zero-filled k-space edges).
    """
    if not (noise_std >= 0.0 and np.isfinite(noise_std)):
        raise OperatorInputError(f"ESPIRiT's noise-edge threshold needs a finite noise std >= 0, got {noise_std}")
    unit = _unit_noise_edge(tuple(int(n) for n in region), tuple(int(n) for n in kernel), int(seed))
    return edge_threshold(noise_std * unit, s_max)


def edge_threshold(edge: float, s_max: float) -> float:
    """ESPIRiT's relative threshold from a noise edge: ``edge / s_max`` (both singular values, k-space units) clipped
    to :data:`NOISE_THRESHOLD_BOUNDS`; :data:`ESPIRIT_THRESHOLD` when ``edge`` is 0 (no noise measurable: a noise-free
    simulation or zero-filled k-space edges, where the rule says nothing)."""
    lo, hi = NOISE_THRESHOLD_BOUNDS
    if not (edge >= 0.0 and np.isfinite(edge)):
        raise OperatorInputError(f"ESPIRiT's noise edge must be finite and >= 0, got {edge}")
    if edge == 0.0:
        return ESPIRIT_THRESHOLD
    if s_max <= 0.0:
        return hi
    return float(min(max(edge / s_max, lo), hi))


@functools.lru_cache(maxsize=64)
def _unit_noise_edge(region: tuple[int, ...], kernel: tuple[int, ...], seed: int) -> float:
    """Largest singular value of the calibration matrix of unit complex Gaussian noise (``E|n|² = 1``) on a
    ``(coils, rows, cols)`` region with a ``(rows, cols)`` kernel; singular values scale with the noise, so one
    draw per geometry serves every slice (cached)."""
    return _largest_singular_value(complex_gaussian(region, 1.0, seed, torch.complex128), kernel)


def _largest_singular_value(calib: torch.Tensor, kernel: tuple[int, ...]) -> float:
    """Largest singular value of the calibration matrix (:func:`_calibration_matrix`) of a ``(coils, rows, cols)``
    region with a ``(rows, cols)`` kernel."""
    return float(torch.linalg.svdvals(_calibration_matrix(calib, *kernel)).max())


def maps_espirit(
    kspace: torch.Tensor,
    width: int,
    two_d: bool = False,
    calib_width: int = 24,
    calib_rows: int = 48,
    kernel_width: int = 6,
    thresh: float | str = ESPIRIT_THRESHOLD,
    kernel: tuple[int, int] | None = None,
    col_start: int | None = None,
    noise_std: float | None = None,
    noise_kspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """ESPIRiT maps (Uecker et al. 2014) from the ACS of ``(coils, H, W)`` k-space, with no support crop.

    The algorithm is sigpy's ``EspiritCalib`` (calibration matrix of all kernel
    positions in the region, its right singular vectors above ``thresh`` × the largest
    singular value, their image-domain Gram matrix per pixel, its leading eigenvector,
    phase relative to coil 0) with ``crop = 0``, in torch (runs on the k-space's
    device), computed exactly by ``eigh`` instead of power iterations, and on a
    rectangular region: see :func:`espirit_calibration_shape` and
    :func:`espirit_kernel_shape`.  On a square region it matches
    ``sigpy.mri.app.EspiritCalib(crop=0)`` (tested).

    Parameters
    ----------
    kspace : torch.Tensor
        Complex ``(coils, H, W)`` k-space whose ACS block is fully sampled.
    width : int
        ACS width (columns; side of the sampled cross for a 2-D mask).
    two_d : bool
        Whether the mask undersamples rows too (square region).
    calib_width, calib_rows : int
        Upper bounds on the region's columns and (column masks) rows.
    kernel_width : int
        Kernel side where the region allows it.
    thresh : float or str
        Relative singular-value threshold of the signal subspace, or :data:`NOISE_THRESHOLD` for the noise edge
        at ``noise_std`` (:func:`espirit_noise_threshold`).
    kernel : tuple of int, optional
        Kernel ``(rows, cols)`` instead of :func:`espirit_kernel_shape`'s rule.
    col_start : int, optional
        First column of the calibration region (:func:`acs_columns` of the mask, for an ACS run that
        is not centred on ``W // 2``); default centred as sigpy places it.
    noise_std : float, optional
        Noise std per complex k-space sample (``E|n|² = σ²``, the k-space's units) of white noise: the noise edge
        is then :func:`espirit_noise_threshold`'s.
    noise_kspace : torch.Tensor, optional
        Complex ``(coils, H, W)`` k-space of a draw of the noise alone, passed through whatever made ``kspace``
        (e.g. gridding of non-Cartesian samples, whose noise is neither white nor of the samples' σ): the noise
        edge is the largest singular value of its calibration matrix (same region and kernel). Takes precedence
        over ``noise_std``.

    Returns
    -------
    torch.Tensor
        Complex ``(coils, H, W)`` maps, ``Σ_c |S_c|² = 1`` at every pixel.
    """
    if kspace.ndim != 3:
        raise OperatorInputError(f"ESPIRiT expects k-space (coils, H, W), got {tuple(kspace.shape)}")
    thresh = espirit_threshold(thresh)
    coils, h, w = kspace.shape
    rows, cols = espirit_calibration_shape((h, w), width, two_d, calib_width, calib_rows)
    kr, kc = kernel if kernel is not None else espirit_kernel_shape((rows, cols), two_d, kernel_width)
    if not (1 <= kr <= rows and 1 <= kc <= cols):
        raise OperatorInputError(f"ESPIRiT kernel {kr}x{kc} does not fit the {rows}x{cols} calibration region")
    if not torch.isfinite(torch.view_as_real(kspace.detach())).all():
        raise OperatorInputError("ESPIRiT coil maps failed: the k-space has non-finite values")
    col_slice = _centre_slice(w, cols) if col_start is None else slice(int(col_start), int(col_start) + cols)
    if col_slice.start < 0 or col_slice.stop > w:
        raise OperatorInputError(f"ESPIRiT calibration columns {col_slice.start}..{col_slice.stop} lie outside {w}")
    region = (slice(None), _centre_slice(h, rows), col_slice)
    calib = kspace.detach()[region].to(torch.complex128)  # only the region, in double
    try:
        _, s, vh = torch.linalg.svd(_calibration_matrix(calib, kr, kc), full_matrices=False)
    except RuntimeError as err:  # LAPACK failure on extreme values
        raise OperatorInputError(f"ESPIRiT coil maps failed ({str(err).splitlines()[0]}); the k-space values may be "
                                 "extreme (try --maps lowres)") from None
    if not bool(s.max() > 0):
        raise OperatorInputError("ESPIRiT coil maps failed: the ACS region is all zeros (try --maps lowres)")
    if thresh == NOISE_THRESHOLD:
        if noise_kspace is not None:
            if tuple(noise_kspace.shape) != tuple(kspace.shape):
                raise OperatorInputError(f"noise k-space {tuple(noise_kspace.shape)} does not match the k-space "
                                         f"{tuple(kspace.shape)}")
            noise_calib = noise_kspace.detach()[region].to(device=calib.device, dtype=torch.complex128)
            try:
                edge = _largest_singular_value(noise_calib, (kr, kc))
            except RuntimeError as err:
                raise OperatorInputError(f"ESPIRiT's noise edge failed ({str(err).splitlines()[0]})") from None
            thresh = edge_threshold(edge, float(s.max()))
        elif noise_std is not None:
            thresh = espirit_noise_threshold(float(s.max()), (coils, rows, cols), (kr, kc), noise_std)
        else:
            raise OperatorInputError("ESPIRiT's noise-edge threshold needs the k-space noise std")
    kernels = vh[s > thresh * s.max()].reshape(-1, coils, kr, kc).to(torch.complex64)
    gram = _kernel_gram(kernels, h, w)  # (H, W, coils, coils)
    gram *= (h * w) / (kr * kc)
    try:
        _, vecs = torch.linalg.eigh(gram)
    except RuntimeError as err:
        raise OperatorInputError(f"ESPIRiT coil maps failed ({str(err).splitlines()[0]}) (try --maps lowres)") from None
    maps = vecs[..., -1].permute(2, 0, 1)  # leading eigenvector, (coils, H, W)
    ref = maps[0]
    phase = torch.where(ref.abs() > 0, ref.conj() / ref.abs().clamp_min(1e-30), torch.ones_like(ref))
    maps = maps * phase
    return normalize_maps(maps.to(kspace.dtype))


def estimate_maps(
    kspace: torch.Tensor, mask: torch.Tensor, method: str = "auto", width: int | None = None,
    phase: str = DEFAULT_MAP_PHASE,
    thresh: float | str = MAPS_THRESHOLD,
    noise_std: float | None = None,
) -> torch.Tensor:
    """Coil maps ``(coils, H, W)`` from undersampled k-space ``(coils, H, W)`` and its mask.

    ``method``: ``"espirit"``, ``"lowres"`` or ``"auto"`` (ESPIRiT on the rectangular ACS
    region of a column mask; for a 2-D mask ESPIRiT when the sampled cross has at least
    :data:`MIN_ESPIRIT_ACS` lines, else the low-resolution estimate); ``width`` is
    the mask's ACS width when the caller knows it already; ``phase`` one of :data:`MAP_PHASES`
    (``virtual``: :func:`virtual_coil_phase`, weighted by the RSS of the low-resolution ACS coil images); ``thresh``
    ESPIRiT's relative singular-value threshold or :data:`NOISE_THRESHOLD` (the noise edge at ``noise_std``, the
    noise std per complex k-space sample, by default :func:`operators.noise.estimate_sigma_y` of ``kspace``:
    :func:`espirit_noise_threshold`) (:func:`maps_espirit`).
    Raises :class:`OperatorInputError` when the ACS is narrower than :data:`MIN_ACS`.
    """
    if phase not in MAP_PHASES:
        raise OperatorInputError(f"unknown coil-map phase reference {phase!r}; choose one of {', '.join(MAP_PHASES)}")
    if kspace.ndim != 3 or not torch.is_complex(kspace):
        raise OperatorInputError(f"k-space must be complex (coils, H, W), got {kspace.dtype} {tuple(kspace.shape)}")
    mask_t = torch.as_tensor(mask)
    width = acs_width(mask_t) if width is None else int(width)
    if width < MIN_ACS:
        raise OperatorInputError(
            f"ACS too narrow for coil estimation: {width} fully sampled centre lines (need >= {MIN_ACS})"
        )
    if kspace.shape[0] == 1:
        # single coil: the "map" is a unit-magnitude phase-free constant
        return torch.ones_like(kspace)
    two_d = mask_t.ndim >= 2 and mask_t.shape[-2] > 1
    if method == "auto":
        method = "espirit" if (not two_d or width >= MIN_ESPIRIT_ACS) else "lowres"
    if method == "espirit":
        start = None
        if not two_d:  # place the region inside the sampled run, centred in it as far as the run allows
            lo, hi = acs_columns(mask_t)
            cols = espirit_calibration_shape(tuple(kspace.shape[-2:]), width, False)[1]
            start = min(max(lo, kspace.shape[-1] // 2 - cols // 2), hi - cols)
        thresh = espirit_threshold(thresh)
        if thresh == NOISE_THRESHOLD and noise_std is None:
            noise_std = estimate_sigma_y(kspace, mask_t)
        maps = maps_espirit(kspace, width, two_d=two_d, thresh=thresh, col_start=start, noise_std=noise_std)
    elif method == "lowres":
        maps = maps_lowres(kspace, width, two_d=two_d)
    else:
        raise OperatorInputError(f"unknown coil-map method {method!r}; choose espirit, lowres or auto")
    if phase == "virtual":
        maps = virtual_coil_phase(maps, rss(lowres_coil_images(kspace, width, two_d), dim=-3))
    return maps


def lowres_sense1(kspace: torch.Tensor, maps: torch.Tensor, width: int, two_d: bool = False) -> torch.Tensor:
    """SENSE-1 combination of the ACS low-resolution coil images: ``(..., coils, H, W)`` -> ``(..., H, W)``."""
    return sense1_combine(lowres_coil_images(kspace, width, two_d), maps)

