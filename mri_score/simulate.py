"""``python -m mri_score.simulate``: images -> fastMRI-format multi-coil (or single-coil) k-space files.

Sources: the synthetic corpus (``--source corpus``), or a file: NIfTI
(``.nii``/``.nii.gz``), NumPy (``.npy``, ``(slices, H, W)`` real or complex),
DICOM (``.dcm``, needs pydicom) or a fastMRI file's ``reconstruction_rss``.

Physics (:mod:`mri_score.simulation`): RSS-normalised birdcage coil maps,
``kspace = F(S_c x) + n`` with complex Gaussian noise ``n``; ``--snr`` is the
ratio of the image's 99th-percentile magnitude to the noise std per complex
sample (the orthonormal FFT makes image- and k-space noise equal).  Output:
fully sampled ``kspace`` + ``reconstruction_rss``, a valid ``ismrmrd_header``
and attrs (``max``, ``norm``, ``acquisition``, ``patient_id``).  With
``--coils 1`` the files have fastMRI's single-coil layout: ``kspace`` ``(slices, H, W)``
and the target named ``reconstruction_esc`` (no ``reconstruction_rss``).  With
``--accel`` the files look like fastMRI's test split: masked ``kspace``,
``mask``, ``acceleration`` and ``num_low_frequency`` and no target
(``--keep-target`` keeps it, for benchmarks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mri_score.errors import InputError, exit_on_input_error
from mri_score.fastmri_io import write_fastmri_file
from mri_score.simulation import corpus_volume, load_images, simulate_volume
from operators.masks import MASK_TYPES, MAX_ACCELERATION, make_mask


def build_parser() -> argparse.ArgumentParser:
    """The ``simulate`` command line."""
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
    p.add_argument("--keep-target", action="store_true", help="keep the target (reconstruction_rss/_esc) in undersampled files")
    p.add_argument("--prefix", default="synth")
    return p


def check_args(a: argparse.Namespace) -> None:
    """Refuse out-of-range arguments with an :class:`InputError` naming the flag."""
    if a.volumes < 1 or a.slices < 1:
        raise InputError("--volumes and --slices must be >= 1")
    if min(a.size) < 32 or max(a.size) > 1024:
        raise InputError(f"--size must lie in [32, 1024], got {a.size}")
    if a.coils < 1:
        raise InputError(f"--coils must be >= 1, got {a.coils}")
    if not a.snr > 0:
        raise InputError(f"--snr must be > 0, got {a.snr}")
    if a.accel is not None:
        if not 1.0 < a.accel <= MAX_ACCELERATION:
            raise InputError(f"--accel must be in (1, {MAX_ACCELERATION:g}], got {a.accel}")
        if not 0.0 < a.center_fraction < 1.0 / a.accel + 1e-9:
            raise InputError(f"--center-fraction must be in (0, 1/accel], got {a.center_fraction}")


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Simulate ``--volumes`` files into ``--out``; print their paths."""
    a = build_parser().parse_args(argv)
    check_args(a)
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
        if a.coils == 1:  # fastMRI's single-coil layout: kspace (slices, H, W), target reconstruction_esc
            ksp = ksp[:, 0]
        keep = target if (a.accel is None or a.keep_target) else None
        written.append(write_fastmri_file(out / name, ksp, keep, acq, f"{a.prefix}{v:03d}", mask, a.accel, num_low))
    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
