"""Simulating fastMRI-style multi-coil acquisitions from images (the library side of ``simulate``).

Physics: RSS-normalised birdcage coil maps (:func:`operators.birdcage_maps`),
``kspace = F(S_c x) + n`` with complex Gaussian noise ``n``; ``snr`` is the
ratio of the image's 99th-percentile magnitude to the noise std per complex
sample (the orthonormal FFT makes image- and k-space noise equal).  Image
sources: the synthetic corpus (:func:`corpus_volume`) or a file
(:func:`load_images`: NIfTI, NumPy, DICOM or a fastMRI file's target).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mri_score import limits
from mri_score.errors import InputError
from mri_score.fastmri_io import read_fastmri
from operators import birdcage_maps, fft2c, ifft2c, rss


def simulate_volume(
    images: np.ndarray, coils: int = 8, snr: float = 50.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fully sampled noisy multi-coil k-space of complex ``images (S, H, W)``.

    Returns ``kspace (S, coils, H, W)`` complex64, the target RSS ``(S, H, W)`` float32
    (of the noisy fully sampled data, as fastMRI's targets are) and the noise std.
    """
    if images.ndim != 3:
        raise InputError(f"images must be (slices, H, W), got {images.shape}")
    if coils < 1:
        raise InputError(f"coils must be >= 1, got {coils}")
    if not snr > 0:
        raise InputError(f"snr must be > 0, got {snr}")
    x = torch.from_numpy(images.astype(np.complex64))
    if coils > 1:
        maps = torch.from_numpy(birdcage_maps(coils, images.shape[-2:]))
    else:
        maps = torch.ones(1, *images.shape[-2:], dtype=torch.complex64)
    clean = fft2c(maps[None] * x[:, None])
    ref = float(np.percentile(np.abs(images), 99))
    sigma = ref / snr
    gen = torch.Generator().manual_seed(seed)
    noise = torch.complex(torch.randn(clean.shape, generator=gen), torch.randn(clean.shape, generator=gen))
    kspace = clean + sigma / 2**0.5 * noise
    target = rss(ifft2c(kspace), dim=1)
    return kspace.numpy().astype(np.complex64), target.numpy().astype(np.float32), sigma

@dataclass(frozen=True)
class SourceImages:
    """Images read from a file with their geometry: ``images`` complex64 ``(S, H, W)``; ``pixel_mm`` the in-plane
    pixel ``(rows, cols)`` in mm and ``slice_mm`` the slice thickness in mm, None where the file does not say."""

    images: np.ndarray
    pixel_mm: tuple[float, float] | None
    slice_mm: float | None


def _dicom_files(path: Path) -> list[Path]:
    """A DICOM file, or every file of a series folder (any name; DICOMDIR skipped), in name order."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.upper() != "DICOMDIR")
        if not files:
            raise InputError(f"{path}: folder holds no files")
        return files
    return [path]


def _read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, float | None]:
    """A DICOM file or series folder: slices sorted by position along the slice normal (else instance number)."""
    try:
        import pydicom
    except ImportError as err:
        raise InputError(f"{path}: reading DICOM needs pydicom (pip install 'mri-score[dicom]')") from err
    slices = []
    for f in _dicom_files(path):
        try:
            ds = pydicom.dcmread(str(f))
        except Exception as err:  # noqa: BLE001 - pydicom raises many types for a non-DICOM file
            raise InputError(f"{f}: not a readable DICOM file ({type(err).__name__})") from None
        if "PixelData" not in ds:
            raise InputError(f"{f}: DICOM file has no pixel data")
        pixels = ds.pixel_array.astype(np.float32)
        pixels = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
        order = float(getattr(ds, "InstanceNumber", len(slices)) or 0)
        if hasattr(ds, "ImagePositionPatient") and hasattr(ds, "ImageOrientationPatient"):
            o = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
            order = float(np.dot(np.cross(o[:3], o[3:]), np.asarray(ds.ImagePositionPatient, dtype=np.float64)))
        slices.append((order, pixels, ds))
    slices.sort(key=lambda t: t[0])
    shapes = {t[1].shape for t in slices}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InputError(f"{path}: DICOM slices must be 2-D images of one shape, got {sorted(shapes)}")
    ds = slices[0][2]
    pixel = tuple(float(v) for v in ds.PixelSpacing) if getattr(ds, "PixelSpacing", None) else None
    thick = float(ds.SliceThickness) if getattr(ds, "SliceThickness", None) not in (None, "") else None
    return np.stack([t[1] for t in slices]), pixel, thick  # type: ignore[return-value]


def load_images(source: str, slices: int | None, pixel_mm: tuple[float, float] | None = None) -> SourceImages:
    """Complex ``(S, H, W)`` images and their geometry from a NIfTI, NumPy, DICOM (file or series folder) or fastMRI file.

    The pixel size comes from the file (NIfTI zooms, DICOM PixelSpacing, a fastMRI header); ``pixel_mm`` gives it
    for ``.npy`` (which has none) and overrides a file's.  NIfTI slices are along the third axis.
    """
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    name = path.name.lower()
    pixel: tuple[float, float] | None = None
    thick: float | None = None
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            image = nib.load(str(path))
            limits.check_fits(float(np.prod(image.shape, dtype=np.float64)) * 4 * 3, f"{path}: a NIfTI volume of "
                              f"shape {image.shape}")
            vol = np.asarray(image.get_fdata(dtype=np.float32))
            while vol.ndim > 3:
                vol = vol[..., 0]
            if vol.ndim != 3:
                raise InputError(f"{path}: NIfTI must be 3-D, got shape {vol.shape}")
            imgs = np.moveaxis(vol, -1, 0)
            zooms = [float(z) for z in image.header.get_zooms()[:3]]
            pixel, thick = (zooms[0], zooms[1]), zooms[2]
        elif name.endswith(".npy"):
            # the header first (memory-mapped): a declared shape that does not fit is refused before reading
            mapped = np.load(path, allow_pickle=False, mmap_mode="r") if path.stat().st_size else np.load(path)
            limits.check_fits(float(mapped.nbytes) * 3, f"{path}: images of shape {mapped.shape}")
            imgs = np.array(mapped)
            if imgs.ndim == 2:
                imgs = imgs[None]
        elif name.endswith(".dcm") or path.is_dir():
            imgs, pixel, thick = _read_dicom(path)
        elif name.endswith(".h5"):
            vol = read_fastmri(path)
            if vol.target is None:
                raise InputError(f"{path}: no reconstruction_rss/esc target to simulate from")
            imgs, pixel = vol.target, vol.pixel_mm
        else:
            raise InputError(f"{path}: unknown image format (use .nii, .nii.gz, .npy, .dcm, a DICOM folder or fastMRI .h5)")
    except (OSError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path}: cannot read images ({str(err).splitlines()[0]})") from err
    if imgs.ndim != 3 or min(imgs.shape) < 1:
        raise InputError(f"{path}: images must be (slices, H, W), got {imgs.shape}")
    if not np.isfinite(imgs).all():
        raise InputError(f"{path}: images contain NaN or Inf")
    if slices:
        mid = imgs.shape[0] // 2
        lo = max(0, mid - slices // 2)
        imgs = imgs[lo : lo + slices]
    if pixel_mm is not None:
        pixel = (float(pixel_mm[0]), float(pixel_mm[1]))
    if pixel is not None and not (all(np.isfinite(pixel)) and min(pixel) > 0):
        raise InputError(f"{path}: pixel size {pixel} mm is not positive and finite")
    return SourceImages(imgs.astype(np.complex64), pixel, thick if thick and np.isfinite(thick) and thick > 0 else None)


def corpus_volume(split: str, index: int, slices: int, size: tuple[int, int], family: str, seed: int) -> np.ndarray:
    """``slices`` corpus slices of one contrast family at a fixed matrix size: ``(S, H, W)`` complex64."""
    from mri_score.data.corpus import FAMILIES, SyntheticBrainCorpus

    corpus = SyntheticBrainCorpus(split=split, families=FAMILIES, seed=seed)
    return np.stack([corpus.generate(index * 1000 + k, shape=size, family=family)[0] for k in range(slices)])


def subject_volume(split: str, subject: int, slices: int, size: tuple[int, int], family: str, seed: int,
                   first: int = 0, subjects: int = 40, pixel_mm: tuple[float, float] = (0.8, 1.5)) -> np.ndarray:
    """``slices`` slices of one subject of the subject-level corpus split: ``(S, H, W)`` complex64.

    Subject ``subject`` of ``split`` (of ``subjects``; the test split reads only the template's
    left hemisphere, the train split only the right one, so no voxel is shared); slice ``k``
    is corpus index ``subject · 1000 + first + k`` through that subject's anatomy, in ``family``.
    ``pixel_mm`` is the range the pixel size (mm) is drawn from: with a 128 matrix the default
    0.8–1.5 mm gives a 102–192 mm field of view that cuts through the head; 1.5–2.0 mm keeps the
    head inside it, as in a clinical scan.
    """
    from mri_score.data.corpus import FAMILIES, SyntheticBrainCorpus

    corpus = SyntheticBrainCorpus(split=split, families=FAMILIES, seed=seed, split_by="subject", subjects=subjects,
                                  pixel_mm=pixel_mm)
    return np.stack([corpus.generate(subject * 1000 + first + k, shape=size, family=family, subject=subject)[0]
                     for k in range(slices)])


def noise_free_target(images: np.ndarray, coils: int = 8) -> np.ndarray:
    """The simulator's noise-free truth: RSS of the noise-free coil images ``S_c x``, float32 ``(S, H, W)``.

    The maps are RSS-normalised, so this equals ``|x|`` (to float32 rounding); it is what a
    reconstruction of the anatomy (the ``sense`` magnitude) is scored against.
    """
    x = torch.from_numpy(np.asarray(images, dtype=np.complex64))
    if coils > 1:
        maps = torch.from_numpy(birdcage_maps(coils, images.shape[-2:]))
    else:
        maps = torch.ones(1, *images.shape[-2:], dtype=torch.complex64)
    return rss(maps[None] * x[:, None], dim=1).numpy().astype(np.float32)
