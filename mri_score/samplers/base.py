"""What every posterior sampler shares: the prior adapter, typed options, σ schedules and the result.

A sampler is a function ``sample(prior, likelihoods, x_init, gen, nfe, config) -> SamplerResult``:
``prior`` a :class:`ComplexPrior`, ``likelihoods`` a sequence of
:class:`~mri_score.likelihood.Likelihood` terms, ``x_init`` the complex start ``(K, H, W)``,
``gen`` the CPU generator all its noise is drawn from, ``nfe`` its budget of network
evaluations (never exceeded) and ``config`` its own :class:`SamplerConfig` subclass.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mri_score.errors import InputError
from mri_score.likelihood import Likelihood
from mri_score.network import channels_to_complex, complex_to_channels
from mri_score.precision import autocast, choose_precision, precision_name


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


@dataclass(frozen=True)
class SamplerConfig:
    """Options of one sampler, validated on construction (an :class:`InputError` names the bad one).

    Subclasses are frozen dataclasses whose fields are the options, with ``name`` (the
    sampler) and ``default_nfe`` (its default budget) as class variables.  The budget is
    always network evaluations; :meth:`nfe_used` says how many of a budget the sampler spends.
    """

    name: ClassVar[str] = ""
    default_nfe: ClassVar[int] = 1
    #: Version of the defaults, raised when a default changes; it is part of the std-calibration key
    #: (:func:`mri_score.uncertainty.settings_key`), so a factor fitted under older defaults never matches.
    defaults_version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(self.name, f.name, str(f.type), getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Range checks of the options (subclasses); raise :class:`InputError`."""

    def nfe_used(self, budget: int) -> int:
        """Network evaluations spent for a budget (≤ ``budget``); an :class:`InputError` when it is too small."""
        if budget < 1:
            raise InputError(f"the {self.name} sampler needs a budget of at least 1 network evaluation, got {budget}")
        return budget

    def _require(self, ok: bool, option: str, rule: str) -> None:
        if not ok:
            raise InputError(f"{self.name} option {option} must be {rule}, got {getattr(self, option)!r}")

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict (for output attributes and logs)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> SamplerConfig:
        """Build from a mapping (YAML or ``key=value`` pairs); unknown keys are refused with the valid ones listed."""
        options = dict(options or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(k for k in options if k not in known)
        if unknown:
            raise InputError(f"unknown {cls.name} option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"the {cls.name} sampler takes {', '.join(known)}")
        return cls(**options)


def _coerce(sampler: str, option: str, kind: str, value: Any) -> Any:
    """``value`` as the option's type (``float``, ``int``, ``bool``, ``float | None``, ``str``); strings are parsed."""
    kind = kind.replace(" ", "")
    bad = InputError(f"{sampler} option {option} must be {kind.replace('|None', ' or none')}, got {value!r}")
    if kind == "float|None" and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    if kind.startswith("float"):
        if isinstance(value, bool):
            raise bad
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if out != out or out in (float("inf"), float("-inf")):
            raise bad
        return out
    if kind == "int":
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise bad
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad
        return value.strip()
    raise AssertionError(f"unsupported option type {kind}")  # pragma: no cover - a programming error


def split_terms(likelihoods: Sequence[Likelihood], capability: str) -> tuple[list[Likelihood], list[Likelihood]]:
    """``(terms with the capability, the others)`` for ``capability`` ``"has_prox"`` or ``"has_data_step"``."""
    with_it = [t for t in likelihoods if getattr(t, capability)]
    return with_it, [t for t in likelihoods if not getattr(t, capability)]


def karras_sigmas(steps: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> list[float]:
    """Karras et al. (2022) σ schedule: ``steps`` decreasing levels from ``sigma_max`` to ``sigma_min``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return [float(sigma_max)]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [float((a + i / (steps - 1) * (b - a)) ** rho) for i in range(steps)]


def geometric_sigmas(levels: int, sigma_max: float, sigma_min: float) -> list[float]:
    """Geometric σ levels (NCSN / Jalal et al.) from ``sigma_max`` down to ``sigma_min``."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if levels == 1:
        return [float(sigma_max)]
    r = (sigma_min / sigma_max) ** (1 / (levels - 1))
    return [float(sigma_max * r**i) for i in range(levels)]


def randn_complex(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Complex normal with unit variance in each of the real and imaginary parts (``E|z|² = 2``).

    This is the network's 2-channel noise model: ``x_σ = x + σ z``.
    """
    re = torch.randn(shape, generator=gen, device=gen.device).to(device)
    im = torch.randn(shape, generator=gen, device=gen.device).to(device)
    return torch.complex(re, im)


@dataclass
class SamplerResult:
    """Posterior samples ``(K, H, W)`` complex (scaled units) and the network evaluations used."""

    samples: torch.Tensor
    nfe: int
