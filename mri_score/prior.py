"""Score priors: loading them (the shipped default or any checkpoint by path) and running them (:class:`ComplexPrior`)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mri_score.checkpoint import load_checkpoint, load_state_strict
from mri_score.errors import CheckpointError, InputError
from mri_score.limits import check_fits
from mri_score.network import EDMDenoiser, NetworkConfig, channels_to_complex, complex_to_channels
from mri_score.precision import autocast, choose_precision, precision_name

#: The default prior: the mixed-corpus conditional prior (brain subjects, procedural body and limb sections,
#: 0.5-3 mm pixels; used unconditionally unless ``--condition`` is given), trained 12000 steps beyond
#: ``prior_mixed_cond.safetensors`` (configs/prior_mixed_long.yaml; adopted by the rule of
#: configs/ablation_long_dev.yaml).  Its parent and the brain-only ``prior_brain_synth.safetensors`` are still
#: shipped; the registered final test ran with the parent (docs/results.md).
DEFAULT_PRIOR = "prior_mixed_long.safetensors"


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


def bf16_weight_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` whose ``Conv2d`` and ``Linear`` weights and biases are bf16 (all else as it was).

    For inference under bf16 autocast only: autocast casts exactly these parameters to bf16 on every call
    (round to nearest even, as ``Tensor.to`` does), so the copy gives the same outputs without the casts.
    """
    out = copy.deepcopy(model)
    for module in out.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.to(torch.bfloat16)
    for p in out.parameters():
        p.requires_grad_(False)
    return out


class ComplexPrior:
    """A denoiser ``D(x; σ)`` on complex images ``(K, H, W)`` that counts its network evaluations (NFE).

    The network runs on a private channels_last copy (the U-Net's convolutions run ~1.25x
    faster per NFE on CPU with it, 256², batch 2), so the caller's module is never changed.
    Every evaluation is counted, the autograd path of DPS included.  ``evaluations_per_call``
    is the network evaluations one :meth:`denoise` costs (a guided prior that runs the
    network twice per call sets it to 2).

    ``precision`` (:data:`mri_score.precision.PRECISIONS`) is how the network runs: ``auto``
    (bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere), ``bf16`` or ``fp32``;
    the denoiser's output is always fp32.  :func:`mri_score.posterior.reconstruct_slice` sets it
    from its settings (:meth:`set_precision`).  Under bf16 the network runs on a second private
    copy whose convolution and linear weights are stored in bf16 (:func:`bf16_weight_copy`):
    autocast would cast those same weights to bf16 on every call (about 180 casts per NFE for
    the default U-Net), and rounding once gives the same bits.  Normalisations and embeddings
    stay fp32.  ``model`` stays the fp32 network; the copy is rebuilt whenever one of its
    parameters has changed since (in place, or replaced), so changing ``model`` is safe.  Test-time
    adaptation trains a copy of ``model`` and wraps it in a new adapter.  Forward hooks added to
    ``model`` after the first bf16 call do not reach the copy.
    """

    evaluations_per_call: int = 1

    def __init__(self, model: torch.nn.Module, precision: str = "auto") -> None:
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self._bf16_model: torch.nn.Module | None = None
        self._bf16_source: tuple[tuple[int, int], ...] = ()
        self.nfe = 0
        self.device = next(model.parameters()).device
        self.set_precision(precision)

    def set_precision(self, precision: str) -> None:
        """Run the network in ``precision`` (``auto``, ``bf16`` or ``fp32``) from now on."""
        self.autocast = choose_precision(self.device, precision)

    def _network_module(self) -> torch.nn.Module:
        """The module :meth:`network` runs: the fp32 copy, or under bf16 its bf16-weight copy (made once)."""
        if not (self.autocast["enabled"] and self.autocast["dtype"] == torch.bfloat16):
            return self.model
        # the fp32 parameters' identities and version counters: any change since the copy was made rebuilds it
        source = tuple((id(p), p._version) for p in self.model.parameters())
        if self._bf16_model is None or source != self._bf16_source:
            # ordinary tensors even when first called inside a sampler's inference_mode (DPS and classifier
            # guidance differentiate through the same adapter later)
            with torch.inference_mode(False), torch.no_grad():
                self._bf16_model = bf16_weight_copy(self.model)
            self._bf16_source = source
        return self._bf16_model

    @property
    def precision(self) -> str:
        """``"bf16"`` or ``"fp32"``: how the network runs now."""
        return precision_name(self.autocast)

    @property
    def sigma_data(self) -> float:
        """The data std σ_d the denoiser was trained with (EDM preconditioning)."""
        return float(self.model.sigma_data)

    def network(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The network on real channels ``(K, 2, H, W)`` (uncounted; override for guidance)."""
        with autocast(self.autocast):
            out = self._network_module()(x.contiguous(memory_format=torch.channels_last), sigma)
        return out.float()

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Tweedie estimate ``E[x₀ | x_σ] ≈ D(x; σ)``: complex ``(K, H, W)`` -> same (differentiable)."""
        self.nfe += self.evaluations_per_call
        return channels_to_complex(self.network(complex_to_channels(x), sigma))

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``∇ log p_σ(x) ≈ (D(x; σ) − x) / σ²`` for complex ``(K, H, W)``."""
        return (self.denoise(x, sigma) - x) / sigma**2
