"""Diffusion posterior sampling (Chung et al., ICLR 2023).

The likelihood at noisy ``x_i`` is approximated through the Tweedie estimate:
``∇ log p(y | x_i) ≈ −∇_{x_i} ‖y − A x̂₀(x_i)‖``, obtained by autograd through
the network.  Per step (Karras σ schedule): ``x̂₀ = D(x_i; σ_i)``; a DDIM step
``x' = x̂₀ + √(σ_{i+1}² − c²) (x_i − x̂₀)/σ_i + c z``; then
``x_{i+1} = x' − ζ ∇_{x_i} ‖y − A x̂₀‖``.  NFE = steps (each with a backward pass).
"""

from __future__ import annotations

import torch

from mri_score.network import channels_to_complex, complex_to_channels
from mri_score.samplers.base import ComplexPrior, Problem, SamplerResult, karras_sigmas, randn_complex


def sample_dps(
    prior: ComplexPrior,
    problem: Problem,
    x_init: torch.Tensor,
    gen: torch.Generator,
    steps: int = 100,
    sigma_max: float = 10.0,
    sigma_min: float = 0.002,
    zeta: float = 1.0,
    eta: float = 0.5,
) -> SamplerResult:
    """DPS for ``K`` samples ``(K, H, W)``; ``zeta`` is the likelihood step size."""
    sigmas = karras_sigmas(steps, sigma_max, sigma_min) + [0.0]
    start = prior.nfe
    x = (x_init + sigmas[0] * randn_complex(tuple(x_init.shape), gen, x_init.device)).detach()
    x0 = x
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        xr = complex_to_channels(x).requires_grad_(True)
        with torch.enable_grad():
            prior.nfe += 1
            x0r = prior.model(xr, s)
            x0 = channels_to_complex(x0r)
            res = problem.y - problem.op(x0)
            norms = torch.linalg.vector_norm(res.reshape(res.shape[0], -1), dim=1)
            (grad_r,) = torch.autograd.grad(norms.sum(), xr)
        grad = channels_to_complex(grad_r)
        x0 = x0.detach()
        if s_next == 0.0:
            break
        c = eta * s_next
        eps = (x - x0) / s
        x = x0 + (s_next**2 - c**2) ** 0.5 * eps + c * randn_complex(tuple(x.shape), gen, x.device)
        x = (x - zeta * grad).detach()
    return SamplerResult(samples=x0, nfe=prior.nfe - start)
