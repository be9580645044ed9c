"""Arithmetic precision of the networks: bf16 autocast where the hardware has it, fp32 elsewhere.

One rule for training (``train.precision``) and for sampling (``--precision``):
``auto`` uses bf16 autocast on CUDA and on CPUs whose oneDNN reports native bf16
(AVX512-BF16 / AMX); elsewhere bf16 convolutions fall back to a slow path (measured
10x slower than fp32 on an AVX2-only CPU), so fp32 is used.  ``bf16`` and ``fp32`` force it.
Autocast runs convolutions and linear layers in bf16 and keeps normalisations, the
preconditioning and every complex-valued operation (FFTs, CG) in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from mri_score.errors import InputError

#: Accepted precision modes.
PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device: torch.device) -> bool:
    """True on CUDA and on CPUs with native bf16 kernels (oneDNN's own report)."""
    if device.type == "cuda":
        return True
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def choose_precision(device: torch.device, mode: str, name: str = "precision") -> dict[str, Any]:
    """Autocast settings ``{device_type, dtype, enabled}`` for ``mode`` (one of :data:`PRECISIONS`) on ``device``.

    ``name`` is the option named in the error for an unknown mode.
    """
    if mode not in PRECISIONS:
        raise InputError(f"{name} must be one of {', '.join(PRECISIONS)}, got {mode!r}")
    enabled = native_bf16(device) if mode == "auto" else mode == "bf16"
    return {"device_type": device.type, "dtype": torch.bfloat16, "enabled": enabled}


def precision_name(settings: dict[str, Any]) -> str:
    """``"bf16"`` or ``"fp32"``: what :func:`choose_precision`'s settings actually run."""
    return "bf16" if settings["enabled"] else "fp32"


@contextlib.contextmanager
def autocast(settings: dict[str, Any]) -> Iterator[None]:
    """``torch.autocast`` with :func:`choose_precision`'s settings (a no-op when disabled)."""
    with torch.autocast(device_type=settings["device_type"], dtype=settings["dtype"], enabled=settings["enabled"]):
        yield
