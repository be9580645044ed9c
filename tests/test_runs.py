"""Directory reconstruction runs: skip-if-done by the outputs' settings, per-run summary CSV with slices/s."""

from __future__ import annotations

import csv
import os

import h5py

from mri_score.fastmri_io import write_fastmri_file
from mri_score.reconstruct import main
from mri_score.runs import is_done, run_key, summary_path
from mri_score.simulation import simulate_volume
from tests.conftest import phantom


def _rows(path):
    with open(path, newline="") as fh:
        return {os.path.basename(r["file"]): r for r in csv.DictReader(fh)}


def _stamp(out):
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}


def test_directory_run_skips_outputs_with_the_same_settings(fully_sampled_file, tiny_prior_path, tmp_path, capsys):
    d = fully_sampled_file.parent
    ksp, target, _ = simulate_volume(phantom(64, 1, seed=3), coils=4, snr=100.0, seed=3)
    write_fastmri_file(d / "vol_b.h5", ksp, target, "SYN", "p1")
    out = tmp_path / "out"
    args = ["--kspace", str(d), "--out", str(out), "--prior", str(tiny_prior_path), "--steps", "2", "--samples", "1"]
    assert main(args) == 0
    first = _rows(out / "summary.csv")
    assert {r["status"] for r in first.values()} == {"done"} and set(first) == {"vol_a.h5", "vol_b.h5"}
    assert int(first["vol_a.h5"]["slices"]) == 2 and float(first["vol_a.h5"]["slices_per_s"]) > 0
    assert "slices/s" in capsys.readouterr().out
    stamp = _stamp(out)
    # same settings: nothing recomputed, the summary still carries the metrics
    assert main(args) == 0
    again = _rows(out / "summary.csv")
    assert {r["status"] for r in again.values()} == {"skipped"} and _stamp(out) == stamp
    assert again["vol_a.h5"]["PSNR"] == first["vol_a.h5"]["PSNR"] != ""
    # a killed job: the missing output is made, the finished one is not touched
    (out / "vol_b.h5").unlink()
    assert main(args) == 0
    rows = _rows(out / "summary.csv")
    assert rows["vol_a.h5"]["status"] == "skipped" and rows["vol_b.h5"]["status"] == "done"
    assert _stamp(out)["vol_a.h5"] == stamp["vol_a.h5"]
    # an edited input (mtime) or other settings are recomputed; --redo recomputes everything
    st = (d / "vol_b.h5").stat()
    os.utime(d / "vol_b.h5", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert main(args) == 0
    rows = _rows(out / "summary.csv")
    assert rows["vol_a.h5"]["status"] == "skipped" and rows["vol_b.h5"]["status"] == "done"
    assert main([*args, "--seed", "1"]) == 0
    assert {r["status"] for r in _rows(out / "summary.csv").values()} == {"done"}
    assert main([*args, "--seed", "1", "--redo"]) == 0
    assert {r["status"] for r in _rows(out / "summary.csv").values()} == {"done"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_is_done_needs_the_same_key_and_a_complete_output(fully_sampled_file, tmp_path):
    key = run_key(fully_sampled_file, {"sampler": "dds"})
    assert run_key(fully_sampled_file, {"sampler": "dds"}) == key != run_key(fully_sampled_file, {"sampler": "pc"})
    out = tmp_path / "o.h5"
    assert not is_done(out, key)
    with h5py.File(out, "w") as hf:
        hf.attrs["run_settings"] = key
    assert not is_done(out, key)  # no reconstruction dataset: incomplete
    with h5py.File(out, "a") as hf:
        hf["reconstruction"] = [[[0.0]]]
    assert is_done(out, key) and not is_done(out, key.replace("dds", "pc"))
    out.write_bytes(b"garbage")
    assert not is_done(out, key)
    assert summary_path(tmp_path).name == "summary.csv"
    assert summary_path(tmp_path, 1, 4).name == "summary-rank1-of-4.csv"


def test_torchrun_directory_run_shards_files_and_writes_one_summary_per_rank(tmp_path, tiny_prior_path):
    """The README's ``torchrun --standalone --nproc_per_node=N -m mri_score.reconstruct`` (N = 2, CPU): one CSV per
    rank and one merged ``summary.csv`` (written by the rank that finished last)."""
    import subprocess
    import sys
    from pathlib import Path

    d = tmp_path / "in"
    for i in range(3):
        ksp, target, _ = simulate_volume(phantom(64, 1, seed=i), coils=4, snr=100.0, seed=i)
        write_fastmri_file(d / f"v{i}.h5", ksp, target, "SYN", f"p{i}")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "mri_score.reconstruct", "--kspace", str(d), "--out", str(tmp_path / "out"), "--prior", str(tiny_prior_path),
           "--steps", "2", "--samples", "1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    per_rank = [_rows(tmp_path / "out" / f"summary-rank{r}-of-2.csv") for r in (0, 1)]
    assert set(per_rank[0]) == {"v0.h5", "v2.h5"} and set(per_rank[1]) == {"v1.h5"}
    assert sorted(p.name for p in (tmp_path / "out").glob("*.h5")) == ["v0.h5", "v1.h5", "v2.h5"]
    assert res.stdout.count("slices/s") == 2
    merged = _rows(tmp_path / "out" / "summary.csv")
    assert list(merged) == ["v0.h5", "v1.h5", "v2.h5"] and {r["status"] for r in merged.values()} == {"done"}
    assert res.stdout.count("merged summary") >= 1
