"""What every benchmark script shares: test volumes, per-slice calibration, running one method, memory.

The data path is the package's own: images (:mod:`mri_score.simulation`) ->
fastMRI mask (:func:`operators.make_mask`) -> one :class:`~mri_score.calibration.Calibration`
per undersampled slice, shared by every method -> baselines
(:mod:`mri_score.baselines`) or :func:`mri_score.pipeline.reconstruct_volume`
(the same call the ``reconstruct`` command line makes) -> the output convention
(:func:`mri_score.posterior.output_magnitude`).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_score import baselines
from mri_score.calibration import Calibration, calibrate
from mri_score.data.realset import load_real_volume
from mri_score.errors import InputError
from mri_score.pipeline import reconstruct_volume
from mri_score.posterior import output_magnitude
from mri_score.request import ReconRequest
from mri_score.samplers import DEFAULT_STEPS, sampler_config
from mri_score.simulation import corpus_volume
from mri_score.supervised import unet_reconstruct

#: Where the benchmarks write their results.
RESULTS = Path(__file__).resolve().parent / "results"
#: Score-based samplers a benchmark config may list (each with ``nfe`` budgets).
SCORE_METHODS = ("dds", "langevin", "pc", "dps")
#: Baselines swept over ``lams``.
SWEPT_METHODS = ("l1_wavelet", "tv", "bart_pics")
#: Every method a benchmark config may list.
METHODS = ("zero_filled", "cg_sense", "unet", "l1_wavelet", "tv", "bart_pics", *SCORE_METHODS)


def add_check_flags(ap: Any, out: str, synth_size: int) -> Any:
    """Add the flags the small per-volume checks share (``--slices --nfe --synth-size --seed --threads --out``).

    ``ap`` is the script's own parser (argument parsing stays in the command-line module); ``out`` is
    the default results file under ``benchmarks/results``; ``synth_size`` the default synthetic matrix.
    :func:`check_args` validates the parsed values.
    """
    ap.add_argument("--slices", type=int, default=3, help="slices per volume")
    ap.add_argument("--nfe", type=int, default=DEFAULT_STEPS["dds"], help="DDS budget (default: the sampler's)")
    ap.add_argument("--synth-size", type=int, default=synth_size)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(RESULTS / out))
    return ap


def check_args(args: Any, min_nfe: int = 1) -> None:
    """Refuse bad shared flags of :func:`add_check_flags` (one line naming the flag) and apply ``--threads``.

    Bounds: :mod:`mri_score.limits` (``--nfe`` at most ``MAX_STEPS``, seeds, threads); ``--out`` must be
    writable and not a directory, checked before any work.
    """
    from mri_score import limits
    from mri_score.atomic import check_output, check_writable

    limits.check_int(args.slices, "--slices", 1, 1000)
    limits.check_int(args.nfe, "--nfe", min_nfe, limits.MAX_STEPS)
    limits.check_int(args.synth_size, "--synth-size", 32, 1024)
    limits.check_seed(args.seed)
    limits.check_threads(args.threads)
    check_output(args.out)
    check_writable(Path(args.out).parent)
    if args.threads:
        torch.set_num_threads(args.threads)


def write_report(out: str | os.PathLike[str], lines: list[str]) -> Path:
    """Write a markdown report (``lines`` joined) atomically to ``out``, creating its directory; print and return it."""
    from mri_score.atomic import atomic_output

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print(f"-> {path}")
    return path


def middle_slices(images: np.ndarray, slices: int) -> np.ndarray:
    """The ``slices`` central slices of ``images (S, H, W)`` (all of them when there are fewer)."""
    lo = max(0, images.shape[0] // 2 - slices // 2)
    return images[lo : lo + slices]


def build_volumes(cfg: dict) -> list[dict]:
    """The config's test volumes: ``[{name, images (S, H, W) complex64, group}]`` (synthetic, then real)."""
    data = cfg["data"]
    seed = int(cfg.get("seed", 0))
    vols = []
    for i, spec in enumerate(data.get("volumes", [])):
        imgs = corpus_volume("test", int(spec.get("index", i)), int(data["slices"]), tuple(data["size"]),
                             spec["family"], seed)
        group = "held-out contrast (FLAIR)" if spec["family"] == "flair" else "synthetic test split"
        vols.append({"name": f"synth_{spec['family']}_{i:02d}.h5", "images": imgs, "group": group})
    for name in data.get("real", []):
        vols.append({"name": f"{name}.h5", "images": middle_slices(load_real_volume(name).images, int(data["slices"])),
                     "group": "real MR (unseen)"})
    return vols


class PeakMemory:
    """Peak resident memory of this process above its level at entry, in GB (sampled every 5 ms from /proc)."""

    def __enter__(self) -> PeakMemory:
        self._base = self._rss()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # no /proc (macOS): fall back to the process peak, a coarse upper bound
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        self.gb = (self._peak - self._base) / 2**30


def score_budgets(spec: dict, first_volume: bool = True) -> list[int]:
    """NFE budgets of a score method's config entry: ``nfe`` (one or a list), plus ``nfe_first_volume`` on volume 0."""
    budgets = spec["nfe"] if isinstance(spec["nfe"], list) else [spec["nfe"]]
    budgets = budgets + (list(spec.get("nfe_first_volume", [])) if first_volume else [])
    return [int(n) for n in budgets]


def check_score_method(name: str, spec: dict, where: str) -> None:
    """Refuse a score method entry whose budgets or options its sampler would refuse, before anything runs.

    The :class:`InputError` is one line starting with ``where`` (the config file and the key).
    """
    spec = spec or {}
    if "nfe" not in spec:
        raise InputError(f"{where}: missing key 'nfe' (the budget of network evaluations)")
    try:
        config = sampler_config(name, spec.get("options"))
        for nfe in score_budgets(spec):
            config.nfe_used(nfe)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: nfe must be an integer or a list of them ({err})") from None


def calibrate_volume(under: np.ndarray, mask: np.ndarray) -> tuple[list[Calibration], list[float]]:
    """One :class:`Calibration` per undersampled slice of ``under (S, coils, H, W)`` and the seconds each took."""
    cals, seconds = [], []
    m = torch.from_numpy(mask)
    for s in range(under.shape[0]):
        t0 = time.perf_counter()
        cals.append(calibrate(torch.from_numpy(under[s]), m))
        seconds.append(time.perf_counter() - t0)
    return cals, seconds


def run_method(name: str, spec: dict, under: np.ndarray, mask: np.ndarray, cals: list[Calibration], magnitude: str,
               models: dict, seed: int, first_volume: bool) -> list[dict]:
    """One method (all its swept λ or NFE budgets) on every slice of one volume.

    Parameters
    ----------
    name, spec : str, dict
        The method and its config entry (``lam``/``lams``, ``iters``, ``nfe``, ``samples``, ``options``).
    under : np.ndarray
        Undersampled k-space, complex64 ``(S, coils, H, W)``.
    mask : np.ndarray
        float32 ``(W,)`` or ``(H, W)``.
    cals : list of Calibration
        One per slice, shared by every method (maps, scale, σ_y).
    magnitude : str
        Output convention of every SENSE-type method (:func:`mri_score.posterior.output_magnitude`).
    models : dict
        ``prior`` (score network) and, for ``unet``, the U-Net.
    seed : int
        Sampler seed of slice 0 (slice ``i`` uses ``seed + i``).
    first_volume : bool
        Whether ``nfe_first_volume`` budgets apply.

    Returns
    -------
    list of dict
        One row per parameter: ``method``, ``param``, ``images`` ``(S, H, W)``, ``stds`` (or None),
        ``seconds`` (per slice) and ``nfe``.
    """

    def per_slice(fn) -> tuple[np.ndarray, list[float]]:
        images, seconds = [], []
        for s in range(under.shape[0]):
            t0 = time.perf_counter()
            images.append(fn(under[s], cals[s]))
            seconds.append(time.perf_counter() - t0)
        return np.stack(images), seconds

    def to_magnitude(img: np.ndarray, cal: Calibration) -> np.ndarray:
        return output_magnitude(torch.from_numpy(np.asarray(img, dtype=np.complex64)), cal.maps, cal.sigma_y,
                                magnitude).numpy()

    def row(param: str, images: np.ndarray, seconds: list[float], nfe: int = 0, stds: np.ndarray | None = None) -> dict:
        return {"method": name, "param": param, "images": images, "stds": stds, "seconds": seconds, "nfe": nfe}

    if name == "zero_filled":
        return [row("", *per_slice(lambda ks, cal: baselines.zero_filled_rss(ks, mask)))]
    if name == "cg_sense":
        lam, iters = spec.get("lam", 1e-3), spec.get("iters", 30)
        return [row(f"lam={lam}", *per_slice(lambda ks, cal: to_magnitude(baselines.cg_sense(ks, mask, cal, lam, iters), cal)))]
    if name == "unet":
        return [row("", *per_slice(lambda ks, cal: unet_reconstruct(
            models["unet"], torch.from_numpy(ks), torch.from_numpy(mask), cal).numpy()))]
    if name in SWEPT_METHODS:
        iters = spec.get("iters", 100)
        solve = {"l1_wavelet": lambda ks, cal, lam: baselines.l1_wavelet(ks, mask, cal, lam, iters),
                 "tv": lambda ks, cal, lam: baselines.total_variation(ks, mask, cal, lam, iters),
                 "bart_pics": lambda ks, cal, lam: baselines.bart_pics(ks, mask, cal, lam, iters)}[name]
        return [row(f"lam={lam}", *per_slice(lambda ks, cal, lam=lam: to_magnitude(solve(ks, cal, lam), cal)))
                for lam in spec["lams"]]
    if name in SCORE_METHODS:
        out = []
        for nfe in score_budgets(spec, first_volume):
            settings = ReconRequest(sampler=name, steps=int(nfe), samples=int(spec.get("samples", 2)), seed=seed,
                                       magnitude=magnitude, options=dict(spec.get("options", {})))
            res = reconstruct_volume(under, mask, models["prior"], settings, calibrations=cals)
            out.append(row(f"NFE={res.nfe[0]}", res.image, res.seconds, res.nfe[0], res.std))
        return out
    raise InputError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def coverage(target: np.ndarray, recon: np.ndarray, std: np.ndarray) -> dict:
    """Over object pixels (target > 5 % of max): fraction with |error| ≤ k·std (k = 1, 2, 3) and corr(|error|, std)."""
    sel = target > 0.05 * target.max()
    err = np.abs(target - recon)[sel]
    s = std[sel]
    out = {f"within_{k}std": float(np.mean(err <= k * s)) for k in (1, 2, 3)}
    out["corr_err_std"] = float(np.corrcoef(err, s)[0, 1]) if s.std() > 0 else float("nan")
    return out
