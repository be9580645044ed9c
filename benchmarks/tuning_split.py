"""The synthetic tuning split of a protocol on radial and spiral trajectories, shared by the scripts that fit or tune
on it (``run_noncartesian_calibration.py``: the std factor per trajectory; ``run_noncartesian_tuning.py``: DDS's CG
steps on trajectories; ``run_noncartesian_floor.py``: its data-weight floor; ``run_coil_compression.py``: the virtual
coils).

:func:`add_trajectory_flags` adds the flags they share to a script's own parser (argument parsing stays in the
command-line modules, as :func:`benchmarks.harness.add_check_flags`); :func:`settings_of` reads the trajectory
settings back (:func:`checked_settings` with the tuning scripts' other checks) and :func:`setting_label` names one
(both also used by ``run_noncartesian.py``); :class:`TuningSplit` simulates a protocol config's tuning subjects on a
trajectory; :func:`tuning_inputs` gathers what a tuning script reconstructs and :func:`scored_reconstruction`
reconstructs one acquisition with a request and scores it, as every tuning script does.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.harness import add_check_flags
from benchmarks.protocol import synthetic_spec, synthetic_subject_volumes, validate_protocol
from mri_score import limits
from mri_score.config import load_config
from mri_score.errors import InputError
from mri_score.metrics import volume_metrics
from mri_score.noncartesian import NonCartesianVolume, reconstruct_noncartesian_volume
from mri_score.prior import ComplexPrior, load_prior
from mri_score.request import ReconRequest
from mri_score.simulate_noncartesian import simulate_noncartesian


def add_trajectory_flags(ap: Any, out: str) -> Any:
    """Add the shared flags to ``ap`` (a script's own parser): :func:`benchmarks.harness.add_check_flags` (report
    ``out`` under ``benchmarks/results``, 128² slices, 2 per subject), ``--spokes``, ``--interleaves``, ``--config``
    (the protocol whose tuning subjects are simulated) and ``--prior``."""
    add_check_flags(ap, out, 128)
    ap.set_defaults(slices=2)
    ap.add_argument("--spokes", type=int, nargs="*", default=[16, 32, 64], help="radial settings (spokes)")
    ap.add_argument("--interleaves", type=int, nargs="*", default=[8], help="spiral settings (interleaves)")
    ap.add_argument("--config", default="configs/bench_dev.yaml",
                    help="the protocol whose data.tuning subjects (and their physics) are simulated")
    ap.add_argument("--prior", default=None, help="score prior checkpoint (default: the shipped prior)")
    return ap


def settings_of(args: Any) -> list[tuple[str, int]]:
    """``[(kind, count)]`` of the parsed ``--spokes`` and ``--interleaves``, validated (one line naming the flag)."""
    for flag, values, top in (("--spokes", args.spokes, 4096), ("--interleaves", args.interleaves, 1024)):
        for v in values:
            limits.check_int(v, flag, 1, top)
    settings = [("radial", n) for n in args.spokes] + [("spiral", n) for n in args.interleaves]
    if not settings:
        raise InputError("no setting: give --spokes and/or --interleaves")
    return settings


def checked_settings(args: Any, min_samples: int = 1) -> list[tuple[str, int]]:
    """The tuning scripts' common checks, then :func:`settings_of`: ``--samples`` in ``[min_samples, MAX_SAMPLES]`` and
    an even ``--synth-size`` (one line naming the flag)."""
    limits.check_int(args.samples, "--samples", min_samples, limits.MAX_SAMPLES)
    if args.synth_size % 2:
        raise InputError(f"--synth-size must be even, got {args.synth_size}")
    return settings_of(args)


def setting_label(kind: str, count: int) -> str:
    """A trajectory setting as the reports name it: ``radial 32 spokes``, ``spiral 8 interleaves``."""
    return f"{kind} {count} {'spokes' if kind == 'radial' else 'interleaves'}"


def tuning_inputs(args: Any) -> tuple[list[tuple[str, int]], TuningSplit, ComplexPrior, list[dict]]:
    """A tuning script's inputs from its parsed flags (after its own checks): the :func:`checked_settings`, the
    ``--config``'s :class:`TuningSplit`, the ``--prior`` (the shipped one by default) and the split's simulated
    volumes (``--slices`` each at ``--synth-size``²)."""
    settings = checked_settings(args)
    split = TuningSplit.of_config(args.config)
    prior = ComplexPrior(load_prior(args.prior))
    return settings, split, prior, split.volumes(args.slices, args.synth_size)


def scored_reconstruction(acq: NonCartesianVolume, prior: ComplexPrior, request: ReconRequest) -> tuple[float, float]:
    """Reconstruct the simulated ``acq`` with ``request``: fastMRI's per-volume PSNR (dB) of ``|x|`` against the
    noise-free magnitude and the seconds per slice (calibration included)."""
    t0 = time.perf_counter()
    res = reconstruct_noncartesian_volume(acq, prior, request)
    seconds = (time.perf_counter() - t0) / acq.slices
    return float(volume_metrics(np.abs(acq.target), res.image)["PSNR"]), seconds


@dataclass(frozen=True)
class TuningSplit:
    """The synthetic tuning split of a protocol config (``data.tuning`` and the physics of ``data``) to calibrate on.

    Defaults as :func:`benchmarks.protocol.protocol_volumes` reads them; ``subjects`` never include the
    config's test subjects.
    """

    #: the config's ``name`` (its path when it has none)
    name: str
    subjects: tuple[int, ...]
    #: the config's ``data`` section (the physics and the tuning split's settings)
    data: dict

    @property
    def spec(self) -> dict:
        """The tuning split's settings with the protocol's defaults (:func:`benchmarks.protocol.synthetic_spec`)."""
        return synthetic_spec(self.data, "tuning")

    @classmethod
    def of_config(cls, config: str, subjects: list[int] | None = None) -> TuningSplit:
        """Read and check ``config`` (:func:`benchmarks.protocol.validate_protocol`); ``subjects`` replace its tuning
        subjects (its test subjects are refused, one line naming ``--subjects``)."""
        cfg = load_config(config)
        validate_protocol(cfg, config)
        data = cfg["data"]
        try:
            spec = synthetic_spec(data, "tuning")
            chosen = tuple(int(s) for s in subjects) if subjects is not None else spec["subjects"]
            test = set(synthetic_spec(data, "test")["subjects"])
        except (TypeError, ValueError) as err:
            raise InputError(f"{config}: data: {err}") from None
        for s in chosen:
            limits.check_int(s, "--subjects", 0, 39)
        if set(chosen) & test:
            raise InputError(f"--subjects: {sorted(set(chosen) & test)} are test subjects of {config}; calibrate on "
                             "tuning subjects only")
        outside = sorted(set(chosen) - set(spec["subjects"]))
        if outside:
            raise InputError(f"--subjects: {outside} are not tuning subjects of {config} "
                             f"({', '.join(str(s) for s in spec['subjects'])}); calibrate on tuning subjects only")
        return cls(name=str(cfg.get("name", config)), subjects=chosen, data=data)

    def volumes(self, slices: int, size: int) -> list[dict]:
        """Each subject's slices ``{name, images (slices, size, size) complex64, pixel_mm}``, as the protocol makes them
        (:func:`benchmarks.protocol.synthetic_subject_volumes`; names without the ``.h5``)."""
        vols = synthetic_subject_volumes(self.data, "tuning", self.subjects, slices, (size, size))
        return [{"name": v["name"].removesuffix(".h5"), "images": v["images"], "pixel_mm": v["pixel_mm"]} for v in vols]

    def acquire(self, vol: dict, kind: str, count: int) -> NonCartesianVolume:
        """``vol`` on a trajectory: ``coils`` birdcage coils, SNR ``snr``, the noise covariance kept (known σ_y, as a
        prewhitened MRD file gives); the noise is seeded by the tuning seed, the setting and the volume's name."""
        spec = self.spec
        seed = zlib.crc32(f"{spec['seed']}/{kind}/{count}/{vol['name']}".encode())
        nc = simulate_noncartesian(vol["images"], kind, count, spec["coils"], spec["snr"], seed, pixel_mm=vol["pixel_mm"])
        nc.name = vol["name"]
        return nc
