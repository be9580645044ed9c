"""Posterior samplers sharing one interface: ``sampler(prior, problem, x_init, gen, steps=…, **options)``."""

from mri_score.samplers.base import ComplexPrior, Problem, SamplerResult, geometric_sigmas, karras_sigmas
from mri_score.samplers.dds import sample_dds
from mri_score.samplers.dps import sample_dps
from mri_score.samplers.langevin import sample_langevin
from mri_score.samplers.pc import sample_pc

SAMPLERS = {"dds": sample_dds, "langevin": sample_langevin, "pc": sample_pc, "dps": sample_dps}
#: Default network-evaluation budgets per sampler (``--steps``).
DEFAULT_STEPS = {"dds": 30, "langevin": 500, "pc": 100, "dps": 100}

__all__ = [
    "DEFAULT_STEPS",
    "SAMPLERS",
    "ComplexPrior",
    "Problem",
    "SamplerResult",
    "geometric_sigmas",
    "karras_sigmas",
    "sample_dds",
    "sample_dps",
    "sample_langevin",
    "sample_pc",
]
