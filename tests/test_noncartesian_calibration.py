"""Std calibration keyed to the non-Cartesian trajectory: the keys, the reconstruct command, the fitting script.

Small problems only (32² phantoms, 2 NFE, the tiny prior).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from mri_score import uncertainty
from mri_score.errors import InputError
from mri_score.noncartesian import calibration_key, read_noncartesian_mrd, trajectory_key, write_noncartesian_mrd
from mri_score.request import ReconRequest
from mri_score.simulate_noncartesian import simulate_noncartesian
from tests.conftest import phantom

pytest.importorskip("ismrmrd")

ROOT = Path(__file__).resolve().parents[1]


def _volume(kind: str, count: int, n: int = 32):
    return simulate_noncartesian(phantom(n, 1), kind, count, coils=3, seed=1, pixel_mm=(2.0, 2.0))


def test_keys_name_the_trajectory_and_never_a_cartesian_setting(tmp_path):
    request = ReconRequest(steps=2, samples=2)
    radial16, radial32, spiral8 = _volume("radial", 16), _volume("radial", 32), _volume("spiral", 8)
    assert trajectory_key(radial16).startswith(f"traj=radial/readouts=16x{radial16.readout}/matrix=32x32/kmax=")
    assert trajectory_key(spiral8).startswith(f"traj=spiral/readouts=8x{spiral8.readout}/matrix=32x32/kmax=")
    # the same acquisition written to MRD and read back has the same key (what the fit stores is what reconstruct finds)
    src = write_noncartesian_mrd(tmp_path / "r16.h5", radial16, noise_scans=8)
    assert trajectory_key(read_noncartesian_mrd(src)) == trajectory_key(radial16)
    # half spokes (centre out) are another acquisition than full diameters with the same count
    half = type(radial16)(samples=radial16.samples, coords=radial16.coords * 0.5, matrix=radial16.matrix,
                          trajectory="radial", readout=radial16.readout)
    assert trajectory_key(half) != trajectory_key(radial16)
    keys = [calibration_key(request, v) for v in (radial16, radial32, spiral8)]
    assert len(set(keys)) == 3
    cartesian = uncertainty.settings_key(request)
    assert all(k.startswith(cartesian + "/traj=") for k in keys)
    others = [ReconRequest(steps=s, samples=k, grid=g) for s in (2, 24) for k in (2, 4) for g in ("auto", "native")]
    assert not {uncertainty.settings_key(r) for r in others} & {calibration_key(r, v) for r in others
                                                                 for v in (radial16, radial32, spiral8)}
    assert calibration_key(ReconRequest(steps=3, samples=2), radial16) != keys[0]
    # the key ends with the version of the non-Cartesian defaults (a factor fitted under older ones never matches:
    # test_reconstruct_applies_only_the_factor_of_the_files_trajectory), and a changed CG count is a key of its own
    from mri_score.noncartesian import NONCARTESIAN_DEFAULTS_VERSION

    assert keys[0] == f"{cartesian}/{trajectory_key(radial16)}/nc@v{NONCARTESIAN_DEFAULTS_VERSION}"
    fewer = ReconRequest(steps=2, samples=2, options={"cg_iters_noncartesian": 4})
    assert calibration_key(fewer, radial16) not in keys and "cg_iters_noncartesian=4" in calibration_key(fewer, radial16)


def test_reconstruct_applies_only_the_factor_of_the_files_trajectory(tmp_path, tiny_prior_path):
    from mri_score.reconstruct import main

    src = write_noncartesian_mrd(tmp_path / "in" / "radial16.h5", _volume("radial", 16), noise_scans=16)
    request = ReconRequest(steps=2, samples=2)
    key = calibration_key(request, read_noncartesian_mrd(src))

    def run(name):
        assert main(["--kspace", str(src), "--out", str(tmp_path / name), "--prior", str(tiny_prior_path), "--steps",
                     "2", "--samples", "2", "--quiet"]) == 0
        with h5py.File(tmp_path / name / src.name) as hf:
            return hf["reconstruction_std"][()], str(hf.attrs["std_calibration"])

    raw, attr = run("raw")
    assert attr.startswith("none") and "non-Cartesian" in attr and key in attr
    # a Cartesian factor, one fitted for 32 spokes and one fitted for this trajectory under older non-Cartesian
    # defaults (its key without the /nc@vN suffix) do not apply to a 16-spoke file
    uncertainty.store_factor(tiny_prior_path, uncertainty.settings_key(request), 5.0, 0.9)
    uncertainty.store_factor(tiny_prior_path, calibration_key(request, _volume("radial", 32)), 7.0, 0.9)
    older = f"{uncertainty.settings_key(request)}/{trajectory_key(read_noncartesian_mrd(src))}"
    assert key.startswith(older + "/nc@v")
    uncertainty.store_factor(tiny_prior_path, older, 9.0, 0.9)
    other, attr = run("other")
    assert np.array_equal(other, raw) and attr.startswith("none") and key in attr
    uncertainty.store_factor(tiny_prior_path, key, 3.0, 0.9, fitted_on="test")
    cal, attr = run("cal")
    entry = json.loads(attr)
    assert np.allclose(cal, 3.0 * raw, rtol=1e-6)
    assert entry["factor"] == 3.0 and entry["key"] == key and entry["sidecar"] == tiny_prior_path.name + ".calibration.json"


def test_reconstruct_honours_virtual_coils_on_a_trajectory_file(tmp_path, tiny_prior_path):
    from mri_score.reconstruct import main

    vol = simulate_noncartesian(phantom(32, 1), "radial", 16, coils=6, seed=1, pixel_mm=(2.0, 2.0))
    src = write_noncartesian_mrd(tmp_path / "in" / "six.h5", vol, noise_scans=16)

    def run(name, *flags):
        assert main(["--kspace", str(src), "--out", str(tmp_path / name), "--prior", str(tiny_prior_path), "--steps",
                     "2", "--samples", "2", "--quiet", *flags]) == 0
        with h5py.File(tmp_path / name / src.name) as hf:
            recorded = json.loads(hf.attrs["request"])
            grids.append((recorded["grid"], float(hf.attrs["grid_factor"])))
            return int(hf.attrs["virtual_coils"]), int(hf.attrs["coils"]), str(hf.attrs["std_calibration"]), \
                recorded["virtual_coils"]

    grids = []
    used, coils, _, asked = run("auto")
    assert (used, coils, asked) == (3, 6, "auto")
    # the recorded request names the grid sampled on (the CLI's auto resolved for this file), as the Cartesian path's
    recorded_grid, factor = grids[0]
    assert recorded_grid != "auto" and (recorded_grid == "native") == (factor == 1.0)
    assert recorded_grid == "native" or float(recorded_grid) == factor
    used, coils, attr, asked = run("two", "--virtual-coils", "2")
    assert (used, coils, asked) == (2, 6, 2) and "/virtual_coils=2/nc@v" in attr
    assert run("all", "--virtual-coils", "all")[0] == 6


def test_a_directory_rerun_redoes_a_trajectory_file_once_its_factor_is_stored(tmp_path, tiny_prior_path, capsys):
    from mri_score.reconstruct import main

    src = write_noncartesian_mrd(tmp_path / "in" / "radial16.h5", _volume("radial", 16), noise_scans=16)
    args = ["--kspace", str(src.parent), "--out", str(tmp_path / "out"), "--prior", str(tiny_prior_path), "--steps", "2",
            "--samples", "2", "--quiet"]
    assert main(args) == 0
    assert main(args) == 0 and "done earlier with the same settings" in capsys.readouterr().out
    key = calibration_key(ReconRequest(steps=2, samples=2), read_noncartesian_mrd(src))
    uncertainty.store_factor(tiny_prior_path, key, 3.0, 0.9, fitted_on="test")
    assert main(args) == 0 and "done earlier" not in capsys.readouterr().out
    with h5py.File(tmp_path / "out" / src.name) as hf:
        assert json.loads(hf.attrs["std_calibration"])["key"] == key


def test_storing_a_trajectory_factor_drops_only_the_superseded_trajectory_entries(tiny_prior_path):
    from mri_score.noncartesian import CALIBRATION_KEY_SUFFIX, superseded_calibration_key

    request = ReconRequest(steps=2, samples=2)
    cartesian = uncertainty.settings_key(request)
    current = calibration_key(request, _volume("radial", 16))
    older = current.removesuffix(CALIBRATION_KEY_SUFFIX) + "/nc@v1"
    unversioned = current.removesuffix(CALIBRATION_KEY_SUFFIX)
    assert [superseded_calibration_key(k) for k in (cartesian, current, older, unversioned)] == [False, False, True,
                                                                                                  True]
    coils = calibration_key(request.replace(virtual_coils=2), _volume("radial", 16))
    assert "/virtual_coils=2/" in coils and not superseded_calibration_key(coils)
    assert superseded_calibration_key(coils.removesuffix(CALIBRATION_KEY_SUFFIX) + "/nc@v1")
    # only a key's trajectory part makes it a trajectory key, not a path that happens to hold "/traj="
    assert not superseded_calibration_key(cartesian + "/classifier=/data/traj=x/c.safetensors")
    for k in (cartesian, older, unversioned):
        uncertainty.store_factor(tiny_prior_path, k, 2.0, 0.9)
    # without the predicate nothing is dropped; with it only the trajectory entries of older defaults go
    uncertainty.store_factor(tiny_prior_path, current, 3.0, 0.9)
    assert set(uncertainty.matching_entries(tiny_prior_path)) == {cartesian, older, unversioned, current}
    other = calibration_key(request, _volume("radial", 32))
    uncertainty.store_factor(tiny_prior_path, other, 4.0, 0.9, superseded=superseded_calibration_key)
    entries = uncertainty.matching_entries(tiny_prior_path)
    assert set(entries) == {cartesian, current, other}
    assert entries[current]["factor"] == 3.0 and entries[other]["factor"] == 4.0 and entries[cartesian]["factor"] == 2.0


def test_fitting_script_writes_its_report_and_the_sidecar_entry(tmp_path, tiny_prior_path):
    from benchmarks.run_noncartesian_calibration import main

    stale = calibration_key(ReconRequest(steps=2, samples=2), _volume("radial", 8)).rsplit("/nc@v", 1)[0] + "/nc@v0"
    uncertainty.store_factor(tiny_prior_path, stale, 2.0, 0.9)
    out = tmp_path / "calibration.md"
    assert main(["--prior", str(tiny_prior_path), "--config", str(ROOT / "configs" / "bench_dev.yaml"), "--synth-size",
                 "32", "--subjects", "30", "--slices", "1", "--spokes", "8", "--interleaves", "--nfe", "2",
                 "--threads", "1", "--out", str(out), "--store"]) == 0
    text = out.read_text()
    key = calibration_key(ReconRequest(steps=2, samples=2), _volume("radial", 8))
    assert f"`{key}`" in text and "| radial 8 spokes | 1 |" in text and "std calibration stored" in text
    entry = uncertainty.lookup_factor(tiny_prior_path, key)
    assert entry is not None and entry["factor"] > 0 and entry["level"] == 0.9
    assert "30" in entry["fitted_on"] and "radial 8 spokes" in entry["fitted_on"] and entry["pixels"] > 0
    assert stale not in uncertainty.matching_entries(tiny_prior_path)  # a factor of older defaults is dropped


@pytest.mark.parametrize("args,phrase", [(["--subjects", "0"], "test subjects"),
                                          (["--spokes", "--interleaves"], "no setting"),
                                          (["--samples", "1"], "--samples"),
                                          (["--bogus"], "unrecognized")])
def test_fitting_script_refuses_bad_input_in_one_line(tmp_path, capsys, args, phrase):
    from benchmarks.run_noncartesian_calibration import main

    out = tmp_path / "r.md"
    assert main(["--config", str(ROOT / "configs" / "bench_dev.yaml"), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and phrase in err[0] and not out.exists()


def test_tuning_split_volumes_are_the_protocols_tuning_volumes():
    import numpy as np

    from benchmarks.protocol import protocol_volumes, synthetic_spec
    from benchmarks.tuning_split import TuningSplit
    from mri_score.config import load_config

    config = str(Path(__file__).resolve().parents[1] / "configs" / "bench_dev.yaml")
    cfg = load_config(config)
    spec = synthetic_spec(cfg["data"], "tuning")
    split = TuningSplit.of_config(config)
    assert split.subjects == spec["subjects"] and split.spec["first"] == spec["first"] == 500
    mine = split.volumes(spec["slices"], spec["size"][0])
    cfg["data"]["real"] = []
    cfg["data"].pop("other_generator", None)
    theirs = [v for v in protocol_volumes(cfg) if v["phase"] == "tuning"]
    assert [m["name"] + ".h5" for m in mine] == [t["name"] for t in theirs]
    for m, t in zip(mine, theirs, strict=True):
        assert np.array_equal(m["images"], t["images"]) and m["pixel_mm"] == t["pixel_mm"]


def test_cg_tuning_rule_pairs_each_coverage_with_its_smallest_count_near_the_best():
    from benchmarks.run_noncartesian_tuning import choose, table_psnr

    coverage = {"radial 16": 0.16, "radial 64": 0.58, "spiral 8": 0.71}
    kinds = {"radial 16": "radial", "radial 64": "radial", "spiral 8": "spiral"}
    psnr = {4: (32.0, 42.0, 41.9), 6: (32.8, 41.95, 41.7), 8: (33.1, 41.35, 41.5), 10: (33.15, 41.0, 41.4)}
    means = {n: dict(zip(coverage, v)) for n, v in psnr.items()}
    # 16 spokes: best 33.15 (10), 8 is within 0.1 dB -> 8; 64 spokes: best 42.0 (4) -> 4; spiral: best 41.9 (4) -> 4
    tables = choose(means, coverage, kinds)
    assert tables == {"radial": ((0.16, 8), (0.58, 4)), "spiral": ((0.71, 4),)}
    assert table_psnr(means, coverage, kinds, tables) == {"radial 16": 33.1, "radial 64": 42.0, "spiral 8": 41.9}
    # a denser setting of the same kind that wants more steps raises every sparser one; another kind's does not
    means[10]["spiral 8"] = 43.0
    assert choose(means, coverage, kinds) == {"radial": ((0.16, 8), (0.58, 4)), "spiral": ((0.71, 10),)}
    means[10]["radial 64"] = 43.0
    assert choose(means, coverage, kinds)["radial"] == ((0.16, 10), (0.58, 10))
    # the time budget: only the counts within it compete; the smallest alone where none is
    allowed = {"radial 16": [4, 6], "radial 64": [4], "spiral 8": [4]}
    assert choose(means, coverage, kinds, allowed) == {"radial": ((0.16, 6), (0.58, 4)), "spiral": ((0.71, 4),)}
    with pytest.raises(InputError, match="include 10"):
        choose({8: {"a": 1.0}}, {"a": 0.5}, {"a": "radial"})


def test_cg_tuning_budget_keeps_the_counts_at_most_twice_the_cartesian_time():
    from benchmarks.run_noncartesian_tuning import within_budget

    seconds = {3: {"a": 1.0, "b": 3.0}, 10: {"a": 2.0, "b": 4.0}, 14: {"a": 2.01, "b": 5.0}}
    assert within_budget(seconds, {"a": 1.0, "b": 1.0}) == {"a": [3, 10], "b": [3]}
    assert within_budget(seconds, {"a": 1.0, "b": 1.0}, budget=5.0) == {"a": [3, 10, 14], "b": [3, 10, 14]}


def test_cg_tuning_script_writes_a_table_and_refuses_bad_flags(tmp_path, tiny_prior_path, capsys):
    from benchmarks.run_noncartesian_tuning import main

    out = tmp_path / "tuning.md"
    assert main(["--prior", str(tiny_prior_path), "--config", str(ROOT / "configs" / "bench_dev.yaml"), "--synth-size",
                 "48", "--slices", "1", "--spokes", "8", "--interleaves", "--nfe", "2", "--cg-iters", "2", "10",
                 "--threads", "1", "--out", str(out)]) == 0
    lines = [ln for ln in out.read_text().splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| CG steps | radial 8 spokes (coverage 0.") and lines[0].endswith(" | Δ vs 10 (average) |")
    # PSNR: header, separator, a row per count, the tables' row; seconds: header, separator, a row per count, Cartesian
    psnr, secs = lines[:5], lines[5:]
    assert all(ln.count("|") == psnr[0].count("|") for ln in psnr) and psnr[-1].startswith("| by the tables | ")
    assert len(secs) == 5 and secs[-1].startswith("| Cartesian reference | ")
    assert all(ln.count("|") == secs[0].count("|") for ln in secs)
    assert "**Tables by the rule** (`NONCARTESIAN_CG_BY_COVERAGE`): `{'radial': ((0." in out.read_text()
    bad = tmp_path / "bad.md"
    assert main(["--config", str(ROOT / "configs" / "bench_dev.yaml"), "--cg-iters", "4", "8", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cg-iters" in err[0] and not bad.exists()


def test_floor_rule_adopts_a_kinds_best_only_when_it_beats_the_cartesian_floor(tmp_path, tiny_prior_path, capsys):
    from benchmarks.run_noncartesian_floor import choose, main

    assert choose(0.3, {0.1: 30.0, 0.3: 30.5, 1.0: 30.3}) == 0.3
    assert choose(0.3, {0.1: 30.0, 0.3: 30.35, 1.0: 30.3}) is None  # 0.05 dB: within the margin, keeps gamma_min
    assert choose(1.0, {0.3: 29.0, 1.0: 30.0, 3.0: 29.5}) is None
    with pytest.raises(InputError, match="reference floor 1"):
        choose(0.3, {0.1: 1.0, 0.3: 2.0})
    out = tmp_path / "floor.md"
    assert main(["--prior", str(tiny_prior_path), "--config", str(ROOT / "configs" / "bench_dev.yaml"), "--synth-size",
                 "32", "--slices", "1", "--spokes", "8", "--interleaves", "--nfe", "2", "--threads", "1",
                 "--out", str(out)]) == 0
    text = out.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert lines[0] == "| floor | radial 8 spokes |"
    floors = [float(ln.split(" | ")[0].lstrip("| ")) for ln in lines[2:] if not ln.startswith("| kind") and
              not ln.startswith("| radial") and not ln.startswith("|---")]
    assert {0.1, 0.3, 1.0} <= set(floors) and floors == sorted(floors)
    kind_row = next(ln for ln in lines if ln.startswith("| radial | "))
    best = float(kind_row.split(" | ")[2])
    assert best in floors and "**Entries by the rule** (`NONCARTESIAN_GAMMA_FLOOR`): `{" in text
    bad = tmp_path / "bad.md"
    assert main(["--config", str(ROOT / "configs" / "bench_dev.yaml"), "--spokes", "0", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--spokes" in err[0] and not bad.exists()


def test_floor_sweep_sets_the_final_step_on_every_swept_floor(monkeypatch):
    """Every swept floor names its final denoising factor, 0 included (rule version 1 swept without the step, which
    is on by default on trajectories since defaults version 7); the default row passes no options."""
    import benchmarks.run_noncartesian_floor as floor_rule
    from benchmarks.run_noncartesian_floor import DEFAULT, run_floor

    seen = []
    monkeypatch.setattr(floor_rule, "scored_reconstruction",
                        lambda acq, prior, req: seen.append(req.options) or (30.0, 1.0))
    rows: list[dict] = []
    for floor, step in ((0.3, 0.0), (1.0, 1.0), (DEFAULT, 1.0)):
        assert run_floor(rows, "radial 8 spokes", "v", None, None, ReconRequest(sampler="dds"), floor, step) == 30.0
    # the request resolves its options into the sampler's config; None: the kind's default (``auto``)
    assert [(o.gamma_min_noncartesian, o.final_denoise_noncartesian) for o in seen] == [(0.3, 0.0), (1.0, 1.0),
                                                                                           (None, None)]
    assert [r["floor"] for r in rows] == [0.3, 1.0, DEFAULT]


def test_floor_rule_version_2_weighs_the_final_denoising_step_against_the_default(tmp_path, tiny_prior_path, capsys):
    from benchmarks.run_noncartesian_floor import DEFAULT, choose_with_step, main

    per = {"best": {"a": 30.3, "b": 40.3}, "default": {"a": 30.0, "b": 40.0}}
    assert choose_with_step(1.0, {1.0: 35.3, DEFAULT: 35.0}, per)
    assert not choose_with_step(1.0, {1.0: 35.05, DEFAULT: 35.0}, per)  # within the margin
    per["best"]["a"] = 29.85  # one setting 0.15 dB below the default: refused although the mean gains
    assert not choose_with_step(1.0, {1.0: 35.3, DEFAULT: 35.0}, per)
    with pytest.raises(InputError, match="current default"):
        choose_with_step(1.0, {1.0: 35.3}, per)
    out = tmp_path / "floor2.md"
    assert main(["--prior", str(tiny_prior_path), "--config", str(ROOT / "configs" / "bench_dev.yaml"), "--synth-size",
                 "32", "--slices", "1", "--spokes", "8", "--interleaves", "--nfe", "3", "--threads", "1",
                 "--final-denoise", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "`final_denoise_noncartesian=1`" in text and "version 2" in text
    assert any(ln.startswith(f"| {DEFAULT} | ") for ln in text.splitlines())
    kind_row = next(ln for ln in text.splitlines() if ln.startswith("| radial | "))
    assert f", {DEFAULT}: " in kind_row
    bad = tmp_path / "bad.md"
    assert main(["--config", str(ROOT / "configs" / "bench_dev.yaml"), "--final-denoise", "9", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--final-denoise" in err[-1] and not bad.exists()


def test_coil_compression_rule_and_report(tmp_path, tiny_prior_path, capsys):
    from benchmarks.run_coil_compression import choose, main

    means = {"all": {"a": 30.0, "b": 40.0}, "6": {"a": 30.0, "b": 39.95}, "4": {"a": 29.92, "b": 39.95},
             "3": {"a": 29.85, "b": 40.0}}
    assert choose(means) == "4"  # 3 loses 0.15 dB at a
    means["4"]["a"] = 29.8
    assert choose(means) == "6"
    assert choose({"all": {"a": 1.0}, "2": {"a": 0.0}}) == "all"
    out = tmp_path / "cc.md"
    assert main(["--prior", str(tiny_prior_path), "--config", str(ROOT / "configs" / "bench_dev.yaml"), "--synth-size",
                 "32", "--slices", "1", "--spokes", "8", "--interleaves", "--nfe", "2", "--virtual-coils", "4", "2",
                 "--threads", "1", "--out", str(out)]) == 0
    text = out.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert lines[0] == "| virtual coils | radial 8 spokes | average | Δ vs all (worst setting) | s/slice |"
    assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| all", "| 4", "| 2"]
    assert "| all | " in lines[2] and "(1.0000)" in lines[2] and "+0.00" in lines[2]
    assert "**Choice by the rule:" in text
    bad = tmp_path / "bad.md"
    assert main(["--config", str(ROOT / "configs" / "bench_dev.yaml"), "--virtual-coils", "0", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--virtual-coils" in err[0] and not bad.exists()


def test_grid_rule_takes_the_smallest_coverage_from_which_every_setting_gains():
    from benchmarks.run_noncartesian_grid import MIN_GAIN_DB, choose

    coverage = {"radial 16": 0.16, "radial 32": 0.32, "radial 64": 0.58, "spiral 8": 0.71}
    assert choose({"radial 16": 0.1, "radial 32": 0.5, "radial 64": 0.3, "spiral 8": 1.0}, coverage) == 0.32
    # a denser setting below the threshold stops the run: sparser gains do not count past it
    assert choose({"radial 16": 2.0, "radial 32": 2.0, "radial 64": MIN_GAIN_DB - 0.01, "spiral 8": 1.0},
                  coverage) == 0.71
    assert choose({"radial 16": 2.0, "radial 32": 2.0, "radial 64": 2.0, "spiral 8": 0.0}, coverage) is None
    assert choose(dict.fromkeys(coverage, MIN_GAIN_DB), coverage) == 0.16
    # rounded down: the threshold never exceeds the coverage of the setting it comes from
    assert choose({"radial 16": 1.0}, {"radial 16": 0.16084}) == 0.16


def test_grid_script_writes_its_report(tmp_path, tiny_prior_path):
    from benchmarks.run_noncartesian_grid import main

    out = tmp_path / "grid.md"
    assert main(["--prior", str(tiny_prior_path), "--config", str(ROOT / "configs" / "bench_dev.yaml"), "--synth-size",
                 "48", "--slices", "1", "--spokes", "8", "--interleaves", "--nfe", "2", "--threads", "1",
                 "--out", str(out)]) == 0
    text = out.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len(lines) == 3 and lines[2].startswith("| radial 8 spokes | 0.")
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)
    assert "**Choice by the rule:**" in text and "(`TRAJECTORY_GRID_MIN_COVERAGE`)" in text


def test_a_trajectory_file_whose_slice_would_not_fit_is_refused_in_one_line(tmp_path, tiny_prior_path, capsys,
                                                                            monkeypatch):
    """The working set of the Toeplitz embedding on the sampling grid is checked before sampling: exit 2, no output."""
    from mri_score import pipeline
    from mri_score.batching import slice_working_set
    from mri_score.reconstruct import main

    vol = simulate_noncartesian(phantom(32, 1), "radial", 16, coils=4, seed=1, pixel_mm=(2.0, 2.0))
    src = write_noncartesian_mrd(tmp_path / "in" / "scan.h5", vol, noise_scans=16)
    # 3 virtual coils, K = 2, the 2x grid (64²) from coverage 0.16 on: 4 x the working set of 64² -- one byte short
    need = pipeline.TOEPLITZ_WORKSPACE * slice_working_set(2, 3, (64, 64))
    monkeypatch.setattr(pipeline, "free_memory", lambda device: need - 1)
    out = tmp_path / "out"
    assert main(["--kspace", str(src), "--out", str(out), "--prior", str(tiny_prior_path), "--steps", "2",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(src) in err[0] and "one slice needs about" in err[0]
    assert "64x64 sampling grid (--grid; native is 32x32)" in err[0]
    assert not (out / src.name).exists()
    monkeypatch.setattr(pipeline, "free_memory", lambda device: need)
    assert main(["--kspace", str(src), "--out", str(out), "--prior", str(tiny_prior_path), "--steps", "2",
                 "--quiet"]) == 0
