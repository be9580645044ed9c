"""Make ``docs/domain_random_montage.png``: 16 domain-randomised slices (brain, body, joint) and their label maps.

Usage: ``python docs/make_domain_random_montage.py [--out docs/domain_random_montage.png] [--size 192] [--seed 0]``.
Rows 1 and 3 show magnitudes (each scaled to its own 99.5th percentile), rows 2 and 4 the label maps of the
slices above them.  Every slice is :func:`mri_score.data.domain_random.render_slice` with
``default_rng([seed, i])``; families cycle brain, body, joint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    """Render the montage and save it as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mri_score.data.domain_random import FAMILIES, render_slice

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).with_name("domain_random_montage.png")))
    ap.add_argument("--size", type=int, default=192, help="matrix of each slice (pixels)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    n, cols = 16, 8
    fig, axes = plt.subplots(4, cols, figsize=(2.1 * cols, 9.2))
    for i in range(n):
        family = FAMILIES[i % len(FAMILIES)]
        img, pix, lab = render_slice(np.random.default_rng([args.seed, i]), family, (args.size, args.size))
        row, col = 2 * (i // cols), i % cols
        mag = np.abs(img)
        axes[row, col].imshow(mag, cmap="gray", vmin=0, vmax=np.percentile(mag, 99.5), interpolation="nearest")
        axes[row, col].set_title(f"{family}  {pix:.2f} mm/px", fontsize=8)
        axes[row + 1, col].imshow(lab, cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
        for ax in (axes[row, col], axes[row + 1, col]):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"domain-randomised slices ({args.size}x{args.size}, magnitude and labels, seed {args.seed})", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    plt.close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
