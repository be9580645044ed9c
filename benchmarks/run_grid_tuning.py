"""``python benchmarks/run_grid_tuning.py``: ``--grid auto`` against the native grid on coarse-pixel synthetic slices.

The check behind making ``--grid auto`` the default (issue #14, item 4), on data the frozen protocol never
reports: the protocol's synthetic *tuning* subjects (30–32, slice positions from corpus index 500) simulated at a
pixel size coarser than the default prior's trained range, 8 birdcage coils, SNR 100, fastMRI masks (4x
equispaced, 8x random, centre fraction 0.08), ACS maps, DDS with its default schedule and K = 1; PSNR of ``|x|``
against the noise-free image, mean over the slices of each subject.  Writes a markdown table (``--out``).
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import RESULTS, undersample, write_report
from benchmarks.provenance import provenance
from mri_score import limits
from mri_score.atomic import check_output, check_writable
from mri_score.cli import exit_on_input_error
from mri_score.errors import InputError
from mri_score.metrics import psnr
from mri_score.pipeline import reconstruct_volume
from mri_score.prior import DEFAULT_PRIOR, ComplexPrior, load_prior
from mri_score.request import ReconRequest
from mri_score.resolution import prior_pixel_range
from mri_score.samplers import DEFAULT_STEPS
from mri_score.simulation import noise_free_target, simulate_volume, subject_volume

SUBJECTS = ((30, "pd"), (31, "flair"), (32, "t1"))
SETTINGS = ((4.0, "equispaced"), (8.0, "random"))


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", action="append", default=None, metavar="MM:N", help="pixel size (mm) and matrix")
    ap.add_argument("--slices", type=int, default=2, help="slices per subject")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "grid_tuning.md"))
    args = ap.parse_args(argv)
    limits.check_int(args.slices, "--slices", 1, 1000)
    limits.check_threads(args.threads)
    check_output(args.out)
    check_writable(Path(args.out).parent)
    torch.set_num_threads(args.threads)
    cases = [parse_case(c) for c in (args.case or ["3.75:64", "3.5:96"])]
    model = load_prior()
    prior = ComplexPrior(model)
    lines = ["| pixels / matrix | setting | subject | auto factor | PSNR native | PSNR auto | Δ |",
             "|---|---|---|---|---|---|---|"]
    for pix, size in cases:
        factor = ReconRequest(grid="auto").for_pixels((pix, pix), model.meta).grid_factor
        for accel, kind in SETTINGS:
            deltas = []
            for subj, fam in SUBJECTS:
                imgs = subject_volume("test", subj, args.slices, (size, size), fam, 0, first=500, pixel_mm=(pix, pix))
                ksp, _, _ = simulate_volume(imgs, 8, 100.0, seed=subj)
                truth = noise_free_target(imgs, 8)
                acq = undersample(ksp, kind, accel, 0.08, f"s{subj}")
                under, mask, cals = acq["under"], acq["mask"], acq["cals"]
                score = {}
                for g in (1.0, factor):
                    vals = []
                    for s in range(args.slices):
                        st = ReconRequest(samples=1, seed=s, grid=g)  # the default DDS schedule
                        r = reconstruct_volume(under[s : s + 1], mask, prior, st, calibrations=[cals[s]])
                        vals.append(psnr(truth[s : s + 1], r.image))  # data range: the slice's max
                    score[g] = float(np.mean(vals))
                deltas.append(score[factor] - score[1.0])
                lines.append(f"| {pix:g} mm / {size}² | {accel:g}x {kind} | {subj} ({fam}) | ×{factor:g} | "
                             f"{score[1.0]:.2f} | {score[factor]:.2f} | {deltas[-1]:+.2f} |")
                print(lines[-1], flush=True)
            lines.append(f"| {pix:g} mm / {size}² | {accel:g}x {kind} | mean | ×{factor:g} | | | {np.mean(deltas):+.2f} |")
    command = " ".join(["python benchmarks/run_grid_tuning.py", *(sys.argv[1:] if argv is None else argv)])
    trained = prior_pixel_range(model.meta)  # reported in the header
    header = (f"# `--grid auto` vs native on coarse-pixel synthetic tuning subjects (issue #14, item 4)\n\n"
              f"{provenance(command)}- prior: `mri_score/weights/{DEFAULT_PRIOR}`, trained pixels "
              f"{trained[0]:g}–{trained[1]:g} mm; DDS-{DEFAULT_STEPS['dds']} (the default schedule), K = 1, "
              "sampler seed = slice index; 8 coils, SNR 100; "
              f"n = {args.slices} slices per subject, subjects {', '.join(str(s) for s, _ in SUBJECTS)} (the "
              "protocol's tuning subjects, never reported)\n")
    write_report(args.out, [header, *lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())
