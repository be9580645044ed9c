"""DDS settings (σ_max, CG steps, data weight, η) compared on slices the benchmark does not report.

Run: ``python benchmarks/run_dds_tuning.py --config configs/tune_dds.yaml``
→ ``benchmarks/results/dds_tuning.md`` (or ``python -m benchmarks.run_dds_tuning``).
The synthetic volumes come from the test split at indices the benchmark does not use, and the real EPI
slices include three the benchmark never reconstructs, so defaults chosen here are not fitted to the
reported numbers.  A setting is only worth making the default when it helps on the real slices too.
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

from benchmarks.harness import calibrate_volume, check_score_method, run_method
from benchmarks.provenance import provenance
from mri_score.atomic import check_output_dir
from mri_score.cli import exit_on_input_error
from mri_score.config import load_config, require
from mri_score.data.realset import load_real_volume
from mri_score.metrics import volume_metrics
from mri_score.prior import load_prior
from mri_score.simulation import corpus_volume, simulate_volume
from operators import make_mask

ROOT = Path(__file__).resolve().parents[1]


def build_cases(cfg: dict, src: str) -> list[dict]:
    """One slice per case: ``{name, group, images (1, H, W) complex64}``."""
    seed = int(cfg.get("seed", 0))
    cases = []
    for spec in require(cfg, "synthetic", src):
        imgs = corpus_volume("test", int(spec["index"]), 1, tuple(require(cfg, "size", src)), spec["family"], seed)
        cases.append({"name": f"synth_{spec['family']}_{int(spec['index']):02d}", "group": "synthetic", "images": imgs})
    real = load_real_volume("nibabel_example4d").images
    for k in cfg.get("real_slices", []):
        cases.append({"name": f"epi_slice{int(k):02d}", "group": "real", "images": real[int(k) : int(k) + 1]})
    return cases


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Compare the config's DDS variants with L1-wavelet and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "tune_dds.yaml"))
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--prior", default=None, help="checkpoint to use instead of the config's / the shipped prior")
    ap.add_argument("--name", default=None, help="results file name (default: the config's name)")
    args = ap.parse_args(argv)
    check_output_dir(args.out_dir, [], "--out-dir")
    cfg = load_config(args.config)
    if args.prior:
        cfg["prior"] = args.prior
    if args.name:
        cfg["name"] = args.name
    src = str(args.config)
    seed, nfe, lam = int(cfg.get("seed", 0)), int(require(cfg, "nfe", src)), float(require(cfg, "l1_lam", src))
    variants = [dict(v) for v in require(cfg, "variants", src)]
    for i, v in enumerate(variants):  # refuse a misspelled option before anything runs
        check_score_method("dds", {"nfe": nfe, "options": v}, f"{src}: variants[{i}]")
    prior = load_prior(cfg.get("prior"))
    cases = build_cases(cfg, src)
    names = [c["name"] for c in cases]
    lines = [f"# DDS tuning ({nfe} NFE, K = 2), PSNR (dB)", "",
             provenance(" ".join(["python benchmarks/run_dds_tuning.py", *(sys.argv[1:] if argv is None else argv)]))
             + f"- seed: {seed} (data and sampler); prior: {cfg.get('prior') or 'shipped default'}", ""]
    t_start = time.time()
    for setting in require(cfg, "settings", src):
        accel, mtype, cf = float(setting["accel"]), setting["mask"], float(setting.get("center_fraction", 0.08))
        prepared = []
        for i, case in enumerate(cases):
            ksp, target, _ = simulate_volume(case["images"], int(cfg.get("coils", 8)), float(cfg.get("snr", 100)),
                                             seed=seed * 1000 + 500 + i)
            mask, _ = make_mask(mtype, accel, cf, ksp.shape[-2:], f"{case['name']}.h5")
            under = (ksp[:1] * mask).astype(np.complex64)
            cals, _ = calibrate_volume(under, mask)
            prepared.append((under, mask, cals, target))
        rows = []
        methods = [(f"L1-wavelet λ={lam:g}", "l1_wavelet", {"lams": [lam], "iters": 100})]
        methods += [("DDS " + ", ".join(f"{k}={val:g}" for k, val in v.items()), "dds",
                     {"nfe": [nfe], "samples": 2, "options": v}) for v in variants]
        for label, method, spec in methods:
            psnrs = []
            for under, m, cals, target in prepared:
                (row,) = run_method(method, spec, under, m, cals, "rss", {"prior": prior}, seed, False)
                psnrs.append(volume_metrics(target, row["images"])["PSNR"])
            rows.append((label, psnrs))
            print(f"[{time.time() - t_start:.0f}s] {accel:g}x {mtype} {label}: {np.mean(psnrs):.2f}", flush=True)
        synth = [i for i, c in enumerate(cases) if c["group"] == "synthetic"]
        real = [i for i, c in enumerate(cases) if c["group"] == "real"]
        lines += [f"## {accel:g}x {mtype}, centre fraction {cf:g}", "",
                  "| method | " + " | ".join(names) + " | mean synthetic | mean real |",
                  "|---|" + "---|" * (len(names) + 2)]
        for label, p in rows:
            lines.append(f"| {label} | " + " | ".join(f"{x:.2f}" for x in p)
                         + f" | {np.mean([p[i] for i in synth]):.2f} | {np.mean([p[i] for i in real]):.2f} |")
        lines.append("")
    out = Path(args.out_dir) / f"{cfg.get('name', 'dds_tuning')}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + f"\nTotal {time.time() - t_start:.0f} s.\n")
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
