"""``python -m mri_score.convert``: an ISMRMRD/MRD raw-data file -> a fastMRI-layout k-space file.

Cartesian 2-D multi-slice MRD data (:mod:`mri_score.mrd`) is prewhitened with its noise
acquisitions, its readout oversampling removed, averages averaged and its calibration lines
placed; the output has fastMRI's layout: ``kspace`` complex64 ``(slices, coils, H, W)`` (rows =
readout, H = recon readout matrix; columns = phase encode, W = encoded phase matrix),
``ismrmrd_header`` (the file's header with the readout matrix and field of view of the output),
attrs ``acquisition`` and ``patient_id``; undersampled data also gets ``mask`` and the
``acceleration`` and ``num_low_frequency`` attrs, and a file carrying a noise-free reference
(:func:`mri_score.mrd_write.write_mrd`) a ``reconstruction_rss`` target with ``max`` and ``norm``.
The output is written atomically and never replaces the input; bad input is one line on
stderr and exit code 2.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split

import argparse
import sys
from pathlib import Path

import numpy as np

from mri_score.atomic import check_output, protected_inputs
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.errors import InputError, one_line
from mri_score.fastmri_io import TRUTH_KEY, atomic_h5_write
from mri_score.mrd import DEFAULT_GROUP, MRDScan, load_mrd


def build_parser() -> argparse.ArgumentParser:
    """The ``convert`` command line."""
    p = one_line_usage_errors(argparse.ArgumentParser(prog="python -m mri_score.convert",
                                                      description=__doc__.split("\n")[0]))
    p.add_argument("raw", help="ISMRMRD/MRD HDF5 file (Cartesian 2-D multi-slice)")
    p.add_argument("--out", required=True,
                   help="output fastMRI .h5 file (required; never the input); an existing directory gets <raw name>.h5 "
                        "inside it")
    p.add_argument("--group", default=None,
                   help=f"MRD group to read (default: '{DEFAULT_GROUP}', else the first group holding MRD data)")
    p.add_argument("--no-prewhiten", dest="prewhiten", action="store_false",
                   help="keep the coils' correlated noise (default: whiten with the noise acquisitions' covariance, "
                        "when the file has noise acquisitions)")
    p.add_argument("--no-target", dest="target", action="store_false",
                   help="do not write reconstruction_rss (default: written when the file carries a noise-free reference, "
                        "as mri_score.mrd_write.write_mrd files do)")
    return p


def output_path(raw: Path, out: Path) -> Path:
    """``out``, or ``out/<raw stem>.h5`` when ``out`` is an existing directory."""
    return out / f"{raw.stem}.h5" if out.is_dir() else out


def fastmri_datasets(scan: MRDScan) -> tuple[dict[str, object], dict[str, object]]:
    """The datasets and attrs of the fastMRI file for ``scan`` (the layout of
    :func:`mri_score.fastmri_io.write_fastmri_file`, with the MRD header instead of a generic one)."""
    vol = scan.volume
    datasets: dict[str, object] = {"kspace": vol.kspace.astype(np.complex64), "ismrmrd_header": np.bytes_(scan.header_xml)}
    attrs: dict[str, object] = dict(vol.attrs)
    if vol.mask is not None:
        datasets["mask"] = vol.mask.astype(np.float32)
    if vol.truth is not None:  # the noise-free reference: the like-for-like truth of the anatomy output
        datasets[TRUTH_KEY] = vol.truth.astype(np.float32)
    return datasets, attrs


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Convert one MRD file; print the output path."""
    a = build_parser().parse_args(argv)
    raw = Path(a.raw)
    if not raw.is_file():
        raise InputError(f"{raw}: no such file" if not raw.exists() else f"{raw}: not a regular file")
    out = output_path(raw, Path(a.out))
    check_output(out, [raw])
    with protected_inputs([raw]):
        scan = load_mrd(raw, group=a.group, prewhiten=a.prewhiten, load_target=a.target)
        datasets, attrs = fastmri_datasets(scan)
        atomic_h5_write(out, datasets, attrs)
    if a.prewhiten and scan.whitening is None:
        print(f"note: {one_line(raw)}: no noise acquisitions; the k-space is not prewhitened", file=sys.stderr)
    print(one_line(out, sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
