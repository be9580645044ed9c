import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_refuses_a_config_without_a_protocol(tmp_path):
    """The benchmark has one mode, the protocol: an old per-volume config is refused in one line, exit 2."""
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"name": "old", "data": {"volumes": [{"family": "t1"}]}, "settings": [],
                                    "methods": {"zero_filled": {}}}))
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_benchmark.py"), "--config", str(path),
                          "--out-dir", str(tmp_path / "res")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "not a protocol config" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "res").exists()


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
    from benchmarks.protocol import validate_protocol
    from mri_score.config import load_config

    configs = sorted((ROOT / "configs").glob("bench_*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        cfg = load_config(path)
        validate_protocol(cfg, str(path))
        assert cfg["name"] == path.stem


def test_maps_check_compares_estimated_and_true_maps(tmp_path):
    out = tmp_path / "maps.md"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_maps_check.py"), "--nfe", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    md = out.read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| bench_")]
    assert len(rows) == 6 and sum("true (oracle)" in r for r in rows) == 2
    assert "- command:" in md and "| 16 |" in md  # bench_quick's ACS is 16 lines


def test_benchmark_config_refuses_bad_sampler_options_and_budgets_up_front():
    import pytest

    from benchmarks.protocol import validate_protocol
    from mri_score.errors import InputError

    base = {"name": "x", "data": {"size": [32, 32], "tuning": {"subjects": [30], "slices_per_subject": 1, "seed": 1},
                                  "test": {"subjects": [0], "slices_per_subject": 1, "seed": 0}},
            "settings": [{"accel": 4, "mask": "equispaced"}], "protocol": {}}
    cases = [({"dds": {"nfe": 10, "options": {"cg_iter": 5}}}, "cfg.yaml: methods.dds: unknown dds option cg_iter"),
             ({"dds": {"nfe": 0}}, "cfg.yaml: methods.dds: the dds sampler needs a budget of at least 1"),
             ({"dds": {"nfe": [10, 30]}}, "methods.dds.nfe: the protocol reports one budget"),
             ({"dds": {"samples": 2}}, "methods.dds: missing key 'nfe'"),
             ({"unet": {}}, "methods.unet needs 'weights'"),
             ({"pc": {"nfe": 10}}, "unknown methods ['pc']")]
    for methods, phrase in cases:
        with pytest.raises(InputError) as err:
            validate_protocol({**base, "methods": methods}, "cfg.yaml")
        assert phrase in str(err.value), str(err.value)
    validate_protocol({**base, "methods": {"dds": {"nfe": 10, "options": {"cg_iters": 5}}}}, "cfg.yaml")
