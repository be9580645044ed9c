"""Reading ISMRMRD/MRD raw data (Cartesian 2-D multi-slice) into the fastMRI layout.

An MRD file (https://ismrmrd.readthedocs.io) is an HDF5 file with a group (``dataset`` by
default) that holds:

``xml``
    the ISMRMRD header, one variable-length string (shape ``(1,)``);
``data``
    the acquisitions, a 1-D compound dataset with one row per readout: ``head`` (the 340-byte
    acquisition header: ``flags`` uint64, ``number_of_samples``, ``active_channels``,
    ``discard_pre``/``discard_post``, ``center_sample``, ``encoding_space_ref``,
    ``trajectory_dimensions``, ``sample_time_us`` float32 and the encoding counters ``idx``:
    ``kspace_encode_step_1``/``_2``, ``average``, ``slice``, ``contrast``, ``phase``,
    ``repetition``, ``set``, ``segment``), ``traj`` (variable-length float32, empty for Cartesian
    data) and ``data`` (variable-length float32: the complex samples interleaved real/imaginary,
    channel-major, i.e. a C-ordered complex64 array ``(active_channels, number_of_samples)``).

The table is read here with h5py directly (in blocks of rows, after checking its layout and
the memory it needs); the XML header is parsed by the reference implementation, the
``ismrmrd`` package (its schema classes), and the flag bits are its constants.  Nothing in a
file is executed: no pickles, no DTDs or entities (refused), no external links or virtual
datasets (refused, as for fastMRI inputs by :func:`mri_score.fastmri_io.open_input`).

:func:`load_mrd` turns one file into the fastMRI layout (:class:`~mri_score.fastmri_io.FastMRIVolume`):

1. noise prewhitening: the covariance ``Psi = X X^H / M`` of the samples of the acquisitions
   flagged ``ACQ_IS_NOISE_MEASUREMENT`` (each scaled by ``sqrt(noise dwell / imaging dwell)``,
   so that ``Psi`` is the covariance at the imaging bandwidth), its Cholesky factor
   ``Psi = L L^H`` and every readout replaced by ``L^-1 x``: the noise of the output is white,
   of unit variance per complex sample, in every coil;
2. readout-oversampling removal, when the encoded readout matrix exceeds the recon one: a
   centred orthonormal inverse FFT along the readout, a centre crop to the recon matrix
   (fastMRI's ``center_crop`` offsets) and the forward FFT back;
3. each readout placed at ``kspace[slice, :, :, column]`` with ``column = kspace_encode_step_1
   + encodedSpace.y // 2 - center`` (the encoding-limits centre lands on column ``W // 2``),
   repeated lines (averages) averaged; lines flagged ``ACQ_IS_PARALLEL_CALIBRATION`` (a
   separate reference scan) fill the columns no imaging line covers, lines flagged
   ``..._CALIBRATION_AND_IMAGING`` are imaging lines (embedded ACS).

Output: rows = readout (``H`` = recon readout matrix), columns = phase encode (``W`` = encoded
phase matrix), complex64 ``(slices, coils, H, W)``, slices in ``idx.slice`` order.  Refused in
one line: non-Cartesian trajectories, 3-D encodings, partial Fourier (asymmetric encoding
limits or echo), more than one contrast, phase, repetition or set, reversed (EPI) lines.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mri_score import limits
from mri_score.errors import InputError
from mri_score.fastmri_io import (
    MAX_HEADER_BYTES,
    MAX_HEADER_VALUE,
    MAX_KSPACE_BYTES,
    READ_COPIES,
    FastMRIVolume,
    center_crop,
    dataset,
    open_input,
    parse_ismrmrd_header,
    read_array,
    resolve,
    validate_kspace,
)

#: The MRD group name the ISMRMRD tools write (``ismrmrd.Dataset``'s default).
DEFAULT_GROUP = "dataset"
#: Where :func:`mri_score.mrd_write.write_mrd` keeps the noise-free fully sampled k-space (fastMRI layout,
#: not whitened) for scoring; no part of the MRD standard (other readers ignore it).
REFERENCE_GROUP = "mri_score_reference"
#: At most this many receive channels (the acquisition header's channel mask has 1024 bits).
MAX_CHANNELS = 1024
#: Acquisition rows read from the file at once.
BLOCK_ROWS = 256
#: Counters that must take a single value (besides the slice, which becomes the slice axis).
SINGLE_VALUED = (("contrast", "contrasts"), ("phase", "phases"), ("repetition", "repetitions"), ("set", "sets"))
#: Acquisition-header fields this reader uses.
HEAD_FIELDS = ("flags", "number_of_samples", "active_channels", "discard_pre", "discard_post", "center_sample",
               "encoding_space_ref", "trajectory_dimensions", "sample_time_us", "idx")
IDX_FIELDS = ("kspace_encode_step_1", "kspace_encode_step_2", "average", "slice", "contrast", "phase",
              "repetition", "set")
#: Flags of acquisitions that carry no image data for this reader (navigators, phase correction, feedback, ...).
SKIPPED_FLAGS = ("ACQ_IS_NAVIGATION_DATA", "ACQ_IS_PHASECORR_DATA", "ACQ_IS_HPFEEDBACK_DATA", "ACQ_IS_DUMMYSCAN_DATA",
                 "ACQ_IS_RTFEEDBACK_DATA", "ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA",
                 "ACQ_IS_PHASE_STABILIZATION_REFERENCE", "ACQ_IS_PHASE_STABILIZATION")


def ismrmrd_module(path: Path | str = "") -> ModuleType:
    """The ``ismrmrd`` package (imported on first use); one :class:`InputError` naming ``path`` when it is missing."""
    try:
        import ismrmrd
        import ismrmrd.xsd  # noqa: F401  (the header schema classes)
    except ImportError:
        raise InputError(f"{path}: reading MRD files needs the 'ismrmrd' package; install the 'mrd' extra "
                         "(pip install 'mri-score[mrd]') or 'pip install ismrmrd'") from None
    return ismrmrd


def flag_bit(name: str) -> int:
    """The ``uint64`` bit of the ISMRMRD acquisition flag ``name`` (``ismrmrd.constants``, bits are 1-based)."""
    return 1 << (int(getattr(ismrmrd_module().constants, name)) - 1)


def _group_candidates(hf: Any, group: str | None) -> list[str]:
    if group is not None:
        return [group]
    import h5py

    names = [DEFAULT_GROUP]
    for name in list(hf.keys())[:64]:
        if name != DEFAULT_GROUP and isinstance(hf.get(name, getlink=True), h5py.HardLink):
            names.append(name)
    return names


def _mrd_group_problem(hf: Any, name: str) -> str | None:
    """None when ``name`` is a group with a compound ``data`` table (``head`` and ``data`` fields) and an
    ``xml`` dataset (hard links only: nothing is followed); else what is missing."""
    import h5py

    if not isinstance(hf.get(name, getlink=True), h5py.HardLink) or not isinstance(hf.get(name), h5py.Group):
        return f"no group '{name}'"
    grp = hf[name]
    for key in ("xml", "data"):
        if not isinstance(grp.get(key, getlink=True), h5py.HardLink) or not isinstance(grp.get(key), h5py.Dataset):
            return f"group '{name}' has no '{key}' dataset" + (" (no acquisitions)" if key == "data" else "")
    names = grp["data"].dtype.names or ()
    if "head" not in names or "data" not in names:
        return f"'{name}/data' is not an ISMRMRD acquisition table (a compound with 'head' and 'data' fields)"
    return None


def find_mrd_group(hf: Any, path: Path, group: str | None = None) -> str:
    """The MRD group of an open HDF5 file: ``group``, else ``dataset``, else the first top-level group that
    qualifies (:func:`is_mrd_file`); one :class:`InputError` naming the file and what is missing."""
    problems = []
    for name in _group_candidates(hf, group):
        problem = _mrd_group_problem(hf, name)
        if problem is None:
            return name
        problems.append(problem)
    raise InputError(f"{path}: not an ISMRMRD/MRD file ({problems[0]}; an MRD file has a group, '{DEFAULT_GROUP}' "
                     "by default, with an 'xml' header and a 'data' acquisition table)")


def is_mrd_file(path: str | os.PathLike[str], group: str | None = None) -> bool:
    """True when ``path`` is an HDF5 file with an ISMRMRD/MRD group (recognised by content, not by name).

    The group (``group``, else ``dataset``, else any top-level group) must hold an ``xml`` dataset and
    a compound ``data`` dataset with ``head`` and ``data`` fields.  Never raises: a missing,
    unreadable or other file (a fastMRI file: ``kspace`` and ``ismrmrd_header``) is False.
    Nothing but the file's structure is read.
    """
    try:
        with open_input(path) as hf:
            return any(_mrd_group_problem(hf, name) is None for name in _group_candidates(hf, group))
    except (InputError, OSError, RuntimeError, ValueError, KeyError, TypeError):
        return False


@dataclass
class MRDScan:
    """One MRD file converted to the fastMRI layout, with what the conversion used.

    Attributes
    ----------
    volume : FastMRIVolume
        ``kspace`` complex64 ``(slices, coils, H, W)`` (prewhitened unless asked not to; unacquired
        columns zero), ``mask`` float32 ``(W,)`` when undersampled (None when every column of the
        encoded range was acquired, as fastMRI's training files), ``target`` float32
        ``(slices, h, w)`` (the recon-size RSS of the whitened noise-free reference k-space, when the
        file carries one, :data:`REFERENCE_GROUP`), sizes, padding and field of view of the output
        header, attrs ``acquisition``, ``patient_id`` (and ``acceleration``, ``num_low_frequency``
        when undersampled).
    header_xml : bytes
        The ISMRMRD header for the output: the file's, with the readout of the encoded space
        reduced to the recon matrix (matrix and field of view), only the encoding used, and the
        phase-encode limits renumbered from 0 (fastMRI's padding rule then gives the acquired range).
    acquired : np.ndarray
        bool ``(W,)``: columns holding data (imaging or calibration lines).
    acs : np.ndarray
        bool ``(W,)``: columns of lines flagged parallel calibration (either flag).
    noise_covariance : np.ndarray or None
        complex128 ``(coils, coils)``: the noise covariance at the imaging bandwidth, of the raw data
        (None without noise acquisitions).
    whitening : np.ndarray or None
        complex128 ``(coils, coils)``: the lower-triangular ``L^-1`` applied to every readout (None when not
        prewhitened).
    noise_samples : int
        Noise samples per coil the covariance was estimated from (0 without noise acquisitions).
    group : str
        The MRD group read.
    readout_oversampling : float
        Encoded / recon readout matrix (1.0: nothing removed).
    """

    volume: FastMRIVolume
    header_xml: bytes
    acquired: np.ndarray
    acs: np.ndarray
    noise_covariance: np.ndarray | None
    whitening: np.ndarray | None
    noise_samples: int
    group: str
    readout_oversampling: float


# --- header -------------------------------------------------------------------------------------------------


def read_mrd_header(hf: Any, path: Path, group: str) -> tuple[Any, bytes]:
    """The parsed ISMRMRD header (``ismrmrd.xsd.ismrmrdHeader``) of ``group/xml`` and its raw bytes.

    Refused in one :class:`InputError`: a header that is not one string, larger than 16 MiB, declares a
    DTD or entities, is not well-formed XML or does not follow the ISMRMRD schema.
    """
    ismrmrd = ismrmrd_module(path)
    key = f"{group}/xml"
    dset = dataset(hf, key, path, "SOU", (0, 1), MAX_HEADER_BYTES, f"MRD header '{key}'")
    if dset is None:
        raise InputError(f"{path}: no MRD header '{key}'")
    if dset.shape not in ((), (1,)):
        raise InputError(f"{path}: MRD header '{key}' must be one string, got shape {dset.shape}")
    if dset.dtype.kind == "O":  # variable-length: its size is only known once read
        limits.check_fits(path.stat().st_size, f"{path}: MRD header '{key}'")
    value = read_array(dset, path, f"MRD header '{key}'").reshape(())[()]
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes | np.bytes_):
        raise InputError(f"{path}: MRD header '{key}' must be text, got {type(value).__name__}")
    raw = bytes(value).rstrip(b"\x00")
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise InputError(f"{path}: MRD header declares a DTD or entities; refused (ISMRMRD headers have none)")
    if not raw.strip():
        raise InputError(f"{path}: MRD header '{key}' is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # xsdata warns (and keeps the text) for values of the wrong type
            header = ismrmrd.xsd.CreateFromDocument(raw)
    except Exception as err:  # the schema parser raises ParserError, TypeError, ValueError, ... for bad documents
        text = " ".join(str(err).split()) or type(err).__name__
        raise InputError(f"{path}: MRD header is not a valid ISMRMRD header ({text[:200]})") from None
    if not header.encoding:
        raise InputError(f"{path}: MRD header has no <encoding>")
    return header, raw


def _header_int(value: Any, path: Path, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= MAX_HEADER_VALUE:
        raise InputError(f"{path}: MRD header {name} must be an integer in [{low}, {MAX_HEADER_VALUE:g}], "
                         f"got {str(value)[:40]!r}")
    return int(value)


def _header_float(value: Any, path: Path, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not 0 < value <= MAX_HEADER_VALUE:
        raise InputError(f"{path}: MRD header {name} must be a number in (0, {MAX_HEADER_VALUE:g}], "
                         f"got {str(value)[:40]!r}")
    return float(value)


@dataclass
class _Geometry:
    encoded: tuple[int, int, int]
    recon: tuple[int, int, int]
    encoded_fov: tuple[float, float, float]
    recon_fov: tuple[float, float, float]
    e1_min: int
    e1_max: int
    e1_center: int


def header_geometry(header: Any, path: Path, ref: int = 0) -> _Geometry:
    """Matrix sizes, fields of view and phase-encode limits of encoding ``ref``, with every refusal of the header.

    Refused: a trajectory other than Cartesian, a 3-D encoding (encoded ``z`` > 1 or
    ``kspace_encoding_step_2`` limits beyond 0), partial Fourier (phase-encode limits asymmetric
    around the centre by more than one line), limits that do not fit the encoded matrix and a recon
    readout matrix larger than the encoded one.  Without phase-encode limits the whole encoded
    matrix is assumed, centred at ``y // 2``.
    """
    if ref >= len(header.encoding):
        raise InputError(f"{path}: acquisitions refer to encoding space {ref}, the MRD header has "
                         f"{len(header.encoding)}")
    enc = header.encoding[ref]
    trajectory = getattr(enc.trajectory, "value", enc.trajectory)
    if trajectory != "cartesian":
        raise InputError(f"{path}: MRD trajectory is '{trajectory}': non-Cartesian MRD input is read by the "
                         "non-Cartesian path, not by this Cartesian reader")

    def space(sp: Any, what: str) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        size = tuple(_header_int(getattr(sp.matrixSize, a), path, f"{what}/matrixSize/{a}", 1) for a in "xyz")
        fov = tuple(_header_float(getattr(sp.fieldOfView_mm, a), path, f"{what}/fieldOfView_mm/{a}") for a in "xyz")
        return size, fov  # type: ignore[return-value]

    encoded, encoded_fov = space(enc.encodedSpace, "encodedSpace")
    recon, recon_fov = space(enc.reconSpace, "reconSpace")
    lims = enc.encodingLimits
    e2 = getattr(lims, "kspace_encoding_step_2", None)
    e2_max = _header_int(e2.maximum, path, "encodingLimits/kspace_encoding_step_2/maximum") if e2 is not None else 0
    if encoded[2] > 1 or e2_max > 0:
        raise InputError(f"{path}: 3-D MRD encoding (encoded matrix z = {encoded[2]}, kspace_encoding_step_2 up to "
                         f"{e2_max}); only 2-D multi-slice Cartesian data is read")
    if recon[0] > encoded[0]:
        raise InputError(f"{path}: MRD recon readout matrix {recon[0]} exceeds the encoded one {encoded[0]} "
                         "(readout interpolation is not supported)")
    e1 = getattr(lims, "kspace_encoding_step_1", None)
    ey = encoded[1]
    if e1 is None:
        lo, hi, centre = 0, ey - 1, ey // 2
    else:
        name = "encodingLimits/kspace_encoding_step_1"
        lo = _header_int(e1.minimum, path, f"{name}/minimum")
        hi = _header_int(e1.maximum, path, f"{name}/maximum")
        centre = _header_int(e1.center, path, f"{name}/center")
        if not lo <= centre <= hi:
            raise InputError(f"{path}: MRD phase-encode limits are inconsistent (minimum {lo}, center {centre}, "
                             f"maximum {hi})")
        if abs((centre - lo) - (hi - centre)) > 1:
            raise InputError(f"{path}: partial Fourier MRD data (phase-encode lines {lo}..{hi} around centre {centre} "
                             "are asymmetric); refused: fill the missing part of k-space first")
    left = ey // 2 - centre
    if left + lo < 0 or left + hi >= ey:
        raise InputError(f"{path}: MRD phase-encode limits {lo}..{hi} (centre {centre}) do not fit the encoded "
                         f"matrix of {ey} lines")
    return _Geometry(encoded, recon, encoded_fov, recon_fov, lo, hi, centre)  # type: ignore[arg-type]


def output_header(header: Any, geo: _Geometry, ref: int) -> bytes:
    """The output's ISMRMRD header XML (see :attr:`MRDScan.header_xml`), UTF-8 bytes."""
    import copy

    ismrmrd = ismrmrd_module()
    out = copy.deepcopy(header)
    enc = out.encoding[ref]
    out.encoding = [enc]
    rx, ex = geo.recon[0], geo.encoded[0]
    enc.encodedSpace.matrixSize.x = rx
    enc.encodedSpace.fieldOfView_mm.x = geo.encoded_fov[0] * rx / ex
    lims = enc.encodingLimits
    if getattr(lims, "kspace_encoding_step_0", None) is not None:
        lims.kspace_encoding_step_0 = ismrmrd.xsd.limitType(minimum=0, maximum=rx - 1, center=rx // 2)
    lims.kspace_encoding_step_1 = ismrmrd.xsd.limitType(minimum=0, maximum=geo.e1_max - geo.e1_min,
                                                         center=geo.e1_center - geo.e1_min)
    return ismrmrd.xsd.ToXML(out, encoding="utf-8").encode("utf-8")


# --- acquisition table --------------------------------------------------------------------------------------


def acquisition_table(hf: Any, path: Path, group: str) -> Any:
    """The ``group/data`` dataset, checked before any row is read: a 1-D compound table with the
    ISMRMRD ``head`` fields this reader uses and a variable-length float ``data`` field."""
    import h5py

    key = f"{group}/data"
    dset = resolve(hf, key, path)
    if not isinstance(dset, h5py.Dataset):
        raise InputError(f"{path}: no MRD acquisition table '{key}'")
    if dset.is_virtual or dset.external:
        raise InputError(f"{path}: '{key}' is a virtual or externally stored dataset; refused")
    dt = dset.dtype
    head = dt.fields.get("head", (None,))[0] if dt.names else None
    if head is None or head.names is None or "data" not in dt.names:
        raise InputError(f"{path}: '{key}' is not an ISMRMRD acquisition table (dtype {str(dt)[:80]})")
    missing = [f for f in HEAD_FIELDS if f not in head.names]
    missing += [f"idx.{f}" for f in IDX_FIELDS if "idx" in head.names and f not in (head["idx"].names or ())]
    if missing:
        raise InputError(f"{path}: '{key}' acquisition headers lack {', '.join(missing)}")
    base = h5py.check_vlen_dtype(dt.fields["data"][0])
    if base is None or base.kind != "f":
        raise InputError(f"{path}: '{key}' data field must be variable-length float, got {dt.fields['data'][0]}")
    if dset.ndim != 1 or dset.shape[0] < 1:
        raise InputError(f"{path}: '{key}' holds no acquisitions (shape {dset.shape})")
    limits.check_fits(float(dset.shape[0]) * head.itemsize * 2, f"{path}: {dset.shape[0]} MRD acquisition headers")
    return dset


def read_heads(dset: Any, path: Path) -> np.ndarray:
    """The ``head`` column of the acquisition table (structured array, one row per acquisition)."""
    try:
        return np.asarray(dset.fields("head")[()])
    except (OSError, TypeError, ValueError, RuntimeError, KeyError) as err:
        raise InputError(f"{path}: MRD acquisition headers cannot be read ({str(err).splitlines()[0]})") from None


def unique_values(values: np.ndarray) -> list[int]:
    """The distinct ``values``, sorted, as Python ints."""
    return [int(v) for v in np.unique(values)]


def one_value(values: np.ndarray, path: Path, what: str) -> int:
    """The one value all acquisitions share; one :class:`InputError` naming ``what`` when they differ."""
    found = unique_values(values)
    if len(found) != 1:
        raise InputError(f"{path}: MRD {what} differ between acquisitions ({', '.join(map(str, found[:6]))}); "
                         "one value is required")
    return found[0]


def acquisition_rows(dset: Any, rows: np.ndarray, path: Path, field: str = "data") -> Any:
    """Yield ``(row, value)`` of the variable-length ``field`` (``data``: the samples, ``traj``: the trajectory) for
    the sorted ``rows`` of the table, ``value`` a float array, read in blocks of :data:`BLOCK_ROWS`."""
    column = dset.fields(field)
    for start in range(0, int(rows[-1]) + 1 if rows.size else 0, BLOCK_ROWS):
        want = rows[(rows >= start) & (rows < start + BLOCK_ROWS)]
        if want.size == 0:
            continue
        stop = int(want[-1]) + 1
        try:
            block = column[start:stop]
        except (OSError, TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"{path}: MRD acquisitions {start}..{stop - 1} cannot be read "
                             f"({str(err).splitlines()[0]})") from None
        for r in want:
            yield int(r), block[int(r) - start]


def acquisition_samples(raw: Any, row: int, channels: int, samples: int, path: Path) -> np.ndarray:
    """Acquisition ``row``'s data as complex128 ``(channels, samples)``; checked for length and finiteness."""
    arr = np.asarray(raw)
    if arr.dtype.kind != "f" or arr.size != 2 * channels * samples:
        raise InputError(f"{path}: MRD acquisition {row} holds {arr.size} values; its header says {channels} "
                         f"channels x {samples} complex samples ({2 * channels * samples} values)")
    out = arr.astype(np.float64).view(np.complex128).reshape(channels, samples)
    if not np.isfinite(out).all():
        raise InputError(f"{path}: MRD acquisition {row} contains NaN or Inf")
    return out


@contextlib.contextmanager
def open_acquisitions(path: Path, group: str | None = None) -> Iterator[tuple[Any, str, Any, Any]]:
    """Open an MRD file read-only: ``(hf, group, header, table)``.

    The open HDF5 file, its MRD group (:func:`find_mrd_group`), the parsed ISMRMRD header
    (:func:`read_mrd_header`) and the checked acquisition table (:func:`acquisition_table`); the
    ``ismrmrd`` package is checked for before the file is opened.
    """
    ismrmrd_module(path)
    with open_input(path) as hf:
        grp = find_mrd_group(hf, path, group)
        header, _ = read_mrd_header(hf, path, grp)
        yield hf, grp, header, acquisition_table(hf, path, grp)


def acquisition_kinds(heads: np.ndarray) -> tuple[Callable[[str], np.ndarray], np.ndarray, np.ndarray]:
    """``(has, noise, skipped)`` of the acquisition headers ``heads``.

    ``has(name)``: per acquisition, whether it carries the ISMRMRD flag ``name``; ``noise``: the noise
    measurements (``ACQ_IS_NOISE_MEASUREMENT``); ``skipped``: the acquisitions with no image data for the
    readers (:data:`SKIPPED_FLAGS` that the installed ``ismrmrd`` defines).
    """
    constants = ismrmrd_module().constants
    flags = heads["flags"].astype(np.uint64)

    def has(name: str) -> np.ndarray:
        return (flags & np.uint64(flag_bit(name))) != 0

    noise = has("ACQ_IS_NOISE_MEASUREMENT")
    skipped = np.zeros_like(noise)
    for name in SKIPPED_FLAGS:
        if hasattr(constants, name):
            skipped |= has(name)
    return has, noise, skipped


def readout_layout(h: np.ndarray, path: Path, hint: str = "") -> tuple[int, int, int, int]:
    """``(channels, number_of_samples, discard_pre, discard_post)`` of the imaging acquisition headers ``h``.

    One :class:`InputError` each for more than one contrast, phase, repetition or set (:data:`SINGLE_VALUED`;
    ``hint`` ends that message), values that differ between acquisitions, or a channel count outside
    ``1..``:data:`MAX_CHANNELS`.
    """
    idx = h["idx"]
    many = [(len(unique_values(idx[f])), plural) for f, plural in SINGLE_VALUED if len(unique_values(idx[f])) > 1]
    if many:
        listed = " and ".join(f"{n} {plural}" for n, plural in many)
        raise InputError(f"{path}: MRD file holds {listed}; only one of each is read{hint}")
    channels = one_value(h["active_channels"], path, "channel counts (active_channels)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise InputError(f"{path}: MRD acquisitions have {channels} channels (1..{MAX_CHANNELS} are read)")
    ns = one_value(h["number_of_samples"], path, "readout lengths (number_of_samples)")
    pre = one_value(h["discard_pre"], path, "discard_pre values")
    post = one_value(h["discard_post"], path, "discard_post values")
    return channels, ns, pre, post


def fft1c(x: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Centred orthonormal (inverse) FFT along the last axis of a complex array ``(..., n)`` (fastMRI's ``fftc``
    convention in 1-D: ``fftshift(fft(ifftshift(x), norm="ortho"))``); same shape."""
    x = np.fft.ifftshift(x, axes=-1)
    x = np.fft.ifft(x, axis=-1, norm="ortho") if inverse else np.fft.fft(x, axis=-1, norm="ortho")
    return np.fft.fftshift(x, axes=-1)


def remove_readout_oversampling(lines: np.ndarray, size: int) -> np.ndarray:
    """Readouts ``(..., n)`` complex -> ``(..., size)``: centred orthonormal inverse FFT, centre crop to ``size``
    (offset ``(n - size) // 2``, fastMRI's ``center_crop``), forward FFT.  ``size == n`` returns ``lines``."""
    n = lines.shape[-1]
    if size == n:
        return lines
    start = (n - size) // 2
    return fft1c(fft1c(lines, inverse=True)[..., start : start + size])


def noise_whitening(covariance: np.ndarray, path: Path | str = "") -> np.ndarray:
    """``L^-1`` (complex128 ``(C, C)``, lower triangular) for ``covariance = L L^H`` (Cholesky).

    ``L^-1 x`` has identity noise covariance.  A covariance that is not positive definite (a dead
    or duplicated channel) is one :class:`InputError` naming ``path``.
    """
    try:
        chol = np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        raise InputError(f"{path}: MRD noise covariance is not positive definite (a dead or duplicated receive "
                         "channel?); convert without prewhitening") from None
    return np.linalg.solve(chol, np.eye(covariance.shape[0], dtype=np.complex128))


# --- conversion ---------------------------------------------------------------------------------------------


def load_mrd(path: str | os.PathLike[str], group: str | None = None, prewhiten: bool = True,
             load_target: bool = True) -> MRDScan:
    """Read a Cartesian 2-D multi-slice MRD file into the fastMRI layout (see the module docstring).

    Parameters
    ----------
    path : path-like
        The MRD (ISMRMRD HDF5) file, opened read-only.
    group : str, optional
        The MRD group; default ``dataset``, else the first top-level group that qualifies.
    prewhiten : bool
        Whiten the coils with the noise acquisitions' covariance (a file without noise
        acquisitions is read unwhitened either way).
    load_target : bool
        Compute ``volume.target`` from the noise-free reference k-space the file may carry
        (:data:`REFERENCE_GROUP`, written by :func:`mri_score.mrd_write.write_mrd`).

    Returns
    -------
    MRDScan
        ``volume`` complex64 ``(slices, coils, H, W)`` k-space, H = recon readout matrix, W =
        encoded phase-encode matrix, and what the conversion used.

    Raises
    ------
    InputError
        One line naming the file, for anything unusable or unsupported.
    """
    path = Path(path)
    with open_acquisitions(path, group) as (hf, grp, header, dset):
        heads = read_heads(dset, path)
        has, noise, skipped = acquisition_kinds(heads)
        cal_only = has("ACQ_IS_PARALLEL_CALIBRATION") & ~has("ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING") & ~noise & ~skipped
        acs_flag = (has("ACQ_IS_PARALLEL_CALIBRATION") | has("ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING")) & ~noise
        used = ~noise & ~skipped  # imaging lines and calibration lines
        if not used.any():
            raise InputError(f"{path}: MRD file holds no imaging acquisitions ({int(noise.sum())} noise, "
                             f"{int(skipped.sum())} navigator/correction acquisitions)")
        h = heads[used]
        idx = h["idx"]
        ref = one_value(h["encoding_space_ref"], path, "encoding spaces (encoding_space_ref)")
        geo = header_geometry(header, path, ref)
        if (h["trajectory_dimensions"] > 0).any():
            raise InputError(f"{path}: MRD acquisitions carry a trajectory: non-Cartesian MRD input is read by the "
                             "non-Cartesian path, not by this Cartesian reader")
        if has("ACQ_IS_REVERSE")[used].any():
            raise InputError(f"{path}: MRD acquisitions with reversed readouts (EPI); only Cartesian line-by-line "
                             "data is read")
        if (idx["kspace_encode_step_2"] > 0).any():
            raise InputError(f"{path}: 3-D MRD encoding (kspace_encode_step_2 up to "
                             f"{int(idx['kspace_encode_step_2'].max())}); only 2-D multi-slice Cartesian data is read")
        channels, ns, pre, post = readout_layout(h, path, " (select one before converting)")
        ex, rx, ey = geo.encoded[0], geo.recon[0], geo.encoded[1]
        if ns - pre - post != ex:
            raise InputError(f"{path}: MRD readouts have {ns} samples ({pre} + {post} discarded), the encoded "
                             f"readout matrix is {ex}")
        centres = h["center_sample"].astype(np.int64)
        off = centres[(centres != 0) & (np.abs(centres - pre - ex // 2) > 1)]
        if off.size:
            raise InputError(f"{path}: partial Fourier MRD readouts (echo at sample {int(off[0])} of {ns}, asymmetric); "
                             "refused: fill the missing part of k-space first")
        e1 = idx["kspace_encode_step_1"].astype(np.int64)
        outside = e1[(e1 < geo.e1_min) | (e1 > geo.e1_max)]
        if outside.size:
            raise InputError(f"{path}: MRD kspace_encode_step_1 {int(outside[0])} lies outside the header's "
                             f"phase-encode limits {geo.e1_min}..{geo.e1_max}")
        columns = e1 + ey // 2 - geo.e1_center
        slice_ids = unique_values(idx["slice"])
        slice_of = np.searchsorted(np.asarray(slice_ids), idx["slice"])
        shape = (len(slice_ids), channels, rx, ey)
        nbytes = float(np.prod(shape, dtype=np.float64)) * 8
        if nbytes > MAX_KSPACE_BYTES:
            raise InputError(f"{path}: MRD k-space of shape {shape} is too large to load ({MAX_KSPACE_BYTES} bytes max)")
        limits.check_fits(nbytes * READ_COPIES + path.stat().st_size, f"{path}: MRD k-space of shape {shape}")

        covariance, n_noise = noise_covariance(dset, heads, noise, channels, h["sample_time_us"], path)
        whitening = noise_whitening(covariance, path) if (prewhiten and covariance is not None) else None

        kspace = np.zeros(shape, dtype=np.complex64)
        count = np.zeros(shape[0:1] + shape[3:], dtype=np.int64)  # (slices, W) imaging lines per column
        cal: dict[tuple[int, int], list[np.ndarray]] = {}
        position = {int(r): i for i, r in enumerate(np.flatnonzero(used))}
        cal_rows = cal_only[used]
        for row, raw in acquisition_rows(dset, np.flatnonzero(used), path):
            i = position[row]
            line = acquisition_samples(raw, row, channels, ns, path)[:, pre : pre + ex]
            if whitening is not None:
                line = whitening @ line
            line = remove_readout_oversampling(line, rx)
            s, col = int(slice_of[i]), int(columns[i])
            if cal_rows[i]:
                cal.setdefault((s, col), []).append(line)
            else:
                kspace[s, :, :, col] += line.astype(np.complex64)
                count[s, col] += 1
        acquired = count > 0
        kspace /= np.maximum(count, 1)[:, None, None, :]
        for (s, col), lines in cal.items():
            if not acquired[s, col]:
                kspace[s, :, :, col] = np.mean(lines, axis=0).astype(np.complex64)
        for s, col in cal:
            acquired[s, col] = True
        differ = [s for s in range(1, shape[0]) if not np.array_equal(acquired[s], acquired[0])]
        if differ:
            raise InputError(f"{path}: MRD slices {slice_ids[0]} and {slice_ids[differ[0]]} acquired different "
                             f"phase-encode lines ({int(acquired[0].sum())} and {int(acquired[differ[0]].sum())}); "
                             "one mask per file is required")
        validate_kspace(kspace, path)
        acs = np.zeros(ey, dtype=bool)
        acs[columns[acs_flag[used]]] = True
        target = _reference_target(hf, path, shape, whitening, geo) if load_target else None

    header_xml = output_header(header, geo, ref)
    meta = parse_ismrmrd_header(header_xml, path)
    mask_cols = acquired[0]
    pl, pr = meta["padding_left"], meta["padding_right"]
    undersampled = not mask_cols[pl:pr].all()
    attrs: dict[str, Any] = {"acquisition": _acquisition_name(header), "patient_id": _patient_id(header, path)}
    mask = None
    if undersampled:
        mask = mask_cols.astype(np.float32)
        attrs["acceleration"] = float(min(max((pr - pl) / max(int(mask_cols.sum()), 1), 1.0), 1e3))
        attrs["num_low_frequency"] = int(acs.sum())
    # the noise-free reference is the like-for-like truth of the anatomy output (fastMRI's targets are noisy RSS)
    volume = FastMRIVolume(path=path, kspace=kspace, mask=mask, target=None, truth=target, attrs=attrs,
                           single_coil=False, **meta)
    return MRDScan(volume=volume, header_xml=header_xml, acquired=mask_cols.copy(), acs=acs,
                   noise_covariance=covariance, whitening=whitening, noise_samples=n_noise, group=grp,
                   readout_oversampling=ex / rx)


def read_mrd(path: str | os.PathLike[str], group: str | None = None, prewhiten: bool = True,
             load_target: bool = True) -> FastMRIVolume:
    """The fastMRI-layout volume of an MRD file: :func:`load_mrd` ``(...).volume``.

    Use where :func:`mri_score.fastmri_io.read_fastmri` is used: ``kspace`` complex64
    ``(slices, coils, H, W)``, prewhitened, readout oversampling removed.
    """
    return load_mrd(path, group, prewhiten, load_target).volume


def noise_covariance(dset: Any, heads: np.ndarray, noise: np.ndarray, channels: int, dwell: np.ndarray,
                     path: Path) -> tuple[np.ndarray | None, int]:
    """The noise covariance ``X X^H / M`` at the imaging dwell time and the number ``M`` of samples per coil."""
    rows = np.flatnonzero(noise)
    if rows.size == 0:
        return None, 0
    nh = heads[rows]
    bad = nh["active_channels"] != channels
    if bad.any():
        raise InputError(f"{path}: MRD noise acquisition {int(rows[bad][0])} has {int(nh['active_channels'][bad][0])} "
                         f"channels, the imaging data {channels}")
    valid = dwell[(dwell > 0) & np.isfinite(dwell)]
    imaging_dwell = float(np.median(valid)) if valid.size else 0.0
    acc = np.zeros((channels, channels), dtype=np.complex128)
    total = 0
    for k, (row, raw) in enumerate(acquisition_rows(dset, rows, path)):
        head = nh[k]
        ns, pre, post = int(head["number_of_samples"]), int(head["discard_pre"]), int(head["discard_post"])
        x = acquisition_samples(raw, row, channels, ns, path)[:, pre : max(pre, ns - post)]
        noise_dwell = float(head["sample_time_us"])
        if imaging_dwell > 0 and noise_dwell > 0 and np.isfinite(noise_dwell):
            x = x * np.sqrt(noise_dwell / imaging_dwell)  # noise variance scales with the bandwidth, 1 / dwell
        acc += x @ x.conj().T
        total += x.shape[1]
    if total < channels:
        raise InputError(f"{path}: MRD noise acquisitions hold {total} samples per channel, fewer than the "
                         f"{channels} channels; the noise covariance cannot be estimated")
    return acc / total, total


def _reference_target(hf: Any, path: Path, shape: tuple[int, int, int, int], whitening: np.ndarray | None,
                      geo: _Geometry) -> np.ndarray | None:
    """The recon-size RSS image float32 ``(slices, h, w)`` of the (whitened) noise-free reference k-space, if any."""
    import torch

    from mri_score.fastmri_io import recon_crop_size
    from operators.coils import rss
    from operators.fft import ifft2c

    key = f"{REFERENCE_GROUP}/kspace"
    dset = dataset(hf, key, path, "c", (4,), MAX_KSPACE_BYTES, f"reference k-space '{key}'", "(slices, coils, H, W)")
    if dset is None:
        return None
    if tuple(dset.shape) != tuple(shape):
        raise InputError(f"{path}: reference k-space '{key}' has shape {dset.shape}, the MRD data gives {shape}")
    ref = read_array(dset, path, key).astype(np.complex128)
    if not np.isfinite(ref).all():
        raise InputError(f"{path}: reference k-space '{key}' contains NaN or Inf")
    if whitening is not None:
        ref = np.einsum("ij,sjhw->sihw", whitening, ref)
    image = rss(ifft2c(torch.from_numpy(ref.astype(np.complex64))), dim=1).numpy()
    return np.ascontiguousarray(center_crop(image, recon_crop_size(image.shape[-2:], geo.recon))).astype(np.float32)


def _acquisition_name(header: Any) -> str:
    info = getattr(header, "measurementInformation", None)
    name = getattr(info, "protocolName", None) if info is not None else None
    return str(name)[:200] if name else "MRD"


def _patient_id(header: Any, path: Path) -> str:
    info = getattr(header, "subjectInformation", None)
    pid = getattr(info, "patientID", None) if info is not None else None
    return str(pid)[:200] if pid else path.stem
