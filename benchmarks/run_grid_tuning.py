"""``python benchmarks/run_grid_tuning.py``: ``--grid auto`` against the native grid on coarse-pixel synthetic slices.

The check behind making ``--grid auto`` the default (issue #14, item 4), on data the frozen protocol never
reports: the protocol's synthetic *tuning* subjects (30–32, slice positions from corpus index 500) simulated at a
pixel size coarser than the default prior's trained range, 8 birdcage coils, SNR 100, fastMRI masks (4x
equispaced, 8x random, centre fraction 0.08), ACS maps, DDS with its default schedule and K = 1; PSNR of ``|x|``
against the noise-free image, mean over the slices of each subject.  Writes a markdown table (``--out``).

``--factor F`` compares a fixed refinement ``F`` instead of what ``auto``'s pixel rule gives (the check of the
2x grid on larger matrices with fine pixels, issue #29, item 3), and ``--source domain_random`` replaces the
corpus subjects by three volumes of the domain-randomised generator's test stream (brain and body families, the
case's pixel size; :class:`mri_score.data.domain_random.DomainRandomPool`), whose per-pixel detail is finer than
the template's.

Rule of the large-matrix check, fixed before its run (``--factor 2 --case 2.0:128 --case 1.0:192 --case 1.0:256``,
once per source): :data:`mri_score.resolution.LOW_ACCEL_MAX_PIXELS` (128²) is raised to the largest measured matrix
at which the 2x grid gains at least +0.2 dB on average at 4x equispaced on both sources with no volume below
−0.2 dB (every smaller matrix measured meeting it too); otherwise it stays.  Its cost, about the square of the
factor in network time, is reported with it.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import RESULTS, undersample, write_report
from benchmarks.protocol import domain_random_volume
from benchmarks.provenance import provenance
from mri_score import limits
from mri_score.atomic import check_output, check_writable
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.data.domain_random import DomainRandomPool
from mri_score.errors import InputError
from mri_score.metrics import psnr
from mri_score.pipeline import reconstruct_volume
from mri_score.prior import DEFAULT_PRIOR, ComplexPrior, load_prior
from mri_score.request import ReconRequest
from mri_score.resolution import MAX_GRID_FACTOR, check_grid_factor, prior_pixel_range
from mri_score.samplers import DEFAULT_STEPS
from mri_score.simulation import noise_free_target, simulate_volume, subject_volume

SUBJECTS = ((30, "pd"), (31, "flair"), (32, "t1"))
SETTINGS = ((4.0, "equispaced"), (8.0, "random"))
SOURCES = ("corpus", "domain_random")
#: Seed of the domain-randomised test stream (:meth:`DomainRandomPool.generate`); the protocol's joints use 0.
DR_SEED = 5


def case_volumes(source: str, pix: float, size: int, slices: int) -> list[tuple[int, str, np.ndarray]]:
    """``(seed, label, images (slices, size, size) complex64)`` for each volume of ``source`` at ``pix`` mm."""
    if source == "corpus":
        return [(subj, fam, subject_volume("test", subj, slices, (size, size), fam, 0, first=500, pixel_mm=(pix, pix)))
                for subj, fam in SUBJECTS]
    pool = DomainRandomPool(size=size, families=("brain", "body"), seed=DR_SEED, split="test", pixel_mm=(pix, pix))
    out = []
    for v in range(3):
        imgs, drawn = domain_random_volume(pool, v, slices)
        out.append((v, "/".join(dict.fromkeys(d[3] for d in drawn)), imgs))
    return out


def parse_case(text: str) -> tuple[float, int]:
    """``"PIXEL_MM:MATRIX"`` as ``(pixel mm > 0, matrix in [32, 512])``, else a one-line :class:`InputError`."""
    try:
        pix, size = text.split(":")
        case = (float(pix), int(size))
    except ValueError:
        raise InputError(f"--case must be PIXEL_MM:MATRIX (e.g. 3.75:64), got {text!r}") from None
    if not (0 < case[0] < 100 and 32 <= case[1] <= 512):
        raise InputError(f"--case needs 0 < PIXEL_MM < 100 and MATRIX in [32, 512], got {text!r}")
    return case


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run the check for each ``--case PIXEL_MM:MATRIX`` and write the table."""
    ap = one_line_usage_errors(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    ap.add_argument("--case", action="append", default=None, metavar="MM:N", help="pixel size (mm) and matrix")
    ap.add_argument("--slices", type=int, default=2, help="slices per subject")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--factor", default="auto",
                    help="the refinement compared with native: auto (the pixel rule's) or a number in [1, 4]")
    ap.add_argument("--source", default="corpus", choices=SOURCES,
                    help="corpus tuning subjects, or volumes of the domain-randomised generator")
    ap.add_argument("--out", default=str(RESULTS / "grid_tuning.md"))
    args = ap.parse_args(argv)
    try:
        forced = None if args.factor == "auto" else check_grid_factor(args.factor)
    except InputError:
        raise InputError(f"--factor must be auto or a number in [1, {MAX_GRID_FACTOR:g}], got {args.factor!r}") from None
    limits.check_int(args.slices, "--slices", 1, 1000)
    limits.check_threads(args.threads)
    check_output(args.out)
    check_writable(Path(args.out).parent)
    torch.set_num_threads(args.threads)
    cases = [parse_case(c) for c in (args.case or ["3.75:64", "3.5:96"])]
    model = load_prior()
    prior = ComplexPrior(model)
    lines = ["| pixels / matrix | setting | volume | factor | PSNR native | PSNR refined | Δ | s/slice native | "
             "s/slice refined |", "|---|---|---|---|---|---|---|---|---|"]
    for pix, size in cases:
        factor = forced or ReconRequest(grid="auto").for_pixels((pix, pix), model.meta).grid_factor
        for accel, kind in SETTINGS:
            deltas, ratios = [], []
            for subj, fam, imgs in case_volumes(args.source, pix, size, args.slices):
                ksp, _, _ = simulate_volume(imgs, 8, 100.0, seed=subj)
                truth = noise_free_target(imgs, 8)
                acq = undersample(ksp, kind, accel, 0.08, f"s{subj}")
                under, mask, cals = acq["under"], acq["mask"], acq["cals"]
                score, seconds = {}, {}
                for g in (1.0, factor):
                    vals = []
                    t0 = time.perf_counter()
                    for s in range(args.slices):
                        st = ReconRequest(samples=1, seed=s, grid=g)  # the default DDS schedule
                        r = reconstruct_volume(under[s : s + 1], mask, prior, st, calibrations=[cals[s]])
                        vals.append(psnr(truth[s : s + 1], r.image))  # data range: the slice's max
                    score[g], seconds[g] = float(np.mean(vals)), (time.perf_counter() - t0) / args.slices
                deltas.append(score[factor] - score[1.0])
                ratios.append(seconds[factor] / seconds[1.0])
                lines.append(f"| {pix:g} mm / {size}² | {accel:g}x {kind} | {subj} ({fam}) | ×{factor:g} | "
                             f"{score[1.0]:.2f} | {score[factor]:.2f} | {deltas[-1]:+.2f} | {seconds[1.0]:.1f} | "
                             f"{seconds[factor]:.1f} |")
                print(lines[-1], flush=True)
            lines.append(f"| {pix:g} mm / {size}² | {accel:g}x {kind} | mean | ×{factor:g} | | | {np.mean(deltas):+.2f} | "
                         f"| ×{np.mean(ratios):.1f} |")
    command = " ".join(["python benchmarks/run_grid_tuning.py", *(sys.argv[1:] if argv is None else argv)])
    trained = prior_pixel_range(model.meta)  # reported in the header
    title = ("`--grid auto` vs native on coarse-pixel synthetic tuning subjects (issue #14, item 4)" if forced is None
             else f"A {forced:g}x finer sampling grid vs native on synthetic development slices (issue #29, item 3)")
    data = (f"subjects {', '.join(str(s) for s, _ in SUBJECTS)} (the protocol's tuning subjects, never reported)"
            if args.source == "corpus" else
            f"3 volumes of the domain-randomised generator's test stream (seed {DR_SEED}, brain and body families)")
    header = (f"# {title}\n\n"
              f"{provenance(command)}- prior: `mri_score/weights/{DEFAULT_PRIOR}`, trained pixels "
              f"{trained[0]:g}–{trained[1]:g} mm; DDS-{DEFAULT_STEPS['dds']} (the default schedule), K = 1, "
              "sampler seed = slice index; 8 coils, SNR 100; "
              f"n = {args.slices} slices per volume; {data}\n")
    write_report(args.out, [header, *lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())
