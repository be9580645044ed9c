"""NIfTI and DICOM export: geometry, values, UIDs, atomicity; the voxel size from a fastMRI header."""

from __future__ import annotations

import errno
import importlib.util
import sys

import nibabel as nib
import numpy as np
import pytest

from mri_score import atomic
from mri_score import export as exportmod
from mri_score.errors import InputError
from mri_score.export import series_description, voxel_mm, write_dicom_series, write_nifti
from mri_score.fastmri_io import build_ismrmrd_header, parse_ismrmrd_header, read_fastmri

needs_pydicom = pytest.mark.skipif(importlib.util.find_spec("pydicom") is None, reason="pydicom not installed")

DY, DX, THICK = 0.5, 0.7, 3.0


def _volume(shape=(4, 24, 20), seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    vol = rng.random(shape).astype(np.float32) * 3e-4 + offset
    vol[:, :2] = 0  # a zero background band
    return vol


def _listing(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))


# ---------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_nifti_zooms_values_and_orientation(tmp_path, name):
    vol = _volume()
    path = write_nifti(tmp_path / "sub" / name, vol, (DY, DX), THICK, description="dds accel=4")
    img = nib.load(path)
    assert img.header.get_zooms() == pytest.approx((DX, DY, THICK))
    assert img.shape == (20, 24, 4)  # (W, H, S)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data.transpose(2, 1, 0), vol)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), (DX, DY, THICK))
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), img.affine, atol=1e-6)
    assert img.header.get_xyzt_units()[0] == "mm"
    assert img.header["descrip"].item() == b"dds accel=4"
    # the centre of the volume is the origin
    centre = img.affine @ np.array([(20 - 1) / 2, (24 - 1) / 2, (4 - 1) / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0, atol=1e-5)  # the header stores float32
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert _listing(tmp_path) == ["sub", f"sub/{name}"]


def test_nifti_slice_spacing_with_a_gap(tmp_path):
    img = nib.load(write_nifti(tmp_path / "g.nii.gz", _volume(), (DY, DX), THICK, spacing_mm=3.6))
    assert img.header.get_zooms() == pytest.approx((DX, DY, 3.6))


def test_nifti_replaces_an_older_file_and_a_failed_write_leaves_it(tmp_path, monkeypatch):
    path = tmp_path / "v.nii.gz"
    write_nifti(path, _volume(seed=1), (DY, DX), THICK)
    before = path.read_bytes()

    def replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(InputError, match="no space left") as info:
        write_nifti(path, _volume(seed=2), (DY, DX), THICK)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before and _listing(tmp_path) == ["v.nii.gz"]


@pytest.mark.parametrize("kwargs,phrase", [
    ({"volume": np.ones((2, 4, 4), np.complex64)}, "magnitude"),
    ({"volume": np.ones((4, 4), np.float32)}, "(slices, H, W)"),
    ({"volume": np.full((2, 4, 4), np.nan, np.float32)}, "NaN"),
    ({"pixel_mm": (0.0, 0.5)}, "pixel_mm"),
    ({"pixel_mm": (float("nan"), 0.5)}, "pixel_mm"),
    ({"pixel_mm": (0.5,)}, "pixel_mm"),
    ({"slice_mm": -1.0}, "slice_mm"),
    ({"path": "v.img"}, ".nii"),
])
def test_nifti_refuses_bad_input_and_writes_nothing(tmp_path, kwargs, phrase):
    args = {"path": "v.nii.gz", "volume": _volume(), "pixel_mm": (DY, DX), "slice_mm": THICK, **kwargs}
    args["path"] = tmp_path / args["path"]
    with pytest.raises(InputError, match=phrase.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        write_nifti(**args)
    assert _listing(tmp_path) == []


# ---------------------------------------------------------------- voxel size from the header


def test_voxel_mm_from_header_dict_and_volume(tmp_path, fully_sampled_file):
    meta = parse_ismrmrd_header(build_ismrmrd_header((640, 368, 1), (320, 320, 1), fov_mm=(280.0, 161.0, 4.5)))
    assert voxel_mm(meta) == pytest.approx((280 / 640, 161 / 368, 4.5))
    vol = read_fastmri(fully_sampled_file)  # written with the default 256 x 256 x 5 mm field of view, 64 x 64
    assert voxel_mm(vol) == pytest.approx((4.0, 4.0, 5.0))
    assert voxel_mm(vol)[:2] == pytest.approx(vol.pixel_mm)
    with pytest.raises(InputError, match="h.h5: ismrmrd_header has no usable"):
        voxel_mm({**meta, "encoded_fov_mm": None}, "h.h5")


# ---------------------------------------------------------------- DICOM


def _read_series(files):
    import pydicom

    return [pydicom.dcmread(f) for f in files]


def _values(ds):
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@needs_pydicom
def test_dicom_series_geometry_values_and_description(tmp_path):
    from pydicom.uid import MRImageStorage

    vol = _volume()
    desc = series_description("dds", {"accel": 4, "steps": 50, "seed": 0, "center_fraction": 0.08, "x": None})
    assert desc == "dds accel=4 steps=50 seed=0 center_fraction=0.08"
    files = write_dicom_series(tmp_path / "series", vol, (DY, DX), THICK, desc)
    assert [f.name for f in files] == ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm", "IM0004.dcm"]
    assert _listing(tmp_path) == ["series"] + [f"series/{f.name}" for f in files]
    dss = _read_series(files)
    for k, ds in enumerate(dss):
        assert ds.SOPClassUID == MRImageStorage and ds.file_meta.MediaStorageSOPClassUID == MRImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "MR" and ds.InstanceNumber == k + 1
        assert (ds.Rows, ds.Columns) == (24, 20)
        assert [float(v) for v in ds.PixelSpacing] == [DY, DX]
        assert float(ds.SliceThickness) == THICK and float(ds.SpacingBetweenSlices) == THICK
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert ds.SeriesDescription == desc and ds.ImageComments == desc
        slope = float(ds.RescaleSlope)
        assert float(ds.RescaleIntercept) == 0.0
        back = _values(ds)
        assert np.abs(back - vol[k]).max() <= slope / 2 * (1 + 1e-6)
        assert (back[vol[k] == 0] == 0).all()  # the zero background stays exactly zero
    z = [float(ds.ImagePositionPatient[2]) for ds in dss]
    np.testing.assert_allclose(np.diff(z), THICK)
    np.testing.assert_allclose([float(ds.SliceLocation) for ds in dss], z)
    # one study, series and frame of reference; distinct instances
    assert len({ds.StudyInstanceUID for ds in dss}) == len({ds.SeriesInstanceUID for ds in dss}) == 1
    assert len({ds.FrameOfReferenceUID for ds in dss}) == 1
    assert len({ds.SOPInstanceUID for ds in dss}) == len(dss)
    assert len({dss[0].StudyInstanceUID, dss[0].SeriesInstanceUID, dss[0].FrameOfReferenceUID}) == 3


@needs_pydicom
def test_dicom_negative_values_and_a_constant_volume(tmp_path):
    vol = _volume(seed=3, offset=-1e-4)
    assert vol.min() < 0
    ds = _read_series(write_dicom_series(tmp_path / "neg", vol, (DY, DX), THICK, "x"))
    slope = float(ds[0].RescaleSlope)
    assert float(ds[0].RescaleIntercept) < 0
    for k, d in enumerate(ds):
        assert np.abs(_values(d) - vol[k]).max() <= slope / 2 * (1 + 1e-6) + 1e-12
    const = np.full((2, 8, 8), 0.25, np.float32)
    ds = _read_series(write_dicom_series(tmp_path / "const", const, (DY, DX), THICK, "x"))
    np.testing.assert_allclose(_values(ds[1]), 0.25, rtol=1e-9)


@needs_pydicom
def test_dicom_uids_are_new_per_series_and_a_study_can_be_shared(tmp_path):
    vol = _volume(shape=(2, 8, 8))
    a = _read_series(write_dicom_series(tmp_path / "a", vol, (DY, DX), THICK, "zero-filled"))[0]
    b = _read_series(write_dicom_series(tmp_path / "b", vol, (DY, DX), THICK, "zero-filled"))[0]
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.StudyInstanceUID != b.StudyInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID and a.FrameOfReferenceUID != b.FrameOfReferenceUID
    c = _read_series(write_dicom_series(tmp_path / "c", vol, (DY, DX), THICK, "dds", study_uid=a.StudyInstanceUID,
                                        series_number=2))[0]
    assert c.StudyInstanceUID == a.StudyInstanceUID and c.SeriesInstanceUID != a.SeriesInstanceUID
    assert c.SeriesNumber == 2


@needs_pydicom
def test_dicom_and_nifti_place_every_voxel_at_the_same_point(tmp_path):
    vol = _volume(shape=(3, 10, 6))
    img = nib.load(write_nifti(tmp_path / "v.nii.gz", vol, (DY, DX), THICK, spacing_mm=4.0))
    dss = _read_series(write_dicom_series(tmp_path / "s", vol, (DY, DX), THICK, "x", spacing_mm=4.0))
    for k, r, c in [(0, 0, 0), (2, 9, 5), (1, 3, 4)]:
        ds = dss[k]
        row_dir = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        col_dir = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
        dy, dx = (float(v) for v in ds.PixelSpacing)
        lps = np.array([float(v) for v in ds.ImagePositionPatient]) + c * dx * row_dir + r * dy * col_dir
        ras = (img.affine @ np.array([c, r, k, 1.0]))[:3]
        np.testing.assert_allclose(ras, lps * np.array([-1, -1, 1]), atol=1e-6)
        assert np.asarray(img.dataobj)[c, r, k] == vol[k, r, c]


@needs_pydicom
def test_dicom_long_and_odd_descriptions(tmp_path):
    desc = "dds " + " ".join(f"option{i}=value{i}" for i in range(12)) + " back\\slash\nnewline é"
    ds = _read_series(write_dicom_series(tmp_path / "s", _volume(shape=(1, 8, 8)), (DY, DX), THICK, desc))[0]
    assert len(ds.SeriesDescription) <= 64 and ds.SeriesDescription.startswith("dds option0=value0")
    assert "\\" not in ds.ImageComments and "\n" not in ds.ImageComments and ds.ImageComments.endswith("é")


@needs_pydicom
def test_dicom_failure_mid_series_leaves_nothing(tmp_path, monkeypatch):
    real = exportmod._write_one
    calls = []

    def failing(pydicom, path, ds):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(pydicom, path, ds)

    monkeypatch.setattr(exportmod, "_write_one", failing)
    with pytest.raises(InputError, match="no space left") as info:
        write_dicom_series(tmp_path / "out" / "series", _volume(), (DY, DX), THICK, "x")
    assert "\n" not in str(info.value) and "series" in str(info.value)
    assert _listing(tmp_path) == ["out"]

    def interrupted(pydicom, path, ds):
        raise KeyboardInterrupt

    monkeypatch.setattr(exportmod, "_write_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_dicom_series(tmp_path / "out" / "series", _volume(), (DY, DX), THICK, "x")
    assert _listing(tmp_path) == ["out"]


@needs_pydicom
def test_dicom_directory_rules(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        write_dicom_series(full, _volume(), (DY, DX), THICK, "x")
    assert _listing(full) == ["keep.txt"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        write_dicom_series(tmp_path / "afile", _volume(), (DY, DX), THICK, "x")
    empty = tmp_path / "empty"
    empty.mkdir()
    files = write_dicom_series(empty, _volume(shape=(2, 8, 8)), (DY, DX), THICK, "x")
    assert _listing(empty) == ["IM0001.dcm", "IM0002.dcm"] and files[0].parent == empty
    with pytest.raises(InputError, match="must be real"):
        write_dicom_series(tmp_path / "c", np.ones((2, 4, 4), np.complex64), (DY, DX), THICK, "x")
    with pytest.raises(InputError, match="pixel_mm"):
        write_dicom_series(tmp_path / "c", _volume(), (DY, -1.0), THICK, "x")
    assert not (tmp_path / "c").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_pydicom_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom raises ImportError
    with pytest.raises(InputError, match="install the 'dicom' extra") as info:
        write_dicom_series(tmp_path / "s", _volume(), (DY, DX), THICK, "x")
    assert "\n" not in str(info.value)
    assert _listing(tmp_path) == []


def test_missing_nibabel_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(InputError, match="install the 'data' extra"):
        write_nifti(tmp_path / "v.nii.gz", _volume(), (DY, DX), THICK)
    assert _listing(tmp_path) == []
