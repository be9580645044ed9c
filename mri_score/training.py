"""The trainer behind ``python -m mri_score.train`` (:mod:`mri_score.train` is only its command line).

:func:`train` runs one config: an EDM-preconditioned score prior, a noise-conditional classifier or the
supervised U-Net (``task``), with EMA, exact resume from safetensors checkpoints, DDP under ``torchrun``,
gradient accumulation to the global ``train.batch``, the one precision rule (:mod:`mri_score.precision`) and
the data sources of :func:`build_source`; :func:`export_prior` writes shippable weights with their recipe.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mri_score.atomic import check_output, check_writable, protected_inputs
from mri_score.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from mri_score.classifier import NoiseClassifier, classifier_loss
from mri_score.config import require
from mri_score.data.body import BODY_FAMILIES
from mri_score.data.corpus import ANATOMIES, CONTRASTS, FAMILIES
from mri_score.data.datasets import BlendedPool, SlicePool, mixed_pool, synthetic_pool, synthetic_slices
from mri_score.data.fastmri_stream import StreamFeed
from mri_score.data.shards import stream_source
from mri_score.errors import CheckpointError, InputError
from mri_score.losses import edm_loss, sigma_distribution
from mri_score.network import EDMDenoiser, NetworkConfig, count_parameters
from mri_score.precision import choose_precision
from mri_score.prior import load_network
from mri_score.resolution import SOURCE_PIXEL_MM
from mri_score.supervised import KspacePairSource, MagnitudeUNet, supervised_loss
from mri_score.train_config import TASKS, diverged, input_files, validate_config

__all__ = ["NO_PARENT", "TASKS", "drop_labels", "edm_loss", "export_prior", "setup_distributed", "train"]


def drop_labels(labels: torch.Tensor, classes: tuple[int, ...], p_all: float, p_field: float,
                gen: torch.Generator) -> torch.Tensor:
    """Classifier-free-guidance training: replace labels ``(B, F)`` by the null index (``classes[f]``).

    With probability ``p_all`` a sample loses every label (it trains the unconditional
    denoiser ``D(x; σ, ∅)``); otherwise each field is dropped with probability ``p_field``
    (partial conditions, e.g. contrast known and anatomy not).
    """
    b, f = labels.shape
    drop_all = torch.rand(b, generator=gen) < p_all
    drop = (torch.rand(b, f, generator=gen) < p_field) | drop_all[:, None]
    null = torch.tensor(list(classes), dtype=labels.dtype).expand(b, f)
    return torch.where(drop, null, labels)


def _to(x: torch.Tensor, dev: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(dev, non_blocking=True)  # asynchronous from pinned loader memory (data.pin_memory)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def build_source(cfg: dict[str, Any]) -> SlicePool | BlendedPool | KspacePairSource | StreamFeed:
    """The training data named by ``cfg['data']``: crops for ``task: score``, simulated pairs for ``supervised``.

    ``data.source: blend`` draws each sample from one of the in-memory or rendered sources named in
    ``data.blend`` (``{source: weight}``, e.g. ``{mixed: 0.5, domain_random: 0.5}``), each configured by its
    own section ``data.<source>`` (the same keys as ``data``; ``crop`` is the blend's):
    :class:`~mri_score.data.datasets.BlendedPool`.

    ``data.source: fastmri`` streams (:mod:`mri_score.data.fastmri_stream`): ``data.path`` is a directory
    of fastMRI files or of shards from ``python -m mri_score.preprocess``; ``data.num_workers``,
    ``data.pin_memory``, ``data.persistent_workers``, ``data.prefetch_factor`` and ``data.index``
    (where the slice index is cached) configure the loader.
    """
    data = require(cfg, "data")
    source = data.get("source", "synthetic")
    crop = int(data.get("crop", 64))
    if cfg.get("task", "score") == "supervised":
        if source != "synthetic":
            raise InputError("task: supervised trains on the synthetic corpus (data.source: synthetic)")
        sizes = tuple(int(s) for s in data.get("sizes", (160, 256)))
        full = synthetic_slices(int(data.get("pool_size", 1000)), int(data.get("seed", 0)),
                                tuple(data.get("families", ("t1", "t2", "pd", "random"))), sizes,
                                tuple(data.get("pixel_mm", SOURCE_PIXEL_MM["synthetic"])), square=True)
        mask = data.get("mask", {})
        return KspacePairSource(full, rows=crop, mask_type=mask.get("type", "equispaced"),
                                acceleration=float(mask.get("accel", 4)),
                                center_fraction=float(mask.get("center_fraction", 0.08)),
                                coils=int(data.get("coils", 8)), snr=tuple(data.get("snr", (30.0, 300.0))))
    if source == "blend":  # several score sources at fixed proportions, e.g. the mixed corpus and domain_random
        parts = []
        for name, weight in data["blend"].items():
            if float(weight) > 0:  # a zero-weight part is never drawn: not built
                part = {**data.get(name, {}), "source": name, "crop": crop}
                parts.append((name, float(weight), build_source({**cfg, "data": part})))
        return BlendedPool(parts)
    if source == "mixed":
        return mixed_pool(
            count=int(data.get("pool_size", 4000)), crop=crop, seed=int(data.get("seed", 0)),
            families=tuple(data.get("families", FAMILIES)), body_families=tuple(data.get("body_families", BODY_FAMILIES)),
            sizes=tuple(data.get("sizes", (128, 160, 192, 256, 320))),
            pixel_mm=tuple(data.get("pixel_mm", SOURCE_PIXEL_MM["mixed"])),
            subjects=int(data.get("subjects", 40)), anatomy_weights=data.get("anatomy_weights"),
        )
    if source == "domain_random":  # SynthSeg-style rendering on the fly: mri_score.data.domain_random
        from mri_score.data.domain_random import FAMILIES as DR_FAMILIES
        from mri_score.data.domain_random import DomainRandomPool

        render = data.get("render_size")
        return DomainRandomPool(size=crop, families=tuple(data.get("families", DR_FAMILIES)),
                                held_out_family=data.get("held_out_family"), seed=int(data.get("seed", 0)),
                                render_size=list(render) if render is not None else None,
                                pixel_mm=tuple(data.get("pixel_mm", SOURCE_PIXEL_MM["domain_random"])),
                                workers=int(data.get("num_workers", 0)))
    if source == "synthetic":
        return synthetic_pool(
            count=int(data.get("pool_size", 4000)),
            crop=crop,
            seed=int(data.get("seed", 0)),
            families=tuple(data.get("families", ("t1", "t2", "pd", "random"))),
            sizes=tuple(data.get("sizes", (96, 128, 160))),
            pixel_mm=tuple(data.get("pixel_mm", SOURCE_PIXEL_MM["synthetic"])),
        )
    if source == "fastmri":
        rank, world = rank_world()
        return stream_source(
            require(cfg, "data.path"), crop=crop, seed=int(cfg.get("train", {}).get("seed", 0)),
            target=data.get("target", "complex"), max_slices=data.get("max_slices"), index_path=data.get("index"),
            rank=rank, world=world, num_workers=int(data.get("num_workers", 2)),
            pin_memory=bool(data.get("pin_memory", False)), persistent_workers=bool(data.get("persistent_workers", True)),
            prefetch_factor=data.get("prefetch_factor"),
        )
    raise InputError(f"data.source must be synthetic, mixed, domain_random, blend or fastmri, got {source!r}")


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _flatten_optimizer(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = torch.as_tensor(v).clone()
    return out


_ADAM_STATE = ("exp_avg", "exp_avg_sq", "step")


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load the Adam state of a checkpoint after checking it against the parameters (index, names, shapes)."""
    sd = opt.state_dict()
    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if not key.startswith("opt."):
            continue
        _, i, name = (key.split(".", 2) + ["", ""])[:3]
        if not i.isdigit() or int(i) >= len(params) or name not in _ADAM_STATE:
            raise CheckpointError(f"{path}: optimizer state {key} does not belong to this network's Adam state")
        want = () if name == "step" else tuple(params[int(i)].shape)
        if tuple(v.shape) != want or not v.is_floating_point():
            raise CheckpointError(f"{path}: optimizer state {key} has shape {tuple(v.shape)} and dtype {v.dtype}, "
                                  f"the parameter needs float {want}")
        state.setdefault(int(i), {})[name] = v
    for i, entry in state.items():
        if set(entry) != set(_ADAM_STATE):
            raise CheckpointError(f"{path}: optimizer state of parameter {i} lacks "
                                  f"{', '.join(sorted(set(_ADAM_STATE) - set(entry)))}")
    sd["state"] = state
    opt.load_state_dict(sd)


def _resume_step(meta: dict[str, Any], path: Path) -> int:
    """The checkpoint's ``step``: a non-negative integer, else a :class:`CheckpointError`."""
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: checkpoint metadata 'step' must be a non-negative integer, got {step!r}")
    return step


def _restore_generator(gen: torch.Generator, state: torch.Tensor, path: Path, key: str) -> None:
    """Set ``gen`` from a checkpoint's RNG state after checking its dtype and size."""
    own = gen.get_state()
    if state.dtype != torch.uint8 or state.shape != own.shape:
        raise CheckpointError(f"{path}: RNG state {key} is {state.dtype} {tuple(state.shape)}, a generator state is "
                              f"uint8 {tuple(own.shape)}")
    try:
        gen.set_state(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: RNG state {key} is invalid ({str(err).splitlines()[0]})") from None


def training_tensors(model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
                     gen_states: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a training checkpoint: ``model.*`` and ``ema.*`` weights, the Adam state (``opt.*``) and
    each rank's generator state (``rng.gen.<rank>``); :func:`restore_training_state` reads them back."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors.update(_flatten_optimizer(opt))
    tensors.update({f"rng.gen.{r}": g for r, g in enumerate(gen_states)})
    return tensors


def read_resume_checkpoint(path: Path, resume: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(tensors, meta)`` of the checkpoint ``--resume`` continues from, or None for a fresh start.

    :class:`InputError` for ``--resume`` without a checkpoint, and for a fresh start where one exists: it would
    overwrite a run (and its loss log) without a word; ``--resume`` continues it (with ``--export``, exports it).
    Every rank decides for itself, so under ``torchrun`` ``out_dir`` must be on a file system all ranks share (as
    for ``--resume``, whose checkpoint every rank reads).
    """
    if resume and not path.is_file():
        raise InputError(f"{path}: --resume given but there is no checkpoint to resume from")
    if not resume and path.exists():
        raise InputError(f"{path.parent} already holds a training run ({path.name}): add --resume to continue it "
                         "(with --export: to export it as it stands), or choose another out_dir")
    return load_checkpoint(path) if resume else None


def restore_training_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path, model: torch.nn.Module,
                           ema: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, gen_key: str) -> int:
    """Load a checkpoint of :func:`training_tensors` into ``model``, ``ema``, ``opt`` and ``gen`` (from ``gen_key``,
    when the checkpoint has it), each checked; the step to resume at."""
    load_state_strict(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    load_state_strict(ema, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, path)
    start = _resume_step(meta, path)
    _restore_optimizer(opt, tensors, path)
    if gen_key in tensors:
        _restore_generator(gen, tensors[gen_key], path, gen_key)
    return start


def _init_from(model: torch.nn.Module, ema: torch.nn.Module, path: Path, net_cfg: NetworkConfig, task: str) -> None:
    """Start ``model`` and ``ema`` from another checkpoint's (EMA) weights (``train.init_from``: fine-tuning).

    Read with :func:`mri_score.prior.load_network` (task checked, EMA preferred, never unpickles); the
    architecture must match the config's, or grow it (:func:`grown_parts`: more residual blocks per level, a
    middle attention block), whose new parts start as the identity; the optimizer and step start fresh.
    """
    source = load_network(path, task, "train.init_from", lambda cfg: type(model)(cfg))
    new_parts = grown_parts(NetworkConfig.from_dict(source.meta.get("network", {})), net_cfg)
    if new_parts is None or (task != "score" and new_parts):  # only the score U-Net grows
        raise CheckpointError(f"{path}: train.init_from architecture differs from the config's network (and does not "
                              "grow into it: only more num_res_blocks and a new attention block can be added)")
    state = source.state_dict()
    if tuple(source.cfg.label_classes) != tuple(net_cfg.label_classes):
        # an unconditional source for a conditional network: the label tables keep their zero init,
        # so training starts from exactly the source's unconditional denoiser
        if source.cfg.label_classes:
            raise CheckpointError(f"{path}: train.init_from has other labels than the config's network")
        new_parts = (*new_parts, "net.label_embeds.")
    # the grown parts keep their identity initialisation (zero last convolution / output projection)
    state = {**state, **{k: v for k, v in model.state_dict().items() if k.startswith(tuple(new_parts))}}
    load_state_strict(model, state, path)
    load_state_strict(ema, state, path)


def grown_parts(source: NetworkConfig, target: NetworkConfig) -> tuple[str, ...] | None:
    """State-dict prefixes of the parts ``target`` adds to ``source`` (a score U-Net, :class:`mri_score.network.UNet`),
    or None when ``target`` is not ``source`` grown.

    Growing keeps every other field (labels aside, which :func:`_init_from` handles) and may add residual blocks
    per level (``num_res_blocks``; each new block follows the level's existing ones and has a zero last
    convolution and an identity skip, so it passes its input through) and the middle attention block
    (``attention_heads`` from 0; zero output projection).  The grown network then computes exactly the source's
    denoiser until training moves the new parts.
    """
    src, tgt = source.to_dict(), target.to_dict()
    fixed = set(src) - {"num_res_blocks", "attention_heads", "label_classes"}
    if any(src[k] != tgt[k] for k in fixed) or tgt["num_res_blocks"] < src["num_res_blocks"]:
        return None
    if src["attention_heads"] not in (0, tgt["attention_heads"]):
        return None
    levels = len(target.channel_mult)
    parts = [f"net.{side}.{i}.{k}." for k in range(source.num_res_blocks, target.num_res_blocks)
             for side in ("down_blocks", "up_blocks") for i in range(levels)]
    if target.attention_heads and not source.attention_heads:
        parts.append("net.mid_attn.")
    return tuple(parts)


def _micro_loss(model: torch.nn.Module, pool: Any, micro: int, gen: torch.Generator, task: str, net_cfg: NetworkConfig,
                precision: dict[str, Any], dev: torch.device, channels_last: bool, p_mean: float, p_std: float,
                drop_all: float, drop_field: float) -> torch.Tensor:
    """The loss of one micro-batch of ``micro`` samples drawn from ``pool``."""
    if task == "score" and net_cfg.label_classes:
        xb, labels = pool.batch_labelled(micro, gen)
        if labels is None:
            raise InputError("a conditional network (network.label_classes) needs a labelled source (data.source: mixed)")
        labels = drop_labels(labels, tuple(net_cfg.label_classes), drop_all, drop_field, gen)
        return edm_loss(model, _to(xb, dev, channels_last), gen, p_mean, p_std, net_cfg.sigma_data, precision, labels)
    if task == "classifier":
        xb, labels = pool.batch_labelled(micro, gen)
        if labels is None:
            raise InputError("task: classifier needs a labelled source (data.source: mixed)")
        return classifier_loss(model, _to(xb, dev, channels_last), labels, gen, p_mean, p_std, precision)
    if task == "score":
        x = _to(pool.batch(micro, gen), dev, channels_last)
        return edm_loss(model, x, gen, p_mean, p_std, net_cfg.sigma_data, precision)
    pair = tuple(_to(t, dev, channels_last) for t in pool.batch(micro, gen))
    return supervised_loss(model, pair, precision)


def _gather(state: torch.Tensor, world: int) -> list[torch.Tensor]:
    """Every rank's ``state`` (a CPU uint8 generator state), in rank order (collective under torchrun)."""
    if world == 1:
        return [state]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, state)
    return out


def _any_rank(flag: bool, world: int) -> bool:
    """True on every rank when ``flag`` is true on any (collective under torchrun)."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def warmup_lr(step: int, base: float, warmup: int) -> float:
    """The learning rate of ``step`` (0-based): ``base`` after a linear warm-up over ``warmup`` steps."""
    return base * min(1.0, (step + 1) / max(1, warmup))


def ema_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` (eval mode, no gradients): the start of its EMA (:func:`update_ema`)."""
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema ← decay · ema + (1 − decay) · model``, parameter by parameter, without autograd."""
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits cleanly."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True


def check_run_outputs(out_dir: Path, inputs: list[Path], export: str | os.PathLike[str] | None) -> None:
    """Before any work: the checkpoint, the loss log and ``export`` replace none of the run's ``inputs``, and
    ``out_dir`` is writable (:mod:`mri_score.atomic`)."""
    for path in (out_dir / "checkpoint.safetensors", out_dir / "loss.jsonl", *([Path(export)] if export else [])):
        check_output(path, inputs)
    check_writable(out_dir, "out_dir")


def train(cfg: dict[str, Any], resume: bool = False, device: str = "cpu", max_steps: int | None = None,
          source: str = "config", config_path: str | os.PathLike[str] | None = None,
          export: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run training per ``cfg``; returns a summary dict (steps, final loss, seconds).

    ``cfg`` is validated first (:func:`mri_score.train_config.validate_config`; errors start with
    ``source``); the files the run reads (``config_path``, ``train.init_from``, the data) are
    registered as inputs that no output (checkpoint, loss log, ``export``) may replace.
    """
    cfg = validate_config(cfg, source)
    inputs = input_files(cfg, config_path)
    check_run_outputs(Path(cfg["out_dir"]), inputs, export)
    with protected_inputs(inputs):
        return _train(cfg, resume, device, max_steps)


def _train(cfg: dict[str, Any], resume: bool, device: str, max_steps: int | None) -> dict[str, Any]:
    """The training loop of :func:`train` (``cfg`` validated)."""
    rank, world = rank_world()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available")
    tr = require(cfg, "train")
    out_dir = Path(require(cfg, "out_dir"))
    seed = int(tr.get("seed", 0))
    torch.manual_seed(seed)
    net_cfg = NetworkConfig.from_dict(cfg.get("network", {}))
    p_mean, p_std = sigma_distribution(cfg.get("sigma", {}))
    task = str(cfg.get("task", "score"))
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    builders = {"score": EDMDenoiser, "supervised": MagnitudeUNet, "classifier": NoiseClassifier}
    try:
        model = builders[task](net_cfg).to(dev)
    except ValueError as err:
        raise InputError(f"network: {err}") from None
    channels_last = bool(tr.get("channels_last", True))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ema_copy(model)
    lr = float(tr.get("lr", 2e-4))
    # the label tables of a conditional prior start at zero (step 0 = the unconditional parent) and get
    # sparse, noisy gradients: train.label_lr_mult speeds them up without touching the rest of the network
    label_lr_mult = float(tr.get("label_lr_mult", 1.0))
    if not (label_lr_mult > 0 and math.isfinite(label_lr_mult)):
        raise InputError(f"train.label_lr_mult must be a positive number, got {label_lr_mult!r}")
    label_params = [p for n, p in model.named_parameters() if ".label_embeds." in f".{n}"]
    label_ids = {id(p) for p in label_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in label_ids], "lr_mult": 1.0}]
    if label_params:
        groups.append({"params": label_params, "lr_mult": label_lr_mult})
    opt = torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.99), eps=1e-8)
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    steps = int(tr.get("steps", 1000)) if max_steps is None else int(max_steps)
    batch = int(tr.get("batch", 32))
    if batch % world:
        raise InputError(f"train.batch {batch} is not divisible by the world size {world}")
    micro = int(tr.get("micro_batch") or batch // world)
    if micro < 1:
        raise InputError(f"train.micro_batch must be >= 1, got {micro}")
    accum, rest = divmod(batch, world * micro)
    if rest or accum < 1:
        raise InputError(f"train.batch {batch} is not a multiple of train.micro_batch {micro} x world size {world}")
    ema_decay = float(tr.get("ema_decay", 0.999))
    label_drop_all = float(tr.get("label_dropout", 0.2))
    label_drop_field = float(tr.get("label_field_dropout", 0.2))
    warmup = int(tr.get("warmup", 200))
    ckpt_every = int(tr.get("ckpt_every", 500))
    log_every = int(tr.get("log_every", 25))
    precision = choose_precision(dev, str(tr.get("precision", "auto")), "train.precision")
    precision["channels_last"] = channels_last
    ckpt_path = out_dir / "checkpoint.safetensors"
    log_path = out_dir / "loss.jsonl"
    start = 0
    resumed = read_resume_checkpoint(ckpt_path, resume)
    if resumed is not None:
        tensors, meta = resumed
        if NetworkConfig.stored(meta.get("network")) != net_cfg.to_dict():
            raise CheckpointError(f"{ckpt_path}: checkpoint architecture differs from the config's network")
        start = restore_training_state(tensors, meta, ckpt_path, model, ema, opt, gen, f"rng.gen.{rank}")
    init_from = tr.get("init_from")
    parent = None
    if init_from:
        import hashlib

        ipath = Path(init_from)
        parent = {"path": str(init_from), "sha256": hashlib.sha256(ipath.read_bytes()).hexdigest()} if ipath.is_file() else None
    if init_from and not resume:
        _init_from(model, ema, Path(init_from), net_cfg, task)
    pool = build_source(cfg) if start < steps else None  # nothing to train (e.g. --resume --export): no data to build
    if isinstance(pool, StreamFeed):
        pool.seek(start * accum * micro)  # this rank's samples before step `start`
    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume and log_path.exists():
            log_path.unlink()
    stopper = StopFlag()
    old_handlers = {s: signal.signal(s, stopper) for s in (signal.SIGTERM, signal.SIGINT)}

    def save(step: int) -> None:
        gen_states = _gather(gen.get_state(), world)  # every rank's generator: exact resume under torchrun
        if rank != 0:
            return
        tensors = training_tensors(model, ema, opt, gen_states)
        meta = {"step": step, "network": net_cfg.to_dict(), "config": cfg, "kind": "training", "task": task,
                **({"labels": {"contrast": list(CONTRASTS), "anatomy": list(ANATOMIES)}} if net_cfg.label_classes else {}),
                "parent": parent or NO_PARENT,
                **({"pixel_mm": list(cfg["data"]["pixel_mm"])} if "pixel_mm" in cfg.get("data", {}) else {}),
                "scaling": "mri_score.scaling.image_scale (ACS 99th percentile)"}
        save_checkpoint(ckpt_path, tensors, meta)

    t0 = time.time()
    losses: list[float] = []
    progress = None
    if rank == 0 and sys.stderr.isatty() or os.environ.get("MRI_SCORE_PROGRESS") == "1":
        from tqdm import tqdm

        progress = tqdm(total=steps, initial=start, desc="train", unit="step")
    step = start
    try:
        while step < steps:
            for g in opt.param_groups:
                g["lr"] = warmup_lr(step, lr, warmup) * g["lr_mult"]
            opt.zero_grad(set_to_none=True)
            loss = torch.zeros(())
            for m in range(accum):  # gradient accumulation: `accum` micro-batches of `micro` per process
                with ddp_model.no_sync() if (world > 1 and m < accum - 1) else contextlib.nullcontext():
                    part = _micro_loss(ddp_model, pool, micro, gen, task, net_cfg, precision, dev, channels_last,
                                       p_mean, p_std, label_drop_all, label_drop_field)
                    (part / accum).backward()
                loss = loss + part.detach() / accum
            lv = float(loss.detach())
            if not math.isfinite(lv):  # before the update: no diverged weights are ever saved
                raise diverged(lv, step + 1, cfg)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tr.get("grad_clip", 1.0)))
            opt.step()
            update_ema(ema, model, ema_decay)
            step += 1
            losses.append(lv)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{lv:.4f}")
            if rank == 0 and (step % log_every == 0 or step == steps):
                elapsed = time.time() - t0
                with open(log_path, "a") as fh:
                    fh.write(json.dumps({"step": step, "loss": sum(losses[-log_every:]) / len(losses[-log_every:]),
                                         "seconds": round(elapsed, 2),
                                         "slices_per_s": round((step - start) * accum * micro / max(elapsed, 1e-9), 2)})
                             + "\n")
            if step % ckpt_every == 0 or step == steps:
                save(step)
            if _any_rank(stopper.requested, world):  # all ranks stop after the same step
                save(step)
                raise KeyboardInterrupt
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if progress is not None:
            progress.close()
        if hasattr(pool, "close"):  # loader or renderer workers
            pool.close()
    seconds = time.time() - t0
    return {"steps": step, "start": start, "losses": losses, "seconds": seconds,
            "parameters": count_parameters(model), "precision": "bf16" if precision["enabled"] else "fp32",
            "accumulation": accum, "micro_batch": micro,
            "slices_per_s": (step - start) * accum * micro / max(seconds, 1e-9)}


#: The ``parent`` of a network trained from random initialisation (no ``train.init_from``).
NO_PARENT = {"path": None, "sha256": None, "note": "trained from random initialisation"}


def export_prior(ckpt: str | os.PathLike[str], out: str | os.PathLike[str], command: str) -> Path:
    """Write the EMA weights of a training checkpoint as shippable weights (safetensors): a prior or a U-Net."""
    tensors, meta = load_checkpoint(ckpt)
    ema = {k: v for k, v in tensors.items() if k.startswith("ema.")}
    if not ema:
        raise CheckpointError(f"{ckpt}: no EMA weights to export")
    task = meta.get("task", "score")
    new_meta = {"step": meta["step"], "network": meta["network"], "config": meta["config"], "task": task,
                "kind": {"score": "prior"}.get(task, task),
                "command": command, "scaling": meta.get("scaling")}
    for key in ("labels", "parent", "pixel_mm"):
        if key in meta:
            new_meta[key] = meta[key]
    new_meta.setdefault("parent", NO_PARENT)
    return save_checkpoint(out, ema, new_meta)


def setup_distributed(device: str) -> str:
    """Join the ``torchrun`` process group when ``RANK``/``WORLD_SIZE`` say so (NCCL on CUDA, gloo on CPU); the device."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return f"cuda:{local}"
    return device


