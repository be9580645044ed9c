"""Grid changes through k-space: exact inverses, adjoints and value-preserving resampling."""

import pytest
import torch

from operators import crop_kspace, fft2c, fourier_resample, ifft2c, image_to_grid, pad_mask, zero_pad_kspace
from operators.errors import OperatorInputError


@pytest.mark.parametrize("small,large", [((8, 6), (16, 12)), ((7, 5), (14, 11)), ((6, 6), (12, 18))])
def test_crop_is_adjoint_and_left_inverse_of_zero_pad(small, large):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *small, dtype=torch.complex64, generator=g)
    y = torch.randn(3, *large, dtype=torch.complex64, generator=g)
    assert torch.equal(crop_kspace(zero_pad_kspace(x, large), small), x)
    lhs = torch.vdot(zero_pad_kspace(x, large).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), crop_kspace(y, small).flatten())
    assert torch.allclose(lhs, rhs, atol=1e-4)


def test_fine_grid_image_returns_exactly_to_the_measured_grid():
    x = torch.randn(2, 10, 9, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    fine = ifft2c(zero_pad_kspace(fft2c(x), (20, 18)))
    assert torch.allclose(image_to_grid(fine, (10, 9)), x, atol=1e-5)
    # the fine image is the same object with 2x smaller pixels: amplitude / 2 (orthonormal FFT), mean kept
    assert torch.allclose(fine[..., ::2, ::2].mean() * 2, x.mean(), atol=0.05)


def test_fourier_resample_keeps_values_of_smooth_fields():
    cols = torch.arange(16, dtype=torch.float32)[None, :].expand(16, 16)
    field = torch.exp(1j * 2 * torch.pi * cols / 16)  # a single k-space sample: band-limited
    up = fourier_resample(field.to(torch.complex64), (32, 32))
    assert torch.allclose(up[::2, ::2], field.to(torch.complex64), atol=1e-5)
    const = torch.full((1, 9, 7), 0.7 + 0.2j, dtype=torch.complex64)
    assert torch.allclose(fourier_resample(const, (18, 21)), torch.full((1, 18, 21), 0.7 + 0.2j), atol=1e-5)
    with pytest.raises(OperatorInputError):
        fourier_resample(const, (18, 5))


def test_pad_mask_one_and_two_d():
    m = torch.tensor([0, 1, 1, 0, 1, 0.0])
    pm = pad_mask(m, (4, 12))
    assert pm.shape == (12,) and torch.equal(pm[3:9], m) and pm.sum() == m.sum()
    m2 = (torch.rand(6, 5, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    pm2 = pad_mask(m2, (12, 10))
    assert pm2.shape == (12, 10) and torch.equal(crop_kspace(pm2, (6, 5)), m2)
    assert pad_mask(m.reshape(1, -1), (4, 12)).shape == (1, 12)
    with pytest.raises(OperatorInputError):
        zero_pad_kspace(m2, (3, 3))
