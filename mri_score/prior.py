"""Loading score priors: the shipped default and any checkpoint by path."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mri_score.checkpoint import load_checkpoint, load_state_strict
from mri_score.errors import CheckpointError, InputError
from mri_score.limits import check_fits
from mri_score.network import EDMDenoiser, NetworkConfig

#: The default prior: the mixed-corpus conditional prior (brain subjects, procedural body and limb sections,
#: 0.5-3 mm pixels; used unconditionally unless ``--condition`` is given).  It replaced the brain-only
#: ``prior_brain_synth.safetensors`` (still shipped) after the frozen protocol with the rectangular-ACS ESPIRiT
#: maps: higher PSNR on every real volume and setting (README, prior ablation).
DEFAULT_PRIOR = "prior_mixed_cond.safetensors"


def default_prior_path() -> Path:
    """Path of the prior shipped inside the package (``mri_score/weights``)."""
    return Path(str(resources.files("mri_score") / "weights" / DEFAULT_PRIOR))


def load_prior(
    path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu", use_ema: bool = True
) -> EDMDenoiser:
    """Load a denoiser ``D(x; σ)`` in eval mode: the shipped default when ``path`` is None.

    Accepts shipped priors (EMA weights under ``ema.``) and training checkpoints
    (``ema.`` and ``model.``).  Never unpickles.  ``model.meta`` holds the
    checkpoint's metadata (config, normalisation, provenance).
    """
    path = default_prior_path() if path is None else Path(path)
    return load_network(path, "score", "score prior", EDMDenoiser, device, use_ema)  # type: ignore[return-value]


def load_network(
    path: str | os.PathLike[str],
    task: str,
    what: str,
    build: Callable[[NetworkConfig], torch.nn.Module],
    device: str | torch.device = "cpu",
    use_ema: bool = True,
) -> torch.nn.Module:
    """Load any of the project's networks from a checkpoint whose metadata says ``task``; never unpickles.

    ``build`` makes the module from the checkpoint's :class:`NetworkConfig`; ``what``
    names it in error messages.  EMA weights are used when present (and ``use_ema``),
    else the raw ``model.`` weights of a training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} checkpoint not found")
    tensors, meta = load_checkpoint(path)
    if meta.get("task", "score") != task:
        raise CheckpointError(f"{path}: a {meta.get('task', 'score')!r} checkpoint, not a {what}")
    if not isinstance(meta.get("network"), dict):
        raise CheckpointError(f"{path}: checkpoint metadata has no valid 'network' architecture")
    try:
        cfg = NetworkConfig.from_dict(meta["network"], where="metadata network")
    except InputError as err:
        raise CheckpointError(f"{path}: checkpoint {err}") from None
    check_fits(cfg.parameter_count() * 4 * 2, f"{path}: the network its metadata declares", "building it")
    prefix = "ema." if use_ema and any(k.startswith("ema.") for k in tensors) else "model."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{path}: checkpoint holds no '{prefix}' weights")
    try:
        model = build(cfg)
    except (ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot build the network from its metadata ({err})") from err
    load_state_strict(model, state, path)
    model.meta: dict[str, Any] = meta  # type: ignore[misc]
    return model.to(device).eval()
