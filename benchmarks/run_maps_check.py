"""How much the ACS coil-map estimate costs: DDS with ESPIRiT / low-resolution / the true simulation maps.

Run: ``python benchmarks/run_maps_check.py`` (~3 min on 2 cores; or ``python -m benchmarks.run_maps_check``)
→ ``benchmarks/results/maps_check.md``.
The cases are the first synthetic volume of ``configs/bench_quick.yaml`` (160², centre fraction 0.1: a
16-line ACS, the least ESPIRiT accepts) and of ``configs/bench_full.yaml`` (256², centre fraction 0.08:
21 lines) at 4x equispaced, read from those configs and simulated by the benchmark's own code.  The true
maps are the simulation's birdcage maps: an oracle no real reconstruction has, shown only to separate map
errors from prior and sampler errors.
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

from benchmarks.provenance import provenance
from mri_score import limits
from mri_score.atomic import atomic_output, check_output, check_writable
from mri_score.calibration import calibrate
from mri_score.cli import exit_on_input_error
from mri_score.metrics import volume_metrics
from mri_score.pipeline import reconstruct_volume
from mri_score.prior import load_prior
from mri_score.request import ReconRequest
from mri_score.simulation import corpus_volume, simulate_volume
from operators import acs_width, birdcage_maps, estimate_maps, make_mask

ROOT = Path(__file__).resolve().parents[1]

#: benchmark configs whose first synthetic volume and 4x equispaced setting are checked
#: The two cases (the round-one quick and full benchmark volumes 0): label, family, corpus index, size, coils, SNR,
#: centre fraction of the 4x equispaced mask, data seed.
CASES = (("bench_quick", "t2", 0, (160, 160), 8, 100.0, 0.1, 0), ("bench_full", "t1", 0, (256, 256), 8, 100.0, 0.08, 0))


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """DDS with estimated and true maps on each config's first volume; write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "maps_check.md"))
    args = ap.parse_args(argv)
    for nfe in args.nfe:
        limits.check_steps(nfe, "--nfe")
    check_output(args.out)
    check_writable(Path(args.out).parent)
    prior = load_prior()
    lines = ["# Coil-map estimate vs the true maps (DDS, K = 2, 4x equispaced)", "",
             provenance("python benchmarks/run_maps_check.py") + "- seed: as each config (data as the benchmarks), "
             "sampler seed = config seed", "",
             "| case | size | coils | SNR | ACS lines | maps | " + " | ".join(f"DDS-{n} PSNR / SSIM" for n in args.nfe) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(args.nfe)]
    for label, family, index, shape, coils, snr, center_fraction, seed in CASES:
        vol = {"name": f"synth_{family}_00.h5", "images": corpus_volume("test", index, 1, shape, family, seed)}
        ksp, target, _ = simulate_volume(vol["images"], coils, snr, seed=seed * 1000)  # as the benchmark, volume 0
        size = "×".join(str(n) for n in ksp.shape[-2:])
        mask, _ = make_mask("equispaced", 4.0, center_fraction, ksp.shape[-2:], vol["name"])
        under = (ksp[:1] * mask).astype(np.complex64)
        ks, m = torch.from_numpy(under[0]), torch.from_numpy(mask)
        maps = {"ESPIRiT (ACS)": estimate_maps(ks, m, method="espirit"),
                "low-res (ACS)": estimate_maps(ks, m, method="lowres"),
                "true (oracle)": torch.from_numpy(birdcage_maps(coils, ksp.shape[-2:]))}
        for mname, mp in maps.items():
            cells = []
            for nfe in args.nfe:
                res = reconstruct_volume(under, mask, prior, ReconRequest(sampler="dds", steps=nfe, samples=2, seed=seed),
                                         calibrations=[calibrate(ks, m, maps=mp)])
                met = volume_metrics(target, res.image)
                cells.append(f"{met['PSNR']:.2f} / {met['SSIM']:.3f}")
            lines.append(f"| {label} {vol['name']} | {size} | {coils} | {snr:g} | {acs_width(m)} | {mname} | "
                         + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    with atomic_output(args.out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
