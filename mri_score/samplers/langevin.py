"""Annealed Langevin dynamics for MRI (Jalal et al., NeurIPS 2021).

Geometric noise levels σ_1 > … > σ_L; at each level ``T`` steps of

``x ← x + α_i [s(x, σ_i) + Σ_terms ∇ log p(obs | x_σ)] + √(2α_i) z``,  ``α_i = step_lr · σ_i²``,

with each likelihood term's inflated gradient; for the k-space term that is
``Aᴴ(y − Ax) / (σ_y²/2 + σ_i²)``: the likelihood is "inflated" by the current prior
noise σ_i² (Jalal's γ growing with σ).  A final Tweedie denoise at σ_L returns the
sample.  NFE = L·T + 1 with ``L = (budget − 1) // T`` levels, so at most the budget
(a budget below ``T + 1`` is refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from mri_score.errors import InputError
from mri_score.likelihood import Likelihood
from mri_score.prior import ComplexPrior
from mri_score.samplers.base import Generators, SamplerConfig, SamplerResult, geometric_sigmas, randn_complex


@dataclass(frozen=True)
class LangevinConfig(SamplerConfig):
    """Annealed-Langevin options: steps per noise level, σ range and the step size factor."""

    name: ClassVar[str] = "langevin"
    default_nfe: ClassVar[int] = 500

    steps_per_level: int = 3
    sigma_max: float = 10.0
    sigma_min: float = 0.005
    step_lr: float = 0.1

    def validate(self) -> None:
        """steps_per_level ≥ 1, σ_max > σ_min > 0, step_lr > 0."""
        self._require(self.steps_per_level >= 1, "steps_per_level", ">= 1")
        self._require(self.sigma_min > 0, "sigma_min", "> 0")
        self._require(self.sigma_max > self.sigma_min, "sigma_max", "> sigma_min")
        self._require(self.step_lr > 0, "step_lr", "> 0")

    def levels(self, budget: int) -> int:
        """Noise levels a budget affords: ``(budget − 1) // steps_per_level``."""
        return (budget - 1) // self.steps_per_level

    def nfe_used(self, budget: int) -> int:
        """``levels · steps_per_level + 1`` (the final denoise)."""
        if self.levels(budget) < 1:
            raise InputError(f"the langevin sampler needs a budget of at least steps_per_level + 1 = "
                             f"{self.steps_per_level + 1} network evaluations, got {budget}")
        return self.levels(budget) * self.steps_per_level + 1


@torch.no_grad()
def sample_langevin(
    prior: ComplexPrior,
    likelihoods: Sequence[Likelihood],
    x_init: torch.Tensor,
    gen: Generators,
    nfe: int,
    config: LangevinConfig | None = None,
) -> SamplerResult:
    """At most ``nfe`` network evaluations in all; ``x_init`` complex ``(B·K, H, W)`` (:mod:`~mri_score.samplers.base`)."""
    cfg = config or LangevinConfig()
    cfg.nfe_used(nfe)
    sigmas = geometric_sigmas(cfg.levels(nfe), cfg.sigma_max, cfg.sigma_min)
    start = prior.nfe
    x = x_init + sigmas[0] * randn_complex(tuple(x_init.shape), gen, x_init.device)
    for s in sigmas:
        alpha = cfg.step_lr * s**2
        for _ in range(cfg.steps_per_level):
            grad = prior.score(x, s)
            for term in likelihoods:
                grad = grad + term.inflated_grad(x, s)
            x = x + alpha * grad + (2 * alpha) ** 0.5 * randn_complex(tuple(x.shape), gen, x.device)
    x = prior.denoise(x, sigmas[-1])
    return SamplerResult(samples=x, nfe=prior.nfe - start)
