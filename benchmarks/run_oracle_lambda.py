"""DDS against L1-wavelet at its interior oracle λ per volume: the comparison issue #29's target names.

Run: ``python benchmarks/run_oracle_lambda.py --config configs/bench_dev.yaml --threads 2`` →
``benchmarks/results/oracle_lambda_dev.md``.

The protocol (:mod:`benchmarks.protocol`) chooses every baseline's λ once per setting on synthetic tuning slices,
as a user without ground truth would.  Issue #29's target and the independent evaluation compare instead with
L1-wavelet at its **oracle** λ: the best on each volume's own slices against the noise-free truth, with the optimum
inside the sweep (the baseline's best case).  This script scores that comparison on the protocol's own test volumes
and acquisitions (:func:`benchmarks.protocol.acquire`, the same noise seeds, masks and ACS maps as the config's
run) with the config's ``l1_wavelet`` and ``dds`` entries (:func:`benchmarks.protocol.solve`, the benchmark's one
method table):

* per volume and setting, L1-wavelet is run at every λ of the config's sweep; a best λ at an end of the sweep
  extends it by one step beyond that end (at most ``protocol.widen`` times), and an interior best is refined by
  the two λ half a step on either side of it; the volume's best fastMRI per-volume PSNR is its oracle;
* DDS runs once per slice, as in the protocol;
* the table gives per volume DDS − L1 (oracle) in PSNR and SSIM, the oracle λ and whether it is interior, and per
  group the mean over slices with a volume-clustered 95 % bootstrap interval
  (:func:`benchmarks.stats.clustered_paired_difference`), and how many volumes reach the target (+2 dB at 4x,
  +3 dB at 8x, SSIM + 0.03).

Only development configs: a config whose ``data.real`` is ``final`` is refused (the final test set is read by the
registered protocol alone).  ``--groups`` selects the groups by a word of their name (default ``real``).
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import write_report
from benchmarks.protocol import acquire, protocol_volumes, score, setting_tag, solve, validate_protocol
from benchmarks.provenance import provenance
from benchmarks.stats import clustered_paired_difference, sweep_until_interior
from mri_score import limits
from mri_score.atomic import check_output, check_writable
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.config import load_config
from mri_score.errors import InputError
from mri_score.prior import ComplexPrior, default_prior_path, load_prior

ROOT = Path(__file__).resolve().parents[1]
#: Issue #29's per-volume targets: DDS − L1 (oracle λ) in dB by acceleration, and in SSIM.
TARGET_DB = {4.0: 2.0, 8.0: 3.0}
TARGET_SSIM = 0.03


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run DDS and the per-volume L1 oracle on a development config's test volumes; write the report."""
    ap = one_line_usage_errors(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    ap.add_argument("--config", required=True, help="a development protocol config (configs/bench_dev.yaml)")
    ap.add_argument("--groups", nargs="+", default=["real"],
                    help="volume groups, by a word of their name (real, in-distribution, anatomy)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="report (default: benchmarks/results/oracle_lambda_<config name>.md)")
    args = ap.parse_args(argv)
    limits.check_threads(args.threads)
    cfg = load_config(args.config)
    src = str(args.config)
    validate_protocol(cfg, src)
    if cfg["data"].get("real") == "final":
        raise InputError(f"{src}: data.real is final; the final test set is read only by the registered protocol")
    for method in ("l1_wavelet", "dds"):
        if method not in cfg["methods"]:
            raise InputError(f"{src}: no {method} method to compare")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"oracle_lambda_{cfg['name'].removeprefix('bench_')}.md")
    check_output(out)
    check_writable(out.parent)
    if args.threads:
        torch.set_num_threads(args.threads)
    data, methods = cfg["data"], cfg["methods"]
    l1_spec, dds_spec = methods["l1_wavelet"] or {}, methods["dds"] or {}
    widen = int(cfg.get("protocol", {}).get("widen", 2))
    coils, snr = int(data.get("coils", 8)), float(data.get("snr", 100))
    prior_path = Path(cfg["prior"]) if cfg.get("prior") else default_prior_path()
    prior = ComplexPrior(load_prior(prior_path))
    vols = [v for v in protocol_volumes(cfg) if v["phase"] == "test"
            and any(word in v["group"] for word in args.groups)]
    if not vols:
        raise InputError(f"--groups {' '.join(args.groups)} selects no test volume of {src}")
    rows = []
    t0 = time.time()
    for setting in cfg["settings"]:
        tag = setting_tag(setting)
        for vol in vols:
            acq = acquire(vol, setting, coils, snr)
            if acq is None:
                continue
            def volume(method: str, spec: dict, lam: float | None, acq: dict = acq, vol: dict = vol) -> dict:
                slices = range(acq["under"].shape[0])
                outs = [solve(method, spec, lam, acq, s, "acs", prior, vol["seed"]) for s in slices]
                stacked = {k: np.stack([o[k] for o in outs]) for k in ("primary", "rss")}
                per_slice = [score(acq["truth"][s], acq["target_rss"][s], outs[s])["PSNR"] for s in slices]
                return {**score(acq["truth"], acq["target_rss"], stacked), "slice_psnr": per_slice,
                        "seconds": float(np.mean([o["seconds"] for o in outs]))}

            swept: dict[float, dict] = {}

            def l1_psnr(lam: float, swept: dict = swept, volume: Callable = volume) -> float:
                swept[lam] = volume("l1_wavelet", l1_spec, lam)
                return swept[lam]["PSNR"]

            lams = sorted(float(v) for v in l1_spec["lams"])
            step = lams[1] / lams[0] if len(lams) > 1 else 3.0
            lam, _, interior = sweep_until_interior(l1_psnr, lams, step, widen)
            dds = volume("dds", dds_spec, None)
            rows.append({"setting": tag, "accel": float(setting["accel"]), "group": vol["group"],
                         "volume": vol["name"], "lam": lam, "interior": interior, "l1": swept[lam], "dds": dds,
                         "sweep": " ".join(f"{v:g}:{swept[v]['PSNR']:.2f}" for v in sorted(swept))})
            print(f"[{time.time() - t0:.0f}s] {tag} {vol['name']}: DDS {dds['PSNR']:.2f}, L1 oracle λ {lam:g} "
                  f"{swept[lam]['PSNR']:.2f} ({'interior' if interior else 'edge'})", flush=True)
    command = "python benchmarks/run_oracle_lambda.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# DDS against L1-wavelet at its interior oracle λ per volume (issue #29's comparison)", "",
             provenance(command)
             + f"- config: `{src}` (its test volumes, acquisitions, ACS maps and methods; groups: "
             f"{', '.join(args.groups)}); prior `{prior_path.name}`; DDS {dds_spec}; L1-wavelet {l1_spec}\n"
             f"- oracle λ: the best fastMRI per-volume PSNR against the noise-free truth on the volume's own slices; "
             f"a best λ at a sweep end widens it (at most {widen} steps), an interior best is refined by half steps\n"
             f"- target per volume: DDS − L1 ≥ +{TARGET_DB[4.0]:g} dB at 4x, +{TARGET_DB[8.0]:g} dB at 8x, "
             f"SSIM ≥ L1's + {TARGET_SSIM:g}; run time {time.time() - t0:.0f} s", "",
             "| setting | group | volume | DDS PSNR / SSIM | L1 oracle λ | L1 PSNR / SSIM | λ check | ΔPSNR | ΔSSIM | "
             "target | L1 sweep (λ:PSNR) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dp, ds = r["dds"]["PSNR"] - r["l1"]["PSNR"], r["dds"]["SSIM"] - r["l1"]["SSIM"]
        ok = dp >= TARGET_DB.get(r["accel"], 3.0) and ds >= TARGET_SSIM
        lines.append(f"| {r['setting']} | {r['group']} | {r['volume']} | {r['dds']['PSNR']:.2f} / "
                     f"{r['dds']['SSIM']:.4f} | {r['lam']:g} | {r['l1']['PSNR']:.2f} / {r['l1']['SSIM']:.4f} | "
                     f"{'interior' if r['interior'] else 'edge'} | {dp:+.2f} | {ds:+.4f} | {'met' if ok else 'missed'} | "
                     f"{r['sweep']} |")
    lines += ["", "## Per group: DDS − L1 (oracle λ per volume), paired per slice", "",
              "| setting | group | n slices (volumes) | ΔPSNR [95 % CI, volume-clustered] | volumes at target |",
              "|---|---|---|---|---|"]
    for setting in cfg["settings"]:
        tag = setting_tag(setting)
        for group in dict.fromkeys(r["group"] for r in rows):
            sel = [r for r in rows if r["setting"] == tag and r["group"] == group]
            if not sel:
                continue
            a = [p for r in sel for p in r["dds"]["slice_psnr"]]
            b = [p for r in sel for p in r["l1"]["slice_psnr"]]
            clusters = [r["volume"] for r in sel for _ in r["dds"]["slice_psnr"]]
            mean, lo, hi = clustered_paired_difference(a, b, clusters, seed=0)
            met = sum(r["dds"]["PSNR"] - r["l1"]["PSNR"] >= TARGET_DB.get(r["accel"], 3.0)
                      and r["dds"]["SSIM"] - r["l1"]["SSIM"] >= TARGET_SSIM for r in sel)
            lines.append(f"| {tag} | {group} | {len(a)} ({len(sel)}) | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                         f"{met} of {len(sel)} |")
    write_report(out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
