"""``python benchmarks/run_noncartesian_grid.py``: DDS on a 2x finer sampling grid on radial and spiral data.

Run: ``python benchmarks/run_noncartesian_grid.py --threads 2`` → ``benchmarks/results/noncartesian_grid.md``.

On Cartesian data ``--grid auto`` samples on a 2x finer grid at low acceleration on matrices up to 128²
(:func:`mri_score.resolution.acquisition_grid_factor`: +1.69 dB on the real development volumes at 4x, none at 8x,
where the prior limits); on a trajectory ``auto`` had only the pixel rule, so the sampler stayed on the native grid.
On a finer grid the same coordinates address the finer image (:func:`mri_score.noncartesian.
reconstruct_noncartesian_volume`): the network sees 4x the pixels and every Toeplitz Gram is an FFT of 4x the size.
This script reconstructs the synthetic **tuning** subjects of the development protocol
(:class:`benchmarks.tuning_split.TuningSplit`: ``--config``'s ``data.tuning`` subjects, never its test subjects,
never real images) per trajectory setting with the ``reconstruct`` command's DDS request (``--nfe`` NFE,
K = ``--samples``, virtual coils and CG steps auto) on the native grid and on the 2x grid (``--grid 2``), and
reports PSNR and seconds per slice of each, and Cartesian DDS's seconds per slice on the same images on the same
two grids (fastMRI equispaced 4x, centre fraction 0.08: the time target's reference).

Decision rule, fixed before this script's first run: the 2x grid becomes ``auto``'s on trajectories whose grid
coverage (:func:`operators.trajectories.grid_coverage`) is at least ``c*``, on matrices up to
:data:`mri_score.resolution.LOW_ACCEL_MAX_PIXELS` (the Cartesian rule's bound; tuned at 128² only), where ``c*`` is
the smallest tuned coverage such that every tuned setting of at least that coverage, of either kind, gains at least
:data:`MIN_GAIN_DB` in mean PSNR (2x − native, mean over the tuning subjects); no rule when the densest setting
does not. The report states ``c*`` for :data:`mri_score.resolution.TRAJECTORY_GRID_MIN_COVERAGE`. The choice is then
checked, not chosen, on the benchmark's held-out data (``run_noncartesian.py``).

The first run tuned radial 16-96 spokes (coverage 0.161 up) and put the threshold at the sparsest, so sparser
trajectories stayed native unmeasured; the default settings now add 8 and 12 spokes (coverage 0.08 and 0.12), and the
rule, unchanged, is applied to all of them.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import functools
import math
import sys
from collections.abc import Mapping

import numpy as np

from benchmarks.cartesian_reference import bracketed, cartesian_reference, cartesian_seconds
from benchmarks.harness import check_args, write_report
from benchmarks.provenance import provenance
from benchmarks.tuning_split import TuningSplit, add_trajectory_flags, setting_label, tuning_inputs
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.metrics import volume_metrics
from mri_score.noncartesian import reconstruct_noncartesian_volume
from mri_score.prior import DEFAULT_PRIOR
from mri_score.request import ReconRequest
from mri_score.resolution import LOW_ACCEL_FACTOR
from operators.trajectories import grid_coverage

#: Rule: the least mean PSNR gain (dB) of the 2x grid over the native one at every setting it is chosen for.
MIN_GAIN_DB = 0.2
#: The grids compared: native and the Cartesian rule's factor.
GRIDS = ("native", LOW_ACCEL_FACTOR)


def build_parser() -> argparse.ArgumentParser:
    """The script's flags (the shared ones of :func:`benchmarks.tuning_split.add_trajectory_flags` included)."""
    ap = one_line_usage_errors(add_trajectory_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                                                    "noncartesian_grid.md"))
    ap.set_defaults(spokes=[8, 12, 16, 24, 32, 48, 64, 96], interleaves=[4, 8, 16])
    ap.add_argument("--samples", type=int, default=2, help="posterior samples K per slice")
    return ap


def choose(gains: Mapping[str, float], coverage: Mapping[str, float]) -> float | None:
    """Apply the rule to ``{setting: mean PSNR gain of 2x over native}`` and ``{setting: grid coverage}``: ``c*``.

    The smallest coverage from which on every setting (in decreasing coverage) gains at least :data:`MIN_GAIN_DB`,
    rounded down to 3 decimals (so the setting it comes from is itself refined); None when the densest setting
    does not.
    """
    chosen = None
    for tag in sorted(coverage, key=lambda t: -coverage[t]):
        if not gains[tag] >= MIN_GAIN_DB:  # a NaN gain stops the run too
            break
        chosen = math.floor(coverage[tag] * 1000) / 1000  # 3 decimals, never above the setting's own coverage
    return chosen


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Reconstruct the tuning slices on both grids per setting, time the Cartesian reference; write the report."""
    args = build_parser().parse_args(argv)
    check_args(args)
    settings, split, prior, vols = tuning_inputs(args)
    requests = {g: ReconRequest(sampler="dds", steps=args.nfe, samples=args.samples, seed=args.seed, grid=g)
                for g in GRIDS}
    references = {v["name"]: cartesian_reference(v, split.spec["seed"], split.spec["coils"], split.spec["snr"])
                  for v in vols}
    rows: list[dict] = []
    coverage: dict[str, float] = {}
    for kind, count in settings:
        tag = setting_label(kind, count)
        for v in vols:
            acq = split.acquire(v, kind, count)
            coverage[tag] = grid_coverage(acq.coords, acq.matrix)
            truth = np.abs(acq.target)
            for g, request in requests.items():
                run = functools.partial(reconstruct_noncartesian_volume, acq, prior, request)
                res, seconds, ref = bracketed(
                    run, functools.partial(cartesian_seconds, references[v["name"]], prior, request), 2)
                psnr = volume_metrics(truth, res.image)["PSNR"]
                rows.append({"setting": tag, "volume": v["name"], "grid": str(g), "psnr": psnr,
                             "seconds": seconds / acq.slices, "cartesian": ref})
                print(f"{tag} | {v['name']} | grid {g}: {psnr:.2f} dB, {seconds / acq.slices:.2f} s/slice, "
                      f"Cartesian {ref:.2f}", flush=True)
    command = " ".join(["python benchmarks/run_noncartesian_grid.py", *(argv if argv is not None else sys.argv[1:])])
    write_report(args.out, report(args, command, split, rows, coverage))
    return 0


def report(args: argparse.Namespace, command: str, split: TuningSplit, rows: list[dict],
           coverage: dict[str, float]) -> list[str]:
    """The markdown report: provenance, PSNR and time per setting and grid, the rule's coverage."""
    tags = list(dict.fromkeys(r["setting"] for r in rows))
    grids = [str(g) for g in GRIDS]

    def stat(key: str, g: str, t: str, fn=np.mean) -> float:
        return float(fn([r[key] for r in rows if r["grid"] == g and r["setting"] == t]))

    gains = {t: stat("psnr", grids[1], t) - stat("psnr", grids[0], t) for t in tags}
    chosen = choose(gains, coverage)
    spec = split.spec
    lines = ["# A 2x finer sampling grid on non-Cartesian data (issue #32)", "",
             provenance(command)
             + f"- prior: {args.prior or f'shipped default (`mri_score/weights/{DEFAULT_PRIOR}`)'}; DDS with the "
             f"`reconstruct` defaults at {args.nfe} NFE, K = {args.samples}, sampler seed {args.seed} (+ slice index), "
             "virtual coils and CG steps auto; only the grid varies\n"
             f"- data: `{args.config}` tuning subjects {', '.join(map(str, split.subjects))} (held-out split, from "
             f"corpus slice {spec['first']}), {args.slices} slice(s) each at {args.synth_size}², {spec['coils']} birdcage "
             f"coils, SNR {spec['snr']:g}; never test subjects or real images; n = "
             f"{len(rows) // max(1, len(grids) * len(tags))} volumes per setting\n"
             "- PSNR: fastMRI's per-volume PSNR of |x| against the noise-free magnitude, mean over volumes; time: median "
             "seconds per slice over the setting's volumes (calibration included); Cartesian: DDS with the same request "
             "on the same images, fastMRI equispaced 4x, centre fraction 0.08, all coils, on the same grid, timed once "
             "before and once after each run\n"
             f"- rule (fixed before the run): 2x on trajectories of coverage at least c*, the smallest tuned coverage "
             f"from which on every setting gains at least {MIN_GAIN_DB:g} dB; none when the densest does not", "",
             "| setting | coverage | PSNR native | PSNR 2x | Δ | s/slice native (× Cartesian native) "
             "| s/slice 2x (× Cartesian 2x) |",
             "|---|---|---|---|---|---|---|"]
    for t in sorted(tags, key=lambda t: coverage[t]):
        cells = []
        for g in grids:
            sec, cart = stat("seconds", g, t, np.median), stat("cartesian", g, t, np.median)
            cells.append(f"{sec:.2f} ({sec / cart:.2f})")
        lines.append(f"| {t} | {coverage[t]:.3f} | {stat('psnr', grids[0], t):.2f} | {stat('psnr', grids[1], t):.2f} "
                     f"| {gains[t]:+.2f} | " + " | ".join(cells) + " |")
    verdict = (f"the 2x grid from coverage **{chosen:.3f}** on" if chosen is not None
               else "**no rule**: the densest setting gains less than the threshold")
    lines += ["", f"**Choice by the rule:** {verdict} (`TRAJECTORY_GRID_MIN_COVERAGE`).", ""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
