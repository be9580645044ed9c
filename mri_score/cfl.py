"""BART's ``.cfl``/``.hdr`` array files, and BART's k-space axes <-> fastMRI's.

Format (BART, ``src/misc/mmio.c``): ``NAME.hdr`` is text, a ``# Dimensions`` line
and then one line of whitespace-separated positive integers (BART writes 16, its
``DIMS``); other ``#`` sections (``# Command``, ``# Files``, ``# Creator``) are
ignored.  ``NAME.cfl`` holds the data, raw complex64 little-endian
(interleaved float32 real, imaginary) in Fortran order: dimension 0 varies
fastest.  The header is parsed as numbers only (never evaluated), and its size
must match the ``.cfl`` file's bytes exactly.  A ``# Data`` section, which
points at a data file elsewhere, is refused: the data are always ``NAME.cfl``.

Axes
----
BART's k-space convention puts readout on dim 0 (``READ_DIM``), phase encoding on
dim 1 (``PHS1_DIM``), the slice / second phase-encode axis on dim 2 (``PHS2_DIM``)
and coils on dim 3 (``COIL_DIM``).  fastMRI's ``kspace`` is ``(slices, coils, H, W)``
with rows ``H`` the readout (the header's ``x``) and columns ``W`` the phase
encoding (``y``, the undersampled axis).  :func:`kspace_from_cfl` maps

====================  ==================
BART dim              fastMRI axis
====================  ==================
0  readout            2  ``H`` (rows)
1  phase encode       3  ``W`` (columns)
2  slice              0  slices
3  coils              1  coils
====================  ==================

and :func:`kspace_to_cfl` is its inverse.  Sample values and the position of the
k-space centre (index ``N // 2`` in both conventions) are left unchanged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mri_score import limits
from mri_score.atomic import atomic_output, check_output
from mri_score.errors import InputError
from mri_score.fastmri_io import MAX_KSPACE_BYTES

#: BART's number of dimensions (``DIMS``): headers with more entries are refused; :func:`write_cfl` pads to it.
BART_DIMS = 16
#: Largest ``.hdr`` file read (BART's own are a few hundred bytes; ``# Command`` lines can be long).
MAX_HDR_BYTES = 1024**2
#: Largest ``.cfl`` array read, in bytes (the k-space bound of :mod:`mri_score.fastmri_io`).
MAX_CFL_BYTES = MAX_KSPACE_BYTES
#: Bytes per element: complex64.
ITEMSIZE = 8
#: The k-space dims of BART: readout, phase, slice, coils.
READ_DIM, PHS1_DIM, SLICE_DIM, COIL_DIM = 0, 1, 2, 3

_DIGITS = re.compile(r"[0-9]{1,19}")


def cfl_paths(name: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(NAME.cfl, NAME.hdr)`` for a stem ``NAME`` (a trailing ``.cfl`` or ``.hdr`` is taken off)."""
    text = os.fspath(name)
    for suffix in (".cfl", ".hdr"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    if not text or text.endswith(os.sep):
        raise InputError(f"{name!s}: not a BART file name (give NAME, NAME.cfl or NAME.hdr)")
    return Path(text + ".cfl"), Path(text + ".hdr")


def _regular_file(path: Path, note: str = "") -> int:
    """The byte size of ``path``; one :class:`InputError` naming it when it is absent or not a regular file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file{note}") from None
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    return int(st.st_size)


def read_cfl_header(name: str | os.PathLike[str]) -> tuple[int, ...]:
    """The dimensions a BART ``.hdr`` declares, checked against its ``.cfl`` file's size.

    Parameters
    ----------
    name : str or path-like
        ``NAME``, ``NAME.cfl`` or ``NAME.hdr``.

    Returns
    -------
    tuple of int
        All declared dims (trailing ones included), each >= 1.

    Raises
    ------
    InputError
        One line naming the file: missing or unreadable files, a header that is not text, lacks
        ``# Dimensions``, has a token that is not a plain non-negative integer, a zero dim, more than
        :data:`BART_DIMS` dims, a ``# Data`` section, an array beyond :data:`MAX_CFL_BYTES` or the
        memory available, or a ``.cfl`` whose byte count is not ``8 * prod(dims)``.
    """
    cfl, hdr = cfl_paths(name)
    size = _regular_file(hdr)
    if size > MAX_HDR_BYTES:
        raise InputError(f"{hdr}: BART header of {size} bytes is too large ({MAX_HDR_BYTES} bytes max)")
    try:
        text = hdr.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{hdr}: BART header is not text") from None
    except OSError as err:
        raise InputError(f"{hdr}: cannot be read ({err.strerror or err})") from None
    lines = [ln.strip() for ln in text.splitlines()]
    sections = {ln[1:].strip().lower(): i for i, ln in enumerate(lines) if ln.startswith("#")}
    if "data" in sections:
        raise InputError(f"{hdr}: header names a separate data file ('# Data' section); refused (the data must be "
                         f"{cfl.name})")
    if "dimensions" not in sections:
        raise InputError(f"{hdr}: not a BART header (no '# Dimensions' line)")
    following = [ln for ln in lines[sections["dimensions"] + 1 :] if ln]
    if not following or following[0].startswith("#"):
        raise InputError(f"{hdr}: '# Dimensions' is not followed by a line of dims")
    tokens = following[0].split()
    if len(tokens) > BART_DIMS:
        raise InputError(f"{hdr}: {len(tokens)} dims declared; BART has at most {BART_DIMS}")
    bad = next((t for t in tokens if not _DIGITS.fullmatch(t)), None)
    if bad is not None:
        shown = bad if len(bad) <= 24 else bad[:21] + "..."
        raise InputError(f"{hdr}: dims must be positive integers, got {shown!r}")
    dims = tuple(int(t) for t in tokens)
    if min(dims) < 1:
        raise InputError(f"{hdr}: dims must be positive, got {dims}")
    nbytes = float(np.prod(dims, dtype=np.float64)) * ITEMSIZE
    if nbytes > MAX_CFL_BYTES:
        raise InputError(f"{hdr}: dims {dims} declare {nbytes:.4g} bytes; too large to load ({MAX_CFL_BYTES} bytes max)")
    actual = _regular_file(cfl, f" (the data of {hdr.name})")
    if actual != int(nbytes):
        raise InputError(f"{cfl}: {actual} bytes, but {hdr.name} declares dims {dims} = {int(nbytes)} bytes of "
                         "complex64; the pair does not match (truncated or of another array)")
    return dims


def read_cfl(name: str | os.PathLike[str]) -> np.ndarray:
    """Read a BART array ``NAME.cfl`` / ``NAME.hdr``.

    Parameters
    ----------
    name : str or path-like
        ``NAME``, ``NAME.cfl`` or ``NAME.hdr``.

    Returns
    -------
    np.ndarray
        complex64, the declared dims with trailing singleton dims dropped (at least one dim is
        kept), as BART's own ``cfl.readcfl`` returns them.

    Raises
    ------
    InputError
        As :func:`read_cfl_header`, or when the data cannot be read.
    """
    cfl, hdr = cfl_paths(name)
    dims = list(read_cfl_header(name))
    count = int(np.prod(dims))
    limits.check_fits(count * ITEMSIZE * 2, f"{cfl}: BART array of dims {tuple(dims)}")
    try:
        data = np.fromfile(cfl, dtype="<c8", count=count)
    except (OSError, ValueError) as err:
        raise InputError(f"{cfl}: cannot be read ({str(err).splitlines()[0]})") from None
    if data.size != count:  # the file shrank after its size was checked
        raise InputError(f"{cfl}: holds {data.size} values, {hdr.name} declares {count}")
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return data.astype(np.complex64, copy=False).reshape(dims, order="F")


def _write_data(fh: BinaryIO, array: np.ndarray) -> None:
    """Write ``array`` (complex64) to ``fh`` as little-endian Fortran-order bytes."""
    np.asarray(array, dtype="<c8").ravel(order="F").tofile(fh)


def write_cfl(name: str | os.PathLike[str], array: np.ndarray) -> tuple[Path, Path]:
    """Write ``array`` as BART's ``NAME.cfl`` and ``NAME.hdr``, both atomically.

    Parameters
    ----------
    name : str or path-like
        ``NAME``, ``NAME.cfl`` or ``NAME.hdr``; the directory is created.
    array : np.ndarray
        Any numeric array of at most :data:`BART_DIMS` dims (a 0-d array is one element);
        stored as complex64.  The header lists :data:`BART_DIMS` dims (trailing ones added),
        as BART writes them.

    Returns
    -------
    tuple of Path
        ``(NAME.cfl, NAME.hdr)``.

    Raises
    ------
    InputError
        A non-numeric array, more than :data:`BART_DIMS` dims, an empty dim, or a write that fails
        (one line naming the file; see :func:`mri_score.atomic.atomic_output`).  On any failure
        neither file is left behind: each is written to a temporary sibling and renamed, the data
        first; should the header's rename fail, the new data file is removed.
    """
    cfl, hdr = cfl_paths(name)
    arr = np.asarray(array)
    if arr.dtype.kind not in "biufc":
        raise InputError(f"{cfl}: BART arrays are numeric, got dtype {arr.dtype}")
    if arr.ndim > BART_DIMS:
        raise InputError(f"{cfl}: BART arrays have at most {BART_DIMS} dims, got {arr.ndim}")
    if arr.size == 0:
        raise InputError(f"{cfl}: BART arrays have positive dims, got shape {arr.shape}")
    dims = list(arr.shape) + [1] * (BART_DIMS - arr.ndim)
    header = "# Dimensions\n" + " ".join(str(d) for d in dims) + " \n"
    check_output(cfl)
    check_output(hdr)
    data_done = False
    try:
        with atomic_output(hdr) as tmp_hdr:
            tmp_hdr.write_text(header, encoding="ascii")
            with atomic_output(cfl) as tmp_cfl, open(tmp_cfl, "wb") as fh:
                _write_data(fh, arr)
            data_done = True
    except BaseException:
        if data_done:
            cfl.unlink(missing_ok=True)
        raise
    return cfl, hdr


def kspace_from_cfl(array: np.ndarray, path: str | os.PathLike[str] = "") -> np.ndarray:
    """BART k-space ``(readout, phase, slice, coils, 1, ...)`` -> fastMRI ``(slices, coils, H, W)``.

    Parameters
    ----------
    array : np.ndarray
        Complex, at least 1 dim (missing trailing dims are ones, as :func:`read_cfl` drops them):
        dim 0 readout, 1 phase encode, 2 slice, 3 coils; every further dim must be 1.
    path : str or path-like, optional
        The file the array came from, for messages.

    Returns
    -------
    np.ndarray
        complex64 C-contiguous ``(slices, coils, H, W)`` with ``H`` = readout (rows), ``W`` = phase
        encode (columns): fastMRI's ``kspace`` layout.  Values are not changed.

    Raises
    ------
    InputError
        A real array, or a non-singleton dim beyond the coil dim (BART's maps, echoes, time ...,
        which fastMRI's layout has no axis for).
    """
    arr = np.asarray(array)
    where = f"{path}: " if os.fspath(path) else ""
    if not np.iscomplexobj(arr):
        raise InputError(f"{where}BART k-space must be complex, got dtype {arr.dtype}")
    if arr.ndim > 4 and any(d != 1 for d in arr.shape[4:]):
        raise InputError(f"{where}BART k-space of dims {arr.shape}: only dims 0-3 (readout, phase, slice, coils) "
                         "may exceed 1 for fastMRI's (slices, coils, H, W) layout")
    four = arr.reshape(tuple(arr.shape[:4]) + (1,) * max(0, 4 - arr.ndim))
    out = np.transpose(four, (SLICE_DIM, COIL_DIM, READ_DIM, PHS1_DIM))
    return np.ascontiguousarray(out, dtype=np.complex64)


def kspace_to_cfl(kspace: np.ndarray) -> np.ndarray:
    """fastMRI k-space ``(slices, coils, H, W)`` (or single-coil ``(slices, H, W)``) -> BART ``(H, W, slices, coils)``.

    The inverse of :func:`kspace_from_cfl`: readout ``H`` on dim 0, phase ``W`` on dim 1, slices on
    dim 2, coils on dim 3 (pass the result to :func:`write_cfl`).

    Parameters
    ----------
    kspace : np.ndarray
        Complex ``(slices, coils, H, W)`` or ``(slices, H, W)``.

    Returns
    -------
    np.ndarray
        complex64 ``(H, W, slices, coils)``.
    """
    ks = np.asarray(kspace)
    if ks.ndim == 3:
        ks = ks[:, None]
    if ks.ndim != 4:
        raise InputError(f"fastMRI k-space must be (slices, coils, H, W) or (slices, H, W), got {ks.shape}")
    if not np.iscomplexobj(ks):
        raise InputError(f"fastMRI k-space must be complex, got dtype {ks.dtype}")
    return np.transpose(ks, (2, 3, 0, 1)).astype(np.complex64, copy=False)
