"""Annealed Langevin dynamics for MRI (Jalal et al., NeurIPS 2021).

Geometric noise levels σ_1 > … > σ_L; at each level ``T`` steps of

``x ← x + α_i [s(x, σ_i) + Aᴴ(y − Ax) / (σ_y²/2 + σ_i²)] + √(2α_i) z``,  ``α_i = step_lr · σ_i²``.

The likelihood is "inflated" by the current prior noise σ_i² (Jalal's γ growing
with σ).  A final Tweedie denoise at σ_L returns the sample.  NFE = L·T + 1.
"""

from __future__ import annotations

import torch

from mri_score.samplers.base import ComplexPrior, Problem, SamplerResult, geometric_sigmas, randn_complex


@torch.no_grad()
def sample_langevin(
    prior: ComplexPrior,
    problem: Problem,
    x_init: torch.Tensor,
    gen: torch.Generator,
    steps: int = 500,
    steps_per_level: int = 3,
    sigma_max: float = 10.0,
    sigma_min: float = 0.005,
    step_lr: float = 0.1,
) -> SamplerResult:
    """``steps`` network evaluations in all (``steps // steps_per_level`` levels); ``x_init`` ``(K, H, W)``."""
    levels = max(1, steps // steps_per_level)
    sigmas = geometric_sigmas(levels, sigma_max, sigma_min)
    v_y = problem.sigma_y**2 / 2.0
    start = prior.nfe
    x = x_init + sigmas[0] * randn_complex(tuple(x_init.shape), gen, x_init.device)
    for s in sigmas:
        alpha = step_lr * s**2
        for _ in range(steps_per_level):
            grad = prior.score(x, s) + problem.residual_grad(x) / (v_y + s**2)
            x = x + alpha * grad + (2 * alpha) ** 0.5 * randn_complex(tuple(x.shape), gen, x.device)
    x = prior.denoise(x, sigmas[-1])
    return SamplerResult(samples=x, nfe=prior.nfe - start)
