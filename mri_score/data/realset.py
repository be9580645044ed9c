"""The project's real-image evaluation set: MR images bundled with nibabel's test data.

**Evaluation only.**  These images are never used to train a prior.  Every real MR volume in
nibabel's wheel (``nibabel/tests/data`` and ``nibabel/nicom/tests/data``) was inspected
(header and pixels) once; :data:`REAL_FILES` lists the usable ones and :data:`EXCLUDED_FILES`
every other image file with the reason (``docs/realset.md``, written by
``docs/make_realset_table.py``, shows both tables).

Split
-----
Files that share an acquisition (the same pixels in another container, a crop, a resampled
copy, slices of one series) share an ``acquisition_group``; the split is by group and was made
once, by the rule in :func:`split_rule`, and frozen in :data:`SPLIT_TABLE` (its digest is
tested):

* **development** — the groups that committed scripts had already read before the split
  (DDS tuning, the adaptation / grid checks and the protocol read ``nibabel_example4d`` and
  ``nibabel_phantom_epi``), because they have already informed decisions.  Every check, tuning
  or comparison script uses :func:`development_set` (or :func:`load_real_volume`, which serves
  development volumes only).
* **final** — the groups no script had read.  :func:`final_test_set` refuses unless it is
  called with ``registration_ok=True`` and ``token=FINAL_TEST_TOKEN``; only the registered
  final-test protocol (:data:`FINAL_TEST_CALLERS`) may pass them, after its settings are
  registered and frozen.  Check, tuning and development scripts must never call it (a test
  enforces this for ``benchmarks/``, ``mri_score/`` and ``docs/``).

Nibabel's files carry no subject identifiers: the split is disjoint by acquisition, and
subjects cannot be proven distinct across groups.

Images
------
Magnitude, float32, in the file's units (header scaling applied), negative values (from
interpolation in resampled files) clipped to 0.  Orientation is the file's as stored: a
slice ``(H, W)`` is the voxel array's first two axes (rows = axis 0, columns = axis 1), the
slice index is axis 2; no reorientation or flip (so a NIfTI axial slice appears transposed
relative to the radiological display).  ``pixel_mm`` is the header's voxel size along axes 0
and 1 and ``fov_mm`` is ``(H, W) · pixel_mm``.  Of a 4-D file only the first volume (time
point / dynamic) is used.  A slice is kept when at least ``min_object_fraction`` of its pixels
exceed 10 % of the volume's maximum.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mri_score.errors import InputError

#: The two volumes of the original real set (legacy callers, ``benchmarks/protocol.py``'s ``data.real``).
REAL_VOLUMES = ("nibabel_example4d", "nibabel_phantom_epi")
#: Split names.
SPLITS = ("development", "final")
#: What the registered final-test protocol passes to :func:`final_test_set`; nothing else may.
FINAL_TEST_TOKEN = "final-test-set: read by the registered protocol only"
#: The only files (repository paths) that may call :func:`final_test_set` or name the token; a test enforces it.
FINAL_TEST_CALLERS = ("benchmarks/protocol.py",)


@dataclass(frozen=True)
class RealFile:
    """One usable real MR volume of nibabel's test data.

    Attributes
    ----------
    name : str
        Volume name (unique).
    files : tuple of str
        Paths relative to the nibabel package; the first is the one nibabel opens, the others
        are its companions (``.REC``, ``.HEAD``).
    anatomy : str
        ``"brain"`` or ``"phantom"``.
    kind : str
        ``"anatomical"``, ``"epi"``, ``"dwi"`` or ``"phantom"`` (the balance of the split).
    description : str
        Contrast, sequence and provenance, from the header.
    matrix : tuple of int
        ``(H, W, slices)`` of the first volume, as stored (checked against the header by the tests).
    pixel_mm : tuple of float
        In-plane voxel size ``(rows, cols)`` in mm from the header (checked by the tests).
    volume_rule : str
        Which volume of a 4-D file is used.
    min_object_fraction : float
        Slice rule: keep slices with at least this fraction of pixels above 10 % of the volume maximum.
    acquisition_group : str
        Files of one acquisition share it; the split is by group.
    """

    name: str
    files: tuple[str, ...]
    anatomy: str
    kind: str
    description: str
    matrix: tuple[int, int, int]
    pixel_mm: tuple[float, float]
    volume_rule: str
    min_object_fraction: float
    acquisition_group: str


@dataclass(frozen=True)
class ExcludedFile:
    """Image files of nibabel's test data that are not in the real set, and why.

    Attributes
    ----------
    files : tuple of str
        Paths relative to the nibabel package.
    acquisition_group : str
        The acquisition they belong to (shared with a usable volume when they are a copy of it).
    reason : str
        Why they are excluded (what the header and pixels show).
    """

    files: tuple[str, ...]
    acquisition_group: str
    reason: str


_T = "tests/data/"
_N = "nicom/tests/data/"

#: Every usable real MR image volume in nibabel's wheel, by name.
REAL_FILES: dict[str, RealFile] = {
    f.name: f
    for f in (
        RealFile(
            "nibabel_example4d", (_T + "example4d.nii.gz",), "brain", "epi",
            "axial gradient-echo EPI time series (FSL 3.3 NIfTI-1, TR 2 s), whole brain in the field of view",
            (128, 96, 24), (2.0, 2.0), "first of 2 time points", 0.02, "example4d",
        ),
        RealFile(
            "nibabel_example4d_afni", (_T + "example4d+orig.BRIK.gz", _T + "example4d+orig.HEAD"), "brain", "epi",
            "axial EPI time series (AFNI +orig, TR 3 s, 25 interleaved slices), field of view cropped to "
            "99 × 123 mm so the head extends past the image edges",
            (33, 41, 25), (3.0, 3.0), "first of 3 time points", 0.02, "example4d",
        ),
        RealFile(
            "nipy_anatomical", (_T + "anatomical.nii",), "brain", "anatomical",
            "T1-weighted anatomical, SPM-normalised to MNI space and cropped to 66 × 82 mm (the brain fills "
            "the image); interpolation undershoot below 0 clipped",
            (33, 41, 25), (2.0, 2.0), "3-D file", 0.02, "nipy_anatomical",
        ),
        RealFile(
            "afni_scaled_tlrc", (_T + "scaled+tlrc.BRIK", _T + "scaled+tlrc.HEAD"), "brain", "epi",
            "EPI resampled to AFNI Talairach space (+tlrc, 3 mm, float-scaled), whole head with background",
            (47, 54, 43), (3.0, 3.0), "first (only) sub-brick", 0.25, "afni_scaled_tlrc",
        ),
        RealFile(
            "nibabel_phantom_epi", (_T + "phantom_EPI_asc_CLEAR_2_1.PAR", _T + "phantom_EPI_asc_CLEAR_2_1.REC"),
            "phantom", "phantom",
            "spherical phantom, Philips EPI (PAR/REC v4.2, CLEAR), ascending slices",
            (64, 64, 9), (3.75, 3.75), "first of 3 dynamics", 0.02, "philips_phantom_epi",
        ),
    )
}

_HEADER_ONLY_PAR = (
    "ADC_Map", "ASL_3D_Multiecho", "DTI", "DTIv40", "NA", "Phantom_EPI_3mm_cor_20APtrans_15RLrot_SENSE_15_1",
    "Phantom_EPI_3mm_cor_SENSE_8_1", "Phantom_EPI_3mm_sag_15AP_SENSE_13_1", "Phantom_EPI_3mm_sag_15FH_SENSE_12_1",
    "Phantom_EPI_3mm_sag_15RL_SENSE_11_1", "Phantom_EPI_3mm_sag_SENSE_7_1", "Phantom_EPI_3mm_tra_-30AP_10RL_20FH_SENSE_14_1",
    "Phantom_EPI_3mm_tra_15FH_SENSE_9_1", "Phantom_EPI_3mm_tra_15RL_SENSE_10_1", "Phantom_EPI_3mm_tra_SENSE_6_1",
    "R11_T2W_TSE", "T1", "T1_3echo_mag_real_imag_phase", "T1_dual_echo", "T2-interleaved", "T2", "T2_-interleaved", "T2_",
    "fieldmap", "phantom_fake_dualTR", "phantom_fake_v4", "phantom_fake_v4_1", "umass_anonymized", "variant_v4_2_header",
)

#: Every other image file of nibabel's test data, with the reason it is not in the real set.
EXCLUDED_FILES: tuple[ExcludedFile, ...] = (
    ExcludedFile((_T + "example_nifti2.nii.gz",), "example4d",
                 "a 32 × 20 × 12 crop of example4d.nii.gz (identical voxels, tested): a duplicate, and too small"),
    ExcludedFile((_T + "phantom_varscale.PAR", _T + "phantom_varscale.REC"), "philips_phantom_epi",
                 "the same REC bytes as phantom_EPI_asc_CLEAR_2_1 with edited scale factors: a duplicate"),
    ExcludedFile((_T + "phantom_truncated.PAR", _T + "phantom_truncated.REC"), "philips_phantom_epi",
                 "the same REC bytes as phantom_EPI_asc_CLEAR_2_1; the edited PAR is inconsistent (nibabel refuses it)"),
    ExcludedFile((_T + "reoriented_anat_moved.nii", _T + "resampled_anat_moved.nii"), "nipy_anatomical",
                 "anatomical.nii moved and resampled to 4 mm (21 × 26 and 17 × 21 in-plane): derived copies, too small"),
    ExcludedFile((_T + "functional.nii",), "nipy_anatomical",
                 "SPM-normalised EPI of the nipy example subject, 17 × 21 × 3 at 4 × 4 × 8 mm: too small"),
    ExcludedFile((_T + "0.dcm", _T + "1.dcm", _N + "0.dcm", _N + "1.dcm"), "siemens_cbu_dti",
                 "Siemens DTI mosaic headers whose pixel data were replaced by a synthetic ramp (value = index mod 4096)"),
    ExcludedFile((_N + "siemens_dwi_0.dcm.gz", _N + "siemens_dwi_1000.dcm.gz"), "siemens_cbu_dti",
                 "DWI mosaics (b 0 and 1000) of the same series with all-zero pixel data"),
    ExcludedFile((_N + "philips_mprage.dcm.gz",), "philips_mprage", "Philips multi-frame MPRAGE with all-zero pixel data"),
    ExcludedFile((_N + "decimal_rescale.dcm",), "siemens_qt1", "pixel data all 0 (constant −4096 after rescale)"),
    ExcludedFile((_N + "csa_slice_norm.dcm",), "siemens_rest_mosaic", "header only: no pixel data element"),
    ExcludedFile((_N + "slicethickness_empty_string.dcm",), "siemens_tof_mip",
                 "a derived MIP projection of a 3-D TOF angiogram (not an acquired slice, so no k-space of its own); the "
                 "object is a 76-row band of a zero-filled 384² frame; JPEG-2000 encoded"),
    ExcludedFile((_T + "small.mnc",), "minc_small_head",
                 "a real head but 18 × 28 × 29 at 9 × 8 × 7 mm: too coarse and too small (in-plane < 32 pixels)"),
    ExcludedFile(tuple(_T + f for f in ("tiny.mnc", "minc1-no-att.mnc", "minc2-no-att.mnc", "minc1_1_scale.mnc",
                                        "minc2_1_scale.mnc", "minc1_4d.mnc", "minc2_4d.mnc")), "minc_tiny_patch",
                 "one 10 × 20 × 20 blurred patch (or its rescaled copies): too small to reconstruct"),
    ExcludedFile((_T + "minc2-4d-d.mnc",), "minc_synthetic", "synthetic: 16³ × 5 with 6 distinct values (mostly zero)"),
    ExcludedFile((_T + "minc2_baddim.mnc",), "minc_synthetic", "synthetic: 10³ with 10 distinct values, 0.035 mm voxels"),
    ExcludedFile((_T + "standard.nii.gz",), "streamline_mask", "synthetic 4 × 5 × 7 binary mask (streamline tests)"),
    ExcludedFile((_T + "test.mgz",), "mgh_synthetic", "synthetic 3 × 4 × 5 × 2 random values"),
    ExcludedFile((_T + "row_major.dconn.nii",), "cifti_matrix", "a CIFTI-2 connectivity matrix, not an image"),
    ExcludedFile((_T + "tinypet.v",), "ecat_pet", "ECAT PET, not MR"),
    ExcludedFile((_T + "analyze.hdr", _T + "nifti1.hdr", _T + "nifti2.hdr"), "header_only",
                 "headers without an image file"),
    ExcludedFile((_T + "bad_attribute+orig.HEAD", _T + "bad_datatype+orig.HEAD"), "header_only",
                 "malformed AFNI headers without a BRIK"),
    ExcludedFile(tuple(_T + f + ".PAR" for f in _HEADER_ONLY_PAR), "philips_header_only",
                 "Philips PAR headers without their REC pixel file (not in the wheel)"),
)

#: Groups that committed scripts read before the split was made (so they already informed decisions).
SEEN_BEFORE_SPLIT = ("example4d", "philips_phantom_epi")


def split_rule(groups: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The rule the split was made with, once: seen groups are development, unseen groups final.

    A group is *seen* when a committed script had read any of its files before the split
    (:data:`SEEN_BEFORE_SPLIT`: ``benchmarks/run_dds_tuning.py``, since retired, tuned on ``nibabel_example4d``;
    the protocol, adaptation and grid checks reported both legacy volumes).  Seen data cannot
    test anything honestly any more, so it goes to development; everything unseen is final.

    Parameters
    ----------
    groups : sequence of str
        Acquisition-group keys.

    Returns
    -------
    dict
        ``{group: "development" | "final"}``.
    """
    return {g: ("development" if g in SEEN_BEFORE_SPLIT else "final") for g in sorted(set(groups))}


#: The split, frozen: group → split.  Never edit; :func:`split_digest` of it is tested.
SPLIT_TABLE: dict[str, str] = {
    "afni_scaled_tlrc": "final",
    "example4d": "development",
    "nipy_anatomical": "final",
    "philips_phantom_epi": "development",
}


def split_digest(table: dict[str, str] | None = None) -> str:
    """sha256 (hex) of the split table as sorted JSON: a fingerprint that changes if any assignment does."""
    data = json.dumps(sorted((table if table is not None else SPLIT_TABLE).items()), separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


@dataclass(frozen=True)
class RealVolume:
    """Real MR slices ``images`` complex64 ``(S, H, W)`` (zero phase), in-plane ``pixel_mm`` and provenance."""

    name: str
    images: np.ndarray
    pixel_mm: tuple[float, float]
    source: str


@dataclass(frozen=True)
class RealSetVolume:
    """One volume of a split of the real set, as magnitude.

    Attributes
    ----------
    name : str
        Volume name (a key of :data:`REAL_FILES`).
    images : np.ndarray
        float32 ``(S, H, W)`` magnitude, ``>= 0``, in the file's units.
    slices : tuple of int
        Indices of the kept slices along the file's slice axis (axis 2).
    pixel_mm : tuple of float
        In-plane pixel size ``(rows, cols)`` in mm, from the header.
    fov_mm : tuple of float
        Field of view ``(H · pixel_mm[0], W · pixel_mm[1])`` in mm.
    split : str
        ``"development"`` or ``"final"``.
    entry : RealFile
        The inventory entry.
    source : str
        nibabel version and file.
    """

    name: str
    images: np.ndarray
    slices: tuple[int, ...]
    pixel_mm: tuple[float, float]
    fov_mm: tuple[float, float]
    split: str
    entry: RealFile
    source: str


def nibabel_dir() -> Path:
    """The installed nibabel package directory (the files of :data:`REAL_FILES` are relative to it)."""
    try:
        import nibabel as nib
    except ImportError as err:  # pragma: no cover - depends on install
        raise InputError("the real-image set needs nibabel: pip install 'mri-score[data]'") from err
    return Path(nib.__file__).parent


def _entry(name: str) -> RealFile:
    if name not in REAL_FILES:
        raise InputError(f"unknown real volume {name!r}; choose one of {', '.join(REAL_FILES)}")
    return REAL_FILES[name]


def split_of(name: str) -> str:
    """``"development"`` or ``"final"``: the split of volume ``name`` (by its acquisition group, :data:`SPLIT_TABLE`)."""
    group = _entry(name).acquisition_group
    if group not in SPLIT_TABLE:  # a new file must be added to the frozen table deliberately
        raise InputError(f"real volume {name!r}: acquisition group {group!r} has no split in SPLIT_TABLE")
    return SPLIT_TABLE[group]


def volumes_in(split: str) -> tuple[str, ...]:
    """Names of the volumes of ``split`` (``"development"`` or ``"final"``), inventory order; reads nothing."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose development or final")
    return tuple(n for n in REAL_FILES if split_of(n) == split)


def header_info(name: str) -> tuple[tuple[int, int, int], tuple[float, float]]:
    """``(H, W, slices)`` of the first volume and in-plane ``pixel_mm`` from the file's header only (no pixels read)."""
    entry = _entry(name)
    path = nibabel_dir() / entry.files[0]  # first: a missing nibabel is an InputError
    import nibabel as nib

    img = nib.load(str(path))
    shape = tuple(int(s) for s in img.shape[:3])
    zooms = img.header.get_zooms()
    return (shape[0], shape[1], shape[2]), (abs(float(zooms[0])), abs(float(zooms[1])))


def _read(entry: RealFile, min_object_fraction: float | None) -> tuple[np.ndarray, tuple[int, ...], tuple[float, float], str]:
    """Kept slices float32 ``(S, H, W)`` ``>= 0``, their indices, ``pixel_mm`` and the source string."""
    path = nibabel_dir() / entry.files[0]  # first: a missing nibabel is an InputError
    import nibabel as nib

    img = nib.load(str(path))
    vol = np.asarray(img.get_fdata(dtype=np.float32))
    while vol.ndim > 3:
        vol = vol[..., 0]  # first time point / dynamic
    if vol.ndim != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {vol.shape}")
    zooms = img.header.get_zooms()
    pixel_mm = (abs(float(zooms[0])), abs(float(zooms[1])))
    vol = np.clip(vol, 0, None)
    frac = entry.min_object_fraction if min_object_fraction is None else float(min_object_fraction)
    slices = np.moveaxis(vol, -1, 0)
    top = float(vol.max())
    keep = tuple(int(k) for k, s in enumerate(slices) if (s > 0.1 * top).mean() >= frac)
    source = f"nibabel {nib.__version__}: {entry.files[0]}"
    return np.ascontiguousarray(slices[list(keep)]), keep, pixel_mm, source


def load_real_volume(name: str, min_object_fraction: float | None = None) -> RealVolume:
    """One **development** volume, complex64 zero-phase slices (the legacy interface).

    A slice is kept when at least ``min_object_fraction`` (default: the volume's rule in
    :data:`REAL_FILES`, 0.02 for the legacy volumes) of its pixels exceed 10 % of the
    volume's maximum.  Slices are ``(H, W)`` = the file's first two axes.  Final-test
    volumes are refused: only :func:`final_test_set` reads them.
    """
    entry = _entry(name)
    if split_of(name) != "development":
        raise InputError(f"real volume {name!r} is in the final test set; only the registered protocol reads it "
                         "(final_test_set)")
    images, _, pixel_mm, source = _read(entry, min_object_fraction)
    return RealVolume(name, images.astype(np.complex64), pixel_mm, source)


def _volume(name: str) -> RealSetVolume:
    entry = REAL_FILES[name]
    images, keep, pixel_mm, source = _read(entry, None)
    h, w = images.shape[-2:]
    return RealSetVolume(name, images, keep, pixel_mm, (h * pixel_mm[0], w * pixel_mm[1]), split_of(name), entry, source)


def development_set() -> list[RealSetVolume]:
    """Every development volume (magnitude, float32): the only real images checks and tuning may use."""
    return [_volume(n) for n in volumes_in("development")]


def final_test_set(registration_ok: bool = False, *, token: str | None = None) -> list[RealSetVolume]:
    """Every final-test volume: for the registered final-test protocol only.

    Refuses (:class:`InputError`, one line) unless ``registration_ok`` is ``True`` — the
    protocol's own check that its settings were registered and frozen before this call —
    and ``token`` is :data:`FINAL_TEST_TOKEN`.  Check, tuning and development scripts must
    never call this function: a decision taken after seeing these images makes the final
    numbers optimistic.

    Parameters
    ----------
    registration_ok : bool
        Whether the caller's protocol registration was verified.
    token : str, optional
        Must equal :data:`FINAL_TEST_TOKEN`.

    Returns
    -------
    list of RealSetVolume
        The final-test volumes, inventory order.
    """
    if registration_ok is not True or token != FINAL_TEST_TOKEN:
        raise InputError("the final test set is read only by the registered protocol (final_test_set(registration_ok=True, "
                         "token=FINAL_TEST_TOKEN)); use development_set() for checks and tuning")
    return [_volume(n) for n in volumes_in("final")]
