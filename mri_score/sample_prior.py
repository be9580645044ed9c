"""``python -m mri_score.sample_prior [--prior CKPT] --out grid.png``: unconditional samples from a prior.

EDM Heun sampler (Karras et al. 2022, deterministic 2nd-order ODE), so a user
can see what the prior learned.  Magnitudes are shown as a PNG grid.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from mri_score.errors import exit_on_input_error
from mri_score.network import EDMDenoiser
from mri_score.samplers.base import karras_sigmas


@torch.no_grad()
def heun_samples(model: EDMDenoiser, n: int, size: int, steps: int = 30, sigma_max: float = 40.0,
                 sigma_min: float = 0.002, seed: int = 0) -> torch.Tensor:
    """``n`` samples ``(n, 2, size, size)`` by EDM Heun integration of the probability-flow ODE."""
    gen = torch.Generator().manual_seed(seed)
    sig = karras_sigmas(steps, sigma_max, sigma_min) + [0.0]
    x = torch.randn(n, 2, size, size, generator=gen) * sig[0]
    for i in range(steps):
        s, s_next = sig[i], sig[i + 1]
        d = (x - model(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - model(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
    return x


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(a.n, 4)
    rows = int(np.ceil(a.n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.5 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < a.n:
            ax.imshow(mag[k], cmap="gray", vmin=0, vmax=np.percentile(mag[k], 99.5))
    fig.suptitle(f"unconditional samples, EDM Heun {a.steps} steps ({2 * a.steps - 1} NFE)", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out, dpi=90)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
