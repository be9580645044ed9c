"""DDS's coarse_steps: the first steps on the measured matrix, then lifted to the finer sampling grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mri_score.calibration import Calibration
from mri_score.errors import InputError
from mri_score.network import EDMDenoiser, NetworkConfig
from mri_score.pipeline import reconstruct_volume
from mri_score.posterior import _coarse_stage, _data_term
from mri_score.prior import ComplexPrior
from mri_score.request import ReconRequest
from mri_score.samplers import DDSConfig, sampler_config
from mri_score.simulation import simulate_volume
from operators import fourier_resample, make_mask
from tests.conftest import phantom


@pytest.fixture(scope="module")
def volume():
    ksp, _, _ = simulate_volume(phantom(32, 2, seed=5), coils=3, snr=60.0, seed=6)
    mask, _ = make_mask("equispaced", 4.0, 0.25, (32, 32), "vol.h5")
    return ksp, mask


class ShapeSpy(ComplexPrior):
    """A tiny prior that records the image shape of every network evaluation."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        model = EDMDenoiser(NetworkConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, emb_dim=16,
                                          groups=4)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape))
        super().__init__(model, "fp32")
        self.shapes: list[tuple[int, int]] = []

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape[-2:]))
        return super().denoise(x, sigma)


def _request(grid, coarse: int, steps: int = 4, seed: int = 1) -> ReconRequest:
    return ReconRequest(sampler="dds", steps=steps, samples=2, seed=seed, precision="fp32", grid=grid,
                        options={"coarse_steps": coarse})


def test_the_first_steps_run_on_the_measured_matrix_and_the_rest_on_the_fine_grid(volume):
    ksp, mask = volume
    spy = ShapeSpy()
    out = reconstruct_volume(ksp[:1], mask, spy, _request(2, 3, steps=5))
    assert spy.shapes == [(32, 32)] * 3 + [(64, 64)] * 2
    assert out.nfe == [5] and out.grid_factor == 2.0 and out.image.shape == (1, 32, 32)


def test_auto_spends_a_third_of_the_budget_on_the_measured_matrix(volume):
    ksp, mask = volume
    spy = ShapeSpy()
    request = ReconRequest(sampler="dds", steps=6, samples=2, seed=1, precision="fp32", grid=2)  # coarse_steps auto
    reconstruct_volume(ksp[:1], mask, spy, request)
    assert spy.shapes == [(32, 32)] * 2 + [(64, 64)] * 4
    cfg = DDSConfig()
    assert cfg.coarse_steps is None and [cfg.coarse_count(b) for b in (1, 2, 3, 24, 30)] == [0, 1, 1, 8, 10]
    assert DDSConfig(coarse_steps=0).coarse_count(24) == 0 and DDSConfig(coarse_steps=5).coarse_count(24) == 5


def test_coarse_steps_change_nothing_on_the_measured_grid(volume):
    ksp, mask = volume
    spy = ShapeSpy()
    plain = reconstruct_volume(ksp, mask, spy, _request("native", 0))
    coarse = reconstruct_volume(ksp, mask, spy, _request("native", 3))
    assert np.array_equal(plain.image, coarse.image) and np.array_equal(plain.std, coarse.std)
    assert set(spy.shapes) == {(32, 32)}


def test_coarse_sampling_is_deterministic_by_seed_and_differs_from_the_fine_one(volume):
    ksp, mask = volume
    spy = ShapeSpy()
    a = reconstruct_volume(ksp, mask, spy, _request(2, 2))
    b = reconstruct_volume(ksp, mask, spy, _request(2, 2))
    fine = reconstruct_volume(ksp, mask, spy, _request(2, 0))
    other = reconstruct_volume(ksp, mask, spy, _request(2, 2, seed=2))
    assert np.array_equal(a.image, b.image)
    assert not np.allclose(a.image, fine.image) and not np.allclose(a.image, other.image)


def test_the_lift_keeps_the_data_units():
    # one coil with a uniform map: the fine grid's model of the lifted image is exactly the measured grid's, and its
    # data are divided by scale / a instead of scale (a = 2 for a 2x grid), so every residual scales by a
    gen = torch.Generator().manual_seed(0)
    shape, grid = (16, 24), (32, 48)
    y = torch.randn(1, *shape, dtype=torch.complex64, generator=gen)
    mask = torch.as_tensor(make_mask("equispaced", 4.0, 0.25, shape, "x")[0])
    cal = Calibration(acs_width=6, maps=torch.ones(1, *shape, dtype=torch.complex64), scale=3.0, sigma_y=0.1)
    coarse, scale = _data_term(y * mask, mask, cal, shape)
    fine, grid_scale = _data_term(y * mask, mask, cal, grid)
    assert scale / grid_scale == pytest.approx(2.0)
    x = torch.randn(2, *shape, dtype=torch.complex64, generator=gen)
    stage = _coarse_stage((y * mask)[None], mask, [cal], grid, 2, [], _request(2, 1))
    assert torch.allclose(stage.lift(x), fourier_resample(x, grid))
    r_coarse = coarse.op(x) - coarse.y
    r_fine = fine.op(stage.lift(x)) - fine.y
    assert torch.allclose(r_fine, 2.0 * r_coarse, atol=1e-5)
    start = stage.likelihoods[0].zero_filled()
    assert torch.allclose(stage.x_init, start.repeat_interleave(2, dim=0))


def test_no_coarse_stage_where_there_is_nothing_coarser_or_the_option_is_off():
    y = torch.zeros(1, 1, 16, 16, dtype=torch.complex64)
    mask = torch.ones(16)
    cal = Calibration(acs_width=16, maps=torch.ones(1, 16, 16, dtype=torch.complex64), scale=1.0, sigma_y=0.1)
    assert _coarse_stage(y, mask, [cal], (16, 16), 2, [], _request("native", 3)) is None
    assert _coarse_stage(y, mask, [cal], (32, 32), 2, [], _request(2, 0)) is None
    langevin = ReconRequest(sampler="langevin", steps=4, samples=2, grid=2)
    assert _coarse_stage(y, mask, [cal], (32, 32), 2, [], langevin) is None


@pytest.mark.parametrize("options,budget,message", [
    ({"coarse_steps": -1}, 24, "coarse_steps must be >= 0"),
    ({"coarse_steps": 24}, 24, "coarse_steps must be below the budget of network evaluations (24)"),
    ({"coarse_steps": "x"}, 24, "coarse_steps must be int"),
])
def test_bad_coarse_steps_are_refused(options, budget, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sampler_config("dds", options).nfe_used(budget)


def test_coarse_steps_is_a_dds_option_only():
    assert isinstance(sampler_config("dds", {"coarse_steps": 8}), DDSConfig)
    with pytest.raises(InputError, match="unknown langevin option coarse_steps"):
        sampler_config("langevin", {"coarse_steps": 8})
