"""Loading score priors: the shipped default and any checkpoint by path."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mri_score.checkpoint import load_checkpoint, load_state_strict
from mri_score.errors import CheckpointError
from mri_score.network import EDMDenoiser, NetworkConfig

DEFAULT_PRIOR = "prior_brain_synth.safetensors"


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
    if path is None or not Path(path).is_file():
        raise CheckpointError(f"{path}: prior checkpoint not found")
    tensors, meta = load_checkpoint(path)
    if meta.get("task", "score") != "score":
        raise CheckpointError(f"{path}: a {meta.get('task')!r} checkpoint, not a score prior")
    try:
        cfg = NetworkConfig.from_dict(meta["network"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: checkpoint metadata has no valid 'network' architecture") from err
    prefix = "ema." if use_ema and any(k.startswith("ema.") for k in tensors) else "model."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{path}: checkpoint holds no '{prefix}' weights")
    try:
        model = EDMDenoiser(cfg)
    except (ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot build the network from its metadata ({err})") from err
    load_state_strict(model, state, path)
    model.meta: dict[str, Any] = meta  # type: ignore[misc]
    return model.to(device).eval()
