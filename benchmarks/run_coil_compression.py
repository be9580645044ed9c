"""``python benchmarks/run_coil_compression.py``: how many virtual coils DDS needs on radial and spiral data.

Run: ``python benchmarks/run_coil_compression.py --threads 2`` → ``benchmarks/results/coil_compression.md``.

On a trajectory every CG step of DDS is a Toeplitz Gram, two FFTs of the ``2H × 2W`` grid per coil, most of the
sampler's time; SVD coil compression (:func:`mri_score.noncartesian.coil_compression`, density-weighted, the data
and the maps estimated from all coils compressed alike) cuts that cost in proportion to the coils kept, and loses
what the dropped virtual coils carried. This script reconstructs
the synthetic **tuning** subjects of the development protocol (:class:`benchmarks.tuning_split.TuningSplit`:
``--config``'s ``data.tuning`` subjects, never its test subjects, never real images) per trajectory setting with
the ``reconstruct`` command's DDS request (``--nfe`` NFE, K = ``--samples``, grid auto, the CG count of the
trajectory's coverage; when the committed report ran, ``auto`` kept trajectories on the native grid and one CG table
served both kinds: a rerun now samples on the 2x grid with the per-kind tables of non-Cartesian defaults version 4)
for each ``--virtual-coils`` value (``all``: no compression), and reports PSNR, the share of the density-weighted
energy kept, and seconds per slice.

Decision rule, fixed before this script's first run (a probe that was not committed had measured 8/6/4/3 virtual
coils at radial 16 and 64 spokes on the same subjects; a first run that estimated the maps on the virtual coils was
stopped when every count lost 0.13-0.18 dB to all coils at 32 and 64 spokes): ``auto``
(:data:`mri_score.noncartesian.NONCARTESIAN_VIRTUAL_COILS`) is the smallest count whose mean PSNR is at most
0.1 dB below all coils' at every setting. The choice is then checked, not chosen, on the benchmark's held-out
data (``run_noncartesian.py``).
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys

import numpy as np
import torch

from benchmarks.harness import check_args, write_report
from benchmarks.provenance import provenance
from benchmarks.tuning_split import (
    TuningSplit,
    add_trajectory_flags,
    scored_reconstruction,
    setting_label,
    tuning_inputs,
)
from mri_score import limits
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.noncartesian import NonCartesianVolume, coil_compression
from mri_score.prior import DEFAULT_PRIOR
from mri_score.request import ReconRequest
from operators.coils import compress_coils

#: Rule: the smallest count at most this many dB below all coils at every setting.
TOLERANCE_DB = 0.1


def build_parser() -> argparse.ArgumentParser:
    """The script's flags (the shared ones of :func:`benchmarks.tuning_split.add_trajectory_flags` included)."""
    ap = one_line_usage_errors(add_trajectory_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                                                    "coil_compression.md"))
    ap.add_argument("--virtual-coils", type=int, nargs="+", default=[6, 4, 3, 2],
                    help="virtual-coil counts to compare with all coils")
    ap.add_argument("--samples", type=int, default=2, help="posterior samples K per slice")
    return ap


def kept_energy(volume: NonCartesianVolume, virtual_coils: str | int) -> float:
    """Share of ``volume``'s density-weighted k-space energy that the virtual coils of ``virtual_coils`` keep (each
    slice with its own matrix, as :func:`mri_score.noncartesian.coil_compression` compresses it; 1 without one)."""
    weights = torch.from_numpy(volume.density_weights()).sqrt()
    samples = torch.from_numpy(np.ascontiguousarray(volume.samples)) * weights
    u = coil_compression(volume, virtual_coils)
    kept = samples if u is None else torch.stack([compress_coils(y, m, coil_dim=-2) for y, m in zip(samples, u, strict=True)])
    return float((kept.abs() ** 2).sum() / (samples.abs() ** 2).sum())


def choose(means: dict[str, dict[str, float]]) -> str:
    """Apply the rule to ``{count or "all": {setting: mean PSNR}}``: the chosen count (``"all"`` when none holds)."""
    ref = means["all"]
    fine = [int(c) for c in means if c != "all" and all(means[c][s] >= ref[s] - TOLERANCE_DB for s in ref)]
    return str(min(fine)) if fine else "all"


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Reconstruct the tuning slices with each virtual-coil count per setting; write the table and the rule's choice."""
    args = build_parser().parse_args(argv)
    check_args(args)
    for n in args.virtual_coils:
        limits.check_int(n, "--virtual-coils", 1, 1024)
    settings, split, prior, vols = tuning_inputs(args)
    counts = ["all", *(str(n) for n in sorted(set(args.virtual_coils), reverse=True))]
    rows: list[dict] = []
    for kind, count in settings:
        tag = setting_label(kind, count)
        for v in vols:
            acq = split.acquire(v, kind, count)
            for c in counts:
                request = ReconRequest(sampler="dds", steps=args.nfe, samples=args.samples, seed=args.seed,
                                       virtual_coils=c)
                energy = kept_energy(acq, request.virtual_coils)
                psnr, seconds = scored_reconstruction(acq, prior, request)
                rows.append({"setting": tag, "volume": v["name"], "coils": c, "psnr": psnr, "energy": energy,
                             "seconds": seconds})
                print(f"{tag} | {v['name']} | coils {c}: {psnr:.2f} dB, energy {energy:.5f}, {seconds:.2f} s/slice",
                      flush=True)
    command = " ".join(["python benchmarks/run_coil_compression.py", *(argv if argv is not None else sys.argv[1:])])
    write_report(args.out, report(args, command, split, rows))
    return 0


def report(args: argparse.Namespace, command: str, split: TuningSplit, rows: list[dict]) -> list[str]:
    """The markdown report: provenance, mean PSNR (energy kept) and time per setting and count, the rule's choice."""
    tags = list(dict.fromkeys(r["setting"] for r in rows))
    counts = list(dict.fromkeys(r["coils"] for r in rows))

    def mean(key: str, c: str, t: str) -> float:
        return float(np.mean([r[key] for r in rows if r["coils"] == c and r["setting"] == t]))

    means = {c: {t: mean("psnr", c, t) for t in tags} for c in counts}
    secs = {c: float(np.median([r["seconds"] for r in rows if r["coils"] == c])) for c in counts}
    chosen = choose(means)
    spec = split.spec
    lines = ["# Virtual coils on non-Cartesian data (issue #32)", "",
             provenance(command)
             + f"- prior: {args.prior or f'shipped default (`mri_score/weights/{DEFAULT_PRIOR}`)'}; DDS with the "
             f"`reconstruct` defaults at {args.nfe} NFE, K = {args.samples}, sampler seed {args.seed} (+ slice index), "
             "grid auto; only `virtual_coils` varies\n"
             f"- data: `{args.config}` tuning subjects {', '.join(map(str, split.subjects))} (held-out split, from "
             f"corpus slice {spec['first']}), {args.slices} slice(s) each at {args.synth_size}², {spec['coils']} birdcage "
             f"coils, SNR {spec['snr']:g}; never test subjects or real images; n = "
             f"{len(rows) // max(1, len(counts) * len(tags))} volumes per setting\n"
             "- PSNR: fastMRI's per-volume PSNR of |x| against the noise-free magnitude, mean over volumes (in brackets: "
             "the share of the density-weighted k-space energy the virtual coils keep, mean over volumes); time: "
             "median seconds per slice over every volume and setting (calibration included)\n"
             f"- rule (fixed before the run): the smallest count at most {TOLERANCE_DB:g} dB below all coils at every "
             "setting", "",
             "| virtual coils | " + " | ".join(tags) + " | average | Δ vs all (worst setting) | s/slice |",
             "|---|" + "---|" * (len(tags) + 3)]
    for c in counts:
        avg = float(np.mean(list(means[c].values())))
        worst = min(means[c][t] - means["all"][t] for t in tags)
        lines.append(f"| {c} | " + " | ".join(f"{means[c][t]:.2f} ({mean('energy', c, t):.4f})" for t in tags)
                     + f" | {avg:.2f} | {worst:+.2f} | {secs[c]:.2f} |")
    lines += ["", f"**Choice by the rule: {chosen} virtual coils** (`NONCARTESIAN_VIRTUAL_COILS`).", ""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
