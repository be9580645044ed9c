"""mri-score: accelerated MRI reconstruction with score-based priors."""

from mri_score.prior import default_prior_path, load_prior

__all__ = ["default_prior_path", "load_prior"]
__version__ = "0.1.0"
