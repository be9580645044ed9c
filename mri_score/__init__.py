"""mri-score: accelerated MRI reconstruction with score-based priors.

Importing the package is light (the prior loader is imported on first use); it installs no
signal handler (command lines do that themselves, :mod:`mri_score.cli`).
"""

from typing import Any

__all__ = ["default_prior_path", "load_prior"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mri_score import prior

        return getattr(prior, name)
    raise AttributeError(f"module 'mri_score' has no attribute {name!r}")
