"""The volume loop every caller shares: CLI, benchmarks and library give the same reconstruction."""

import h5py
import numpy as np
import torch

from mri_score.calibration import calibrate
from mri_score.fastmri_io import read_fastmri
from mri_score.pipeline import reconstruct_volume, undersampling_mask
from mri_score.posterior import reconstruct_slice
from mri_score.prior import load_prior
from mri_score.reconstruct import main as reconstruct_main
from mri_score.request import ReconRequest
from mri_score.resolution import auto_grid_factor, prior_pixel_range
from mri_score.simulation import simulate_volume
from operators import make_mask
from tests.conftest import phantom


def _volume(slices=2, n=64):
    ksp, _, _ = simulate_volume(phantom(n, slices), coils=4, snr=100.0, seed=3)
    mask, _ = make_mask("equispaced", 4.0, 0.25, (n, n), "vol.h5")
    return ksp, mask


def test_volume_is_slices_with_seed_plus_index_and_shared_calibrations(tiny_prior_path):
    prior = load_prior(tiny_prior_path)
    ksp, mask = _volume()
    settings = ReconRequest(sampler="dds", steps=2, samples=2, seed=5, grid="native")  # bit-exact: native grid
    vol = reconstruct_volume(ksp, mask, prior, settings)
    for i in range(2):
        one = reconstruct_slice(torch.from_numpy(ksp[i]), torch.from_numpy(mask), prior,
                                ReconRequest(sampler="dds", steps=2, samples=2, seed=5 + i, grid="native"))
        assert np.array_equal(vol.image[i], one.image.numpy()) and np.array_equal(vol.std[i], one.std.numpy())
    # handing in the calibrations (as the benchmark does, computed once per slice) changes nothing
    cals = [calibrate(torch.from_numpy(ksp[i] * mask), torch.from_numpy(mask)) for i in range(2)]
    again = reconstruct_volume(ksp, mask, prior, settings, calibrations=cals)
    assert np.array_equal(again.image, vol.image) and again.nfe == [2, 2]
    assert [c.scale for c in again.calibrations] == [c.scale for c in cals]


def test_unsampled_kspace_never_reaches_the_reconstruction(tiny_prior_path):
    prior = load_prior(tiny_prior_path)
    ksp, mask = _volume(slices=1)
    settings = ReconRequest(sampler="dds", steps=2, samples=1, seed=0)
    a = reconstruct_volume(ksp, mask, prior, settings)
    junk = ksp + (1 - mask) * 1e3  # garbage wherever the mask is 0
    b = reconstruct_volume(junk.astype(np.complex64), mask, prior, settings)
    assert np.array_equal(a.image, b.image)
    assert a.calibrations[0].sigma_y == b.calibrations[0].sigma_y


def test_cli_writes_what_reconstruct_volume_returns(tmp_path, fully_sampled_file, tiny_prior_path):
    rc = reconstruct_main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / "o"), "--prior",
                           str(tiny_prior_path), "--steps", "2", "--center-fraction", "0.25", "--seed", "4"])
    assert rc == 0
    vol = read_fastmri(fully_sampled_file)
    mask, _, _ = undersampling_mask(vol, ReconRequest(center_fraction=0.25))
    prior = load_prior(tiny_prior_path)
    # the default grid is auto: this file's header says 4 mm pixels, outside the prior's trained range
    factor = auto_grid_factor(vol.pixel_mm, prior_pixel_range(prior.meta))
    assert factor > 1
    res = reconstruct_volume(vol.kspace, mask, prior, ReconRequest(sampler="dds", steps=2, seed=4, grid=factor))
    with h5py.File(tmp_path / "o" / fully_sampled_file.name) as hf:
        assert hf.attrs["grid_factor"] == factor
        assert np.array_equal(hf["reconstruction"][()], res.image)
        assert np.array_equal(hf["reconstruction_std"][()], res.std)
        assert np.array_equal(hf["mask"][()], mask)


def test_virtual_coils_request_field_and_its_cartesian_refusal(tmp_path, fully_sampled_file, tiny_prior_path, capsys):
    import pytest

    from mri_score.errors import InputError
    from mri_score.request import RequestError
    from mri_score.uncertainty import settings_key

    assert ReconRequest().virtual_coils == "auto" and ReconRequest(virtual_coils=" ALL ").virtual_coils == "all"
    assert ReconRequest(virtual_coils="6").virtual_coils == 6
    for bad in (0, -1, "two", 2.5, True, 5000):
        with pytest.raises(RequestError, match="virtual_coils must be auto, all or a number of coils"):
            ReconRequest(virtual_coils=bad)
    # Cartesian std keys ignore it (Cartesian data keep every coil; the non-Cartesian key names the count used)
    assert settings_key(ReconRequest()) == settings_key(ReconRequest(virtual_coils="all")) == "dds@v3/nfe=24/K=2/sense"
    # Cartesian data keep every coil: a count is refused in one line, auto and all run
    prior = load_prior(tiny_prior_path)
    ksp, mask = _volume(slices=1)
    with pytest.raises(InputError, match="virtual coils \\(3\\) apply to radial and spiral data only"):
        reconstruct_volume(ksp, mask, prior, ReconRequest(steps=2, samples=1, virtual_coils=3))
    a = reconstruct_volume(ksp, mask, prior, ReconRequest(steps=2, samples=1, grid="native"))
    b = reconstruct_volume(ksp, mask, prior, ReconRequest(steps=2, samples=1, grid="native", virtual_coils="all"))
    assert np.array_equal(a.image, b.image)
    # the flag: a bad value is one line naming it, exit 2, nothing written
    out = tmp_path / "o"
    assert reconstruct_main(["--kspace", str(fully_sampled_file), "--out", str(out), "--prior", str(tiny_prior_path),
                             "--virtual-coils", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--virtual-coils" in err[0] and not out.exists()
    assert reconstruct_main(["--kspace", str(fully_sampled_file), "--out", str(out), "--prior", str(tiny_prior_path),
                             "--steps", "2", "--center-fraction", "0.25", "--virtual-coils", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "radial and spiral data only" in err[0] and fully_sampled_file.name in err[0]
