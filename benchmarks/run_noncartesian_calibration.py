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
from pathlib import Path

import numpy as np

from benchmarks.harness import check_args, write_report
from benchmarks.protocol import spec_pixel_range
from benchmarks.provenance import provenance
from benchmarks.tuning_split import TuningSplit, add_trajectory_flags, checked_settings, setting_label
from mri_score import uncertainty
from mri_score.atomic import check_writable
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.noncartesian import calibration_key, reconstruct_noncartesian_volume, superseded_calibration_key
from mri_score.prior import DEFAULT_PRIOR, ComplexPrior, default_prior_path, load_prior
from mri_score.request import ReconRequest

#: Nominal coverage the factor is fitted for.
LEVEL = 0.9


def build_parser() -> argparse.ArgumentParser:
    """The script's flags (the shared ones of :func:`benchmarks.tuning_split.add_trajectory_flags` included)."""
    ap = one_line_usage_errors(add_trajectory_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                                                    "noncartesian_calibration.md"))
    ap.add_argument("--samples", type=int, default=2, help="posterior samples K per slice (at least 2: the std)")
    ap.add_argument("--subjects", type=int, nargs="+", default=None,
                    help="tuning subjects (None: the config's data.tuning.subjects); its test subjects are refused")
    ap.add_argument("--store", action="store_true", help="write each factor into the prior's calibration sidecar")
    return ap


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
    return {"setting": setting_label(kind, count), "key": key,
            "slices": slices, "pixels": int(pooled.size), "grid": grid,
            "raw": uncertainty.coverage(pooled, 1.0, LEVEL), "factor": uncertainty.conformal_factor(pooled, LEVEL)}


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Fit (and with ``--store`` store) one std factor per trajectory setting; write the report."""
    args = build_parser().parse_args(argv)
    check_args(args)
    settings = checked_settings(args, min_samples=2)
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
            prior_path, r["key"], r["factor"], LEVEL, superseded=superseded_calibration_key,
            rule="split-conformal factor of the pooled tuning pixels",
            fitted_on=f"{split.name} tuning subjects {', '.join(map(str, split.subjects))} "
                      f"({args.slices} slice(s) each), {r['setting']}", pixels=r["pixels"])
        stored.append(f"- std calibration stored: {side.name} [{r['key']}] = {r['factor']:.4f}")
    command = " ".join(["python benchmarks/run_noncartesian_calibration.py", *(argv if argv is not None else sys.argv[1:])])
    write_report(args.out, report(args, command, split, rows, stored))
    return 0


def report(args: argparse.Namespace, command: str, split: TuningSplit, rows: list[dict], stored: list[str]) -> list[str]:
    """The markdown report: provenance of ``command``, what was fitted on, one table row per trajectory setting."""
    z, spec = uncertainty.gaussian_z(LEVEL), split.spec
    pixels = spec_pixel_range(spec, args.synth_size)  # what split.volumes drew
    lines = ["# Std calibration for non-Cartesian trajectories (issue #32, item 5)", "",
             provenance(command)
             + f"- prior: {args.prior or f'shipped default (`mri_score/weights/{DEFAULT_PRIOR}`)'}; DDS with the "
             f"`reconstruct` defaults at {args.nfe} NFE, K = {args.samples}, sampler seed {args.seed} (+ slice index), "
             "grid auto (the factor the pixel size and the trajectory coverage resolved to: column *grid*)\n"
             f"- data: `{args.config}` tuning subjects {', '.join(map(str, split.subjects))} (held-out split, from "
             f"corpus slice {spec['first']}, pixels {pixels[0]:g}–{pixels[1]:g} mm), {args.slices} "
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
