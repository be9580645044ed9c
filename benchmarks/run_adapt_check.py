"""Test-time adaptation (``reconstruct --adapt``) against the plain prior on real and synthetic slices (issue #14, item 3).

Run: ``python benchmarks/run_adapt_check.py --threads 2`` → ``benchmarks/results/adapt_check.md``.

Per volume (its middle slices) and setting it reports PSNR / SSIM of DDS (the prior given by ``--prior``,
default the shipped one; ``--samples`` K, ``--nfe`` NFE, ``--grid`` as ``reconstruct``'s, both defaulting
to the command's defaults) against the noise-free image, scored on ``|x|`` (the
``sense`` magnitude) per volume with the fastMRI metrics, without and with adaptation
(:class:`mri_score.adapt.AdaptSettings` at its defaults unless flags say otherwise), the difference, and
seconds per slice (calibration excluded; the adapted row includes its pilot and its training steps) and
their ratio, the cost of adaptation that issue #14 bounds at 2×.  ``--slices`` large enough takes whole volumes:
the adaptation's fixed cost is per volume.
Real images (:mod:`mri_score.data.realset`) are evaluation only: the adaptation defaults were fixed
before this ran, nothing is chosen on it.  Synthetic slices: held-out test-split subjects 0 and 1 of the
subject-level corpus (as the protocol's test set).
k-space as the benchmarks simulate it (8 birdcage coils, SNR 100, fastMRI masks seeded by the volume name,
centre fraction 0.08), one shared calibration per slice.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys
import time

import numpy as np

from benchmarks.harness import add_check_flags, check_args, middle_slices, undersample, write_report
from benchmarks.provenance import provenance
from mri_score import limits
from mri_score.adapt import ADAPT_PARAMS, AdaptSettings
from mri_score.cli import exit_on_input_error
from mri_score.data.realset import load_real_volume
from mri_score.metrics import volume_metrics
from mri_score.pipeline import reconstruct_volume
from mri_score.prior import DEFAULT_PRIOR, load_prior
from mri_score.request import ReconRequest
from mri_score.simulation import simulate_volume, subject_volume

SETTINGS = (("equispaced", 4.0), ("random", 8.0))
CENTER_FRACTION, COILS, SNR = 0.08, 8, 100.0
REAL = ("nibabel_example4d", "nibabel_phantom_epi")
#: synthetic pixel sizes (mm): the protocol's (configs/bench_protocol.yaml), the head inside a 128² field of view
PIXEL_MM = (2.0, 2.5)


def volumes(slices: int, synth_size: int, seed: int) -> list[dict]:
    """``{name, group, images (S, H, W) complex64}``: the real set's middle slices and two held-out synthetic subjects."""
    out = []
    for n in REAL:
        real = load_real_volume(n)
        out.append({"name": n, "group": "real", "images": middle_slices(real.images, slices), "pixel_mm": real.pixel_mm})
    for i, family in enumerate(("t1", "t2")):
        out.append({"name": f"subject{i:02d}_{family}", "group": "synthetic",
                    "images": subject_volume("test", i, slices, (synth_size, synth_size), family, seed,
                                                 pixel_mm=PIXEL_MM), "pixel_mm": (PIXEL_MM[1], PIXEL_MM[1])})
    return out


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run plain and adapted DDS on every volume and setting; write the table."""
    ap = add_check_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]), "adapt_check.md", 128)
    ap.add_argument("--prior", default=None)
    ap.add_argument("--adapt-steps", type=int, default=None)
    ap.add_argument("--adapt-params", default=None, choices=ADAPT_PARAMS)
    ap.add_argument("--adapt-sigma-min", type=float, default=None)
    ap.add_argument("--samples", type=int, default=2, help="posterior samples K (reconstruct's default 2)")
    ap.add_argument("--grid", default="auto", choices=["auto", "native"], help="sampling grid (reconstruct's default auto)")
    args = ap.parse_args(argv)
    check_args(args, min_nfe=2)
    limits.check_int(args.samples, "--samples", 1, limits.MAX_SAMPLES)
    adapt = AdaptSettings.from_options(steps=args.adapt_steps, params=args.adapt_params, sigma_min=args.adapt_sigma_min)
    prior = load_prior(args.prior)
    vols = volumes(args.slices, args.synth_size, args.seed)
    lines = ["# Test-time adaptation vs the plain prior (issue #14, item 3)", "",
             provenance("python benchmarks/run_adapt_check.py " + " ".join(argv if argv is not None else sys.argv[1:]))
             + f"- prior: `{args.prior or f'shipped default (mri_score/weights/{DEFAULT_PRIOR})'}`; DDS, "
             f"{args.nfe} NFE, K = {args.samples}, grid {args.grid}, sampler seed {args.seed} (+ slice index); "
             f"adaptation: {adapt}\n"
             f"- {COILS} birdcage coils, SNR {SNR:g}, centre fraction {CENTER_FRACTION}; n = {args.slices} middle "
             f"slices per volume, {len(vols)} volumes; scored on |x| against the noise-free image, per volume "
             "(fastMRI metrics); s/slice of sampling (the adapted one includes pilot and training)", "",
             "| volume | group | slices | grid | setting | PSNR plain | PSNR adapted | Δ PSNR | SSIM plain | "
             "SSIM adapted | s/slice plain | s/slice adapted | time ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios: list[float] = []
    deltas: dict[str, list[float]] = {"real": [], "synthetic": []}
    for vi, vol in enumerate(vols):
        imgs = vol["images"]
        truth = np.abs(imgs).astype(np.float32)
        ksp, _, _ = simulate_volume(imgs, COILS, SNR, seed=args.seed * 1000 + vi)
        for mask_type, accel in SETTINGS:
            acq = undersample(ksp, mask_type, accel, CENTER_FRACTION, vol["name"] + ".h5")
            under, mask, cals = acq["under"], acq["mask"], acq["cals"]
            settings = ReconRequest(sampler="dds", steps=args.nfe, samples=args.samples, seed=args.seed,
                                    magnitude="sense", grid=args.grid)
            row = {}
            for name, ad in (("plain", None), ("adapted", adapt)):
                t0 = time.perf_counter()
                res = reconstruct_volume(under, mask, prior, settings.replace(adapt=ad), calibrations=cals,
                                         pixel_mm=vol["pixel_mm"])
                row[name] = {**volume_metrics(truth, res.image), "sec": (time.perf_counter() - t0) / imgs.shape[0]}
            d = row["adapted"]["PSNR"] - row["plain"]["PSNR"]
            deltas[vol["group"]].append(d)
            ratios.append(row["adapted"]["sec"] / row["plain"]["sec"])
            lines.append(f"| {vol['name']} | {vol['group']} | {imgs.shape[0]} | ×{res.grid_factor:g} | {accel:g}× {mask_type} | "
                         f"{row['plain']['PSNR']:.2f} | {row['adapted']['PSNR']:.2f} | {d:+.2f} | "
                         f"{row['plain']['SSIM']:.4f} | {row['adapted']['SSIM']:.4f} | {row['plain']['sec']:.2f} | "
                         f"{row['adapted']['sec']:.2f} | {ratios[-1]:.2f}× |")
            print(lines[-1], flush=True)
    lines += [""] + [f"- {g}: Δ PSNR (adapted − plain) from {min(v):+.2f} to {max(v):+.2f} dB, mean {np.mean(v):+.2f} "
                     f"(n = {len(v)} volume × setting pairs)" for g, v in deltas.items() if v] + [
              f"- time, adapted over plain: {min(ratios):.2f}× to {max(ratios):.2f}× (issue #14's bound: 2×)", ""]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
