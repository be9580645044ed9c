"""The protocol report, rendered from its results CSV alone (so the README's tables can be regenerated).

:func:`render` is a pure function of the CSV rows (strings, as :func:`benchmarks.protocol.read_csv`
returns them): the same CSV gives the same text, byte for byte (bootstrap seeded).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from benchmarks.stats import LEVEL, RESAMPLES, clustered_mean_ci, clustered_paired_difference, select_parameter

#: Seed of every bootstrap in the report.
BOOTSTRAP_SEED = 0
#: The results CSV of the default prior's protocol run (README results block, real-set panels).
DEFAULT_CSV = "bench_dev.csv"
#: The results CSV of the registered final test (read once; README summary and its own report block when present).
FINAL_CSV = "bench_final.csv"
#: Nominal coverage the report checks the calibrated std against, and the tolerance (points).
NOMINAL, TOLERANCE = 0.9, 0.05
#: The methods under test (never a baseline), with their ablation variants ``dds:<name>``.
LEARNED = ("dds", "dds_fp32")


def _learned(method: str) -> bool:
    return method.split(":", 1)[0] in LEARNED


def _f(r: dict, key: str) -> float:
    v = r.get(key, "")
    return float(v) if v not in ("", None) else float("nan")


def _ci(v: tuple[float, float, float], digits: int) -> str:
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"


def _order(settings: list[str]) -> list[str]:
    return sorted(set(settings), key=lambda s: (float(s.split("x")[0]), s))


def selection(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (setting, swept method): the λ sweep, the chosen λ (best mean clean-truth PSNR on tuning slices), its position."""
    acc: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["phase"] == "tuning" and r["lam"] != "":
            acc[(r["setting"], r["method"])][float(r["lam"])].append(_f(r, "PSNR"))
    out = {}
    for key, scores in acc.items():
        lam, where = select_parameter(scores)
        out[key] = {"lams": sorted(scores), "lam": lam, "where": where, "psnr": float(np.mean(scores[lam]))}
    return out


def best_baseline(rows: list[dict], setting: str) -> str | None:
    """The swept baseline (at its chosen λ) with the best mean clean-truth PSNR on the tuning slices (None: none ran).

    Only swept methods run on the tuning slices; zero-filled, never the best, is not a candidate.
    """
    sel = selection(rows)
    cands: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["phase"] != "tuning" or r["setting"] != setting or _learned(r["method"]):
            continue
        if r["lam"] != "" and float(r["lam"]) != sel[(setting, r["method"])]["lam"]:
            continue
        cands[r["label"]].append(_f(r, "PSNR"))
    if not cands:
        return None
    return max(sorted(cands), key=lambda k: float(np.mean(cands[k])))


def render(rows: list[dict]) -> str:
    """The protocol report (markdown) of a results CSV's rows."""
    slices = [r for r in rows if r["unit"] == "slice"]
    test = [r for r in slices if r["phase"] == "test"]
    vols = [r for r in rows if r["unit"] == "volume"]
    settings = _order([r["setting"] for r in rows])
    groups = sorted({r["group"] for r in test}, key=lambda g: (not g.startswith("synthetic"), g))
    sel = selection(rows)
    units = {g: sorted({(r["volume"], r["slice"]) for r in test if r["group"] == g}) for g in groups}
    tune_units = sorted({(r["volume"], r["slice"]) for r in slices if r["phase"] == "tuning"})
    subj = {g: sorted({r["subject"] for r in test if r["group"] == g and r["subject"] != ""}) for g in groups}
    lines = ["### Protocol", "",
             f"- tuning: {len(tune_units)} synthetic slices of held-out subjects "
             f"{', '.join(sorted({r['subject'] for r in slices if r['phase'] == 'tuning'}, key=int))} "
             "(other subjects, slice positions and seeds than the test slices; never a real image)"]
    for g in groups:
        who = f" of {len(subj[g])} held-out subjects" if subj[g] else ""
        lines.append(f"- test, {g}: {len(units[g])} slices{who} "
                     f"({len({v for v, _ in units[g]})} volumes)")
    lines += [f"- metrics per slice (each slice scored as a one-slice fastMRI volume); n = slices (volumes); mean and "
              f"{LEVEL:.0%} interval of a volume-clustered bootstrap (volumes resampled, then slices within each; "
              f"{RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); Δ = paired difference against the best baseline "
              "(chosen on the tuning slices), same slices, clustered the same way; 'per volume' = fastMRI "
              "per-volume PSNR, mean ± sample std over volumes",
              "- every λ chosen on the tuning slices by mean clean-truth PSNR and applied unchanged to the test "
              "slices and the real set; DDS has no tuned parameter (its std factor is fitted on the tuning slices)", ""]
    for setting in settings:
        ref = best_baseline(rows, setting)
        for g in groups:
            lines += [f"### {setting}, {g}: |x| against the noise-free truth (primary)", "",
                      f"| method | n (volumes) | PSNR (dB) | SSIM | NMSE | PSNR object (dB) | ΔPSNR vs {ref} | ΔSSIM vs {ref} | "
                      "per volume PSNR | s/slice | λ |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            by = _by_label(test, setting, g)
            for lab, rs in by.items():
                rs = sorted(rs, key=lambda r: (r["volume"], int(r["slice"])))
                psnr, ssim = [_f(r, "PSNR") for r in rs], [_f(r, "SSIM") for r in rs]
                diff_p = diff_s = "–"
                if ref in by and lab != ref:
                    base = {(r["volume"], r["slice"]): r for r in by[ref]}
                    paired = [(r, base[(r["volume"], r["slice"])]) for r in rs if (r["volume"], r["slice"]) in base]
                    if paired:
                        vols_p = [a["volume"] for a, _ in paired]
                        diff_p = _ci(clustered_paired_difference([_f(a, "PSNR") for a, _ in paired],
                                                                 [_f(b, "PSNR") for _, b in paired], vols_p,
                                                                 seed=BOOTSTRAP_SEED), 2)
                        diff_s = _ci(clustered_paired_difference([_f(a, "SSIM") for a, _ in paired],
                                                                 [_f(b, "SSIM") for _, b in paired], vols_p,
                                                                 seed=BOOTSTRAP_SEED), 4)
                pv = [_f(r, "PSNR") for r in vols if r["setting"] == setting and r["group"] == g and r["label"] == lab]
                pv_s = f"{np.mean(pv):.2f} ± {np.std(pv, ddof=1):.2f} (n={len(pv)})" if len(pv) > 1 else (
                    f"{pv[0]:.2f} (n=1)" if pv else "–")
                lam = rs[0]["lam"]
                lam_s = "–"
                if lam != "":
                    where = sel.get((setting, rs[0]["method"]), {}).get("where", "")
                    lam_s = f"{float(lam):g}" + ("" if where == "interior" else f" ({where})")
                vl = [r["volume"] for r in rs]
                lines.append(f"| {lab} | {len(rs)} ({len(set(vl))}) | "
                             f"{_ci(clustered_mean_ci(psnr, vl, seed=BOOTSTRAP_SEED), 2)} | "
                             f"{_ci(clustered_mean_ci(ssim, vl, seed=BOOTSTRAP_SEED), 4)} | "
                             f"{np.mean([_f(r, 'NMSE') for r in rs]):.4f} | "
                             f"{np.mean([_f(r, 'PSNR_object') for r in rs]):.2f} | {diff_p} | {diff_s} | {pv_s} | "
                             f"{np.median([_f(r, 'seconds') for r in rs]):.2f} | {lam_s} |")
            lines.append("")
    lines += ["### Secondary: expected-RSS output against the noisy RSS target (fastMRI-style target)", "",
              "| setting | group | method | n | PSNR (dB) | SSIM | NMSE |", "|---|---|---|---|---|---|---|"]
    for setting in settings:
        for g in groups:
            for lab, rs in _by_label(test, setting, g).items():
                rs = sorted(rs, key=lambda r: (r["volume"], int(r["slice"])))
                vl = [r["volume"] for r in rs]
                lines.append(f"| {setting} | {g} | {lab} | {len(rs)} ({len(set(vl))}) | "
                             f"{_ci(clustered_mean_ci([_f(r, 'PSNR_rss') for r in rs], vl, seed=BOOTSTRAP_SEED), 2)} | "
                             f"{_ci(clustered_mean_ci([_f(r, 'SSIM_rss') for r in rs], vl, seed=BOOTSTRAP_SEED), 4)} | "
                             f"{np.mean([_f(r, 'NMSE_rss') for r in rs]):.4f} |")
    lines += ["", *per_volume_lines(vols, settings, groups)]
    lines += ["", "### λ selection (tuning slices, clean-truth PSNR)", "",
              "| setting | method | λ swept | chosen λ | tuning PSNR (dB) | position |", "|---|---|---|---|---|---|"]
    for (setting, method), s in sorted(sel.items(), key=lambda kv: (settings.index(kv[0][0]), kv[0][1])):
        flag = s["where"] if s["where"] == "interior" else f"**{s['where']}**"
        lines.append(f"| {setting} | {method} | {', '.join(f'{v:g}' for v in s['lams'])} | {s['lam']:g} | "
                     f"{s['psnr']:.2f} | {flag} |")
    lines += ["", *coverage_lines(slices, settings), "", *timing_lines(test, settings)]
    return "\n".join(lines) + "\n"


def per_volume_lines(vols: list[dict], settings: list[str], groups: list[str],
                     reference: str = "l1_wavelet") -> list[str]:
    """DDS (shared maps) against ``reference`` per test volume: fastMRI per-volume PSNR and SSIM and their differences.

    The targets are stated per volume against L1-wavelet at its tuned λ; this table is where they are read.
    """
    lines = [f"### DDS against {reference} per volume (fastMRI per-volume metrics, shared maps)", "",
             f"| setting | group | volume | DDS PSNR (dB) | {reference} PSNR (dB) | ΔPSNR | DDS SSIM | ΔSSIM |",
             "|---|---|---|---|---|---|---|---|"]
    for setting in settings:
        for g in groups:
            mine = {r["volume"]: r for r in vols if (r["setting"], r["group"], r["method"], r["maps"]) ==
                    (setting, g, "dds", "acs")}
            theirs = {r["volume"]: r for r in vols if (r["setting"], r["group"], r["method"], r["maps"]) ==
                      (setting, g, reference, "acs")}
            for v in sorted(set(mine) & set(theirs)):
                a, b = mine[v], theirs[v]
                lines.append(f"| {setting} | {g} | {v.removesuffix('.h5')} | {_f(a, 'PSNR'):.2f} | {_f(b, 'PSNR'):.2f} | "
                             f"{_f(a, 'PSNR') - _f(b, 'PSNR'):+.2f} | {_f(a, 'SSIM'):.4f} | "
                             f"{_f(a, 'SSIM') - _f(b, 'SSIM'):+.4f} |")
    return lines


def render_summary(rows: list[dict]) -> str:
    """The README's short results table: DDS against the strongest baseline of each test set, per setting and group.

    The strongest baseline is the non-learned method (zero-filled excluded) with the highest mean clean-truth PSNR
    on that test set's own slices (a stricter reference than the one chosen on the tuning slices); Δ is paired
    per slice with a volume-clustered interval, and the per-volume range shows where DDS wins least.
    """
    test = [r for r in rows if r["unit"] == "slice" and r["phase"] == "test" and r["maps"] != "oracle"]
    vols = [r for r in rows if r["unit"] == "volume" and r["maps"] != "oracle"]
    settings = _order([r["setting"] for r in test])
    groups = sorted({r["group"] for r in test}, key=lambda g: (not g.startswith("synthetic"), g))
    lines = ["| setting | test set | n (volumes) | DDS PSNR (dB) | DDS SSIM | strongest baseline | its PSNR (dB) | "
             "ΔPSNR [95 % CI] | ΔPSNR per volume (min … max) | ΔSSIM |", "|---|---|---|---|---|---|---|---|---|---|"]
    for setting in settings:
        for g in groups:
            by = _by_label(test, setting, g)
            dds = [lab for lab in by if by[lab][0]["method"] == "dds"]
            base = {lab: rs for lab, rs in by.items()
                    if not _learned(by[lab][0]["method"]) and by[lab][0]["method"] != "zero_filled"}
            if not dds or not base:
                continue
            lab = dds[0]
            ref = max(sorted(base), key=lambda k: float(np.mean([_f(r, "PSNR") for r in base[k]])))
            mine = {(r["volume"], r["slice"]): r for r in by[lab]}
            theirs = {(r["volume"], r["slice"]): r for r in base[ref]}
            keys = sorted(set(mine) & set(theirs), key=lambda k: (k[0], int(k[1])))
            vl = [k[0] for k in keys]
            d = clustered_paired_difference([_f(mine[k], "PSNR") for k in keys], [_f(theirs[k], "PSNR") for k in keys],
                                            vl, seed=BOOTSTRAP_SEED)
            ds = np.mean([_f(mine[k], "SSIM") - _f(theirs[k], "SSIM") for k in keys])
            per_vol = []
            for v in sorted(set(vl)):
                a = [_f(r, "PSNR") for r in vols if (r["setting"], r["group"], r["volume"], r["label"]) == (setting, g, v, lab)]
                b = [_f(r, "PSNR") for r in vols if (r["setting"], r["group"], r["volume"], r["label"]) == (setting, g, v, ref)]
                if a and b:
                    per_vol.append(a[0] - b[0])
            rng = f"{min(per_vol):+.2f} … {max(per_vol):+.2f}" if per_vol else "–"
            lines.append(f"| {setting} | {g} | {len(keys)} ({len(set(vl))}) | "
                         f"{np.mean([_f(mine[k], 'PSNR') for k in keys]):.2f} | "
                         f"{np.mean([_f(mine[k], 'SSIM') for k in keys]):.4f} | {ref} | "
                         f"{np.mean([_f(theirs[k], 'PSNR') for k in keys]):.2f} | {_ci(d, 2)} | {rng} | {ds:+.4f} |")
    return "\n".join(lines) + "\n"


def _by_label(test: list[dict], setting: str, group: str) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in test:
        if r["setting"] == setting and r["group"] == group:
            by[r["label"]].append(r)
    return dict(sorted(by.items(), key=lambda kv: (kv[0].startswith("dds"), ", oracle" in kv[0], kv[0])))


def coverage_lines(slices: list[dict], settings: list[str]) -> list[str]:
    """The std calibration table: pixel-pooled coverage of ``|err| ≤ z·σ`` with the raw and the calibrated σ."""
    cov = [r for r in slices if r.get("std_factor", "") != ""]
    if not cov:
        return []
    key = f"{round(100 * NOMINAL)}"
    factor = _f(cov[0], "std_factor")
    out = [f"### Uncertainty: coverage of the {NOMINAL:.0%} interval ±{_z():.3f}·σ on object pixels", "",
           f"σ = DDS std of K samples (|x| convention); calibrated σ = c·σ with c = {factor:.3f}, fitted on the tuning "
           "slices (split-conformal, the largest of the per-setting factors, so that every setting is covered); "
           f"target: within ±{round(100 * TOLERANCE)} points of {NOMINAL:.0%}.", "",
           "| setting | phase | group | method | slices (volumes) | raw σ | calibrated σ | within target | "
           "calibrated, per volume (min … max) | rank corr. |err| vs σ (median) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for setting in settings:
        for (phase, group, lab), rs in sorted(_group(cov, setting).items(), key=lambda kv: (kv[0][0] != "tuning", kv[0])):
            raw, calib = _pooled(rs, f"cov_raw_{key}"), _pooled(rs, f"cov_cal_{key}")
            ok = "yes" if abs(calib - NOMINAL) <= TOLERANCE else "**no**"
            per_vol = [_pooled([r for r in rs if r["volume"] == v], f"cov_cal_{key}") for v in sorted({r["volume"] for r in rs})]
            corr = [_f(r, "rank_corr_err_std") for r in rs]
            corr_s = f"{np.nanmedian(corr):.2f}" if np.isfinite(corr).any() else "–"
            out.append(f"| {setting} | {phase} | {group} | {lab} | {len(rs)} ({len(per_vol)}) | {raw:.3f} | {calib:.3f} | "
                       f"{ok} | {min(per_vol):.3f} … {max(per_vol):.3f} | {corr_s} |")
    return out


def _z() -> float:
    from mri_score.uncertainty import gaussian_z

    return gaussian_z(NOMINAL)


def _group(rows: list[dict], setting: str) -> dict[tuple[str, str, str], list[dict]]:
    by: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["setting"] == setting:
            by[(r["phase"], r["group"], r["label"])].append(r)
    return by


def _pooled(rows: list[dict], key: str) -> float:
    n = np.array([_f(r, "n_object") for r in rows])
    v = np.array([_f(r, key) for r in rows])
    return float(np.sum(n * v) / np.sum(n)) if n.sum() > 0 else float("nan")


def timing_lines(test: list[dict], settings: list[str]) -> list[str]:
    """Seconds per slice of every method in this run and their multiple of L1-wavelet's, overall and per volume.

    Three multiples of L1, because the slices differ in size and a ratio of medians over a mix of sizes is not
    the ratio on any slice: of the medians, of the totals (the wall time of the whole run's reconstructions),
    and the median over slices of the per-slice ratio (the same slice, paired).  The per-volume table gives the
    DDS rows' total-time multiple for each test volume, which shows where the fixed cost per network
    evaluation dominates (small matrices).
    """
    out = ["### Time per slice (this run, same machine and thread count; coil-map estimation excluded)", "",
           "CPU-s = process CPU time (all threads), comparable across methods whatever their threading; wall s as measured.",
           "",
           "| setting | method | median s/slice | total s | × L1 (medians) | × L1 (totals) | × L1 (per slice, median) | "
           "median CPU-s/slice | × L1 (CPU totals) |",
           "|---|---|---|---|---|---|---|---|---|"]
    per_volume = ["", "DDS's time per test volume (K samples, its grid), as a multiple of L1-wavelet's on the same "
                  "slices:", "",
                  "| setting | method | volume | slices | DDS s/slice | L1 s/slice | × L1 (totals) |",
                  "|---|---|---|---|---|---|---|"]
    for setting in settings:
        by: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
        cpu: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
        for r in test:
            if r["setting"] == setting and r["maps"] != "oracle":
                by[r["label"]][(r["volume"], str(r["slice"]))] = _f(r, "seconds")
                cpu[r["label"]][(r["volume"], str(r["slice"]))] = _f(r, "cpu_seconds")
        l1, l1_cpu = by.get("l1_wavelet", {}), cpu.get("l1_wavelet", {})
        l1_med = float(np.median(list(l1.values()))) if l1 else float("nan")
        for lab, secs in sorted(by.items()):
            v = np.array(list(secs.values()))
            both = [k for k in secs if k in l1]
            total = sum(secs[k] for k in both) / sum(l1[k] for k in both) if both else float("nan")
            paired = float(np.median([secs[k] / l1[k] for k in both])) if both else float("nan")
            c = cpu[lab]
            cpu_total = sum(c[k] for k in both) / sum(l1_cpu[k] for k in both) if both else float("nan")
            out.append(f"| {setting} | {lab} | {np.median(v):.2f} | {v.sum():.1f} | {np.median(v) / l1_med:.2f} | "
                       f"{total:.2f} | {paired:.2f} | {np.median(list(c.values())):.2f} | {cpu_total:.2f} |")
            if not lab.startswith("dds"):
                continue
            for vol in sorted({k[0] for k in both}, key=lambda n: (n.startswith("nibabel"), n)):
                keys = [k for k in both if k[0] == vol]
                d, b = sum(secs[k] for k in keys), sum(l1[k] for k in keys)
                per_volume.append(f"| {setting} | {lab} | {vol.removesuffix('.h5')} | {len(keys)} | {d / len(keys):.2f} | "
                                  f"{b / len(keys):.2f} | {d / b:.2f} |")
    return out + per_volume


def render_prior_ablation(runs: list[tuple[str, list[dict]]]) -> str:
    """DDS per test volume under each prior (same protocol, slices and noise): PSNR/SSIM and Δ PSNR to the first.

    ``runs`` is ``[(prior name, CSV rows)]``; the first is the reference.  Volume rows (``unit: volume``)
    carry fastMRI's per-volume metrics.  A cell sampled on a finer grid than the measured matrix
    (``grid_factor`` > 1, ``--grid auto``) is marked ``(×F)``; a row whose priors ran on different grids
    mixes two levers, so it is left out of the win count.  Pure function of the CSVs, like :func:`render`.
    """
    def grid(r: dict) -> float:
        return float(r.get("grid_factor") or 1.0)  # CSVs written before the column: the native grid

    def table(rows: list[dict]) -> dict[tuple[str, str, str], tuple[float, float, float]]:
        return {(r["setting"], r["volume"], r["maps"]): (_f(r, "PSNR"), _f(r, "SSIM"), grid(r)) for r in rows
                if r["unit"] == "volume" and r["method"] == "dds" and r["phase"] == "test"}

    def cell(v: tuple[float, float, float]) -> str:
        return f"{v[0]:.2f} / {v[1]:.3f}" + (f" (×{v[2]:g})" if v[2] != 1.0 else "")

    tabs = [(name, table(rows)) for name, rows in runs]
    ref_name, ref = tabs[0]
    head = "| setting | volume | maps | " + " | ".join(f"{n} PSNR / SSIM" for n, _ in tabs) + " | " + \
        " | ".join(f"Δ PSNR {n}" for n, _ in tabs[1:]) + " |"
    lines = [head, "|" + "---|" * (3 + len(tabs) + len(tabs) - 1)]
    wins = {n: [0, 0, 0] for n, _ in tabs[1:]}
    for key in sorted(ref, key=lambda k: (_order([k[0]])[0], k[1].startswith("nibabel"), k[1], k[2])):
        cells = [cell(t[key]) if key in t else "–" for _, t in tabs]
        deltas = []
        for n, t in tabs[1:]:
            if key in t:
                d = t[key][0] - ref[key][0]
                if t[key][2] == ref[key][2]:
                    wins[n][0] += d > 0
                    wins[n][1] += 1
                else:
                    wins[n][2] += 1
                deltas.append(f"{d:+.2f}")
            else:
                deltas.append("–")
        lines.append(f"| {key[0]} | {key[1].removesuffix('.h5')} | {key[2]} | " + " | ".join(cells + deltas) + " |")
    lines.append("")
    for n, (w, k, mixed) in wins.items():
        lines.append(f"{n}: higher PSNR than {ref_name} on {w} of {k} volume × setting × maps rows" + (
            f" sampled on the same grid; {mixed} rows ran on different grids (×F: `--grid auto`) and are not counted."
            if mixed else "."))
    return "\n".join(lines) + "\n"


def render_variants(rows: list[dict], reference: str = "l1_wavelet",
                    controls: Sequence[tuple[str, str]] = ()) -> str:
    """The ablation table of a protocol run with DDS variants (``dds:<name>`` methods), per setting and test set.

    For the default ``dds`` row and each variant: mean PSNR / SSIM over the test slices, Δ PSNR against ``dds``
    (paired per slice, volume-clustered interval), Δ PSNR against ``reference`` (default L1-wavelet at its tuned
    λ) per volume as ``min … max`` of fastMRI's per-volume PSNR, and the median CPU-seconds per slice as a multiple
    of the reference's.  ``controls``: ``(variant, control)`` pairs of methods; where any pair has test slices in
    common, a second table gives ``variant − control`` per pair, setting and test set (Δ PSNR paired per slice with
    its volume-clustered interval, mean Δ SSIM, ratio of median CPU-seconds).  Pure function of the CSV rows.
    """
    test = [r for r in rows if r["unit"] == "slice" and r["phase"] == "test" and r["maps"] != "oracle"]
    vols = [r for r in rows if r["unit"] == "volume" and r["phase"] == "test" and r["maps"] != "oracle"]
    settings = _order([r["setting"] for r in test])
    groups = sorted({r["group"] for r in test}, key=lambda g: (not g.startswith("synthetic"), g))
    lines = [f"| setting | test set | DDS row | n (volumes) | PSNR (dB) | SSIM | Δ PSNR vs dds [95 % CI] | "
             f"Δ PSNR vs {reference} per volume (min … max) | Δ SSIM vs {reference} | CPU-s/slice × {reference} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for setting in settings:
        for g in groups:
            cell = [r for r in test if r["setting"] == setting and r["group"] == g]
            methods = sorted({r["method"] for r in cell if _learned(r["method"]) and r["method"] != "dds_fp32"},
                             key=lambda m: (m != "dds", m))
            if "dds" not in methods:
                continue
            key = {m: {(r["volume"], r["slice"]): r for r in cell if r["method"] == m} for m in (*methods, reference)}
            vpsnr = {(r["volume"], r["method"]): _f(r, "PSNR") for r in vols if (r["setting"], r["group"]) == (setting, g)}
            ref_cpu = np.median([_f(r, "cpu_seconds") for r in key[reference].values()]) if key[reference] else np.nan
            for m in methods:
                units = sorted(set(key[m]) & set(key["dds"]), key=lambda k: (k[0], int(k[1])))
                if not units:  # nothing to pair with the default here
                    continue
                vl = [k[0] for k in units]
                diff = "–" if m == "dds" else _ci(clustered_paired_difference(
                    [_f(key[m][k], "PSNR") for k in units], [_f(key["dds"][k], "PSNR") for k in units], vl,
                    seed=BOOTSTRAP_SEED), 2)
                per_vol = [vpsnr[(v, m)] - vpsnr[(v, reference)] for v in sorted(set(vl))
                           if (v, m) in vpsnr and (v, reference) in vpsnr]
                rng = f"{min(per_vol):+.2f} … {max(per_vol):+.2f}" if per_vol else "–"
                both = [k for k in units if k in key[reference]]
                dssim = f"{np.mean([_f(key[m][k], 'SSIM') - _f(key[reference][k], 'SSIM') for k in both]):+.4f}" if both else "–"
                cpu = np.median([_f(key[m][k], "cpu_seconds") for k in units]) / ref_cpu
                cpu_s = f"{cpu:.2f}" if np.isfinite(cpu) else "–"
                lines.append(f"| {setting} | {g} | {key[m][units[0]]['label']} | {len(units)} ({len(set(vl))}) | "
                             f"{np.mean([_f(key[m][k], 'PSNR') for k in units]):.2f} | "
                             f"{np.mean([_f(key[m][k], 'SSIM') for k in units]):.4f} | {diff} | {rng} | {dssim} | "
                             f"{cpu_s} |")
    pairs = []
    for variant, control in controls:
        for setting in settings:
            for g in groups:
                cell = [r for r in test if r["setting"] == setting and r["group"] == g]
                a = {(r["volume"], r["slice"]): r for r in cell if r["method"] == variant}
                b = {(r["volume"], r["slice"]): r for r in cell if r["method"] == control}
                units = sorted(set(a) & set(b), key=lambda k: (k[0], int(k[1])))
                if not units:
                    continue
                vl = [k[0] for k in units]
                d = clustered_paired_difference([_f(a[k], "PSNR") for k in units], [_f(b[k], "PSNR") for k in units], vl,
                                                seed=BOOTSTRAP_SEED)
                dssim = np.mean([_f(a[k], "SSIM") - _f(b[k], "SSIM") for k in units])
                cpu = np.median([_f(a[k], "cpu_seconds") for k in units]) / np.median([_f(b[k], "cpu_seconds") for k in units])
                pairs.append(f"| {setting} | {g} | {variant} − {control} | {len(units)} ({len(set(vl))}) | "
                             f"{_ci(d, 2)} | {dssim:+.4f} | {f'{cpu:.2f}' if np.isfinite(cpu) else '–'} |")
    if pairs:
        lines += ["", "| setting | test set | variant − control | n (volumes) | Δ PSNR [95 % CI] | Δ SSIM | CPU-s/slice ratio |",
                  "|---|---|---|---|---|---|---|", *pairs]
    return "\n".join(lines) + "\n"
