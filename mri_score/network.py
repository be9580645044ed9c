"""Noise-conditional U-Net with EDM preconditioning (Karras et al. 2022).

The network acts on 2-channel (real, imaginary) images ``(B, 2, H, W)`` float32
and is fully convolutional: any ``H, W`` works (inputs are zero-padded to a
multiple of the network's stride inside :class:`EDMDenoiser` and cropped back).

``D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))`` with
``c_skip = σ_d² / (σ² + σ_d²)``, ``c_out = σ σ_d / √(σ² + σ_d²)``,
``c_in = 1 / √(σ² + σ_d²)``, ``c_noise = ln(σ) / 4``; the score is
``s(x, σ) = (D(x; σ) − x) / σ²``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.overrides import TorchFunctionMode

from mri_score.errors import InputError
from mri_score.schema import Field, check_section


@dataclass
class NetworkConfig:
    """Architecture of the U-Net (all that is needed to rebuild it from weights)."""

    in_channels: int = 2
    base_channels: int = 32
    channel_mult: Sequence[int] = field(default_factory=lambda: (1, 2, 3, 4))
    num_res_blocks: int = 1
    emb_dim: int = 128
    groups: int = 8
    sigma_data: float = 0.5
    #: Classes per label field (e.g. ``(6, 3)`` for contrast and anatomy); empty: unconditional.
    label_classes: Sequence[int] = field(default_factory=tuple)
    #: Heads of the self-attention block between the two middle residual blocks (the lowest resolution,
    #: ``1 / 2**(len(channel_mult) - 1)`` of the input); 0: no attention.
    attention_heads: int = 0

    def to_dict(self) -> dict:
        """The config as a plain dict (tuples as lists), for checkpoint metadata."""
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["label_classes"] = list(self.label_classes)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "network", strict: bool = False) -> NetworkConfig:
        """Build from a config section or checkpoint metadata, validated by :data:`NETWORK_FIELDS`.

        Keys this version does not know are ignored (checkpoint metadata), or refused with
        ``strict`` (a training config).  Raises :class:`~mri_score.errors.InputError` naming the
        key (``where.key``) for a wrong type or a value out of range (``groups: 0``, an empty
        ``channel_mult``, an odd ``emb_dim``) and when ``groups`` does not divide every channel count.
        """
        if not isinstance(d, dict):
            raise InputError(f"{where} must be a mapping, got {type(d).__name__}")
        known = check_section(d if strict else {k: d[k] for k in NETWORK_FIELDS if k in d}, NETWORK_FIELDS, where)
        cfg = cls(**known)
        cfg.channel_mult = tuple(int(c) for c in cfg.channel_mult)
        cfg.label_classes = tuple(int(c) for c in cfg.label_classes)
        if cfg.base_channels * max(cfg.channel_mult) > MAX_CHANNELS:
            raise InputError(f"{where}.base_channels x channel_mult reaches {cfg.base_channels * max(cfg.channel_mult)} "
                             f"channels (at most {MAX_CHANNELS})")
        if cfg.emb_dim % 2:
            raise InputError(f"{where}.emb_dim must be even, got {cfg.emb_dim}")
        for c in sorted({cfg.base_channels * m for m in cfg.channel_mult}):
            if c % min(cfg.groups, c):
                raise InputError(f"{where}.groups {cfg.groups} does not divide the {c} channels of a level "
                                 f"({where}.base_channels x channel_mult)")
        low = cfg.base_channels * cfg.channel_mult[-1]
        if cfg.attention_heads and low % cfg.attention_heads:
            raise InputError(f"{where}.attention_heads {cfg.attention_heads} does not divide the {low} channels of "
                             "the lowest level")
        return cfg

    @staticmethod
    def stored(d: Any) -> Any:
        """A network section as stored in checkpoint metadata, with the fields added since (:data:`ADDED_FIELDS`) at
        the defaults that reproduce older networks: what a resume compares with :meth:`to_dict`.  Anything that
        is not a mapping is returned as it is (it then differs)."""
        return {**ADDED_FIELDS, **d} if isinstance(d, dict) else d

    def parameter_count(self) -> int:
        """Parameters of the score network of this architecture, counted on the meta device (nothing allocated)."""
        return meta_parameter_count(lambda: UNet(self))


class _SkipRandomInit(TorchFunctionMode):
    """In-place random initialisers (``Tensor.normal_``) as no-ops.

    On the meta device they have no values to fill, and ``normal_``'s meta kernel is a Python reference whose
    first call imports torch's compiler stack (about 1.8 s of a command's start-up on a 2-core CPU).
    """

    SKIPPED = frozenset({"normal_"})

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        if getattr(func, "__name__", None) in self.SKIPPED:  # Tensor.normal_(...) or nn.init.normal_(tensor=...)
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))


def meta_parameter_count(build: Callable[[], nn.Module]) -> int:
    """Parameters of the module ``build()`` makes, built on the meta device: shapes only, nothing allocated or drawn.

    What the memory checks of a checkpoint's declared architecture use before building it
    (:meth:`NetworkConfig.parameter_count`, :meth:`mri_score.varnet.VarNetConfig.parameter_count`).
    """
    with torch.device("meta"), _SkipRandomInit():
        return sum(p.numel() for p in build().parameters())


#: Fields added to :class:`NetworkConfig` after checkpoints were first written, with the value an older
#: checkpoint's network has (:meth:`NetworkConfig.stored`).
ADDED_FIELDS = {"attention_heads": 0}
#: The widest level (``base_channels x max(channel_mult)``) a network may have.
MAX_CHANNELS = 8192
#: The schema of a network section (config or checkpoint metadata), :func:`mri_score.schema.check_section`.
NETWORK_FIELDS = {
    "in_channels": Field("int", 1, 16), "base_channels": Field("int", 1, 1024),
    "channel_mult": Field("ints", 1, 64, length=(1, 8)), "num_res_blocks": Field("int", 1, 16),
    "emb_dim": Field("int", 2, 4096), "groups": Field("int", 1, 1024),
    "sigma_data": Field("float", 0.0, 1e6, open_low=True), "label_classes": Field("ints", 1, 10_000, length=(0, 8)),
    "attention_heads": Field("int", 0, 64),
}


class FourierEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise condition ``c_noise``: ``(B,)`` -> ``(B, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        # computed on the CPU, then moved to the default device (a device context's): exp's meta kernel is a Python
        # reference whose first call imports torch's compiler stack (meta_parameter_count builds on meta)
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device="cpu") / half)
        self.register_buffer("freqs", freqs.to(torch.get_default_device()), persistent=False)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """Noise levels ``c (B,)`` -> Fourier features ``(B, dim)``."""
        arg = c[:, None].float() * 1000.0 * self.freqs[None, :] / 1000.0 * 100.0
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv ×2 with FiLM (scale, shift) from the noise embedding and a 1×1 skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Residual block on ``x (B, C, H, W)`` conditioned on the embedding ``emb (B, E)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels of ``(B, C, H, W)``, residual: GroupNorm, 1×1 q/k/v, attention, 1×1 out.

    The output projection starts at zero, so a new block is the identity: a network grown by one
    (``train.init_from``, :func:`mri_score.training.grown_parts`) starts as exactly its parent.  Its cost grows
    with the square of the lowest level's pixel count (a 2x finer grid: 16x).
    """

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + proj(attention(x))`` for ``x (B, C, H, W)``."""
        b, c, h, w = x.shape
        # channel i·C + j·(C/heads) + d of qkv is part i (q, k, v), head j, feature d; the features of a head are
        # kept contiguous (the fused CPU/CUDA attention kernels need a unit last stride, else the math kernel
        # builds the whole (HW)² matrix in fp32)
        t = self.qkv(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, 3C)
        q, k, v = t.reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        return x + self.proj(out.transpose(1, 2).reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """The raw network ``F(x; c_noise)``: ``(B, C, H, W)`` with ``H, W`` multiples of :attr:`stride`."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = [cfg.base_channels * m for m in cfg.channel_mult]
        self.stride = 2 ** (len(ch) - 1)
        self.embed = FourierEmbedding(cfg.emb_dim)
        self.emb_mlp = nn.Sequential(
            nn.Linear(cfg.emb_dim, cfg.emb_dim), nn.SiLU(), nn.Linear(cfg.emb_dim, cfg.emb_dim), nn.SiLU()
        )
        # one table per label field; index ``classes`` is the null label (unconditional). Zero-initialised,
        # so a network fine-tuned from an unconditional one starts out equal to it.
        self.label_embeds = nn.ModuleList(nn.Embedding(n + 1, cfg.emb_dim) for n in cfg.label_classes)
        for table in self.label_embeds:
            nn.init.zeros_(table.weight)
        self.stem = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        cin = ch[0]
        skips = []
        for i, c in enumerate(ch):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, c, cfg.emb_dim, cfg.groups))
                cin = c
            self.down_blocks.append(blocks)
            skips.append(c)
            if i < len(ch) - 1:
                self.downsamples.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([ResBlock(cin, cin, cfg.emb_dim, cfg.groups) for _ in range(2)])
        self.mid_attn = AttentionBlock(cin, cfg.attention_heads, cfg.groups) if cfg.attention_heads else None
        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i in reversed(range(len(ch))):
            c = ch[i]
            blocks = nn.ModuleList()
            blocks.append(ResBlock(cin + skips[i], c, cfg.emb_dim, cfg.groups))
            for _ in range(cfg.num_res_blocks - 1):
                blocks.append(ResBlock(c, c, cfg.emb_dim, cfg.groups))
            cin = c
            self.up_blocks.append(blocks)
            if i > 0:
                self.upsamples.append(nn.Conv2d(c, ch[i - 1], 3, padding=1))
                cin = ch[i - 1]
        self.out_norm = nn.GroupNorm(min(cfg.groups, cin), cin)
        self.out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``labels``: long ``(B, F)`` (one column per label field, the null index for "none") or None (all null)."""
        emb = self.embed(c_noise)
        for f, table in enumerate(self.label_embeds):
            idx = labels[:, f] if labels is not None else torch.full((x.shape[0],), table.num_embeddings - 1,
                                                                     dtype=torch.long, device=x.device)
            emb = emb + table(idx.to(x.device))
        emb = self.emb_mlp(emb)
        h = self.stem(x)
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for blk in blocks:
                h = blk(h, emb)
            skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        h = self.mid[0](h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid[1](h, emb)
        for j, blocks in enumerate(self.up_blocks):
            h = torch.cat([h, skips.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb)
            if j < len(self.upsamples):
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                h = self.upsamples[j](h)
        return self.out(F.silu(self.out_norm(h)))


def pad_to_multiple(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Zero-pad ``(..., H, W)`` symmetrically to multiples of ``stride``; returns it and the inverse crop."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if not (ph or pw):
        return x, lambda y: y
    padded = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return padded, lambda y: y[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]


class EDMDenoiser(nn.Module):
    """EDM-preconditioned denoiser ``D(x; σ)`` on real 2-channel images ``(B, 2, H, W)``.

    ``sigma`` is a float or a tensor ``(B,)``.  Inputs of any ``H, W`` are zero-padded
    to a multiple of the U-Net stride and cropped back.
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = UNet(cfg)
        self.sigma_data = float(cfg.sigma_data)

    def null_labels(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The all-null label tensor ``(batch, F)`` (unconditional), or None for an unconditional network."""
        if not self.cfg.label_classes:
            return None
        return torch.tensor([list(self.cfg.label_classes)] * batch, dtype=torch.long, device=device)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``D(x; σ, c)`` for ``x`` ``(B, 2, H, W)``; ``labels`` long ``(B, F)`` or None (unconditional)."""
        b = x.shape[0]
        if labels is not None and not self.cfg.label_classes:
            raise ValueError("labels given to an unconditional network")
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(b)
        s = sigma[:, None, None, None]
        sd = self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        c_in = 1.0 / torch.sqrt(s**2 + sd**2)
        c_noise = torch.log(sigma) / 4.0
        xin, crop = pad_to_multiple(c_in * x, self.net.stride)
        f = crop(self.net(xin, c_noise, labels).float())
        return c_skip * x + c_out * f

    def score(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``∇ log p_σ(x) ≈ (D(x; σ) − x) / σ²``, same shape as ``x``."""
        sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        return (self(x, sigma) - x) / sig**2


def complex_to_channels(x: torch.Tensor) -> torch.Tensor:
    """Complex ``(B, H, W)`` -> real ``(B, 2, H, W)`` (real, imaginary): the network boundary."""
    return torch.view_as_real(x).permute(0, 3, 1, 2).contiguous()


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """Real ``(B, 2, H, W)`` -> complex ``(B, H, W)``."""
    return torch.complex(x[:, 0].float(), x[:, 1].float())


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
