"""``python benchmarks/run_std_rank_probe.py``: how well can a std map say *where* the errors are?

The protocol reports the Spearman rank correlation of ``|error|`` and DDS's std over the object pixels of each
slice (:func:`mri_score.uncertainty.rank_correlation`); the evidence issue aims at 0.5.  This probe, on the
development data only (the ``--config`` protocol's test volumes: synthetic in-distribution, anatomy shift and
the real development set, every ``--stride``-th slice), reports the median per-slice rank correlation of

* the **raw** K-sample std (what ``reconstruct`` writes, before its calibration factor, which does not change
  ranks);
* the std **pooled** over ``w × w`` windows (:func:`mri_score.uncertainty.pooled_std`, ``--windows``);
* an **oracle**: the error itself pooled over 5 × 5 windows. No estimate of the error's local scale can be
  expected to do better than the error's own local RMS, so this row bounds what a better std map could reach at
  the per-pixel level.

DDS as the protocol runs it (``methods.dds`` of ``--config``: NFE, K, grid), shared ACS maps.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys

import numpy as np
import torch

from benchmarks.harness import write_report
from benchmarks.protocol import acquire, protocol_volumes, setting_tag, solve, validate_protocol
from benchmarks.provenance import provenance
from mri_score import limits, uncertainty
from mri_score.atomic import check_output
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.config import load_config
from mri_score.errors import InputError
from mri_score.prior import ComplexPrior, default_prior_path, load_prior

#: The oracle's window (pixels).
ORACLE_WINDOW = 5


def slice_correlations(truth: np.ndarray, recon: np.ndarray, std: np.ndarray, windows: list[int]) -> dict[str, float]:
    """Rank correlations of ``|recon − truth|`` with the raw std, each pooled std and the pooled-error oracle."""
    out = {"raw": uncertainty.rank_correlation(truth, recon, std)}
    for w in windows:
        out[f"pooled {w}x{w}"] = uncertainty.rank_correlation(truth, recon, uncertainty.pooled_std(std, w))
    err = np.abs(np.asarray(recon, np.float64) - np.asarray(truth, np.float64))
    out[f"oracle (|error| pooled {ORACLE_WINDOW}x{ORACLE_WINDOW})"] = uncertainty.rank_correlation(
        truth, recon, uncertainty.pooled_std(err, ORACLE_WINDOW))
    return out


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run DDS on the development test volumes and write the rank-correlation table."""
    ap = one_line_usage_errors(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    ap.add_argument("--config", default="configs/bench_dev.yaml", help="a development protocol config")
    ap.add_argument("--windows", default="3,5,9", help="comma-separated variance-pooling windows (odd, >= 3)")
    ap.add_argument("--stride", type=int, default=4, help="every STRIDE-th slice of each volume")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/std_rank_probe.md")
    args = ap.parse_args(argv)
    limits.check_int(args.stride, "--stride", 1, 1000)
    limits.check_threads(args.threads)
    check_output(args.out)
    try:
        windows = [int(w) for w in args.windows.split(",")]
    except ValueError:
        raise InputError(f"--windows: comma-separated integers, got {args.windows!r}") from None
    for w in windows:
        if w < 3 or w % 2 == 0 or w > 63:
            raise InputError(f"--windows: odd windows from 3 to 63, got {w}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    validate_protocol(cfg, args.config)
    if cfg["data"].get("real") == "final":
        raise InputError(f"{args.config}: probes read the development data only, never the final test set")
    spec = cfg["methods"].get("dds")
    if spec is None:
        raise InputError(f"{args.config}: no methods.dds entry to probe")
    prior_path = cfg.get("prior") or default_prior_path()
    prior = ComplexPrior(load_prior(prior_path))
    data = cfg["data"]
    vols = [v for v in protocol_volumes(cfg) if v["phase"] == "test"]
    table: dict[tuple[str, str], list[dict[str, float]]] = {}
    for setting in cfg["settings"]:
        tag = setting_tag(setting)
        for v in vols:
            acq = acquire(v, setting, int(data.get("coils", 8)), float(data.get("snr", 100)))
            if acq is None:
                continue
            for s in range(0, acq["under"].shape[0], args.stride):
                out = solve("dds", spec, None, acq, s, "acs", prior, v["seed"])
                if out["std"] is None:
                    raise InputError(f"{args.config}: methods.dds has K = 1: no std to probe")
                table.setdefault((tag, v["group"]), []).append(
                    slice_correlations(acq["truth"][s], out["primary"], np.asarray(out["std"]), windows) | {"volume": v["name"]})
            print(f"{tag} | {v['name']} | {len(table.get((tag, v['group']), []))} slices so far", flush=True)
    command = "python benchmarks/run_std_rank_probe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    keys = ["raw", *(f"pooled {w}x{w}" for w in windows), f"oracle (|error| pooled {ORACLE_WINDOW}x{ORACLE_WINDOW})"]
    lines = ["# How informative can the std map be? Rank correlation of |error| and std (development data)", "",
             provenance(command).rstrip("\n"),
             f"- config: `{args.config}` (test volumes of the development protocol; every {args.stride}-th slice); DDS "
             f"NFE {spec.get('nfe')}, K = {spec.get('samples')}, grid {spec.get('grid', 'native')}, ACS maps, "
             "sampler seed 0 + slice",
             "- per slice: Spearman rank correlation of |error| and the map over the truth's object pixels; the "
             "table gives the median over slices (range in brackets)", "",
             "| setting | test set | slices (volumes) | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for (tag, group), rows in table.items():
        cells = []
        for k in keys:
            vals = np.array([r[k] for r in rows], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            cells.append(f"{np.median(vals):.2f} [{vals.min():.2f}, {vals.max():.2f}]" if vals.size else "–")
        nvol = len({r["volume"] for r in rows})
        lines.append(f"| {tag} | {group} | {len(rows)} ({nvol}) | " + " | ".join(cells) + " |")
    write_report(args.out, lines + [""])
    return 0


if __name__ == "__main__":
    sys.exit(main())
