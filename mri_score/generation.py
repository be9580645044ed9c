"""Unconditional samples from a score prior: EDM's Heun sampler (Karras et al. 2022).

The deterministic 2nd-order integration of the probability-flow ODE, so a user
can see what a prior learned (``python -m mri_score.sample_prior``).
"""

from __future__ import annotations

import torch

from mri_score.network import EDMDenoiser
from mri_score.samplers.base import karras_sigmas


@torch.no_grad()
def heun_samples(model: EDMDenoiser, n: int, size: int, steps: int = 30, sigma_max: float = 40.0,
                 sigma_min: float = 0.002, seed: int = 0) -> torch.Tensor:
    """``n`` samples, real ``(n, 2, size, size)`` (real and imaginary channels), by ``steps`` Heun steps.

    ``2 · steps − 1`` network evaluations; noise from a CPU generator seeded with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    sig = karras_sigmas(steps, sigma_max, sigma_min) + [0.0]
    x = torch.randn(n, 2, size, size, generator=gen) * sig[0]
    for i in range(steps):
        s, s_next = sig[i], sig[i + 1]
        d = (x - model(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - model(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
    return x
