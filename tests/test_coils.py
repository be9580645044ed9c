import numpy as np
import torch

from operators import acs_width, birdcage_maps, estimate_maps, expected_rss, fft2c, ifft2c, maps_lowres, rss, sense1_combine
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


def test_lowres_fallback_for_narrow_acs():
    x, maps, ksp, mask = _simulate(acs=10)
    est = estimate_maps(ksp, mask)  # auto: ACS of 10 lines -> low-resolution maps
    support = x.abs() > 0.1 * x.abs().max()
    mean_agree, _ = _agreement(est, maps, support)
    assert mean_agree > 0.95
    assert acs_width(mask) < 16
    assert torch.allclose(est, maps_lowres(ksp, acs_width(mask)))


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
