"""``python benchmarks/run_speed_tuning.py``: cheaper DDS schedules against the default, on slices never reported.

Issue #14's time target (DDS at ≤ 1.5× L1-wavelet's wall time): each variant (``--variant``, a
comma-separated list of ``nfe=N`` and DDS options, e.g. ``nfe=26,sigma_max=1.5,cg_iters=8``) is run on
the frozen protocol's brain *tuning* slices (subjects 30–32) and on procedural body/limb test-split slices
(corpus index 900 on, as :mod:`benchmarks.run_calibration_probe`), with the protocol's noise, masks, ACS
maps, K and grid rule.  L1-wavelet (``--l1-lam``, 100 iterations, the same maps) runs on every slice first,
as the time reference; the variants follow in turn on that slice, so drifts of the machine's speed hit
all of them alike.  Reported per setting and group: mean PSNR of ``|x|`` against the noise-free image (the
slice's max as data range), its paired difference from the first variant with a 95 % bootstrap interval,
and the median seconds per slice as a multiple of L1's.  Nothing here touches the real set.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys
import time

import numpy as np

from benchmarks import stats
from benchmarks.harness import add_check_flags, check_args, write_report
from benchmarks.protocol import setting_tag, unreported_acquisitions, validate_protocol
from benchmarks.provenance import provenance
from mri_score import baselines, limits
from mri_score.cli import exit_on_input_error
from mri_score.config import load_config
from mri_score.errors import InputError
from mri_score.metrics import psnr
from mri_score.pipeline import reconstruct_volume
from mri_score.prior import ComplexPrior, load_prior
from mri_score.request import ReconRequest
from mri_score.samplers import sampler_config

#: The variants of the committed run: the previous default (σ_max = 3, 30 NFE) first, as the reference.
DEFAULT_VARIANTS = ("nfe=30,sigma_max=3", "nfe=26,sigma_max=1.5", "nfe=26,sigma_max=1.5,cg_iters=8",
                    "nfe=24,sigma_max=1", "nfe=22,sigma_max=1,sigma_min=0.005", "nfe=30,sigma_max=3,cg_iters=6",
                    "nfe=24,sigma_max=3")


def parse_variant(text: str) -> tuple[int, dict[str, str]]:
    """``"nfe=N,key=value,..."`` as ``(N, DDS options)``, validated; a one-line :class:`InputError` otherwise."""
    nfe, options = None, {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(f"--variant {text!r}: {item!r} must look like key=value")
        if key.strip() == "nfe":
            try:
                nfe = int(value)
            except ValueError:
                raise InputError(f"--variant {text!r}: nfe must be an integer, got {value!r}") from None
        else:
            options[key.strip()] = value.strip()
    if nfe is None:
        raise InputError(f"--variant {text!r} names no nfe=N")
    limits.check_int(nfe, f"--variant {text!r}: nfe", 1, limits.MAX_STEPS)
    sampler_config("dds", options).nfe_used(nfe)
    return nfe, options


def parse_lams(text: str, tags: list[str]) -> dict[str, float]:
    """``"4:0.003,8:0.001"`` (acceleration: λ) as ``{setting tag: λ}`` for every protocol setting."""
    out = {}
    try:
        pairs = dict((float(a), float(b)) for a, b in (p.split(":") for p in text.split(",")))
    except ValueError:
        raise InputError(f"--l1-lam must look like 4:0.003,8:0.001, got {text!r}") from None
    for tag in tags:
        accel = float(tag.split("x")[0])
        if accel not in pairs or not pairs[accel] > 0:
            raise InputError(f"--l1-lam {text!r} gives no positive λ for the {tag} setting")
        out[tag] = pairs[accel]
    return out


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run every variant on every slice and write the table (``--out``)."""
    ap = add_check_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]), "speed_tuning.md", 128)
    ap.add_argument("--config", default="configs/bench_protocol_mixed.yaml", help="the frozen protocol")
    ap.add_argument("--variant", action="append", default=None, metavar="nfe=N,KEY=VALUE",
                    help="a DDS variant (repeat; the first is the reference)")
    ap.add_argument("--volumes", type=int, default=2, help="body/limb volumes (of --slices slices each)")
    ap.add_argument("--l1-lam", default="4:0.003,8:0.001", help="L1-wavelet λ per acceleration (the protocol's)")
    args = ap.parse_args(argv if argv is not None else sys.argv[1:])
    check_args(args)
    limits.check_int(args.volumes, "--volumes", 1, 100)
    cfg = load_config(args.config)
    validate_protocol(cfg, args.config)
    texts = args.variant or list(DEFAULT_VARIANTS)
    variants = [parse_variant(t) for t in texts]
    tags = [setting_tag(s) for s in cfg["settings"]]
    lams = parse_lams(args.l1_lam, tags)
    prior = ComplexPrior(load_prior(cfg.get("prior")))
    dds = cfg["methods"]["dds"] or {}
    samples, grid = int(dds.get("samples", 2)), dds.get("grid", "native")
    # (tag, group) -> variant index -> per-slice PSNR / seconds; "l1" for the reference
    psnrs: dict[tuple[str, str], dict[int | str, list[float]]] = {}
    secs: dict[tuple[str, str], dict[int | str, list[float]]] = {}
    for tag, group, v, acq in unreported_acquisitions(cfg, args.volumes, args.slices, args.synth_size, 7 + args.seed):
        p, t = psnrs.setdefault((tag, group), {}), secs.setdefault((tag, group), {})
        for s in range(acq["under"].shape[0]):
            ks, mask, cal, truth = acq["under"][s], acq["mask"], acq["cals"][s], acq["truth"][s : s + 1]
            t0 = time.perf_counter()
            x = baselines.l1_wavelet(ks, mask, cal, lams[tag], 100)
            t.setdefault("l1", []).append(time.perf_counter() - t0)
            p.setdefault("l1", []).append(psnr(truth, np.abs(x)[None]))
            for i, (nfe, options) in enumerate(variants):
                st = ReconRequest(sampler="dds", steps=nfe, samples=samples, seed=v["seed"] + s,
                                     magnitude="sense", options=options, grid=dds.get("grid", "native"))
                t0 = time.perf_counter()
                res = reconstruct_volume(ks[None], mask, prior, st, calibrations=[cal], pixel_mm=acq.get("pixel_mm"))
                t.setdefault(i, []).append(time.perf_counter() - t0)
                p.setdefault(i, []).append(psnr(truth, res.image))
        print(f"{tag} {v['name']} done", flush=True)
    lines = ["# Cheaper DDS schedules on slices the protocol never reports (issue #14, time target)", "",
             provenance(" ".join(["python benchmarks/run_speed_tuning.py", *(argv or sys.argv[1:])])).rstrip("\n"),
             f"- protocol `{args.config}`: K = {samples}, grid {grid}; brain = its tuning slices; body/limb = "
             f"{args.volumes} × {args.slices} procedural slices from corpus index 900 (test split, {args.synth_size}²); "
             f"L1-wavelet at λ {args.l1_lam} (acceleration: λ), 100 iterations, the same ACS maps, run first on "
             "every slice; PSNR of |x| against the noise-free slice; Δ is paired against the first variant "
             "(95 % bootstrap interval over slices); time is the median over slices", "",
             "| setting | group | n | variant | PSNR (dB) | Δ vs first | s/slice | × L1 |", "|---|---|---|---|---|---|---|---|"]
    for (tag, group), p in psnrs.items():
        t = secs[(tag, group)]
        l1_time = float(np.median(t["l1"]))
        n = len(p["l1"])
        lines.append(f"| {tag} | {group} | {n} | L1-wavelet | {np.mean(p['l1']):.2f} | | {l1_time:.2f} | 1.00 |")
        for i, text in enumerate(texts):
            mean, lo, hi = stats.paired_difference(p[i], p[0], seed=args.seed)
            delta = f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if i else ""
            med = float(np.median(t[i]))
            lines.append(f"| {tag} | {group} | {n} | {text} | {np.mean(p[i]):.2f} | {delta} | {med:.2f} | "
                         f"{med / l1_time:.2f} |")
    write_report(args.out, lines + [""])
    return 0


if __name__ == "__main__":
    sys.exit(main())
