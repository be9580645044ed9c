"""mri-score: accelerated MRI reconstruction with score-based priors.

Importing the package is light (the prior loader is imported on first use), so that
:func:`mri_score.errors.guard_startup` runs before torch is imported.
"""

from typing import Any

from mri_score.errors import guard_startup

guard_startup()

__all__ = ["default_prior_path", "load_prior"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mri_score import prior

        return getattr(prior, name)
    raise AttributeError(f"module 'mri_score' has no attribute {name!r}")
