"""Directory runs that survive being killed: skip-if-done outputs and a per-run summary CSV.

A reconstruction output records, in its ``run_settings`` attr, a JSON key of
everything that determines it (sampler settings, mask request, prior identity,
and the input file's name, size and mtime).  A directory run skips a file whose
output already carries the same key, so a cluster job that was killed resumes
where it stopped; anything different (other settings, a retrained prior, an
edited input) is recomputed.  Each process of a run writes one summary CSV
(rewritten atomically after every file) with timing and slices/s.

A run split over ``n`` processes (torchrun ranks or ``--shard i/n``, :mod:`mri_score.sharding`) leaves
one CSV per process (``summary-rank{i}-of-{n}.csv``, the record of what each did) and one merged
``summary.csv``.  The merge needs neither a process group nor a wait: a process that has finished its
files writes a completion marker (``summary-rank{i}-of-{n}.done``, holding the run's :func:`run_id`) and
then merges if every process's marker of the same run is there (:func:`finish_process`), so the last
process to finish writes ``summary.csv``, whether the processes ran together (torchrun) or one after
another (a Slurm array).  A process removes its own marker when it starts; a killed process leaves none,
so there is no merged summary until a rerun of it (which reconstructs only the missing files) finishes.
Two processes that finish at once both merge the same rows (each write is atomic).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mri_score.atomic import atomic_output

#: Columns of the per-run summary CSV.
SUMMARY_FIELDS = ("file", "status", "slices", "seconds", "seconds_per_slice", "slices_per_s", "nfe_per_slice",
                  "batch_slices", "acceleration", "mask", "PSNR", "SSIM", "NMSE", "output", "error")


def prior_identity(meta: dict[str, Any]) -> str:
    """A short digest of a prior's checkpoint metadata (step, config, architecture): changes when it is retrained."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_key(source: str | os.PathLike[str], settings: dict[str, Any]) -> str:
    """The ``run_settings`` JSON of the output of ``source`` made with ``settings`` (JSON-serialisable)."""
    st = Path(source).stat()
    doc = {"input": {"name": Path(source).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}, **settings}
    return json.dumps(doc, sort_keys=True, default=str)


def is_done(output: str | os.PathLike[str], key: str) -> bool:
    """True when ``output`` is a complete reconstruction whose ``run_settings`` attr equals ``key``."""
    import h5py

    output = Path(output)
    if not output.is_file():
        return False
    try:
        with h5py.File(output, "r") as hf:
            stored = hf.attrs.get("run_settings")
            stored = stored.decode() if isinstance(stored, bytes) else stored
            return stored == key and "reconstruction" in hf
    except OSError:
        return False  # unreadable: recompute (the output is written atomically over it)


def stored_summary(output: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary a previous run stored in ``output``'s ``summary`` attr (empty when absent)."""
    import h5py

    try:
        with h5py.File(output, "r") as hf:
            raw = hf.attrs.get("summary", "{}")
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (OSError, ValueError):
        return {}


def summary_path(out_dir: str | os.PathLike[str], rank: int = 0, world: int = 1) -> Path:
    """``OUT/summary.csv`` for a single process, ``OUT/summary-rank{r}-of-{w}.csv`` under torchrun."""
    name = "summary.csv" if world == 1 else f"summary-rank{rank}-of-{world}.csv"
    return Path(out_dir) / name


def write_summary(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    """Write the summary rows (keys of :data:`SUMMARY_FIELDS`; missing ones blank) atomically as CSV."""
    # file names that are not valid UTF-8 (surrogate-escaped by Python) are written backslash-escaped
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        w = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return Path(path)


def marker_path(out_dir: str | os.PathLike[str], rank: int, world: int) -> Path:
    """``OUT/summary-rank{r}-of-{w}.done``: process ``rank`` of ``world`` has finished its files (:func:`finish_process`)."""
    return summary_path(out_dir, rank, world).with_suffix(".done")


def run_id(files: list[Path], settings: dict[str, Any], world: int) -> str:
    """A digest of a multi-process run: every input (name, size, mtime), the settings and the process count.

    Processes of the same run compute the same id; a run with other inputs or settings gets another, so its
    markers never complete an older run's merge.
    """
    keys = sorted(run_key(f, settings) for f in files)
    return hashlib.sha256(json.dumps({"inputs": keys, "world": world}, sort_keys=True).encode()).hexdigest()[:16]


def start_process(out_dir: str | os.PathLike[str], rank: int, world: int) -> None:
    """Remove this process's completion marker of an earlier run (it is written again when this one finishes)."""
    marker_path(out_dir, rank, world).unlink(missing_ok=True)


def read_summary(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a summary CSV (text values; empty when it is missing or unreadable)."""
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def finish_process(out_dir: str | os.PathLike[str], rank: int, world: int, run: str,
                   order: list[str] | None = None) -> Path | None:
    """Mark process ``rank`` of ``world`` done for run ``run`` and merge the summaries if it was the last one.

    The merged ``OUT/summary.csv`` has every process's rows (their CSVs, :func:`summary_path`), in the
    order of ``order`` (the run's inputs as text; others after them).  Returns its path, or None when some
    process of the run has not finished yet (it will merge when it does).
    """
    import time

    marker = marker_path(out_dir, rank, world)
    with atomic_output(marker) as tmp:
        tmp.write_text(json.dumps({"run": run, "rank": rank, "world": world, "finished": time.time()}) + "\n")
    for r in range(world):
        try:
            if json.loads(marker_path(out_dir, r, world).read_text()).get("run") != run:
                return None
        except (OSError, ValueError, AttributeError):
            return None
    rows = [row for r in range(world) for row in read_summary(summary_path(out_dir, r, world))]
    position = {name: k for k, name in enumerate(order or [])}
    rows.sort(key=lambda row: position.get(row.get("file", ""), len(position)))
    return write_summary(summary_path(out_dir), rows)
