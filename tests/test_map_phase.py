"""The coil maps' phase reference: a gauge choice that keeps the physics and removes the receive coil's phase."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mri_score.calibration import calibrate, resolve_map_phase
from mri_score.errors import InputError
from mri_score.request import ReconRequest, RequestError
from operators import acs_width, birdcage_maps, estimate_maps, fft2c, rss, sense1_combine, virtual_coil_phase
from operators.coils import (
    DEFAULT_MAP_PHASE,
    ESPIRIT_THRESHOLD,
    MAP_PHASES,
    MAPS_THRESHOLD,
    acs_columns,
    espirit_calibration_shape,
    lowres_coil_images,
    maps_espirit,
)
from operators.errors import OperatorInputError
from tests.conftest import phantom


def _smooth_phase(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    psi = rng.uniform(-3, 3) * xx + rng.uniform(-3, 3) * yy + rng.uniform(-2, 2) * xx * yy + rng.uniform(-np.pi, np.pi)
    return torch.from_numpy(np.exp(1j * psi).astype(np.complex64))


def _acquisition(n: int = 64, coils: int = 8, acs: int = 16):
    x = torch.from_numpy(phantom(n, 1, seed=3)[0]) * _smooth_phase(n, 7)
    maps = torch.from_numpy(birdcage_maps(coils, (n, n)))
    mask = torch.zeros(n)
    mask[::4] = 1
    mask[(n - acs) // 2:(n + acs) // 2] = 1
    return x, maps, fft2c(maps * x) * mask, mask


def test_the_reference_removes_any_per_pixel_phase_of_the_input_maps():
    _, maps, _, _ = _acquisition()
    weights = torch.rand(maps.shape[-2:], generator=torch.Generator().manual_seed(0))
    ref = virtual_coil_phase(maps, weights)
    for seed in (1, 2):  # the same physics in another gauge gives the same maps, whatever the gauge
        other = virtual_coil_phase(maps * _smooth_phase(maps.shape[-1], seed), weights)
        assert torch.allclose(other, ref, atol=1e-5)
    # a global phase of the input is removed too (eigh's arbitrary phase is fixed)
    assert torch.allclose(virtual_coil_phase(maps * np.exp(1j * 2.0), weights), ref, atol=1e-5)


def test_the_reference_keeps_magnitudes_and_relative_phases_and_makes_the_virtual_coil_real():
    _, maps, _, _ = _acquisition()
    out = virtual_coil_phase(maps)
    assert out.dtype == maps.dtype and out.shape == maps.shape
    assert torch.allclose(out.abs(), maps.abs(), atol=1e-6)
    # per pixel a common rotation: S_c conj(S_0) is unchanged, so the coil model (S S^H) is the same physics
    assert torch.allclose(out * out[0].conj(), maps * maps[0].conj(), atol=1e-5)
    flat = out.reshape(out.shape[0], -1).to(torch.complex128)
    u = torch.linalg.eigh(flat @ flat.conj().T)[1][:, -1]
    virtual = (u.conj()[:, None] * flat).sum(0)
    virtual = virtual * (virtual.sum().conj() / virtual.sum().abs())  # u's own phase is arbitrary
    assert float(virtual.imag.abs().max()) < 1e-6 and float(virtual.real.min()) > 0


def test_data_consistency_is_unchanged_and_the_image_takes_the_opposite_phase():
    x, maps, ksp, mask = _acquisition()
    est = estimate_maps(ksp, mask, method="espirit", phase="estimator")
    virt = estimate_maps(ksp, mask, method="espirit", phase="virtual")
    rot = (virt * est.conj()).sum(0)  # the per-pixel rotation virt = est · rot
    assert torch.allclose(rot.abs(), torch.ones_like(rot.abs()), atol=1e-4)
    img = sense1_combine(maps * x, est)  # the image the estimated maps assign to the true coil images
    # A_virt (x_est · conj(rot)) = A_est x_est: the same data
    assert torch.allclose(fft2c(virt * (img * rot.conj())), fft2c(est * img), atol=1e-4)


def test_estimate_maps_applies_the_reference_weighted_by_the_acs_image():
    _, _, ksp, mask = _acquisition()
    est = estimate_maps(ksp, mask, method="espirit", phase="estimator")
    weights = rss(lowres_coil_images(ksp, acs_width(mask)), dim=-3)
    assert torch.allclose(estimate_maps(ksp, mask, method="espirit", phase="virtual"),
                          virtual_coil_phase(est, weights), atol=1e-6)
    assert torch.equal(estimate_maps(ksp, mask, method="espirit"),
                       estimate_maps(ksp, mask, method="espirit", phase=DEFAULT_MAP_PHASE))
    with pytest.raises(OperatorInputError, match="phase reference"):
        estimate_maps(ksp, mask, phase="coil7")
    with pytest.raises(OperatorInputError, match=r"\(coils, H, W\)"):
        virtual_coil_phase(est.abs())


def test_calibrate_and_request_name_the_phase_reference():
    _, _, ksp, mask = _acquisition()
    assert resolve_map_phase("auto") == DEFAULT_MAP_PHASE
    assert resolve_map_phase("auto", auto="estimator") == "estimator"
    assert all(resolve_map_phase(p) == p and resolve_map_phase(p, auto="estimator") == p for p in MAP_PHASES)
    with pytest.raises(InputError, match="phase reference"):
        resolve_map_phase("coil0")
    a = calibrate(ksp, mask, "espirit", maps_phase="virtual")
    b = calibrate(ksp, mask, "espirit", maps_phase="estimator")
    assert not torch.allclose(a.maps, b.maps, atol=1e-3)
    assert a.scale == pytest.approx(b.scale, rel=1e-5)  # the scale is a magnitude: the gauge leaves it alone
    with pytest.raises(RequestError, match="maps_phase"):
        ReconRequest(maps_phase="coil0")
    other = next(p for p in MAP_PHASES if p != DEFAULT_MAP_PHASE)
    assert f"maps_phase={other}" in ReconRequest(maps_phase=other).calibration_suffix()
    assert not any("maps_phase" in part for part in ReconRequest().calibration_suffix())


def test_the_espirit_threshold_reaches_the_estimator_and_is_validated():
    _, _, ksp, mask = _acquisition(acs=8)
    width = acs_width(mask)
    lo, hi = acs_columns(mask)
    cols = espirit_calibration_shape(tuple(ksp.shape[-2:]), width, False)[1]
    start = min(max(lo, ksp.shape[-1] // 2 - cols // 2), hi - cols)
    for thresh in (ESPIRIT_THRESHOLD, 0.002):
        assert torch.allclose(estimate_maps(ksp, mask, method="espirit", phase="estimator", thresh=thresh),
                              maps_espirit(ksp, width, thresh=thresh, col_start=start), atol=1e-6)
    a = calibrate(ksp, mask, "espirit", maps_threshold=0.002)
    b = calibrate(ksp, mask, "espirit")
    assert not torch.allclose(a.maps, b.maps, atol=1e-4)
    assert torch.allclose(calibrate(ksp, mask, "espirit", maps_threshold=MAPS_THRESHOLD).maps, b.maps)
    for bad in (0, 1, 1.5, -0.1, "x", float("nan"), True):
        with pytest.raises(RequestError, match="maps_threshold"):
            ReconRequest(maps_threshold=bad)
    assert ReconRequest(maps_threshold="0.002").maps_threshold == 0.002
    assert "maps_threshold=0.002" in ReconRequest(maps_threshold=0.002).calibration_suffix()
