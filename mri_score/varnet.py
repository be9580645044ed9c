"""End-to-end variational network (E2E-VarNet, Sriram et al. 2020), sized to train on a 2-core CPU.

The design is the paper's (fastMRI's multi-coil VarNet), written for this project:

* **Learned sensitivity-map estimation (SME).**  The fully sampled centre block of the
  mask (the ACS, read from the mask itself: :func:`acs_window`) is kept, every coil is
  transformed to the image domain, a small U-Net refines each coil image (shared across
  coils, residual: at initialisation the maps are the classic low-resolution ACS maps),
  and the result is divided by its root-sum-of-squares across coils, so ``Σ_c |S_c|² = 1``
  wherever the object (or its low-resolution halo) has signal.
* **T unrolled cascades** in k-space, each
  ``k ← k − η_t M (k − k₀) + F E(G_t(R(F⁻¹ k)))``: soft data consistency with a learned
  weight ``η_t`` (initialised at 1: hard data consistency) plus a refinement in the image
  domain, where ``R(x) = Σ_c S_c* x_c`` is the coil reduction, ``E(x) = (S_c x)_c`` the
  expansion, ``F`` the centred orthonormal FFT and ``G_t`` a small U-Net on the complex
  image (2 channels) normalised by its own mean and standard deviation.  The estimate starts
  at ``k₀``, so the first cascade's data-consistency term is zero and its ``η`` never learns
  (as in fastMRI's implementation); it is kept so that every cascade has the same parameters.
* **Outputs**: the root-sum-of-squares of the final coil images (fastMRI's target
  convention, what training regresses) and the coil-combined magnitude ``|Σ_c S_c* F⁻¹ k_c|``
  (the anatomy convention of the benchmark's primary metric).

Both U-Nets are the project's :class:`~mri_score.network.UNet` run with a constant (zero)
condition; their last convolution starts at zero, so an untrained VarNet returns exactly
the zero-filled reconstruction.  Every block is positively homogeneous (normalised inputs,
linear data consistency), so ``VarNet(a k₀) = a VarNet(k₀)`` for ``a > 0``: the calibration
scale only keeps the numbers at O(1), as for the other methods.

Weights are safetensors with ``task: "varnet"`` metadata: ``network`` (the cascade U-Net's
:class:`~mri_score.network.NetworkConfig`, which :func:`mri_score.prior.load_network`
validates) and ``varnet`` (the whole :class:`VarNetConfig`).  Training lives in
:mod:`mri_score.varnet_training`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mri_score.calibration import Calibration
from mri_score.errors import InputError
from mri_score.network import (
    NetworkConfig,
    UNet,
    channels_to_complex,
    complex_to_channels,
    meta_parameter_count,
    pad_to_multiple,
)
from mri_score.schema import Field, check_section
from operators import acs_width, fft2c, ifft2c, normalize_maps, rss
from operators.coils import acs_columns

__all__ = ["NormUNet", "VarNet", "VarNetCascade", "VarNetConfig", "acs_window", "load_varnet", "varnet_outputs",
           "varnet_reconstruct"]

#: ``task`` of VarNet checkpoints and exported weights.
TASK = "varnet"
#: Most cascades a config may ask for.
MAX_CASCADES = 64


def _default_unet() -> NetworkConfig:
    return NetworkConfig(in_channels=2, base_channels=8, channel_mult=(1, 2, 4, 6), num_res_blocks=1, emb_dim=8, groups=4)


def _default_sens() -> NetworkConfig:
    return NetworkConfig(in_channels=2, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, emb_dim=8, groups=4)


@dataclass
class VarNetConfig:
    """Architecture of a :class:`VarNet` (all that is needed to rebuild it from weights).

    Attributes
    ----------
    cascades : int
        Number of unrolled cascades ``T``.
    unet : NetworkConfig
        The refinement U-Net of every cascade (``in_channels`` 2: real and imaginary part).
    sens : NetworkConfig
        The sensitivity-map U-Net, applied to every coil's ACS image (``in_channels`` 2).
    """

    cascades: int = 8
    unet: NetworkConfig = field(default_factory=_default_unet)
    sens: NetworkConfig = field(default_factory=_default_sens)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON types (checkpoint metadata, the ``varnet`` section of a training config)."""
        return {"cascades": int(self.cascades), "unet": self.unet.to_dict(), "sens": self.sens.to_dict()}

    @staticmethod
    def stored(d: Any) -> Any:
        """A ``varnet`` section as stored in checkpoint metadata, each sub-network through
        :meth:`mri_score.network.NetworkConfig.stored` (fields added since at their old values): what a resume compares
        with :meth:`to_dict`.  Anything that is not a mapping is returned as it is (it then differs)."""
        if not isinstance(d, dict):
            return d
        return {**d, **{k: NetworkConfig.stored(d[k]) for k in ("unet", "sens") if k in d}}

    @classmethod
    def from_dict(cls, d: Any, where: str = "varnet", strict: bool = False) -> VarNetConfig:
        """Build from a config section or checkpoint metadata; :class:`InputError` naming the key otherwise.

        Missing keys take the defaults (``unet`` and ``sens`` key by key); ``strict`` refuses unknown keys
        in the sub-networks too (a training config; checkpoint metadata ignores them).
        """
        fields = {"cascades": Field("int", 1, MAX_CASCADES), "unet": Field("mapping"), "sens": Field("mapping")}
        sec = check_section(d, fields, where)
        default = cls()
        nets = {}
        for key in ("unet", "sens"):
            merged = {**getattr(default, key).to_dict(), **sec.get(key, {})}
            net = NetworkConfig.from_dict(merged, where=f"{where}.{key}", strict=strict)
            if net.in_channels != 2:
                raise InputError(f"{where}.{key}.in_channels must be 2 (real and imaginary part), got {net.in_channels}")
            if net.label_classes:
                raise InputError(f"{where}.{key}.label_classes must be empty (a VarNet is unconditional)")
            if net.attention_heads:
                raise InputError(f"{where}.{key}.attention_heads must be 0 (attention is a score-prior option)")
            nets[key] = net
        return cls(cascades=int(sec.get("cascades", default.cascades)), **nets)

    def parameter_count(self) -> int:
        """Parameters of a VarNet of this architecture (counted on the meta device: nothing allocated)."""
        return meta_parameter_count(lambda: VarNet(self))


class NormUNet(nn.Module):
    """A U-Net on complex images ``(N, H, W)`` normalised by their own mean and standard deviation.

    ``G(x) = σ U((x − μ) / σ)`` with the complex mean ``μ`` and ``σ = sqrt(mean |x − μ|²)`` of each
    image; the output is a *correction* (the mean is not added back), zero at initialisation (the
    U-Net's last convolution starts at zero) and homogeneous: ``G(a x) = a G(x)`` for ``a > 0``.
    Inputs of any ``H, W`` are zero-padded to the U-Net's stride and cropped back.
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = UNet(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Complex ``(N, H, W)`` complex64 -> correction, complex ``(N, H, W)`` in the units of ``x``."""
        mu = x.mean(dim=(-2, -1), keepdim=True)
        centred = x - mu
        sigma = torch.sqrt((centred.abs() ** 2).mean(dim=(-2, -1), keepdim=True)).clamp_min(1e-12)
        h, crop = pad_to_multiple(complex_to_channels(centred / sigma), self.net.stride)
        h = h.contiguous(memory_format=torch.channels_last)  # ~1.3x faster convolutions on CPU (oneDNN)
        out = crop(self.net(h, torch.zeros(h.shape[0], device=h.device)).float())
        return channels_to_complex(out) * sigma


class VarNetCascade(nn.Module):
    """One cascade: ``k − η M (k − k₀) + F E(G(R(F⁻¹ k)))`` (soft data consistency plus image-domain refinement)."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.refine = NormUNet(cfg)
        #: The data-consistency weight η (fastMRI initialises it at 1: hard data consistency).
        self.eta = nn.Parameter(torch.ones(()))

    def forward(self, k: torch.Tensor, k0: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """One update of the k-space estimate.

        Parameters
        ----------
        k : torch.Tensor
            Current multi-coil k-space, complex64 ``(B, C, H, W)``.
        k0 : torch.Tensor
            Measured (masked) k-space, complex64 ``(B, C, H, W)``, zero where not sampled.
        mask : torch.Tensor
            Binary float32 mask broadcasting to ``(B, 1, H, W)``.
        maps : torch.Tensor
            Coil maps, complex64 ``(B, C, H, W)``.

        Returns
        -------
        torch.Tensor
            The new estimate, complex64 ``(B, C, H, W)``.
        """
        image = (maps.conj() * ifft2c(k)).sum(dim=1)
        term = fft2c(maps * self.refine(image)[:, None])
        return k - self.eta * mask * (k - k0) + term


def acs_window(mask: torch.Tensor) -> torch.Tensor:
    """The fully sampled centre (ACS) of each mask of a batch, as a 0/1 window of the mask's shape.

    Parameters
    ----------
    mask : torch.Tensor
        float ``(B, 1, 1, W)`` (column masks) or ``(B, 1, H, W)`` (2-D masks), non-zero where sampled.

    Returns
    -------
    torch.Tensor
        float32, same shape and device: 1 on the run of sampled columns through ``W // 2``
        (:func:`operators.coils.acs_columns`; an equispaced line next to the block extends it, as
        the sampled data do), or for a 2-D mask on the sampled part of the centred square of side
        :func:`operators.acs_width`.

    Raises
    ------
    InputError
        When a mask has no sampled centre (no ACS to estimate coil maps from).
    """
    m = (mask != 0).cpu()
    win = torch.zeros(m.shape, dtype=torch.float32)
    for b in range(m.shape[0]):
        mb = m[b, 0]
        if mb.shape[0] == 1:
            lo, hi = acs_columns(mb)
            if hi <= lo:
                raise InputError(f"mask {b} of the batch does not sample the k-space centre (no ACS for the coil maps)")
            win[b, 0, :, lo:hi] = 1.0
        else:
            width = acs_width(mb)
            if width < 1:
                raise InputError(f"mask {b} of the batch does not sample the k-space centre (no ACS for the coil maps)")
            h, w = mb.shape
            r0, c0 = h // 2 - width // 2, w // 2 - width // 2
            win[b, 0, r0 : r0 + width, c0 : c0 + width] = mb[r0 : r0 + width, c0 : c0 + width].float()
    return win.to(mask.device)


class VarNet(nn.Module):
    """E2E-VarNet: learned coil maps from the ACS, then :attr:`VarNetConfig.cascades` unrolled cascades.

    Parameters
    ----------
    cfg : VarNetConfig
        The architecture.
    """

    def __init__(self, cfg: VarNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sens = NormUNet(cfg.sens)
        self.cascades = nn.ModuleList(VarNetCascade(cfg.unet) for _ in range(cfg.cascades))
        self.to(memory_format=torch.channels_last)

    def sens_maps(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Learned coil maps from the ACS of masked k-space.

        Parameters
        ----------
        kspace : torch.Tensor
            Masked k-space, complex64 ``(B, C, H, W)``.
        mask : torch.Tensor
            float32 ``(B, 1, 1, W)`` or ``(B, 1, H, W)``.

        Returns
        -------
        torch.Tensor
            complex64 ``(B, C, H, W)`` with ``Σ_c |S_c|² = 1`` wherever any coil has signal (0 elsewhere).
        """
        b, c, h, w = kspace.shape
        coils = ifft2c(kspace * acs_window(mask)).reshape(b * c, h, w)
        maps = (coils + self.sens(coils)).reshape(b, c, h, w)
        return normalize_maps(maps)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct a batch.

        Parameters
        ----------
        kspace : torch.Tensor
            Masked multi-coil k-space, complex64 ``(B, C, H, W)`` (divided by the calibration scale).
        mask : torch.Tensor
            Binary float32 mask ``(B, 1, 1, W)`` (columns) or ``(B, 1, H, W)`` (2-D).

        Returns
        -------
        rss_image : torch.Tensor
            float32 ``(B, H, W)``: root-sum-of-squares of the final coil images (fastMRI's target convention).
        combined : torch.Tensor
            float32 ``(B, H, W)``: ``|Σ_c S_c* x_c|`` of the final coil images with the learned maps (anatomy).
        """
        if kspace.ndim != 4 or not torch.is_complex(kspace):
            raise InputError(f"VarNet expects complex k-space (B, coils, H, W), got {kspace.dtype} {tuple(kspace.shape)}")
        mask = mask.to(device=kspace.device, dtype=torch.float32)
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-1] != kspace.shape[-1]:
            raise InputError(f"VarNet expects a mask (B, 1, 1 or H, W) for k-space {tuple(kspace.shape)}, "
                             f"got {tuple(mask.shape)}")
        k0 = kspace * mask
        maps = self.sens_maps(k0, mask)
        k = k0
        for cascade in self.cascades:
            k = cascade(k, k0, mask, maps)
        coils = ifft2c(k)
        return rss(coils, dim=1), (maps.conj() * coils).sum(dim=1).abs()


def _batch_mask(mask: torch.Tensor | np.ndarray, width: int) -> torch.Tensor:
    """A single slice's mask (``(W,)``, ``(1, W)``, ``(1, 1, W)``, ``(H, W)``, ...) as ``(1, 1, 1 or H, W)`` float32."""
    m = torch.as_tensor(mask).float()
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim == 1:
        m = m[None]
    if m.ndim != 2 or m.shape[-1] != width:
        raise InputError(f"mask of shape {tuple(torch.as_tensor(mask).shape)} does not fit k-space of width {width}")
    return m[None, None]


@torch.no_grad()
def varnet_outputs(model: VarNet, kspace: torch.Tensor, mask: torch.Tensor | np.ndarray,
                   cal: Calibration) -> tuple[torch.Tensor, torch.Tensor]:
    """Both VarNet outputs for one undersampled slice, in data units.

    Parameters
    ----------
    model : VarNet
        A trained network (:func:`load_varnet`), on any device.
    kspace : torch.Tensor
        Undersampled k-space, complex64 ``(coils, H, W)``, on any device.
    mask : torch.Tensor or np.ndarray
        Sampling mask ``(W,)`` / ``(1, W)`` / ``(H, W)`` (anything that squeezes to those), 1 where sampled.
    cal : Calibration
        The slice's calibration; only :attr:`Calibration.scale` is used (the data are divided by it,
        the outputs multiplied back), as for every method.

    Returns
    -------
    rss_image, combined : torch.Tensor
        float32 ``(H, W)`` on the CPU: RSS of the final coil images, and ``|Σ S_c* x_c|``.
    """
    dev = next(model.parameters()).device
    scale = float(cal.scale)
    m = _batch_mask(mask, kspace.shape[-1]).to(dev)
    k = (kspace.to(dev, torch.complex64) / scale)[None]
    out_rss, out_comb = model(k * m, m)
    return out_rss[0].float().cpu() * scale, out_comb[0].float().cpu() * scale


def varnet_reconstruct(model: VarNet, kspace: torch.Tensor, mask: torch.Tensor | np.ndarray, cal: Calibration,
                       output: str = "rss") -> torch.Tensor:
    """Apply the VarNet to one undersampled slice ``(coils, H, W)``; returns the magnitude ``(H, W)`` in data units.

    Mirrors :func:`mri_score.supervised.unet_reconstruct`: only the calibration's reference scale
    is used.  ``output`` is ``"rss"`` (the RSS of the final coil images: what the network is trained
    on, fastMRI's convention) or ``"combined"`` (``|Σ S_c* x_c|`` with the learned maps: the anatomy
    convention).  :func:`varnet_outputs` gives both from one pass.
    """
    if output not in ("rss", "combined"):
        raise InputError(f"output must be 'rss' or 'combined', got {output!r}")
    out_rss, out_comb = varnet_outputs(model, kspace, mask, cal)
    return out_rss if output == "rss" else out_comb


def _header_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint's safetensors header (read after :func:`load_network` verified it)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    return meta if isinstance(meta, Mapping) else {}


def load_varnet(path: str | os.PathLike[str], device: str | torch.device = "cpu", use_ema: bool = True) -> VarNet:
    """Load exported (``ema.``) or training (``model.``) VarNet weights in eval mode; never unpickles.

    Goes through :func:`mri_score.prior.load_network` (digest verified, ``task: "varnet"`` required,
    strict key and shape matching); the architecture comes from the metadata's ``varnet`` section.
    Raises :class:`~mri_score.errors.CheckpointError` (one line) for anything else.
    """
    from mri_score.limits import check_fits
    from mri_score.prior import load_network

    path = Path(path)

    def build(unet_cfg: NetworkConfig) -> VarNet:
        cfg = VarNetConfig.from_dict(_header_meta(path).get("varnet"), where="metadata varnet")
        if cfg.unet.to_dict() != unet_cfg.to_dict():
            raise ValueError("metadata 'network' and 'varnet.unet' differ")
        check_fits(cfg.parameter_count() * 4 * 2, f"{path}: the VarNet its metadata declares", "building it")
        return VarNet(cfg)

    return load_network(path, TASK, "VarNet", build, device, use_ema)  # type: ignore[return-value]
