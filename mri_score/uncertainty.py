"""Calibrating the posterior std: a split-conformal factor, its sidecar file next to the prior, coverage.

The raw std of K posterior samples is overconfident (too few samples, a prior that is
not the data's).  Split-conformal calibration fixes the scale on *calibration slices*
(synthetic tuning slices, never real images): on their object pixels (truth > 5 % of
its max) the ratio ``r = |error| / std`` is pooled and its ``level`` quantile ``q``
taken; the stored factor is ``c = q / z`` with ``z`` the two-sided standard-normal
quantile of ``level`` (1.645 at 90 %), so that ``c · std`` reads as a Gaussian std:
``|error| ≤ z · c · std`` on a fraction ``level`` of the calibration pixels.

The factor is stored in a JSON sidecar ``<prior>.calibration.json`` (the weights
file is never rewritten: its digest covers its contents), keyed by the prior file's
SHA-256 and every setting of the request it was fitted for that changes the std
(:func:`settings_key`); :func:`lookup_factor` returns it only for a matching prior and settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mri_score.atomic import atomic_output
from mri_score.errors import InputError

if TYPE_CHECKING:
    from mri_score.request import ReconRequest

#: Object pixels: truth above this fraction of its (per-slice) maximum.
OBJECT_FRACTION = 0.05
#: Nominal levels of the reliability diagram.
RELIABILITY_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def object_mask(truth: np.ndarray, fraction: float = OBJECT_FRACTION) -> np.ndarray:
    """Boolean mask of object pixels of ``truth (..., H, W)``: above ``fraction`` of each slice's max."""
    t = np.asarray(truth, dtype=np.float64)
    peak = t.reshape(*t.shape[:-2], -1).max(axis=-1)[..., None, None] if t.ndim > 2 else t.max()
    return t > fraction * peak


def error_ratios(truth: np.ndarray, recon: np.ndarray, std: np.ndarray, floor: float = 0.0,
                 level: float = 0.9) -> np.ndarray:
    """Per object pixel of ``truth``, the factor on ``std`` it needs to be covered (1-D float64), times ``z(level)``.

    Without a floor this is ``|recon − truth| / std``; std 0 gives inf unless the error is 0.  With a
    noise ``floor`` (:func:`noise_floor_std`) the calibrated std is ``sqrt((c · std)² + floor²)``, which
    is not rescaled by ``c``: a pixel is covered at ``level`` when ``|err| ≤ z · sqrt((c · std)² + floor²)``,
    i.e. when ``c ≥ sqrt(max(0, (err / z)² − floor²)) / std``; the ratio is ``z`` times that threshold, so
    that :func:`conformal_factor` and :func:`coverage` read it as they read ``|err| / std`` (``level`` only
    matters with a floor).
    """
    sel = object_mask(truth)
    err = np.abs(np.asarray(recon, np.float64) - np.asarray(truth, np.float64))[sel]
    s = np.asarray(std, np.float64)[sel]
    if floor:
        z = gaussian_z(level)
        err = z * np.sqrt(np.maximum(0.0, (err / z) ** 2 - float(floor) ** 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = err / s
    r[(err == 0) & (s == 0)] = 0.0
    return r


def rank_correlation(truth: np.ndarray, recon: np.ndarray, std: np.ndarray) -> float:
    """Spearman rank correlation of ``|recon − truth|`` and ``std`` over the object pixels of ``truth``.

    How well the std map says *where* the errors are (1: the same order; 0: unrelated); NaN when either is
    constant on the object.
    """
    from scipy.stats import spearmanr

    sel = object_mask(truth)
    err = np.abs(np.asarray(recon, np.float64) - np.asarray(truth, np.float64))[sel]
    s = np.asarray(std, np.float64)[sel]
    if err.size < 2 or np.ptp(err) == 0 or np.ptp(s) == 0:
        return float("nan")
    return float(spearmanr(err, s).statistic)


def pooled_std(std: np.ndarray, window: int) -> np.ndarray:
    """``sqrt`` of the variance ``std²`` averaged over a ``window × window`` neighbourhood (edges: valid pixels only).

    ``std`` ``(H, W)`` (array or CPU tensor); returns float64 ``(H, W)`` (``std`` unchanged as float64 for
    ``window <= 1``).  The per-pixel std of K = 2 samples has one degree of freedom; the local RMS trades resolution
    for a less heavy-tailed estimate.
    """
    from scipy.ndimage import uniform_filter

    var = np.square(np.asarray(std, dtype=np.float64))
    if window <= 1:
        return np.sqrt(var)
    total = uniform_filter(var, size=window, mode="constant", cval=0.0)
    count = uniform_filter(np.ones_like(var), size=window, mode="constant", cval=0.0)
    return np.sqrt(np.maximum(total, 0.0) / count)


def gaussian_z(level: float) -> float:
    """Two-sided standard-normal quantile: ``P(|N(0,1)| ≤ z) = level``."""
    if not 0.0 < level < 1.0:
        raise InputError(f"coverage level must lie in (0, 1), got {level}")
    from scipy.stats import norm  # here: scipy.stats costs ~0.9 s of every command's start-up, and only fits need it

    return float(norm.ppf(0.5 + level / 2))


def conformal_factor(ratios: np.ndarray, level: float = 0.9) -> float:
    """Factor ``c`` such that ``|err| ≤ z(level) · c · std`` on a fraction ``level`` of the pooled ``ratios``.

    ``ratios`` are :func:`error_ratios` of the calibration slices; the split-conformal
    quantile ``⌈(n+1)·level⌉ / n`` (finite-sample valid) is used.
    """
    r = np.asarray(ratios, dtype=np.float64).ravel()
    if r.size == 0:
        raise InputError("no calibration pixels to fit the std factor on")
    q_level = min(1.0, np.ceil((r.size + 1) * level) / r.size)
    q = float(np.quantile(r, q_level, method="higher"))
    return q / gaussian_z(level)


def every_group_factor(ratios_by_group: Mapping[str, np.ndarray], level: float = 0.9) -> float:
    """One factor that covers every calibration group: the largest :func:`conformal_factor` of the groups.

    Group-conditional (Mondrian) split-conformal calibration fits a factor per group (here: per
    acceleration and mask) so that each group is covered at ``level``; taking the largest keeps that
    guarantee for every group with one factor, at the price of over-covering the easier ones.
    """
    if not ratios_by_group:
        raise InputError("no calibration groups to fit the std factor on")
    return max(conformal_factor(r, level) for r in ratios_by_group.values())


def noise_floor_std(sigma_y: float, sampled_fraction: float) -> float:
    """Std of the magnitude error that the data noise causes and that all K samples share.

    Every posterior sample fits the same noisy k-space, so the sampled frequencies' noise is in all
    of them and not in their spread.  With an orthonormal FFT, ``E|n|² = σ_y²`` per sample and coil maps
    ``Σ_c |S_c|² = 1``, the coil-combined image carries complex noise of variance ``σ_y² · f`` per pixel
    (``f`` the sampled fraction of k-space); its component along the image phase, ``σ_y · √(f / 2)``,
    is the magnitude's.

    Parameters
    ----------
    sigma_y : float
        Noise std per complex k-space sample, in the image's units.
    sampled_fraction : float
        Fraction of k-space sampled, in [0, 1].
    """
    if not (np.isfinite(sigma_y) and sigma_y >= 0 and 0.0 <= sampled_fraction <= 1.0):
        raise InputError(f"noise floor needs σ_y ≥ 0 and a sampled fraction in [0, 1], got {sigma_y}, "
                         f"{sampled_fraction}")
    return float(sigma_y * np.sqrt(sampled_fraction / 2))


def coverage(ratios: np.ndarray, factor: float, level: float) -> float:
    """Fraction of ``ratios`` with ``|err| ≤ z(level) · factor · std``."""
    r = np.asarray(ratios, dtype=np.float64).ravel()
    return float(np.mean(r <= gaussian_z(level) * factor)) if r.size else float("nan")


def reliability(cal_ratios: np.ndarray, test_ratios: np.ndarray,
                levels: tuple[float, ...] = RELIABILITY_LEVELS) -> list[dict[str, float]]:
    """Per nominal level: the factor fitted on ``cal_ratios``, observed coverage on ``test_ratios`` (raw std and calibrated)."""
    out = []
    for p in levels:
        c = conformal_factor(cal_ratios, p)
        out.append({"level": p, "factor": c, "raw": coverage(test_ratios, 1.0, p), "calibrated": coverage(test_ratios, c, p)})
    return out


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(prior_path: str | os.PathLike[str]) -> Path:
    """The calibration sidecar of a prior: ``<prior>.calibration.json`` beside it."""
    p = Path(prior_path)
    return p.with_name(p.name + ".calibration.json")


def settings_key(request: ReconRequest) -> str:
    """The key a calibration entry is stored under: ``sampler[@vN]/nfe/samples/magnitude[/name=value...]``.

    The sampler's options that differ from its defaults are appended in name order (e.g.
    ``dds@v3/nfe=24/K=2/sense/cg_iters=5``), then every other non-default setting that changes the
    std (grid, precision, maps, conditioning, adaptation: :meth:`ReconRequest.calibration_suffix`), so a
    factor fitted under one setting never applies to another.  ``@vN`` is the sampler's
    ``defaults_version`` when above 1: a key written under older defaults names no version (or an older
    one) and never matches.  Seed, mask and output options are not part of it.
    """
    cfg = request.options
    version = type(cfg).defaults_version
    key = f"{request.sampler}{f'@v{version}' if version > 1 else ''}/nfe={int(request.steps)}/K={int(request.samples)}"
    default = type(cfg)()
    changed = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)]
    return "/".join([key, request.magnitude, *(f"{name}={getattr(cfg, name)!r}" for name in sorted(changed)),
                     *request.calibration_suffix()])


def read_sidecar(prior_path: str | os.PathLike[str]) -> dict:
    """The sidecar's content (``{"prior_sha256", "entries": {key: entry}}``), empty when there is none."""
    path = sidecar_path(prior_path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable calibration file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries", {}), dict):
        raise InputError(f"{path}: calibration file must be a JSON object with an 'entries' object")
    return data


def store_factor(prior_path: str | os.PathLike[str], key: str, factor: float, level: float,
                 superseded: Callable[[str], bool] | None = None, **info: object) -> Path:
    """Add (or replace) the entry ``key`` of the prior's sidecar, written atomically; returns the sidecar path.

    An existing sidecar made for a different prior file (other SHA-256) is replaced.  ``superseded``, where given,
    names the entries that can no longer match any request (e.g. trajectory factors fitted under older
    non-Cartesian defaults, :func:`mri_score.noncartesian.superseded_calibration_key`): they are dropped in the same
    write, so the sidecar lists only factors that some request can still look up.
    """
    if not np.isfinite(factor) or factor <= 0:
        raise InputError(f"std calibration factor must be finite and > 0, got {factor}")
    digest = file_sha256(prior_path)
    data = read_sidecar(prior_path)
    if data.get("prior_sha256") != digest:
        data = {}
    entries = {k: v for k, v in data.get("entries", {}).items() if superseded is None or not superseded(k)}
    entries[key] = {"factor": float(factor), "level": float(level), **info}
    data = {"prior": Path(prior_path).name, "prior_sha256": digest, "entries": entries}
    path = sidecar_path(prior_path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def matching_entries(prior_path: str | os.PathLike[str]) -> dict:
    """The sidecar's entries ``{key: entry}`` when it was written for this prior file (SHA-256), else empty."""
    data = read_sidecar(prior_path)
    if not data or data.get("prior_sha256") != file_sha256(prior_path):
        return {}
    return data.get("entries", {})


def lookup_factor(prior_path: str | os.PathLike[str], key: str) -> dict | None:
    """The sidecar entry for ``key`` when the sidecar matches the prior file's SHA-256, else None."""
    entry = matching_entries(prior_path).get(key)
    if entry is None:
        return None
    factor = entry.get("factor") if isinstance(entry, dict) else None
    if not isinstance(factor, (int, float)) or not np.isfinite(factor) or factor <= 0:
        raise InputError(f"{sidecar_path(prior_path)}: entry {key!r} has no valid 'factor'")
    return entry
