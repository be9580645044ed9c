"""Supervised fastMRI-style U-Net baseline: zero-filled RSS magnitude -> fully sampled RSS magnitude.

As in fastMRI's multi-coil U-Net baseline, the network sees the RSS of the
zero-filled coil images and regresses the RSS of the fully sampled data with an
L1 loss; it is trained for one mask (here 4× equispaced, centre fraction 0.08)
and has no physics at test time, which is what the robustness benchmark probes.
The backbone is the project's :class:`~mri_score.network.UNet` with a constant
condition (so no noise input), used residually: ``out = x + F(x)``.  Both images
are divided by the one ACS reference scale (:mod:`mri_score.scaling`).

Training pairs are simulated on the fly from full synthetic slices: birdcage
coil maps, complex Gaussian noise at a random SNR, a fastMRI mask with a random
offset; random row windows (the mask acts on W only, so rows do not mix) and
flips augment.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from mri_score.calibration import Calibration
from mri_score.errors import InputError
from mri_score.network import NetworkConfig, UNet, pad_to_multiple
from mri_score.scaling import kspace_scale
from operators import birdcage_maps, create_mask_for_mask_type, fft2c, ifft2c, rss


class MagnitudeUNet(nn.Module):
    """Residual U-Net on magnitude images ``(B, 1, H, W)`` float32 (any ``H, W``)."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        if cfg.in_channels != 1:
            raise InputError(f"the supervised U-Net takes 1 channel (magnitude), got network.in_channels={cfg.in_channels}")
        self.cfg = cfg
        self.net = UNet(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + F(x)`` for magnitudes ``(B, 1, H, W)``, padded to the U-Net stride and cropped back."""
        xin, crop = pad_to_multiple(x, self.net.stride)
        f = self.net(xin, torch.zeros(x.shape[0], device=x.device)).float()
        return x + crop(f)


class CoilSliceSource:
    """Full complex slices by matrix size, and what simulating multi-coil training data from them takes.

    The common state of the on-the-fly sources (:class:`KspacePairSource`,
    :class:`mri_score.varnet_training.VarNetPairSource`): ``by_shape`` the slices with at least ``rows``
    rows grouped by shape, ``shapes`` those shapes sorted, ``mask_func`` the fastMRI mask function, ``maps``
    birdcage coil maps per shape, ``snr`` the SNR range.

    Parameters
    ----------
    slices : sequence of complex ``(H, W)`` arrays (any scale; examples are scaled from their own ACS).
    rows : height of the random row window (the full width is kept: the mask acts on W).
    mask_type, acceleration, center_fraction : the fastMRI mask trained for (:data:`operators.MASK_TYPES`).
    coils : number of birdcage coils.
    snr : (lo, hi) range of the SNR (99th-percentile magnitude / noise std), drawn log-uniformly.
    """

    def __init__(self, slices: Sequence[np.ndarray], rows: int, mask_type: str = "equispaced",
                 acceleration: float = 4.0, center_fraction: float = 0.08, coils: int = 8,
                 snr: tuple[float, float] = (30.0, 300.0)) -> None:
        self.by_shape: dict[tuple[int, int], list[np.ndarray]] = {}
        for s in slices:
            if s.shape[0] >= rows:
                self.by_shape.setdefault(tuple(s.shape), []).append(s)
        if not self.by_shape:
            raise InputError(f"no training slice has at least {rows} rows")
        self.shapes = sorted(self.by_shape)
        self.rows = rows
        self.mask_func = create_mask_for_mask_type(mask_type, [center_fraction], [acceleration])
        self.maps = {shape: torch.from_numpy(birdcage_maps(coils, shape)) for shape in self.shapes}
        self.snr = (float(snr[0]), float(snr[1]))

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_shape.values())


class KspacePairSource(CoilSliceSource):
    """On-the-fly (zero-filled RSS, target RSS) pairs ``(B, 1, rows, W)`` from full complex slices.

    Parameters as :class:`CoilSliceSource`.
    """

    def batch(self, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)``, each ``(B, 1, rows, W)`` float32, one matrix size per batch."""
        shape = self.shapes[int(torch.randint(len(self.shapes), (1,), generator=gen))]
        pool = self.by_shape[shape]
        maps = self.maps[shape]
        inputs, targets = [], []
        for _ in range(batch_size):
            img = torch.from_numpy(pool[int(torch.randint(len(pool), (1,), generator=gen))])
            flips = torch.randint(2, (2,), generator=gen).tolist()
            if flips[0]:
                img = img.flip(-2)
            if flips[1]:
                img = img.flip(-1)
            log_lo, log_hi = np.log(self.snr[0]), np.log(self.snr[1])
            snr = float(np.exp(log_lo + (log_hi - log_lo) * float(torch.rand(1, generator=gen))))
            seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
            zf, target = simulate_pair(img, maps, self.mask_func, snr, seed)
            r = int(torch.randint(shape[0] - self.rows + 1, (1,), generator=gen))
            inputs.append(zf[r : r + self.rows])
            targets.append(target[r : r + self.rows])
        return torch.stack(inputs)[:, None], torch.stack(targets)[:, None]


def simulate_pair(image: torch.Tensor, maps: torch.Tensor, mask_func, snr: float,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One training pair from a complex image ``(H, W)``: scaled zero-filled RSS and target RSS, real ``(H, W)``."""
    gen = torch.Generator().manual_seed(seed)
    clean = fft2c(maps * image)
    sigma = float(torch.quantile(image.abs().flatten(), 0.99)) / snr
    noise = torch.complex(torch.randn(clean.shape, generator=gen), torch.randn(clean.shape, generator=gen))
    kspace = clean + sigma / 2**0.5 * noise
    mask, _ = mask_func(kspace.shape, seed=seed)
    under = kspace * mask
    scale = kspace_scale(under, mask.squeeze(), maps)
    return rss(ifft2c(under), dim=0) / scale, rss(ifft2c(kspace), dim=0) / scale


def supervised_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], autocast: dict) -> torch.Tensor:
    """Mean L1 loss between ``model(inputs)`` and ``targets`` (fastMRI's U-Net loss)."""
    inputs, targets = batch
    with torch.autocast(device_type=autocast["device_type"], dtype=autocast["dtype"], enabled=autocast["enabled"]):
        out = model(inputs)
    return F.l1_loss(out.float(), targets)


@torch.no_grad()
def unet_reconstruct(model: MagnitudeUNet, kspace: torch.Tensor, mask: torch.Tensor, cal: Calibration) -> torch.Tensor:
    """Apply the U-Net to one undersampled slice ``(coils, H, W)``; returns the magnitude ``(H, W)`` in data units.

    Only the calibration's reference scale is used (the same as every method's).
    """
    scale = cal.scale
    dev = next(model.parameters()).device
    zf = rss(ifft2c(kspace * mask), dim=0) / scale
    return model(zf[None, None].to(dev))[0, 0].cpu() * scale


def load_unet(path: str, device: str | torch.device = "cpu") -> MagnitudeUNet:
    """Load exported (``ema.``) or training (``model.``) weights of a supervised U-Net; never unpickles."""
    from mri_score.prior import load_network

    return load_network(path, "supervised", "supervised U-Net", MagnitudeUNet, device)  # type: ignore[return-value]
