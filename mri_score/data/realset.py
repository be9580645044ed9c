"""The project's real-image evaluation set: MR images bundled with nibabel's test data.

**Evaluation only.**  These images are never used to train a prior or to choose a
setting (tuning uses synthetic slices of held-out subjects).  Each volume is real
magnitude MR data; the benchmark treats the image as the noise-free truth, simulates
coils and k-space noise from it, and scores against it.

Volumes (the first time point / dynamic of each file):

* ``nibabel_example4d``: a brain EPI, 24 axial slices of 128×96 at 2 × 2 mm;
* ``nibabel_phantom_epi``: a spherical phantom EPI (Philips PAR/REC), 64×64 at
  3.75 × 3.75 mm, the slices whose object covers at least 2 % of the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mri_score.errors import InputError

REAL_VOLUMES = ("nibabel_example4d", "nibabel_phantom_epi")
_FILES = {"nibabel_example4d": "example4d.nii.gz", "nibabel_phantom_epi": "phantom_EPI_asc_CLEAR_2_1.PAR"}


@dataclass(frozen=True)
class RealVolume:
    """Real MR slices ``images`` complex64 ``(S, H, W)`` (zero phase), in-plane ``pixel_mm`` and provenance."""

    name: str
    images: np.ndarray
    pixel_mm: tuple[float, float]
    source: str


def load_real_volume(name: str, min_object_fraction: float = 0.02) -> RealVolume:
    """One volume of the real set (:data:`REAL_VOLUMES`), slices with enough object, first time point.

    A slice is kept when at least ``min_object_fraction`` of its pixels exceed 10 % of the
    volume's maximum.  Slices are ``(H, W)`` = the file's first two axes.
    """
    if name not in _FILES:
        raise InputError(f"unknown real volume {name!r}; choose one of {', '.join(REAL_VOLUMES)}")
    try:
        import nibabel as nib
    except ImportError as err:  # pragma: no cover - depends on install
        raise InputError("the real-image set needs nibabel: pip install 'mri-score[data]'") from err
    path = Path(nib.__file__).parent / "tests" / "data" / _FILES[name]
    img = nib.load(str(path))
    vol = np.asarray(img.get_fdata(dtype=np.float32))
    while vol.ndim > 3:
        vol = vol[..., 0]
    zooms = tuple(float(z) for z in img.header.get_zooms()[:2])
    slices = np.moveaxis(vol, -1, 0)
    keep = [(s > 0.1 * vol.max()).mean() >= min_object_fraction for s in slices]
    images = np.clip(slices[np.array(keep)], 0, None).astype(np.complex64)
    return RealVolume(name, images, (zooms[0], zooms[1]), f"nibabel {nib.__version__}: tests/data/{_FILES[name]}")


def real_eval_set() -> list[RealVolume]:
    """Every volume of the real evaluation set."""
    return [load_real_volume(n) for n in REAL_VOLUMES]
