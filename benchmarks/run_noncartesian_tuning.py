"""``python benchmarks/run_noncartesian_tuning.py``: DDS's CG steps per data-consistency step on radial and spiral data.

Run: ``python benchmarks/run_noncartesian_tuning.py --threads 2`` → ``benchmarks/results/noncartesian_tuning.md``.

Each DDS step solves ``(I + γAᴴA) x = x̂₀ + γAᴴy`` only in part, by a number of CG steps from the denoised
estimate (``cg_iters``, 10, tuned on Cartesian data; on radial and spiral data ``cg_iters_noncartesian``, by default
the count :data:`mri_score.noncartesian.NONCARTESIAN_CG_BY_COVERAGE` gives for the trajectory's grid coverage,
:meth:`mri_score.samplers.dds.DDSConfig.cg_steps`). On a non-Cartesian operator every CG step is a Toeplitz Gram, two
FFTs of the ``2H × 2W`` grid per coil, which is most of the sampler's time; and the partial solve is part of the
method (it regularises), so fewer steps are not simply a worse solution. This script measures PSNR and time per slice
for each ``--cg-iters`` value of ``cg_iters_noncartesian`` on the synthetic **tuning** subjects of the development
protocol (:class:`benchmarks.tuning_split.TuningSplit`: ``--config``'s ``data.tuning`` subjects, never its test
subjects, never real images), per trajectory setting, with the ``reconstruct`` command's DDS request otherwise
(``--nfe`` NFE, K = ``--samples``, grid auto) on every coil (``virtual_coils`` all: the table was fitted before
virtual coils existed, and the CG count is a property of the trajectory).

Decision rule (version 2, fixed before its first run; the first run, which chose one count for every trajectory,
found the best count falling with the sampling density): for each setting, the smallest count whose mean PSNR is
at most 0.1 dB below the setting's best count's; the table pairs each setting's grid coverage
(:func:`operators.trajectories.grid_coverage`) with that count, in increasing coverage, made non-increasing by
raising a count to the largest count at any higher coverage; DDS then takes the count of the tuned setting nearest
in coverage (:func:`mri_score.noncartesian.cg_steps_for_coverage`). The report states the table to copy into
:data:`mri_score.noncartesian.NONCARTESIAN_CG_BY_COVERAGE` and compares it with every single count. The choice is
then checked, not chosen, on the benchmark's held-out data (``run_noncartesian.py``: synthetic test subjects and the
real development images).
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys
import time
from collections.abc import Iterable

import numpy as np

from benchmarks.harness import check_args, write_report
from benchmarks.provenance import provenance
from benchmarks.tuning_split import TuningSplit, add_trajectory_flags, checked_settings, setting_label
from mri_score import limits
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.errors import InputError
from mri_score.metrics import volume_metrics
from mri_score.noncartesian import cg_steps_for_coverage, reconstruct_noncartesian_volume
from mri_score.prior import DEFAULT_PRIOR, ComplexPrior, load_prior
from mri_score.request import ReconRequest
from operators.trajectories import grid_coverage

#: The Cartesian default, which the report compares every count with (:class:`mri_score.samplers.dds.DDSConfig`).
REFERENCE = 10
#: Rule: per setting, the smallest count within this many dB of the setting's best.
SETTING_TOLERANCE_DB = 0.1


def build_parser() -> argparse.ArgumentParser:
    """The script's flags (the shared ones of :func:`benchmarks.tuning_split.add_trajectory_flags` included)."""
    ap = one_line_usage_errors(add_trajectory_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                                                    "noncartesian_tuning.md"))
    ap.add_argument("--cg-iters", type=int, nargs="+", default=[3, 4, 6, 8, 10, 14],
                    help="CG steps per DDS step on non-Cartesian data to compare (must include 10, the reference)")
    ap.add_argument("--samples", type=int, default=2, help="posterior samples K per slice")
    return ap


def require_reference(counts: Iterable[int]) -> None:
    """Refuse CG counts without :data:`REFERENCE`, which the rule compares against (one line naming ``--cg-iters``)."""
    if REFERENCE not in counts:
        raise InputError(f"--cg-iters must include {REFERENCE}, the Cartesian count the report compares with")


def choose(means: dict[int, dict[str, float]], coverage: dict[str, float]) -> tuple[tuple[float, int], ...]:
    """Apply the rule to ``{cg_iters: {setting: mean PSNR}}`` and ``{setting: grid coverage}``: the coverage table.

    Returns ``((coverage, steps), ...)`` in increasing coverage, as
    :data:`mri_score.noncartesian.NONCARTESIAN_CG_BY_COVERAGE` takes it; the reference (:data:`REFERENCE`) must be
    among the counts.
    """
    require_reference(means)
    counts = sorted(means)
    rows = []
    for tag, cov in coverage.items():
        best = max(means[n][tag] for n in counts)
        rows.append((cov, next(n for n in counts if means[n][tag] >= best - SETTING_TOLERANCE_DB)))
    rows.sort()
    table = []
    for i, (cov, _) in enumerate(rows):
        table.append((round(cov, 3), max(m for _, m in rows[i:])))
    return tuple(table)


def table_psnr(means: dict[int, dict[str, float]], coverage: dict[str, float],
               table: tuple[tuple[float, int], ...]) -> dict[str, float]:
    """Mean PSNR per setting with the count that ``table`` gives for the setting's coverage."""
    return {tag: means[cg_steps_for_coverage(cov, table)][tag] for tag, cov in coverage.items()}


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Reconstruct the tuning slices with each CG count per setting; write the table and the rule's choice."""
    args = build_parser().parse_args(argv)
    check_args(args)
    for n in args.cg_iters:
        limits.check_int(n, "--cg-iters", 0, 1000)
    require_reference(args.cg_iters)
    settings = checked_settings(args)
    split = TuningSplit.of_config(args.config)
    prior = ComplexPrior(load_prior(args.prior))
    vols = split.volumes(args.slices, args.synth_size)
    rows: list[dict] = []
    coverage: dict[str, float] = {}
    for kind, count in settings:
        tag = setting_label(kind, count)
        for v in vols:
            acq = split.acquire(v, kind, count)
            coverage[tag] = grid_coverage(acq.coords, acq.matrix)
            truth = np.abs(acq.target)
            for n in sorted(set(args.cg_iters)):
                request = ReconRequest(sampler="dds", steps=args.nfe, samples=args.samples, seed=args.seed,
                                       options={"cg_iters_noncartesian": n}, virtual_coils="all")
                t0 = time.perf_counter()
                res = reconstruct_noncartesian_volume(acq, prior, request)
                seconds = (time.perf_counter() - t0) / acq.slices
                psnr = volume_metrics(truth, res.image)["PSNR"]
                rows.append({"setting": tag, "volume": v["name"], "cg": n, "psnr": psnr, "seconds": seconds})
                print(f"{tag} | {v['name']} | cg {n}: {psnr:.2f} dB, {seconds:.2f} s/slice", flush=True)
    command = " ".join(["python benchmarks/run_noncartesian_tuning.py", *(argv if argv is not None else sys.argv[1:])])
    write_report(args.out, report(args, command, split, rows, coverage))
    return 0


def report(args: argparse.Namespace, command: str, split: TuningSplit, rows: list[dict],
           coverage: dict[str, float]) -> list[str]:
    """The markdown report: provenance, mean PSNR and time per setting and CG count, the rule's coverage table."""
    tags = list(dict.fromkeys(r["setting"] for r in rows))
    counts = sorted({r["cg"] for r in rows})
    means = {n: {t: float(np.mean([r["psnr"] for r in rows if r["cg"] == n and r["setting"] == t])) for t in tags}
             for n in counts}
    secs = {n: float(np.median([r["seconds"] for r in rows if r["cg"] == n])) for n in counts}
    table = choose(means, coverage)
    by_table = table_psnr(means, coverage, table)
    spec = split.spec
    lines = ["# CG steps per DDS step on non-Cartesian data (issue #32)", "",
             provenance(command)
             + f"- prior: {args.prior or f'shipped default (`mri_score/weights/{DEFAULT_PRIOR}`)'}; DDS with the "
             f"`reconstruct` defaults at {args.nfe} NFE, K = {args.samples}, sampler seed {args.seed} (+ slice index), "
             "grid auto, on all coils (`virtual_coils` all); only `cg_iters_noncartesian` varies\n"
             f"- data: `{args.config}` tuning subjects {', '.join(map(str, split.subjects))} (held-out split, from "
             f"corpus slice {spec['first']}), {args.slices} slice(s) each at {args.synth_size}², {spec['coils']} birdcage "
             f"coils, SNR {spec['snr']:g}; never test subjects or real images; n = "
             f"{len(rows) // max(1, len(counts) * len(tags))} volumes per setting\n"
             f"- PSNR: fastMRI's per-volume PSNR of |x| against the noise-free magnitude, mean over volumes; time: median "
             "seconds per slice over every volume and setting (calibration included)\n"
             f"- rule (version 2, fixed before the run): per setting the smallest count within {SETTING_TOLERANCE_DB:g} "
             "dB of the setting's best; the table pairs each setting's grid coverage with its count, made "
             "non-increasing in coverage (a count raised to the largest at any higher coverage); DDS takes the count "
             "of the tuned setting nearest in coverage", "",
             "| CG steps | " + " | ".join(f"{t} (coverage {coverage[t]:.3f})" for t in tags)
             + f" | average | Δ vs {REFERENCE} (average) | s/slice |",
             "|---|" + "---|" * (len(tags) + 3)]
    ref = float(np.mean(list(means[REFERENCE].values())))
    for n in counts:
        avg = float(np.mean(list(means[n].values())))
        lines.append(f"| {n} | " + " | ".join(f"{means[n][t]:.2f}" for t in tags)
                     + f" | {avg:.2f} | {avg - ref:+.2f} | {secs[n]:.2f} |")
    avg = float(np.mean(list(by_table.values())))
    lines.append("| by coverage | " + " | ".join(f"{by_table[t]:.2f} ({cg_steps_for_coverage(coverage[t], table)})"
                                                 for t in tags) + f" | {avg:.2f} | {avg - ref:+.2f} | |")
    best_fixed = max(counts, key=lambda n: float(np.mean(list(means[n].values()))))
    fixed_avg = float(np.mean(list(means[best_fixed].values())))
    lines += ["", f"**Table by the rule** (`NONCARTESIAN_CG_BY_COVERAGE`): `{table!r}`: average {avg:.2f} dB against "
              f"{fixed_avg:.2f} dB for the best single count ({best_fixed}).", ""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
