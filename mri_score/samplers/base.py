"""What every posterior sampler shares: the complex-image prior wrapper, the physics problem and σ schedules."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mri_score.network import EDMDenoiser, channels_to_complex, complex_to_channels
from operators import Sense


class ComplexPrior:
    """Wrap an :class:`EDMDenoiser` to act on complex images ``(K, H, W)`` and count network evaluations (NFE)."""

    def __init__(self, model: EDMDenoiser) -> None:
        # channels_last: the U-Net's convolutions run ~1.25x faster per NFE on CPU (256², batch 2)
        self.model = model.to(memory_format=torch.channels_last)
        self.nfe = 0
        p = next(model.parameters())
        self.device = p.device

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Tweedie estimate ``E[x₀ | x_σ] ≈ D(x; σ)``: complex ``(K, H, W)`` -> same."""
        self.nfe += 1
        out = self.model(complex_to_channels(x).contiguous(memory_format=torch.channels_last), sigma)
        return channels_to_complex(out)

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``∇ log p_σ(x) ≈ (D(x; σ) − x) / σ²`` for complex ``(K, H, W)``."""
        return (self.denoise(x, sigma) - x) / sigma**2


@dataclass
class Problem:
    """The physics: ``y = A x + n`` with ``A`` a :class:`Sense` operator and complex Gaussian ``n``.

    ``y`` is masked multi-coil k-space ``(coils, H, W)``, already divided by the
    reference scale; ``sigma_y`` is the noise standard deviation per complex
    k-space sample in the same units (``E|n|² = σ_y²``).
    """

    op: Sense
    y: torch.Tensor
    sigma_y: float

    def residual_grad(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᴴ(y − A x)`` for ``x`` of shape ``(K, H, W)``."""
        return self.op.adjoint(self.y - self.op(x))

    def zero_filled(self) -> torch.Tensor:
        """``Aᴴ y``, ``(H, W)``."""
        return self.op.adjoint(self.y)


def karras_sigmas(steps: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> list[float]:
    """Karras et al. (2022) σ schedule: ``steps`` decreasing levels from ``sigma_max`` to ``sigma_min``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return [float(sigma_max)]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [float((a + i / (steps - 1) * (b - a)) ** rho) for i in range(steps)]


def geometric_sigmas(levels: int, sigma_max: float, sigma_min: float) -> list[float]:
    """Geometric σ levels (NCSN / Jalal et al.) from ``sigma_max`` down to ``sigma_min``."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if levels == 1:
        return [float(sigma_max)]
    r = (sigma_min / sigma_max) ** (1 / (levels - 1))
    return [float(sigma_max * r**i) for i in range(levels)]


def randn_complex(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Complex normal with unit variance in each of the real and imaginary parts (``E|z|² = 2``),
    the network's 2-channel noise model: ``x_σ = x + σ z``."""
    re = torch.randn(shape, generator=gen, device=gen.device).to(device)
    im = torch.randn(shape, generator=gen, device=gen.device).to(device)
    return torch.complex(re, im)


@dataclass
class SamplerResult:
    """Posterior samples ``(K, H, W)`` complex (scaled units) and the network evaluations used."""

    samples: torch.Tensor
    nfe: int
