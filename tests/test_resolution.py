"""Resolution matching (reconstruction on a finer grid, data consistency on the measured one) and the γ rules."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mri_score import posterior
from mri_score.calibration import calibrate
from mri_score.errors import InputError
from mri_score.fastmri_io import build_ismrmrd_header, parse_ismrmrd_header, read_fastmri, write_fastmri_file
from mri_score.likelihood import GaussianKspaceLikelihood
from mri_score.posterior import reconstruct_slice
from mri_score.prior import load_prior
from mri_score.request import ReconRequest
from mri_score.resolution import (
    DEFAULT_PRIOR_PIXEL_MM,
    LOW_ACCEL_MAX,
    MAX_GRID_FACTOR,
    SOURCE_PIXEL_MM,
    acquisition_grid_factor,
    auto_grid_factor,
    fine_shape,
    mask_acceleration,
    prior_pixel_range,
)
from mri_score.samplers import SamplerResult, sampler_config
from mri_score.samplers.dds import discrepancy_gamma
from mri_score.simulation import simulate_volume
from operators import Sense, fft2c, make_mask
from tests.conftest import phantom


def test_prior_pixel_range_from_metadata_with_the_round_one_default():
    assert prior_pixel_range(None) == DEFAULT_PRIOR_PIXEL_MM == (0.8, 1.5)
    assert prior_pixel_range({"config": {}}) == (0.8, 1.5)
    assert prior_pixel_range({"pixel_mm": [0.5, 3.0]}) == (0.5, 3.0)
    assert prior_pixel_range({"config": {"data": {"pixel_mm": [0.6, 1.0]}}}) == (0.6, 1.0)
    for bad in ([2.0], [1.5, 0.8], "wide", [0, 1]):
        with pytest.raises(InputError, match="pixel_mm"):
            prior_pixel_range({"pixel_mm": bad})


def test_prior_pixel_range_of_a_blend_spans_its_weighted_parts():
    data = {"source": "blend", "blend": {"mixed": 0.5, "domain_random": 0.5, "synthetic": 0.0},
            "mixed": {"pixel_mm": [0.7, 3.0]}, "domain_random": {"pixel_mm": [0.5, 2.0]}, "synthetic": {"pixel_mm": [0.1, 9]}}
    assert prior_pixel_range({"config": {"data": data}}) == (0.5, 3.0)  # the span of both; the zero-weight part unused
    assert prior_pixel_range({"config": {"data": {**data, "blend": {"mixed": 1.0}}}}) == (0.7, 3.0)
    # a part without its own range draws its source's default (what build_source uses)
    assert prior_pixel_range({"config": {"data": {"source": "blend", "blend": {"mixed": 1.0}}}}) == SOURCE_PIXEL_MM["mixed"]
    assert prior_pixel_range({"config": {"data": {"source": "blend", "blend": {"synthetic": 1.0, "domain_random": 1.0},
                                                  "synthetic": {"pixel_mm": [0.4, 1.0]}}}}) == (0.4, 3.0)
    with pytest.raises(InputError, match="pixel_mm"):
        prior_pixel_range({"config": {"data": {**data, "mixed": {"pixel_mm": [2.0, 1.0]}}}})
    from mri_score.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "prior_blend_dr.yaml")
    assert prior_pixel_range({"config": cfg}) == (0.5, 3.0)  # the shipped recipe's span, not the 0.8-1.5 default


@pytest.mark.parametrize("pixel,expected", [
    (None, 1.0), (1.2, 1.0), (1.5, 1.0), (0.4, 1.0), (2.0, 1.5), (3.75, 2.5), ((2.0, 1.0), 1.5), ((1.0, 2.0), 1.5),
    (2.25, 1.5), (2.26, 2.0), (30.0, MAX_GRID_FACTOR), (float("nan"), 1.0),
])
def test_auto_grid_factor_rule(pixel, expected):
    assert auto_grid_factor(pixel, (0.8, 1.5)) == expected


@pytest.mark.parametrize("pixel", np.linspace(0.3, 5.9, 57))
def test_auto_grid_factor_is_the_smallest_half_integer_into_the_range(pixel):
    lo, hi = 0.8, 1.5
    f = auto_grid_factor(float(pixel), (lo, hi))
    assert f >= 1.0 and (2 * f).is_integer()
    if pixel > hi:
        assert pixel / f <= hi + 1e-9 and pixel / f >= lo  # inside the range
        assert f == 1.5 or pixel / (f - 0.5) > hi  # and no smaller half-integer gets there
    else:
        assert f == 1.0


def test_header_field_of_view_gives_the_pixel_size(tmp_path):
    meta = parse_ismrmrd_header(build_ismrmrd_header((128, 96, 1), (128, 96, 1), fov_mm=(256.0, 192.0, 5.0)))
    assert meta["encoded_fov_mm"] == (256.0, 192.0, 5.0)
    xml = build_ismrmrd_header((64, 64, 1), (64, 64, 1)).decode()
    no_fov = xml.replace("<fieldOfView_mm><x>256.0</x><y>256.0</y><z>5.0</z></fieldOfView_mm>", "", 1)
    assert parse_ismrmrd_header(no_fov)["encoded_fov_mm"] is None
    ksp, target, _ = simulate_volume(phantom(64, 1), coils=2, snr=100.0, seed=0)
    path = write_fastmri_file(tmp_path / "v.h5", ksp, target, "SYN", "p0")
    vol = read_fastmri(path)
    assert vol.pixel_mm == (4.0, 4.0)  # the writer's default header: 256 mm over 64
    assert auto_grid_factor(vol.pixel_mm, (0.8, 1.5)) == 3.0
    with h5py.File(path, "r+") as hf:
        del hf["ismrmrd_header"]
        hf["ismrmrd_header"] = np.bytes_(no_fov)
    assert read_fastmri(path).pixel_mm is None


def _single_coil_slice(n=32, accel=2.0):
    imgs = phantom(n, 1)
    ksp, _, _ = simulate_volume(imgs, coils=1, snr=200.0, seed=3)
    mask, _ = make_mask("equispaced", accel, 0.25, (n, n), "x.h5")
    return torch.from_numpy(ksp[0] * mask), torch.from_numpy(mask)


def test_fine_grid_with_a_pass_through_sampler_returns_the_native_result(monkeypatch, tiny_prior_path):
    """Aᴴy on the 2x grid, scaled back and returned through k-space, is exactly the native Aᴴy (single coil).

    The sampler sees the fine-grid start at the prior's intensity scale (same 99th percentile as native).
    """
    seen = {}

    def passthrough(prior, likelihoods, x_init, gen, nfe, config):
        seen.setdefault("x", []).append(x_init.clone())
        return SamplerResult(samples=x_init, nfe=nfe)

    monkeypatch.setitem(posterior.SAMPLERS, "dds", passthrough)
    ks, mask = _single_coil_slice()
    prior = load_prior(tiny_prior_path)
    native = reconstruct_slice(ks, mask, prior, ReconRequest(steps=2, samples=1, magnitude="sense", grid="native"))
    fine = reconstruct_slice(ks, mask, prior, ReconRequest(steps=2, samples=1, magnitude="sense", grid=2))
    x_native, x_fine = seen["x"]
    assert x_native.shape[-2:] == (32, 32) and x_fine.shape[-2:] == (64, 64)
    q = [float(torch.quantile(x.abs().flatten(), 0.99)) for x in (x_native, x_fine)]
    assert q[1] == pytest.approx(q[0], rel=0.1)
    assert fine.mean.shape == native.mean.shape == (32, 32)
    assert torch.allclose(fine.mean, native.mean, atol=1e-5 * float(native.mean.abs().max()))


@pytest.mark.parametrize("factor", [2.0, 1.5])
def test_grid_matched_reconstruction_is_data_consistent_on_the_measured_grid(tiny_prior_path, factor):
    ks, mask = _single_coil_slice()
    prior = load_prior(tiny_prior_path)
    settings = ReconRequest(steps=3, samples=2, magnitude="sense", grid=factor,
                               options={"gamma": 1e5, "cg_iters": 4})
    res = reconstruct_slice(ks, mask, prior, settings)
    assert res.image.shape == res.mean.shape == res.std.shape == (32, 32)
    resid = fft2c(res.mean[None]) * mask - ks
    assert float(resid.abs().norm() / ks.abs().norm()) < 1e-3


def test_grid_factor_multicoil_shapes_and_validation(tiny_prior_path):
    imgs = phantom(32, 1)
    ksp, _, _ = simulate_volume(imgs, coils=4, snr=100.0, seed=2)
    mask, _ = make_mask("equispaced", 2.0, 0.25, (32, 32), "y.h5")
    res = reconstruct_slice(torch.from_numpy(ksp[0] * mask), torch.from_numpy(mask), load_prior(tiny_prior_path),
                            ReconRequest(steps=2, samples=1, grid=1.5))
    assert res.image.shape == (32, 32) and torch.isfinite(res.image).all()
    assert fine_shape((32, 30), 1.5) == (48, 45)
    for bad in (0.5, float("nan"), 9.0, "x"):
        with pytest.raises(InputError, match="grid must be native, auto or a factor"):
            ReconRequest(grid=bad)


def test_discrepancy_rule_recovers_the_error_variance_of_a_gaussian_estimate():
    """x̂ = x + e (complex variance 2r²), y = A x + n: the rule returns 2r̂² ≈ 2r² and γ ≈ 2r²/σ_y²."""
    g = torch.Generator().manual_seed(0)
    h, w, coils = 64, 48, 4
    maps = torch.randn(coils, h, w, dtype=torch.complex128, generator=g)
    maps = maps / maps.abs().square().sum(0, keepdim=True).sqrt()
    mask = (torch.rand(w, generator=g) < 0.3).double()
    for fine in (None, (96, 72)):
        op = Sense(maps if fine is None else torch.randn(coils, *fine, dtype=torch.complex128, generator=g) / 2,
                   mask, kspace_shape=None if fine is None else (h, w))
        x = torch.randn(*op.image_shape, dtype=torch.complex128, generator=g)
        sigma_y, r2x2 = 0.05, 0.02  # complex variances: noise σ_y², estimate error 2r²
        noise = torch.randn(coils, h, w, dtype=torch.complex128, generator=g) * sigma_y  # E|n|² = σ_y²
        y = op(x) + noise * mask
        term = GaussianKspaceLikelihood(op, y, sigma_y)
        est = x + torch.randn(8, *op.image_shape, dtype=torch.complex128, generator=g) * r2x2**0.5
        assert term.error_variance(est) == pytest.approx(r2x2, rel=0.05)
        assert discrepancy_gamma(term, est, 1.0, 1e-6, 1e9) == pytest.approx(r2x2 / sigma_y**2, rel=0.05)
        assert term.error_variance(x[None]) < 0.05 * r2x2  # the truth: only noise left, weight at its floor
        assert discrepancy_gamma(term, x[None], 1.0, 1.0, 1e4) == 1.0


def test_gamma_rule_option_is_typed_validated_and_runs(tiny_prior_path):
    assert sampler_config("dds", {"gamma_rule": "discrepancy"}).gamma_rule == "discrepancy"
    assert sampler_config("dds", {}).gamma_rule == "noise"
    with pytest.raises(InputError, match="gamma_rule must be one of noise, discrepancy"):
        sampler_config("dds", {"gamma_rule": "oracle"})
    with pytest.raises(InputError, match="gamma_rule"):
        sampler_config("dds", {"gamma_rule": 3})
    imgs = phantom(32, 1)
    ksp, _, _ = simulate_volume(imgs, coils=4, snr=100.0, seed=2)
    mask, _ = make_mask("equispaced", 2.0, 0.25, (32, 32), "y.h5")
    ks, m = torch.from_numpy(ksp[0] * mask), torch.from_numpy(mask)
    cal = calibrate(ks, m)
    outs = [reconstruct_slice(ks, m, load_prior(tiny_prior_path), ReconRequest(
        steps=3, samples=1, options={"gamma_rule": rule}), calibration=cal).image for rule in ("noise", "discrepancy")]
    assert all(torch.isfinite(o).all() for o in outs) and not torch.equal(*outs)


def test_auto_grid_refines_low_acceleration_masks_on_matrices_up_to_256():
    """The measured rule: 2x below 5.66x acceleration (4x equispaced yes, 8x random no), matrices up to 128²."""
    four, _ = make_mask("equispaced", 4.0, 0.08, (128, 128), "a.h5")
    eight, _ = make_mask("random", 8.0, 0.08, (128, 128), "a.h5")
    assert 3.0 < mask_acceleration(four) < LOW_ACCEL_MAX < mask_acceleration(eight)  # ACS lines included
    assert mask_acceleration(torch.from_numpy(four)) == mask_acceleration(four)
    assert mask_acceleration(np.zeros(8)) is None and mask_acceleration(None) is None
    assert acquisition_grid_factor(mask_acceleration(four), (128, 128)) == 2.0
    assert acquisition_grid_factor(mask_acceleration(eight), (128, 128)) == 1.0
    assert acquisition_grid_factor(4.0, (128, 96)) == 2.0 and acquisition_grid_factor(4.0, (192, 192)) == 1.0
    assert acquisition_grid_factor(None, (64, 64)) == 1.0 and acquisition_grid_factor(4.0, None) == 1.0
    meta = {"pixel_mm": [0.5, 3.0]}
    auto = ReconRequest(grid="auto")
    assert auto.for_pixels((1.0, 1.0), meta, four, (128, 128)).grid_factor == 2.0
    assert auto.for_pixels((1.0, 1.0), meta, eight, (128, 128)).grid == "native"
    assert auto.for_pixels((1.0, 1.0), meta).grid == "native"  # no mask: the pixel rule alone
    assert auto.for_pixels((9.0, 9.0), meta, four, (128, 128)).grid_factor == 3.0  # the larger of the two rules
    assert auto.for_pixels((9.0, 9.0), meta, eight, (64, 64)).grid_factor == 3.0
    assert ReconRequest(grid="native").for_pixels((1.0, 1.0), meta, four, (128, 128)).grid == "native"
    assert ReconRequest(grid=1.5).for_pixels((1.0, 1.0), meta, four, (128, 128)).grid_factor == 1.5


def test_auto_grid_refines_trajectories_from_the_tuned_coverage_on_matrices_up_to_128(monkeypatch):
    """The trajectory rule: 2x from TRAJECTORY_GRID_MIN_COVERAGE up, matrices up to 128²; none without a threshold."""
    from mri_score import resolution

    meta = {"pixel_mm": [0.5, 3.0]}
    auto = ReconRequest(grid="auto")
    monkeypatch.setattr(resolution, "TRAJECTORY_GRID_MIN_COVERAGE", 0.3)
    assert [resolution.trajectory_grid_factor(c, (128, 128)) for c in (0.1, 0.29, 0.3, 0.9)] == [1.0, 1.0, 2.0, 2.0]
    assert resolution.trajectory_grid_factor(0.9, (192, 192)) == 1.0
    assert resolution.trajectory_grid_factor(None, (64, 64)) == 1.0 == resolution.trajectory_grid_factor(0.9, None)
    assert resolution.trajectory_grid_factor(float("nan"), (64, 64)) == 1.0
    assert auto.for_pixels((1.0, 1.0), meta, matrix=(128, 128), coverage=0.5).grid_factor == 2.0
    assert auto.for_pixels((1.0, 1.0), meta, matrix=(128, 128), coverage=0.2).grid == "native"
    assert auto.for_pixels((9.0, 9.0), meta, matrix=(64, 64), coverage=0.5).grid_factor == 3.0  # the largest rule
    assert ReconRequest(grid="native").for_pixels((1.0, 1.0), meta, matrix=(128, 128), coverage=0.5).grid == "native"
    monkeypatch.setattr(resolution, "TRAJECTORY_GRID_MIN_COVERAGE", None)
    assert resolution.trajectory_grid_factor(1.0, (64, 64)) == 1.0


def test_final_gamma_rule_applies_the_discrepancy_weight_at_the_last_step_only(tiny_prior_path, monkeypatch):
    from mri_score.samplers import dds

    assert sampler_config("dds", {}).final_gamma_rule == "same"
    with pytest.raises(InputError, match="final_gamma_rule must be one of same, noise, discrepancy"):
        sampler_config("dds", {"final_gamma_rule": "last"})
    imgs = phantom(32, 1)
    ksp, _, _ = simulate_volume(imgs, coils=4, snr=100.0, seed=2)
    mask, _ = make_mask("equispaced", 2.0, 0.25, (32, 32), "y.h5")
    ks, m = torch.from_numpy(ksp[0] * mask), torch.from_numpy(mask)
    cal = calibrate(ks, m)
    calls: list[int] = []
    real = dds.discrepancy_gamma

    def counted(*args, **kwargs):  # the weight it returns is the last step's: 1e4 makes it visible
        calls.append(1)
        real(*args, **kwargs)
        return 1e4

    monkeypatch.setattr(dds, "discrepancy_gamma", counted)
    out = {}
    for options, expected_calls in (({}, 0), ({"final_gamma_rule": "discrepancy"}, 1),
                                    ({"gamma_rule": "discrepancy"}, 4), ({"final_gamma_rule": "noise"}, 0)):
        calls.clear()
        out[str(options)] = reconstruct_slice(ks, m, load_prior(tiny_prior_path), ReconRequest(
            steps=4, samples=1, seed=3, options=options), calibration=cal).image
        assert len(calls) == expected_calls, options
    assert torch.equal(out["{}"], out[str({"final_gamma_rule": "noise"})])  # "noise" at the end is the default
    assert not torch.equal(out["{}"], out[str({"final_gamma_rule": "discrepancy"})])  # its weight was used


@pytest.mark.parametrize("value", ["fine", "0.5", "nan", "inf", "9", ""])
def test_cli_bad_grid_is_one_line_exit_2(tmp_path, fully_sampled_file, tiny_prior_path, capsys, value):
    from mri_score.reconstruct import main

    rc = main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / "o"), "--prior", str(tiny_prior_path),
               "--grid", value])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--grid must be native, auto or a factor in [1, 4]" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("grid,factor", [("auto", 3.0), ("native", 1.0), ("1.5", 1.5)])
def test_cli_grid_is_resolved_per_file_and_recorded(tmp_path, fully_sampled_file, tiny_prior_path, grid, factor):
    """The fixture's header says 256 mm over 64 (4 mm): auto refines by 3 for a prior without pixel_mm."""
    from mri_score.reconstruct import main

    out = tmp_path / "o"
    rc = main(["--kspace", str(fully_sampled_file), "--out", str(out), "--prior", str(tiny_prior_path),
               "--steps", "2", "--samples", "1", "--center-fraction", "0.25", "--grid", grid])
    assert rc == 0
    with h5py.File(out / fully_sampled_file.name) as hf:
        assert hf.attrs["grid_factor"] == factor
        assert hf["reconstruction"].shape == (2, 64, 64)
