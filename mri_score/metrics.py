"""Image-quality metrics by the fastMRI protocol (``fastmri/evaluate.py``).

All functions take real volumes ``(slices, H, W)``; the data range is the
*target volume's* maximum; SSIM is skimage's ``structural_similarity`` (7×7
uniform window, K1 = 0.01, K2 = 0.03) per slice, averaged over slices.
:func:`volume_metrics` first centre-crops target and reconstruction to a
``target_width × target_width`` square, as ``fastmri.evaluate`` does, and
:func:`aggregate` reports the sample std (``ddof = 1``, runstats' ``stddev``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mri_score.fastmri_io import center_crop


def _check(gt: np.ndarray, pred: np.ndarray) -> None:
    if gt.shape != pred.shape:
        raise ValueError(f"target shape {gt.shape} != prediction shape {pred.shape}")
    if gt.ndim != 3:
        raise ValueError(f"metrics expect volumes (slices, H, W), got {gt.shape}")


def mse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean squared error."""
    _check(gt, pred)
    return float(np.mean((gt - pred) ** 2))


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalised MSE ``‖gt − pred‖² / ‖gt‖²`` over the volume."""
    _check(gt, pred)
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def psnr(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """PSNR in dB over the volume with ``data_range = gt.max()``."""
    _check(gt, pred)
    maxval = float(gt.max()) if maxval is None else maxval
    from skimage.metrics import peak_signal_noise_ratio  # here: skimage.metrics (scipy.stats) costs ~0.9 s of start-up

    return float(peak_signal_noise_ratio(gt, pred, data_range=maxval))


def ssim(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """Mean over slices of skimage SSIM with ``data_range = gt.max()`` of the volume."""
    _check(gt, pred)
    maxval = float(gt.max()) if maxval is None else maxval
    from skimage.metrics import structural_similarity  # here, as in psnr: only files with a truth are scored

    vals = [structural_similarity(gt[i], pred[i], data_range=maxval) for i in range(gt.shape[0])]
    return float(np.mean(vals))


def evaluation_crop(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both volumes centre-cropped to ``(W, W)``, ``W`` the target's width, as ``fastmri.evaluate`` does.

    Parameters
    ----------
    gt, pred : np.ndarray
        Real ``(slices, H, W)`` target and ``(slices, H', W')`` reconstruction.

    Returns
    -------
    tuple of np.ndarray
        ``(gt, pred)``, each ``(slices, W, W)``.

    Raises
    ------
    ValueError
        When either volume is smaller than ``W × W`` (fastMRI's ``center_crop`` refuses it too).
    """
    side = int(gt.shape[-1])
    out = []
    for name, x in (("target", gt), ("reconstruction", pred)):
        if x.ndim != 3 or x.shape[-2] < side or x.shape[-1] < side:
            raise ValueError(f"{name} of shape {x.shape} cannot be centre-cropped to the target-width square "
                             f"{(side, side)} (fastmri.evaluate's crop)")
        out.append(center_crop(x, (side, side)))
    return out[0], out[1]


def volume_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{"NMSE", "PSNR", "SSIM"}`` of one volume, exactly as ``fastmri.evaluate`` scores it.

    Parameters
    ----------
    gt : np.ndarray
        Real target ``(slices, H, W)`` (``reconstruction_rss``, or ``reconstruction_esc`` for single-coil).
    pred : np.ndarray
        Real reconstruction ``(slices, H', W')``.

    Returns
    -------
    dict
        NMSE, PSNR (dB) and SSIM after :func:`evaluation_crop`; the data range of PSNR and
        SSIM is the cropped target volume's maximum.
    """
    gt, pred = evaluation_crop(np.asarray(gt, dtype=np.float64), np.asarray(pred, dtype=np.float64))
    return {"NMSE": nmse(gt, pred), "PSNR": psnr(gt, pred), "SSIM": ssim(gt, pred)}


def aggregate(per_volume: Iterable[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and 2·std over volumes for each metric: ``{name: (mean, 2*std)}`` (fastMRI's report).

    The std is the sample std (``ddof = 1``), as fastMRI's ``Metrics`` (runstats) computes it;
    it is NaN for a single volume (undefined; fastMRI's runstats divides by zero there).
    """
    rows = list(per_volume)
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        std = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
        out[key] = (float(vals.mean()), 2 * std)
    return out


def format_aggregate(agg: dict[str, tuple[float, float]]) -> str:
    """``"NMSE = 0.01 +/- 0.002 PSNR = ..."`` as fastMRI prints it."""
    return " ".join(f"{k} = {m:.4g} +/- {s:.4g}" for k, (m, s) in agg.items())
