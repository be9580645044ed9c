"""Streaming training data at scale: trainer memory vs dataset size, loader throughput vs workers.

Run: ``python benchmarks/run_stream_memory.py --work /tmp/stream_bench`` (defaults: 10 and
100 simulated fastMRI-like training files of 1 slice, 15 coils, 640×368; 100 trainer
steps; workers 0, 1, 2).  The files are simulated from the synthetic corpus into
``--work`` (never into the repository; the 10-file set is hard links to the first
10 of the 100).  For each set the trainer (``python -m mri_score.train`` with
``configs/prior_fastmri_knee.yaml`` and the overrides printed in the results) runs in
a child process from a fresh slice index; the parent samples the proportional set
size (PSS, ``/proc/PID/smaps_rollup``) of the trainer and its DataLoader workers
every 0.2 s and reports the peak of the sum, and the trainer's own high-water mark
(``VmHWM``).  The loader benchmark times the slices/s of the streaming DataLoader
alone on the 100-file set.  Results: ``benchmarks/results/stream_memory.md``.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.provenance import provenance
from mri_score import limits
from mri_score.atomic import check_output, check_writable
from mri_score.cli import exit_on_input_error
from mri_score.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

_CHILD = (
    "import sys\n"
    "from mri_score.train import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]\n"
    "print('VmHWM_kB', hwm, flush=True)\n"
    "sys.exit(rc)\n"
)


def simulate_files(out: Path, count: int, coils: int, shape: tuple[int, int], seed: int) -> list[Path]:
    """``count`` fully sampled 1-slice fastMRI files (corpus images, birdcage coils, noise), written once."""
    from mri_score.fastmri_io import write_fastmri_file
    from mri_score.simulation import corpus_volume, simulate_volume

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = out / f"sim_{i:04d}.h5"
        if not p.is_file():
            img = corpus_volume("train", i, 1, shape, ("t1", "t2", "pd")[i % 3], seed)
            ksp, target, _ = simulate_volume(img, coils=coils, snr=60.0, seed=seed + i)
            write_fastmri_file(p, ksp, target, "SYN", f"sim{i:04d}")
        paths.append(p)
    return paths


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def _proc_kb(pid: int, file: str, key: str) -> int:
    """The kB value of line ``key:`` in ``/proc/<pid>/<file>``; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    """The process's proportional set size now (``Pss``, kB)."""
    return _proc_kb(pid, "smaps_rollup", "Pss")


def _hwm_kb(pid: int) -> int:
    """The process's resident high-water mark (``VmHWM``, kB; kept by the kernel, not sampled)."""
    return _proc_kb(pid, "status", "VmHWM")


def run_trainer(data: Path, run_dir: Path, overrides: list[str]) -> dict:
    """Train in a child process; peak summed PSS of the process tree, high-water marks, time.

    ``peak_pss_mb`` is the largest sum of PSS over 0.2 s samples (what the tree held at one
    moment, so it depends on whether the workers' transient peaks coincide with a sample);
    ``hwm_sum_mb`` is the trainer's ``VmHWM`` plus each worker's last ``VmHWM`` seen, the sum
    of per-process peaks: an upper bound on any moment's RSS that no sampling can miss
    (shared pages count once per process).
    """
    index = data / ".mri_score_index.json"
    index.unlink(missing_ok=True)  # a fresh index: the first run on a new data set
    cmd = [sys.executable, "-c", _CHILD, "--config", str(ROOT / "configs" / "prior_fastmri_knee.yaml"),
           f"data.path={data}", f"out_dir={run_dir}", *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = peak_procs = 0
    worker_hwm: dict[int, int] = {}
    try:
        while proc.poll() is None:
            pids = _tree(proc.pid)
            total = sum(_pss_kb(p) for p in pids)
            if total > peak:
                peak, peak_procs = total, len(pids)
            for p in pids[1:]:
                worker_hwm[p] = max(worker_hwm.get(p, 0), _hwm_kb(p))
            time.sleep(0.2)
    finally:
        if proc.poll() is None:  # interrupted: do not leave the trainer running
            proc.kill()
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"trainer failed ({proc.returncode}): {err[-2000:]}")
    hwm = int(next(ln for ln in out.splitlines() if ln.startswith("VmHWM_kB")).split()[1])
    log = [json.loads(x) for x in (run_dir / "loss.jsonl").read_text().splitlines()]
    return {"files": len(list(data.glob("*.h5"))), "peak_pss_mb": peak / 1024, "processes": peak_procs,
            "trainer_hwm_mb": hwm / 1024, "hwm_sum_mb": (hwm + sum(worker_hwm.values())) / 1024,
            "worker_hwm_mb": [v / 1024 for v in worker_hwm.values()], "seconds": time.time() - t0,
            "slices_per_s": log[-1]["slices_per_s"],
            "summary": out.strip().splitlines()[0]}


def loader_throughput(data: Path, workers: int, batch: int, crop: int, batches: int) -> float:
    """Slices/s of the streaming DataLoader alone (after one warm-up batch) on HDF5 files or shards."""
    from mri_score.data.fastmri_stream import FastMRISlices, make_loader
    from mri_score.data.shards import ShardSlices, is_shard_dir

    ds = ShardSlices(data, crop, seed=0) if is_shard_dir(data) else FastMRISlices(data, crop, seed=0)
    it = iter(make_loader(ds, batch, num_workers=workers, persistent_workers=workers > 0))
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def _mb(d: Path) -> float:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file()) / 2**20


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Simulate the files, run the trainer on both sets and the loader at each worker count; write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="scratch directory for the simulated files (outside the repository)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--coils", type=int, default=15)
    ap.add_argument("--shape", type=int, nargs=2, default=[640, 368])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--set", nargs="*", default=["train.precision=fp32", "network.base_channels=16"],
                    help="further trainer overrides (default: fp32 and a narrower network, to keep the run short on CPU)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--loader-batches", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel", action="store_true", help="run the trainers of all sizes at the same time")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per size, one after another in alternating order (medians are compared)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stream_memory.md"))
    args = ap.parse_args(argv)
    limits.check_seed(args.seed)
    limits.check_steps(args.steps)
    if not 1 <= args.repeats <= 20:
        raise InputError(f"--repeats must be 1..20, got {args.repeats}")
    check_output(args.out)
    check_writable(Path(args.out).parent)
    work = Path(args.work).resolve()
    if ROOT in (work, *work.parents):
        raise InputError(f"{work}: --work must lie outside the repository")
    n_max = max(args.sizes)
    files = simulate_files(work / f"all_{n_max}", n_max, args.coils, tuple(args.shape), args.seed)
    overrides = [f"train.steps={args.steps}", f"train.batch={args.batch}", "train.log_every=10",
                 f"train.ckpt_every={args.steps}", f"train.seed={args.seed}", "data.num_workers=2",
                 f"data.crop={args.crop}", *args.set]
    dirs = []
    for n in sorted(args.sizes):
        d = work / f"set_{n}"
        d.mkdir(exist_ok=True)
        for f in files[:n]:
            if not (d / f.name).exists():
                os.link(f, d / f.name)
        dirs.append((n, d))
    if args.parallel:  # the runs at the same time (each tree's PSS is its own; wall times are then shared)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(dirs)) as ex:
            rows = list(ex.map(lambda nd: run_trainer(nd[1], work / f"run_{nd[0]}", overrides), dirs))
    else:  # alternate the order (10, 100, 100, 10, ...) so a drift in the machine's load favours neither size
        rows = []
        for rep in range(args.repeats):
            for n, d in (dirs if rep % 2 == 0 else dirs[::-1]):
                rows.append({**run_trainer(d, work / f"run_{n}_{rep}", overrides), "repeat": rep})
    for r in rows:
        print(json.dumps(r), flush=True)
    from mri_score.data.shards import write_shards

    shards = work / f"shards_{n_max}"
    t0 = time.time()
    if not shards.exists():
        write_shards(work / f"set_{n_max}", shards, workers=max(args.workers))
    shard_seconds = time.time() - t0
    speeds = []
    for w in args.workers:
        h5 = loader_throughput(work / f"set_{n_max}", w, args.batch, args.crop, args.loader_batches)
        sh = loader_throughput(shards, w, args.batch, args.crop, args.loader_batches)
        speeds.append((w, h5, sh))
        print(f"workers {w}: {h5:.2f} slices/s (HDF5), {sh:.2f} slices/s (shards)", flush=True)
    sizes = sorted({r["files"] for r in rows})

    def median(key: str, files: int) -> float:
        return statistics.median(r[key] for r in rows if r["files"] == files)

    lo_n, hi_n = sizes[0], sizes[-1]
    diff = {key: (median(key, hi_n) - median(key, lo_n)) / median(key, lo_n)
            for key in ("peak_pss_mb", "hwm_sum_mb", "trainer_hwm_mb")}
    cmd = "python benchmarks/run_stream_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Streaming training data: memory vs dataset size, loader throughput vs workers\n",
        provenance(cmd) + f"- load average at the end: {os.getloadavg()[0]:.1f}\n",
        f"Simulated fastMRI-like training files: {args.coils} coils, {args.shape[0]}×{args.shape[1]}, 1 slice each "
        f"(~{files[0].stat().st_size / 2**20:.0f} MiB per file), seed {args.seed}. Trainer: "
        f"`python -m mri_score.train --config configs/prior_fastmri_knee.yaml {' '.join(overrides)}`, "
        "each run from a fresh slice index (the scan that validates every "
        "slice once is included). Peak PSS = max over 0.2 s samples of the summed PSS of the trainer and its "
        "DataLoader workers (what the tree held at a sampled moment). Sum of high-water marks = the trainer's "
        "VmHWM plus each worker's (per-process peaks kept by the kernel: an upper bound on any moment that "
        f"sampling cannot miss). {args.repeats} run(s) per size"
        + (", one after another in alternating order" if not args.parallel else ", all sizes at once") + ".\n",
        "| files | run | peak PSS, trainer + workers (MiB) | sum of high-water marks (MiB) | trainer VmHWM (MiB) | "
        "worker VmHWM (MiB) | slices/s (trainer) | wall (s) |",
        "|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    lines += [f"| {r['files']} | {r.get('repeat', 0)} | {r['peak_pss_mb']:.0f} | {r['hwm_sum_mb']:.0f} | "
              f"{r['trainer_hwm_mb']:.0f} | {', '.join(f'{v:.0f}' for v in r['worker_hwm_mb'])} | "
              f"{r['slices_per_s']:.2f} | {r['seconds']:.0f} |" for r in rows]
    lines += [f"\n{hi_n} vs {lo_n} files, median over runs (target: |difference| < 10 %): sum of high-water marks "
              f"{100 * diff['hwm_sum_mb']:+.1f} %, trainer VmHWM {100 * diff['trainer_hwm_mb']:+.1f} %, "
              f"sampled peak PSS {100 * diff['peak_pss_mb']:+.1f} %.\n",
              f"Loader alone on the {n_max}-file set (batch {args.batch}, crop {args.crop}, {args.loader_batches} batches "
              "after one warm-up batch). HDF5: each slice is read and its ACS maps, SENSE-1 and scale computed in "
              f"the loader; shards: the images precomputed by `python -m mri_score.preprocess` ({shard_seconds:.0f} s "
              f"for the {n_max} files with {max(args.workers)} workers, {_mb(shards):.0f} MiB vs "
              f"{_mb(work / f'set_{n_max}'):.0f} MiB of HDF5).\n",
              "| num_workers | slices/s, HDF5 | slices/s, shards |", "|---:|---:|---:|"]
    lines += [f"| {w} | {h:.2f} | {s:.2f} |" for w, h, s in speeds]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
