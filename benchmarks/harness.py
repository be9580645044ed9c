"""What every benchmark script shares: the acquisition sequence, per-slice calibration, flags and reports.

The data path is the package's own: images -> multi-coil k-space (:func:`mri_score.simulation.simulate_volume`)
-> :func:`undersample` (fastMRI mask of the file name, :func:`operators.make_mask`; one
:class:`~mri_score.calibration.Calibration` per undersampled slice, shared by every method) -> the method table
(:func:`benchmarks.protocol.solve`: baselines of :mod:`mri_score.baselines`, or
:func:`mri_score.pipeline.reconstruct_volume`, the ``reconstruct`` command's path).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_score.calibration import Calibration, calibrate
from mri_score.errors import InputError
from mri_score.samplers import DEFAULT_STEPS, sampler_config
from operators import make_mask

#: A child process that runs the ``reconstruct`` command line and reports its own high-water mark (VmHWM, Linux
#: /proc) on exit: a parent-side ru_maxrss of children would include the parent's pages copied by fork() before exec.
CHILD_RECONSTRUCT = (
    "import sys\n"
    "from mri_score.reconstruct import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]\n"
    "print('VmHWM_kB', hwm, flush=True)\n"
    "sys.exit(rc)\n"
)
#: Where the benchmarks write their results.
RESULTS = Path(__file__).resolve().parent / "results"


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


def check_score_method(name: str, spec: dict, where: str) -> None:
    """Refuse a score method entry whose budgets or options its sampler would refuse, before anything runs.

    The :class:`InputError` is one line starting with ``where`` (the config file and the key).
    """
    spec = spec or {}
    if "nfe" not in spec:
        raise InputError(f"{where}: missing key 'nfe' (the budget of network evaluations)")
    try:
        config = sampler_config(name, spec.get("options"))
        for nfe in spec["nfe"] if isinstance(spec["nfe"], list) else [spec["nfe"]]:
            config.nfe_used(int(nfe))
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


def undersample(kspace: np.ndarray, mask_type: str, accel: float, center_fraction: float, name: str) -> dict:
    """The acquisition step every benchmark shares: fastMRI mask, undersampled k-space, one calibration per slice.

    Parameters
    ----------
    kspace : np.ndarray
        Fully sampled complex64 ``(slices, coils, H, W)``.
    mask_type, accel, center_fraction : str, float, float
        fastMRI's mask function (:func:`operators.make_mask`), seeded by ``name`` (the file name, as fastMRI does).
    name : str
        The volume's file name.

    Returns
    -------
    dict
        ``under`` complex64 ``(slices, coils, H, W)``, ``mask`` float32 ``(W,)`` or ``(H, W)``, ``cals`` (one
        :class:`~mri_score.calibration.Calibration` per slice) and ``calibration_seconds`` per slice.

    Raises
    ------
    operators.errors.OperatorInputError
        When the mask is not realisable on this matrix (e.g. its calibration region does not fit).
    """
    mask, _ = make_mask(mask_type, float(accel), float(center_fraction), kspace.shape[-2:], name)
    mask = np.asarray(mask, dtype=np.float32)
    under = (kspace * mask).astype(np.complex64)
    cals, seconds = calibrate_volume(under, mask)
    return {"under": under, "mask": mask, "cals": cals, "calibration_seconds": seconds}
