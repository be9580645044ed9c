"""Test-time adaptation (mri_score.adapt, reconstruct --adapt): what it trains, determinism, that it fits, the CLI."""

import h5py
import numpy as np
import pytest
import torch

from mri_score.adapt import AdaptSettings, adapt_denoiser, adaptable_parameters
from mri_score.errors import InputError
from mri_score.losses import edm_loss
from mri_score.network import EDMDenoiser, complex_to_channels
from mri_score.pipeline import reconstruct_volume
from mri_score.reconstruct import main
from mri_score.request import ReconRequest
from mri_score.simulation import simulate_volume
from operators import make_mask
from tests.conftest import phantom


@pytest.fixture
def tiny_model(tiny_cfg):
    torch.manual_seed(0)
    model = EDMDenoiser(tiny_cfg).eval()
    with torch.no_grad():  # an untrained U-Net's zero-initialised output layer would pass no gradient upstream
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _images(n=2, size=32):
    return torch.from_numpy(phantom(size, n, seed=3)) / 1.0


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": 0}, "steps"), ({"steps": 10**6}, "steps"), ({"lr": 0.0}, "learning rate"), ({"lr": float("nan")}, "learning rate"),
    ({"batch": 0}, "batch"), ({"crop": 4}, "crop"), ({"sigma_min": 0.0}, "sigma_min"), ({"params": "all"}, "unknown adaptation"),
    ({"pilot_nfe": 0}, "pilot"),
])
def test_settings_are_validated(kwargs, message):
    with pytest.raises(InputError, match=message):
        AdaptSettings(**kwargs)


def test_norm_params_are_a_subset_of_bias_params_and_a_small_fraction(tiny_model):
    norm = {id(p) for p in adaptable_parameters(tiny_model, "norm")}
    bias = {id(p) for p in adaptable_parameters(tiny_model, "bias")}
    gn = [m for m in tiny_model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norm) == 2 * len(gn) and norm < bias
    total = sum(p.numel() for p in tiny_model.parameters())
    assert sum(p.numel() for p in adaptable_parameters(tiny_model, "bias")) < 0.2 * total


def test_only_the_chosen_parameters_change_and_the_input_model_is_untouched(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    adapted = adapt_denoiser(tiny_model, _images(), AdaptSettings(steps=3, params="norm", crop=32, batch=2), seed=0)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    norm_names = {n for n, m in adapted.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    changed = {k for k, v in adapted.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.rsplit(".", 1)[0] in norm_names for k in changed)
    assert not any(p.requires_grad for p in adapted.parameters())
    assert adapted.adapted["steps"] == 3 and adapted.adapted["params"] == "norm"


def test_deterministic_by_seed(tiny_model):
    s = AdaptSettings(steps=3, crop=32, batch=2)
    a, b = (adapt_denoiser(tiny_model, _images(), s, seed=1) for _ in range(2))
    c = adapt_denoiser(tiny_model, _images(), s, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_adaptation_lowers_the_denoising_loss_on_the_volume(tiny_model):
    """The point of it: after training, the network denoises the volume's own images better (same σ and noise)."""
    images = _images(2, 32)
    x = complex_to_channels(images).float()
    prec = {"device_type": "cpu", "dtype": torch.float32, "enabled": False}

    def loss(model):
        with torch.no_grad():
            return float(edm_loss(model, x, torch.Generator().manual_seed(7), -1.0, 0.5, model.sigma_data, prec,
                                  sigma_min=0.1))

    adapted = adapt_denoiser(tiny_model, images, AdaptSettings(steps=60, lr=1e-2, crop=32, batch=2), seed=0)
    assert loss(adapted) < 0.9 * loss(tiny_model)


def test_sigma_min_clamps_the_noise_levels():
    """edm_loss with sigma_min: a model that returns σ shows every σ it was given is >= sigma_min."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x, sigma):
            seen.append(sigma.clone())
            return x

    x = torch.zeros(64, 2, 4, 4)
    edm_loss(Probe(), x, torch.Generator().manual_seed(0), -3.0, 1.0, 0.5,
             {"device_type": "cpu", "dtype": torch.float32, "enabled": False}, sigma_min=0.2)
    assert seen[0].min() >= 0.2 and (seen[0] == 0.2).any()


def test_reconstruct_volume_with_adaptation_counts_the_pilot(tiny_model):
    imgs = phantom(32, 2)
    ksp, _, _ = simulate_volume(imgs, coils=4, snr=100.0, seed=0)
    mask, _ = make_mask("equispaced", 4.0, 0.25, ksp.shape[-2:], "v.h5")
    under = (ksp * mask).astype(np.complex64)
    st = ReconRequest(sampler="dds", steps=4, samples=1, seed=0)
    plain = reconstruct_volume(under, mask, tiny_model, st)
    ad = AdaptSettings(steps=2, crop=32, batch=2)
    r1 = reconstruct_volume(under, mask, tiny_model, st.replace(adapt=ad))
    r2 = reconstruct_volume(under, mask, tiny_model, st.replace(adapt=ad))
    assert r1.nfe == [4 + 2, 4 + 2] and plain.nfe == [4, 4]
    assert r1.adapted["pilot_nfe_per_slice"] == 2 and np.array_equal(r1.image, r2.image)
    assert not np.array_equal(r1.image, plain.image)


def test_adaptation_trains_on_the_grid_the_final_pass_samples_at(tiny_model, monkeypatch):
    """With ``grid_factor`` F the pilot means are Fourier-resampled (values kept) to the fine grid before adapting."""
    from mri_score import pipeline
    from operators import fourier_resample

    seen = []

    def spy(model, images, settings, seed=0):
        seen.append(images.clone())
        return adapt_denoiser(model, images, settings, seed=seed)

    monkeypatch.setattr(pipeline, "adapt_denoiser", spy)
    imgs = phantom(32, 2)
    ksp, _, _ = simulate_volume(imgs, coils=4, snr=100.0, seed=0)
    mask, _ = make_mask("equispaced", 4.0, 0.25, ksp.shape[-2:], "v.h5")
    under = (ksp * mask).astype(np.complex64)
    ad = AdaptSettings(steps=1, crop=32, batch=2)
    native = reconstruct_volume(under, mask, tiny_model, ReconRequest(steps=2, samples=1, grid="native", adapt=ad))
    fine = reconstruct_volume(under, mask, tiny_model, ReconRequest(steps=2, samples=1, grid=1.5, adapt=ad))
    assert tuple(seen[0].shape[-2:]) == (32, 32) and tuple(seen[1].shape[-2:]) == (48, 48)
    assert fine.image.shape == native.image.shape
    # exactly the pilot's means in prior units, resampled (the pilot: half the NFE, K = 1, same seed and grid)
    pilot = reconstruct_volume(under, mask, tiny_model, ReconRequest(steps=1, samples=1, grid=1.5))
    expected = fourier_resample(torch.stack([m / c.scale for m, c in zip(pilot.means, pilot.calibrations)]), (48, 48))
    assert torch.allclose(seen[1], expected, atol=1e-5)


def test_cli_adapt_writes_its_record(tmp_path, fully_sampled_file, tiny_prior_path):
    out = tmp_path / "out"
    rc = main(["--kspace", str(fully_sampled_file), "--out", str(out), "--prior", str(tiny_prior_path), "--steps", "2",
               "--center-fraction", "0.25", "--adapt", "--adapt-steps", "2", "--adapt-params", "norm"])
    assert rc == 0
    with h5py.File(out / fully_sampled_file.name) as hf:
        assert '"steps": 2' in hf.attrs["adapt"] and '"params": "norm"' in hf.attrs["adapt"]
        assert hf.attrs["nfe_per_slice"] == 3


@pytest.mark.parametrize("args,message", [
    (["--adapt-steps", "3"], "--adapt-steps given without --adapt"),
    (["--adapt", "--adapt-steps", "0"], "--adapt: adaptation steps"),
    (["--adapt", "--adapt-sigma-min", "-1"], "--adapt: adaptation sigma_min"),
    (["--adapt", "--guidance", "2"], "--adapt cannot be combined"),
])
def test_cli_adapt_bad_flags_one_line_exit_2(tmp_path, fully_sampled_file, tiny_prior_path, capsys, args, message):
    rc = main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / "o"), "--prior", str(tiny_prior_path),
               "--steps", "2", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("module", ["benchmarks.run_adapt_check", "benchmarks.run_grid_check",
                                    "benchmarks.run_grid_tuning", "benchmarks.run_calibration_probe",
                                    "benchmarks.run_speed_tuning"])
def test_check_scripts_refuse_bad_flags_in_one_line(module, capsys):
    import importlib

    rc = importlib.import_module(module).main(["--slices", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--slices must be in [1, " in err[0]


def test_adapt_check_refuses_a_bad_sample_count_in_one_line(capsys):
    from benchmarks.run_adapt_check import main as check_main

    rc = check_main(["--samples", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--samples must be in [1, " in err[0]


@pytest.mark.parametrize("argv,message", [
    (["--case", "3.75"], "--case must be PIXEL_MM:MATRIX"), (["--case", "a:b"], "--case must be PIXEL_MM:MATRIX"),
    (["--case", "0:64"], "--case needs 0 < PIXEL_MM"), (["--case", "3:8"], "MATRIX in [32, 512]"),
    (["--threads", "0"], "--threads"), (["--factor", "5"], "--factor must be auto or a number in [1, 4]"),
    (["--factor", "x"], "--factor must be auto"), (["--source", "fastmri"], "--source"),
])
def test_grid_tuning_refuses_bad_flags_in_one_line(argv, message, capsys):
    from benchmarks.run_grid_tuning import main as tuning_main

    rc = tuning_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]


@pytest.mark.parametrize("argv,message", [(["--windows", "2"], "--windows must be odd"),
                                          (["--windows", "x"], "--windows must be comma-separated"),
                                          (["--volumes", "0"], "--volumes must be in")])
def test_calibration_probe_refuses_bad_flags_in_one_line(argv, message, capsys):
    from benchmarks.run_calibration_probe import main as probe_main

    rc = probe_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]


@pytest.mark.parametrize("argv,message", [
    (["--variant", "sigma_max=1"], "names no nfe=N"), (["--variant", "nfe=x"], "nfe must be an integer"),
    (["--variant", "nfe=24,sigma_max"], "must look like key=value"), (["--variant", "nfe=0"], "nfe must be in"),
    (["--variant", "nfe=24,sigma_maks=1"], "unknown dds option sigma_maks"),
    (["--variant", "nfe=24,sigma_max=0.001"], "sigma_max must be > sigma_min"),
    (["--l1-lam", "4:0.003"], "gives no positive λ for the 8x random setting"),
    (["--l1-lam", "4=1"], "--l1-lam must look like"), (["--volumes", "0"], "--volumes must be in"),
])
def test_speed_tuning_refuses_bad_flags_in_one_line(argv, message, capsys):
    from benchmarks.run_speed_tuning import main as speed_main

    rc = speed_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err


def test_grid_tuning_domain_random_volumes_are_seeded_at_the_cases_pixel_size():
    from benchmarks.run_grid_tuning import case_volumes

    first = case_volumes("domain_random", 2.0, 64, 2)
    again = case_volumes("domain_random", 2.0, 64, 2)
    assert len(first) == 3 and all(v[2].shape == (2, 64, 64) and v[2].dtype == np.complex64 for v in first)
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(first, again))  # the generator's indexed test stream
    assert not np.array_equal(first[0][2], first[1][2])  # three different volumes
    assert {f for v in first for f in v[1].split("/")} <= {"brain", "body"}
    corpus = case_volumes("corpus", 2.0, 64, 1)
    assert [v[:2] for v in corpus] == [(30, "pd"), (31, "flair"), (32, "t1")]  # the protocol's tuning subjects
