"""ESPIRiT's noise-edge threshold: the signal subspace is what stands above the calibration matrix's noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mri_score.calibration import calibrate
from mri_score.request import ReconRequest, RequestError
from operators import acs_width, birdcage_maps, espirit_noise_threshold, estimate_maps, fft2c
from operators.coils import (
    ESPIRIT_THRESHOLD,
    MAPS_THRESHOLD,
    NOISE_THRESHOLD,
    NOISE_THRESHOLD_BOUNDS,
    _calibration_matrix,
    acs_columns,
    edge_threshold,
    espirit_calibration_shape,
    espirit_kernel_shape,
    espirit_threshold,
    maps_espirit,
)
from operators.errors import OperatorInputError
from operators.noise import estimate_sigma_y
from tests.conftest import phantom


def _acquisition(noise: float, n: int = 64, coils: int = 8, acs: int = 12, seed: int = 0):
    """Undersampled k-space of a phantom with birdcage maps and complex noise of std ``noise`` per sample."""
    x = torch.from_numpy(phantom(n, 1, seed=3)[0]).to(torch.complex64)
    maps = torch.from_numpy(birdcage_maps(coils, (n, n)))
    g = torch.Generator().manual_seed(seed)
    parts = torch.randn(2, coils, n, n, generator=g) * (noise / 2**0.5)
    mask = torch.zeros(n)
    mask[::4] = 1
    mask[(n - acs) // 2:(n + acs) // 2] = 1
    return (fft2c(maps * x) + torch.complex(parts[0], parts[1])) * mask, mask


def _region(ksp: torch.Tensor, mask: torch.Tensor):
    """The calibration region, kernel and first column the Cartesian calibration uses."""
    width = acs_width(mask)
    rows, cols = espirit_calibration_shape(tuple(ksp.shape[-2:]), width, False)
    lo, hi = acs_columns(mask)
    start = min(max(lo, ksp.shape[-1] // 2 - cols // 2), hi - cols)
    return width, (ksp.shape[0], rows, cols), espirit_kernel_shape((rows, cols), False), start


def _singular_values(ksp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    _, (_, rows, cols), kernel, start = _region(ksp, mask)
    h = ksp.shape[-2]
    calib = ksp[:, h // 2 - rows // 2:h // 2 - rows // 2 + rows, start:start + cols].to(torch.complex128)
    return torch.linalg.svdvals(_calibration_matrix(calib, *kernel))


def test_the_edge_is_the_largest_singular_value_of_a_noise_only_calibration_matrix():
    region, kernel, s_max = (8, 48, 12), (6, 4), 100.0
    edge = espirit_noise_threshold(s_max, region, kernel, 0.01)
    # random-matrix scale: an n x p matrix of independent entries of variance s^2 has its top singular value near
    # s (sqrt(n) + sqrt(p)); the overlapping kernel positions correlate the rows, so the edge lies above it
    n, p = (48 - 6 + 1) * (12 - 4 + 1), 8 * 6 * 4
    assert 0.01 * (n**0.5 + p**0.5) < edge * s_max < 3 * 0.01 * (n**0.5 + p**0.5)
    # deterministic by seed, and a different draw moves it only a little
    assert espirit_noise_threshold(s_max, region, kernel, 0.01) == edge
    assert espirit_noise_threshold(s_max, region, kernel, 0.01, seed=1) == pytest.approx(edge, rel=0.1)
    # relative: noise and data scaled together keep it, and it grows in proportion to the noise
    assert espirit_noise_threshold(7 * s_max, region, kernel, 0.07) == pytest.approx(edge, rel=1e-12)
    assert espirit_noise_threshold(s_max, region, kernel, 0.02) == pytest.approx(2 * edge, rel=1e-12)


def test_the_edge_is_clipped_and_validated():
    lo, hi = NOISE_THRESHOLD_BOUNDS
    assert espirit_noise_threshold(1e12, (4, 24, 8), (6, 2), 1.0) == lo  # far above the noise: keep (almost) all
    assert espirit_noise_threshold(1e-9, (4, 24, 8), (6, 2), 1.0) == hi  # data below the noise keep only the top
    # no noise measurable (a noise-free simulation, zero-filled edges): the rule says nothing, sigpy's default holds
    assert espirit_noise_threshold(1.0, (4, 24, 8), (6, 2), 0.0) == ESPIRIT_THRESHOLD
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(OperatorInputError, match="noise std"):
            espirit_noise_threshold(1.0, (4, 24, 8), (6, 2), bad)
    ksp, mask = _acquisition(0.01)
    with pytest.raises(OperatorInputError, match="needs the k-space noise std"):
        maps_espirit(ksp, acs_width(mask), thresh=NOISE_THRESHOLD)


@pytest.mark.parametrize("noise", [0.003, 0.03])
def test_the_kept_subspace_is_what_stands_above_the_noise(noise):
    ksp, mask = _acquisition(noise)
    width, region, kernel, start = _region(ksp, mask)
    s = _singular_values(ksp, mask)
    thresh = espirit_noise_threshold(float(s.max()), region, kernel, noise)
    kept = int((s > thresh * s.max()).sum())
    assert 1 <= kept < s.numel()
    # the edge is where the noise actually added to these data reaches: the largest singular value of the
    # calibration matrix of that noise alone (another draw than the rule's) lies within 10 % of it
    added = _acquisition(noise)[0] - _acquisition(0.0)[0]
    assert float(_singular_values(added, mask).max()) == pytest.approx(thresh * float(s.max()), rel=0.1)
    # more noise keeps fewer vectors
    if noise == 0.003:
        s_loud = _singular_values(*_acquisition(0.03))
        edge_loud = espirit_noise_threshold(float(s_loud.max()), region, kernel, 0.03)
        assert int((s_loud > edge_loud * s_loud.max()).sum()) < kept
    # the estimator with the rule equals the estimator at the number the rule gives
    assert torch.allclose(maps_espirit(ksp, width, thresh=NOISE_THRESHOLD, noise_std=noise, col_start=start),
                          maps_espirit(ksp, width, thresh=thresh, col_start=start), atol=1e-6)


def test_calibrate_sets_the_edge_at_the_slices_own_noise_estimate():
    ksp, mask = _acquisition(0.1)  # well above the phantom's own k-space edge (its sharp edges ring to ~0.03)
    width, region, kernel, start = _region(ksp, mask)
    s = _singular_values(ksp, mask)
    sigma = estimate_sigma_y(ksp, mask)
    assert sigma == pytest.approx(0.1, rel=0.2)  # the estimate the rule uses is the noise that was added
    cal = calibrate(ksp, mask, "espirit", maps_phase="estimator", maps_threshold="noise")
    thresh = espirit_noise_threshold(float(s.max()), region, kernel, sigma)
    assert NOISE_THRESHOLD_BOUNDS[0] < thresh < NOISE_THRESHOLD_BOUNDS[1]
    assert torch.allclose(cal.maps, maps_espirit(ksp, width, thresh=thresh, col_start=start), atol=1e-6)
    assert not torch.allclose(cal.maps, calibrate(ksp, mask, "espirit", maps_phase="estimator",
                                                  maps_threshold=ESPIRIT_THRESHOLD).maps, atol=1e-4)
    # a known sigma_y (e.g. from a noise scan) sets the edge instead of the estimate
    known = calibrate(ksp, mask, "espirit", sigma_y=0.3, maps_phase="estimator", maps_threshold="noise")
    thresh_known = espirit_noise_threshold(float(s.max()), region, kernel, 0.3)
    assert thresh < thresh_known < NOISE_THRESHOLD_BOUNDS[1]
    assert torch.allclose(known.maps, maps_espirit(ksp, width, thresh=thresh_known, col_start=start), atol=1e-6)
    # estimate_maps takes the rule with the noise std, and applies the default phase reference on top
    assert torch.allclose(estimate_maps(ksp, mask, "espirit", thresh="noise", noise_std=sigma),
                          calibrate(ksp, mask, "espirit", maps_threshold="noise").maps, atol=1e-6)


def test_the_edge_keeps_noise_out_of_the_maps_where_a_fixed_threshold_lets_it_in():
    """At low SNR fixed thresholds keep noise vectors and the maps break; the edge follows the noise and holds."""
    n, coils = 64, 8
    x = torch.from_numpy(phantom(n, 1, seed=3)[0])
    inside = x.abs() > 0.05 * x.abs().max()
    ksp, mask = _acquisition(0.1, n=n, coils=coils, acs=16)
    truth = torch.from_numpy(birdcage_maps(coils, (n, n)))
    truth = truth / torch.linalg.vector_norm(truth, dim=0).clamp_min(1e-12)

    def misfit(maps: torch.Tensor) -> float:  # gauge-free: the projector S S^H per pixel against the truth's
        proj = torch.einsum("ahw,bhw->hwab", maps, maps.conj())
        ref = torch.einsum("ahw,bhw->hwab", truth, truth.conj())
        return float(torch.linalg.matrix_norm(proj - ref)[inside].mean())

    edge = misfit(calibrate(ksp, mask, "espirit", maps_threshold="noise").maps)
    assert edge < 0.3  # a projector distance of 0.3 is a usable map; a broken one is near sqrt(2)
    for fixed in (0.02, 0.005):
        assert misfit(calibrate(ksp, mask, "espirit", maps_threshold=fixed).maps) > 3 * edge


def test_the_rule_is_the_cartesian_default_and_estimates_its_own_noise():
    assert MAPS_THRESHOLD == NOISE_THRESHOLD
    ksp, mask = _acquisition(0.1)
    sigma = estimate_sigma_y(ksp, mask)
    own = estimate_maps(ksp, mask, "espirit")
    assert torch.allclose(own, estimate_maps(ksp, mask, "espirit", thresh="noise", noise_std=sigma), atol=1e-6)
    assert not torch.allclose(own, estimate_maps(ksp, mask, "espirit", thresh=ESPIRIT_THRESHOLD), atol=1e-4)
    assert torch.allclose(calibrate(ksp, mask).maps, calibrate(ksp, mask, maps_threshold="noise").maps)
    # zero-filled readout edges: no noise to measure, so the maps are ESPIRiT's at its fixed threshold
    filled = ksp.clone()
    filled[:, :8] = 0
    filled[:, -8:] = 0
    assert estimate_sigma_y(filled, mask) == 0.0
    assert torch.allclose(estimate_maps(filled, mask, "espirit"),
                          estimate_maps(filled, mask, "espirit", thresh=ESPIRIT_THRESHOLD), atol=1e-6)


def test_a_noise_kspace_sets_the_edge_from_its_own_calibration_matrix():
    ksp, mask = _acquisition(0.1)
    width, region, kernel, start = _region(ksp, mask)
    added = _acquisition(0.1)[0] - _acquisition(0.0)[0]  # the noise actually in the data
    s_data, s_noise = _singular_values(ksp, mask), _singular_values(added, mask)
    thresh = edge_threshold(float(s_noise.max()), float(s_data.max()))
    assert torch.allclose(maps_espirit(ksp, width, thresh=NOISE_THRESHOLD, noise_kspace=added, col_start=start),
                          maps_espirit(ksp, width, thresh=thresh, col_start=start), atol=1e-6)
    # for white noise it agrees with the edge drawn at the noise's std (another draw: within 10 %)
    assert thresh == pytest.approx(espirit_noise_threshold(float(s_data.max()), region, kernel, 0.1), rel=0.1)
    assert edge_threshold(0.0, 1.0) == ESPIRIT_THRESHOLD  # a noise-free draw: the rule says nothing
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(OperatorInputError, match="noise edge must be finite"):
            edge_threshold(bad, 1.0)
    with pytest.raises(OperatorInputError, match="does not match"):
        maps_espirit(ksp, width, thresh=NOISE_THRESHOLD, noise_kspace=added[:, :8], col_start=start)


def test_the_rule_on_a_two_dimensional_mask_uses_the_square_region():
    n, coils = 64, 8
    x = torch.from_numpy(phantom(n, 1, seed=3)[0]).to(torch.complex64)
    maps = torch.from_numpy(birdcage_maps(coils, (n, n)))
    g = torch.Generator().manual_seed(1)
    parts = torch.randn(2, coils, n, n, generator=g) * (0.1 / 2**0.5)
    mask = (torch.rand(n, n, generator=g) < 0.3).to(torch.float32)
    mask[n // 2 - 10:n // 2 + 10, n // 2 - 10:n // 2 + 10] = 1  # a 20-line sampled cross: ESPIRiT's square region
    ksp = (fft2c(maps * x) + torch.complex(parts[0], parts[1])) * mask
    width, sigma = acs_width(mask), estimate_sigma_y(ksp, mask)
    side = espirit_calibration_shape((n, n), width, True)
    kernel = espirit_kernel_shape(side, True)
    h0 = n // 2 - side[0] // 2
    calib = ksp[:, h0:h0 + side[0], h0:h0 + side[1]].to(torch.complex128)
    s_max = float(torch.linalg.svdvals(_calibration_matrix(calib, *kernel)).max())
    thresh = espirit_noise_threshold(s_max, (coils, *side), kernel, sigma)
    assert NOISE_THRESHOLD_BOUNDS[0] < thresh < NOISE_THRESHOLD_BOUNDS[1]
    assert torch.allclose(estimate_maps(ksp, mask, "espirit", phase="estimator"),
                          maps_espirit(ksp, width, two_d=True, thresh=thresh), atol=1e-6)


def test_the_threshold_is_read_the_same_everywhere():
    assert espirit_threshold(" Noise ") == NOISE_THRESHOLD and espirit_threshold("0.01") == 0.01
    for bad in ("loud", "", 0.0, 1.0, float("nan"), "inf"):
        with pytest.raises(OperatorInputError, match="must be noise or a number in"):
            espirit_threshold(bad)
    ksp, mask = _acquisition(0.1)
    assert torch.equal(calibrate(ksp, mask, maps_threshold="NOISE").maps, calibrate(ksp, mask).maps)
    with pytest.raises(OperatorInputError, match="must be noise or a number in"):
        calibrate(ksp, mask, maps_threshold="loud")


def test_the_request_names_the_rule():
    assert ReconRequest(maps_threshold="noise").maps_threshold == NOISE_THRESHOLD
    assert ReconRequest(maps_threshold=" Noise ").maps_threshold == NOISE_THRESHOLD
    # named, the Cartesian default keeps the default's std key; on radial and spiral data, where 0.02 is the
    # default, the trajectory key names it
    from mri_score.noncartesian import trajectory_settings_key
    from mri_score.uncertainty import settings_key

    noise, default = ReconRequest(maps_threshold="noise"), ReconRequest()
    assert noise.calibration_suffix() == default.calibration_suffix() == []
    assert settings_key(noise) == settings_key(default)
    assert trajectory_settings_key(noise) == settings_key(default) + "/maps_threshold=noise"
    assert trajectory_settings_key(default) == settings_key(default)
    assert "maps_threshold=0.02" in ReconRequest(maps_threshold=0.02).calibration_suffix()
    for bad in ("loud", "", "nan", 0, 1.5, True):
        with pytest.raises(RequestError, match="must be noise or a number in"):
            ReconRequest(maps_threshold=bad)
    assert np.isclose(ReconRequest(maps_threshold="0.01").maps_threshold, 0.01)


def test_the_noise_draw_has_the_asked_power_and_is_deterministic():
    from operators.noise import complex_gaussian

    n = complex_gaussian((4, 20000), 0.3, 7, torch.complex128)
    assert n.dtype == torch.complex128 and n.shape == (4, 20000)
    assert float((n.abs() ** 2).mean()) == pytest.approx(0.09, rel=0.02)  # E|n|^2 = std^2
    assert float(n.real.var()) == pytest.approx(float(n.imag.var()), rel=0.05)  # split evenly
    assert torch.equal(n, complex_gaussian((4, 20000), 0.3, 7, torch.complex128))
    assert complex_gaussian((3,), 1.0, 0).dtype == torch.complex64
