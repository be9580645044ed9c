"""Resolution matching and the DDS data-weight rules on real and synthetic slices (issue #14, items 4 and 5).

Run: ``python benchmarks/run_grid_check.py --threads 1`` → ``benchmarks/results/grid_check.md``.

Per volume (a few slices) and acceleration it reports PSNR / SSIM of DDS (shipped prior, K = 1)
against the noise-free image, scored on the coil-combined magnitude ``|x|``
(:func:`mri_score.posterior.output_magnitude` with ``sense``), and seconds per slice, for

* the grid: ``native`` (the measured matrix) and ``auto`` (:meth:`mri_score.request.ReconRequest.for_pixels`
  of the volume's pixel size and the prior's trained range; the rule the ``reconstruct --grid auto``
  command line applies to a file's header);
* the data weight: ``gamma_rule=noise`` (the default) and ``gamma_rule=discrepancy``;
* a fixed factor (``--fixed``, default 2: the issue's experiment, as ``--grid 2``) with the default rule,
  on every volume, synthetic included (there it moves the pixels *out* of the prior's range).

Real images (:mod:`mri_score.data.realset`, nibabel's bundled test data) are evaluation only: nothing
here is chosen on them.  Synthetic slices are the held-out test split of the corpus
(:func:`mri_score.simulation.corpus_volume`), whose pixels (0.8–1.5 mm) are inside the shipped prior's
range, so ``auto`` is the native grid there and is not run twice.  k-space is simulated as the
benchmark does (8 birdcage coils, SNR 100, fastMRI masks seeded by the volume name, centre fraction 0.1)
and every configuration shares one calibration per slice.
"""

from __future__ import annotations

import argparse

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import sys
import time

import numpy as np

from benchmarks.harness import add_check_flags, check_args, undersample, write_report
from benchmarks.provenance import provenance
from mri_score.cli import exit_on_input_error
from mri_score.data.realset import load_real_volume
from mri_score.metrics import volume_metrics
from mri_score.pipeline import reconstruct_volume
from mri_score.prior import DEFAULT_PRIOR, load_prior
from mri_score.request import ReconRequest
from mri_score.resolution import prior_pixel_range
from mri_score.simulation import corpus_volume, simulate_volume

#: (mask type, acceleration) of every volume
SETTINGS = (("equispaced", 4.0), ("random", 8.0))
CENTER_FRACTION = 0.1
#: DDS data-weight rules compared
RULES = ("noise", "discrepancy")
COILS, SNR = 8, 100.0


def middle(images: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` middle slices of ``(S, H, W)``."""
    lo = max(0, images.shape[0] // 2 - n // 2)
    return images[lo : lo + n]


def volumes(slices: int, synth_size: int, seed: int, groups: tuple[str, ...] = ("real", "synthetic")) -> list[dict]:
    """The check's volumes: ``{name, group, images (S, H, W) complex64, pixel_mm}``."""
    out = []
    for name in ("nibabel_example4d", "nibabel_phantom_epi") if "real" in groups else ():
        vol = load_real_volume(name)
        out.append({"name": name, "group": "real", "images": middle(vol.images, slices), "pixel_mm": vol.pixel_mm})
    for i, family in enumerate(("t1", "t2") if "synthetic" in groups else ()):
        imgs = corpus_volume("test", i, slices, (synth_size, synth_size), family, seed)
        out.append({"name": f"synth_{family}_{i:02d}", "group": "synthetic", "images": imgs, "pixel_mm": None})
    return out


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run every configuration on every volume and setting; write the table."""
    # at 0.8-1.5 mm a 128 matrix crops the head: 224 by default
    ap = add_check_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]), "grid_check.md", 224)
    ap.add_argument("--groups", nargs="+", default=["real", "synthetic"], choices=["real", "synthetic"])
    ap.add_argument("--fixed", type=float, nargs="*", default=[2.0], help="fixed grid factors run with gamma_rule=noise")
    args = ap.parse_args(argv)
    check_args(args)
    prior = load_prior()
    vols = volumes(args.slices, args.synth_size, args.seed, tuple(args.groups))
    trained = prior_pixel_range(getattr(prior, "meta", None))  # reported in the header
    lines = ["# Resolution matching and the DDS data-weight rule (issue #14, items 4–5)", "",
             provenance("python benchmarks/run_grid_check.py " + " ".join(argv if argv is not None else sys.argv[1:]))
             + f"- prior: shipped default (`mri_score/weights/{DEFAULT_PRIOR}`), trained pixel range "
             f"{trained[0]:g}–{trained[1]:g} mm (its metadata has no `pixel_mm`; its config's `data.pixel_mm`, "
             "the same as the documented default)\n"
             f"- DDS, {args.nfe} NFE, K = 1, sampler seed {args.seed} (+ slice index); {COILS} birdcage coils, "
             f"SNR {SNR:g}, centre fraction {CENTER_FRACTION}; data seed {args.seed}; n = {args.slices} slices per "
             f"volume, {len(vols)} volumes ({args.slices * len(vols)} slices)\n"
             "- scored on |x| (the `sense` magnitude) against the noise-free image, per volume (fastMRI metrics); "
             "seconds per slice of sampling (calibration excluded, shared by all rows)", "",
             "| volume | pixel mm | setting | grid | γ rule | PSNR | SSIM | s/slice |",
             "|---|---|---|---|---|---|---|---|"]
    results = []
    for vi, vol in enumerate(vols):
        imgs = vol["images"]
        truth = np.abs(imgs).astype(np.float32)
        ksp, _, _ = simulate_volume(imgs, COILS, SNR, seed=args.seed * 1000 + vi)
        factor = ReconRequest(grid="auto").for_pixels(vol["pixel_mm"], getattr(prior, "meta", None)).grid_factor
        grids = [("native", 1.0, RULES)] + ([(f"auto ×{factor:g}", factor, RULES)] if factor != 1.0 else [])
        grids += [(f"fixed ×{f:g}", f, ("noise",)) for f in args.fixed if f != factor]
        pix = "×".join(f"{p:g}" for p in vol["pixel_mm"]) if vol["pixel_mm"] else "0.8–1.5"
        for mask_type, accel in SETTINGS:
            acq = undersample(ksp, mask_type, accel, CENTER_FRACTION, vol["name"] + ".h5")
            under, mask, cals = acq["under"], acq["mask"], acq["cals"]
            for gname, f, rules in grids:
                for rule in rules:
                    settings = ReconRequest(sampler="dds", steps=args.nfe, samples=1, seed=args.seed,
                                               magnitude="sense", grid=f, options={"gamma_rule": rule})
                    t0 = time.perf_counter()
                    res = reconstruct_volume(under, mask, prior, settings, calibrations=cals)
                    sec = (time.perf_counter() - t0) / imgs.shape[0]
                    met = volume_metrics(truth, res.image)
                    results.append({"volume": vol["name"], "setting": f"{accel:g}x {mask_type}", "grid": gname,
                                    "rule": rule, **met, "seconds": sec})
                    lines.append(f"| {vol['name']} | {pix} | {accel:g}× {mask_type} | {gname} | {rule} | "
                                 f"{met['PSNR']:.2f} | {met['SSIM']:.4f} | {sec:.1f} |")
                    print(lines[-1], flush=True)
    lines += ["", "Synthetic volumes: pixels inside the prior's range, so `auto` = native (factor 1, no extra cost).", ""]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
