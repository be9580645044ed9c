"""A noise-conditional label classifier ``p(c | x_σ, σ)`` for classifier guidance, and its training loss.

The network is the encoder half of the score U-Net (:class:`mri_score.network.UNet`'s
blocks, after a stride-2 stem that halves the resolution: labels are global, and it makes the
classifier 4x cheaper; the stem also sees the magnitude ``|x|``, as labels do not depend on the
phase), residual blocks with FiLM from the noise embedding, strided downsampling), a
global average pool (of the un-normalised residual stream) and one linear head per label field (``NetworkConfig.label_classes``,
e.g. ``(6, 3)`` for contrast and anatomy, the vocabularies in the checkpoint's
``labels`` metadata).  Inputs are preconditioned like the denoiser's: the image is
multiplied by ``c_in(σ) = 1/√(σ² + σ_d²)`` and the noise enters as ``c_noise = ln(σ)/4``,
so one network covers every noise level.  Trained by ``python -m mri_score.train`` with
``task: classifier`` (cross-entropy, σ ~ LogNormal(p_mean, p_std), EDM's training
distribution; ``p_std: 0`` and ``p_mean: ln σ₀`` train a clean-image classifier at a fixed
tiny σ₀).  Fully convolutional: any ``H, W``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from mri_score.network import FourierEmbedding, NetworkConfig, ResBlock

#: ``task`` of classifier checkpoints (``python -m mri_score.train``).
TASK = "classifier"


class NoiseClassifier(nn.Module):
    """``log p(c_f | x_σ, σ)`` per label field ``f`` for real 2-channel images ``(B, 2, H, W)``.

    Parameters
    ----------
    cfg : NetworkConfig
        ``base_channels``, ``channel_mult``, ``num_res_blocks``, ``emb_dim``, ``groups`` and
        ``sigma_data`` as for the denoiser; ``label_classes`` (non-empty) the classes per field.
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        if not cfg.label_classes:
            raise ValueError("a classifier needs network.label_classes (classes per label field)")
        self.cfg = cfg
        self.sigma_data = float(cfg.sigma_data)
        ch = [cfg.base_channels * m for m in cfg.channel_mult]
        self.embed = FourierEmbedding(cfg.emb_dim)
        self.emb_mlp = nn.Sequential(
            nn.Linear(cfg.emb_dim, cfg.emb_dim), nn.SiLU(), nn.Linear(cfg.emb_dim, cfg.emb_dim), nn.SiLU()
        )
        # input: the real channels and the magnitude (labels are phase-invariant, and a CNN on real and
        # imaginary parts of randomly phased images learns |x| only slowly); stride 2: half resolution
        self.stem = nn.Conv2d(cfg.in_channels + 1, ch[0], 4, stride=2, padding=1)
        self.blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        cin = ch[0]
        for i, c in enumerate(ch):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, c, cfg.emb_dim, cfg.groups))
                cin = c
            self.blocks.append(blocks)
            if i < len(ch) - 1:
                self.downsamples.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.heads = nn.ModuleList(nn.Linear(cin, n) for n in cfg.label_classes)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> list[torch.Tensor]:
        """Logits, one ``(B, classes_f)`` tensor per label field, for ``x`` ``(B, 2, H, W)`` at noise ``sigma``."""
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(b)
        c_in = 1.0 / torch.sqrt(sigma**2 + self.sigma_data**2)
        emb = self.emb_mlp(self.embed(torch.log(sigma) / 4.0))
        xin = c_in[:, None, None, None] * x
        mag = torch.sqrt(xin.square().sum(dim=1, keepdim=True) + 1e-8)
        h = self.stem(torch.cat([xin, mag], dim=1))
        for i, blocks in enumerate(self.blocks):
            for blk in blocks:
                h = blk(h, emb)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        # no normalisation before the pool: a GroupNorm there leaves every channel's spatial mean at
        # ~const, and the classifier could not learn (measured: chance-level loss after 60 steps)
        h = F.silu(h).float().mean(dim=(2, 3))
        return [head(h) for head in self.heads]

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor) -> torch.Tensor:
        """``Σ_f log p(c_f | x_σ, σ)`` over the fields that ``labels`` ``(B, F)`` specify; ``(B,)``.

        A field whose index is the null label (``classes_f``) does not enter the sum.
        """
        total = torch.zeros(x.shape[0], device=x.device)
        for f, logits in enumerate(self(x, sigma)):
            idx = labels[:, f].to(x.device)
            known = idx < logits.shape[1]
            lp = torch.log_softmax(logits.float(), dim=1).gather(1, idx.clamp(max=logits.shape[1] - 1)[:, None])[:, 0]
            total = total + torch.where(known, lp, torch.zeros_like(lp))
        return total


def classifier_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, p_mean: float,
                    p_std: float, autocast: dict[str, Any]) -> torch.Tensor:
    """Cross-entropy of every label field on ``x_σ = x + σ z``, σ ~ LogNormal(p_mean, p_std); a scalar.

    ``x`` ``(B, 2, H, W)`` clean training crops, ``labels`` long ``(B, F)`` (all known).
    """
    b = x.shape[0]
    sigma = (torch.randn(b, generator=gen) * p_std + p_mean).exp().to(x.device)
    noisy = x + sigma[:, None, None, None] * torch.randn(x.shape, generator=gen).to(x.device)
    with torch.autocast(device_type=autocast["device_type"], dtype=autocast["dtype"], enabled=autocast["enabled"]):
        logits = model(noisy, sigma)
    labels = labels.to(x.device)
    return sum(F.cross_entropy(lg.float(), labels[:, f]) for f, lg in enumerate(logits)) / len(logits)


def load_classifier(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> NoiseClassifier:
    """Load a classifier checkpoint (training checkpoint or exported weights; EMA preferred; never unpickles).

    ``model.meta`` holds its metadata (``labels``: the vocabulary of each field).
    """
    from mri_score.prior import load_network

    return load_network(path, TASK, "classifier", NoiseClassifier, device)  # type: ignore[return-value]
