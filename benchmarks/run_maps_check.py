"""How much the ACS coil-map estimate costs: DDS with ESPIRiT / low-resolution / the true simulation maps.

Run: ``python benchmarks/run_maps_check.py`` (~3 min on 2 cores) → ``benchmarks/results/maps_check.md``.
The cases are bench_quick's (160², centre fraction 0.1: a 16-line ACS, the least ESPIRiT accepts) and
bench_full's (256², centre fraction 0.08: 20 lines) first synthetic volume at 4x equispaced, simulated
exactly as the benchmark does.  The true maps are the simulation's birdcage maps: an oracle no real
reconstruction has, shown only to separate map errors from prior and sampler errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import provenance  # noqa: E402
from mri_score.errors import exit_on_input_error  # noqa: E402
from mri_score.metrics import volume_metrics  # noqa: E402
from mri_score.posterior import SamplerSettings, reconstruct_slice  # noqa: E402
from mri_score.prior import load_prior  # noqa: E402
from mri_score.simulate import birdcage_maps, corpus_volume, make_mask, simulate_volume  # noqa: E402
from operators import acs_width, estimate_maps  # noqa: E402

#: (label, family, index, size, centre fraction) as in configs/bench_quick.yaml and configs/bench_full.yaml
CASES = [("bench_quick", "t2", 0, 160, 0.1), ("bench_full", "t1", 0, 256, 0.08)]


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "maps_check.md"))
    args = ap.parse_args(argv)
    prior = load_prior()
    lines = ["# Coil-map estimate vs the true maps (DDS, K = 2, 4x equispaced, SNR 100, 8 coils)", "",
             provenance("python benchmarks/run_maps_check.py") + "- seed: 0 (data as the benchmarks, sampler seed 0)",
             "", "| case | size | ACS lines | maps | " + " | ".join(f"DDS-{n} PSNR / SSIM" for n in args.nfe) + " |",
             "|---|---|---|---|" + "---|" * len(args.nfe)]
    for label, family, index, size, cf in CASES:
        imgs = corpus_volume("test", index, 1, (size, size), family, 0)
        ksp, target, _ = simulate_volume(imgs, 8, 100.0, seed=0)
        name = f"synth_{family}_{index:02d}.h5"
        mask, _ = make_mask("equispaced", 4.0, cf, ksp.shape[-2:], name)
        ks = torch.from_numpy((ksp[0] * mask).astype(np.complex64))
        m = torch.from_numpy(mask)
        maps = {"ESPIRiT (ACS)": estimate_maps(ks, m, method="espirit"),
                "low-res (ACS)": estimate_maps(ks, m, method="lowres"),
                "true (oracle)": torch.from_numpy(birdcage_maps(8, (size, size)))}
        for mname, mp in maps.items():
            cells = []
            for nfe in args.nfe:
                res = reconstruct_slice(ks, m, prior, SamplerSettings(sampler="dds", steps=nfe, samples=2, seed=0),
                                        maps=mp)
                met = volume_metrics(target, res.image.numpy()[None])
                cells.append(f"{met['PSNR']:.2f} / {met['SSIM']:.3f}")
            lines.append(f"| {label} {name} | {size}² | {acs_width(m)} | {mname} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
