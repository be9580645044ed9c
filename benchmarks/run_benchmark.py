"""The benchmark: ``python benchmarks/run_benchmark.py --config configs/bench_<name>.yaml``.

Runs the frozen evaluation protocol a config describes (:mod:`benchmarks.protocol`: tuning slices
choose every swept λ and the DDS std factor, test slices and the real set are scored once, every
method sharing the ACS maps) and writes ``<name>.csv`` (one row per slice and per volume),
``<name>.md`` (tables rendered from the CSV by :mod:`benchmarks.tables`) and the reliability
diagram, stamped with command, machine, versions and seeds.  ``--store-calibration`` writes the
DDS std factor into the prior's sidecar (read by ``reconstruct``).
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

from benchmarks import documents
from benchmarks.documents import RESULTS
from benchmarks.protocol import dds_request, read_csv, run_protocol, training_split_note, validate_protocol, write_csv
from benchmarks.provenance import provenance
from benchmarks.tables import DEFAULT_CSV, render
from mri_score import limits, uncertainty
from mri_score.atomic import atomic_output, check_output_dir
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.config import load_config, require
from mri_score.errors import InputError
from mri_score.prior import default_prior_path, load_prior

ROOT = Path(__file__).resolve().parents[1]


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run the protocol a config describes and write its CSV, tables and figure."""
    ap = one_line_usage_errors(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    ap.add_argument("--config", required=True, help="a protocol config (configs/bench_*.yaml)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"), help="results directory (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--prior", default=None, help="checkpoint to use instead of the config's / the shipped prior")
    ap.add_argument("--store-calibration", action="store_true",
                    help="write the DDS std factor fitted on the tuning slices into the prior's sidecar "
                         "<prior>.calibration.json (read by the reconstruct command)")
    ap.add_argument("--tables", action="store_true",
                    help="then regenerate README's summary and docs/results.md from the new CSV (benchmarks.documents, as "
                         "make_tables.py: the final test's blocks for a config with data.real: final, else the "
                         "development run's)")
    args = ap.parse_args(argv)
    limits.check_threads(args.threads)
    check_output_dir(args.out_dir, [], "--out-dir")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    if args.prior:
        cfg["prior"] = args.prior
    src = str(args.config)
    name = require(cfg, "name", src)
    if "protocol" not in cfg:
        raise InputError(f"{src}: not a protocol config (no 'protocol' section); see benchmarks/README.md")
    validate_protocol(cfg, src)
    if args.tables:  # the documents the tables go into are checked before the run, not after it
        documents.check_documents(final=cfg["data"].get("real") == "final")
    return run_protocol_benchmark(args, cfg, name)


def run_protocol_benchmark(args: argparse.Namespace, cfg: dict, name: str) -> int:
    """Run a frozen-protocol config; write ``<name>.csv``, ``<name>.md`` (tables from the CSV) and the reliability PNG."""
    prior_path = Path(cfg["prior"]) if cfg.get("prior") else default_prior_path()
    prior = load_prior(prior_path) if any(m.startswith("dds") for m in cfg["methods"]) else None
    t0 = time.time()
    rows, cal = run_protocol(cfg, prior, prior_path=prior_path)
    seconds = time.time() - t0
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{name}.csv"
    write_csv(csv_path, rows)
    figs = [reliability_figure(out_dir, name, read_csv(csv_path))] if cal["factors"] else []
    command = f"python benchmarks/run_benchmark.py --config {args.config}" + (
        f" --prior {args.prior}" if args.prior else "") + (" --store-calibration" if args.store_calibration else "") + (
        " --tables" if args.tables else "")
    if args.threads:
        command = f"{command} --threads {args.threads}"
    header = [f"# Benchmark `{name}` (frozen protocol)", "", provenance(command).rstrip("\n"),
              f"- prior: {prior_path.name} (sha256 {uncertainty.file_sha256(prior_path)[:16]}…); "
              f"{training_split_note(getattr(prior, 'meta', None))}",
              *(f"- {m}'s prior: {spec['prior']} (sha256 {uncertainty.file_sha256(spec['prior'])[:16]}…)"
                for m, spec in cfg["methods"].items() if (spec or {}).get("prior")),
              f"- total wall time: {seconds:.0f} s", ""]
    if cal["factors"] and args.store_calibration:
        dds = cfg["methods"]["dds"]
        key = uncertainty.settings_key(dds_request(dds))
        side = uncertainty.store_factor(prior_path, key, cal["factors"][0.9], 0.9, fitted_on=f"{name} tuning slices",
                                        rule="largest per-setting split-conformal factor", pixels=cal["tuning_pixels"])
        header.insert(-1, f"- std calibration stored: {side.name} [{key}] = {cal['factors'][0.9]:.4f}")
    body = render(read_csv(csv_path))
    text = "\n".join(header) + "\n" + body + "".join(f"\n![{f}]({f})\n" for f in figs)
    with atomic_output(out_dir / f"{name}.md") as tmp:
        tmp.write_text(text)
    print(f"wrote {csv_path} and {out_dir / (name + '.md')} in {seconds:.0f} s", flush=True)
    if args.tables:
        if cfg["data"].get("real") == "final":
            documents.regenerate(RESULTS / DEFAULT_CSV, csv_path)
        else:
            documents.regenerate(csv_path, documents.final_csv_path(None))
        print(f"README.md and docs/results.md regenerated from {csv_path}", flush=True)
    return 0


def reliability_figure(out_dir: Path, name: str, rows: list[dict]) -> str:
    """Reliability diagram: nominal vs observed coverage of DDS's raw and calibrated std, per setting and group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = uncertainty.RELIABILITY_LEVELS
    cov = [r for r in rows if r["unit"] == "slice" and r["phase"] == "test" and r.get("std_factor", "") != ""]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0.45, 1.0], [0.45, 1.0], "k--", lw=1, label="calibrated (observed = nominal)")
    groups = sorted({(r["setting"], r["group"], r["label"]) for r in cov})
    for setting, group, lab in groups:
        rs = [r for r in cov if (r["setting"], r["group"], r["label"]) == (setting, group, lab)]
        n = np.array([float(r["n_object"]) for r in rs])
        for kind, style in (("raw", ":"), ("cal", "-")):
            obs = [float(np.sum(n * np.array([float(r[f"cov_{kind}_{round(100 * p)}"]) for r in rs])) / n.sum())
                   for p in levels]
            ax.plot(levels, obs, "o" + style, ms=3, label=f"{setting}, {group.split(' (')[0]}, {lab} ({kind})")
    ax.set_xlabel("nominal coverage of ±z·σ")
    ax.set_ylabel("observed coverage (object pixels, test slices)")
    ax.legend(fontsize=5)
    fig.tight_layout()
    f = f"{name}_reliability.png"
    with atomic_output(out_dir / f) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return f




if __name__ == "__main__":
    sys.exit(main())
