"""Scoring a directory of reconstructions against a directory of targets, as fastMRI's ``evaluate.py`` does.

For every target file ``T/NAME.h5`` (sorted by name) the prediction is ``P/NAME.h5``:

* target key ``reconstruction_rss`` (``multicoil``) or ``reconstruction_esc`` (``singlecoil``),
  prediction key ``reconstruction``, both real ``(slices, H, W)``;
* optional filters on the *target's* attributes: ``acceleration`` (equal to the value given)
  and ``acquisition`` (equal to the name given), applied before the prediction is opened;
* both volumes centre-cropped to the ``W × W`` square of the target's width
  (:func:`mri_score.metrics.evaluation_crop`);
* per volume MSE, NMSE, PSNR and SSIM with ``data_range`` = the cropped target's maximum
  (:func:`mri_score.metrics.mse` and :func:`mri_score.metrics.volume_metrics`);
* over volumes the mean and the sample standard deviation (:func:`mri_score.metrics.aggregate`;
  fastMRI prints ``mean +/- 2·std``, :func:`mri_score.metrics.format_aggregate`).

Unlike fastMRI's script, which stops at the first missing or unreadable file, every volume
is accounted for: scored, skipped by a filter (with the reason), or failed (with a one-line
reason: no prediction, unreadable file, missing key, NaN, shapes that do not match after the
crop).  Metrics are computed in float64 (fastMRI's in the files' float32; the two agree to
about 1e-6 relative).  Files are opened read-only and nothing is written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from mri_score.errors import InputError
from mri_score.fastmri_io import MAX_ARRAY_BYTES, dataset, open_input, read_array, read_attrs
from mri_score.metrics import aggregate, evaluation_crop, format_aggregate, mse, volume_metrics

#: The target dataset fastMRI's evaluation reads for each challenge.
TARGET_KEYS = {"multicoil": "reconstruction_rss", "singlecoil": "reconstruction_esc"}
#: The prediction dataset (fastMRI's ``save_reconstructions``).
PREDICTION_KEY = "reconstruction"
#: The metrics, in fastMRI's (sorted) order.
METRIC_NAMES = ("MSE", "NMSE", "PSNR", "SSIM")
#: Volume files: fastMRI's are ``.h5``.
SUFFIX = ".h5"


def _read_volume(path: Path, key: str, what: str) -> np.ndarray:
    """Dataset ``key`` of ``path`` as float64 ``(slices, H, W)``; one :class:`InputError` naming the file otherwise."""
    with open_input(path) as hf:
        return _volume_of(hf, path, key, what)


def _volume_of(hf: Any, path: Path, key: str, what: str) -> np.ndarray:
    """Dataset ``key`` of the open file ``hf`` as a finite float64 ``(slices, H, W)`` volume."""
    dset = dataset(hf, key, path, "fiu", (3,), MAX_ARRAY_BYTES, key, "(slices, H, W)")
    if dset is None:
        other = [c for c, k in TARGET_KEYS.items() if k != key and k in hf] if what == "target" else []
        hint = f" (it has '{TARGET_KEYS[other[0]]}': use --challenge {other[0]})" if other else ""
        raise InputError(f"{path}: no '{key}' dataset (the {what}){hint}")
    if min(dset.shape) < 1:
        raise InputError(f"{path}: {key} has an empty dimension, shape {dset.shape}")
    vol = read_array(dset, path, key).astype(np.float64)
    if not np.isfinite(vol).all():
        raise InputError(f"{path}: {key} contains NaN or Inf")
    return vol


def score_volume(target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """``{"MSE", "NMSE", "PSNR", "SSIM"}`` of one volume, as fastMRI's ``evaluate.py`` scores it.

    Parameters
    ----------
    target : np.ndarray
        Real ``(slices, H, W)``.
    prediction : np.ndarray
        Real ``(slices, H', W')``, at least ``W × W`` in-plane.

    Returns
    -------
    dict
        The four metrics after the target-width crop (PSNR in dB); ``data_range`` is the cropped
        target's maximum.

    Raises
    ------
    InputError
        Slice counts that differ, a volume too small for the crop, or a target whose cropped maximum
        is not positive (PSNR, SSIM and NMSE are undefined).
    """
    gt = np.asarray(target, dtype=np.float64)
    pred = np.asarray(prediction, dtype=np.float64)
    try:
        gt_c, pred_c = evaluation_crop(gt, pred)
        if gt_c.shape != pred_c.shape:
            raise ValueError(f"target {gt.shape} and reconstruction {pred.shape} differ after the crop to "
                             f"{gt_c.shape[-2:]}: {gt_c.shape} != {pred_c.shape}")
        if not float(gt_c.max()) > 0:
            raise ValueError(f"the cropped target's maximum is {float(gt_c.max()):g}; PSNR, SSIM and NMSE need a "
                             "positive data range")
        row = {"MSE": mse(gt_c, pred_c), **volume_metrics(gt, pred)}
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError(str(err)) from None
    return {k: row[k] for k in METRIC_NAMES}


def _attr_filter(attrs: dict[str, Any], path: Path, acceleration: float | None, acquisition: str | None) -> str | None:
    """Why a target is excluded by the filters (None: it is scored); a filter it lacks the attribute for is an error."""
    if acquisition is not None:
        if "acquisition" not in attrs:
            raise InputError(f"{path}: no 'acquisition' attribute, so --acquisition {acquisition} cannot be applied")
        if attrs["acquisition"] != acquisition:
            return f"acquisition {attrs['acquisition']} != {acquisition}"
    if acceleration is not None:
        if "acceleration" not in attrs:
            raise InputError(f"{path}: no 'acceleration' attribute, so --acceleration {acceleration:g} cannot be applied")
        if not math.isclose(attrs["acceleration"], acceleration, rel_tol=1e-9, abs_tol=0.0):
            return f"acceleration {attrs['acceleration']:g} != {acceleration:g}"
    return None


def _check_dir(directory: str | os.PathLike[str], flag: str) -> Path:
    path = Path(directory)
    if not path.exists():
        raise InputError(f"{flag} {path}: no such directory")
    if not path.is_dir():
        raise InputError(f"{flag} {path}: not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot be read (permission denied)")
    return path


def _listing(directory: Path, flag: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError as err:
        raise InputError(f"{flag} {directory}: cannot be listed ({err.strerror or err})") from None


def evaluate_dirs(target_dir: str | os.PathLike[str], predictions_dir: str | os.PathLike[str],
                  challenge: str = "multicoil", acceleration: float | None = None,
                  acquisition: str | None = None) -> dict[str, Any]:
    """Score every ``.h5`` target of ``target_dir`` against the same name in ``predictions_dir``.

    Parameters
    ----------
    target_dir, predictions_dir : str or path-like
        Directories of fastMRI files with targets, and of reconstructions (``reconstruction``).
    challenge : {"multicoil", "singlecoil"}
        Picks the target key (:data:`TARGET_KEYS`).
    acceleration : float, optional
        Score only targets whose ``acceleration`` attribute equals it.
    acquisition : str, optional
        Score only targets whose ``acquisition`` attribute equals it (e.g. ``CORPD_FBK``, ``AXT2``).

    Returns
    -------
    dict
        ``challenge``, ``target_key``, ``target_dir``, ``predictions_dir``, ``filters``;
        ``volumes``: ``{name: {"MSE", "NMSE", "PSNR", "SSIM"}}`` of the scored volumes;
        ``failed``: ``{name: reason}`` (one line each: no prediction, unreadable, missing key,
        shapes that do not match after the crop, a filter attribute missing);
        ``skipped``: ``{name: reason}`` (excluded by a filter, or not an ``.h5`` file);
        ``unmatched_predictions``: prediction ``.h5`` files without a target;
        ``metrics``: ``{metric: {"mean", "std", "count"}}`` over the scored volumes (sample std,
        NaN for one volume; empty when none was scored); ``report``: fastMRI's printed line
        (``mean +/- 2·std``).

    Raises
    ------
    InputError
        A directory that is missing, not a directory or unreadable, a target directory with no
        ``.h5`` file, or an unknown ``challenge``.
    """
    if challenge not in TARGET_KEYS:
        raise InputError(f"challenge must be one of {', '.join(TARGET_KEYS)}, got {challenge!r}")
    if acceleration is not None and not (math.isfinite(acceleration) and acceleration >= 1):
        raise InputError(f"--acceleration must be a finite number >= 1, got {acceleration}")
    tdir = _check_dir(target_dir, "--target-dir")
    pdir = _check_dir(predictions_dir, "--predictions-dir")
    key = TARGET_KEYS[challenge]
    names = _listing(tdir, "--target-dir")
    targets = [n for n in names if n.endswith(SUFFIX) and not n.startswith(".")]
    if not targets:
        raise InputError(f"--target-dir {tdir}: no {SUFFIX} files")
    skipped = {n: f"not a {SUFFIX} file" for n in names if n not in targets and not n.startswith(".")}
    volumes: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    for name in targets:
        tpath, ppath = tdir / name, pdir / name
        try:
            with open_input(tpath) as hf:
                reason = _attr_filter(read_attrs(hf, tpath), tpath, acceleration, acquisition)
                if reason is not None:
                    skipped[name] = reason
                    continue
                gt = _volume_of(hf, tpath, key, "target")
            if not os.path.lexists(ppath):
                raise InputError(f"{ppath}: no prediction for the target {tpath}")
            pred = _read_volume(ppath, PREDICTION_KEY, "prediction")
            try:
                volumes[name] = score_volume(gt, pred)
            except InputError as err:
                raise InputError(f"{ppath}: {err}") from None
        except InputError as err:
            failed[name] = str(err)
    target_set = set(targets)
    unmatched = [n for n in _listing(pdir, "--predictions-dir")
                 if n.endswith(SUFFIX) and not n.startswith(".") and n not in target_set]
    agg = aggregate(volumes.values())
    return {
        "challenge": challenge,
        "target_key": key,
        "target_dir": str(tdir),
        "predictions_dir": str(pdir),
        "filters": {"acceleration": acceleration, "acquisition": acquisition},
        "volumes": volumes,
        "failed": failed,
        "skipped": skipped,
        "unmatched_predictions": unmatched,
        "metrics": {k: {"mean": m, "std": two_std / 2, "count": len(volumes)} for k, (m, two_std) in agg.items()},
        "report": format_aggregate(agg),
    }
