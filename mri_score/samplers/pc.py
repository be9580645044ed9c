"""Reverse VE-SDE predictor–corrector with data consistency (Song et al. 2022; Chung & Ye 2022).

Per level i (Karras σ schedule, ``L`` levels):

* predictor (reverse diffusion): ``x ← x + (σ_i² − σ_{i+1}²) s(x, σ_i) + √(σ_i² − σ_{i+1}²) z``;
* data consistency: ``x ← x + λ Aᴴ(y − A x)`` (a Landweber step; ``AᴴA ≤ I`` here, so λ ≤ 1 is stable);
* corrector (Langevin at σ_{i+1}): ``x ← x + ε s + √(2ε) z``, ``ε = 2 (snr ‖z‖ / ‖s‖)²``, then data consistency.

A final Tweedie denoise and data-consistency step return the sample.  NFE = 2·L (L predictor
steps, L − 1 correctors, the final denoise), so a budget buys ``L = budget // 2`` levels (an odd
budget leaves one evaluation unused; a budget below 2 is refused).  Likelihood terms with a
data-consistency step (the k-space term) enter through it; any other term's inflated gradient is
added to the prior score ``s`` in predictor and corrector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from mri_score.errors import InputError
from mri_score.likelihood import Likelihood
from mri_score.prior import ComplexPrior
from mri_score.samplers.base import Generators, SamplerConfig, SamplerResult, karras_sigmas, randn_complex, split_terms


@dataclass(frozen=True)
class PCConfig(SamplerConfig):
    """Predictor–corrector options: σ range, corrector signal-to-noise ratio, data-consistency step λ."""

    name: ClassVar[str] = "pc"
    default_nfe: ClassVar[int] = 200

    sigma_max: float = 10.0
    sigma_min: float = 0.005
    snr: float = 0.16
    dc_weight: float = 1.0

    def validate(self) -> None:
        """σ_max > σ_min > 0, snr > 0, dc_weight in (0, 2) (Landweber's stability range for ‖A‖ ≤ 1)."""
        self._require(self.sigma_min > 0, "sigma_min", "> 0")
        self._require(self.sigma_max > self.sigma_min, "sigma_max", "> sigma_min")
        self._require(self.snr > 0, "snr", "> 0")
        self._require(0.0 < self.dc_weight < 2.0, "dc_weight", "in (0, 2)")

    def nfe_used(self, budget: int) -> int:
        """``2 · (budget // 2)``."""
        if budget < 2:
            raise InputError(f"the pc sampler needs a budget of at least 2 network evaluations, got {budget}")
        return 2 * (budget // 2)


def _norm(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1).reshape(-1, 1, 1)


@torch.no_grad()
def sample_pc(
    prior: ComplexPrior,
    likelihoods: Sequence[Likelihood],
    x_init: torch.Tensor,
    gen: Generators,
    nfe: int,
    config: PCConfig | None = None,
) -> SamplerResult:
    """Predictor–corrector sampling of ``x_init`` ``(B·K, H, W)`` within ``nfe`` network evaluations (per-image step sizes)."""
    cfg = config or PCConfig()
    cfg.nfe_used(nfe)
    stepped, guiding = split_terms(likelihoods, "has_data_step")

    def score(x: torch.Tensor, s: float) -> torch.Tensor:
        out = prior.score(x, s)
        for term in guiding:
            out = out + term.inflated_grad(x, s)
        return out

    def consistency(x: torch.Tensor) -> torch.Tensor:
        for term in stepped:
            x = term.data_step(x, cfg.dc_weight)
        return x

    sigmas = karras_sigmas(nfe // 2, cfg.sigma_max, cfg.sigma_min)
    start = prior.nfe
    x = x_init + sigmas[0] * randn_complex(tuple(x_init.shape), gen, x_init.device)
    for i, s in enumerate(sigmas):
        s_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
        var = s**2 - s_next**2
        x = x + var * score(x, s) + var**0.5 * randn_complex(tuple(x.shape), gen, x.device)
        x = consistency(x)
        if s_next > 0:
            sc = score(x, s_next)
            z = randn_complex(tuple(x.shape), gen, x.device)
            eps = 2 * (cfg.snr * _norm(z) / _norm(sc).clamp_min(1e-12)) ** 2
            x = x + eps * sc + (2 * eps) ** 0.5 * z
            x = consistency(x)
    x = prior.denoise(x, sigmas[-1])
    x = consistency(x)
    return SamplerResult(samples=x, nfe=prior.nfe - start)
