"""Quality / speed / robustness / uncertainty benchmark.

Run: ``python benchmarks/run_benchmark.py --config configs/bench_<name>.yaml``.

Simulates 8-coil k-space from held-out synthetic volumes (seen contrasts and the
held-out FLAIR family) and from real MR volumes shipped in installed wheels,
undersamples with fastMRI masks, and reconstructs every slice with the
baselines and the score samplers.  Coil maps and intensity scale come from the
ACS only and are shared by all methods.  Writes ``benchmarks/results/<name>.md``,
``<name>.csv`` and ``<name>_*.png``, stamped with command, machine, versions and seeds.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import provenance  # noqa: E402
from mri_score import baselines  # noqa: E402
from mri_score.config import load_config, require  # noqa: E402
from mri_score.errors import InputError, exit_on_input_error  # noqa: E402
from mri_score.metrics import aggregate, volume_metrics  # noqa: E402
from mri_score.posterior import MAGNITUDES, SamplerSettings, estimate_sigma_y, output_magnitude, reconstruct_slice  # noqa: E402
from mri_score.prior import load_prior  # noqa: E402
from mri_score.scaling import kspace_scale  # noqa: E402
from mri_score.simulate import corpus_volume, make_mask, simulate_volume  # noqa: E402
from mri_score.supervised import load_unet, unet_reconstruct  # noqa: E402
from operators import estimate_maps  # noqa: E402

SCORE_METHODS = ("dds", "langevin", "pc", "dps")
METHODS = ("zero_filled", "cg_sense", "unet", "l1_wavelet", "tv", "bart_pics", *SCORE_METHODS)


def real_volume(name: str, slices: int) -> np.ndarray:
    """Real MR images from installed packages: ``nibabel_example4d`` (a 128×96 brain EPI, nibabel's test data)."""
    if name != "nibabel_example4d":
        raise InputError(f"unknown real volume {name!r}")
    import nibabel as nib

    path = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    vol = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))[..., 0]
    imgs = np.moveaxis(vol, -1, 0)  # (24, 128, 96)
    mid = imgs.shape[0] // 2
    lo = mid - slices // 2
    return imgs[lo : lo + slices].astype(np.complex64)


def build_volumes(cfg: dict) -> list[dict]:
    data = cfg["data"]
    seed = int(cfg.get("seed", 0))
    vols = []
    for i, spec in enumerate(data.get("volumes", [])):
        imgs = corpus_volume("test", int(spec.get("index", i)), int(data["slices"]), tuple(data["size"]),
                             spec["family"], seed)
        group = "held-out contrast (FLAIR)" if spec["family"] == "flair" else "synthetic test split"
        vols.append({"name": f"synth_{spec['family']}_{i:02d}.h5", "images": imgs, "group": group})
    for name in data.get("real", []):
        vols.append({"name": f"{name}.h5", "images": real_volume(name, int(data["slices"])), "group": "real MR (unseen)"})
    return vols


class PeakMemory:
    """Peak resident memory of this process above its level at entry, in GB (sampled every 5 ms from /proc)."""

    def __enter__(self) -> PeakMemory:
        self._base = self._rss()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # no /proc (macOS): fall back to the process peak, a coarse upper bound
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        self.gb = (self._peak - self._base) / 2**30


def run_methods(ks: np.ndarray, mask: np.ndarray, maps: torch.Tensor, models: dict, methods: dict, seed: int,
                first_volume: bool, magnitude: str = "rss") -> list[dict]:
    """Every configured method on one slice: ``[{method, param, image, seconds, nfe, std, peak_gb}]``.

    Every SENSE-type method (CG-SENSE, L1, TV, BART, the samplers) is reported in the
    same ``magnitude`` convention (see :func:`mri_score.posterior.output_magnitude`).
    """
    out = []
    scale = float(kspace_scale(torch.from_numpy(ks), torch.from_numpy(mask), maps))
    sigma_y = estimate_sigma_y(torch.from_numpy(ks), torch.from_numpy(mask))
    for name, spec in methods.items():
        spec = spec or {}
        if name in SCORE_METHODS and spec.get("first_volume_only") and not first_volume:
            continue
        if name == "bart_pics" and not baselines.bart_available():
            continue
        with PeakMemory() as mem:
            rows = run_method(name, spec, ks, mask, maps, scale, sigma_y, magnitude, models, seed, first_volume)
        for r in rows:
            r["peak_gb"] = mem.gb
        out += rows
    return out


def run_method(name: str, spec: dict, ks: np.ndarray, mask: np.ndarray, maps: torch.Tensor, scale: float,
                sigma_y: float, magnitude: str, models: dict, seed: int, first_volume: bool) -> list[dict]:
    """One method (all its swept λ or NFE budgets) on one slice; ``scale`` (the ACS reference scale) and
    ``sigma_y`` (the k-space noise std) are computed once per slice and shared by every method."""

    def to_magnitude(img: np.ndarray) -> np.ndarray:
        return output_magnitude(torch.from_numpy(np.asarray(img, dtype=np.complex64)), maps, sigma_y, magnitude).numpy()

    out = []
    maps_np = maps.numpy()
    t0 = time.perf_counter()
    if name == "zero_filled":
        out.append({"method": name, "param": "", "image": baselines.zero_filled_rss(ks, mask),
                    "seconds": time.perf_counter() - t0, "nfe": 0})
    elif name == "cg_sense":
        img = baselines.cg_sense(ks, mask, maps_np, scale, spec.get("lam", 1e-3), spec.get("iters", 30))
        out.append({"method": name, "param": f"lam={spec.get('lam', 1e-3)}", "image": to_magnitude(img),
                    "seconds": time.perf_counter() - t0, "nfe": 0})
    elif name == "unet":
        img = unet_reconstruct(models["unet"], torch.from_numpy(ks), torch.from_numpy(mask), maps)
        out.append({"method": name, "param": "", "image": img.numpy(), "seconds": time.perf_counter() - t0,
                    "nfe": 0})
    elif name in ("l1_wavelet", "tv", "bart_pics"):
        for lam in spec["lams"]:
            t0 = time.perf_counter()
            if name == "l1_wavelet":
                img = baselines.l1_wavelet(ks, mask, maps_np, scale, lam, spec.get("iters", 100))
            elif name == "tv":
                img = baselines.total_variation(ks, mask, maps_np, scale, lam, spec.get("iters", 100))
            else:
                img = baselines.bart_pics(ks, mask, scale, lam, spec.get("iters", 100))
            out.append({"method": name, "param": f"lam={lam}", "image": to_magnitude(img),
                        "seconds": time.perf_counter() - t0, "nfe": 0})
    elif name in SCORE_METHODS:
        budgets = spec["nfe"] if isinstance(spec["nfe"], list) else [spec["nfe"]]
        budgets = budgets + (list(spec.get("nfe_first_volume", [])) if first_volume else [])
        for nfe in budgets:
            settings = SamplerSettings(sampler=name, steps=int(nfe), samples=int(spec.get("samples", 2)),
                                       seed=seed, sigma_y=sigma_y, magnitude=magnitude,
                                       options=dict(spec.get("options", {})))
            res = reconstruct_slice(torch.from_numpy(ks), torch.from_numpy(mask), models["prior"], settings,
                                    maps=maps)
            out.append({"method": name, "param": f"NFE={res.nfe}", "image": res.image.numpy(),
                        "std": res.std.numpy(), "seconds": res.seconds, "nfe": res.nfe})
    return out


def calibration(target: np.ndarray, recon: np.ndarray, std: np.ndarray) -> dict:
    """Over object pixels (target > 5 % of max): fraction with |error| ≤ k·std (k = 1, 2, 3) and corr(|error|, std)."""
    sel = target > 0.05 * target.max()
    err = np.abs(target - recon)[sel]
    s = std[sel]
    out = {f"within_{k}std": float(np.mean(err <= k * s)) for k in (1, 2, 3)}
    out["corr_err_std"] = float(np.corrcoef(err, s)[0, 1]) if s.std() > 0 else float("nan")
    return out


def stamp(args: argparse.Namespace, cfg: dict) -> str:
    command = f"python benchmarks/run_benchmark.py --config {args.config}"
    return provenance(command) + (
        f"- seed: {cfg.get('seed', 0)} (data, masks by file name as fastMRI, sampler seed per slice = seed + slice)\n"
        f"- magnitude: {cfg.get('magnitude', 'rss')} (every SENSE-type method; rss = expected RSS of the noisy coil "
        "images, as the fastMRI-style target)\n"
        f"- prior: {cfg.get('prior') or 'shipped default (mri_score/weights/prior_brain_synth.safetensors)'}\n"
    )


def label(row: dict) -> str:
    if row["method"] in SCORE_METHODS:
        return f"{row['method']} ({row['param']})"
    return row["method"]


def validate_config(cfg: dict, src: str) -> tuple[str, list, dict, str]:
    """``(name, settings, methods, magnitude)`` of a benchmark config, or an :class:`InputError` naming ``src``."""
    name, _, settings, methods = (require(cfg, key, src) for key in ("name", "data", "settings", "methods"))
    magnitude = str(cfg.get("magnitude", "rss"))
    if magnitude not in MAGNITUDES:
        raise InputError(f"{src}: unknown magnitude {magnitude!r}; choose from {', '.join(MAGNITUDES)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"{src}: unknown methods {unknown}; choose from {', '.join(METHODS)}")
    return name, settings, methods, magnitude


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prior", default=None, help="checkpoint to use instead of the config's / the shipped prior")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    if args.prior:
        cfg["prior"] = args.prior
    src = str(args.config)
    name, settings, methods, magnitude = validate_config(cfg, src)
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
            except (InputError, ValueError) as err:
                skipped.append(f"{tag} {vol['name']}: {err}")
                print(f"skipped {tag} {vol['name']}: {err}", flush=True)
                continue
            per_method: dict[tuple, dict] = defaultdict(lambda: {"images": [], "stds": [], "seconds": [], "nfe": 0})
            maps_seconds = []
            for s in range(ksp.shape[0]):
                ks = (ksp[s] * mask).astype(np.complex64)
                t0 = time.perf_counter()
                maps = estimate_maps(torch.from_numpy(ks), torch.from_numpy(mask))
                maps_seconds.append(time.perf_counter() - t0)
                for r in run_methods(ks, mask, maps, models, methods, seed + s, vi == 0, magnitude):
                    key = (r["method"], r["param"])
                    per_method[key]["peak_gb"] = max(per_method[key].get("peak_gb", 0.0), r["peak_gb"])
                    per_method[key]["images"].append(r["image"])
                    per_method[key]["stds"].append(r.get("std"))
                    per_method[key]["seconds"].append(r["seconds"])
                    per_method[key]["nfe"] = r["nfe"]
            for (method, param), res in per_method.items():
                recon = np.stack(res["images"]).astype(np.float64)
                row = {"setting": tag, "volume": vol["name"], "group": vol["group"], "method": method, "param": param,
                       **volume_metrics(target, recon), "sec_per_slice": float(np.mean(res["seconds"])),
                       "nfe": res["nfe"], "maps_sec_per_slice": float(np.mean(maps_seconds)),
                       "peak_gb": res["peak_gb"]}
                if res["stds"][0] is not None:
                    row.update(calibration(target, recon, np.stack(res["stds"])))
                rows.append(row)
                if vi == 0:
                    panels.setdefault(tag, {"target": target, "zf": None, "methods": {}})
                    std_vol = np.stack(res["stds"]) if res["stds"][0] is not None else None
                    panels[tag]["methods"][(method, param)] = (recon, std_vol)
            print(f"[{time.time() - t_start:.0f}s] {tag} {vol['name']} done", flush=True)
        # results so far are written after every setting, so an interrupted run still leaves its tables
        write_results(Path(args.out_dir), name, rows, panels, stamp(args, cfg), time.time() - t_start, skipped)
    return 0


def best_params(rows: list[dict]) -> dict[tuple[str, str], str]:
    """For swept baselines: the parameter with the best mean PSNR per (setting, method), over all volumes."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] in ("l1_wavelet", "tv", "bart_pics"):
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


def write_results(out_dir: Path, name: str, rows: list[dict], panels: dict, header: str, seconds: float,
                  skipped: list[str] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(out_dir / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    best = best_params(rows)
    kept = [r for r in rows if r["method"] not in ("l1_wavelet", "tv", "bart_pics")
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
                swept = r["method"] in ("l1_wavelet", "tv", "bart_pics", "cg_sense")
                table[(r["setting"], label(r) + (f" ({r['param']})" if swept else ""))].append(r)
        for (setting, meth), rs in table.items():
            agg = aggregate([{k: r[k] for k in ("PSNR", "SSIM", "NMSE")} for r in rs])
            lines.append(f"| {setting} | {meth} | {agg['PSNR'][0]:.2f} ± {agg['PSNR'][1]:.2f} | "
                         f"{agg['SSIM'][0]:.4f} ± {agg['SSIM'][1]:.4f} | {agg['NMSE'][0]:.4f} | "
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
    lines += [f"ACS coil maps (ESPIRiT, or low-resolution maps for ACS < 16 lines): "
              f"{np.mean([r['maps_sec_per_slice'] for r in rows]):.2f} s/slice, shared by all methods and not "
              "included in their times.", ""]
    if skipped:
        lines += ["Skipped (mask not realisable):", ""] + [f"- {s}" for s in skipped] + [""]
    figs = make_figures(out_dir, name, kept, panels)
    lines += [f"![{f}]({f})" for f in figs]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")


def make_figures(out_dir: Path, name: str, rows: list[dict], panels: dict) -> list[str]:
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
            if method in ("l1_wavelet", "tv", "bart_pics") and not any(
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
