"""Noise level of k-space data, estimated from the data themselves.

Robust (median-absolute-deviation) estimates of the noise std per complex k-space sample
(``E|n|² = σ²``), used for the likelihood's σ_y and ESPIRiT's noise-edge threshold.
"""

from __future__ import annotations

import torch


def estimate_sigma_y(kspace: torch.Tensor, mask: torch.Tensor, edge_fraction: float = 1 / 16) -> float:
    """Noise std per complex k-space sample (``E|n|² = σ²``) from the outermost readout rows.

    The top and bottom ``edge_fraction`` of the rows of the *sampled* columns
    hold almost no signal; a median-absolute-deviation estimate on their real
    and imaginary parts is robust to what signal remains.

    Parameters
    ----------
    kspace : torch.Tensor
        Undersampled k-space, complex ``(..., H, W)``.
    mask : torch.Tensor
        Sampling mask broadcastable to ``(H, W)``.
    edge_fraction : float
        Fraction of rows at each edge used.

    Returns
    -------
    float
        σ in the units of ``kspace``; 0.0 when fewer than 16 non-zero values are available.
    """
    m = torch.as_tensor(mask).to(kspace.device)
    h = kspace.shape[-2]
    n = max(1, int(round(h * edge_fraction)))
    if m.ndim >= 1:
        sampled = m.expand(kspace.shape[-2:]) != 0
    else:
        sampled = torch.ones(kspace.shape[-2:], dtype=torch.bool, device=kspace.device)
    rows = torch.zeros(h, dtype=torch.bool, device=kspace.device)
    rows[:n] = True
    rows[h - n:] = True
    sel = sampled & rows[:, None]
    return mad_sigma(kspace[..., sel])


def mad_sigma(values: torch.Tensor) -> float:
    """Noise std per complex value (``E|n|² = σ²``) of complex ``values`` (any shape).

    A median-absolute-deviation estimate on their non-zero real and imaginary parts (robust to the
    signal that remains among them); 0.0 when fewer than 16 parts are non-zero.
    """
    parts = torch.cat([values.real.reshape(-1), values.imag.reshape(-1)])
    parts = parts[parts != 0]
    if parts.numel() < 16:
        return 0.0
    mad = (parts - parts.median()).abs().median()
    return float(1.4826 * mad * 2**0.5)


def complex_gaussian(shape: tuple[int, ...], std: float, seed: int,
                     dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """Complex Gaussian noise of ``shape`` with ``E|n|² = std²`` (real and imaginary parts each ``N(0, std²/2)``),
    drawn on the CPU from its own generator seeded ``seed`` (deterministic, independent of the global RNG);
    ``dtype`` complex64 or complex128."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    parts = torch.randn((2, *shape), generator=torch.Generator().manual_seed(int(seed)), dtype=real)
    parts = parts * (std * 2**-0.5)
    return torch.complex(parts[0], parts[1])
