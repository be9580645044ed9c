"""PNG panels for reconstructions and prior samples (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def recon_panel(path: str | Path, zero_filled: np.ndarray, recon: np.ndarray, std: np.ndarray | None,
                target: np.ndarray | None, title: str = "", slice_index: int | None = None) -> None:
    """Zero-filled, reconstruction, std (when given) and (with a target) target and |error| of one slice of
    ``(S, H, W)`` volumes."""
    i = recon.shape[0] // 2 if slice_index is None else slice_index
    panels = [("zero-filled", zero_filled[i], "gray"), ("reconstruction", recon[i], "gray")]
    if std is not None:
        panels.append(("posterior std", std[i], "magma"))
    if target is not None:
        panels += [("target", target[i], "gray"), ("|error|", np.abs(target[i] - recon[i]), "magma")]
    image_row(path, panels, float(np.percentile(recon[i], 99.5)), title)


def image_row(path: str | Path, panels: list[tuple[str, np.ndarray, str]], vmax: float, title: str = "",
              units: str = "intensity (a.u., the data's units)") -> None:
    """One row of 2-D images ``[(name, image, cmap)]`` with a colour bar each, labelled ``units``: ``gray`` ones share
    the window ``[0, vmax]``, others (error and std maps) are windowed to their own 99.5th percentile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.3), squeeze=False)
    for ax, (name, img, cmap) in zip(axes[0], panels):
        gray = cmap == "gray"
        shown = ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax if gray else max(float(np.percentile(img, 99.5)), 1e-12))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=6)
        bar.set_label(units, fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def sample_grid(path: str | Path, magnitudes: np.ndarray, title: str = "") -> None:
    """A grid (4 columns) of magnitude images ``(n, H, W)``, each windowed to its own 99.5th percentile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = magnitudes.shape[0]
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.5 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(magnitudes[k], cmap="gray", vmin=0, vmax=np.percentile(magnitudes[k], 99.5))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def save_figure_atomic(fig, path: str | Path, dpi: int = 90) -> Path:
    """``fig.savefig`` as PNG, atomically (:func:`mri_score.atomic.atomic_output`)."""
    from mri_score.atomic import atomic_output

    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)
