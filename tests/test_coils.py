import numpy as np
import pytest
import torch

from operators import acs_width, birdcage_maps, estimate_maps, expected_rss, fft2c, ifft2c, maps_lowres, rss, sense1_combine
from operators.coils import (
    ESPIRIT_THRESHOLD,
    MIN_ESPIRIT_ACS,
    acs_columns,
    espirit_calibration_shape,
    espirit_kernel_shape,
    maps_espirit,
    normalize_maps,
)
from operators.errors import OperatorInputError
from tests.conftest import phantom


def _simulate(n=96, coils=8, acs=24):
    x = torch.from_numpy(phantom(n, 1)[0])
    maps = torch.from_numpy(birdcage_maps(coils, (n, n)))
    ksp = fft2c(maps * x)
    mask = torch.zeros(n)
    mask[2::4] = 1
    pad = (n - acs + 1) // 2
    mask[pad : pad + acs] = 1
    return x, maps, ksp * mask, mask


def _agreement(est, true, support):
    # both are unit-norm over coils, so |<est, true>| = 1 at a pixel exactly when est = e^{iφ} true there:
    # equal up to the phase common to all coils (ESPIRiT fixes maps only up to that phase)
    ip = (torch.conj(est) * true).sum(0)
    mag = ip.abs()[support]
    return float(mag.mean()), float(mag.min())


def test_acs_width_of_fastmri_masks():
    _, _, _, mask = _simulate(acs=24)
    assert acs_width(mask) == 24
    m2 = torch.zeros(64, 64)
    m2[24:40, 20:44] = 1
    assert acs_width(m2) == 16


def test_espirit_recovers_birdcage_maps_from_acs():
    x, maps, ksp, mask = _simulate()
    est = estimate_maps(ksp, mask, method="espirit")
    assert est.shape == maps.shape
    support = x.abs() > 0.1 * x.abs().max()
    mean_agree, min_agree = _agreement(est, maps, support)
    assert mean_agree > 0.99 and min_agree > 0.97
    assert torch.allclose(rss(est, 0)[support], torch.ones(int(support.sum())), atol=1e-4)
    # no support crop: the maps are defined on every pixel
    assert (rss(est, 0) > 0.99).all()


def _model_error(est, maps, x):
    """Relative energy of the coil images ``maps · x`` that the maps ``est`` cannot represent."""
    c = maps * x
    proj = est * (est.conj() * c).sum(0, keepdim=True)
    return float(((c - proj).abs() ** 2).sum() / (c.abs() ** 2).sum())


def test_espirit_matches_sigpy_on_a_square_region():
    # the torch implementation is sigpy's EspiritCalib (crop=0) on a square region, up to the eigen-solver
    import sigpy.mri

    x, maps, ksp, mask = _simulate(acs=24)
    ref = sigpy.mri.app.EspiritCalib(ksp.numpy(), calib_width=24, kernel_width=6, thresh=0.02, crop=0.0,
                                     show_pbar=False).run()
    ref = normalize_maps(torch.from_numpy(np.asarray(ref)).to(torch.complex64))
    est = maps_espirit(ksp, 24, two_d=True)
    support = x.abs() > 0.1 * x.abs().max()
    assert (est - ref).abs()[:, support].max() < 1e-4  # same maps, same phase convention (coil 0 real)


def test_narrow_acs_column_mask_uses_a_rectangular_espirit_region():
    assert espirit_calibration_shape((96, 96), 8, two_d=False) == (48, 8)
    assert espirit_calibration_shape((96, 96), 8, two_d=True) == (8, 8)
    assert espirit_kernel_shape((48, 8), two_d=False) == (6, 2)
    assert espirit_kernel_shape((24, 24), two_d=True) == (6, 6)
    for acs in (5, 8, 10):
        x, maps, ksp, mask = _simulate(acs=acs)
        # auto: column mask -> rectangular ESPIRiT at any ACS width (the fixed threshold: this test is the region's)
        est = estimate_maps(ksp, mask, phase="estimator", thresh=ESPIRIT_THRESHOLD)
        width = acs_width(mask)  # the equispaced lines may touch the block
        assert acs <= width <= acs + 2
        lo, hi = acs_columns(mask)
        start = min(max(lo, mask.shape[-1] // 2 - width // 2), hi - width)
        assert start == lo
        assert torch.allclose(est, maps_espirit(ksp, width, col_start=start))
        support = x.abs() > 0.1 * x.abs().max()
        mean_agree, _ = _agreement(est, maps, support)
        assert mean_agree > 0.99
        # the rectangular region represents the coil images better than the low-resolution maps
        err_espirit = _model_error(est, maps, x)
        err_lowres = _model_error(maps_lowres(ksp, width), maps, x)
        assert err_espirit < 0.5 * err_lowres, (acs, err_espirit, err_lowres)
        assert (rss(est, 0) > 0.99).all()  # defined everywhere


def test_lowres_fallback_for_narrow_acs_of_2d_masks():
    x, maps, ksp, _ = _simulate(acs=10)
    n = x.shape[-1]
    mask2 = torch.zeros(n, n)
    mask2[::3, ::3] = 1
    mask2[n // 2 - 5:n // 2 + 5, n // 2 - 5:n // 2 + 5] = 1  # a 10 x 10 calibration block
    k2 = fft2c(maps * x) * mask2
    est = estimate_maps(k2, mask2, phase="estimator")  # auto: 2-D mask with a 10-line cross -> low-resolution maps
    width = acs_width(mask2)
    assert 10 <= width < MIN_ESPIRIT_ACS
    assert torch.allclose(est, maps_lowres(k2, width, two_d=True))
    support = x.abs() > 0.1 * x.abs().max()
    assert _agreement(est, maps, support)[0] > 0.95


def test_espirit_refuses_non_finite_kspace_in_one_line():
    _, _, ksp, mask = _simulate(acs=16)
    bad = ksp.clone()
    bad[0, 48, 48] = complex(float("nan"), 0.0)
    with pytest.raises(OperatorInputError, match="non-finite"):
        maps_espirit(bad, 16)


def test_narrow_acs_raises():
    x, maps, ksp, mask = _simulate()
    mask = torch.zeros_like(mask)
    mask[::3] = 1
    try:
        estimate_maps(ksp * mask, mask)
    except ValueError as err:
        assert "ACS too narrow" in str(err)
    else:
        raise AssertionError("expected a ValueError")


def test_rss_and_sense1_with_true_maps():
    x, maps, _, _ = _simulate()
    coil_imgs = maps * x
    assert torch.allclose(rss(coil_imgs, 0), x.abs(), atol=1e-5)
    assert torch.allclose(sense1_combine(coil_imgs, maps), x, atol=1e-5)
    full = ifft2c(fft2c(coil_imgs))
    assert np.allclose(rss(full, 0).numpy(), x.abs().numpy(), atol=1e-5)


def test_expected_rss_matches_the_noisy_rss_of_simulated_coil_images():
    # fastMRI targets are RSS of noisy coil images: E[RSS²] = |x|² Σ|S|² + C σ² (exact), E[RSS] close to its root
    x, maps, _, _ = _simulate(n=32, coils=8)
    maps = maps * 1.3  # Σ|S|² ≠ 1 must enter too
    sigma = 0.05
    gen = torch.Generator().manual_seed(0)
    draws = 4000
    shape = (draws, *maps.shape)
    noise = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)) * sigma / 2**0.5
    ksp = fft2c(maps * x) + noise
    r = rss(ifft2c(ksp), dim=1)
    pred = expected_rss(x, maps, sigma)
    assert torch.allclose((r**2).mean(0), pred**2, rtol=0.03, atol=0)
    assert torch.allclose(r.mean(0), pred, rtol=0.035, atol=0)  # chi mean vs root mean square: <= 1.5 % bias
    assert torch.allclose(expected_rss(x, maps, 0.0), rss(maps * x, 0), atol=1e-6)
    # no-signal pixels: the floor is the root of C σ², not 0 (as |x| would say)
    assert torch.allclose(expected_rss(torch.zeros(4, 4, dtype=torch.complex64), maps[:, :4, :4], sigma),
                          torch.full((4, 4), (8 * sigma**2) ** 0.5))


def test_espirit_region_lies_inside_an_off_centre_acs_run():
    # an equispaced line next to the block on the left lengthens the run on that side only: a region centred on
    # W // 2 would then take one unsampled (all-zero) column; estimate_maps places it inside the run
    x, maps, ksp, _ = _simulate(acs=10)
    n = x.shape[-1]
    mask = torch.zeros(n)
    mask[::4] = 1
    mask[n // 2 - 5:n // 2 + 5] = 1  # block 43..52
    mask[n // 2 - 6] = 1  # the line just left of it: run 42..52, 11 lines
    mask[n // 2 + 5] = 0
    lo, hi = acs_columns(mask)
    assert (lo, hi) == (n // 2 - 6, n // 2 + 5) and acs_width(mask) == 11
    full = fft2c(maps * x)
    est = estimate_maps(full * mask, mask, phase="estimator", thresh=ESPIRIT_THRESHOLD)
    assert torch.allclose(est, maps_espirit(full * mask, 11, col_start=lo))
    # the same maps as from data whose every column is sampled in that region, and not the centred region's
    assert torch.allclose(est, maps_espirit(full, 11, col_start=lo), atol=1e-5)
    centred = maps_espirit(full * mask, 11)
    assert not torch.allclose(est, centred, atol=1e-3)
    support = x.abs() > 0.1 * x.abs().max()
    assert _agreement(est, maps, support)[0] > 0.99


@pytest.mark.parametrize("h, w, kr, kc", [(32, 24, 6, 2), (33, 25, 5, 3), (8, 7, 6, 5)])
def test_espirit_gram_in_kspace_equals_the_sum_of_image_domain_outer_products(h, w, kr, kc):
    # G(x) = Σ_k v_k(x) v_k(x)ᴴ, v_k the centred inverse FFT of kernel k zero-padded to the image (sigpy's loop);
    # the k-space formula must match it exactly, also on a grid small enough for the lags to wrap (8 x 7)
    from operators.coils import _kernel_gram

    gen = torch.Generator().manual_seed(h)
    kernels = torch.complex(torch.randn(5, 3, kr, kc, generator=gen), torch.randn(5, 3, kr, kc, generator=gen))
    padded = torch.zeros(5, 3, h, w, dtype=kernels.dtype)
    padded[:, :, h // 2 - kr // 2:h // 2 - kr // 2 + kr, w // 2 - kc // 2:w // 2 - kc // 2 + kc] = kernels
    img = ifft2c(padded)
    direct = torch.einsum("kchw,kdhw->hwcd", img, img.conj())
    gram = _kernel_gram(kernels, h, w)
    assert gram.shape == (h, w, 3, 3)
    assert (gram - direct).abs().max() < 1e-5 * direct.abs().max()


# --------------------------------------------------------------------------------------------- coil compression


def test_coil_compression_keeps_the_coil_subspace_and_white_noise():
    from operators import coil_compression_matrix, compress_coils

    gen = torch.Generator().manual_seed(0)
    # 8 coils spanning a rank-3 subspace: 3 virtual coils hold everything, and U Uᴴ y gives y back
    mix = torch.randn(8, 3, dtype=torch.complex128, generator=gen)
    y = (mix @ torch.randn(2, 3, 500, dtype=torch.complex128, generator=gen)).to(torch.complex64)  # (2, 8, 500)
    u = coil_compression_matrix(y, 3)
    assert u.shape == (8, 3) and u.dtype == torch.complex64
    assert torch.allclose(u.conj().T @ u, torch.eye(3, dtype=u.dtype), atol=1e-5)
    v = compress_coils(y, u, coil_dim=-2)
    assert v.shape == (2, 3, 500)
    assert torch.allclose(torch.einsum("cv,svm->scm", u, v), y, atol=1e-4 * float(y.abs().max()))
    # the leading virtual coil carries the most energy; white noise stays white with the same variance
    energy = (v.abs() ** 2).sum(dim=(0, 2))
    assert bool((energy[:-1] >= energy[1:]).all())
    noise = torch.randn(8, 200_000, dtype=torch.complex64, generator=gen)
    cov = compress_coils(noise, u, coil_dim=-2)
    cov = cov @ cov.conj().T / noise.shape[1]
    assert torch.allclose(cov, torch.eye(3, dtype=cov.dtype), atol=0.02)  # complex randn: E|z|² = 1
    # maps (coils, H, W) compress along -3 with the same matrix
    maps = torch.randn(8, 4, 5, dtype=torch.complex64, generator=gen)
    assert torch.allclose(compress_coils(maps, u)[1], torch.einsum("c,chw->hw", u[:, 1].conj(), maps), atol=1e-5)


def test_coil_compression_weights_count_and_refusals():
    from operators import coil_compression_matrix, compress_coils

    # coil 0 holds the large samples, coil 1 the rest; weights that silence the large samples pick coil 1
    y = torch.zeros(2, 4, dtype=torch.complex64)
    y[0, :2] = 10.0
    y[1, 2:] = 1.0
    assert torch.allclose(coil_compression_matrix(y, 1)[:, 0].abs(), torch.tensor([1.0, 0.0]))
    w = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert torch.allclose(coil_compression_matrix(y, 1, w)[:, 0].abs(), torch.tensor([0.0, 1.0]))
    for bad in (0, 3, 1.5, True):
        with pytest.raises(OperatorInputError, match="virtual coils must be an integer in \\[1, 2\\]"):
            coil_compression_matrix(y, bad)
    with pytest.raises(OperatorInputError, match="complex samples"):
        coil_compression_matrix(y.real, 1)
    with pytest.raises(OperatorInputError, match="weights"):
        coil_compression_matrix(y, 1, torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(OperatorInputError, match="do not match"):
        compress_coils(torch.zeros(3, 4, dtype=torch.complex64), coil_compression_matrix(y, 1), coil_dim=-2)
