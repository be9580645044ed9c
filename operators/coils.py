"""Coil combination and coil-sensitivity estimation from the ACS block of undersampled k-space.

Every estimator here looks only at the fully sampled centre (ACS) of the
*undersampled* k-space: never at the fully sampled answer.  Maps are normalised
so that ``Σ_c |S_c|² = 1`` wherever the maps are defined, and they are defined
**everywhere** (no support crop): a pixel with zero maps is unconstrained by
the data and a prior would fill it with hallucinations.
"""

from __future__ import annotations

import numpy as np
import torch

from operators.errors import OperatorInputError
from operators.fft import ifft2c

#: ESPIRiT calibration needs at least this many ACS lines; below it the
#: low-resolution fallback is used.
MIN_ESPIRIT_ACS = 16
#: Below this many ACS lines no map estimate is trustworthy.
MIN_ACS = 4


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


def _centre_run(line: np.ndarray) -> int:
    """Length of the run of True around index ``len // 2`` (0 when the centre is not sampled)."""
    c = line.shape[0] // 2
    if not line[c]:
        return 0
    lo, hi = c, c
    while lo > 0 and line[lo - 1]:
        lo -= 1
    while hi < line.shape[0] - 1 and line[hi + 1]:
        hi += 1
    return hi - lo + 1


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


def maps_espirit(
    kspace: torch.Tensor, width: int, calib_width: int = 24, kernel_width: int = 6, thresh: float = 0.02
) -> torch.Tensor:
    """ESPIRiT maps (``sigpy.mri.app.EspiritCalib`` with ``crop=0``) from the centre of ``(coils, H, W)`` k-space.

    The calibration square is ``min(calib_width, width)`` so it lies inside the ACS block.
    """
    import sigpy.mri

    if kspace.ndim != 3:
        raise OperatorInputError(f"ESPIRiT expects k-space (coils, H, W), got {tuple(kspace.shape)}")
    cw = int(min(calib_width, width))
    ksp = kspace.detach().cpu().numpy().astype(np.complex64)
    try:
        maps = sigpy.mri.app.EspiritCalib(
            ksp, calib_width=cw, kernel_width=min(kernel_width, cw - 1), thresh=thresh, crop=0.0, show_pbar=False
        ).run()
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as err:
        raise OperatorInputError(f"ESPIRiT coil maps failed ({str(err).splitlines()[0]}); the k-space values may be "
                                 "extreme (try --maps lowres)") from None
    maps_t = torch.from_numpy(np.asarray(maps)).to(device=kspace.device, dtype=kspace.dtype)
    return normalize_maps(maps_t)


def estimate_maps(
    kspace: torch.Tensor, mask: torch.Tensor, method: str = "auto", width: int | None = None
) -> torch.Tensor:
    """Coil maps ``(coils, H, W)`` from undersampled k-space ``(coils, H, W)`` and its mask.

    ``method``: ``"espirit"``, ``"lowres"`` or ``"auto"`` (ESPIRiT when the ACS has at
    least :data:`MIN_ESPIRIT_ACS` lines, else the low-resolution estimate); ``width`` is
    the mask's ACS width when the caller knows it already.
    Raises :class:`OperatorInputError` when the ACS is narrower than :data:`MIN_ACS`.
    """
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
        method = "espirit" if width >= MIN_ESPIRIT_ACS else "lowres"
    if method == "espirit":
        return maps_espirit(kspace, width)
    if method == "lowres":
        return maps_lowres(kspace, width, two_d=two_d)
    raise OperatorInputError(f"unknown coil-map method {method!r}; choose espirit, lowres or auto")


def lowres_sense1(kspace: torch.Tensor, maps: torch.Tensor, width: int, two_d: bool = False) -> torch.Tensor:
    """SENSE-1 combination of the ACS low-resolution coil images: ``(..., coils, H, W)`` -> ``(..., H, W)``."""
    return sense1_combine(lowres_coil_images(kspace, width, two_d), maps)

