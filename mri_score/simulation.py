"""Simulating fastMRI-style multi-coil acquisitions from images (the library side of ``simulate``).

Physics: RSS-normalised birdcage coil maps (:func:`operators.birdcage_maps`),
``kspace = F(S_c x) + n`` with complex Gaussian noise ``n``; ``snr`` is the
ratio of the image's 99th-percentile magnitude to the noise std per complex
sample (the orthonormal FFT makes image- and k-space noise equal).  Image
sources: the synthetic corpus (:func:`corpus_volume`) or a file
(:func:`load_images`: NIfTI, NumPy, DICOM or a fastMRI file's target).
"""

from __future__ import annotations

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

def load_images(source: str, slices: int | None) -> np.ndarray:
    """Complex ``(S, H, W)`` images from a NIfTI, NumPy, DICOM or fastMRI file."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    name = path.name.lower()
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
        elif name.endswith(".npy"):
            # the header first (memory-mapped): a declared shape that does not fit is refused before reading
            mapped = np.load(path, allow_pickle=False, mmap_mode="r") if path.stat().st_size else np.load(path)
            limits.check_fits(float(mapped.nbytes) * 3, f"{path}: images of shape {mapped.shape}")
            imgs = np.array(mapped)
            if imgs.ndim == 2:
                imgs = imgs[None]
        elif name.endswith(".dcm"):
            try:
                import pydicom
            except ImportError as err:
                raise InputError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from err
            imgs = pydicom.dcmread(str(path)).pixel_array.astype(np.float32)[None]
        elif name.endswith(".h5"):
            vol = read_fastmri(path)
            if vol.target is None:
                raise InputError(f"{path}: no reconstruction_rss/esc target to simulate from")
            imgs = vol.target
        else:
            raise InputError(f"{path}: unknown image format (use .nii, .nii.gz, .npy, .dcm or fastMRI .h5)")
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
    return imgs.astype(np.complex64)

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
