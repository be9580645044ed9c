"""The denoising score-matching loss shared by training and test-time adaptation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: EDM's training distribution of ln σ (Karras et al. 2022), used when a config's ``sigma`` leaves it out.
P_MEAN, P_STD = -1.2, 1.2


def sigma_distribution(sigma_cfg: Mapping[str, Any] | None) -> tuple[float, float]:
    """``(p_mean, p_std)`` of ln σ from a config's ``sigma`` section (EDM's :data:`P_MEAN`, :data:`P_STD` for missing keys)."""
    sigma_cfg = sigma_cfg or {}
    return float(sigma_cfg.get("p_mean", P_MEAN)), float(sigma_cfg.get("p_std", P_STD))


def edm_loss(model: torch.nn.Module, x: torch.Tensor, gen: torch.Generator, p_mean: float, p_std: float,
             sigma_data: float, autocast: dict[str, Any], labels: torch.Tensor | None = None,
             sigma_min: float = 0.0) -> torch.Tensor:
    """EDM denoising score-matching loss on a batch ``(B, 2, H, W)``; σ ~ LogNormal(p_mean, p_std).

    Parameters
    ----------
    model : torch.nn.Module
        ``D(x; σ[, c])`` on real 2-channel images.
    x : torch.Tensor
        float32 ``(B, 2, H, W)`` clean images (in the scaled units).
    gen : torch.Generator
        CPU generator for σ and the noise (the draws are the same on every device).
    p_mean, p_std : float
        Mean and std of ``ln σ``.
    sigma_data : float
        σ_d of the EDM preconditioning (loss weight ``(σ² + σ_d²) / (σ σ_d)²``).
    autocast : dict
        ``device_type``, ``dtype``, ``enabled`` and optionally ``channels_last``
        (:func:`mri_score.precision.choose_precision`).
    labels : torch.Tensor, optional
        long ``(B, F)`` (null index = classes) for a conditional network; None: unconditional.
    sigma_min : float
        σ is clamped below at this level (0: plain EDM; test-time adaptation keeps σ above the
        error of the image it adapts to, :mod:`mri_score.adapt`).

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    b = x.shape[0]
    log_sigma = torch.randn(b, generator=gen) * p_std + p_mean
    sigma = log_sigma.exp().clamp_min(sigma_min).to(x.device)
    noise = torch.randn(x.shape, generator=gen).to(x.device)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    noisy = x + sigma[:, None, None, None] * noise
    if x.is_contiguous(memory_format=torch.channels_last) is False and autocast.get("channels_last"):
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=autocast["device_type"], dtype=autocast["dtype"], enabled=autocast["enabled"]):
        denoised = model(noisy, sigma) if labels is None else model(noisy, sigma, labels.to(x.device))
    per = ((denoised.float() - x) ** 2).mean(dim=(1, 2, 3))
    return (weight * per).mean()
