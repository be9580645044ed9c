"""The supervised U-Net baseline: simulated pairs, training through ``mri_score.train``, loading, reconstruction."""

import numpy as np
import pytest
import torch

from mri_score.calibration import calibrate
from mri_score.errors import CheckpointError, InputError
from mri_score.prior import load_prior
from mri_score.supervised import KspacePairSource, load_unet, simulate_pair, unet_reconstruct
from mri_score.training import export_prior, train
from operators import birdcage_maps, create_mask_for_mask_type, fft2c, ifft2c, rss
from tests.conftest import phantom


def supervised_cfg(out_dir, steps: int) -> dict:
    return {
        "task": "supervised",
        "out_dir": str(out_dir),
        "data": {"source": "synthetic", "pool_size": 6, "sizes": [64], "crop": 32, "coils": 4, "seed": 0,
                 "mask": {"type": "equispaced", "accel": 4, "center_fraction": 0.16}},
        "network": {"in_channels": 1, "base_channels": 8, "channel_mult": [1, 2], "emb_dim": 16, "groups": 4},
        "train": {"steps": steps, "batch": 4, "lr": 2e-3, "warmup": 1, "ckpt_every": 1000, "log_every": 5,
                  "precision": "fp32", "seed": 0},
    }


def test_pair_is_rss_of_masked_and_full_data_at_one_scale():
    img = torch.from_numpy(phantom(64, 1)[0])
    maps = torch.from_numpy(birdcage_maps(4, (64, 64)))
    func = create_mask_for_mask_type("equispaced", [0.16], [4])
    zf, target = simulate_pair(img, maps, func, snr=1e6, seed=3)
    mask, _ = func((4, 64, 64), seed=3)
    # up to the shared scale, the pair is RSS(zero-filled) and RSS(full) of the same (here noiseless) k-space
    k = fft2c(maps * img)
    full = rss(ifft2c(k), dim=0)
    ratio = full.max() / target.max()
    assert torch.allclose(target * ratio, full, atol=1e-4 * float(full.max()))
    assert torch.allclose(zf * ratio, rss(ifft2c(k * mask), dim=0), atol=1e-4 * float(full.max()))
    # fully sampled "mask": input equals target
    ones = lambda shape, seed=None: (torch.ones(1, 1, shape[-1]), 64)  # noqa: E731
    zf1, target1 = simulate_pair(img, maps, ones, snr=100.0, seed=3)
    assert torch.allclose(zf1, target1)
    assert 0.3 < float(torch.quantile(target, 0.99)) < 5.0  # the ACS reference scale maps the object to O(1)


def test_pair_source_batches_are_deterministic_and_full_width():
    slices = [phantom(64, 1, seed=i)[0] for i in range(3)] + [phantom(48, 1)[0]]
    src = KspacePairSource(slices, rows=32, coils=4, center_fraction=0.16)
    a = src.batch(3, torch.Generator().manual_seed(1))
    b = src.batch(3, torch.Generator().manual_seed(1))
    assert a[0].shape == a[1].shape and a[0].shape[:3] == (3, 1, 32) and a[0].shape[-1] in (48, 64)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(InputError, match="rows"):
        KspacePairSource(slices, rows=128)


def test_supervised_training_export_and_reconstruction(tmp_path):
    torch.manual_seed(0)
    out = train(supervised_cfg(tmp_path / "run", steps=40))
    assert np.mean(out["losses"][-10:]) < np.mean(out["losses"][:3])
    path = export_prior(tmp_path / "run" / "checkpoint.safetensors", tmp_path / "unet.safetensors", "test")
    model = load_unet(str(path))
    with pytest.raises(CheckpointError, match="not a score prior"):
        load_prior(path)
    imgs = phantom(64, 1)
    maps = torch.from_numpy(birdcage_maps(4, (64, 64)))
    k = fft2c(maps * torch.from_numpy(imgs[0]))
    mask = create_mask_for_mask_type("equispaced", [0.16], [4])((64, 64), seed=0)[0].squeeze()
    rec = unet_reconstruct(model, k * mask, mask, calibrate(k * mask, mask))
    assert rec.shape == (64, 64) and rec.dtype == torch.float32 and torch.isfinite(rec).all()
    # every step is divided by the ACS reference scale, so the output scales with the data
    rec2 = unet_reconstruct(model, 7.0 * k * mask, mask, calibrate(7.0 * k * mask, mask))
    assert torch.allclose(rec2, 7.0 * rec, rtol=1e-4, atol=1e-5 * float(rec.abs().max()))


def test_load_unet_refuses_a_prior(tiny_prior_path):
    with pytest.raises(CheckpointError, match="not a supervised"):
        load_unet(str(tiny_prior_path))
