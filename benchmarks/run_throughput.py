"""Reconstruction throughput: seconds per slice and peak memory against ``--batch-slices``, and files per hour.

Run: ``python benchmarks/run_throughput.py`` → ``benchmarks/results/throughput.md`` (about 8 minutes on 2 cores).

Each configuration is one ``python -m mri_score.reconstruct`` in a child process (DDS, its default settings,
the shipped prior, ``--samples 2``), on simulated fastMRI files (held-out synthetic split, birdcage coils,
SNR 100, the default 4× equispaced mask; the files keep their noise-free truth, so the summary's PSNR is
against the anatomy).  Reported per matrix and batch size:

* seconds per slice: the reconstruct summary's own time (calibration and sampling of the volume; the
  process's start-up and the prior's loading are not in it);
* peak resident memory of the child (``VmHWM``, as ``benchmarks/run_memory.py`` measures it) and the
  working set ``auto`` budgets for that batch (:func:`mri_score.batching.slice_working_set` × B);
* PSNR against the noise-free truth and its difference from slice-by-slice (``--batch-slices 1``), and the
  largest pixel difference between the two reconstructions;

and files per hour of a directory of small files for one process (all cores) and for two ``--shard``
processes (one core each) started together.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from benchmarks.harness import CHILD_RECONSTRUCT, add_check_flags, check_args, write_report
from benchmarks.provenance import provenance
from mri_score import limits
from mri_score.batching import AUTO_MAX_SLICES, AUTO_MEMORY_FRACTION, slice_working_set
from mri_score.cli import exit_on_input_error
from mri_score.errors import InputError
from mri_score.fastmri_io import write_fastmri_file
from mri_score.prior import DEFAULT_PRIOR
from mri_score.samplers import DEFAULT_STEPS
from mri_score.simulation import corpus_volume, noise_free_target, simulate_volume

ROOT = Path(__file__).resolve().parents[1]
SNR = 100.0
SAMPLES = 2



def make_file(path: Path, slices: int, size: int, coils: int, seed: int) -> Path:
    """A simulated fastMRI file of ``slices`` slices, ``coils`` coils, ``size``² (with its noise-free truth)."""
    imgs = corpus_volume("test", seed, slices, (size, size), "t1", seed)
    ksp, target, _ = simulate_volume(imgs, coils=coils, snr=SNR, seed=seed)
    return write_fastmri_file(path, ksp, target, "SYN_T1", f"tp{seed:03d}", truth=noise_free_target(imgs, coils))


def child(args: list[str], threads: int, device: str = "cpu") -> subprocess.Popen:
    """Start ``reconstruct`` with ``args`` in a child process on ``threads`` threads and ``device``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, "-c", CHILD_RECONSTRUCT, *args, "--threads", str(threads), "--device", device,
                             "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> float:
    """Wait for a child; its peak resident memory in GiB (an :class:`InputError` when it failed)."""
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise InputError(f"reconstruction failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")
    return float(out.strip().splitlines()[-1].split()[1]) / 2**20


def batch_rows(src: Path, out: Path, batches: list[int], nfe: int, seed: int, threads: int, repeats: int,
               device: str = "cpu") -> list[dict]:
    """Reconstruct ``src`` per batch size, ``repeats`` rounds interleaved (the fastest kept: the machine may be shared).

    Each row: the batch used, the fastest s/slice and every round's, the largest peak memory, PSNR, and the largest
    pixel difference from the batch-1 reconstruction.
    """
    rows: dict[int, dict] = {}
    for _ in range(repeats):
        for b in batches:
            dest = out / f"b{b}"
            cmd = ["--kspace", str(src), "--out", str(dest), "--samples", str(SAMPLES), "--seed", str(seed),
                   "--batch-slices", str(b), "--steps", str(nfe), "--redo"]
            peak = finish(child(cmd, threads, device))
            with h5py.File(dest / src.name, "r") as hf:
                image = hf["reconstruction"][()]
                summary = json.loads(hf.attrs["summary"])
            row = rows.setdefault(b, {"batch": b, "used": summary["batch_slices"], "times": [], "peak_gb": 0.0,
                                      "psnr": summary.get("PSNR", float("nan")), "image": image})
            row["times"].append(summary["seconds_per_slice"])
            row["peak_gb"] = max(row["peak_gb"], peak)
            ref = rows[batches[0]]["image"]
            row["max_rel"] = max(row.get("max_rel", 0.0), float(np.abs(image - ref).max() / np.abs(ref).max()))
            print(f"{src.name} batch {b}: {row['times'][-1]:.2f} s/slice, peak {peak:.2f} GiB, "
                  f"PSNR {summary.get('PSNR', float('nan')):.4f}", flush=True)
    for row in rows.values():
        row["s_per_slice"] = min(row["times"])
    return [rows[b] for b in batches]


def files_per_hour(directory: Path, out: Path, processes: int, threads: int, nfe: int, seed: int,
                   device: str = "cpu") -> dict:
    """Wall time and files per hour of a directory run split over ``processes`` ``--shard`` processes started together."""
    files = len(list(directory.glob("*.h5")))
    t0 = time.perf_counter()
    procs = []
    for r in range(processes):
        cmd = ["--kspace", str(directory), "--out", str(out), "--samples", str(SAMPLES), "--seed", str(seed),
               "--steps", str(nfe)] + (["--shard", f"{r}/{processes}"] if processes > 1 else [])
        procs.append(child(cmd, threads, device))
    peaks = [finish(p) for p in procs]
    wall = time.perf_counter() - t0
    return {"processes": processes, "threads": threads, "files": files, "wall": wall, "per_hour": files / wall * 3600,
            "peak_gb": max(peaks), "merged": (out / "summary.csv").is_file()}


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run the batch sweep at two matrix sizes and the one- and two-process directory runs; write the report."""
    ap = add_check_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]), "throughput.md", 128)
    ap.set_defaults(slices=16)
    ap.add_argument("--coils", type=int, default=8, help="coils of the --synth-size volume")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16], help="batch sizes at --synth-size (1 first)")
    ap.add_argument("--large-size", type=int, default=320)
    ap.add_argument("--large-slices", type=int, default=2)
    ap.add_argument("--large-coils", type=int, default=15)
    ap.add_argument("--large-batches", type=int, nargs="+", default=[1, 2], help="batch sizes at --large-size (1 first)")
    ap.add_argument("--files", type=int, default=3, help="files in the files-per-hour directory (--synth-size)")
    ap.add_argument("--file-slices", type=int, default=2, help="slices per file there")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the batch sweep (interleaved; the fastest kept)")
    ap.add_argument("--device", default="cpu", help="the reconstructions' --device (cpu or cuda; peak RSS is host memory)")
    args = ap.parse_args(argv)
    check_args(args)
    threads = args.threads or os.cpu_count() or 1
    limits.check_int(args.coils, "--coils", 1, 64)
    limits.check_int(args.large_size, "--large-size", 32, 1024)
    limits.check_int(args.large_slices, "--large-slices", 1, 1000)
    limits.check_int(args.large_coils, "--large-coils", 1, 64)
    limits.check_int(args.files, "--files", 1, 1000)
    limits.check_int(args.file_slices, "--file-slices", 1, 1000)
    limits.check_int(args.repeats, "--repeats", 1, 100)
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise InputError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    for flag, values in (("--batches", args.batches), ("--large-batches", args.large_batches)):
        for v in values:
            limits.check_int(v, flag, 1, 1000)
        if values[0] != 1:
            raise InputError(f"{flag} must start with 1 (slice by slice, the reference), got {values[0]}")
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    sweeps = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        for size, slices, coils, batches in ((args.synth_size, args.slices, args.coils, args.batches),
                                            (args.large_size, args.large_slices, args.large_coils, args.large_batches)):
            src = make_file(tmpdir / "in" / f"vol_{size}.h5", slices, size, coils, args.seed)
            rows = batch_rows(src, tmpdir / f"out_{size}", batches, args.nfe, args.seed, threads, args.repeats,
                              args.device)
            sweeps.append({"size": size, "slices": slices, "coils": coils, "rows": rows,
                           "per_slice_gb": slice_working_set(SAMPLES, coils, (size, size)) / 2**30})
        directory = tmpdir / "files"
        for k in range(args.files):
            make_file(directory / f"file_{k:02d}.h5", args.file_slices, args.synth_size, args.coils, args.seed + 1 + k)
        runs = [files_per_hour(directory, tmpdir / "fph1", 1, threads, args.nfe, args.seed, args.device)]
        if threads >= 2:
            runs.append(files_per_hour(directory, tmpdir / "fph2", 2, max(1, threads // 2), args.nfe, args.seed,
                                       args.device))
    total = time.perf_counter() - t_start
    load_after = os.getloadavg()
    cli = "python benchmarks/run_throughput.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    nfe = f"{args.nfe} NFE" + (" (its default)" if args.nfe == DEFAULT_STEPS["dds"] else "")
    lines = ["# Reconstruction throughput: batched slices, files per hour", "",
             provenance(cli)
             + f"- prior: shipped default (`mri_score/weights/{DEFAULT_PRIOR}`); DDS, {nfe}, default options, "
             f"K = {SAMPLES} samples, seed {args.seed}; network precision auto; device {args.device}; {threads} "
             "threads per process unless stated\n"
             f"- data: simulated fastMRI files (held-out synthetic split, birdcage coils, SNR {SNR:g}, default 4× "
             "equispaced mask), scored against their noise-free truth (the summary's PSNR)\n"
             f"- load average of the machine (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
             f"after: {', '.join(f'{x:.2f}' for x in load_after)}; whole run {total:.0f} s", "",
             "## Seconds per slice and peak memory against the batch size", "",
             "s/slice: the reconstruct summary's time over the slices (calibration + sampling; start-up and prior "
             f"loading excluded), the fastest of {args.repeats} interleaved rounds (all rounds in brackets). "
             "Peak: the child's VmHWM (process, volume, prior and working set). Budget: what "
             f"`--batch-slices auto` reserves for the batch (`slice_working_set` × B; auto uses at most "
             f"{AUTO_MEMORY_FRACTION:g} of the free memory and, on a CPU, at most {AUTO_MAX_SLICES} slices). "
             "ΔPSNR and max |Δ|: against batch 1 (max |Δ| relative to the image's maximum).", "",
             "| matrix | coils | slices | batch | s/slice | speed-up | peak RSS | auto budget | PSNR | ΔPSNR | max abs Δ (rel) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    verdict = ""
    for sweep in sweeps:
        base = sweep["rows"][0]
        for row in sweep["rows"]:
            speed = base["s_per_slice"] / row["s_per_slice"]
            dpsnr = row["psnr"] - base["psnr"]
            rel = f"{row['max_rel']:.1e}" if row is not base else "—"
            rounds = ", ".join(f"{t:.2f}" for t in row["times"])
            lines.append(f"| {sweep['size']}² | {sweep['coils']} | {sweep['slices']} | {row['used']} | "
                         f"{row['s_per_slice']:.2f} ({rounds}) | {speed:.2f}× | {row['peak_gb']:.2f} GiB | "
                         f"{row['used'] * sweep['per_slice_gb']:.2f} GiB | {row['psnr']:.4f} | {dpsnr:+.4f} | {rel} |")
        if sweep is sweeps[0]:
            best = max(sweep["rows"], key=lambda r: base["s_per_slice"] / r["s_per_slice"])
            gain = base["s_per_slice"] / best["s_per_slice"]
            worst = max(abs(r["psnr"] - base["psnr"]) for r in sweep["rows"])
            verdict = (f"Target (batched ≥ 1.5× faster per slice than slice by slice, {sweep['slices']}-slice "
                       f"{sweep['size']}² volume): best {gain:.2f}× at batch {best['used']}: "
                       f"{'met' if gain >= 1.5 else 'NOT met'}. PSNR batched vs slice by slice: largest |Δ| "
                       f"{worst:.4f} dB (target ≤ 0.01 dB: {'met' if worst <= 0.01 else 'NOT met'}).")
    lines += ["", verdict, "", "## Files per hour", "",
              f"A directory of {args.files} files ({args.file_slices} slices × {args.coils} coils × "
              f"{args.synth_size}² each), `--batch-slices auto`; wall time from the start of the processes to "
              "the end of the last (start-up and prior loading included).", "",
              "| processes | threads each | files | wall | files per hour | peak RSS (largest process) | merged summary |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['processes']}{' (--shard i/2)' if r['processes'] > 1 else ''} | {r['threads']} | "
                     f"{r['files']} | {r['wall']:.0f} s | {r['per_hour']:.0f} | {r['peak_gb']:.2f} GiB | "
                     f"{'—' if r['processes'] == 1 else 'yes' if r['merged'] else 'NO'} |")
    lines += ["", f"What this shows on {os.cpu_count()} cores: one process using every core against processes that "
              "split the same cores between them (`--shard`), i.e. whether the threads of one process keep the cores "
              "busy; the two processes also overlap one file's start-up and I/O with another's sampling. It does not "
              "show how the run scales with more machines or GPUs (each torchrun rank or Slurm array task there has "
              "its own cores or device: files per hour grow with their number as long as the deal keeps them "
              "equally busy), and timings on a shared machine move with its load (above)."]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
