"""What every posterior sampler shares: typed options, σ schedules and the result.

A sampler is a function ``sample(prior, likelihoods, x_init, gen, nfe, config) -> SamplerResult``:
``prior`` a :class:`mri_score.prior.ComplexPrior`, ``likelihoods`` a sequence of
:class:`~mri_score.likelihood.Likelihood` terms, ``x_init`` the complex start ``(B·K, H, W)``,
``gen`` the CPU generators its noise is drawn from (one per slice), ``nfe`` its budget of network
evaluations (never exceeded) and ``config`` its own :class:`SamplerConfig` subclass.

A batch of ``B`` slices with ``K`` samples each is sampled together: rows ``b·K … b·K + K − 1`` of every
image tensor are slice ``b``'s, ``gen`` is a sequence of ``B`` generators (slice ``b``'s noise comes from
``gen[b]`` alone, drawn in the same order as when the slice is sampled by itself, :func:`randn_complex`),
and the data terms are batches of the same slices
(:meth:`mri_score.likelihood.GaussianKspaceLikelihood.stack`, per-slice σ_y and data weight).  Terms that
act on each image alone (classifier guidance) serve every row.  One slice is ``B = 1``; a single generator
stands for ``[gen]``.  Every operation on the batch treats each image on its own (the network's
normalisations are per image), so a slice's samples are those it gets alone, to floating-point rounding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mri_score.errors import InputError
from mri_score.likelihood import Likelihood


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
    """``value`` as the option's type (``float``, ``int``, ``bool``, ``float | None``, ``int | None``, ``str``); strings
    are parsed (``none``, ``null`` and ``auto`` are ``None`` for the ``| None`` types: the option's rule decides)."""
    kind = kind.replace(" ", "")
    words = {"int|None": "int, auto or none", "float|None": "float, auto or none"}
    bad = InputError(f"{sampler} option {option} must be {words.get(kind, kind)}, got {value!r}")
    nones = {"float|None": ("none", "null", "auto"), "int|None": ("none", "null", "auto")}
    if kind in nones and (value is None or (isinstance(value, str) and value.strip().lower() in nones[kind])):
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
    if kind in ("int", "int|None"):
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


#: The noise source of a sampler: one generator (one slice) or one per slice of a batch.
Generators = torch.Generator | Sequence[torch.Generator]


def randn_complex(shape: tuple[int, ...], gen: Generators, device: torch.device) -> torch.Tensor:
    """Complex normal with unit variance in each of the real and imaginary parts (``E|z|² = 2``).

    This is the network's 2-channel noise model: ``x_σ = x + σ z``.  With ``B`` generators the first axis
    (``B·K`` rows) is split into ``B`` equal blocks and block ``b`` is drawn from ``gen[b]`` (real part, then
    imaginary part, as for one slice), so every slice's noise is independent of the batch it is sampled in.
    """
    gens = [gen] if isinstance(gen, torch.Generator) else list(gen)
    if not gens or shape[0] % len(gens):
        raise ValueError(f"{len(gens)} generators for {shape[0]} images: each slice needs its own and the same count")
    block = (shape[0] // len(gens), *shape[1:])
    parts = []
    for g in gens:
        re = torch.randn(block, generator=g, device=g.device).to(device)
        im = torch.randn(block, generator=g, device=g.device).to(device)
        parts.append(torch.complex(re, im))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass
class SamplerResult:
    """Posterior samples ``(B·K, H, W)`` complex (scaled units) and the network evaluations used (per slice)."""

    samples: torch.Tensor
    nfe: int
