"""Image-quality metrics by the fastMRI protocol (``fastmri/evaluate.py``).

All functions take real volumes ``(slices, H, W)``; the data range is the
*target volume's* maximum; SSIM is skimage's ``structural_similarity`` (7×7
uniform window, K1 = 0.01, K2 = 0.03) per slice, averaged over slices.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


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
    return float(peak_signal_noise_ratio(gt, pred, data_range=maxval))


def ssim(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """Mean over slices of skimage SSIM with ``data_range = gt.max()`` of the volume."""
    _check(gt, pred)
    maxval = float(gt.max()) if maxval is None else maxval
    vals = [structural_similarity(gt[i], pred[i], data_range=maxval) for i in range(gt.shape[0])]
    return float(np.mean(vals))


def volume_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{"NMSE", "PSNR", "SSIM"}`` of one volume."""
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    return {"NMSE": nmse(gt, pred), "PSNR": psnr(gt, pred), "SSIM": ssim(gt, pred)}


def aggregate(per_volume: Iterable[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and 2·std over volumes for each metric: ``{name: (mean, 2*std)}`` (fastMRI's report)."""
    rows = list(per_volume)
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = (float(vals.mean()), float(2 * vals.std()))
    return out


def format_aggregate(agg: dict[str, tuple[float, float]]) -> str:
    """``"NMSE = 0.01 +/- 0.002 PSNR = ..."`` as fastMRI prints it."""
    return " ".join(f"{k} = {m:.4g} +/- {s:.4g}" for k, (m, s) in agg.items())
