"""ISMRMRD/MRD input: scanner-like files round-trip into the fastMRI layout; bad files are one line, exit 2.

The expected k-space is computed here independently of :mod:`mri_score.mrd`: acquisitions read
with the reference ``ismrmrd.Dataset`` reader, the noise covariance and its Cholesky factor
from the noise acquisitions, oversampling removed with explicit centred DFT matrices.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ismrmrd = pytest.importorskip("ismrmrd")

from mri_score.convert import main as convert_main  # noqa: E402
from mri_score.errors import InputError  # noqa: E402
from mri_score.fastmri_io import read_fastmri, write_fastmri_file  # noqa: E402
from mri_score.mrd import is_mrd_file, load_mrd, noise_whitening, read_mrd  # noqa: E402
from mri_score.mrd_write import scanner_noise_covariance, write_mrd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
S, C, H, W = 2, 6, 32, 24


def clean_kspace(seed: int = 0) -> np.ndarray:
    """Noise-free multi-coil k-space (S, C, H, W): smooth blobs times smooth coil sensitivities."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    images = []
    for _ in range(S):
        img = np.zeros((H, W), complex)
        for _ in range(4):
            cy, cx, r = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0.15, 0.4)
            img += rng.uniform(0.5, 1.0) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / r**2) * np.exp(1j * rng.uniform(-1, 1))
        images.append(img)
    angles = 2 * np.pi * np.arange(C) / C
    maps = np.stack([np.exp(-((y - 0.8 * np.sin(a)) ** 2 + (x - 0.8 * np.cos(a)) ** 2)) * np.exp(1j * a) for a in angles])
    coil_images = np.stack(images)[:, None] * maps[None]
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(coil_images, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1)).astype(np.complex64)


def centred_dft(n: int) -> np.ndarray:
    """The unitary centred DFT matrix: X[k] = sum_j x[j] exp(-2 pi i (k - n//2)(j - n//2) / n) / sqrt(n)."""
    k = np.arange(n) - n // 2
    return np.exp(-2j * np.pi * np.outer(k, k) / n) / np.sqrt(n)


def expected_kspace(path: Path, recon_x: int, whiten: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """fastMRI-layout k-space and acquired-column mask of an MRD file, from the reference reader."""
    ds = ismrmrd.Dataset(str(path), "dataset", mode="r")
    try:
        hdr = ismrmrd.xsd.CreateFromDocument(ds.read_xml_header())
        acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    finally:
        ds.close()
    enc = hdr.encoding[0]
    ey = enc.encodedSpace.matrixSize.y
    centre = enc.encodingLimits.kspace_encoding_step_1.center
    noise = [a for a in acqs if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    chol = np.eye(acqs[-1].active_channels)
    if whiten and noise:
        x = np.concatenate([a.data.astype(np.complex128) for a in noise], axis=1)
        chol = np.linalg.cholesky(x @ x.conj().T / x.shape[1])
    n = acqs[-1].number_of_samples
    start = (n - recon_x) // 2
    crop = np.zeros((recon_x, n))
    crop[np.arange(recon_x), start + np.arange(recon_x)] = 1
    reduce = centred_dft(recon_x) @ crop @ centred_dft(n).conj().T  # (recon_x, n)
    imaging: dict[tuple[int, int], list[np.ndarray]] = {}
    calibration: dict[tuple[int, int], list[np.ndarray]] = {}
    for a in acqs:
        if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            continue
        line = np.linalg.solve(chol, a.data.astype(np.complex128)) @ reduce.T  # (C, recon_x)
        key = (a.idx.slice, a.idx.kspace_encode_step_1 + ey // 2 - centre)
        (calibration if a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION) else imaging).setdefault(key, []).append(line)
    slices = sorted({k[0] for k in imaging} | {k[0] for k in calibration})
    out = np.zeros((len(slices), acqs[-1].active_channels, recon_x, ey), complex)
    mask = np.zeros(ey)
    for key, lines in {**calibration, **imaging}.items():  # imaging lines win over calibration-only ones
        out[slices.index(key[0]), :, :, key[1]] = np.mean(lines, axis=0)
        mask[key[1]] = 1
    return out, mask


def undersampling_mask() -> np.ndarray:
    m = np.zeros(W)
    m[1::3] = 1
    return m


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def raw_file(tmp_path) -> Path:
    """A scanner-like MRD file: 2x readout oversampling, correlated coil noise, 16 noise scans, embedded ACS."""
    (tmp_path / "in").mkdir()
    return write_mrd(tmp_path / "in" / "scan.h5", clean_kspace(), mask=undersampling_mask(), acs_lines=6,
                     noise_scans=16, snr=30.0, seed=1)


def test_read_mrd_equals_independent_expectation(raw_file):
    scan = load_mrd(raw_file)
    vol = scan.volume
    expected, mask = expected_kspace(raw_file, H)
    assert vol.kspace.shape == (S, C, H, W) and vol.kspace.dtype == np.complex64
    assert np.abs(vol.kspace - expected).max() <= 1e-5 * np.abs(expected).max()
    # the acquired lines: every third column plus the 6 embedded ACS lines, all zero elsewhere
    acs = np.zeros(W, bool)
    acs[W // 2 - 3 : W // 2 + 3] = True
    assert np.array_equal(mask, (undersampling_mask() > 0) | acs)
    assert np.array_equal(scan.acquired, mask > 0) and np.array_equal(scan.acs, acs)
    assert np.array_equal(vol.mask, mask.astype(np.float32)) and vol.is_undersampled
    assert not np.abs(vol.kspace[..., mask == 0]).any()
    assert vol.attrs["num_low_frequency"] == 6 and vol.attrs["acceleration"] == pytest.approx(W / mask.sum())
    # header of the output: readout oversampling gone (matrix and field of view), phase encode untouched
    assert vol.encoded_size == (H, W, 1) and vol.recon_size == (H, W, 1)
    assert (vol.padding_left, vol.padding_right) == (0, W)
    assert vol.encoded_fov_mm == pytest.approx((220.0, 220.0, 5.0)) and vol.pixel_mm == pytest.approx((220 / H, 220 / W))
    assert scan.readout_oversampling == 2.0 and scan.noise_samples == 16 * 2 * H
    # the target: RSS of the whitened noise-free reference, recon-size crop (here the whole matrix)
    coil_images = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(np.einsum("ij,sjhw->sihw", scan.whitening, clean_kspace()),
                                                                axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    rss = np.sqrt((np.abs(coil_images) ** 2).sum(axis=1))
    assert vol.target is None  # the noise-free reference is the truth, not a fastMRI (noisy RSS) target
    assert vol.truth.shape == (S, H, W) and vol.truth.dtype == np.float32
    assert np.abs(vol.truth - rss).max() <= 1e-5 * rss.max()
    assert np.array_equal(read_mrd(raw_file).kspace, vol.kspace)
    out_header = ismrmrd.xsd.CreateFromDocument(scan.header_xml)  # still a valid ISMRMRD header
    assert out_header.encoding[0].encodedSpace.matrixSize.x == H and len(out_header.encoding) == 1
    assert out_header.subjectInformation.patientID == "sim"


def test_separate_calibration_scan_and_averages(tmp_path):
    path = write_mrd(tmp_path / "sep.h5", clean_kspace(1), mask=undersampling_mask(), acs_lines=8, acs_mode="separate",
                     averages=2, noise_scans=12, recon_y=20, fov_mm=(200.0, 180.0, 4.0), seed=2)
    scan = load_mrd(path)
    expected, mask = expected_kspace(path, H)
    assert np.abs(scan.volume.kspace - expected).max() <= 1e-5 * np.abs(expected).max()
    assert np.array_equal(scan.acquired, mask > 0)
    assert scan.acs.sum() == 8 and scan.volume.recon_size == (H, 20, 1)
    assert scan.volume.encoded_fov_mm == pytest.approx((200.0, 180.0, 4.0))


def test_without_oversampling_or_noise_scans_nothing_is_whitened(tmp_path):
    k = clean_kspace(2)
    path = write_mrd(tmp_path / "plain.h5", k, oversampling=1, noise_scans=0, acs_lines=0, seed=3)
    scan = load_mrd(path)
    expected, mask = expected_kspace(path, H)
    assert scan.whitening is None and scan.noise_covariance is None and scan.readout_oversampling == 1.0
    assert np.abs(scan.volume.kspace - expected).max() <= 1e-5 * np.abs(expected).max()
    assert scan.volume.mask is None and not scan.volume.is_undersampled and mask.all()


def test_prewhitening_makes_the_noise_covariance_identity(tmp_path):
    k = clean_kspace(3)
    truth = scanner_noise_covariance(C, seed=5, correlation=0.5) * 4.0
    # noise acquisitions at half the imaging bandwidth: their variance is half the imaging lines'
    path = write_mrd(tmp_path / "noisy.h5", k, noise_covariance=truth, noise_scans=64, acs_lines=0, averages=2,
                     dwell_us=4.0, noise_dwell_us=8.0, seed=4)
    scan = load_mrd(path)

    def coil_covariance(kspace: np.ndarray) -> np.ndarray:
        x = np.moveaxis(kspace, 1, 0).reshape(C, -1)
        return x @ x.conj().T / x.shape[1]

    assert np.abs(scan.noise_covariance - truth).max() < 0.15 * np.abs(truth).max()
    assert np.allclose(scan.whitening @ scan.noise_covariance @ scan.whitening.conj().T, np.eye(C), atol=1e-10)
    assert np.allclose(np.triu(scan.whitening, 1), 0)
    # the noise of the imaging lines (averaged pairs: half the variance), whitened: identity
    whitened = coil_covariance(scan.volume.kspace - np.einsum("ij,sjhw->sihw", scan.whitening, k)) * 2
    assert np.abs(whitened - np.eye(C)).max() < 0.12
    raw = load_mrd(path, prewhiten=False)
    assert raw.whitening is None
    unwhitened = coil_covariance(raw.volume.kspace - k) * 2
    assert np.abs(unwhitened - truth).max() < 0.15 * np.abs(truth).max()
    correlation = np.abs(unwhitened) / np.sqrt(np.outer(np.diag(unwhitened).real, np.diag(unwhitened).real))
    assert (correlation - np.eye(C)).max() > 0.3  # without whitening the coils' noise is strongly correlated


def test_writer_oversampling_is_removed_exactly(tmp_path):
    k = clean_kspace(4)
    path = write_mrd(tmp_path / "quiet.h5", k, oversampling=3, noise_covariance=1e-14 * np.eye(C), seed=6)
    vol = read_mrd(path, prewhiten=False)
    assert np.abs(vol.kspace - k).max() <= 1e-5 * np.abs(k).max()
    with h5py.File(path, "r") as hf:
        assert hf["dataset/data"][-1]["head"]["number_of_samples"] == 3 * H


def test_noise_whitening_refuses_a_singular_covariance():
    cov = np.ones((3, 3), complex)  # three copies of one channel
    with pytest.raises(InputError, match="not positive definite"):
        noise_whitening(cov, "f.h5")


def test_is_mrd_file_recognises_content_not_names(raw_file, tmp_path):
    assert is_mrd_file(raw_file)
    renamed = tmp_path / "raw.dat"
    shutil.copy(raw_file, renamed)
    assert is_mrd_file(renamed)
    fastmri = write_fastmri_file(tmp_path / "fastmri.h5", clean_kspace(), None, "SYN", "p")
    assert not is_mrd_file(fastmri)
    (tmp_path / "text.h5").write_text("not hdf5")
    assert not is_mrd_file(tmp_path / "text.h5")
    assert not is_mrd_file(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as hf:
        hf.create_group("dataset")["xml"] = np.bytes_(b"<x/>")
    assert not is_mrd_file(tmp_path / "other.h5")
    moved = tmp_path / "moved.h5"
    with h5py.File(raw_file, "r") as src, h5py.File(moved, "w") as dst:
        src.copy("dataset", dst, name="scan1")
    assert is_mrd_file(moved) and read_mrd(moved, load_target=False).kspace.shape == (S, C, H, W)


def test_convert_writes_a_fastmri_file_with_identical_data(raw_file, tmp_path, capsys):
    before = sha(raw_file)
    out = tmp_path / "out" / "kspace.h5"
    assert convert_main([str(raw_file), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    scan = load_mrd(raw_file)
    vol = read_fastmri(out)
    assert np.array_equal(vol.kspace, scan.volume.kspace) and np.array_equal(vol.mask, scan.volume.mask)
    assert np.array_equal(vol.truth, scan.volume.truth) and vol.truth is not None
    for name in ("encoded_size", "recon_size", "padding_left", "padding_right", "encoded_fov_mm"):
        assert getattr(vol, name) == getattr(scan.volume, name), name
    assert vol.attrs["acquisition"] == "MRI_SCORE_SIM" and vol.attrs["num_low_frequency"] == 6
    assert sha(raw_file) == before
    # an existing directory gets <raw name>.h5; without prewhitening the data differs
    (tmp_path / "dir").mkdir()
    assert convert_main([str(raw_file), "--out", str(tmp_path / "dir"), "--no-prewhiten", "--no-target"]) == 0
    other = read_fastmri(tmp_path / "dir" / "scan.h5")
    assert other.truth is None and not np.allclose(other.kspace, vol.kspace)
    assert sorted(os.listdir(tmp_path / "out")) == ["kspace.h5"]


def test_convert_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        convert_main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--no-prewhiten" in text and "(default:" in text


def test_convert_refuses_to_overwrite_its_input(raw_file, capsys):
    before = sha(raw_file)
    assert convert_main([str(raw_file), "--out", str(raw_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overwrite" in err[0]
    assert sha(raw_file) == before
    assert convert_main([str(raw_file), "--out", str(raw_file.parent)]) == 2  # <dir>/scan.h5 is the input
    assert sha(raw_file) == before and sorted(os.listdir(raw_file.parent)) == ["scan.h5"]


# --- malformed inputs ----------------------------------------------------------------------------------------


def _edit_header(path: Path, edit) -> None:
    with h5py.File(path, "r+") as hf:
        hdr = ismrmrd.xsd.CreateFromDocument(hf["dataset/xml"][0])
        edit(hdr)
        del hf["dataset/xml"]
        hf["dataset"].create_dataset("xml", data=np.array([ismrmrd.xsd.ToXML(hdr).encode()],
                                                          dtype=h5py.special_dtype(vlen=bytes)))


def _edit_xml(path: Path, edit) -> None:
    with h5py.File(path, "r+") as hf:
        xml = edit(hf["dataset/xml"][0])
        del hf["dataset/xml"]
        hf["dataset"].create_dataset("xml", data=np.array([xml], dtype=h5py.special_dtype(vlen=bytes)))


def _edit_table(path: Path, edit) -> None:
    with h5py.File(path, "r+") as hf:
        table = hf["dataset/data"][()]
        edit(table)
        del hf["dataset/data"]
        hf["dataset"].create_dataset("data", data=table)


def _imaging_rows(table: np.ndarray) -> np.ndarray:
    return np.flatnonzero(table["head"]["flags"] & np.uint64(1 << (ismrmrd.ACQ_IS_NOISE_MEASUREMENT - 1)) == 0)


def _partial_fourier(hdr) -> None:
    hdr.encoding[0].encodingLimits.kspace_encoding_step_1 = ismrmrd.xsd.limitType(minimum=0, maximum=W - 1, center=6)


def _contrasts(table: np.ndarray) -> None:
    rows = _imaging_rows(table)
    table["head"]["idx"]["contrast"][rows[1::2]] = 1


def _three_d(table: np.ndarray) -> None:
    table["head"]["idx"]["kspace_encode_step_2"][_imaging_rows(table)[3]] = 2


def _short_row(table: np.ndarray) -> None:
    row = _imaging_rows(table)[5]
    table["data"][row] = table["data"][row][:-10]


def _nan_row(table: np.ndarray) -> None:
    row = _imaging_rows(table)[2]
    data = table["data"][row].copy()
    data[7] = np.nan
    table["data"][row] = data


def _drop_data(path: Path) -> None:
    with h5py.File(path, "r+") as hf:
        del hf["dataset/data"]


def make_bad(case: str, good: Path, d: Path) -> tuple[Path, str]:
    """A malformed copy of ``good`` in ``d`` and a phrase its one-line error must contain."""
    p = d / f"{case}.h5"
    shutil.copy(good, p)
    if case == "truncated_xml":
        _edit_xml(p, lambda x: x[: len(x) // 2])
        return p, "not a valid ISMRMRD header"
    if case == "dtd_xml":
        _edit_xml(p, lambda x: b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]>' + x.split(b"?>", 1)[1])
        return p, "DTD"
    if case == "partial_fourier":
        _edit_header(p, _partial_fourier)
        return p, "partial Fourier"
    if case == "three_d_header":
        _edit_header(p, lambda h: setattr(h.encoding[0].encodedSpace.matrixSize, "z", 8))
        return p, "3-D"
    if case == "three_d_lines":
        _edit_table(p, _three_d)
        return p, "3-D"
    if case == "multiple_contrasts":
        _edit_table(p, _contrasts)
        return p, "2 contrasts"
    if case == "non_cartesian":
        _edit_header(p, lambda h: setattr(h.encoding[0], "trajectory", ismrmrd.xsd.trajectoryType.RADIAL))
        return p, "non-Cartesian"
    if case == "missing_data":
        _drop_data(p)
        return p, "no 'data' dataset"
    if case == "short_acquisition":
        _edit_table(p, _short_row)
        return p, "holds"
    if case == "nan_samples":
        _edit_table(p, _nan_row)
        return p, "NaN"
    if case == "not_hdf5":
        p.write_bytes(b"ISMRMRD? no, text\n" * 20)
        return p, "not a readable HDF5"
    raise AssertionError(case)


BAD_CASES = ["truncated_xml", "dtd_xml", "partial_fourier", "three_d_header", "three_d_lines", "multiple_contrasts",
             "non_cartesian", "missing_data", "short_acquisition", "nan_samples", "not_hdf5"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_convert_rejects_malformed_mrd_in_one_line(raw_file, tmp_path, capsys, case):
    path, phrase = make_bad(case, raw_file, raw_file.parent)
    before = sha(path)
    out = tmp_path / "out"
    assert convert_main([str(path), "--out", str(out / "k.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and str(path) in err[0] and phrase in err[0], err[0]
    assert sha(path) == before
    assert not out.exists() or not list(out.iterdir())


def test_missing_ismrmrd_package_is_one_line(raw_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ismrmrd", None)
    assert convert_main([str(raw_file), "--out", str(tmp_path / "k.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ismrmrd" in err[0] and str(raw_file) in err[0]
    assert not (tmp_path / "k.h5").exists()


def test_convert_command_line_exit_code(raw_file, tmp_path):
    path, _ = make_bad("non_cartesian", raw_file, raw_file.parent)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mri_score.convert", str(path), "--out", str(tmp_path / "o.h5")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.h5").exists()


def test_encoding_limits_with_padding_give_fastmri_padding(tmp_path):
    """Lines 2..21 of 24 acquired, limits minimum 2 / maximum 21 / centre 12 (symmetric): padding [2, 22)."""
    mask = np.zeros(W)
    mask[2:22] = 1
    path = write_mrd(tmp_path / "pad.h5", clean_kspace(5), mask=mask, acs_lines=4, seed=7)
    _edit_header(path, lambda h: setattr(h.encoding[0].encodingLimits, "kspace_encoding_step_1",
                                         ismrmrd.xsd.limitType(minimum=2, maximum=21, center=12)))
    scan = load_mrd(path)
    expected, acquired = expected_kspace(path, H)
    assert np.abs(scan.volume.kspace - expected).max() <= 1e-5 * np.abs(expected).max()
    assert (scan.volume.padding_left, scan.volume.padding_right) == (2, 22)
    assert scan.volume.mask is None and not scan.volume.is_undersampled
    assert np.array_equal(scan.volume.sampling_mask, acquired.astype(np.float32))
    out = tmp_path / "k.h5"
    assert convert_main([str(path), "--out", str(out)]) == 0
    vol = read_fastmri(out)
    assert (vol.padding_left, vol.padding_right) == (2, 22) and not vol.is_undersampled
