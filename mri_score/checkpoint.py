"""Checkpoints as safetensors: tensors plus a JSON metadata string, verified by a SHA-256 digest.

Loading never unpickles: ``safetensors`` stores raw little-endian arrays and a
JSON header.  The metadata (config, step, architecture, normalisation, the
command that made the file) is stored in the header together with a digest of
the metadata and every tensor's bytes, so any edit of either is detected.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from mri_score.atomic import atomic_output
from mri_score.errors import CheckpointError

FORMAT = "mri-score-checkpoint/1"


def _digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().clone(memory_format=torch.contiguous_format).reshape(-1)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-serialisable ``meta`` atomically to a ``.safetensors`` file."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    meta_json = json.dumps({"format": FORMAT, **meta}, sort_keys=True)
    header = {"meta": meta_json, "digest": _digest(tensors, meta_json)}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint: ``(tensors, meta)``.

    Raises :class:`CheckpointError` for a missing, corrupted, foreign or tampered file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({str(err).splitlines()[0]})") from err
    if "meta" not in header or "digest" not in header:
        raise CheckpointError(f"{path}: not an mri-score checkpoint (no metadata)")
    try:
        meta = json.loads(header["meta"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    if _digest(tensors, header["meta"]) != header["digest"]:
        raise CheckpointError(f"{path}: checkpoint digest mismatch: the metadata or weights were modified or corrupted")
    return tensors, meta


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """``load_state_dict`` that turns missing/unexpected keys and shape mismatches into :class:`CheckpointError`."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{path}: tensor {k} has shape {tuple(v.shape)}, the architecture expects {tuple(own[k].shape)}"
            )
    module.load_state_dict(state)
