"""Reading any accepted k-space input into one in-memory volume, recognised by content.

Accepted layouts (every reader validates and refuses in one line naming the file):

* fastMRI HDF5 (``kspace`` ``(slices, coils, H, W)``, header, optional ``mask`` and targets):
  :func:`mri_score.fastmri_io.read_fastmri`;
* ISMRMRD / MRD raw HDF5 (Cartesian 2-D multi-slice; readout oversampling removed, noise prewhitened,
  ACS from the calibration flags): :func:`mri_score.mrd.read_mrd`;
* BART ``.cfl``/``.hdr`` k-space (dims readout, phase, slice, coils): :func:`mri_score.cfl.read_cfl`.

Every reader returns a :class:`~mri_score.fastmri_io.FastMRIVolume` in fastMRI's layout (rows = readout,
columns = phase encode).  Loading never executes code and never writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mri_score.errors import InputError
from mri_score.fastmri_io import FastMRIVolume, read_fastmri, validate_kspace

#: File suffixes a directory run reconstructs (a BART pair is listed once, by its ``.cfl``).
INPUT_SUFFIXES = (".h5", ".cfl")


def input_kind(path: str | os.PathLike[str]) -> str:
    """``"cfl"``, ``"mrd"``, ``"mrd_noncartesian"`` or ``"fastmri"``: how ``path`` is read (by suffix for BART, by
    content for HDF5; an MRD file's trajectory decides between :func:`read_volume` and
    :func:`mri_score.noncartesian.read_noncartesian_mrd`)."""
    from mri_score.mrd import is_mrd_file

    p = Path(path)
    if p.suffix.lower() in (".cfl", ".hdr"):
        return "cfl"
    if not is_mrd_file(p):
        return "fastmri"
    from mri_score.noncartesian import is_noncartesian_mrd

    return "mrd_noncartesian" if is_noncartesian_mrd(p) else "mrd"


def read_cfl_volume(path: str | os.PathLike[str]) -> FastMRIVolume:
    """A BART ``.cfl``/``.hdr`` k-space as a header-less fastMRI volume (recon size = the matrix; pixel size unknown).

    The mask is inferred from all-zero phase-encode columns (:func:`mri_score.fastmri_io.infer_mask`).
    """
    from mri_score.cfl import cfl_paths, kspace_from_cfl, read_cfl

    data_path, _ = cfl_paths(path)
    kspace = np.ascontiguousarray(kspace_from_cfl(read_cfl(path), data_path)).astype(np.complex64, copy=False)
    validate_kspace(kspace, data_path)
    _, _, h, w = kspace.shape
    return FastMRIVolume(path=data_path, kspace=kspace, mask=None, target=None, encoded_size=(h, w, 1),
                         recon_size=(h, w, 1), padding_left=0, padding_right=w, attrs={})


def read_volume(path: str | os.PathLike[str], kind: str | None = None) -> FastMRIVolume:
    """Read a Cartesian input (:data:`INPUT_SUFFIXES`, recognised by :func:`input_kind` unless ``kind`` says) as a
    fastMRI-layout volume; a non-Cartesian MRD file is refused by the Cartesian MRD reader, in one line."""
    kind = input_kind(path) if kind is None else kind
    if kind == "cfl":
        return read_cfl_volume(path)
    if kind in ("mrd", "mrd_noncartesian"):
        from mri_score.mrd import read_mrd

        return read_mrd(path)
    return read_fastmri(path)


def list_inputs(src: str | os.PathLike[str]) -> list[Path]:
    """The inputs of ``src``: the file itself, or a directory's ``*.h5`` and ``*.cfl`` files in name order.

    Entries that are not regular files (a dangling link, a symlink loop, a directory named ``x.h5``) are
    skipped; an :class:`InputError` when nothing usable is left or ``src`` does not exist.
    """
    src = Path(src)
    if src.is_dir():
        try:
            entries = sorted(p for p in src.iterdir() if p.suffix.lower() in INPUT_SUFFIXES)
        except OSError as err:
            raise InputError(f"{src}: cannot list the directory ({err.strerror or err})") from None
        files = [p for p in entries if p.is_file()]  # is_file() is False for loops and dangling links
        if not files:
            raise InputError(f"{src}: directory holds no .h5 files (nor readable .cfl files)")
        return files
    if src.is_file():
        return [src]
    if src.suffix.lower() == ".hdr" and src.with_suffix(".cfl").is_file():
        return [src.with_suffix(".cfl")]
    if os.path.lexists(src):
        raise InputError(f"{src}: not a file or directory that can be read (a FIFO, a dangling link or a symlink loop?)")
    raise InputError(f"{src}: no such file or directory")


def skipped_inputs(src: str | os.PathLike[str]) -> list[Path]:
    """The entries of a directory ``src`` with an input suffix that :func:`list_inputs` skips (not regular files)."""
    src = Path(src)
    if not src.is_dir():
        return []
    return sorted(p for p in src.iterdir() if p.suffix.lower() in INPUT_SUFFIXES and not p.is_file())
