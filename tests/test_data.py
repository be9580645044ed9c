import h5py
import numpy as np
import pytest
import torch

from mri_score.data.corpus import FAMILIES, SyntheticBrainCorpus, load_template, slab_positions
from mri_score.data.datasets import fastmri_pool
from mri_score.fastmri_io import read_fastmri, write_fastmri_file
from mri_score.simulate import main as simulate_main
from mri_score.simulation import simulate_volume
from operators import ifft2c, rss
from tests.conftest import phantom


def test_corpus_deterministic_by_seed():
    a = SyntheticBrainCorpus("train", seed=3).generate(11, shape=(64, 64))[0]
    b = SyntheticBrainCorpus("train", seed=3).generate(11, shape=(64, 64))[0]
    c = SyntheticBrainCorpus("train", seed=4).generate(11, shape=(64, 64))[0]
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_train_and_test_slabs_are_disjoint_with_guard():
    tpl = load_template()
    for extent in tpl.extent:
        train = set(slab_positions(extent, "train").tolist())
        test = set(slab_positions(extent, "test").tolist())
        assert train and test and not (train & test)
        assert min(abs(a - b) for a in test for b in train) >= 4  # two 2 mm guards
    tr = SyntheticBrainCorpus("train", seed=0)
    te = SyntheticBrainCorpus("test", seed=0)
    assert not np.array_equal(tr.generate(0, shape=(64, 64))[0], te.generate(0, shape=(64, 64))[0])


def test_contrast_ordering_varies_and_values_finite():
    corpus = SyntheticBrainCorpus("train", families=FAMILIES, seed=0)
    orders = set()
    for i in range(12):
        img, info = corpus.generate(i, shape=(64, 64))
        assert img.dtype == np.complex64 and np.isfinite(img).all()
        csf, gm, wm = info.intensities[:3]
        orders.add(tuple(np.argsort([csf, gm, wm])))
    assert len(orders) >= 3


def test_held_out_family_never_drawn():
    corpus = SyntheticBrainCorpus("train", families=("t1", "t2"), seed=0)
    fams = {corpus.generate(i, shape=(48, 48))[1].family for i in range(10)}
    assert fams <= {"t1", "t2"}


def test_bad_corpus_arguments():
    with pytest.raises(ValueError):
        SyntheticBrainCorpus("val")
    with pytest.raises(ValueError):
        SyntheticBrainCorpus(families=("t3",))


def test_simulated_file_round_trip_and_rss_within_noise(tmp_path):
    imgs = phantom(64, 2)
    ksp, target, sigma = simulate_volume(imgs, coils=6, snr=40.0, seed=0)
    path = write_fastmri_file(tmp_path / "sim.h5", ksp, target, "SYN", "p1")
    vol = read_fastmri(path)
    assert vol.kspace.shape == (2, 6, 64, 64) and np.allclose(vol.kspace, ksp)
    assert np.allclose(vol.target, target) and vol.attrs["max"] == pytest.approx(target.max())
    full = rss(ifft2c(torch.from_numpy(vol.kspace)), dim=1).numpy()
    assert np.allclose(full, target, atol=1e-5)
    # the RSS of the noisy data equals the clean magnitude to within the noise
    err = np.abs(target - np.abs(imgs))
    assert np.sqrt(np.mean(err**2)) < 3 * sigma


def test_simulate_cli_test_split(tmp_path):
    rc = simulate_main(["--out", str(tmp_path), "--slices", "1", "--size", "64", "64", "--coils", "4",
                        "--accel", "4", "--mask-type", "random"])
    assert rc == 0
    (f,) = list(tmp_path.glob("*.h5"))
    with h5py.File(f) as hf:
        assert "reconstruction_rss" not in hf and hf.attrs["acceleration"] == 4
        assert hf["mask"].shape == (64,) and hf.attrs["num_low_frequency"] == round(64 * 0.08)
    vol = read_fastmri(f)
    assert vol.is_undersampled


@pytest.mark.parametrize("args", [["--accel", "0.5"], ["--coils", "0"], ["--source", "missing.nii"],
                                  ["--size", "8", "8"], ["--family", "t9"]])
def test_simulate_bad_arguments_exit_2(tmp_path, capsys, args):
    rc = simulate_main(["--out", str(tmp_path), "--slices", "1", "--size", "64", "64", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:")


def test_fastmri_train_directory_feeds_the_reader(tmp_path):
    for i in range(2):
        ksp, target, _ = simulate_volume(phantom(64, 2, seed=i), coils=4, snr=80.0, seed=i)
        write_fastmri_file(tmp_path / f"train_{i}.h5", ksp, target, "SYN", f"p{i}")
    pool = fastmri_pool(tmp_path, crop=32)
    assert len(pool) == 4
    batch = pool.batch(5, torch.Generator().manual_seed(0))
    assert batch.shape == (5, 2, 32, 32) and torch.isfinite(batch).all()
    mags = fastmri_pool(tmp_path, crop=32, target="magnitude")
    assert len(mags) == 4
