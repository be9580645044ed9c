"""Directory runs that survive being killed: skip-if-done outputs and a per-run summary CSV.

A reconstruction output records, in its ``run_settings`` attr, a JSON key of
everything that determines it (sampler settings, mask request, prior identity,
and the input file's name, size and mtime).  A directory run skips a file whose
output already carries the same key, so a cluster job that was killed resumes
where it stopped; anything different (other settings, a retrained prior, an
edited input) is recomputed.  Each process of a run writes one summary CSV
(rewritten atomically after every file) with timing and slices/s.
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
                  "acceleration", "mask", "PSNR", "SSIM", "NMSE", "output", "error")


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
