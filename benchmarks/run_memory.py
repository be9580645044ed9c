"""Peak memory and time of ``python -m mri_score.reconstruct`` on a large multi-coil volume.

Run: ``python benchmarks/run_memory.py`` (defaults: 15 coils, 320×320, 30 slices,
the default sampler).  Simulates the volume from the held-out synthetic split,
writes it as a fastMRI file in a temporary directory, reconstructs it in a child
process and reports the child's peak resident memory (``VmHWM``, Linux) in
``benchmarks/results/memory.md``.  Slices are reconstructed one at a time, so the
peak should be the volume itself plus one slice's working set.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import CHILD_RECONSTRUCT
from benchmarks.provenance import provenance
from mri_score import limits
from mri_score.atomic import check_output, check_writable
from mri_score.cli import exit_on_input_error
from mri_score.errors import InputError
from mri_score.fastmri_io import write_fastmri_file
from mri_score.simulation import corpus_volume, simulate_volume

ROOT = Path(__file__).resolve().parents[1]



@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Reconstruct a large simulated volume in a child process and report its peak memory."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coils", type=int, default=15)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--slices", type=int, default=30)
    ap.add_argument("--sampler", default="dds")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-gb", type=float, default=4.0, help="the target the result is compared with")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory.md"))
    args = ap.parse_args(argv)
    limits.check_int(args.coils, "--coils", 1, 64)
    limits.check_int(args.size, "--size", 8, 2048)
    limits.check_int(args.slices, "--slices", 1, 1000)
    limits.check_int(args.samples, "--samples", 1, limits.MAX_SAMPLES)
    limits.check_steps(args.steps)
    limits.check_seed(args.seed)
    check_output(args.out)
    check_writable(Path(args.out).parent)
    with tempfile.TemporaryDirectory() as tmp:
        imgs = corpus_volume("test", 0, args.slices, (args.size, args.size), "t1", args.seed)
        ksp, target, _ = simulate_volume(imgs, coils=args.coils, snr=100.0, seed=args.seed)
        src = write_fastmri_file(Path(tmp) / "large_volume.h5", ksp, target, "SYN_T1", "mem000")
        file_gb = src.stat().st_size / 2**30
        del imgs, ksp, target
        cmd = [sys.executable, "-c", CHILD_RECONSTRUCT, "--kspace", str(src), "--out", str(Path(tmp) / "out"),
               "--sampler", args.sampler, "--samples", str(args.samples), "--seed", str(args.seed)]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        t0 = time.time()
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.time() - t0
        if res.returncode != 0:
            raise InputError(f"reconstruction failed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
    lines = res.stdout.strip().splitlines()
    peak_gb = float(lines[-1].split()[1]) / 2**20  # kB
    summary = lines[-2]
    cli = "python benchmarks/run_memory.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    verdict = "meets" if peak_gb <= args.limit_gb else "EXCEEDS"
    text = (f"# Peak memory of one reconstruction run\n\n{provenance(cli)}- seed: {args.seed}\n\n"
            f"| volume | file size | sampler | samples | peak RSS (child) | wall time | target |\n|---|---|---|---|---|---|---|\n"
            f"| {args.slices} slices × {args.coils} coils × {args.size}² | {file_gb:.2f} GiB | {args.sampler} | "
            f"{args.samples} | {peak_gb:.2f} GiB | {wall:.0f} s | ≤ {args.limit_gb:g} GiB: {verdict} |\n\n"
            f"Reconstruct's own summary line:\n\n```\n{summary}\n```\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"peak {peak_gb:.2f} GiB ({verdict} {args.limit_gb:g} GiB), {wall:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
