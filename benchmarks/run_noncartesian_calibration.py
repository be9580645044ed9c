"""``python benchmarks/run_noncartesian_calibration.py``: fit the posterior-std factor of radial and spiral trajectories.

Run: ``python benchmarks/run_noncartesian_calibration.py --threads 2 --store`` →
``benchmarks/results/noncartesian_calibration.md`` and, with ``--store``, one factor per trajectory setting in
the prior's sidecar ``<prior>.calibration.json`` (issue #32, item 5).

The split-conformal calibration of the Cartesian path (:mod:`mri_score.uncertainty`) carried over to
trajectories.  Per setting (radial with ``--spokes`` spokes, spiral with ``--interleaves`` interleaves:
the trajectories of :mod:`mri_score.simulate_noncartesian`) the synthetic **tuning** subjects of the
development protocol (``--config``'s ``data.tuning``: subjects 30, 31, 32 of the held-out split from corpus
slice 500, its pixel range, coils, SNR and contrast families; never its test subjects, never real images)
are acquired with white noise of known covariance (as a prewhitened MRD file gives) and reconstructed by
:func:`mri_score.noncartesian.reconstruct_noncartesian_volume` with the ``reconstruct`` command's default DDS
request at ``--nfe`` NFE and K = ``--samples``.  The error ratios ``|error| / std`` of the object pixels
(:func:`mri_score.uncertainty.error_ratios`) of every slice of the setting are pooled and their split-conformal
90 % factor taken (:func:`mri_score.uncertainty.conformal_factor`); ``--store`` writes it under
:func:`mri_score.noncartesian.calibration_key` (the request's settings, the trajectory, its number of spokes
or interleaves and the matrix), the key ``reconstruct`` looks up for a non-Cartesian MRD file.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.harness import add_check_flags, check_args, write_report
from benchmarks.protocol import synthetic_spec, synthetic_subject_volumes, validate_protocol
from benchmarks.provenance import provenance
from mri_score import limits, uncertainty
from mri_score.atomic import check_writable
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.config import load_config
from mri_score.errors import InputError
from mri_score.noncartesian import NonCartesianVolume, calibration_key, reconstruct_noncartesian_volume
from mri_score.prior import DEFAULT_PRIOR, ComplexPrior, default_prior_path, load_prior
from mri_score.request import ReconRequest
from mri_score.simulate_noncartesian import simulate_noncartesian

#: Nominal coverage the factor is fitted for.
LEVEL = 0.9


def build_parser() -> argparse.ArgumentParser:
    """The script's flags (the shared ones of :func:`benchmarks.harness.add_check_flags` included)."""
    ap = one_line_usage_errors(add_check_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                                               "noncartesian_calibration.md", 128))
    ap.set_defaults(slices=2)
    ap.add_argument("--spokes", type=int, nargs="*", default=[16, 32, 64], help="radial settings (spokes)")
    ap.add_argument("--interleaves", type=int, nargs="*", default=[8], help="spiral settings (interleaves)")
    ap.add_argument("--samples", type=int, default=2, help="posterior samples K per slice (at least 2: the std)")
    ap.add_argument("--config", default="configs/bench_dev.yaml",
                    help="the protocol whose data.tuning subjects (and their physics) are simulated")
    ap.add_argument("--subjects", type=int, nargs="+", default=None,
                    help="tuning subjects (None: the config's data.tuning.subjects); its test subjects are refused")
    ap.add_argument("--prior", default=None, help="score prior checkpoint (default: the shipped prior)")
    ap.add_argument("--store", action="store_true", help="write each factor into the prior's calibration sidecar")
    return ap


def settings_of(args: argparse.Namespace) -> list[tuple[str, int]]:
    """``[(kind, count)]`` of ``--spokes`` and ``--interleaves``, validated (one line naming the flag)."""
    for flag, values, top in (("--spokes", args.spokes, 4096), ("--interleaves", args.interleaves, 1024)):
        for v in values:
            limits.check_int(v, flag, 1, top)
    settings = [("radial", n) for n in args.spokes] + [("spiral", n) for n in args.interleaves]
    if not settings:
        raise InputError("no setting: give --spokes and/or --interleaves")
    return settings


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


def fit_setting(split: TuningSplit, vols: list[dict], kind: str, count: int, prior: ComplexPrior,
                request: ReconRequest) -> dict:
    """Reconstruct every tuning volume on one trajectory and fit the factor: a table row (ratios pooled)."""
    ratios, slices, key, grid = [], 0, "", 1.0
    for v in vols:
        acq = split.acquire(v, kind, count)
        res = reconstruct_noncartesian_volume(acq, prior, request)
        assert acq.target is not None and res.std is not None
        ratios.append(uncertainty.error_ratios(acq.target, res.image, res.std))
        slices += acq.slices
        key, grid = calibration_key(request, acq), float(res.grid_factor)
        print(f"{kind} {count} | {v['name']} done", flush=True)
    pooled = np.concatenate(ratios)
    return {"setting": f"{kind} {count} {'spokes' if kind == 'radial' else 'interleaves'}", "key": key,
            "slices": slices, "pixels": int(pooled.size), "grid": grid,
            "raw": uncertainty.coverage(pooled, 1.0, LEVEL), "factor": uncertainty.conformal_factor(pooled, LEVEL)}


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Fit (and with ``--store`` store) one std factor per trajectory setting; write the report."""
    args = build_parser().parse_args(argv)
    check_args(args)
    limits.check_int(args.samples, "--samples", 2, limits.MAX_SAMPLES)
    if args.synth_size % 2:
        raise InputError(f"--synth-size must be even, got {args.synth_size}")
    settings = settings_of(args)
    split = TuningSplit.of_config(args.config, args.subjects)
    prior_path = Path(args.prior) if args.prior else default_prior_path()
    if args.store:
        check_writable(uncertainty.sidecar_path(prior_path).parent)
    prior = ComplexPrior(load_prior(args.prior))
    request = ReconRequest(sampler="dds", steps=args.nfe, samples=args.samples, seed=args.seed)
    vols = split.volumes(args.slices, args.synth_size)
    rows = [fit_setting(split, vols, kind, count, prior, request) for kind, count in settings]
    stored = []
    for r in rows if args.store else []:
        side = uncertainty.store_factor(
            prior_path, r["key"], r["factor"], LEVEL, rule="split-conformal factor of the pooled tuning pixels",
            fitted_on=f"{split.name} tuning subjects {', '.join(map(str, split.subjects))} "
                      f"({args.slices} slice(s) each), {r['setting']}", pixels=r["pixels"])
        stored.append(f"- std calibration stored: {side.name} [{r['key']}] = {r['factor']:.4f}")
    command = " ".join(["python benchmarks/run_noncartesian_calibration.py", *(argv if argv is not None else sys.argv[1:])])
    write_report(args.out, report(args, command, split, rows, stored))
    return 0


def report(args: argparse.Namespace, command: str, split: TuningSplit, rows: list[dict], stored: list[str]) -> list[str]:
    """The markdown report: provenance of ``command``, what was fitted on, one table row per trajectory setting."""
    z, spec = uncertainty.gaussian_z(LEVEL), split.spec
    lines = ["# Std calibration for non-Cartesian trajectories (issue #32, item 5)", "",
             provenance(command)
             + f"- prior: {args.prior or f'shipped default (`mri_score/weights/{DEFAULT_PRIOR}`)'}; DDS with the "
             f"`reconstruct` defaults at {args.nfe} NFE, K = {args.samples}, sampler seed {args.seed} (+ slice index), "
             "grid auto (the factor the pixel size resolved to: column *grid*)\n"
             f"- data: `{args.config}` tuning subjects {', '.join(map(str, split.subjects))} (held-out split, from "
             f"corpus slice {spec['first']}, pixels {spec['pixel_mm'][0]:g}–{spec['pixel_mm'][1]:g} mm), {args.slices} "
             f"slice(s) each at {args.synth_size}², {spec['coils']} birdcage coils, SNR {spec['snr']:g}, noise covariance "
             "known (as a prewhitened MRD file); never test subjects or real images\n"
             f"- factor c: split-conformal {100 * LEVEL:g} % quantile of |error| / std over the object pixels (truth > "
             f"{100 * uncertainty.OBJECT_FRACTION:g} % of the slice's max) of every slice of the setting, over z = "
             f"{z:.3f}; raw coverage: fraction of those pixels with |error| ≤ z · std",
             *stored, "",
             "| trajectory | slices | pixels | grid | raw coverage at 90 % | factor c | key |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['slices']} | {r['pixels']} | {r['grid']:g} | {100 * r['raw']:.1f} % | "
                     f"{r['factor']:.3f} | `{r['key']}` |")
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())
