"""``python -m mri_score.sample_prior [--prior CKPT] --out grid.png``: unconditional samples from a prior.

EDM Heun sampler (Karras et al. 2022, deterministic 2nd-order ODE;
:func:`mri_score.generation.heun_samples`), so a user can see what the prior
learned.  Magnitudes are shown as a PNG grid (:func:`mri_score.figures.sample_grid`).
"""

from __future__ import annotations

import argparse
import sys

import torch

from mri_score.errors import exit_on_input_error
from mri_score.figures import sample_grid
from mri_score.generation import heun_samples


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Write a PNG grid of unconditional samples from a prior."""
    p = argparse.ArgumentParser(prog="python -m mri_score.sample_prior", description=__doc__.split("\n")[0])
    p.add_argument("--prior", default=None)
    p.add_argument("--out", default="prior_samples.png")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from mri_score.prior import load_prior

    model = load_prior(a.prior)
    x = heun_samples(model, a.n, a.size, a.steps, seed=a.seed)
    mag = torch.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2).numpy()
    sample_grid(a.out, mag, f"unconditional samples, EDM Heun {a.steps} steps ({2 * a.steps - 1} NFE)")
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
