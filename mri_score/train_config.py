"""The schema of a training config (``python -m mri_score.train --config``), checked before anything is built.

:func:`validate_config` returns a typed copy of the config (numbers written as text
parsed) or raises one :class:`~mri_score.errors.InputError` naming the dotted key and
the rule: unknown keys, a scalar where a mapping belongs, a string where a number
belongs, a learning rate, batch or step count out of range, an ``out_dir`` that is an
existing file, a synthetic pool that would not fit in memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from mri_score import limits
from mri_score.errors import InputError
from mri_score.network import NETWORK_FIELDS, NetworkConfig
from mri_score.precision import PRECISIONS
from mri_score.schema import Field, check_section
from operators.masks import MASK_TYPES, MAX_ACCELERATION

#: What a config can train: a score prior (EDM denoiser), the supervised U-Net baseline, or a
#: noise-conditional label classifier (:mod:`mri_score.classifier`, for classifier guidance).
TASKS = ("score", "supervised", "classifier")
BIG = 10**9

TOP_FIELDS = {
    "out_dir": Field("str", required=True), "task": Field("str", choices=TASKS),
    "data": Field("mapping", required=True), "network": Field("mapping"), "sigma": Field("mapping"),
    "train": Field("mapping", required=True),
}
TRAIN_FIELDS = {
    "steps": Field("int", 1, BIG), "batch": Field("int", 1, 65536), "micro_batch": Field("int", 1, 65536, none=True),
    "lr": Field("float", 0.0, 1.0), "label_lr_mult": Field("float", 0.0, 1e4, open_low=True),
    "warmup": Field("int", 0, BIG), "ema_decay": Field("float", 0.0, 1.0), "grad_clip": Field("float", 0.0, 1e6, open_low=True),
    "precision": Field("str", choices=PRECISIONS), "channels_last": Field("bool"),
    "ckpt_every": Field("int", 1, BIG), "log_every": Field("int", 1, BIG), "seed": Field("int", 0, limits.MAX_SEED),
    "init_from": Field("str", none=True), "label_dropout": Field("float", 0.0, 1.0),
    "label_field_dropout": Field("float", 0.0, 1.0),
}
#: Score sources that ``data.source: blend`` can mix (each an in-memory pool or a rendered stream).
BLEND_SOURCES = frozenset({"synthetic", "mixed", "domain_random"})
#: Sources that stream their slices (read or rendered per batch) instead of holding a pool in memory.
STREAMED_SOURCES = frozenset({"fastmri", "domain_random"})
SIGMA_FIELDS = {"p_mean": Field("float", -20.0, 20.0), "p_std": Field("float", 0.0, 10.0)}
MASK_FIELDS = {"type": Field("str", choices=MASK_TYPES), "accel": Field("float", 1.0, MAX_ACCELERATION, open_low=True),
               "center_fraction": Field("float", 0.0, 0.5, open_low=True)}
DATA_FIELDS = {
    "source": Field("str", choices=("synthetic", "mixed", "fastmri", "domain_random", "blend")), "crop": Field("int", 8, 4096),
    "blend": Field("weights"), "synthetic": Field("mapping"), "mixed": Field("mapping"), "domain_random": Field("mapping"),
    "held_out_family": Field("str", none=True), "render_size": Field("ints", 8, 4096),
    "seed": Field("int", 0, limits.MAX_SEED), "pool_size": Field("int", 1, 10**7),
    "families": Field("strs"), "body_families": Field("strs"), "sizes": Field("ints", 8, 4096),
    "pixel_mm": Field("floats", 0.0, 100.0, open_low=True, length=(2, 2)), "subjects": Field("int", 1, 10**6),
    "anatomy_weights": Field("weights", none=True), "mask": Field("mapping"), "coils": Field("int", 1, 64),
    "snr": Field("floats", 0.0, 1e6, open_low=True, length=(2, 2)), "path": Field("str"),
    "target": Field("str", choices=("complex", "magnitude")), "max_slices": Field("int", 1, BIG, none=True),
    "index": Field("str", none=True), "num_workers": Field("int", 0, 64), "pin_memory": Field("bool"),
    "persistent_workers": Field("bool"), "prefetch_factor": Field("int", 1, 64, none=True),
}


def validate_config(cfg: Any, source: str = "config") -> dict[str, Any]:
    """A typed, range-checked copy of a training config; :class:`InputError` prefixed by ``source`` otherwise."""
    try:
        return _validate(cfg)
    except InputError as err:
        raise InputError(f"{source}: {err}") from None


def _validate(cfg: Any) -> dict[str, Any]:
    out = check_section(cfg, TOP_FIELDS, "")
    out["train"] = check_section(out["train"], TRAIN_FIELDS, "train")
    out["sigma"] = check_section(out.get("sigma", {}), SIGMA_FIELDS, "sigma")
    data = out["data"] = check_section(out["data"], DATA_FIELDS, "data")
    if "mask" in data:
        data["mask"] = check_section(data["mask"], MASK_FIELDS, "data.mask")
    _check_blend(data)
    # types, ranges, groups dividing the channels; then weights, EMA, gradients and two Adam moments must fit
    net = NetworkConfig.from_dict(out.get("network", {}), strict=True)
    params = net.parameter_count()
    limits.check_fits(params * 4 * 5, f"network: {params:,} parameters (network.base_channels x channel_mult, "
                      "num_res_blocks)", "building it")
    if "network" in out:
        out["network"] = check_section(out["network"], NETWORK_FIELDS, "network")
    if net.attention_heads and out.get("task", "score") != "score":
        raise InputError(f"network.attention_heads is a score-prior option; task {out.get('task')} has no attention block")
    tr = out["train"]
    micro = tr.get("micro_batch")
    if micro is not None and micro > tr.get("batch", 32):
        raise InputError(f"train.micro_batch {micro} is larger than train.batch {tr.get('batch', 32)}")
    if data.get("source") == "fastmri" and "path" not in data:
        raise InputError("data.source fastmri needs data.path (the fastMRI directory)")
    out_dir = Path(out["out_dir"])
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"out_dir {out_dir} exists and is not a directory")
    source = data.get("source", "synthetic")
    if source == "blend":
        in_memory = [(f"data.{n}.", data[n]) for n, w in data["blend"].items() if n not in STREAMED_SOURCES and w > 0]
    else:
        in_memory = [] if source in STREAMED_SOURCES else [("data.", data)]
    if in_memory:  # every in-memory part is held at once
        sizes = [(where, part.get("pool_size", 4000), max(part.get("sizes") or [320])) for where, part in in_memory]
        what = " + ".join(f"{where}pool_size {count} slices of up to {size}x{size}" for where, count, size in sizes)
        limits.check_fits(sum(count * size * size * 8 * 2 for _, count, size in sizes), what, "generating them")
    return out


def _check_blend(data: dict[str, Any]) -> None:
    """``data.source: blend``: ``data.blend`` names score sources with weights, each section checked as ``data``."""
    parts = BLEND_SOURCES & set(data)
    if data.get("source") != "blend":
        named = sorted(f"data.{k}" for k in parts | ({"blend"} & set(data)))
        if named:
            raise InputError(f"{', '.join(named)} need(s) data.source: blend")
        return
    stray = sorted(set(data) - {"source", "crop", "blend"} - BLEND_SOURCES)
    if stray:  # the parts' sections configure the data; a top-level key would be ignored (and read as the prior's)
        raise InputError(f"data.{stray[0]} has no effect in a blend: set it in the parts' sections (data.<source>.{stray[0]})")
    weights = data.get("blend")
    if not weights:
        raise InputError(f"data.source blend needs data.blend, e.g. {{mixed: 0.5, domain_random: 0.5}} "
                         f"(sources: {', '.join(sorted(BLEND_SOURCES))})")
    unknown = sorted(set(weights) - BLEND_SOURCES)
    if unknown:
        raise InputError(f"data.blend: {', '.join(unknown)} cannot be blended; choose from {', '.join(sorted(BLEND_SOURCES))}")
    if sum(weights.values()) <= 0:
        raise InputError("data.blend: the weights are all 0")
    unnamed = sorted(parts - set(weights))
    if unnamed:
        raise InputError(f"data.{unnamed[0]} is configured but not named in data.blend")
    for name in weights:
        section = check_section(data.get(name, {}), DATA_FIELDS, f"data.{name}")
        for key in ("source", "crop", "blend", *BLEND_SOURCES):
            if key in section:
                raise InputError(f"data.{name}.{key} is set by the blend, not per part")
        data[name] = section


def input_files(cfg: dict[str, Any], config_path: str | os.PathLike[str] | None = None) -> list[Path]:
    """The files a training run reads (never written by it): the config, ``train.init_from`` and the data files."""
    files = [Path(config_path)] if config_path else []
    if cfg["train"].get("init_from"):
        files.append(Path(cfg["train"]["init_from"]))
    root = Path(cfg["data"].get("path", "")) if cfg["data"].get("source") == "fastmri" else None
    if root is not None and root.is_dir():
        files += sorted(p for pattern in ("*.h5", "*.safetensors") for p in root.glob(pattern))
    return files


def diverged(loss: float, step: int, cfg: dict[str, Any]) -> InputError:
    """The one-line error for a loss that became NaN or Inf, naming the setting most likely at fault."""
    tr = cfg.get("train", {})
    lr, warmup = tr.get("lr", 2e-4), tr.get("warmup", 200)
    hint = (f"train.lr={lr:g} is likely too high for this network (lower it, or raise train.warmup={warmup})"
            if lr > 1e-3 or warmup < 10 else
            f"check the data (data.source={cfg.get('data', {}).get('source', 'synthetic')}) and sigma.p_mean/p_std, "
            f"or lower train.lr={lr:g}")
    kind = "NaN" if math.isnan(loss) else "Inf"
    return InputError(f"training loss became {kind} at step {step}: {hint}; the last checkpoint is the one "
                      "saved before")
