"""Shared fixtures: small phantoms, simulated fastMRI files and a tiny untrained prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mri_score.checkpoint import save_checkpoint
from mri_score.fastmri_io import write_fastmri_file
from mri_score.network import EDMDenoiser, NetworkConfig
from mri_score.simulation import simulate_volume

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def phantom(n: int = 64, slices: int = 2, seed: int = 0) -> np.ndarray:
    """Complex Shepp–Logan slices ``(slices, n, n)`` with a smooth random phase."""
    import sigpy

    rng = np.random.default_rng(seed)
    base = np.abs(sigpy.shepp_logan((n, n))).astype(np.float32)
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    out = []
    for _ in range(slices):
        ph = rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy
        out.append(base * np.exp(1j * ph))
    return np.stack(out).astype(np.complex64)


@pytest.fixture
def tiny_cfg() -> NetworkConfig:
    return NetworkConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, emb_dim=16, groups=4)


@pytest.fixture
def tiny_prior_path(tmp_path, tiny_cfg):
    torch.manual_seed(0)
    model = EDMDenoiser(tiny_cfg)
    path = tmp_path / "tiny_prior.safetensors"
    save_checkpoint(path, {f"ema.{k}": v for k, v in model.state_dict().items()},
                    {"step": 0, "network": tiny_cfg.to_dict(), "config": {}, "kind": "prior"})
    return path


@pytest.fixture
def tiny_unet_path(tmp_path, tiny_cfg):
    from mri_score.supervised import MagnitudeUNet

    torch.manual_seed(0)
    cfg = NetworkConfig.from_dict({**tiny_cfg.to_dict(), "in_channels": 1})
    model = MagnitudeUNet(cfg)
    path = tmp_path / "tiny_unet.safetensors"
    save_checkpoint(path, {f"ema.{k}": v for k, v in model.state_dict().items()},
                    {"step": 0, "network": cfg.to_dict(), "config": {}, "kind": "supervised", "task": "supervised"})
    return path


@pytest.fixture
def fully_sampled_file(tmp_path):
    imgs = phantom(64, 2)
    ksp, target, _ = simulate_volume(imgs, coils=4, snr=100.0, seed=1)
    path = tmp_path / "in" / "vol_a.h5"
    write_fastmri_file(path, ksp, target, "SYN", "p0")
    return path
