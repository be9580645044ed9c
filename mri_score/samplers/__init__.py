"""Posterior samplers sharing one interface: ``sampler(prior, likelihoods, x_init, gen, nfe, config)``.

``nfe`` is always the budget of network evaluations (``--steps`` / ``--nfe`` on the command
line, ``nfe`` in benchmark configs); each sampler spends at most that many
(:meth:`SamplerConfig.nfe_used`).  ``config`` is the sampler's own typed options
(:data:`SAMPLER_CONFIGS`); :func:`sampler_config` builds one from a mapping and refuses
unknown keys.  A batch of slices is sampled in one call (``x_init`` ``(B·K, H, W)``, one generator per
slice; :mod:`mri_score.samplers.base`).
"""

from collections.abc import Mapping
from typing import Any

from mri_score.errors import InputError
from mri_score.samplers.base import (
    SamplerConfig,
    SamplerResult,
    geometric_sigmas,
    karras_sigmas,
)
from mri_score.samplers.dds import CoarseStage, DDSConfig, sample_dds
from mri_score.samplers.dps import DPSConfig, sample_dps
from mri_score.samplers.langevin import LangevinConfig, sample_langevin
from mri_score.samplers.pc import PCConfig, sample_pc

SAMPLERS = {"dds": sample_dds, "langevin": sample_langevin, "pc": sample_pc, "dps": sample_dps}
#: Each sampler's typed options.
SAMPLER_CONFIGS: dict[str, type[SamplerConfig]] = {
    "dds": DDSConfig, "langevin": LangevinConfig, "pc": PCConfig, "dps": DPSConfig,
}
#: Default network-evaluation budgets per sampler (``--steps``).
DEFAULT_STEPS = {name: cfg.default_nfe for name, cfg in SAMPLER_CONFIGS.items()}


def sampler_config(sampler: str, options: Mapping[str, Any] | SamplerConfig | None = None) -> SamplerConfig:
    """The typed, validated options of ``sampler`` from a mapping (or a config, checked to be the sampler's)."""
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    cls = SAMPLER_CONFIGS[sampler]
    if isinstance(options, SamplerConfig):
        if not isinstance(options, cls):
            raise InputError(f"{type(options).__name__} given for the {sampler} sampler")
        return options
    return cls.from_options(options)


__all__ = [
    "DEFAULT_STEPS",
    "SAMPLERS",
    "SAMPLER_CONFIGS",
    "CoarseStage",
    "DDSConfig",
    "DPSConfig",
    "LangevinConfig",
    "PCConfig",
    "SamplerConfig",
    "SamplerResult",
    "geometric_sigmas",
    "karras_sigmas",
    "sample_dds",
    "sample_dps",
    "sample_langevin",
    "sample_pc",
    "sampler_config",
]
