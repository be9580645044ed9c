import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_writes_well_formed_tables(tmp_path, tiny_prior_path, tiny_unet_path):
    cfg = {
        "name": "tiny",
        "seed": 0,
        "prior": str(tiny_prior_path),
        "data": {"volumes": [{"family": "t1", "index": 0}], "slices": 1, "size": [64, 64], "coils": 4, "snr": 100},
        "settings": [{"accel": 4, "mask": "equispaced", "center_fraction": 0.25},
                     {"accel": 8, "mask": "poisson", "center_fraction": 0.5}],
        "methods": {"zero_filled": {}, "cg_sense": {"lam": 0.01, "iters": 5}, "unet": {"weights": str(tiny_unet_path)},
                    "l1_wavelet": {"lams": [0.001, 0.01], "iters": 5}, "dds": {"nfe": [2], "samples": 2}},
    }
    path = tmp_path / "bench_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_benchmark.py"), "--config", str(path),
                          "--out-dir", str(tmp_path / "res")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    md = (tmp_path / "res" / "tiny.md").read_text()
    assert "- command:" in md and "- machine:" in md and "- seed:" in md and "- versions:" in md
    assert "| 4x equispaced | dds (NFE=2) |" in md and "| 4x equispaced | unet |" in md
    assert "Uncertainty calibration" in md
    assert "Skipped (mask not realisable)" in md  # 8x Poisson cannot fit a 32² calibration square in 64²
    rows = list(csv.DictReader(open(tmp_path / "res" / "tiny.csv")))
    assert {r["method"] for r in rows} == {"zero_filled", "cg_sense", "unet", "l1_wavelet", "dds"}
    assert all(float(r["peak_gb"]) >= 0 for r in rows)
    assert "## Robustness" in md and "| 4x equispaced | synthetic test split |" in md
    assert len([r for r in rows if r["method"] == "l1_wavelet"]) == 2
    assert all(float(r["PSNR"]) > 0 for r in rows)
    assert (tmp_path / "res" / "tiny_psnr_vs_cost.png").is_file() and (tmp_path / "res" / "tiny_calibration.png").is_file()


def test_memory_benchmark_reports_child_peak(tmp_path):
    out = tmp_path / "memory.md"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_memory.py"), "--coils", "3", "--size", "64",
                          "--slices", "2", "--steps", "2", "--samples", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    md = out.read_text()
    assert "- command:" in md and "- versions:" in md and "2 slices × 3 coils × 64²" in md
    peak = float(md.split("| 1 | ")[1].split(" GiB")[0])
    assert 0.05 < peak < 4.0  # python + torch alone take ~0.3 GiB; the tiny volume adds little


def test_every_committed_benchmark_config_is_valid():
    from benchmarks.run_benchmark import validate_config
    from mri_score.config import load_config

    configs = sorted((ROOT / "configs").glob("bench_*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        name, settings, methods, magnitude = validate_config(load_config(path), str(path))
        assert name == path.stem and settings and methods and magnitude in ("rss", "sense")


def test_maps_check_compares_estimated_and_true_maps(tmp_path):
    out = tmp_path / "maps.md"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_maps_check.py"), "--nfe", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    md = out.read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| bench_")]
    assert len(rows) == 6 and sum("true (oracle)" in r for r in rows) == 2
    assert "- command:" in md and "| 16 |" in md  # bench_quick's ACS is 16 lines


def test_dds_tuning_script_writes_a_table_per_setting(tmp_path, tiny_prior_path):
    cfg = {"name": "tune_tiny", "seed": 0, "size": [64, 64], "coils": 4, "snr": 100, "prior": str(tiny_prior_path),
           "synthetic": [{"family": "t1", "index": 20}], "real_slices": [4],
           "settings": [{"accel": 4, "mask": "equispaced", "center_fraction": 0.25}], "l1_lam": 0.001, "nfe": 2,
           "variants": [{"sigma_max": 3.0}, {"sigma_max": 3.0, "cg_iters": 2}]}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_dds_tuning.py"), "--config", str(path),
                          "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    md = (tmp_path / "tune_tiny.md").read_text()
    assert "## 4x equispaced" in md and "- command:" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| L1") or ln.startswith("| DDS")]
    assert len(rows) == 3 and "cg_iters=2" in rows[-1]
    cells = [float(c) for c in rows[1].strip("|").split("|")[1:]]
    assert len(cells) == 4 and all(np.isfinite(cells))  # 2 slices + 2 means


def test_benchmark_config_refuses_bad_sampler_options_and_budgets_up_front():
    import pytest

    from benchmarks.run_benchmark import validate_config
    from mri_score.errors import InputError

    base = {"name": "x", "data": {}, "settings": [{"accel": 4, "mask": "equispaced"}]}
    cases = [({"dds": {"nfe": [10], "options": {"cg_iter": 5}}}, "cfg.yaml: methods.dds: unknown dds option cg_iter"),
             ({"pc": {"nfe": 1}}, "cfg.yaml: methods.pc: the pc sampler needs a budget of at least 2"),
             ({"dps": {"nfe": 10, "options": {"zeta": -1}}}, "methods.dps: dps option zeta must be >= 0"),
             ({"langevin": {"samples": 2}}, "methods.langevin: missing key 'nfe'")]
    for methods, phrase in cases:
        with pytest.raises(InputError) as err:
            validate_config({**base, "methods": methods}, "cfg.yaml")
        assert phrase in str(err.value), str(err.value)
    validate_config({**base, "methods": {"dds": {"nfe": [10, 30], "options": {"cg_iters": 5}}}}, "cfg.yaml")
