"""Export of reconstructed magnitude volumes to NIfTI and to a DICOM MR image series.

Geometry
--------
A volume is real ``(S, H, W)``: ``S`` slices of ``H`` rows by ``W`` columns, as the
project's reconstructions are.  Its rows are ``dy`` mm apart, its columns ``dx`` mm
(``pixel_mm = (dy, dx)``, DICOM's ``PixelSpacing`` order) and its slices
``spacing_mm`` (default: the slice thickness).  fastMRI's header gives these
(:func:`voxel_mm`): rows are the readout ``x``, columns the phase encoding ``y``.

The patient orientation of fastMRI data is not recorded, so both writers use one
fixed convention, the usual axial display: columns run towards the patient's left,
rows towards posterior, slices towards superior; the volume's centre is at the
origin.  In DICOM (LPS) that is ``ImageOrientationPatient = [1, 0, 0, 0, 1, 0]``;
in NIfTI (RAS) voxel ``(i, j, k) = (column, row, slice)`` and the affine is
``diag(-dx, -dy, spacing)`` plus the offset of the first voxel, so that
``header.get_zooms() == (dx, dy, spacing)`` and both files place every voxel at the
same point in space.

Both writers are atomic: the NIfTI file goes through :func:`mri_score.atomic.atomic_output`,
the DICOM series is written into a temporary sibling directory that is renamed onto
the target; on any failure nothing is left behind.  pydicom is imported only when
DICOM is written (the ``dicom`` extra).
"""

from __future__ import annotations

import datetime
import gzip
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from mri_score import __version__
from mri_score.atomic import atomic_output, check_not_input, oserror_in, write_error
from mri_score.errors import InputError
from mri_score.fastmri_io import FastMRIVolume

#: Pixel sizes and slice spacings must lie in (0, MAX_MM] mm.
MAX_MM = 1000.0
#: Volumes of more slices, rows or columns are refused (DICOM ``Rows``/``Columns`` are 16-bit).
MAX_SIDE = 65535
#: Stored DICOM values: uint16, with the volume's range mapped to [0, STORED_MAX].
STORED_MAX = 65534
#: DICOM ``LO`` (SeriesDescription) holds at most 64 characters; the full text goes to ``ImageComments``.
LO_CHARS = 64


def voxel_mm(source: FastMRIVolume | Mapping[str, Any], path: str | os.PathLike[str] = "") -> tuple[float, float, float]:
    """``(dy, dx, slice_mm)`` in mm from a fastMRI header: the pixel of the k-space grid and the slice thickness.

    The in-plane size is :attr:`mri_score.fastmri_io.FastMRIVolume.pixel_mm` (encoded field of view /
    encoded matrix, ``(x, y)`` = (rows, columns) = ``(dy, dx)``); images on the k-space grid and their
    centre crops (fastMRI's recon-size crop) have that pixel.  The slice thickness is the encoded
    field of view's ``z`` over the encoded matrix's ``z`` (1 for 2-D multi-slice data).

    Parameters
    ----------
    source : FastMRIVolume or dict
        A volume read by :func:`mri_score.fastmri_io.read_fastmri`, or the dict of
        :func:`mri_score.fastmri_io.parse_ismrmrd_header` (``encoded_size``, ``encoded_fov_mm``).
    path : str or path-like, optional
        The file the header came from, for messages.

    Returns
    -------
    tuple of float
        ``(dy, dx, slice_mm)``.

    Raises
    ------
    InputError
        When the header has no (usable) encoded field of view or matrix.
    """
    if isinstance(source, FastMRIVolume):
        fov, size, path = source.encoded_fov_mm, source.encoded_size, path or source.path
        pixel = source.pixel_mm
    else:
        fov, size = source.get("encoded_fov_mm"), source.get("encoded_size")
        pixel = None
        if fov is not None and size is not None and len(fov) == 3 and len(size) == 3:
            pixel = FastMRIVolume.pixel_mm.fget(SimpleNamespace(encoded_fov_mm=fov, encoded_size=size))
    where = f"{path}: " if os.fspath(path) else ""
    if pixel is None or fov is None or size is None or fov[2] <= 0 or size[2] < 1:
        raise InputError(f"{where}ismrmrd_header has no usable encoded fieldOfView_mm/matrixSize (got field of view "
                         f"{fov}, matrix {size}); give the voxel size explicitly")
    out = (float(pixel[0]), float(pixel[1]), float(fov[2]) / float(size[2]))
    _check_mm(out, f"{where}voxel size from the header")
    return out


def _check_mm(values: Iterable[float], what: str) -> tuple[float, ...]:
    """``values`` as floats, each finite in (0, :data:`MAX_MM`]; else one :class:`InputError` naming ``what``."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers in mm, got {values!r}") from None
    if not all(0.0 < v <= MAX_MM for v in out):  # NaN fails too
        raise InputError(f"{what} must lie in (0, {MAX_MM:g}] mm, got {out}")
    return out


def _check_volume(volume: np.ndarray, what: str) -> np.ndarray:
    """``volume`` as float32 ``(S, H, W)``: real, finite, non-empty, each side <= :data:`MAX_SIDE`."""
    vol = np.asarray(volume)
    if vol.dtype.kind not in "biuf":
        hint = " (take the magnitude first)" if vol.dtype.kind == "c" else ""
        raise InputError(f"{what}: the volume must be real{hint}, got dtype {vol.dtype}")
    if vol.ndim != 3 or min(vol.shape) < 1 or max(vol.shape) > MAX_SIDE:
        raise InputError(f"{what}: the volume must be (slices, H, W) with sides in [1, {MAX_SIDE}], got {vol.shape}")
    vol = vol.astype(np.float32, copy=False)
    if not np.isfinite(vol).all():
        raise InputError(f"{what}: the volume contains NaN or Inf")
    return vol


def _check_layout(volume: np.ndarray, pixel_mm: tuple[float, float], slice_mm: float, spacing_mm: float | None,
                  where: str) -> tuple[np.ndarray, tuple[float, float], float, float]:
    """``(volume, (dy, dx), slice_mm, spacing_mm)`` of a writer's arguments, checked (:func:`_check_volume`,
    :func:`_check_mm`; errors name ``where``, the output); ``spacing_mm`` None is ``slice_mm``."""
    vol = _check_volume(volume, where)
    pixel = _check_mm(pixel_mm, f"{where}: pixel_mm (dy, dx)")
    if len(pixel) != 2:
        raise InputError(f"{where}: pixel_mm must be (dy, dx), got {pixel_mm!r}")
    (slice_mm,) = _check_mm([slice_mm], f"{where}: slice_mm")
    (spacing,) = _check_mm([slice_mm if spacing_mm is None else spacing_mm], f"{where}: spacing_mm")
    return vol, (pixel[0], pixel[1]), slice_mm, spacing


def _geometry(shape: tuple[int, int, int], pixel_mm: tuple[float, float], spacing_mm: float) -> np.ndarray:
    """Patient position (LPS, mm) of the centre of voxel ``[0, 0, 0]``: the volume centred on the origin."""
    s, h, w = shape
    dy, dx = pixel_mm
    return -0.5 * np.array([(w - 1) * dx, (h - 1) * dy, (s - 1) * spacing_mm])


def nifti_affine(shape: tuple[int, int, int], pixel_mm: tuple[float, float], spacing_mm: float) -> np.ndarray:
    """The RAS affine ``(4, 4)`` float64 of a volume ``(S, H, W)`` stored as NIfTI voxels ``(W, H, S)``.

    Voxel ``(i, j, k)`` = (column, row, slice) lies at ``affine @ (i, j, k, 1)``; columns run to the
    patient's left (-R), rows to posterior (-A), slices to superior (+S) (see the module notes).
    """
    dy, dx = pixel_mm
    p0 = _geometry(shape, pixel_mm, spacing_mm)
    affine = np.diag([-dx, -dy, spacing_mm, 1.0])
    affine[:3, 3] = [-p0[0], -p0[1], p0[2]]  # LPS -> RAS
    return affine


def write_nifti(path: str | os.PathLike[str], volume: np.ndarray, pixel_mm: tuple[float, float], slice_mm: float,
                description: str = "", spacing_mm: float | None = None) -> Path:
    """Write a volume as NIfTI-1 (``.nii.gz`` or ``.nii``), atomically.

    Parameters
    ----------
    path : str or path-like
        Output file, ending in ``.nii.gz`` (gzip) or ``.nii``; its directory is created.
    volume : np.ndarray
        Real ``(S, H, W)`` (stored as float32 voxels ``(W, H, S)``).
    pixel_mm : tuple of float
        ``(dy, dx)``: row and column spacing in mm.
    slice_mm : float
        Slice thickness in mm; the voxel size along slices unless ``spacing_mm`` is given.
    description : str, optional
        Stored in the header's ``descrip`` (ASCII, cut to 79 characters).
    spacing_mm : float, optional
        Distance between slice centres in mm (slices with a gap); default ``slice_mm``.

    Returns
    -------
    Path
        ``path``.  ``nibabel.load(path).header.get_zooms()`` is ``(dx, dy, spacing)`` and its affine
        is :func:`nifti_affine` (qform and sform, code 1 = scanner, units mm).

    Raises
    ------
    InputError
        A bad suffix, volume or spacing, or a failed write (nothing is left behind).
    """
    try:
        import nibabel as nib
    except ImportError:
        raise InputError("writing NIfTI needs nibabel: install the 'data' extra (pip install 'mri-score[data]' or "
                         "pip install nibabel)") from None
    path = Path(path)
    if not (path.name.endswith(".nii.gz") or path.name.endswith(".nii")):
        raise InputError(f"{path}: a NIfTI file name ends in .nii.gz or .nii")
    vol, pixel, _, spacing = _check_layout(volume, pixel_mm, slice_mm, spacing_mm, str(path))
    affine = nifti_affine(vol.shape, pixel, spacing)
    img = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), affine)
    hdr = img.header
    hdr.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    hdr["descrip"] = description.encode("ascii", "replace")[:79]
    raw = img.to_bytes()
    data = gzip.compress(raw, mtime=0) if path.name.endswith(".gz") else raw
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


def series_description(method: str, settings: Mapping[str, Any] | None = None) -> str:
    """``"method key=value key=value"``: the text :func:`write_dicom_series` stores as the series description.

    Parameters
    ----------
    method : str
        The reconstruction method (``"dds"``, ``"zero-filled"``, ...).
    settings : mapping, optional
        Its settings (acceleration, steps, seed, ...), in the mapping's order; None values are left out.
    """
    parts = [str(method)] + [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in (settings or {}).items() if v is not None]
    return " ".join(parts)


def _dicom_text(text: str, limit: int | None = None) -> str:
    """``text`` fit for a DICOM ``LO``/``LT`` value: control characters and backslashes (value separators) removed."""
    clean = re.sub(r"[\x00-\x1f\x7f\\]", " ", str(text)).strip()
    return clean if limit is None else clean[:limit].rstrip()


def _pydicom() -> Any:
    """The ``pydicom`` module, or a one-line :class:`InputError` saying how to install it."""
    try:
        import pydicom
    except ImportError:
        raise InputError("writing DICOM needs pydicom: install the 'dicom' extra (pip install 'mri-score[dicom]' "
                         "or pip install pydicom)") from None
    return pydicom


@contextmanager
def _atomic_directory(directory: Path, inputs: Iterable[str | os.PathLike[str]] = ()) -> Iterator[Path]:
    """Yield a temporary sibling directory of ``directory``; on success rename it onto ``directory``.

    ``directory`` must not exist, or be an empty directory (not a symlink).  On any exception the
    temporary directory and everything in it are removed; file-system errors the user can fix become
    one :class:`InputError` naming ``directory`` (:func:`mri_score.atomic.write_error`).
    """
    check_not_input(directory, inputs)
    if os.path.islink(directory):
        raise InputError(f"{directory}: is a symbolic link; give a new directory for the series (nothing was written)")
    if os.path.lexists(directory):
        if not directory.is_dir():
            raise InputError(f"{directory}: exists and is not a directory; nothing was written")
        if any(directory.iterdir()):
            raise InputError(f"{directory}: exists and is not empty; give a new directory for the series "
                             "(nothing was written)")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    except OSError as err:
        raise write_error(directory, err) from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 otherwise
        try:
            os.replace(tmp, directory)  # onto an absent name or an empty directory
        except OSError as err:  # e.g. another process put files into the directory meanwhile
            raise InputError(f"{directory}: cannot move the series into place ({err.strerror or err}); nothing was "
                             "written") from None
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = oserror_in(err) if isinstance(err, Exception) and not isinstance(err, InputError) else None
        if cause is not None:
            raise write_error(directory, cause) from None
        raise


def _ds(value: float) -> str:
    """``value`` as a DICOM decimal string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def rescale(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Quantise a real volume to uint16 with a DICOM rescale: ``value ~ stored * slope + intercept``.

    Parameters
    ----------
    volume : np.ndarray
        Real, finite.

    Returns
    -------
    stored : np.ndarray
        uint16, same shape, in ``[0, STORED_MAX]``.
    slope, intercept : float
        ``RescaleSlope`` and ``RescaleIntercept`` exactly as their decimal strings read back; the
        intercept is 0 for non-negative volumes (zero stays exactly zero).  Each value reads back
        within ``slope / 2`` (plus the decimal-string rounding of the intercept, ~1e-10 relative).
    """
    vol = np.asarray(volume, dtype=np.float64)
    lo, hi = float(vol.min()), float(vol.max())
    intercept = float(_ds(0.0 if lo >= 0 else lo))
    span = hi - intercept
    slope = float(_ds(span / STORED_MAX)) if span > 0 else 1.0
    stored = np.clip(np.rint((vol - intercept) / slope), 0, STORED_MAX + 1).astype(np.uint16)
    return stored, slope, intercept


def _write_one(pydicom: Any, path: Path, ds: Any) -> None:
    """Save ``ds`` as a DICOM Part 10 file (pydicom 3 and 2.4 spell the option differently)."""
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(path, ds, write_like_original=False)


def write_dicom_series(directory: str | os.PathLike[str], volume: np.ndarray, pixel_mm: tuple[float, float],
                       slice_mm: float, description: str, *, spacing_mm: float | None = None,
                       patient_id: str = "ANONYMOUS", patient_name: str = "Anonymous", series_number: int = 1,
                       study_uid: str | None = None,
                       inputs: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """Write a volume as a DICOM MR Image Storage series: one file per slice, atomically.

    Parameters
    ----------
    directory : str or path-like
        The series directory: must not exist or be empty; written as a temporary sibling and
        renamed, so it appears complete or not at all.
    volume : np.ndarray
        Real ``(S, H, W)``; stored as uint16 with one ``RescaleSlope``/``RescaleIntercept`` for the
        series (:func:`rescale`), so ``stored * slope + intercept`` gives the values back to
        within half a quantisation step.
    pixel_mm : tuple of float
        ``(dy, dx)`` mm: ``PixelSpacing`` (row spacing, column spacing).
    slice_mm : float
        ``SliceThickness`` in mm.
    description : str
        What made the images, e.g. :func:`series_description` of the method and its settings:
        ``SeriesDescription`` (cut to 64 characters) and, in full, ``ImageComments``.
    spacing_mm : float, optional
        Distance between slice centres (``SpacingBetweenSlices``, and the step of
        ``ImagePositionPatient``); default ``slice_mm``.
    patient_id, patient_name : str, optional
        fastMRI data are anonymised; these default to placeholders.
    series_number : int, optional
        ``SeriesNumber``.
    study_uid : str, optional
        ``StudyInstanceUID`` to group several series in one study; a new UID by default.
        ``SeriesInstanceUID``, ``FrameOfReferenceUID`` and every ``SOPInstanceUID`` are always new
        (``pydicom.uid.generate_uid``).
    inputs : iterable of path-like, optional
        Input files the series must not replace (:func:`mri_score.atomic.check_not_input`).

    Returns
    -------
    list of Path
        The files, ``directory/IM0001.dcm`` ... in slice order.

    Raises
    ------
    InputError
        pydicom missing, a bad volume or spacing, an existing non-empty ``directory``, or a failed
        write; nothing is left behind.
    """
    directory = Path(directory)
    vol, pixel, slice_mm, spacing = _check_layout(volume, pixel_mm, slice_mm, spacing_mm, str(directory))
    if not 0 <= int(series_number) <= 2**31 - 1:
        raise InputError(f"{directory}: series_number must be a non-negative integer, got {series_number}")
    pydicom = _pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    s, h, w = vol.shape
    stored, slope, intercept = rescale(vol)
    p0 = _geometry(vol.shape, pixel, spacing)
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    study = study_uid or generate_uid()
    series, frame = generate_uid(), generate_uid()
    text = _dicom_text(description)
    lo, hi = float(vol.min()), float(vol.max())
    digits = max(4, len(str(s)))
    names = [f"IM{k + 1:0{digits}d}.dcm" for k in range(s)]
    with _atomic_directory(directory, inputs) as tmp:
        for k in range(s):
            sop = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
            ds.Modality = "MR"
            ds.Manufacturer = "mri-score"
            ds.SoftwareVersions = f"mri-score {__version__}"
            ds.PatientName = _dicom_text(patient_name, LO_CHARS)
            ds.PatientID = _dicom_text(patient_id, LO_CHARS)
            ds.PatientBirthDate = ds.PatientSex = ds.ReferringPhysicianName = ""
            ds.StudyID = ds.AccessionNumber = ds.PositionReferenceIndicator = ""
            ds.SeriesNumber, ds.InstanceNumber = int(series_number), k + 1
            ds.SeriesDescription = _dicom_text(text, LO_CHARS)
            ds.ImageComments = text
            ds.ScanningSequence, ds.SequenceVariant = "RM", "NONE"  # research mode: a reconstruction, not a sequence
            ds.ScanOptions, ds.MRAcquisitionType = "", "2D"
            ds.EchoTime = ds.EchoTrainLength = ""
            ds.PixelSpacing = [_ds(pixel[0]), _ds(pixel[1])]
            ds.SliceThickness = _ds(slice_mm)
            ds.SpacingBetweenSlices = _ds(spacing)
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.ImagePositionPatient = [_ds(p0[0]), _ds(p0[1]), _ds(p0[2] + k * spacing)]
            ds.SliceLocation = _ds(p0[2] + k * spacing)
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = h, w
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
            if hi > lo:
                ds.WindowCenter, ds.WindowWidth = _ds((hi + lo) / 2), _ds(hi - lo)
            ds.BurnedInAnnotation = "NO"
            ds.PixelData = np.ascontiguousarray(stored[k], dtype="<u2").tobytes()
            _write_one(pydicom, tmp / names[k], ds)
    return [directory / n for n in names]
