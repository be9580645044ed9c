"""Inputs besides fastMRI (MRD raw, BART cfl), exports (NIfTI, DICOM, cfl), like-for-like scoring, the CLI's extras."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mri_score.fastmri_io import read_fastmri, write_fastmri_file
from mri_score.reconstruct import main
from mri_score.simulation import noise_free_target, simulate_volume
from tests.conftest import phantom

ROOT = Path(__file__).resolve().parents[1]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _args(src, out, prior, *extra):
    return ["--kspace", str(src), "--out", str(out), "--prior", str(prior), "--steps", "2", "--center-fraction", "0.25",
            "--quiet", *extra]


def test_mrd_raw_input_reconstructs_exactly_like_its_fastmri_conversion(tmp_path, tiny_prior_path):
    pytest.importorskip("ismrmrd")
    from mri_score.convert import main as convert_main
    from mri_score.mrd_write import write_mrd

    imgs = phantom(32, 2)
    clean = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(imgs[:, None] * np.ones((1, 4, 1, 1)), axes=(-2, -1)),
                                        norm="ortho"), axes=(-2, -1)).astype(np.complex64)
    mask = np.zeros(32)
    mask[::2] = 1
    raw = write_mrd(tmp_path / "in" / "scan.h5", clean, mask=mask, acs_lines=8, noise_scans=16, snr=40.0, seed=2)
    before = sha(raw)
    converted = tmp_path / "conv" / "scan.h5"
    assert convert_main([str(raw), "--out", str(converted)]) == 0
    assert main(_args(raw, tmp_path / "a", tiny_prior_path)) == 0
    assert main(_args(converted, tmp_path / "b", tiny_prior_path)) == 0
    with h5py.File(tmp_path / "a" / "scan.h5") as fa, h5py.File(tmp_path / "b" / "scan.h5") as fb:
        assert np.array_equal(fa["reconstruction"][()], fb["reconstruction"][()])
        assert np.array_equal(fa["mask"][()], fb["mask"][()])
    assert sha(raw) == before


def test_bart_cfl_input_and_every_export_read_back(tmp_path, tiny_prior_path, capsys):
    pydicom = pytest.importorskip("pydicom")
    nib = pytest.importorskip("nibabel")
    from mri_score.cfl import kspace_to_cfl, read_cfl, write_cfl

    ksp, _, _ = simulate_volume(phantom(32, 2), coils=4, snr=100.0, seed=1)
    src = tmp_path / "in" / "scan"
    src.parent.mkdir()
    write_cfl(src, kspace_to_cfl(ksp))
    out = tmp_path / "out"
    assert main(_args(src.with_suffix(".cfl"), out, tiny_prior_path, "--export", "nifti,dicom,cfl", "--accel", "2")) == 0
    assert "scan.cfl:" in capsys.readouterr().out
    with h5py.File(out / "scan.h5") as hf:
        recon, std = hf["reconstruction"][()], hf["reconstruction_std"][()]
    nii = nib.load(str(out / "scan.nii.gz"))
    assert np.allclose(np.asarray(nii.dataobj).transpose(2, 1, 0), recon, atol=1e-6)  # RAS: x = columns
    assert nii.header.get_zooms() == (1.0, 1.0, 1.0)  # a BART file has no field of view: 1 mm written, and said so
    assert (out / "scan_std.nii.gz").is_file()
    series = sorted((out / "scan_dicom").iterdir())
    assert len(series) == recon.shape[0]
    ds = pydicom.dcmread(str(series[0]))
    assert "pixel size unknown" in ds.ImageComments and [float(v) for v in ds.PixelSpacing] == [1.0, 1.0]
    std_ds = pydicom.dcmread(str(sorted((out / "scan_std_dicom").iterdir())[0]))
    assert std_ds.StudyInstanceUID == ds.StudyInstanceUID and std_ds.SeriesInstanceUID != ds.SeriesInstanceUID
    back = read_cfl(out / "scan_reconstruction")
    assert np.allclose(np.moveaxis(back.real, -1, 0), recon)
    assert np.allclose(std, std)  # the std was written (K = 2)


def test_nifti_export_carries_the_header_pixel_size(tmp_path, tiny_prior_path):
    nib = pytest.importorskip("nibabel")
    from mri_score.fastmri_io import build_ismrmrd_header

    imgs = phantom(32, 2)
    ksp, target, _ = simulate_volume(imgs, coils=4, snr=100.0, seed=1)
    path = write_fastmri_file(tmp_path / "in" / "v.h5", ksp, target, "SYN", "p")
    with h5py.File(path, "r+") as hf:  # a 3.2 x 6.4 mm pixel, 4 mm slices
        del hf["ismrmrd_header"]
        hf["ismrmrd_header"] = np.bytes_(build_ismrmrd_header((32, 32, 1), (32, 32, 1), (102.4, 204.8, 4.0)))
    assert main(_args(path, tmp_path / "o", tiny_prior_path, "--export", "nifti", "--grid", "native")) == 0
    zooms = nib.load(str(tmp_path / "o" / "v.nii.gz")).header.get_zooms()
    assert np.allclose(sorted(zooms), sorted((3.2, 6.4, 4.0)))


def test_one_sample_writes_no_std_and_the_summary_scores_against_the_noise_free_truth(tmp_path, tiny_prior_path,
                                                                                     capsys):
    imgs = phantom(32, 2)
    ksp, target, _ = simulate_volume(imgs, coils=4, snr=30.0, seed=1)
    truth = noise_free_target(imgs, 4)
    path = write_fastmri_file(tmp_path / "in" / "v.h5", ksp, target, "SYN", "p", truth=truth)
    assert np.array_equal(read_fastmri(path).truth, truth)
    assert main(_args(path, tmp_path / "o", tiny_prior_path, "--samples", "1")) == 0
    line = capsys.readouterr().out
    assert "against the file's noise-free truth" in line
    with h5py.File(tmp_path / "o" / "v.h5") as hf:
        assert "reconstruction_std" not in hf and "one sample" in hf.attrs["std_calibration"]


def test_a_symlink_loop_in_the_input_directory_is_one_line_and_the_rest_is_reconstructed(tmp_path, tiny_prior_path,
                                                                                       fully_sampled_file, capfd):
    d = fully_sampled_file.parent
    os.symlink(d / "loop.h5", d / "loop.h5")
    rc = main(_args(d, tmp_path / "o", tiny_prior_path))
    err = capfd.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if "loop.h5" in ln] and "symlink loop" in err
    assert (tmp_path / "o" / fully_sampled_file.name).is_file()


def test_two_inputs_with_one_output_name_are_refused_before_any_work(tmp_path, tiny_prior_path, fully_sampled_file,
                                                                     capfd):
    from mri_score.cfl import kspace_to_cfl, write_cfl

    ksp = read_fastmri(fully_sampled_file).kspace
    write_cfl(fully_sampled_file.with_suffix(""), kspace_to_cfl(ksp))  # vol_a.cfl beside vol_a.h5
    rc = main(_args(fully_sampled_file.parent, tmp_path / "o", tiny_prior_path))
    err = capfd.readouterr().err
    assert rc == 2 and "would both be written" in err and not (tmp_path / "o").exists()


def test_a_failed_export_leaves_nothing_behind(tmp_path, tiny_prior_path, fully_sampled_file, monkeypatch, capfd):
    from mri_score import export
    from mri_score.errors import InputError

    def broken(*a, **k):
        raise InputError("disk full (simulated)")

    monkeypatch.setattr(export, "write_dicom_series", broken)
    rc = main(_args(fully_sampled_file, tmp_path / "o", tiny_prior_path, "--export", "nifti,dicom"))
    assert rc == 2 and "disk full" in capfd.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


@pytest.mark.parametrize("args,phrase", [(["--export", "png"], "--export: unknown format 'png'"),
                                          (["--export", "nifti,jpeg"], "unknown format 'jpeg'")])
def test_bad_export_flag_is_one_line(tmp_path, tiny_prior_path, fully_sampled_file, capfd, args, phrase):
    rc = main(_args(fully_sampled_file, tmp_path / "o", tiny_prior_path, *args))
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and phrase in err[0]


def test_version_and_help_show_defaults_and_examples():
    out = subprocess.run([sys.executable, "-m", "mri_score.reconstruct", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120).stdout
    assert "examples:" in out and "(default: reconstructions)" in out and "--export" in out
    ver = subprocess.run([sys.executable, "-m", "mri_score.reconstruct", "--version"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert ver.returncode == 0 and ver.stdout.startswith("mri-score ")


def test_simulate_writes_the_sources_true_field_of_view(tmp_path):
    nib = pytest.importorskip("nibabel")
    from mri_score.simulate import main as simulate_main

    vol = np.random.default_rng(0).random((40, 48, 3)).astype(np.float32)
    nii = tmp_path / "src.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.9, 1.7, 4.0, 1.0])), str(nii))
    assert simulate_main(["--out", str(tmp_path / "a"), "--source", str(nii), "--coils", "2", "--slices", "2"]) == 0
    (out,) = (tmp_path / "a").iterdir()
    v = read_fastmri(out)
    assert np.allclose(v.pixel_mm, (0.9, 1.7)) and v.encoded_fov_mm[2] == pytest.approx(4.0)
    npy = tmp_path / "src.npy"
    np.save(npy, vol.transpose(2, 0, 1))
    assert simulate_main(["--out", str(tmp_path / "b"), "--source", str(npy), "--coils", "2", "--pixel-mm", "2.5",
                          "3"]) == 0
    assert np.allclose(read_fastmri(next((tmp_path / "b").iterdir())).pixel_mm, (2.5, 3.0))


def test_simulate_reads_a_dicom_series_folder_in_slice_order(tmp_path):
    pytest.importorskip("pydicom")
    from mri_score.export import write_dicom_series
    from mri_score.simulation import load_images

    vol = np.stack([np.full((24, 20), k + 1.0, np.float32) for k in range(4)])
    write_dicom_series(tmp_path / "series", vol, (1.25, 0.75), 3.0, "test")
    src = load_images(str(tmp_path / "series"), None)
    assert src.images.shape == (4, 24, 20) and src.pixel_mm == (1.25, 0.75) and src.slice_mm == 3.0
    assert np.allclose(src.images.real[:, 0, 0], [1, 2, 3, 4], atol=0.01)


@pytest.mark.parametrize("args,phrase", [(["--pixel-mm", "1", "1"], "is for a --source file"),
                                          (["--source", "x.npy", "--pixel-mm", "0", "1"], "--pixel-mm must be")])
def test_simulate_pixel_flag_bad_input_is_one_line(tmp_path, capfd, args, phrase):
    from mri_score.simulate import main as simulate_main

    rc = simulate_main(["--out", str(tmp_path / "o"), *args])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and phrase in err[0] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind,flag", [("radial", "--spokes"), ("spiral", "--interleaves")])
def test_simulate_writes_noncartesian_mrd_files(tmp_path, kind, flag):
    pytest.importorskip("ismrmrd")
    from mri_score.noncartesian import is_noncartesian_mrd, read_noncartesian_mrd
    from mri_score.simulate import main as simulate_main

    assert simulate_main(["--out", str(tmp_path), "--trajectory", kind, flag, "8", "--size", "48", "48", "--slices",
                          "1", "--coils", "3"]) == 0
    (path,) = tmp_path.iterdir()
    assert is_noncartesian_mrd(path)
    vol = read_noncartesian_mrd(path)
    assert vol.matrix == (48, 48) and vol.samples.shape[:2] == (1, 3) and vol.target is not None
    assert np.abs(vol.coords).max() <= 24.0


@pytest.mark.parametrize("args,phrase", [(["--trajectory", "radial", "--interleaves", "4"], "takes --spokes"),
                                          (["--trajectory", "spiral", "--accel", "4"], "no --accel"),
                                          (["--trajectory", "radial", "--spokes", "0"], "--spokes must be in")])
def test_simulate_trajectory_bad_input_is_one_line(tmp_path, capfd, args, phrase):
    from mri_score.simulate import main as simulate_main

    rc = simulate_main(["--out", str(tmp_path / "o"), *args])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and phrase in err[0] and not (tmp_path / "o").exists()


def test_reconstruct_takes_a_noncartesian_mrd_file(tmp_path, tiny_prior_path, capsys):
    pytest.importorskip("ismrmrd")
    from mri_score.simulate import main as simulate_main

    assert simulate_main(["--out", str(tmp_path / "in"), "--trajectory", "radial", "--spokes", "24", "--size", "32",
                          "32", "--slices", "2", "--coils", "3"]) == 0
    (src,) = (tmp_path / "in").iterdir()
    before = sha(src)
    assert main(["--kspace", str(src), "--out", str(tmp_path / "o"), "--prior", str(tiny_prior_path), "--steps", "2",
                 "--quiet", "--export", "nifti"]) == 0
    line = capsys.readouterr().out
    assert "radial trajectory" in line and "against the file's noise-free truth" in line
    with h5py.File(tmp_path / "o" / src.name) as hf:
        assert hf["reconstruction"].shape == (2, 32, 32) and hf["trajectory"].shape[1] == 2
        assert hf.attrs["trajectory"] == "radial" and "non-Cartesian" in hf.attrs["std_calibration"]
    assert (tmp_path / "o" / (src.stem + ".nii.gz")).is_file() and sha(src) == before
