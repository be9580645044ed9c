"""Unconditional samples of a prior next to real development slices at the same matrix: ``docs/prior_vs_real.png``.

Run: ``python docs/make_prior_vs_real.py [--prior PATH] [--out docs/prior_vs_real.png] [--seed 0] [--steps N]``.
Row 1: four samples at 128² and two real slices on a 128² matrix; row 2: two samples at 256² and two real
slices on a 256² matrix.  Samples are drawn unconditionally (null label) by
:func:`mri_score.generation.heun_samples`, the sampler of ``python -m mri_score.sample_prior`` (same default
step count, seed ``--seed`` at both sizes).  The real slices are the middle slices of the development volumes
(:func:`mri_score.data.realset.development_set`; the final test volumes are never read), taken in turn (a volume
shown twice gives its quarter-depth slice the second time), each zero-padded centred on the sample's matrix so
that one image pixel is one pixel in both; their titles give their pixel size, the figure title the pixel range
the prior was trained at (:func:`mri_score.resolution.prior_pixel_range`).  Every panel is a magnitude windowed
to its own 99.5th percentile.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import numpy as np
import torch

from mri_score import limits
from mri_score.data.realset import RealSetVolume, development_set
from mri_score.fastmri_io import center_crop
from mri_score.figures import save_figure_atomic
from mri_score.generation import heun_samples
from mri_score.prior import default_prior_path, load_prior
from mri_score.resolution import prior_pixel_range

ROOT = Path(__file__).resolve().parents[1]
#: The sampler's default step count (``python -m mri_score.sample_prior`` uses the same).
DEFAULT_STEPS = int(inspect.signature(heun_samples).parameters["steps"].default)
#: ``(matrix, samples, real slices)`` per row of the figure.
ROWS = ((128, 4, 2), (256, 2, 2))


def on_matrix(image: np.ndarray, size: int) -> np.ndarray:
    """``image (H, W)`` zero-padded (or centre-cropped, where larger) to ``(size, size)``, centred; pixels kept.

    Parameters
    ----------
    image : np.ndarray
        A 2-D image.
    size : int
        The matrix to place it on.

    Returns
    -------
    np.ndarray
        ``(size, size)`` image, the input's pixels at their own scale.
    """
    h, w = image.shape
    ph, pw = max(0, size - h), max(0, size - w)
    padded = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    return center_crop(padded, (size, size))


def real_slices(volumes: list[RealSetVolume], count: int) -> list[tuple[str, np.ndarray]]:
    """``count`` real magnitude slices ``[(title, (H, W))]``: the volumes in turn, middle slice first, then quarter depth.

    Parameters
    ----------
    volumes : list of RealSetVolume
        Development volumes.
    count : int
        How many slices.

    Returns
    -------
    list of (str, np.ndarray)
        A title (volume, slice, matrix, pixel size) and the slice's magnitude.
    """
    out = []
    for k in range(count):
        vol = volumes[k % len(volumes)]
        depth = vol.images.shape[0]
        s = depth // 2 if k < len(volumes) else depth // 4
        h, w = vol.images.shape[-2:]
        title = f"{vol.name} s{s}\n{h}×{w}, {vol.pixel_mm[0]:g}×{vol.pixel_mm[1]:g} mm"
        out.append((title, np.abs(vol.images[s]).astype(np.float32)))
    return out


def draw(out: str | Path, rows: list[list[tuple[str, np.ndarray, np.ndarray]]], title: str) -> Path:
    """Draw ``rows`` of panels ``(title, image shown, pixels that set the window)`` as one PNG, atomically.

    Each row spans the figure's width (a row of fewer panels gets larger ones); each panel is windowed to
    ``[0, 99.5th percentile]`` of its window pixels.

    Parameters
    ----------
    out : str or Path
        Output PNG.
    rows : list of list of (str, np.ndarray, np.ndarray)
        The panels of each row.
    title : str
        Figure title.

    Returns
    -------
    Path
        ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = int(np.lcm.reduce([len(r) for r in rows]))
    width = 14.0
    fig = plt.figure(figsize=(width, sum(width / len(r) + 0.5 for r in rows) + 0.4))
    grid = fig.add_gridspec(len(rows), cols, height_ratios=[width / len(r) + 0.5 for r in rows])
    for i, row in enumerate(rows):
        span = cols // len(row)
        for j, (name, shown, window) in enumerate(row):
            ax = fig.add_subplot(grid[i, j * span : (j + 1) * span])
            ax.imshow(shown, cmap="gray", vmin=0, vmax=max(float(np.percentile(window, 99.5)), 1e-12),
                      interpolation="nearest")
            ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, out)
    plt.close(fig)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """Sample the prior at each row's matrix and draw the samples beside the real slices."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=None, help="prior checkpoint (default: the shipped default prior)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "prior_vs_real.png"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"Heun steps (default {DEFAULT_STEPS})")
    args = ap.parse_args(argv)
    limits.check_steps(args.steps)
    limits.check_seed(args.seed)
    prior_path = Path(args.prior) if args.prior else default_prior_path()
    model = load_prior(prior_path)
    lo, hi = prior_pixel_range(getattr(model, "meta", None))
    reals = iter(real_slices(development_set(), sum(r[2] for r in ROWS)))
    rows = []
    for size, n, n_real in ROWS:
        x = heun_samples(model, n, size, args.steps, seed=args.seed)
        mags = torch.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2).numpy()
        row = [(f"sample {k + 1}, {size}²", m, m) for k, m in enumerate(mags)]
        for name, img in (next(reals) for _ in range(n_real)):
            row.append((f"{name} on {size}²", on_matrix(img, size), img))
        rows.append(row)
        print(f"{size}²: {n} samples", flush=True)
    title = (f"{prior_path.name}: unconditional samples, EDM Heun {args.steps} steps ({2 * args.steps - 1} NFE), "
             f"seed {args.seed}; the prior was trained at {lo:g}–{hi:g} mm pixels\nreal development slices zero-padded on the "
             "sample's matrix (one pixel = one pixel); magnitudes, each windowed to its own 99.5th percentile")
    print(draw(args.out, rows, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
