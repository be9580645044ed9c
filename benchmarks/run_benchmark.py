"""Quality / speed / robustness / uncertainty benchmark.

Run: ``python benchmarks/run_benchmark.py --config configs/bench_<name>.yaml`` (or
``python -m benchmarks.run_benchmark …``).

Simulates 8-coil k-space from held-out synthetic volumes (seen contrasts and the
held-out FLAIR family) and from real MR volumes shipped in installed wheels,
undersamples with fastMRI masks, and reconstructs every slice with the
baselines and the score samplers.  Coil maps and intensity scale come from the
ACS only and are shared by all methods.  Writes ``benchmarks/results/<name>.md``,
``<name>.csv`` and ``<name>_*.png``, stamped with command, machine, versions and seeds.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import csv
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import (
    METHODS,
    SCORE_METHODS,
    SWEPT_METHODS,
    PeakMemory,
    build_volumes,
    calibrate_volume,
    check_score_method,
    coverage,
    run_method,
)
from benchmarks.protocol import dds_request, read_csv, run_protocol, training_split_note, validate_protocol, write_csv
from benchmarks.provenance import provenance
from benchmarks.tables import render
from mri_score import baselines, limits, uncertainty
from mri_score.atomic import atomic_output, check_output_dir
from mri_score.cli import exit_on_input_error
from mri_score.config import load_config, require
from mri_score.errors import InputError
from mri_score.metrics import aggregate, volume_metrics
from mri_score.prior import DEFAULT_PRIOR, default_prior_path, load_prior
from mri_score.request import MAGNITUDES
from mri_score.simulation import simulate_volume
from mri_score.supervised import load_unet
from operators import make_mask
from operators.errors import OperatorInputError

ROOT = Path(__file__).resolve().parents[1]


def stamp(args: argparse.Namespace, cfg: dict) -> str:
    """The results' provenance lines: command, machine, versions, seeds, output convention, prior."""
    command = f"python benchmarks/run_benchmark.py --config {args.config}"
    return provenance(command) + (
        f"- seed: {cfg.get('seed', 0)} (data, masks by file name as fastMRI, sampler seed per slice = seed + slice)\n"
        f"- magnitude: {cfg.get('magnitude', 'rss')} (every SENSE-type method; rss = expected RSS of the noisy coil "
        "images, as the fastMRI-style target)\n"
        f"- prior: {cfg.get('prior') or f'shipped default (mri_score/weights/{DEFAULT_PRIOR})'}\n"
    )


def label(row: dict) -> str:
    """Table label of a row: score samplers carry their NFE."""
    if row["method"] in SCORE_METHODS:
        return f"{row['method']} ({row['param']})"
    return row["method"]


def validate_config(cfg: dict, src: str) -> tuple[str, list, dict, str]:
    """``(name, settings, methods, magnitude)`` of a benchmark config, or an :class:`InputError` naming ``src``.

    A config with a ``protocol`` section is a frozen-protocol config (:mod:`benchmarks.protocol`;
    primary output ``sense``).
    """
    name, _, settings, methods = (require(cfg, key, src) for key in ("name", "data", "settings", "methods"))
    if "protocol" in cfg:
        validate_protocol(cfg, src)
        return name, settings, methods, "sense"
    magnitude = str(cfg.get("magnitude", "rss"))
    if magnitude not in MAGNITUDES:
        raise InputError(f"{src}: unknown magnitude {magnitude!r}; choose from {', '.join(MAGNITUDES)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"{src}: unknown methods {unknown}; choose from {', '.join(METHODS)}")
    for m in methods:
        if m in SCORE_METHODS:
            check_score_method(m, methods[m], f"{src}: methods.{m}")
    return name, settings, methods, magnitude


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark a config describes and write its tables and figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prior", default=None, help="checkpoint to use instead of the config's / the shipped prior")
    ap.add_argument("--store-calibration", action="store_true",
                    help="protocol configs: write the DDS std factor fitted on the tuning slices into the prior's "
                         "sidecar <prior>.calibration.json (read by the reconstruct command)")
    args = ap.parse_args(argv)
    limits.check_threads(args.threads)
    check_output_dir(args.out_dir, [], "--out-dir")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    if args.prior:
        cfg["prior"] = args.prior
    src = str(args.config)
    name, settings, methods, magnitude = validate_config(cfg, src)
    if "protocol" in cfg:
        return run_protocol_benchmark(args, cfg, name)
    seed = int(cfg.get("seed", 0))
    models = {"prior": load_prior(cfg.get("prior"))}
    if "unet" in methods:
        models["unet"] = load_unet(str(ROOT / require(cfg, "methods.unet.weights", src)))
    vols = build_volumes(cfg)
    data = cfg["data"]
    rows: list[dict] = []
    skipped: list[str] = []
    panels = {}
    t_start = time.time()
    for setting in settings:
        accel, mtype, cf = float(setting["accel"]), setting["mask"], float(setting.get("center_fraction", 0.08))
        tag = f"{accel:g}x {mtype}"
        for vi, vol in enumerate(vols):
            ksp, target, _ = simulate_volume(vol["images"], int(data.get("coils", 8)), float(data.get("snr", 50)),
                                             seed=seed * 1000 + vi)
            try:
                mask, _ = make_mask(mtype, accel, cf, ksp.shape[-2:], vol["name"])
            except OperatorInputError as err:
                skipped.append(f"{tag} {vol['name']}: {err}")
                print(f"skipped {tag} {vol['name']}: {err}", flush=True)
                continue
            under = (ksp * mask).astype(np.complex64)
            cals, maps_seconds = calibrate_volume(under, mask)
            per_method: dict[tuple, dict] = {}
            for mname, spec in methods.items():
                spec = spec or {}
                if mname in SCORE_METHODS and spec.get("first_volume_only") and vi != 0:
                    continue
                if mname == "bart_pics" and not baselines.bart_available():
                    continue
                with PeakMemory() as mem:
                    results = run_method(mname, spec, under, mask, cals, magnitude, models, seed, vi == 0)
                for r in results:
                    per_method[(r["method"], r["param"])] = {**r, "peak_gb": mem.gb}
            for (method, param), res in per_method.items():
                recon = np.asarray(res["images"], dtype=np.float64)
                row = {"setting": tag, "volume": vol["name"], "group": vol["group"], "method": method, "param": param,
                       **volume_metrics(target, recon), "sec_per_slice": float(np.mean(res["seconds"])),
                       "nfe": res["nfe"], "maps_sec_per_slice": float(np.mean(maps_seconds)),
                       "peak_gb": res["peak_gb"]}
                if res["stds"] is not None:
                    row.update(coverage(target, recon, res["stds"]))
                rows.append(row)
                if vi == 0:
                    panels.setdefault(tag, {"target": target, "zf": None, "methods": {}})
                    panels[tag]["methods"][(method, param)] = (recon, res["stds"])
            print(f"[{time.time() - t_start:.0f}s] {tag} {vol['name']} done", flush=True)
        # results so far are written after every setting, so an interrupted run still leaves its tables
        write_results(Path(args.out_dir), name, rows, panels, stamp(args, cfg), time.time() - t_start, skipped)
    return 0


def run_protocol_benchmark(args: argparse.Namespace, cfg: dict, name: str) -> int:
    """Run a frozen-protocol config; write ``<name>.csv``, ``<name>.md`` (tables from the CSV) and the reliability PNG."""
    prior_path = Path(cfg["prior"]) if cfg.get("prior") else default_prior_path()
    prior = load_prior(prior_path) if "dds" in cfg["methods"] else None
    t0 = time.time()
    rows, cal = run_protocol(cfg, prior)
    seconds = time.time() - t0
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{name}.csv"
    write_csv(csv_path, rows)
    figs = [reliability_figure(out_dir, name, read_csv(csv_path))] if cal["factors"] else []
    command = f"python benchmarks/run_benchmark.py --config {args.config}" + (
        f" --prior {args.prior}" if args.prior else "") + (" --store-calibration" if args.store_calibration else "")
    if args.threads:
        command = f"{command} --threads {args.threads}"
    header = [f"# Benchmark `{name}` (frozen protocol)", "", provenance(command).rstrip("\n"),
              f"- prior: {prior_path.name} (sha256 {uncertainty.file_sha256(prior_path)[:16]}…); "
              f"{training_split_note(getattr(prior, 'meta', None))}",
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


def best_params(rows: list[dict]) -> dict[tuple[str, str], str]:
    """For swept baselines: the parameter with the best mean PSNR per (setting, method), over all volumes."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] in SWEPT_METHODS:
            acc[(r["setting"], r["method"], r["param"])].append(r["PSNR"])
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for (setting, method, param), vals in acc.items():
        m = float(np.mean(vals))
        if (setting, method) not in best or m > best[(setting, method)][0]:
            best[(setting, method)] = (m, param)
    return {k: v[1] for k, v in best.items()}


def robustness_table(rows: list[dict]) -> list[str]:
    """Learned methods vs the best L1-wavelet per (setting, group): PSNR and its gain, mean over volumes.

    The U-Net is trained at 4× equispaced only and the prior never saw FLAIR, so the
    other settings and the held-out group measure how each generalises.
    """
    mean_psnr: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        mean_psnr[(r["setting"], r["group"], label(r))].append(r["PSNR"])
    learned = sorted({lab for (_, _, lab) in mean_psnr if lab == "unet" or lab.startswith("dds")},
                     key=lambda x: (x != "unet", len(x), x))
    if not learned:
        return []
    out = ["## Robustness: learned methods off their training distribution", "",
           "U-Net: trained at 4x equispaced (centre fraction 0.08) on the synthetic corpus; score prior: trained on the "
           "same corpus without masks. FLAIR is held out of both. PSNR (dB) and gain over the best L1-wavelet.", "",
           "| setting | group | L1-wavelet | " + " | ".join(learned) + " |", "|---|---|---|" + "---|" * len(learned)]
    for setting, group in sorted({(s, g) for (s, g, _) in mean_psnr}):
        l1 = mean_psnr.get((setting, group, "l1_wavelet"))
        if not l1:
            continue
        base = float(np.mean(l1))
        cells = []
        for lab in learned:
            v = mean_psnr.get((setting, group, lab))
            cells.append(f"{np.mean(v):.2f} ({np.mean(v) - base:+.2f})" if v else "–")
        out.append(f"| {setting} | {group} | {base:.2f} | " + " | ".join(cells) + " |")
    return out + [""]


def _mean_spread(mean: float, spread: float, digits: int) -> str:
    """``"mean ± spread"``, or ``"mean (n = 1)"`` where one volume leaves the spread undefined (NaN)."""
    if np.isnan(spread):
        return f"{mean:.{digits}f} (n = 1)"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def write_results(out_dir: Path, name: str, rows: list[dict], panels: dict, header: str, seconds: float,
                  skipped: list[str] | None = None) -> None:
    """Write ``<name>.csv``, the markdown tables and the figures into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(out_dir / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    best = best_params(rows)
    kept = [r for r in rows if r["method"] not in SWEPT_METHODS
            or best.get((r["setting"], r["method"])) == r["param"]]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    lines = [f"# Benchmark `{name}`", "", header, f"- total wall time: {seconds:.0f} s; process peak memory {peak_gb:.2f} GB", "",
             "Metrics by the fastMRI protocol (per volume, data range = target max; SSIM per slice averaged), "
             "mean ± 2·std over volumes. Swept baselines (L1-wavelet, TV, BART) are shown at their best λ per "
             "setting, chosen on these same volumes (an optimistic baseline); every λ is in the CSV.", ""]
    groups = sorted({r["group"] for r in rows}, key=lambda g: (g != "synthetic test split", g))
    for group in groups:
        lines += [f"## {group}", "", "| setting | method | PSNR (dB) | SSIM | NMSE | s/slice | NFE | peak GB |",
                  "|---|---|---|---|---|---|---|---|"]
        table: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in kept:
            if r["group"] == group:
                swept = r["method"] in (*SWEPT_METHODS, "cg_sense")
                table[(r["setting"], label(r) + (f" ({r['param']})" if swept else ""))].append(r)
        for (setting, meth), rs in table.items():
            agg = aggregate([{k: r[k] for k in ("PSNR", "SSIM", "NMSE")} for r in rs])
            lines.append(f"| {setting} | {meth} | {_mean_spread(*agg['PSNR'], 2)} | "
                         f"{_mean_spread(*agg['SSIM'], 4)} | {agg['NMSE'][0]:.4f} | "
                         f"{np.mean([r['sec_per_slice'] for r in rs]):.2f} | {rs[0]['nfe']} | "
                         f"{max(r.get('peak_gb', float('nan')) for r in rs):.2f} |")
        lines.append("")
    lines += robustness_table(kept)
    cal = [r for r in rows if "within_1std" in r]
    if cal:
        lines += ["## Uncertainty calibration (object pixels)", "",
                  "| setting | group | method | |err| ≤ 1σ | ≤ 2σ | ≤ 3σ | corr(|err|, σ) |", "|---|---|---|---|---|---|---|"]
        table2: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
        for r in cal:
            table2[(r["setting"], r["group"], label(r))].append(r)
        for (setting, group, meth), rs in table2.items():
            lines.append(f"| {setting} | {group} | {meth} | " + " | ".join(
                f"{np.nanmean([r[k] for r in rs]):.3f}"
                for k in ("within_1std", "within_2std", "within_3std", "corr_err_std")) + " |")
        lines.append("")
    lines += [f"ACS coil maps (ESPIRiT on the ACS region, rectangular for column masks; low-resolution maps for 2-D "
              f"masks with ACS < 16 lines): "
              f"{np.mean([r['maps_sec_per_slice'] for r in rows]):.2f} s/slice, shared by all methods and not "
              "included in their times.", ""]
    if skipped:
        lines += ["Skipped (mask not realisable):", ""] + [f"- {s}" for s in skipped] + [""]
    figs = make_figures(out_dir, name, kept, panels)
    lines += [f"![{f}]({f})" for f in figs]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")


def make_figures(out_dir: Path, name: str, rows: list[dict], panels: dict) -> list[str]:
    """PSNR-vs-cost plot, example panels and the calibration figure; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    settings = sorted({r["setting"] for r in rows})
    for setting in settings:
        pts = defaultdict(list)
        for r in rows:
            if r["setting"] == setting and r["group"] == "synthetic test split":
                pts[(r["method"], r["nfe"])].append((r["PSNR"], r["sec_per_slice"]))
        for method in sorted({m for m, _ in pts}):
            xs = sorted(n for m, n in pts if m == method)
            ps = [np.mean([p for p, _ in pts[(method, n)]]) for n in xs]
            ss = [np.mean([s for _, s in pts[(method, n)]]) for n in xs]
            if method in SCORE_METHODS:
                axes[0].plot(xs, ps, "o-", label=f"{method} {setting}")
            axes[1].plot(ss, ps, "o-" if method in SCORE_METHODS else "s", label=f"{method} {setting}")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("NFE")
    axes[0].set_ylabel("PSNR (dB)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("seconds per slice")
    axes[1].legend(fontsize=6)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    f = f"{name}_psnr_vs_cost.png"
    fig.savefig(out_dir / f, dpi=90)
    plt.close(fig)
    files.append(f)
    for tag, p in list(panels.items())[:2]:
        items = [("target", p["target"], None)]
        for (method, param), (recon, std) in p["methods"].items():
            if method in SWEPT_METHODS and not any(
                    r["setting"] == tag and r["method"] == method and r["param"] == param for r in rows):
                continue
            items.append((f"{method} {param}", recon, std))
        n = len(items)
        fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 6.6))
        t = p["target"]
        i = t.shape[0] // 2
        vmax = float(np.percentile(t[i], 99.5))
        for j, (title, img, std) in enumerate(items):
            axes[0, j].imshow(img[i], cmap="gray", vmin=0, vmax=vmax)
            axes[0, j].set_title(title, fontsize=7)
            if j:
                axes[1, j].imshow(np.abs(img[i] - t[i]), cmap="magma", vmin=0, vmax=0.2 * vmax)
                axes[1, j].set_title("|error|", fontsize=6)
            if std is not None:
                axes[2, j].imshow(std[i], cmap="magma", vmin=0, vmax=0.2 * vmax)
                axes[2, j].set_title("posterior std", fontsize=6)
            for a in axes[:, j]:
                a.axis("off")
        fig.suptitle(f"{tag}: target and reconstructions (top), |error| (middle), posterior std (bottom); "
                     "error and std on the same scale (20 % of the target's 99.5th percentile)", fontsize=8)
        fig.tight_layout()
        f = f"{name}_panel_{tag.replace(' ', '_')}.png"
        fig.savefig(out_dir / f, dpi=90)
        plt.close(fig)
        files.append(f)
    cal = [r for r in rows if "within_1std" in r]
    if cal:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        ks = (1, 2, 3)
        axes[0].plot(ks, [0.683, 0.954, 0.997], "k--", label="calibrated Gaussian")
        by: dict[str, list[dict]] = defaultdict(list)
        for r in cal:
            by[label(r)].append(r)
        for j, (meth, rs) in enumerate(sorted(by.items())):
            axes[0].plot(ks, [np.nanmean([r[f"within_{k}std"] for r in rs]) for k in ks], "o-", label=meth)
            axes[1].bar(j, np.nanmean([r["corr_err_std"] for r in rs]))
        axes[0].set_xticks(ks)
        axes[0].set_xlabel("k")
        axes[0].set_ylabel("fraction of object pixels with |error| ≤ k·std")
        axes[0].legend(fontsize=6)
        axes[1].set_xticks(range(len(by)))
        axes[1].set_xticklabels(sorted(by), rotation=45, ha="right", fontsize=6)
        axes[1].set_ylabel("corr(|error|, std)")
        fig.suptitle("uncertainty calibration, all settings and volumes", fontsize=8)
        fig.tight_layout()
        f = f"{name}_calibration.png"
        fig.savefig(out_dir / f, dpi=90)
        plt.close(fig)
        files.append(f)
    return files


if __name__ == "__main__":
    sys.exit(main())
