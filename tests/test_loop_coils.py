"""Evaluation physics: Biot–Savart loop-coil maps, smooth phase, correlated noise, prewhitening, real acquisitions."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import ellipe, ellipk

from mri_score.data.real_physics import simulate_real_acquisition
from mri_score.errors import InputError
from operators.coils import birdcage_maps
from operators.errors import OperatorInputError
from operators.fft import fft2c
from operators.loop_coils import (
    GEOMETRIES,
    MU0,
    LoopGeometry,
    correlated_noise,
    loop_axis_field,
    loop_coil_maps,
    loop_field,
    noise_covariance,
    prewhiten,
    smooth_phase,
)

SHAPE, PIXEL = (64, 48), (3.0, 3.0)


def _matched_similarity(a, b):
    """Mean |<a_i, b_j>| / (|a_i| |b_j|) over the best one-to-one coil matching: 1 = same maps up to order and phase."""
    A, B = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    G = np.abs(A.conj() @ B.T) / np.outer(np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1))
    r, c = linear_sum_assignment(-G)
    return float(G[r, c].mean())


# --- Biot–Savart ---------------------------------------------------------------------------------------


def test_biot_savart_on_axis_matches_closed_form():
    R, current = 0.05, 2.0
    z = np.linspace(-0.2, 0.2, 21)
    pts = np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=1)
    B = loop_field(pts, np.zeros(3), np.array([0.0, 0.0, 1.0]), R, current_a=current, segments=256)
    exact = MU0 * current * R**2 / (2 * (R**2 + z**2) ** 1.5)
    np.testing.assert_allclose(loop_axis_field(R, z, current), exact)
    np.testing.assert_allclose(B[:, 2], exact, rtol=2e-4)  # chord error ~ (π/256)²
    assert np.abs(B[:, :2]).max() < 1e-9 * exact.max()  # no transverse field on the axis


def test_biot_savart_off_axis_matches_elliptic_integrals():
    # exact field of a loop in cylindrical coordinates (Jackson / Smythe), current counter-clockwise about +z
    R, I = 0.04, 1.0
    rng = np.random.default_rng(0)
    rho, z = rng.uniform(0.005, 0.1, 50), rng.uniform(-0.08, 0.08, 50)
    keep = np.hypot(rho - R, z) > 0.01  # away from the wire
    rho, z = rho[keep], z[keep]
    phi = rng.uniform(0, 2 * np.pi, rho.size)
    pts = np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=1)
    B = loop_field(pts, np.zeros(3), np.array([0.0, 0.0, 1.0]), R, current_a=I, segments=512)
    m = 4 * R * rho / ((R + rho) ** 2 + z**2)
    K, E = ellipk(m), ellipe(m)
    pre = MU0 * I / (2 * np.pi * np.sqrt((R + rho) ** 2 + z**2))
    bz = pre * (K + (R**2 - rho**2 - z**2) / ((R - rho) ** 2 + z**2) * E)
    brho = pre * z / rho * (-K + (R**2 + rho**2 + z**2) / ((R - rho) ** 2 + z**2) * E)
    scale = np.abs(bz).max()
    np.testing.assert_allclose(B[:, 2], bz, atol=1e-3 * scale)
    np.testing.assert_allclose(B[:, 0] * np.cos(phi) + B[:, 1] * np.sin(phi), brho, atol=1e-3 * scale)
    np.testing.assert_allclose(-B[:, 0] * np.sin(phi) + B[:, 1] * np.cos(phi), 0, atol=1e-6 * scale)


def test_loop_field_orientation_and_argument_checks():
    B = loop_field(np.array([[0.0, 0.0, 0.0]]), np.zeros(3), np.array([1.0, 0.0, 0.0]), 0.03)
    assert B[0, 0] > 0 and abs(B[0, 1]) < 1e-12 and abs(B[0, 2]) < 1e-12  # right-hand rule about the normal
    with pytest.raises(OperatorInputError):
        loop_field(np.zeros((1, 3)), np.zeros(3), np.zeros(3), 0.03)
    with pytest.raises(OperatorInputError):
        loop_field(np.zeros((1, 3)), np.zeros(3), np.ones(3), 0.0)


# --- coil maps ------------------------------------------------------------------------------------------


def test_loop_maps_shape_dtype_and_normalisation():
    maps = loop_coil_maps(8, SHAPE, PIXEL)
    assert maps.shape == (8, *SHAPE) and maps.dtype == np.complex64
    np.testing.assert_allclose((np.abs(maps) ** 2).sum(0), 1.0, atol=1e-5)
    assert np.isfinite(maps).all()


@pytest.mark.parametrize("coils", [4, 7, 12, 20])
def test_loop_maps_take_4_to_20_coils(coils):
    maps = loop_coil_maps(coils, (24, 20), (4.0, 4.0), "two_rings")
    assert maps.shape == (coils, 24, 20)
    np.testing.assert_allclose((np.abs(maps) ** 2).sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("coils", [0, 1, 3, 21, 32])
def test_loop_maps_refuse_coil_counts_outside_4_to_20(coils):
    with pytest.raises(OperatorInputError, match="4 to 20"):
        loop_coil_maps(coils, SHAPE, PIXEL)


def test_loop_maps_refuse_bad_geometry_and_pixels():
    with pytest.raises(OperatorInputError, match="unknown loop-coil geometry"):
        loop_coil_maps(8, SHAPE, PIXEL, "birdcage")
    with pytest.raises(OperatorInputError):
        loop_coil_maps(8, SHAPE, (0.0, 1.0))
    with pytest.raises(OperatorInputError):
        loop_coil_maps(8, SHAPE, PIXEL, LoopGeometry(rings=9))


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_loop_maps_differ_from_the_training_birdcage(geometry):
    loop = loop_coil_maps(8, SHAPE, PIXEL, geometry)
    bird = birdcage_maps(8, SHAPE)
    # best coil matching, invariant to each coil's global phase: identical maps would give 1
    assert _matched_similarity(loop, bird) < 0.8
    assert _matched_similarity(bird, bird) > 0.999


def test_loop_maps_depend_on_geometry_and_field_of_view():
    maps = {g: loop_coil_maps(8, SHAPE, PIXEL, g) for g in GEOMETRIES}
    names = list(maps)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rel = np.linalg.norm(maps[a] - maps[b]) / np.linalg.norm(maps[a])
            assert rel > 0.05, (a, b, rel)
    base = maps["head_ring"]
    for change in (dict(loop_radius_mm=20.0), dict(ring_radius_mm=200.0), dict(elevation_mm=80.0)):
        other = loop_coil_maps(8, SHAPE, PIXEL, LoopGeometry(**change))
        assert np.linalg.norm(other - base) / np.linalg.norm(base) > 0.05, change
    # the same matrix at another pixel size is another field of view: other maps
    assert np.linalg.norm(loop_coil_maps(8, SHAPE, (1.0, 1.0)) - base) / np.linalg.norm(base) > 0.05


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_loop_maps_are_smooth(geometry):
    maps = loop_coil_maps(12, (96, 80), (2.5, 2.5), geometry)
    step = max(np.abs(np.diff(maps, axis=-1)).max(), np.abs(np.diff(maps, axis=-2)).max())
    # |S| <= 1: no map changes by more than 15 % of its range between neighbours (sigpy's birdcage: 0.14-0.2)
    assert step < 0.15
    # a Hann-windowed map has ~all its energy at low spatial frequency
    win = np.outer(np.hanning(96), np.hanning(80))
    k = np.abs(np.fft.fftshift(np.fft.fft2(maps * win), axes=(-2, -1))) ** 2
    low = k[:, 48 - 8 : 48 + 9, 40 - 8 : 40 + 9].sum()
    assert low / k.sum() > 0.999


def test_loop_maps_random_coil_phase_is_seeded():
    a = loop_coil_maps(6, SHAPE, PIXEL, rng=np.random.default_rng(1))
    b = loop_coil_maps(6, SHAPE, PIXEL, rng=np.random.default_rng(1))
    plain = loop_coil_maps(6, SHAPE, PIXEL)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.abs(a), np.abs(plain), atol=1e-6)
    assert not np.allclose(a, plain, atol=1e-3)


def test_default_ring_encloses_the_field_of_view():
    for name, geo in GEOMETRIES.items():
        fov = (SHAPE[0] * PIXEL[0], SHAPE[1] * PIXEL[1])
        centres, _ = geo.loops(8, fov)
        x = centres[:, 0] - geo.offset_mm[0]
        y = centres[:, 1] - geo.offset_mm[1]
        a, b = geo.semi_axes(fov)
        np.testing.assert_allclose((x / a) ** 2 + (y / b) ** 2, 1.0, atol=1e-9)  # on the ring
        # no corner of the field of view is outside the ring
        cx, cy = fov[1] / 2 + abs(geo.offset_mm[0]), fov[0] / 2 + abs(geo.offset_mm[1])
        assert (cx / a) ** 2 + (cy / b) ** 2 < 1, name


# --- smooth phase ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_smooth_phase_is_smooth_and_not_zero(order):
    h, w, amp = 80, 64, np.pi
    for seed in range(5):
        phi = smooth_phase((h, w), np.random.default_rng(seed), order=order, amplitude=amp)
        assert phi.shape == (h, w) and phi.dtype == np.float32
        assert np.ptp(phi) > 0.5 * amp * 0.5  # it varies: the varying part peaks at >= amplitude / 2
        # Markov's inequality for polynomials bounds the neighbour steps
        assert np.abs(np.diff(phi, axis=0)).max() <= order**2 * amp * 2 / (h - 1) + 1e-5
        assert np.abs(np.diff(phi, axis=1)).max() <= order**2 * amp * 2 / (w - 1) + 1e-5
        assert np.abs(np.diff(phi, axis=1)).mean() < 0.1


def test_smooth_phase_is_seeded_and_refuses_bad_arguments():
    a = smooth_phase((16, 16), np.random.default_rng(3))
    np.testing.assert_array_equal(a, smooth_phase((16, 16), np.random.default_rng(3)))
    assert not np.allclose(a, smooth_phase((16, 16), np.random.default_rng(4)))
    with pytest.raises(OperatorInputError):
        smooth_phase((16, 16), np.random.default_rng(0), order=0)
    with pytest.raises(OperatorInputError):
        smooth_phase((16, 16), np.random.default_rng(0), amplitude=0.0)


# --- correlated noise and prewhitening --------------------------------------------------------------------


def test_noise_covariance_is_hermitian_positive_definite_and_correlated():
    cov = noise_covariance(12, np.random.default_rng(0), correlation=0.4)
    np.testing.assert_allclose(cov, cov.conj().T)
    assert np.linalg.eigvalsh(cov).min() > 0
    assert abs(np.real(np.trace(cov)) / 12 - 1) < 1e-12
    d = np.sqrt(np.real(np.diag(cov)))
    corr = cov / np.outer(d, d)
    np.testing.assert_allclose(np.abs(np.diag(corr, 1)), 0.4, atol=1e-12)
    np.testing.assert_allclose(np.abs(np.diag(corr, 2)), 0.16, atol=1e-12)
    assert np.ptp(np.real(np.diag(cov))) > 0.05  # unequal coil variances
    with pytest.raises(OperatorInputError):
        noise_covariance(4, np.random.default_rng(0), correlation=1.0)


def test_prewhitening_correlated_noise_gives_identity_covariance():
    coils = 10
    draw = correlated_noise((128, 128), coils, np.random.default_rng(5), correlation=0.5)
    np.testing.assert_allclose(draw.chol @ draw.chol.conj().T, draw.cov, atol=1e-12)
    flat = draw.noise.reshape(coils, -1).astype(np.complex128)
    emp = flat @ flat.conj().T / flat.shape[1]
    assert np.abs(emp - draw.cov).max() < 0.05  # the draw has the covariance it claims
    assert np.abs(emp - np.eye(coils)).max() > 0.3  # and it is far from white
    white = prewhiten(draw.noise, draw.cov, coil_axis=0).reshape(coils, -1).astype(np.complex128)
    emp_w = white @ white.conj().T / white.shape[1]
    assert np.abs(emp_w - np.eye(coils)).max() < 0.05


def test_prewhiten_numpy_torch_and_batched_agree():
    rng = np.random.default_rng(0)
    cov = noise_covariance(6, rng, 0.3)
    x = (rng.standard_normal((2, 6, 8, 8)) + 1j * rng.standard_normal((2, 6, 8, 8))).astype(np.complex64)
    a = prewhiten(x, cov)
    b = prewhiten(torch.from_numpy(x), torch.from_numpy(cov))
    assert isinstance(a, np.ndarray) and a.dtype == np.complex64 and a.shape == x.shape
    assert torch.is_tensor(b) and b.dtype == torch.complex64
    np.testing.assert_allclose(a, b.numpy(), atol=1e-6)
    L = np.linalg.cholesky(cov)
    np.testing.assert_allclose(np.einsum("cd,bdhw->bchw", L, a), x, atol=1e-4)  # L · whitened = data
    with pytest.raises(OperatorInputError):
        prewhiten(x, np.eye(5))
    with pytest.raises(OperatorInputError, match="positive definite"):
        prewhiten(x, -np.eye(6))


# --- a whole real acquisition -------------------------------------------------------------------------------


def _disc(h=48, w=40):
    yy, xx = np.mgrid[:h, :w]
    return (((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 < 1).astype(np.float32) * (1 + 0.01 * xx)


def test_simulate_real_acquisition_outputs_and_noise_statistics():
    img = _disc()
    out = simulate_real_acquisition(img, (2.5, 2.5), coils=8, geometry="offset", snr=20.0, seed=3, correlation=0.4)
    ksp, cov, truth, maps = out["kspace"], out["noise_cov"], out["truth"], out["maps"]
    assert ksp.shape == (8, 48, 40) and ksp.dtype == np.complex64
    assert truth.shape == img.shape and truth.dtype == np.complex64 and maps.shape == (8, 48, 40)
    np.testing.assert_allclose(np.abs(truth), img, rtol=1e-6)  # the truth is the image with a phase
    assert np.ptp(out["phase"]) > 0.5
    np.testing.assert_allclose(np.angle(truth[img > 0] * np.exp(-1j * out["phase"][img > 0])), 0, atol=1e-5)
    # noise = k-space minus the noise-free acquisition; its covariance is noise_cov
    clean = fft2c(torch.from_numpy(maps) * torch.from_numpy(truth)).numpy()
    noise = (ksp - clean).reshape(8, -1).astype(np.complex128)
    emp = noise @ noise.conj().T / noise.shape[1]
    sigma = out["sigma"]
    assert sigma == pytest.approx(np.percentile(img, 99) / 20.0)
    assert np.real(np.trace(cov)) / 8 == pytest.approx(sigma**2)
    assert np.abs(emp - cov).max() < 0.2 * sigma**2
    # the maps are the loop model of that geometry with seeded coil phases, not the birdcage
    assert _matched_similarity(maps, birdcage_maps(8, img.shape)) < 0.8
    again = simulate_real_acquisition(img, (2.5, 2.5), coils=8, geometry="offset", snr=20.0, seed=3, correlation=0.4)
    np.testing.assert_array_equal(again["kspace"], ksp)
    other = simulate_real_acquisition(img, (2.5, 2.5), coils=8, geometry="offset", snr=20.0, seed=4, correlation=0.4)
    assert not np.allclose(other["kspace"], ksp)


def test_simulate_real_acquisition_refuses_bad_input():
    img = _disc(16, 16)
    for bad in (img[None], img.astype(np.complex64), -img, np.zeros_like(img)):
        with pytest.raises(InputError):
            simulate_real_acquisition(bad, (2.0, 2.0))
    with pytest.raises(InputError):
        simulate_real_acquisition(img, (2.0, 2.0), snr=0.0)
    with pytest.raises(InputError, match="4 to 20"):
        simulate_real_acquisition(img, (2.0, 2.0), coils=3)
