"""``python -m mri_score.simulate``: images -> fastMRI-format multi-coil (or single-coil) k-space files.

Sources: the synthetic corpus (``--source corpus``), or a file with its geometry: NIfTI
(``.nii``/``.nii.gz``, voxel size from its header), NumPy (``.npy``, ``(slices, H, W)`` real or complex,
``--pixel-mm`` gives its pixel), DICOM (a ``.dcm`` file or a series folder, PixelSpacing and SliceThickness;
needs pydicom) or a fastMRI file's ``reconstruction_rss``.  The file's true field of view (matrix × pixel) is
written into the output header, so ``reconstruct --grid auto`` sees the real pixel size.

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
(``--keep-target`` keeps it, for benchmarks).  ``--trajectory radial|spiral`` (with ``--spokes N`` or
``--interleaves N``) writes non-Cartesian ISMRMRD/MRD files instead (one acquisition per spoke or interleaf,
``traj`` in cycles per field of view, noise scans, the noise-free target kept for scoring;
:mod:`mri_score.simulate_noncartesian`).
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split

import argparse
import sys
from pathlib import Path

from mri_score import limits
from mri_score.atomic import check_output, check_output_dir, protected_inputs
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.errors import InputError, one_line
from mri_score.fastmri_io import write_fastmri_file
from mri_score.simulation import corpus_volume, load_images, noise_free_target, simulate_volume
from operators.masks import MASK_TYPES, MAX_ACCELERATION, make_mask

#: Upper bounds of the simulation flags (``--size`` lies in [32, 1024]).
MAX_COILS, MAX_VOLUMES, MAX_SLICES = 64, 10_000, 1024
#: Working memory of a simulation, in copies of the multi-coil k-space.
MEM_COPIES = 6


def build_parser() -> argparse.ArgumentParser:
    """The ``simulate`` command line."""
    p = one_line_usage_errors(argparse.ArgumentParser(prog="python -m mri_score.simulate", description=__doc__.split("\n")[0]))
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--source", default="corpus",
                   help="'corpus' or an image file: .nii/.nii.gz, .npy, .dcm, a DICOM series folder, fastMRI .h5")
    p.add_argument("--pixel-mm", type=float, nargs=2, default=None, metavar=("DY", "DX"),
                   help="in-plane pixel size in mm of a --source file (needed for .npy; overrides a file's header)")
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
    p.add_argument("--prefix", default="synth", help="output file-name prefix")
    p.add_argument("--trajectory", default="cartesian", choices=["cartesian", "radial", "spiral"],
                   help="k-space sampling; radial and spiral write ISMRMRD/MRD raw files")
    p.add_argument("--spokes", type=int, default=None, help="radial spokes (with --trajectory radial; default 32)")
    p.add_argument("--interleaves", type=int, default=None,
                   help="spiral interleaves (with --trajectory spiral; default 8)")
    return p


def check_args(a: argparse.Namespace) -> None:
    """Refuse out-of-range arguments with an :class:`InputError` naming the flag."""
    from mri_score.data.corpus import FAMILIES

    if a.source == "corpus" and a.family not in FAMILIES:
        raise InputError(f"--family must be one of {', '.join(FAMILIES)}, got {a.family!r}")
    if a.trajectory == "cartesian" and (a.spokes is not None or a.interleaves is not None):
        raise InputError("--spokes/--interleaves need --trajectory radial or spiral")
    if a.trajectory == "radial" and a.interleaves is not None or a.trajectory == "spiral" and a.spokes is not None:
        raise InputError(f"--trajectory {a.trajectory} takes {'--spokes' if a.trajectory == 'radial' else '--interleaves'}")
    for flag, value in (("--spokes", a.spokes), ("--interleaves", a.interleaves)):
        if value is not None:
            limits.check_int(value, flag, 1, 4096)
    if a.trajectory != "cartesian" and (a.accel is not None or a.coils == 1):
        raise InputError("--trajectory radial/spiral writes fully sampled-by-trajectory multi-coil MRD files: "
                         "no --accel, --coils >= 2")
    if a.pixel_mm is not None:
        if a.source == "corpus":
            raise InputError("--pixel-mm is for a --source file (the corpus has its own pixel sizes)")
        if not all(0 < v < 100 for v in a.pixel_mm):
            raise InputError(f"--pixel-mm must be two sizes in (0, 100) mm, got {a.pixel_mm}")
    if min(a.size) < 32 or max(a.size) > 1024:
        raise InputError(f"--size must lie in [32, 1024], got {a.size}")
    if a.coils < 1 or a.coils > MAX_COILS:
        raise InputError(f"--coils must be in [1, {MAX_COILS}], got {a.coils}")
    limits.check_int(a.volumes, "--volumes", 1, MAX_VOLUMES)
    limits.check_int(a.slices, "--slices", 1, MAX_SLICES)
    limits.check_seed(a.seed)
    need = a.slices * a.coils * a.size[0] * a.size[1] * 8 * MEM_COPIES
    limits.check_fits(need, f"--slices {a.slices} x --coils {a.coils} x --size {a.size[0]} {a.size[1]}")
    if not a.prefix or not a.prefix.isprintable() or any(c in a.prefix for c in "/\\") or a.prefix in (".", ".."):
        raise InputError(f"--prefix must be a plain file-name prefix (no path separators), got {a.prefix!r}")
    if not 0 < a.snr < float("inf"):
        raise InputError(f"--snr must be a finite number > 0, got {a.snr}")
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
    inputs = [] if a.source == "corpus" else [Path(a.source)]
    check_output_dir(out, [])
    names = [output_name(a, v) for v in range(a.volumes)]
    for name in names:
        check_output(out / name, inputs)
    with protected_inputs(inputs):
        written = [simulate_one(a, v, out / name) for v, name in enumerate(names)]
    for w in written:
        print(one_line(w, sys.stdout))
    return 0


def output_name(a: argparse.Namespace, v: int) -> str:
    """The file name of volume ``v``."""
    if a.source == "corpus":
        return f"{a.prefix}_{a.family}_{a.split}_{v:03d}.h5"
    return f"{a.prefix}_{Path(a.source).name.split('.')[0]}_{v:03d}.h5"


def simulate_one(a: argparse.Namespace, v: int, path: Path) -> Path:
    """Simulate volume ``v`` of the arguments ``a`` and write it to ``path``."""
    fov = None
    if a.source == "corpus":
        imgs, acq = corpus_volume(a.split, v, a.slices, tuple(a.size), a.family, a.seed), f"SYN_{a.family.upper()}"
    else:
        source = load_images(a.source, a.slices, None if a.pixel_mm is None else tuple(a.pixel_mm))
        imgs, acq = source.images, "FROM_FILE"
        s, h, w = imgs.shape
        if source.pixel_mm is not None:
            fov = (h * source.pixel_mm[0], w * source.pixel_mm[1], source.slice_mm or 5.0)
        limits.check_fits(s * a.coils * h * w * 8 * MEM_COPIES, f"{a.source}: simulating {a.coils} coils of {imgs.shape}")
    if a.trajectory != "cartesian":
        from mri_score.noncartesian import write_noncartesian_mrd
        from mri_score.simulate_noncartesian import simulate_noncartesian

        count = (a.spokes or 32) if a.trajectory == "radial" else (a.interleaves or 8)
        pixel = None if fov is None else (fov[0] / imgs.shape[-2], fov[1] / imgs.shape[-1])
        vol = simulate_noncartesian(imgs, a.trajectory, count, coils=a.coils, snr=a.snr, seed=a.seed * 1000 + v,
                                    pixel_mm=pixel)
        return write_noncartesian_mrd(path, vol, seed=a.seed * 1000 + v, patient_id=f"{a.prefix}{v:03d}")
    ksp, target, _ = simulate_volume(imgs, a.coils, a.snr, seed=a.seed * 1000 + v)
    mask = num_low = None
    if a.accel is not None:
        mask, num_low = make_mask(a.mask_type, a.accel, a.center_fraction, ksp.shape[-2:], path.name)
    if a.coils == 1:  # fastMRI's single-coil layout: kspace (slices, H, W), target reconstruction_esc
        ksp = ksp[:, 0]
    keep = target if (a.accel is None or a.keep_target) else None
    truth = noise_free_target(imgs, a.coils) if keep is not None else None  # scored like for like by reconstruct
    return write_fastmri_file(path, ksp, keep, acq, f"{a.prefix}{v:03d}", mask, a.accel, num_low, truth=truth,
                              fov_mm=fov)


if __name__ == "__main__":
    sys.exit(main())
