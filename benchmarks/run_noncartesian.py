"""Non-Cartesian (radial, spiral) reconstruction: DDS with the shipped prior against gridding, CG-SENSE, L1-wavelet and BART.

Run: ``python benchmarks/run_noncartesian.py --threads 2`` → ``benchmarks/results/noncartesian.md``.

Per trajectory setting (radial with ``--spokes`` spokes, spiral with ``--interleaves`` interleaves; the
trajectories of :mod:`mri_score.simulate_noncartesian`, two-fold readout oversampling) it reports, per
group of volumes, PSNR / SSIM against the noise-free magnitude ``|x|`` (fastMRI's metrics per volume,
:func:`mri_score.metrics.volume_metrics`, mean over volumes) and seconds per slice of

* **gridding**: density-compensated adjoint NUFFT (Pipe–Menon weights), SENSE-1 combined;
* **CG-SENSE**: 30 preconditioned CG steps on ``AᴴA + λI`` (Toeplitz Gram), λ swept;
* **L1-wavelet**: ``½‖Ax − y‖² + λ‖Ψx‖₁`` (Daubechies-4) by ADMM on the project's NUFFT operator until the relative
  change falls below 1e-4 (at most ``--l1-iters`` iterations), λ swept;
* **BART** ``pics -t`` (total variation ``-R T``, λ swept) where ``bart`` is installed, else a "not run" row;
* **DDS** (:func:`mri_score.noncartesian.reconstruct_noncartesian_volume`): the Cartesian sampler and its
  defaults (``--nfe``, default 24 NFE), K = ``--samples``, except three defaults tuned per trajectory kind: the CG
  steps per step its kind and grid coverage call for (``cg_iters_noncartesian`` auto,
  :meth:`mri_score.samplers.dds.DDSConfig.cg_steps`), the data weight's floor (``gamma_min_noncartesian`` auto:
  radial 1, spiral 0.3) and the final denoising step (``final_denoise_noncartesian`` auto: 1), instead of the
  Cartesian ``cg_iters`` (10), ``gamma_min`` (1) and ``final_denoise`` (0), which the Cartesian reference of the time
  ratio runs.

Every method uses the same calibration per slice (:func:`mri_score.noncartesian.calibrate_volume_noncartesian`:
maps from the fully sampled k-space centre, scale, σ_y estimated from the outer samples); DDS then samples on the
virtual coils ``reconstruct`` uses by default (``virtual_coils`` auto: data and maps compressed alike,
:func:`mri_score.noncartesian.coil_compression`), the baselines on every coil.  For each swept
method the table shows the λ with the best mean PSNR over the group's volumes (chosen on the reported
slices: the baselines' best case); a best λ at an end of the sweep extends it by one step (×3) beyond that
end, at most twice, and the table says whether the final best is interior ("edge" otherwise); an interior best is
then refined by the two λ half a step (×/÷ √3) on either side of it.  DDS's time
is also given relative to Cartesian DDS (same images, same matrix, same request on the same sampling grid, fastMRI
equispaced 4x mask with centre fraction 0.08), timed ``--timing-repeats`` times around each non-Cartesian run (half before, half
after).  DDS − L1-wavelet and DDS − BART (each at its chosen λ) are paired per slice with a volume-clustered
95 % bootstrap interval (:func:`benchmarks.stats.clustered_paired_difference`) and given per volume.
Where the prior's sidecar holds a std factor for a volume's trajectory and matrix (fitted on tuning subjects by
``run_noncartesian_calibration.py``), the coverage of DDS's calibrated std on that held-out volume is reported.

Data: synthetic slices of held-out test-split subjects (:func:`benchmarks.protocol.synthetic_subject_volumes`, pixels
2.0–2.5 mm at ``--synth-size`` 128 or below so the head lies inside the field of view, as the frozen protocol;
proportionally finer on larger matrices, :func:`synth_pixel_mm`) with 8 birdcage coils and white noise; and the
real **development** images (:func:`mri_score.data.realset.development_set`, never the final test set; volumes
smaller than 64 pixels skipped; zero-padded to a square matrix) with the evaluation physics of
:func:`mri_score.data.real_physics.simulate_real_acquisition` (Biot–Savart loop coils, smooth background phase,
correlated coil noise, not whitened).  SNR 100 (the samples' noise as defined in
:mod:`mri_score.simulate_noncartesian`).  DDS samples on the grid ``--grid`` gives (default ``auto``, the
``reconstruct`` command's: :meth:`mri_score.request.ReconRequest.for_pixels` of the volume's pixel size and the
trajectory's grid coverage), the baselines on the native grid.
"""

from __future__ import annotations

import argparse

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import functools
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from benchmarks.cartesian_reference import CARTESIAN, bracketed, cartesian_reference, cartesian_seconds
from benchmarks.harness import add_check_flags, check_args, middle_slices, write_report
from benchmarks.protocol import pixel_range_at, synthetic_subject_volumes
from benchmarks.provenance import provenance
from benchmarks.stats import clustered_paired_difference, sweep_until_interior
from benchmarks.tuning_split import setting_label, settings_of
from mri_score import uncertainty
from mri_score.baselines import bart_available
from mri_score.cli import exit_on_input_error, one_line_usage_errors, sampler_options
from mri_score.errors import InputError
from mri_score.metrics import volume_metrics
from mri_score.noncartesian import (
    NONCARTESIAN_VIRTUAL_COILS,
    NonCartesianVolume,
    calibrate_volume_noncartesian,
    calibration_key,
    reconstruct_noncartesian_volume,
    resolve_grid,
)
from mri_score.noncartesian_baselines import bart_pics, cg_sense, gridding, l1_wavelet
from mri_score.posterior import VolumeResult
from mri_score.prior import DEFAULT_PRIOR, ComplexPrior, default_prior_path, load_prior
from mri_score.request import ReconRequest
from mri_score.simulate_noncartesian import simulate_noncartesian
from operators.trajectories import pipe_menon_density

COILS, SNR = 8, 100.0
#: Nominal level of the held-out coverage check.
LEVEL = 0.9
#: The synthetic pixel range (mm) at 128² and below: the frozen protocol's, which keeps the head inside a 128 matrix.
SYNTH_PIXEL_MM = (2.0, 2.5)
SYNTH_FAMILIES = ("t1", "t2", "pd", "flair")
#: Regularisation sweeps, scaled units (data / calibration scale).
CG_LAMS = (0.003, 0.01, 0.03, 0.1, 0.3)
L1_LAMS = (0.001, 0.003, 0.01, 0.03, 0.1)
BART_LAMS = (0.0001, 0.0003, 0.001, 0.003, 0.01)
CG_ITERS, BART_ITERS = 30, 100
#: A sweep whose best λ is at an end is extended by one step (× or ÷ SWEEP_STEP) beyond it, at most WIDEN times;
#: an interior best is then refined by the half steps on both sides of it (:func:`benchmarks.stats.sweep_until_interior`).
SWEEP_STEP, WIDEN = 3.0, 2
#: Real volumes below this matrix side are skipped (the prior's U-Net and the trajectories need room).
MIN_REAL_SIDE = 64


def square(images: np.ndarray) -> np.ndarray:
    """Zero-pad ``(S, H, W)`` to ``(S, N, N)``, ``N = max(H, W)`` rounded up to even, centred (``N//2`` stays the centre)."""
    s, h, w = images.shape
    n = max(h, w) + max(h, w) % 2
    out = np.zeros((s, n, n), dtype=images.dtype)
    r0, c0 = n // 2 - h // 2, n // 2 - w // 2
    out[:, r0 : r0 + h, c0 : c0 + w] = images
    return out


def synth_pixel_mm(size: int) -> tuple[float, float]:
    """The synthetic pixel range (mm) on a ``size``² matrix: :data:`SYNTH_PIXEL_MM` up to 128², finer above it in
    proportion (:func:`benchmarks.protocol.pixel_range_at`), so the field of view stays 256–320 mm and a larger
    matrix resolves the same head more finely."""
    return pixel_range_at(SYNTH_PIXEL_MM, 128, size)


def synthetic_protocol(volumes: int, slices: int, seed: int) -> dict:
    """The synthetic volumes as a protocol ``data`` section (:func:`benchmarks.protocol.synthetic_spec`): test-split
    subjects ``0 … volumes − 1`` from corpus slice 0, families :data:`SYNTH_FAMILIES` in turn, pixels
    :data:`SYNTH_PIXEL_MM` on a 128² matrix (finer on a larger one, :func:`synth_pixel_mm`), corpus seed ``seed``."""
    return {"size": [128, 128], "pixel_mm": list(SYNTH_PIXEL_MM), "families": list(SYNTH_FAMILIES),
            "corpus_seed": int(seed), "test": {"subjects": list(range(volumes)), "slices_per_subject": int(slices),
                                               "first": 0}}


def volumes(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """The benchmark's volumes ``{name, group, images (S, H, W), pixel_mm}`` and notes on what was skipped."""
    out, notes = [], []
    if "synthetic" in args.groups:
        size = (args.synth_size, args.synth_size)
        for vol in synthetic_subject_volumes(synthetic_protocol(args.synth_volumes, args.slices, args.seed), "test",
                                             size=size):
            fam = SYNTH_FAMILIES[vol["subject"] % len(SYNTH_FAMILIES)]
            out.append({"name": f"synth_subject{vol['subject']:02d}_{fam}", "group": "synthetic",
                        "images": vol["images"], "pixel_mm": vol["pixel_mm"]})
    if "real" in args.groups:
        from mri_score.data.realset import development_set

        for vol in development_set():
            if min(vol.images.shape[1:]) < MIN_REAL_SIDE:
                notes.append(f"{vol.name} ({vol.images.shape[1]}x{vol.images.shape[2]}) skipped: matrix below "
                             f"{MIN_REAL_SIDE}")
                continue
            out.append({"name": vol.name, "group": "real", "images": square(middle_slices(vol.images, args.slices)),
                        "pixel_mm": vol.pixel_mm})
    return out, notes


def acquire(vol: dict, kind: str, count: int, seed: int) -> NonCartesianVolume:
    """The simulated non-Cartesian acquisition of one volume (noise covariance dropped: σ_y is estimated)."""
    imgs = vol["images"]
    if vol["group"] == "synthetic":
        out = simulate_noncartesian(imgs, kind, count, COILS, SNR, seed, pixel_mm=vol["pixel_mm"], density=False)
        samples, target = out.samples, out.target
    else:
        from mri_score.data.real_physics import simulate_real_acquisition

        parts = []
        for i, img in enumerate(np.abs(imgs)):
            acq = simulate_real_acquisition(img, vol["pixel_mm"], COILS, snr=SNR, seed=seed + i)
            parts.append(simulate_noncartesian(acq["truth"][None], kind, count, seed=seed + i, maps=acq["maps"],
                                               noise_cov=acq["noise_cov"], density=False))
        out = parts[0]
        samples = np.concatenate([p.samples for p in parts])
        target = np.concatenate([p.target for p in parts])
    return NonCartesianVolume(samples=samples, coords=out.coords, matrix=out.matrix,
                              density=pipe_menon_density(out.coords, out.matrix), pixel_mm=vol["pixel_mm"],
                              target=target, trajectory=out.trajectory, readout=out.readout, name=vol["name"])


def run_baseline(fn: object, acq: NonCartesianVolume, cals: list, **kw: object) -> tuple[np.ndarray, float]:
    """``|fn(samples, coords, cal, **kw)|`` for every slice ``(S, H, W)`` and the seconds per slice."""
    t0 = time.perf_counter()
    out = [np.abs(fn(acq.samples[i], acq.coords, cals[i], **kw)) for i in range(acq.slices)]  # type: ignore[operator]
    return np.stack(out).astype(np.float32), (time.perf_counter() - t0) / acq.slices


def record(rows: list[dict], setting: str, vol: dict, truth: np.ndarray, method: str, image: np.ndarray,
           seconds: float, lam: float | None = None, grid: float = 1.0) -> None:
    """Score ``image (S, H, W)`` against ``truth``, append the row to ``rows`` (with the sampling ``grid`` factor) and
    print it."""
    met = volume_metrics(truth, image)
    per_slice = [volume_metrics(truth[i : i + 1], image[i : i + 1])["PSNR"] for i in range(truth.shape[0])]
    rows.append({"setting": setting, "group": vol["group"], "volume": vol["name"], "method": method, "lam": lam,
                 "seconds": seconds, "slice_psnr": per_slice, "grid": grid, **met})
    lam_txt = "" if lam is None else f" λ={lam:g}"
    print(f"{setting} | {vol['name']} | {method}{lam_txt} | {met['PSNR']:.2f} dB | {seconds:.2f} s", flush=True)


def best(rows: list[dict], method: str, lams: tuple[float, ...]) -> dict | None:
    """The row of ``method`` with the best mean PSNR over volumes, with ``interior`` (its λ not at a sweep end)."""
    means = []
    for lam in lams:
        sel = [r for r in rows if r["method"] == method and r["lam"] == lam]
        if sel:
            means.append((float(np.mean([r["PSNR"] for r in sel])), lam, sel))
    if not means:
        return None
    psnr, lam, sel = max(means, key=lambda m: m[0])
    return {"lam": lam, "PSNR": psnr, "SSIM": float(np.mean([r["SSIM"] for r in sel])),
            "seconds": float(np.mean([r["seconds"] for r in sel])), "interior": lams.index(lam) not in (0, len(lams) - 1),
            "sweep": " ".join(f"{m[1]:g}:{m[0]:.2f}" for m in means)}


def paired_lines(rows: list[dict], tag: str, group: str, ref: str, lam: float | None) -> str:
    """A table row: DDS − ``ref`` (at its chosen λ) paired per slice, volume-clustered 95 % interval, per-volume Δ."""
    dds = {r["volume"]: r for r in rows if (r["setting"], r["group"], r["method"]) == (tag, group, "DDS")}
    base = {r["volume"]: r for r in rows
            if (r["setting"], r["group"], r["method"], r["lam"]) == (tag, group, ref, lam)}
    vols = sorted(set(dds) & set(base))
    a = [p for v in vols for p in dds[v]["slice_psnr"]]
    b = [p for v in vols for p in base[v]["slice_psnr"]]
    clusters = [v for v in vols for _ in dds[v]["slice_psnr"]]
    mean, lo, hi = clustered_paired_difference(a, b, clusters, seed=0)
    per_vol = ", ".join(f"{dds[v]['PSNR'] - base[v]['PSNR']:+.2f}" for v in vols)
    return (f"| {tag} | {group} | {ref} (λ {lam:g}) | {len(a)} ({len(vols)}) | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
            f"{per_vol} |")


def held_out_coverage(acq: NonCartesianVolume, res: VolumeResult, prior_path: Path, request: ReconRequest,
                      meta: dict | None) -> dict | None:
    """Coverage of DDS's std on ``acq`` (object pixels, 90 %): raw and with the trajectory's stored factor.

    The factor is the sidecar entry ``reconstruct`` would apply (:func:`mri_score.noncartesian.calibration_key` of the
    ``grid: auto`` request, fitted on tuning subjects by ``run_noncartesian_calibration.py``); it applies only where
    ``auto`` resolves to the grid this run sampled on.  None without a std or a stored factor.
    """
    auto = request.replace(grid="auto")
    if res.std is None or resolve_grid(auto, acq, meta).grid_factor != request.grid_factor:
        return None
    entry = uncertainty.lookup_factor(prior_path, calibration_key(auto, acq))
    if entry is None:
        return None
    ratios = np.concatenate([uncertainty.error_ratios(acq.target[i], res.image[i], res.std[i])
                             for i in range(acq.slices)])
    return {"factor": float(entry["factor"]), "raw": uncertainty.coverage(ratios, 1.0, LEVEL),
            "calibrated": uncertainty.coverage(ratios, float(entry["factor"]), LEVEL), "pixels": int(ratios.size)}


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Simulate every volume and trajectory, run every method, write the report."""
    ap = one_line_usage_errors(add_check_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                                               "noncartesian.md", 128))
    ap.add_argument("--spokes", type=int, nargs="*", default=[16, 32, 64], help="radial settings (spokes)")
    ap.add_argument("--interleaves", type=int, nargs="*", default=[4, 8], help="spiral settings (interleaves)")
    ap.add_argument("--groups", nargs="+", default=["synthetic", "real"], choices=["synthetic", "real"])
    ap.add_argument("--synth-volumes", type=int, default=2, help="synthetic subjects (test split), one family each")
    ap.add_argument("--samples", type=int, default=2, help="DDS posterior samples K per slice (default: the CLI's, 2)")
    ap.add_argument("--l1-iters", type=int, default=300,
                    help="most ADMM iterations of the L1-wavelet baseline (it stops earlier at a relative change of "
                         "1e-4)")
    ap.add_argument("--prior", default=None, help="score prior checkpoint (default: the shipped prior)")
    ap.add_argument("--no-bart", action="store_true", help="skip BART even where it is installed")
    ap.add_argument("--grid", default="auto",
                    help="DDS's sampling grid: auto (the reconstruct command's rule), native or a factor")
    ap.add_argument("--sampler-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="a DDS option as the reconstruct command takes it (repeatable; default: the CLI's defaults)")
    ap.add_argument("--timing-repeats", type=int, default=2,
                    help="timed runs of the Cartesian reference around each DDS run, half before and half after it "
                         "(their median is used)")
    args = ap.parse_args(argv)
    check_args(args)
    from mri_score import limits

    limits.check_int(args.synth_volumes, "--synth-volumes", 0, 40)
    limits.check_int(args.samples, "--samples", 1, 64)
    limits.check_int(args.l1_iters, "--l1-iters", 1, 10_000)
    limits.check_int(args.timing_repeats, "--timing-repeats", 1, 100)
    settings = settings_of(args)
    if args.synth_size % 2:
        raise InputError(f"--synth-size must be even, got {args.synth_size}")
    prior_path = Path(args.prior) if args.prior else default_prior_path()
    model = load_prior(prior_path)
    prior = ComplexPrior(model)
    vols, notes = volumes(args)
    if not vols:
        raise InputError("no volume: --groups selects none, or every real volume was skipped")
    options = sampler_options(args.sampler_opt, None, "dds")
    request = ReconRequest(sampler="dds", steps=args.nfe, samples=args.samples, seed=args.seed, grid=args.grid,
                           options=options)
    meta = getattr(model, "meta", None)
    command = "python benchmarks/run_noncartesian.py " + " ".join(argv if argv is not None else sys.argv[1:])
    prior_name = args.prior or f"shipped default (`mri_score/weights/{DEFAULT_PRIOR}`)"
    groups = [g for g in ("synthetic", "real") if any(v["group"] == g for v in vols)]

    references = {v["name"]: cartesian_reference(v, args.seed, COILS, SNR) for v in vols}
    cart: dict[tuple[str, str], float] = {}  # (setting, volume) -> Cartesian seconds per slice, timed around DDS
    rows: list[dict] = []
    coverage_rows: list[dict] = []
    bart_ok = not args.no_bart and bart_available()
    bart_note = "not run (--no-bart)" if args.no_bart else "not run (bart not installed)"
    swept = {"CG-SENSE": (cg_sense, {"iters": CG_ITERS}, CG_LAMS), "L1-wavelet": (l1_wavelet, {"iters": args.l1_iters}, L1_LAMS)}
    if bart_ok:
        swept["BART pics"] = (bart_pics, {"iters": BART_ITERS}, BART_LAMS)
    sweeps: dict[tuple[str, str, str], list[float]] = {}  # (setting, group, method) -> λ run, ascending
    for kind, count in settings:
        tag = setting_label(kind, count)
        runs = []
        for v in vols:
            seed = zlib.crc32(f"{args.seed}/{tag}/{v['name']}".encode())
            acq = acquire(v, kind, count, seed)
            cals = calibrate_volume_noncartesian(acq, use_noise_cov=False)
            score = functools.partial(record, rows, tag, v, acq.target)
            runs.append((v, acq, cals, score))
            score("gridding", *run_baseline(gridding, acq, cals, density=acq.density))
            for method, (fn, kw, lams) in swept.items():
                for lam in lams:
                    score(method, *run_baseline(fn, acq, cals, lam=lam, **kw), lam=lam)
            resolved = resolve_grid(request, acq, meta)
            res, seconds, cart[(tag, v["name"])] = bracketed(
                functools.partial(reconstruct_noncartesian_volume, acq, prior, resolved, calibrations=cals),
                functools.partial(cartesian_seconds, references[v["name"]], prior, resolved), args.timing_repeats)
            score("DDS", res.image, seconds / acq.slices, grid=resolved.grid_factor)
            cov = held_out_coverage(acq, res, prior_path, resolved, meta)
            if cov is not None:
                coverage_rows.append({"setting": tag, "group": v["group"], "volume": v["name"], **cov})
        for group in groups:
            for method, (fn, kw, lams) in swept.items():
                def group_psnr(lam: float, key: tuple = (tag, group, method), fn: object = fn, kw: dict = kw,
                               runs: list = runs) -> float:
                    """Mean PSNR over the group's volumes at ``lam``, run where not yet scored."""
                    if not any((r["setting"], r["group"], r["method"], r["lam"]) == (*key, lam) for r in rows):
                        for v, acq, cals, score in runs:
                            if v["group"] == key[1]:
                                score(key[2], *run_baseline(fn, acq, cals, lam=lam, **kw), lam=lam)
                    return float(np.mean([r["PSNR"] for r in rows
                                          if (r["setting"], r["group"], r["method"], r["lam"]) == (*key, lam)]))

                sweeps[(tag, group, method)] = sorted(sweep_until_interior(group_psnr, lams, SWEEP_STEP, WIDEN)[1])

    synth_lo, synth_hi = synth_pixel_mm(args.synth_size)
    lines = ["# Non-Cartesian reconstruction: radial and spiral, DDS against the classical baselines", "",
             provenance(command)
             + f"- prior: {prior_name}; DDS {args.nfe} NFE ("
             + (", ".join(f"{k}={v}" for k, v in sorted(options.items())) + "; otherwise the sampler defaults"
                if options else "sampler defaults") + f"), K = {args.samples}, sampler seed "
             f"{args.seed} (+ slice index); grid {args.grid} (resolved per acquisition: the time table's grid "
             "column), the baselines on the native grid\n"
             f"- data: {args.slices} slice(s) per volume; synthetic: {args.synth_volumes} test-split subject(s) at "
             f"{args.synth_size}², pixels {synth_lo:g}–{synth_hi:g} mm, {COILS} birdcage coils, white "
             f"noise; real: development set only (loop coils, background phase, correlated noise); SNR {SNR:g}\n"
             "- trajectories: radial full diameters, uniform angles, readout 2N; variable-density spiral "
             "(mri_score.simulate_noncartesian: density power 2, edge undersampled 16/interleaves-fold), samples 0.5 "
             "cycles/FOV apart along every readout\n"
             f"- DDS samples on {NONCARTESIAN_VIRTUAL_COILS} virtual coils of the {COILS} (`virtual_coils` "
             f"{request.virtual_coils}: data and maps compressed alike), the baselines and the Cartesian reference on "
             f"all {COILS}; every method shares one calibration per slice (maps from the fully sampled k-space centre, "
             "σ_y estimated); scored on |x| against the noise-free magnitude, fastMRI metrics per volume, mean "
             "over volumes; seconds per slice (calibration excluded)\n"
             f"- λ sweeps (scaled units): CG-SENSE {', '.join(f'{x:g}' for x in CG_LAMS)} ({CG_ITERS} PCG steps); "
             f"L1-wavelet {', '.join(f'{x:g}' for x in L1_LAMS)} (ADMM until the relative change is below 1e-4, "
             f"at most {args.l1_iters} iterations); BART "
             f"{', '.join(f'{x:g}' for x in BART_LAMS)} ({BART_ITERS} iterations); the best mean PSNR is shown, "
             f"chosen on the reported slices (the baselines' best case); a sweep whose best λ is at an end is "
             f"extended by one step (×{SWEEP_STEP:g}) beyond it, at most {WIDEN} times per setting and group, and an "
             f"interior best is refined by the half steps on both sides of it (×/÷ √{SWEEP_STEP:g}); "
             "\"edge\": the best λ is still at an end after that"]
    lines += [f"- {n}" for n in notes]
    for group in groups:
        gvols = [v["name"] for v in vols if v["group"] == group]
        lines += ["", f"## {group} ({len(gvols)} volume(s): {', '.join(gvols)})", "",
                  "| setting | method | λ | PSNR | SSIM | s/slice | λ check | sweep (λ:PSNR) |",
                  "|---|---|---|---|---|---|---|---|"]
        for kind, count in settings:
            tag = setting_label(kind, count)
            sel = [r for r in rows if r["setting"] == tag and r["group"] == group]
            for method in ("gridding", "CG-SENSE", "L1-wavelet", "BART pics", "DDS"):
                lams = sweeps.get((tag, group, method))
                if method in ("gridding", "DDS"):
                    mine = [r for r in sel if r["method"] == method]
                    lines.append(f"| {tag} | {method} | – | {np.mean([r['PSNR'] for r in mine]):.2f} | "
                                 f"{np.mean([r['SSIM'] for r in mine]):.4f} | "
                                 f"{np.mean([r['seconds'] for r in mine]):.2f} | – | – |")
                    continue
                b = best(sel, method, tuple(lams)) if lams else None
                if b is None:
                    lines.append(f"| {tag} | {method} | – | – | – | – | {bart_note} | – |")
                    continue
                lines.append(f"| {tag} | {method} | {b['lam']:g} | {b['PSNR']:.2f} | {b['SSIM']:.4f} | "
                             f"{b['seconds']:.2f} | {'interior' if b['interior'] else 'edge'} | {b['sweep']} |")
    lines += ["", "## DDS against the swept baselines, paired per slice", "",
              "ΔPSNR = DDS − baseline (at the λ of the table above), mean over slices with a volume-clustered 95 % "
              "bootstrap interval; per volume: the fastMRI per-volume PSNR difference, in the order of the group's "
              "volumes.", "",
              "| setting | group | baseline | n slices (volumes) | ΔPSNR [95 % CI] | ΔPSNR per volume |",
              "|---|---|---|---|---|---|"]
    for kind, count in settings:
        tag = setting_label(kind, count)
        for group in groups:
            for method in ("L1-wavelet", "BART pics"):
                lams = sweeps.get((tag, group, method))
                b = best([r for r in rows if r["setting"] == tag and r["group"] == group], method, tuple(lams)) \
                    if lams else None
                if b is not None:
                    lines.append(paired_lines(rows, tag, group, method, b["lam"]))
    lines += ["", f"## Calibrated std on held-out data ({round(100 * LEVEL)} % interval, object pixels)", "",
              "The factor `reconstruct` applies for the trajectory (fitted on tuning subjects only, "
              "`benchmarks/results/noncartesian_calibration.md`); volumes whose trajectory and matrix have no stored "
              "factor are not listed. Target: within ±5 points of the nominal level.", "",
              "| setting | group | volume | factor c | raw coverage | calibrated coverage |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['group']} | {r['volume']} | {r['factor']:.3f} | {100 * r['raw']:.1f} % | "
              f"{100 * r['calibrated']:.1f} % |" for r in coverage_rows]
    if not coverage_rows:
        lines.append("| – | – | no volume with a stored factor | – | – | – |")
    lines += ["", "## DDS time: non-Cartesian vs Cartesian at the same matrix", "",
              "| setting | group | grid | non-Cartesian s/slice | Cartesian s/slice | ratio |", "|---|---|---|---|---|---|"]
    for kind, count in settings:
        tag = setting_label(kind, count)
        for group in groups:
            mine = [r for r in rows if r["setting"] == tag and r["group"] == group and r["method"] == "DDS"]
            nc = float(np.mean([r["seconds"] for r in mine]))
            ca = float(np.mean([cart[(tag, r["volume"])] for r in mine]))
            grids = "/".join(sorted({f"{r['grid']:g}x" for r in mine}))
            lines.append(f"| {tag} | {group} | {grids} | {nc:.2f} | {ca:.2f} | {nc / ca:.2f} |")
    lines += ["", f"Cartesian reference: the median of {args.timing_repeats} timed run(s) of DDS with the same request on "
              "the same images on the same sampling grid around each non-Cartesian DDS run (half before, half after "
              "it), fastMRI "
              f"{CARTESIAN[0]} mask "
              f"{CARTESIAN[1]:g}x, centre fraction {CARTESIAN[2]:g}, {COILS} birdcage coils.", ""]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
