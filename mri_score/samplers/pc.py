"""Reverse VE-SDE predictor–corrector with data consistency (Song et al. 2022; Chung & Ye 2022).

Per level i (Karras σ schedule, ``steps`` = levels):

* predictor (reverse diffusion): ``x ← x + (σ_i² − σ_{i+1}²) s(x, σ_i) + √(σ_i² − σ_{i+1}²) z``;
* data consistency: ``x ← x + λ Aᴴ(y − A x)`` (a Landweber step; ``AᴴA ≤ I`` here, so λ ≤ 1 is stable);
* corrector (Langevin at σ_{i+1}): ``x ← x + ε s + √(2ε) z``, ``ε = 2 (snr ‖z‖ / ‖s‖)²``, then data consistency.

A final Tweedie denoise and data-consistency step return the sample.  NFE = 2·steps + 1.
"""

from __future__ import annotations

import torch

from mri_score.samplers.base import ComplexPrior, Problem, SamplerResult, karras_sigmas, randn_complex


def _norm(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1).reshape(-1, 1, 1)


@torch.no_grad()
def sample_pc(
    prior: ComplexPrior,
    problem: Problem,
    x_init: torch.Tensor,
    gen: torch.Generator,
    steps: int = 100,
    sigma_max: float = 10.0,
    sigma_min: float = 0.005,
    snr: float = 0.16,
    dc_weight: float = 1.0,
) -> SamplerResult:
    """Predictor–corrector sampling of ``K`` samples ``(K, H, W)``."""
    sigmas = karras_sigmas(steps, sigma_max, sigma_min)
    start = prior.nfe
    x = x_init + sigmas[0] * randn_complex(tuple(x_init.shape), gen, x_init.device)
    for i, s in enumerate(sigmas):
        s_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
        var = s**2 - s_next**2
        x = x + var * prior.score(x, s) + var**0.5 * randn_complex(tuple(x.shape), gen, x.device)
        x = x + dc_weight * problem.residual_grad(x)
        if s_next > 0:
            score = prior.score(x, s_next)
            z = randn_complex(tuple(x.shape), gen, x.device)
            eps = 2 * (snr * _norm(z) / _norm(score).clamp_min(1e-12)) ** 2
            x = x + eps * score + (2 * eps) ** 0.5 * z
            x = x + dc_weight * problem.residual_grad(x)
    x = prior.denoise(x, sigmas[-1])
    x = x + dc_weight * problem.residual_grad(x)
    return SamplerResult(samples=x, nfe=prior.nfe - start)
