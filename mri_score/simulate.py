"""``python -m mri_score.simulate``: images -> fastMRI-format multi-coil k-space files.

Sources: the synthetic corpus (``--source corpus``), or a file: NIfTI
(``.nii``/``.nii.gz``), NumPy (``.npy``, ``(slices, H, W)`` real or complex),
DICOM (``.dcm``, needs pydicom) or a fastMRI file's ``reconstruction_rss``.

Physics: RSS-normalised birdcage coil maps (``sigpy.mri.birdcage_maps``),
``kspace = F(S_c x) + n`` with complex Gaussian noise ``n``; ``--snr`` is the
ratio of the image's 99th-percentile magnitude to the noise std per complex
sample (the orthonormal FFT makes image- and k-space noise equal).  Output:
fully sampled ``kspace`` + ``reconstruction_rss``, a valid ``ismrmrd_header``
and attrs (``max``, ``norm``, ``acquisition``, ``patient_id``).  With
``--accel`` the files look like fastMRI's test split: masked ``kspace``,
``mask``, ``acceleration`` and ``num_low_frequency`` and no target
(``--keep-target`` keeps it, for benchmarks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from mri_score.errors import InputError, exit_on_input_error
from mri_score.fastmri_io import atomic_h5_write, build_ismrmrd_header
from operators import create_mask_for_mask_type, fft2c, ifft2c, normalize_maps, rss, seed_from_filename
from operators.masks import MASK_TYPES


def birdcage_maps(coils: int, shape: tuple[int, int], r: float = 1.5) -> np.ndarray:
    """Birdcage sensitivities ``(coils, H, W)`` complex64, normalised so ``Σ_c |S_c|² = 1``."""
    import sigpy.mri

    maps = sigpy.mri.birdcage_maps((coils, *shape), r=r).astype(np.complex64)
    return normalize_maps(torch.from_numpy(maps)).numpy()


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
        raise InputError(f"--coils must be >= 1, got {coils}")
    if not snr > 0:
        raise InputError(f"--snr must be > 0, got {snr}")
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


def write_fastmri_file(
    path: Path,
    kspace: np.ndarray,
    target: np.ndarray | None,
    acquisition: str,
    patient_id: str,
    mask: np.ndarray | None = None,
    acceleration: float | None = None,
    num_low: int | None = None,
) -> Path:
    """Write one fastMRI-layout file atomically (masked k-space and mask when ``mask`` is given)."""
    s, c, h, w = kspace.shape
    datasets: dict[str, np.ndarray | bytes] = {
        "ismrmrd_header": np.bytes_(build_ismrmrd_header((h, w, 1), (h, w, 1))),
    }
    attrs: dict[str, object] = {"acquisition": acquisition, "patient_id": patient_id}
    if mask is not None:
        datasets["kspace"] = (kspace * mask).astype(np.complex64)
        datasets["mask"] = mask.astype(np.float32)
        attrs["acceleration"] = acceleration
        attrs["num_low_frequency"] = num_low
    else:
        datasets["kspace"] = kspace
    if target is not None:
        datasets["reconstruction_rss"] = target
        attrs["max"] = float(target.max())
        attrs["norm"] = float(np.linalg.norm(target))
    return atomic_h5_write(path, datasets, attrs)


def load_images(source: str, slices: int | None) -> np.ndarray:
    """Complex ``(S, H, W)`` images from a NIfTI, NumPy, DICOM or fastMRI file."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            vol = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
            while vol.ndim > 3:
                vol = vol[..., 0]
            if vol.ndim != 3:
                raise InputError(f"{path}: NIfTI must be 3-D, got shape {vol.shape}")
            imgs = np.moveaxis(vol, -1, 0)
        elif name.endswith(".npy"):
            imgs = np.load(path, allow_pickle=False)
            if imgs.ndim == 2:
                imgs = imgs[None]
        elif name.endswith(".dcm"):
            try:
                import pydicom
            except ImportError as err:
                raise InputError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from err
            imgs = pydicom.dcmread(str(path)).pixel_array.astype(np.float32)[None]
        elif name.endswith(".h5"):
            from mri_score.fastmri_io import read_fastmri

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


def make_mask(mask_type: str, accel: float, center_fraction: float, shape: tuple[int, int], fname: str) -> tuple[np.ndarray, int]:
    """fastMRI-style mask for ``shape (H, W)`` seeded by the file name: ``(W,)`` or ``(H, W)`` and ACS width."""
    if not 1.0 < accel <= 32.0:
        raise InputError(f"--accel must be in (1, 32], got {accel}")
    if not 0.0 < center_fraction < 1.0 / accel + 1e-9:
        raise InputError(f"--center-fraction must be in (0, 1/accel], got {center_fraction}")
    func = create_mask_for_mask_type(mask_type, [center_fraction], [accel])
    mask, num_low = func(shape, seed=seed_from_filename(fname))
    m = mask.numpy().squeeze()
    return m.astype(np.float32), int(num_low)


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mri_score.simulate", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--source", default="corpus", help="'corpus' or an image file")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--family", default="t1", help="contrast family for corpus volumes")
    p.add_argument("--volumes", type=int, default=1)
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--snr", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accel", type=float, default=None)
    p.add_argument("--mask-type", default="equispaced", choices=MASK_TYPES)
    p.add_argument("--center-fraction", type=float, default=0.08)
    p.add_argument("--keep-target", action="store_true", help="keep reconstruction_rss in undersampled files")
    p.add_argument("--prefix", default="synth")
    a = p.parse_args(argv)
    if a.volumes < 1 or a.slices < 1:
        raise InputError("--volumes and --slices must be >= 1")
    if min(a.size) < 32 or max(a.size) > 1024:
        raise InputError(f"--size must lie in [32, 1024], got {a.size}")
    out = Path(a.out)
    written = []
    for v in range(a.volumes):
        if a.source == "corpus":
            imgs = corpus_volume(a.split, v, a.slices, tuple(a.size), a.family, a.seed)
            acq, name = f"SYN_{a.family.upper()}", f"{a.prefix}_{a.family}_{a.split}_{v:03d}.h5"
        else:
            imgs = load_images(a.source, a.slices)
            acq, name = "FROM_FILE", f"{a.prefix}_{Path(a.source).name.split('.')[0]}_{v:03d}.h5"
        ksp, target, _ = simulate_volume(imgs, a.coils, a.snr, seed=a.seed * 1000 + v)
        mask = num_low = None
        if a.accel is not None:
            mask, num_low = make_mask(a.mask_type, a.accel, a.center_fraction, ksp.shape[-2:], name)
        keep = target if (a.accel is None or a.keep_target) else None
        written.append(write_fastmri_file(out / name, ksp, keep, acq, f"{a.prefix}{v:03d}", mask, a.accel, num_low))
    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
