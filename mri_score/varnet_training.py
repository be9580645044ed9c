"""Training of the E2E-VarNet (:mod:`mri_score.varnet`): data, loss, loop, checkpoints and export.

**Data** (:class:`VarNetPairSource`): full complex slices of the project's synthetic corpus
(:func:`mri_score.data.datasets.synthetic_slices`, the training split) are turned on the fly
into multi-coil examples: birdcage coil maps, a random row window of the coil images (the
column masks act on ``W`` only, so the window is a smaller field of view of the same
physics), the centred orthonormal FFT, complex Gaussian noise at a log-uniform random SNR,
and a fastMRI mask (:func:`operators.create_mask_for_mask_type`: ``data.mask.type``,
``accel`` and ``center_fraction``; random 4x equispaced with centre fraction 0.08 by
default) seeded from the run's generator.  The masked k-space and the target (the RSS of
the *noisy fully sampled* coil images: fastMRI's target) are divided by the ACS reference
scale of the masked data (:func:`mri_score.scaling.kspace_scale`, the scale every method
uses at test time).  Random flips augment.

**Loss** (:func:`varnet_loss`): on the RSS output, ``α (1 − SSIM) + (1 − α) L1`` with
``α = 0.84`` (``train.loss: ssim_l1``, the default).  fastMRI trains the VarNet on SSIM
alone; SSIM is blind to a global intensity offset and slow to fix the background, and the
benchmark also scores PSNR, so an L1 term is added with the weight of Zhao et al.'s
SSIM+L1 mix ("Loss functions for image restoration with neural networks", 2017).  SSIM is
fastMRI's: 7x7 uniform window, ``k1 = 0.01``, ``k2 = 0.03``, the data range of each target
its maximum.  ``train.loss: l1`` and ``ssim`` select either term alone.

**Loop** (:func:`train_varnet`): Adam with linear warm-up, gradient clipping, an EMA copy,
fp32 throughout (the FFTs and the complex data consistency stay fp32; the networks are small).
Checkpoints are safetensors (:func:`mri_score.checkpoint.save_checkpoint`: model, EMA, Adam
state, generator state); ``resume`` continues at the exact step with the same batches.
:func:`export_varnet` writes the EMA weights with the config, the command and the parent
(``train.init_from`` with its SHA-256, or :data:`mri_score.training.NO_PARENT`).

A config (``configs/varnet_synth_4x.yaml``)::

    task: varnet
    out_dir: runs/varnet_synth_4x
    data: {source: synthetic, families, pool_size, sizes, pixel_mm, crop (rows), coils, snr, mask, seed}
    varnet: {cascades, unet: <network section>, sens: <network section>}
    train: {steps, batch, lr, warmup, ema_decay, grad_clip, ckpt_every, log_every, seed, loss, init_from}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from mri_score import limits
from mri_score.atomic import protected_inputs
from mri_score.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from mri_score.errors import CheckpointError, InputError
from mri_score.network import count_parameters
from mri_score.scaling import kspace_scale
from mri_score.schema import Field, check_section
from mri_score.supervised import CoilSliceSource
from mri_score.train_config import DATA_FIELDS, MASK_FIELDS, TRAIN_FIELDS, input_files
from mri_score.training import (
    NO_PARENT,
    StopFlag,
    check_run_outputs,
    ema_copy,
    read_resume_checkpoint,
    restore_training_state,
    training_tensors,
    update_ema,
    warmup_lr,
)
from mri_score.varnet import TASK, VarNet, VarNetConfig, load_varnet
from operators import fft2c, ifft2c, rss

__all__ = ["LOSSES", "VarNetBatch", "VarNetPairSource", "build_varnet_source", "export_varnet", "ssim", "train_varnet",
           "validate_varnet_config", "varnet_loss"]

#: ``train.loss`` choices: SSIM+L1 mix (default), L1 alone, SSIM alone (fastMRI's VarNet loss).
LOSSES = ("ssim_l1", "l1", "ssim")
#: Weight of ``1 − SSIM`` in the ``ssim_l1`` loss (Zhao et al. 2017); ``1 − α`` weighs the L1 term.
SSIM_L1_ALPHA = 0.84
#: What the checkpoints record about the intensity scale of inputs and targets.
SCALING = "mri_score.scaling.kspace_scale (ACS 99th percentile of the masked data; inputs and targets divided by it)"

_TOP_FIELDS = {"out_dir": Field("str", required=True), "task": Field("str", choices=(TASK,), required=True),
               "data": Field("mapping", required=True), "varnet": Field("mapping"), "train": Field("mapping", required=True)}
_DATA_KEYS = ("source", "crop", "seed", "pool_size", "families", "sizes", "pixel_mm", "mask", "coils", "snr")
_DATA_FIELDS = {**{k: DATA_FIELDS[k] for k in _DATA_KEYS}, "source": Field("str", choices=("synthetic",))}
_TRAIN_KEYS = ("steps", "batch", "lr", "warmup", "ema_decay", "grad_clip", "ckpt_every", "log_every", "seed", "init_from")
_TRAIN_FIELDS = {**{k: TRAIN_FIELDS[k] for k in _TRAIN_KEYS}, "loss": Field("str", choices=LOSSES)}
#: Defaults of the data section (``validate_varnet_config`` fills them in, so the recorded config is complete).
DATA_DEFAULTS: dict[str, Any] = {
    "source": "synthetic", "families": ["t1", "t2", "pd", "random"], "pool_size": 800, "sizes": [128],
    "pixel_mm": [1.5, 2.5], "crop": 128, "coils": 8, "snr": [30.0, 300.0], "seed": 0,
    "mask": {"type": "equispaced", "accel": 4.0, "center_fraction": 0.08},
}
#: Defaults of the train section.
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 3000, "batch": 4, "lr": 5e-4, "warmup": 100, "ema_decay": 0.999, "grad_clip": 1.0, "ckpt_every": 100,
    "log_every": 25, "seed": 0, "loss": "ssim_l1", "init_from": None,
}


def validate_varnet_config(cfg: Any, source: str = "config") -> dict[str, Any]:
    """A typed, range-checked and completed copy of a ``task: varnet`` config, or one :class:`InputError`.

    Unknown keys, wrong types and values out of range are refused naming the dotted key (prefixed
    by ``source``); missing keys take :data:`DATA_DEFAULTS`, :data:`TRAIN_DEFAULTS` and the
    :class:`~mri_score.varnet.VarNetConfig` defaults, so the config recorded in checkpoints is complete.
    """
    try:
        out = check_section(cfg, _TOP_FIELDS, "")
        data = check_section(out["data"], _DATA_FIELDS, "data")
        mask = {**DATA_DEFAULTS["mask"], **check_section(data.get("mask", {}), MASK_FIELDS, "data.mask")}
        out["data"] = {**DATA_DEFAULTS, **data, "mask": mask}
        out["train"] = {**TRAIN_DEFAULTS, **check_section(out["train"], _TRAIN_FIELDS, "train")}
        net = VarNetConfig.from_dict(out.get("varnet", {}), strict=True)
        out["varnet"] = net.to_dict()
        params = net.parameter_count()
        limits.check_fits(params * 4 * 5, f"varnet: {params:,} parameters", "building it")
        data = out["data"]
        if data["crop"] > min(data["sizes"]):
            raise InputError(f"data.crop {data['crop']} is larger than the smallest of data.sizes {data['sizes']}")
        if data["crop"] < 16:
            raise InputError(f"data.crop must be >= 16 rows, got {data['crop']}")
        if mask["type"] == "equispaced" and not float(mask["accel"]).is_integer():
            raise InputError(f"data.mask.accel {mask['accel']:g} must be an integer for an equispaced mask "
                             "(use type equispaced_fraction)")
        if mask["center_fraction"] > 1.0 / mask["accel"] + 1e-9:
            raise InputError(f"data.mask.center_fraction {mask['center_fraction']:g} exceeds 1/accel")
        out_dir = Path(out["out_dir"])
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(f"out_dir {out_dir} exists and is not a directory")
        size = max(data["sizes"])
        limits.check_fits(data["pool_size"] * size * size * 8 * 2, f"data.pool_size {data['pool_size']} slices of up "
                          f"to {size}x{size}", "generating them")
        return out
    except InputError as err:
        raise InputError(f"{source}: {err}") from None


@dataclass
class VarNetBatch:
    """One training batch (all divided by each example's ACS reference scale).

    Attributes
    ----------
    kspace : torch.Tensor
        Masked multi-coil k-space, complex64 ``(B, C, rows, W)``, zero where not sampled.
    mask : torch.Tensor
        float32 ``(B, 1, 1, W)`` (column masks) or ``(B, 1, rows, W)`` (Poisson masks).
    target : torch.Tensor
        float32 ``(B, rows, W)``: RSS of the noisy fully sampled coil images.
    """

    kspace: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor

    def to(self, device: torch.device | str) -> VarNetBatch:
        """The batch on ``device``."""
        return VarNetBatch(self.kspace.to(device), self.mask.to(device), self.target.to(device))


def simulate_example(image: torch.Tensor, maps: torch.Tensor, mask_func: Any, snr: float, seed: int,
                     rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training example from a complex image ``(H, W)`` and coil maps ``(C, H, W)``.

    Parameters
    ----------
    image : torch.Tensor
        complex64 ``(H, W)``, any scale.
    maps : torch.Tensor
        complex64 ``(C, H, W)`` coil maps.
    mask_func : callable
        A fastMRI mask function (:func:`operators.create_mask_for_mask_type`).
    snr : float
        99th percentile of ``|image|`` over the noise std per complex sample.
    seed : int
        Seeds the noise and the mask.
    rows : slice
        The row window (field of view along ``H``) kept.

    Returns
    -------
    kspace : torch.Tensor
        complex64 ``(C, h, W)`` masked k-space, divided by its ACS reference scale.
    mask : torch.Tensor
        float32 ``(1, W)`` or ``(h, W)``.
    target : torch.Tensor
        float32 ``(h, W)``: RSS of the noisy fully sampled coil images at the same scale.
    """
    gen = torch.Generator().manual_seed(seed)
    coil_maps = maps[:, rows]
    clean = fft2c(coil_maps * image[rows])
    sigma = float(torch.quantile(image.abs().flatten(), 0.99)) / snr
    noise = torch.complex(torch.randn(clean.shape, generator=gen), torch.randn(clean.shape, generator=gen))
    full = clean + sigma / 2**0.5 * noise
    mask, _ = mask_func(tuple(full.shape), seed=seed)
    mask = mask.reshape(-1, full.shape[-1]).float()
    under = full * mask
    scale = kspace_scale(under, mask, coil_maps)
    return under / scale, mask, rss(ifft2c(full), dim=0) / scale


class VarNetPairSource(CoilSliceSource):
    """On-the-fly multi-coil training examples from full complex slices (see the module docstring).

    Parameters as :class:`~mri_score.supervised.CoilSliceSource`; slices that are not 2-D are left out.
    """

    def __init__(self, slices: Sequence[np.ndarray], rows: int, mask_type: str = "equispaced",
                 acceleration: float = 4.0, center_fraction: float = 0.08, coils: int = 8,
                 snr: tuple[float, float] = (30.0, 300.0)) -> None:
        super().__init__([s for s in slices if s.ndim == 2], rows, mask_type, acceleration, center_fraction, coils, snr)
        self.rows = int(rows)

    def batch(self, batch_size: int, gen: torch.Generator) -> VarNetBatch:
        """A batch of ``batch_size`` examples of one matrix size, drawn with ``gen`` (deterministic given its state)."""
        shape = self.shapes[int(torch.randint(len(self.shapes), (1,), generator=gen))]
        pool, maps = self.by_shape[shape], self.maps[shape]
        ks, masks, targets = [], [], []
        log_lo, log_hi = math.log(self.snr[0]), math.log(self.snr[1])
        for _ in range(batch_size):
            img = torch.from_numpy(np.asarray(pool[int(torch.randint(len(pool), (1,), generator=gen))], np.complex64))
            flips = torch.randint(2, (2,), generator=gen).tolist()
            if flips[0]:
                img = img.flip(-2)
            if flips[1]:
                img = img.flip(-1)
            snr = math.exp(log_lo + (log_hi - log_lo) * float(torch.rand(1, generator=gen)))
            seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
            r = int(torch.randint(shape[0] - self.rows + 1, (1,), generator=gen))
            k, m, t = simulate_example(img, maps, self.mask_func, snr, seed, slice(r, r + self.rows))
            ks.append(k)
            masks.append(m)
            targets.append(t)
        return VarNetBatch(torch.stack(ks), torch.stack(masks)[:, None], torch.stack(targets))


def build_varnet_source(cfg: dict[str, Any]) -> VarNetPairSource:
    """The training data of a validated config (:func:`validate_varnet_config`): the synthetic training split."""
    from mri_score.data.datasets import synthetic_slices

    data = cfg["data"]
    full = synthetic_slices(int(data["pool_size"]), int(data["seed"]), tuple(data["families"]),
                            tuple(int(s) for s in data["sizes"]), tuple(data["pixel_mm"]), square=True)
    mask = data["mask"]
    return VarNetPairSource(full, rows=int(data["crop"]), mask_type=mask["type"], acceleration=float(mask["accel"]),
                            center_fraction=float(mask["center_fraction"]), coils=int(data["coils"]),
                            snr=tuple(data["snr"]))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: torch.Tensor, win: int = 7, k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """fastMRI's SSIM of magnitude images: 7x7 uniform window (valid positions), unbiased local variances.

    Parameters
    ----------
    x, y : torch.Tensor
        float ``(B, H, W)``, ``H, W >= win``.
    data_range : torch.Tensor
        float ``(B,)``: the dynamic range of each target (fastMRI: its maximum).

    Returns
    -------
    torch.Tensor
        float ``(B,)``: the mean SSIM of each image.
    """
    x, y = x[:, None].float(), y[:, None].float()
    n = win * win
    cov_norm = n / (n - 1)
    ux, uy = F.avg_pool2d(x, win, 1), F.avg_pool2d(y, win, 1)
    uxx, uyy, uxy = F.avg_pool2d(x * x, win, 1), F.avg_pool2d(y * y, win, 1), F.avg_pool2d(x * y, win, 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    dr = data_range.float().reshape(-1, 1, 1, 1)
    c1, c2 = (k1 * dr) ** 2, (k2 * dr) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def varnet_loss(model: VarNet, batch: VarNetBatch, loss: str = "ssim_l1") -> torch.Tensor:
    """The training loss of one batch on the RSS output (see the module docstring): a scalar tensor.

    ``loss`` is one of :data:`LOSSES`: ``ssim_l1`` = ``α (1 − SSIM) + (1 − α) L1`` with ``α`` =
    :data:`SSIM_L1_ALPHA`, ``l1`` (mean absolute error) or ``ssim`` (``1 − SSIM``).
    """
    if loss not in LOSSES:
        raise InputError(f"train.loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    out, _ = model(batch.kspace, batch.mask)
    l1 = F.l1_loss(out, batch.target)
    if loss == "l1":
        return l1
    drange = batch.target.flatten(1).amax(dim=1).clamp_min(1e-6)
    s = 1.0 - ssim(out, batch.target, drange).mean()
    return s if loss == "ssim" else SSIM_L1_ALPHA * s + (1.0 - SSIM_L1_ALPHA) * l1


def _parent(init_from: str | None) -> dict[str, Any]:
    """The ``parent`` metadata: ``train.init_from`` and its SHA-256, or :data:`NO_PARENT`."""
    if not init_from:
        return dict(NO_PARENT)
    path = Path(init_from)
    if not path.is_file():
        raise InputError(f"train.init_from {init_from}: no such file")
    return {"path": str(init_from), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def train_varnet(cfg: dict[str, Any], out_dir: str | os.PathLike[str] | None = None, steps: int | None = None, *,
                 resume: bool = False, device: str = "cpu", source: str = "config",
                 config_path: str | os.PathLike[str] | None = None,
                 export: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Train a VarNet per a ``task: varnet`` config; returns a summary (steps, losses, seconds, parameters).

    Parameters
    ----------
    cfg : dict
        The config (validated and completed by :func:`validate_varnet_config`; errors start with ``source``).
    out_dir : path, optional
        Replaces ``cfg["out_dir"]`` (and is recorded as such): where ``checkpoint.safetensors`` and
        ``loss.jsonl`` go.
    steps : int, optional
        Stop at this step instead of ``train.steps`` (the recorded config keeps ``train.steps``).
    resume : bool
        Continue from ``out_dir/checkpoint.safetensors`` at its exact step (same batches as an
        uninterrupted run).
    device : str
        ``cpu``, ``cuda`` or ``cuda:N``.
    source : str
        Names the config in error messages.
    config_path, export : path, optional
        The config file read and the weights to be exported afterwards: registered as inputs /
        checked as outputs before any work (:mod:`mri_score.atomic`).

    Returns
    -------
    dict
        ``steps`` (reached), ``start``, ``losses`` (per step), ``seconds``, ``seconds_per_step``,
        ``parameters``, ``precision`` (``fp32``), ``slices_per_s``.
    """
    if out_dir is not None and isinstance(cfg, dict):
        cfg = {**cfg, "out_dir": str(out_dir)}
    cfg = validate_varnet_config(cfg, source)
    if steps is not None:
        limits.check_int(int(steps), "steps", 1, 10**9)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise InputError(f"{source}: task varnet trains in one process (no torchrun); use --device cuda for a GPU")
    inputs = input_files(cfg, config_path)  # the config and train.init_from (data.source is synthetic)
    check_run_outputs(Path(cfg["out_dir"]), inputs, export)
    with protected_inputs(inputs):
        return _train(cfg, resume, device, steps)


def _train(cfg: dict[str, Any], resume: bool, device: str, max_steps: int | None) -> dict[str, Any]:
    """The loop of :func:`train_varnet` (``cfg`` validated and complete)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available")
    tr = cfg["train"]
    out_dir = Path(cfg["out_dir"])
    seed = int(tr["seed"])
    torch.manual_seed(seed)
    net_cfg = VarNetConfig.from_dict(cfg["varnet"])
    model = VarNet(net_cfg).to(dev)
    ema = ema_copy(model)
    lr, warmup = float(tr["lr"]), int(tr["warmup"])
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator().manual_seed(seed * 1000)
    steps = int(tr["steps"]) if max_steps is None else int(max_steps)
    batch, ema_decay, grad_clip = int(tr["batch"]), float(tr["ema_decay"]), float(tr["grad_clip"])
    ckpt_every, log_every, loss_kind = int(tr["ckpt_every"]), int(tr["log_every"]), str(tr["loss"])
    ckpt_path, log_path = out_dir / "checkpoint.safetensors", out_dir / "loss.jsonl"
    parent = _parent(tr.get("init_from"))
    start = 0
    resumed = read_resume_checkpoint(ckpt_path, resume)
    if resumed is not None:
        tensors, meta = resumed
        if meta.get("task") != TASK:
            raise CheckpointError(f"{ckpt_path}: a {meta.get('task', 'score')!r} checkpoint, not a VarNet training checkpoint")
        if VarNetConfig.stored(meta.get("varnet")) != net_cfg.to_dict():
            raise CheckpointError(f"{ckpt_path}: checkpoint architecture differs from the config's varnet section")
        start = restore_training_state(tensors, meta, ckpt_path, model, ema, opt, gen, "rng.gen.0")
    elif tr.get("init_from"):
        src = load_varnet(tr["init_from"])
        if src.cfg.to_dict() != net_cfg.to_dict():
            raise CheckpointError(f"{tr['init_from']}: train.init_from architecture differs from the config's varnet")
        load_state_strict(model, src.state_dict(), tr["init_from"])
        load_state_strict(ema, src.state_dict(), tr["init_from"])
    pool = build_varnet_source(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume and log_path.exists():
        log_path.unlink()

    def save(step: int) -> None:
        tensors = training_tensors(model, ema, opt, [gen.get_state()])
        meta = {"step": step, "network": net_cfg.unet.to_dict(), "varnet": net_cfg.to_dict(), "config": cfg,
                "kind": "training", "task": TASK, "parent": parent, "pixel_mm": list(cfg["data"]["pixel_mm"]),
                "loss": loss_kind, "scaling": SCALING}
        save_checkpoint(ckpt_path, tensors, meta)

    stopper = StopFlag()
    old_handlers = {s: signal.signal(s, stopper) for s in (signal.SIGTERM, signal.SIGINT)}
    t0 = time.time()
    losses: list[float] = []
    step = start
    try:
        while step < steps:
            for g in opt.param_groups:
                g["lr"] = warmup_lr(step, lr, warmup)
            opt.zero_grad(set_to_none=True)
            loss = varnet_loss(model, pool.batch(batch, gen).to(dev), loss_kind)
            lv = float(loss.detach())
            if not math.isfinite(lv):  # before the update: no diverged weights are ever saved
                raise InputError(f"training loss became {'NaN' if math.isnan(lv) else 'Inf'} at step {step + 1}: lower "
                                 f"train.lr={lr:g} or raise train.warmup={warmup}; the last checkpoint is the one saved before")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            update_ema(ema, model, ema_decay)
            step += 1
            losses.append(lv)
            if step % log_every == 0 or step == steps:
                elapsed = time.time() - t0
                recent = losses[-log_every:]
                with open(log_path, "a") as fh:
                    fh.write(json.dumps({"step": step, "loss": sum(recent) / len(recent), "seconds": round(elapsed, 2),
                                         "slices_per_s": round((step - start) * batch / max(elapsed, 1e-9), 3)}) + "\n")
            if step % ckpt_every == 0 or step == steps:
                save(step)
            if stopper.requested:
                save(step)
                raise KeyboardInterrupt
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    seconds = time.time() - t0
    done = step - start
    return {"steps": step, "start": start, "losses": losses, "seconds": seconds,
            "seconds_per_step": seconds / max(1, done), "parameters": count_parameters(model), "precision": "fp32",
            "slices_per_s": done * batch / max(seconds, 1e-9)}


def export_varnet(ckpt: str | os.PathLike[str], out: str | os.PathLike[str], command: str) -> Path:
    """Write the EMA weights of a VarNet training checkpoint as shippable weights (safetensors, ``ema.`` keys).

    The metadata keeps the checkpoint's ``step``, ``network``, ``varnet``, exact ``config``, ``parent``
    (with its SHA-256, or :data:`~mri_score.training.NO_PARENT`), ``pixel_mm``, ``loss`` and ``scaling``, and
    adds ``command`` (the command line that trained it) and ``kind: "varnet"``.  Raises
    :class:`~mri_score.errors.CheckpointError` for a checkpoint of another task or without EMA weights.
    """
    tensors, meta = load_checkpoint(ckpt)
    if meta.get("task") != TASK:
        raise CheckpointError(f"{ckpt}: a {meta.get('task', 'score')!r} checkpoint, not a VarNet")
    ema = {k: v for k, v in tensors.items() if k.startswith("ema.")}
    if not ema:
        raise CheckpointError(f"{ckpt}: no EMA weights to export")
    new_meta = {"step": meta.get("step"), "network": meta.get("network"), "varnet": meta.get("varnet"),
                "config": meta.get("config"), "task": TASK, "kind": TASK, "command": command,
                "parent": meta.get("parent", NO_PARENT)}
    for key in ("pixel_mm", "loss", "scaling"):
        if key in meta:
            new_meta[key] = meta[key]
    return save_checkpoint(out, ema, new_meta)
