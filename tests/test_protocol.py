"""The frozen evaluation protocol: statistics, λ selection, std calibration, tables from the CSV, end to end."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks.stats import bootstrap_mean_ci, paired_difference, select_parameter
from mri_score import baselines, uncertainty
from mri_score.errors import InputError
from mri_score.request import ReconRequest


def _key(**fields):
    return uncertainty.settings_key(ReconRequest(**fields))


def test_bootstrap_interval_covers_a_known_mean_at_its_level():
    # normal samples of n = 40: the 95 % percentile-bootstrap interval of the mean must contain the true mean
    # in about 95 % of repetitions (binomial tolerance over 300 repetitions), and be seeded
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(300):
        x = rng.normal(2.0, 1.0, 40)
        m, lo, hi = bootstrap_mean_ci(x, resamples=1000, seed=i)
        assert lo <= m <= hi and m == pytest.approx(x.mean())
        hits += lo <= 2.0 <= hi
    assert 0.90 <= hits / 300 <= 0.98
    x = rng.normal(size=30)
    assert bootstrap_mean_ci(x, seed=3) == bootstrap_mean_ci(x, seed=3)
    # the width matches the normal theory 2·1.96·σ/√n
    m, lo, hi = bootstrap_mean_ci(rng.normal(0, 1, 400), resamples=4000, seed=0)
    assert hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.12)
    assert bootstrap_mean_ci([5.0]) == (5.0, 5.0, 5.0)


def test_paired_difference_removes_the_shared_slice_effect():
    rng = np.random.default_rng(0)
    slice_effect = rng.normal(30, 5, 50)  # slices differ a lot; the methods differ by a constant 0.3 dB
    a, b = slice_effect + 0.3 + rng.normal(0, 0.05, 50), slice_effect
    m, lo, hi = paired_difference(a, b)
    assert 0.25 < lo < m < hi < 0.35  # an unpaired interval would be ~±1.4 dB wide
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_lambda_selection_flags_a_sweep_edge():
    assert select_parameter({0.01: [20.0, 21.0], 0.1: [22.0, 23.0], 1.0: [19.0, 18.0]}) == (0.1, "interior")
    assert select_parameter({0.01: [25.0], 0.1: [22.0], 1.0: [19.0]}) == (0.01, "edge (lowest)")
    assert select_parameter({0.01: [15.0], 0.1: [22.0], 1.0: [23.0]}) == (1.0, "edge (highest)")
    assert select_parameter({0.3: [10.0]}) == (0.3, "single value")


def test_conformal_factor_gives_nominal_coverage_on_gaussian_errors():
    # errors ~ N(0, (3σ)²) with σ the reported std: raw coverage of ±1.645σ is far below 90 %; the factor fitted
    # on calibration pixels restores ~90 % on fresh test pixels, and c ≈ 3 (the true under-dispersion)
    rng = np.random.default_rng(0)
    sigma_cal, sigma_test = rng.uniform(0.5, 2, 20000), rng.uniform(0.5, 2, 20000)
    r_cal = np.abs(rng.normal(0, 3 * sigma_cal)) / sigma_cal
    r_test = np.abs(rng.normal(0, 3 * sigma_test)) / sigma_test
    c = uncertainty.conformal_factor(r_cal, 0.9)
    assert c == pytest.approx(3.0, rel=0.03)
    assert uncertainty.coverage(r_test, 1.0, 0.9) < 0.45
    assert uncertainty.coverage(r_test, c, 0.9) == pytest.approx(0.9, abs=0.01)
    for row in uncertainty.reliability(r_cal, r_test):
        assert row["calibrated"] == pytest.approx(row["level"], abs=0.015)
    # error ratios use object pixels only
    truth = np.zeros((4, 4))
    truth[1:3, 1:3] = 1.0
    r = uncertainty.error_ratios(truth, truth + 0.5, np.full((4, 4), 0.25))
    assert r.shape == (4,) and np.allclose(r, 2.0)


def test_calibration_sidecar_is_keyed_by_the_prior_digest(tmp_path, tiny_prior_path):
    key = _key(sampler="dds", steps=30, samples=2)
    assert uncertainty.lookup_factor(tiny_prior_path, key) is None
    side = uncertainty.store_factor(tiny_prior_path, key, 2.5, 0.9, fitted_on="test")
    assert side == tiny_prior_path.with_name(tiny_prior_path.name + ".calibration.json")
    assert uncertainty.lookup_factor(tiny_prior_path, key)["factor"] == 2.5
    assert uncertainty.lookup_factor(tiny_prior_path, _key(sampler="dds", steps=10, samples=2)) is None
    # another prior file (other bytes) does not match the sidecar
    other = tmp_path / "other.safetensors"
    shutil.copy(tiny_prior_path, other)
    with open(other, "ab") as fh:
        fh.write(b" ")
    shutil.copy(side, uncertainty.sidecar_path(other))
    assert uncertainty.lookup_factor(other, key) is None
    side.write_text("{not json")
    with pytest.raises(InputError, match="calibration.json"):
        uncertainty.lookup_factor(tiny_prior_path, key)
    with pytest.raises(InputError):
        uncertainty.store_factor(other, key, float("nan"), 0.9)


def test_calibration_key_covers_every_setting_that_changes_the_std():
    from mri_score.adapt import AdaptSettings

    plain = _key(sampler="dds", steps=24, samples=2)
    assert plain == "dds@v3/nfe=24/K=2/sense"  # the defaults (grid auto, precision auto, maps auto, no label) add nothing
    changed = {"grid": "native", "precision": "fp32", "maps": "lowres", "condition": "t2", "guidance": 2.0,
               "adapt": AdaptSettings()}
    keys = {name: _key(sampler="dds", steps=24, samples=2, **{name: value}) for name, value in changed.items()}
    for name, key in keys.items():
        assert key != plain and f"/{name}=" in key
    assert len(set(keys.values())) == len(keys)
    # seed and the mask request do not change the std's calibration
    assert _key(sampler="dds", steps=24, samples=2, seed=5, accel=8.0, mask_type="random") == plain


def test_calibration_key_carries_non_default_sampler_options(tiny_prior_path):
    from mri_score.samplers import DDSConfig

    plain = _key(sampler="dds", steps=26, samples=2)
    # default options (given or not, as a mapping or a config) add nothing to the key
    assert _key(sampler="dds", steps=26, samples=2, options={}) == plain
    assert _key(sampler="dds", steps=26, samples=2, options={"cg_iters": DDSConfig().cg_iters}) == plain
    assert _key(sampler="dds", steps=26, samples=2, options=DDSConfig()) == plain
    changed = _key(sampler="dds", steps=26, samples=2, options={"sigma_max": "4", "cg_iters": 5})
    assert changed == f"{plain}/cg_iters=5/sigma_max=4.0"
    # DDS's defaults changed twice (version 2, then 3): a key written before names an older version and never matches
    assert plain == f"dds@v{DDSConfig.defaults_version}/nfe=26/K=2/sense" and DDSConfig.defaults_version == 3
    assert plain != "dds@v2/nfe=26/K=2/sense"
    old_schedule = _key(sampler="dds", steps=30, samples=2, options={"sigma_max": 3.0})
    assert old_schedule == "dds@v3/nfe=30/K=2/sense/sigma_max=3.0" != "dds/nfe=30/K=2/sense"
    assert _key(sampler="pc", steps=20, samples=2) == "pc/nfe=20/K=2/sense"  # version 1: no tag
    # a factor fitted for the default schedule never applies to another one
    uncertainty.store_factor(tiny_prior_path, plain, 2.5, 0.9)
    assert uncertainty.lookup_factor(tiny_prior_path, changed) is None
    assert uncertainty.lookup_factor(tiny_prior_path, plain)["factor"] == 2.5
    with pytest.raises(InputError, match="unknown dds option"):
        _key(sampler="dds", steps=26, samples=2, options={"cg_iter": 5})


def test_noise_free_target_is_the_anatomy_magnitude():
    from mri_score.simulation import noise_free_target, simulate_volume, subject_volume

    imgs = subject_volume("test", 3, 2, (48, 48), "t2", 0)
    truth = noise_free_target(imgs, 8)
    assert truth.shape == (2, 48, 48) and truth.dtype == np.float32
    assert np.allclose(truth, np.abs(imgs), atol=1e-5)
    _, noisy_rss, _ = simulate_volume(imgs, 8, 20.0, seed=0)
    assert not np.allclose(noisy_rss, truth, atol=1e-3)  # the noisy target has a noise floor; the truth has none


def test_protocol_config_rules_are_enforced():
    from benchmarks.protocol import validate_protocol

    base = {"name": "x", "settings": [{"accel": 4, "mask": "equispaced"}], "protocol": {},
            "data": {"size": [64, 64], "tuning": {"subjects": [30], "slices_per_subject": 1, "seed": 1},
                     "test": {"subjects": [0], "slices_per_subject": 1, "seed": 0}},
            "methods": {"l1_wavelet": {"lams": [0.01]}}}
    validate_protocol(base, "c.yaml")
    bad = [({"tuning": {"subjects": [0], "slices_per_subject": 1, "seed": 1}}, "must be disjoint"),
           ({"tuning": {"subjects": [30], "slices_per_subject": 1, "seed": 0}}, "seed must differ"),
           ({"real": ["brainweb"]}, "are not development volumes"),
           ({"real": ["nipy_anatomical"]}, "are not development volumes"),  # a final-test volume, named alone
           ({"real": "everything"}, "must be development, final"),
           ({"real_physics": {"coils": 8, "colour": "red"}}, "unknown keys")]
    for change, phrase in bad:
        with pytest.raises(InputError, match=phrase):
            validate_protocol({**base, "data": {**base["data"], **change}}, "c.yaml")
    with pytest.raises(InputError, match="needs 'lams'"):
        validate_protocol({**base, "methods": {"tv": {}}}, "c.yaml")
    with pytest.raises(InputError, match="unknown methods"):
        validate_protocol({**base, "methods": {"langevin": {}}}, "c.yaml")
    validate_protocol({**base, "methods": {"dds": {"nfe": 2, "grid": "auto"}}}, "c.yaml")
    validate_protocol({**base, "methods": {"dds": {"nfe": 2}, "dds:grid2": {"nfe": 2, "grid": 2}}}, "c.yaml")
    with pytest.raises(InputError, match=r"methods.dds: grid must be native, auto or a factor"):
        validate_protocol({**base, "methods": {"dds": {"nfe": 2, "grid": "fine"}}}, "c.yaml")
    for methods, phrase in (({"l1_wavelet:strong": {"lams": [0.1]}}, "unknown methods"),
                            ({"dds:": {"nfe": 2}}, "unknown methods"),
                            ({"dds": {"nfe": 2, "prior": "x.safetensors"}}, "only a dds:<name> variant names its own"),
                            ({"dds:other": {"nfe": 2, "prior": "/no/such.safetensors"}}, "it must be a file"),
                            ({"dds:late": {"nfe": 2, "options": {"final_gamma_rule": "late"}}}, "final_gamma_rule"),
                            ({"dds": {"nfe": 2, "samples": "two"}}, "must be integers"),
                            ({"dds": {"nfe": 2, "samples": 2.5}}, "must be integers")):
        with pytest.raises(InputError, match=phrase):
            validate_protocol({**base, "methods": methods}, "c.yaml")
    final = {**base, "data": {**base["data"], "real": "final"}}
    with pytest.raises(InputError, match="variants belong to development configs"):
        validate_protocol({**final, "methods": {"dds": {"nfe": 2}, "dds:grid2": {"nfe": 2, "grid": 2}}}, "c.yaml")


def test_protocol_dds_variants_run_on_the_test_data_with_their_own_prior_and_grid(tmp_path, tiny_prior_path):
    """``dds:<name>`` rows: measured on the test slices only, never tuned, never a baseline; their own prior / grid."""
    from benchmarks.protocol import run_protocol, validate_protocol
    from benchmarks.tables import render_summary, render_variants
    from mri_score.prior import load_prior

    other = tmp_path / "other_prior.safetensors"
    shutil.copy(tiny_prior_path, other)
    cfg = {"name": "variants", "seed": 0,
           "data": {"size": [32, 32], "coils": 2, "snr": 100, "families": ["t1"],
                    "tuning": {"subjects": [30], "slices_per_subject": 1, "seed": 1},
                    "test": {"subjects": [0, 1], "slices_per_subject": 2, "seed": 0}},
           "settings": [{"accel": 2, "mask": "equispaced", "center_fraction": 0.25}],
           "protocol": {"widen": 0},
           "methods": {"l1_wavelet": {"lams": [1e-3], "iters": 3}, "dds": {"nfe": 2, "samples": 2},
                       "dds:grid2": {"nfe": 2, "samples": 2, "grid": 2},
                       "dds:other": {"nfe": 2, "samples": 2, "prior": str(other)}}}
    validate_protocol(cfg, "c.yaml")
    rows, cal = run_protocol(cfg, load_prior(tiny_prior_path))
    assert {r["method"] for r in rows if r["phase"] == "tuning"} == {"l1_wavelet", "dds"}
    test = [r for r in rows if r["phase"] == "test" and r["unit"] == "slice"]
    by = {m: [r for r in test if r["method"] == m] for m in ("dds", "dds:grid2", "dds:other")}
    assert all(len(v) == 4 for v in by.values())
    assert {r["grid_factor"] for r in by["dds:grid2"]} == {2.0} and {r["grid_factor"] for r in by["dds"]} == {1.0}
    assert by["dds:grid2"][0]["label"] == "dds:grid2 (NFE=2, K=2)"
    # the same network in another file gives the default's numbers: the variant's prior is the one that ran
    assert [r["PSNR"] for r in by["dds:other"]] == [r["PSNR"] for r in by["dds"]]
    assert [r["PSNR"] for r in by["dds:grid2"]] != [r["PSNR"] for r in by["dds"]]
    str_rows = [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]
    table = render_variants(str_rows)
    assert "| dds:grid2 (NFE=2, K=2) | 4 (2) |" in table and "| dds (NFE=2, K=2) | 4 (2) |" in table
    # variant − control pairs: the same network gives zero; a pair with the default repeats the main table's Δ
    ctl = render_variants(str_rows, controls=[("dds:other", "dds"), ("dds:grid2", "dds")])
    assert ctl.startswith(table.rstrip("\n")) and "| dds:other − dds | 4 (2) | 0.00 [0.00, 0.00] | +0.0000 |" in ctl
    main_delta = next(line for line in table.splitlines() if "dds:grid2 (NFE" in line).split(" | ")[6]
    assert f"| dds:grid2 − dds | 4 (2) | {main_delta} |" in ctl
    assert render_variants(str_rows, controls=[("dds:absent", "dds")]) == table  # no common slices: no second table
    assert "dds:" not in render_summary(str_rows)  # a variant is never the strongest baseline
    # the std factor was fitted for the plain dds request: a variant's std is not reported as calibrated
    assert cal["factors"] and all(r["cov_cal_90"] != "" for r in test if r["method"] == "dds")
    assert all(r.get("cov_cal_90", "") == "" for r in test if r["method"].startswith("dds:"))


def test_protocol_dds_grid_auto_follows_each_volumes_pixels(tiny_prior_path):
    """``grid: auto`` gives the phantom (3.75 mm) its pixel-rule grid (2.5) and in-range pixels the low-acceleration 2x."""
    from benchmarks import protocol
    from benchmarks.harness import undersample
    from mri_score.prior import ComplexPrior, load_prior
    from mri_score.simulation import simulate_volume
    from tests.conftest import phantom

    prior = ComplexPrior(load_prior(tiny_prior_path))
    ksp, _, _ = simulate_volume(phantom(32, 1), coils=2, snr=100.0, seed=0)
    acq = undersample(ksp, "equispaced", 2.0, 0.25, "x.h5")
    factors = []
    for pixel in ((3.75, 3.75), (1.0, 1.0), None):
        out = protocol.solve("dds", {"nfe": 2, "grid": "auto"}, None, {**acq, "pixel_mm": pixel}, 0, "acs", prior, 0)
        factors.append(out["grid_factor"])
        assert out["primary"].shape == (32, 32)
    # the tiny prior's range is the default 0.8–1.5 mm: 3.75 / 2.5 = 1.5; in range or unknown, the 2x mask (below
    # 5.66x acceleration, 32²) gets the low-acceleration grid
    assert factors == [2.5, 2.0, 2.0]


def test_protocol_volumes_carry_their_pixel_size_into_the_acquisition():
    """``grid: auto`` needs each volume's pixels: real ones from the header, synthetic ones the range's coarsest."""
    from benchmarks.protocol import acquire, protocol_volumes
    from mri_score.data.realset import load_real_volume

    cfg = {"data": {"size": [48, 48], "pixel_mm": [2.0, 2.5], "families": ["t1"],
                    "tuning": {"subjects": [30], "slices_per_subject": 1, "seed": 1},
                    "test": {"subjects": [0], "slices_per_subject": 1, "seed": 0},
                    "real": ["nibabel_phantom_epi"]}}
    vols = protocol_volumes(cfg)
    real = [v for v in vols if v["name"] == "nibabel_phantom_epi.h5"][0]
    assert real["pixel_mm"] == load_real_volume("nibabel_phantom_epi").pixel_mm and max(real["pixel_mm"]) > 3
    assert all(v["pixel_mm"] == (2.5, 2.5) for v in vols if v is not real)
    one = {**real, "images": real["images"][:1]}
    acq = acquire(one, {"accel": 4, "mask": "equispaced", "center_fraction": 0.25}, 4, 100.0)
    assert acq["pixel_mm"] == real["pixel_mm"]


def test_pooled_std_is_the_local_rms_of_the_std():
    from mri_score.uncertainty import pooled_std

    std = np.zeros((5, 5))
    std[2, 2] = 3.0
    assert np.array_equal(pooled_std(std, 1), std)
    pooled = pooled_std(std, 3)
    assert pooled[2, 2] == pytest.approx(1.0)  # sqrt(9 / 9)
    assert pooled[0, 0] == 0.0 and pooled[1, 1] == pytest.approx(1.0)
    assert np.allclose(pooled_std(np.full((4, 4), 2.0), 5), 2.0)  # edges average valid pixels only
    corner = np.zeros((4, 4))
    corner[0, 0] = 2.0
    assert pooled_std(corner, 3)[0, 0] == pytest.approx(np.sqrt(4.0 / 4))  # 2 x 2 valid neighbours at the corner



def test_protocol_benchmark_end_to_end_and_tables_from_csv(tmp_path, tiny_prior_path):
    from benchmarks import make_tables
    from benchmarks.protocol import read_csv
    from benchmarks.run_benchmark import main
    from benchmarks.tables import render, render_summary

    cfg = {"name": "proto_tiny", "seed": 0, "prior": str(tiny_prior_path),
           "data": {"size": [48, 48], "coils": 4, "snr": 100, "families": ["t1", "t2"],
                    "tuning": {"subjects": [30], "slices_per_subject": 2, "seed": 1},
                    "test": {"subjects": [0, 1], "slices_per_subject": 1, "seed": 0},
                    "real": ["nibabel_phantom_epi"]},
           "settings": [{"accel": 4, "mask": "equispaced", "center_fraction": 0.25}],
           "protocol": {"widen": 1, "oracle_maps": ["dds"]},
           "methods": {"zero_filled": {}, "cg_sense": {"lams": [0.01, 0.1], "iters": 5},
                       "l1_wavelet": {"lams": [1e-6, 1e-5], "iters": 5},  # far too small: best at the high edge
                       "bart_pics": {"lams": [0.01, 0.1], "iters": 5},
                       "dds": {"nfe": 2, "samples": 2}}}
    if not baselines.bart_available():  # a config that lists BART without bart is refused (tested below)
        del cfg["methods"]["bart_pics"]
    path = tmp_path / "bench_proto_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "res"
    assert main(["--config", str(path), "--out-dir", str(out), "--store-calibration"]) == 0
    rows = read_csv(out / "proto_tiny.csv")
    tuning = [r for r in rows if r["phase"] == "tuning"]
    test = [r for r in rows if r["phase"] == "test" and r["unit"] == "slice"]
    # tuning never touches the test subjects or the real set; test subjects are the configured ones
    assert {r["volume"] for r in tuning} == {"tuning_subject30_t1.h5"}
    assert {r["subject"] for r in test if r["group"].startswith("synthetic")} == {"0", "1"}
    assert {r["method"] for r in tuning} <= {"cg_sense", "l1_wavelet", "bart_pics", "dds"}
    # L1's sweep was widened once beyond its high edge
    assert sorted({float(r["lam"]) for r in tuning if r["method"] == "l1_wavelet"}) == pytest.approx([1e-6, 1e-5, 1e-4])
    # one λ per swept method at test time, the same on synthetic and real slices
    for m in ("cg_sense", "l1_wavelet"):
        assert len({r["lam"] for r in test if r["method"] == m}) == 1
    real = [r for r in test if r["group"].startswith("real")]
    assert real and {r["maps"] for r in real if r["method"] == "dds"} == {"acs", "oracle"}
    assert all(np.isfinite(float(r["PSNR"])) and np.isfinite(float(r["PSNR_rss"])) for r in test)
    assert all(r["cov_cal_90"] != "" for r in test if r["method"] == "dds")
    # every DDS row records its sampling grid (native here: no grid: auto); the baselines have none
    assert {r["grid_factor"] for r in rows if r["method"] == "dds"} == {"1.0"}
    assert {r["grid_factor"] for r in rows if r["method"] != "dds"} == {""}
    # both conventions differ (|x| vs clean truth, expected RSS vs noisy RSS)
    assert any(r["PSNR"] != r["PSNR_rss"] for r in test)
    md = (out / "proto_tiny.md").read_text()
    assert "- command:" in md and "--store-calibration" in md and "| dds (NFE=2, K=2) |" in md
    assert "dds (NFE=2, K=2), oracle maps" in md and "ΔPSNR vs" in md and "### λ selection" in md
    assert "### Uncertainty" in md and "### Secondary" in md and (out / "proto_tiny_reliability.png").is_file()
    # the report's tables are exactly the CSV's rendering, deterministically
    body = render(rows)
    assert body == render(read_csv(out / "proto_tiny.csv")) and body in md
    # the per-volume table against L1-wavelet: one row per test volume, Δ = the volume rows' difference
    vol_rows = {(r["volume"], r["method"]): r for r in rows if r["unit"] == "volume" and r["maps"] == "acs"}
    per_vol = body.split("### DDS against l1_wavelet per volume")[1].split("###")[0]
    for v in sorted({r["volume"] for r in test}):
        d = float(vol_rows[(v, "dds")]["PSNR"]) - float(vol_rows[(v, "l1_wavelet")]["PSNR"])
        assert f"| {v.removesuffix('.h5')} |" in per_vol and f"| {d:+.2f} |" in per_vol
    # the sidecar was written for the prior and the DDS settings
    side = json.loads(uncertainty.sidecar_path(tiny_prior_path).read_text())
    assert side["prior_sha256"] == uncertainty.file_sha256(tiny_prior_path)
    assert _key(sampler="dds", steps=2, samples=2, grid="native") == "dds@v3/nfe=2/K=2/sense/grid=native" in side["entries"]
    # the block writer replaces only its blocks: the README's summary and the results document's report
    readme, doc = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text("intro\n<!-- results-summary:begin -->\nold\n<!-- results-summary:end -->\noutro\n")
    doc.write_text("head\n<!-- results:begin -->\nold\n<!-- results:end -->\ntail\n")
    args = ["--csv", str(out / "proto_tiny.csv"), "--readme", str(readme), "--results-doc", str(doc)]
    assert make_tables.main(args) == 0
    text, report = readme.read_text(), doc.read_text()
    assert text.startswith("intro\n<!-- results-summary:begin -->") and text.endswith("<!-- results-summary:end -->\noutro\n")
    assert render_summary(read_csv(out / "proto_tiny.csv")) in text and "old" not in text
    assert body in report and "old" not in report and report.endswith("<!-- results:end -->\ntail\n")
    once = (text, report)
    make_tables.main(args)
    assert (readme.read_text(), doc.read_text()) == once
    # a final test CSV: the README summary carries its test sets and only the development run's real rows, and
    # docs/results.md its own report block; a document without that block is refused before anything is written
    rows = read_csv(out / "proto_tiny.csv")
    final_csv = tmp_path / "final.csv"
    with final_csv.open("w", newline="") as fh:  # the same run relabelled as a final test of another real set
        import csv as _csv

        w = _csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{**r, "group": r["group"].replace("real MR", "real MR FINAL")} for r in rows])
    assert make_tables.main([*args, "--final-csv", str(final_csv)]) == 2
    assert doc.read_text() == report and readme.read_text() == text
    doc.write_text(report + "<!-- results-final:begin -->\nnot run\n<!-- results-final:end -->\n")
    assert make_tables.main([*args, "--final-csv", str(final_csv)]) == 0
    final_rows = read_csv(final_csv)
    summary = readme.read_text()
    dev_real = [r for r in rows if r["group"].startswith("real")]
    assert render_summary(final_rows + dev_real) in summary and "final.csv and the real development rows" in summary
    assert summary.count("| real MR FINAL") >= 1 and summary.count("| synthetic") == render_summary(final_rows).count(
        "| synthetic"), "the development run's synthetic rows are not repeated"
    assert render(final_rows) in doc.read_text() and body in doc.read_text() and "not run" not in doc.read_text()
    assert make_tables.main([*args, "--final-csv", str(tmp_path / "absent.csv")]) == 2


def test_readme_and_results_doc_blocks_are_the_committed_csv_rendering():
    from pathlib import Path

    from benchmarks.documents import (
        BEGIN,
        DEV_BEGIN,
        DEV_END,
        END,
        FINAL_BEGIN,
        FINAL_END,
        SUM_BEGIN,
        SUM_END,
        dev_ablation_block,
        dev_ablation_csvs,
        final_block,
        results_block,
        summary_block,
    )
    from benchmarks.tables import DEFAULT_CSV, FINAL_CSV

    root = Path(__file__).resolve().parents[1]
    csv_path = root / "benchmarks" / "results" / DEFAULT_CSV
    readme = (root / "README.md").read_text()
    doc = (root / "docs" / "results.md").read_text()
    if not csv_path.is_file():
        pytest.skip(f"{DEFAULT_CSV} not committed yet (the protocol has not been run)")
    final = root / "benchmarks" / "results" / FINAL_CSV
    block = readme[readme.index(SUM_BEGIN): readme.index(SUM_END) + len(SUM_END)]
    assert block == summary_block(csv_path, final if final.is_file() else None), \
        "README summary block is stale: run python benchmarks/make_tables.py"
    block = doc[doc.index(BEGIN): doc.index(END) + len(END)]
    assert block == results_block(csv_path), "docs/results.md is stale: run python benchmarks/make_tables.py"
    if final.is_file():
        block = doc[doc.index(FINAL_BEGIN): doc.index(FINAL_END) + len(FINAL_END)]
        assert block == final_block(final), "docs/results.md's final test is stale: run benchmarks/make_tables.py"
    ablations = dev_ablation_csvs()
    if ablations:
        block = doc[doc.index(DEV_BEGIN): doc.index(DEV_END) + len(DEV_END)]
        assert block == dev_ablation_block(ablations), "docs/results.md's ablation is stale: run benchmarks/make_tables.py"


def test_summary_names_the_prior_of_each_run(tmp_path):
    import shutil

    from benchmarks.documents import SUM_END, run_prior, summary_block
    from benchmarks.tables import DEFAULT_CSV, FINAL_CSV

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    if not (results / DEFAULT_CSV).is_file() or not (results / FINAL_CSV).is_file():
        pytest.skip("the development and final results are not committed")
    dev, final = tmp_path / DEFAULT_CSV, tmp_path / FINAL_CSV
    for path in (dev, final):
        shutil.copy(results / path.name, path)
    # no reports beside the CSVs: no note
    assert run_prior(dev) is None and "Priors:" not in summary_block(dev, final)
    dev.with_suffix(".md").write_text("# x\n\n- prior: new.safetensors (sha256 aaaa…); in-distribution\n")
    final.with_suffix(".md").write_text("- command: x\n- prior: old.safetensors (sha256 bbbb…)\n")
    assert run_prior(dev) == "new.safetensors (sha256 aaaa…)"
    block = summary_block(dev, final)
    assert block.endswith("Priors: the real development rows `new.safetensors (sha256 aaaa…)`; the other rows (the "
                          f"final run) `old.safetensors (sha256 bbbb…)`.\n{SUM_END}")


def test_prior_ablation_pairs_volumes_and_counts_wins():
    from benchmarks.tables import render_prior_ablation

    def rows(psnrs):
        return [{"unit": "volume", "method": "dds", "phase": "test", "setting": "4x equispaced", "volume": f"v{i}.h5",
                 "maps": "acs", "PSNR": str(p), "SSIM": "0.5"} for i, p in enumerate(psnrs)] + [
                {"unit": "slice", "method": "dds", "phase": "test", "setting": "4x equispaced", "volume": "v0.h5",
                 "maps": "acs", "PSNR": "99", "SSIM": "0.9"}]

    text = render_prior_ablation([("a", rows([30.0, 31.0])), ("b", rows([30.5, 30.0]))])
    assert "| 4x equispaced | v0 | acs | 30.00 / 0.500 | 30.50 / 0.500 | +0.50 |" in text
    assert "| 4x equispaced | v1 | acs | 31.00 / 0.500 | 30.00 / 0.500 | -1.00 |" in text
    assert "b: higher PSNR than a on 1 of 2" in text
    assert "not counted" not in text


def test_prior_ablation_marks_finer_grids_and_leaves_mixed_rows_out_of_the_count():
    from benchmarks.tables import render_prior_ablation

    def rows(psnrs, grids):
        return [{"unit": "volume", "method": "dds", "phase": "test", "setting": "8x random", "volume": f"v{i}.h5",
                 "maps": "acs", "PSNR": str(p), "SSIM": "0.5", **({"grid_factor": g} if g is not None else {})}
                for i, (p, g) in enumerate(zip(psnrs, grids))]

    # the reference CSV predates the column (native grid); the second ran v1 at x1.5
    text = render_prior_ablation([("a", rows([30.0, 31.0], [None, None])), ("b", rows([30.5, 32.0], ["1.0", "1.5"]))])
    assert "| 8x random | v0 | acs | 30.00 / 0.500 | 30.50 / 0.500 | +0.50 |" in text
    assert "| 8x random | v1 | acs | 31.00 / 0.500 | 32.00 / 0.500 (×1.5) | +1.00 |" in text
    assert "b: higher PSNR than a on 1 of 1 volume × setting × maps rows sampled on the same grid; 1 rows" in text


def test_timing_table_gives_median_total_and_paired_multiples_of_l1_and_per_volume_ratios():
    from benchmarks.tables import timing_lines

    def row(label, vol, s, sec, maps="acs"):
        return {"setting": "4x equispaced", "label": label, "volume": vol, "slice": str(s), "seconds": str(sec),
                "maps": maps}

    # a big volume (2 slices) where DDS takes 1.5x L1, a small one (1 slice) where it takes 3x
    test = [row("l1_wavelet", "big.h5", 0, 2.0), row("l1_wavelet", "big.h5", 1, 2.0), row("l1_wavelet", "small.h5", 0, 0.5),
            row("dds (NFE=24, K=2)", "big.h5", 0, 3.0), row("dds (NFE=24, K=2)", "big.h5", 1, 3.0),
            row("dds (NFE=24, K=2)", "small.h5", 0, 1.5), row("dds (NFE=24, K=2)", "big.h5", 0, 99.0, maps="oracle")]
    text = "\n".join(timing_lines(test, ["4x equispaced"]))
    # medians 3.0 / 2.0; totals 7.5 / 4.5; per-slice ratios (1.5, 1.5, 3.0) -> median 1.5; oracle rows left out
    assert "| 4x equispaced | dds (NFE=24, K=2) | 3.00 | 7.5 | 1.50 | 1.67 | 1.50 |" in text
    assert "| 4x equispaced | l1_wavelet | 2.00 | 4.5 | 1.00 | 1.00 | 1.00 |" in text
    assert "| 4x equispaced | dds (NFE=24, K=2) | big | 2 | 3.00 | 2.00 | 1.50 |" in text
    assert "| 4x equispaced | dds (NFE=24, K=2) | small | 1 | 1.50 | 0.50 | 3.00 |" in text
    assert "| l1_wavelet | big |" not in text  # the per-volume table is DDS's


def test_reconstruct_writes_the_calibrated_std_only_for_matching_settings(tmp_path, fully_sampled_file,
                                                                          tiny_prior_path):
    import h5py

    from mri_score.reconstruct import main

    def run(name, steps):
        assert main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / name), "--prior",
                     str(tiny_prior_path), "--steps", str(steps), "--samples", "2", "--center-fraction", "0.25",
                     "--magnitude", "sense"]) == 0
        with h5py.File(tmp_path / name / fully_sampled_file.name) as hf:
            return hf["reconstruction_std"][()], str(hf.attrs["std_calibration"])

    raw, attr = run("raw", 2)
    assert attr.startswith("none")
    uncertainty.store_factor(tiny_prior_path, _key(sampler="dds", steps=2, samples=2), 3.0, 0.9)
    cal, attr = run("cal", 2)
    assert np.allclose(cal, 3.0 * raw, rtol=1e-6) and json.loads(attr)["factor"] == 3.0
    _, attr = run("other", 3)  # no entry for NFE 3: the raw std, said so
    assert attr.startswith("none")


def test_frozen_protocol_slices_keep_the_head_inside_the_field_of_view():
    """A 128 matrix at 0.8-1.5 mm cuts through the head (even CG-SENSE scored 15 dB there); the frozen
    protocol's pixel size must keep every tuning and test slice's border dark, as in a clinical scan."""
    from pathlib import Path

    from benchmarks.protocol import protocol_volumes

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "configs" / "bench_protocol.yaml").read_text())
    cfg["data"]["real"] = []
    for phase in ("tuning", "test"):  # two slices of every subject keep the test short
        cfg["data"][phase]["slices_per_subject"] = 2
    vols = protocol_volumes(cfg)
    assert {v["phase"] for v in vols} == {"tuning", "test"}
    for v in vols:
        a = np.abs(v["images"])
        edge = np.concatenate([a[:, :2].ravel(), a[:, -2:].ravel(), a[:, :, :2].ravel(), a[:, :, -2:].ravel()])
        assert edge.max() < 0.05 * a.max(), v["name"]
    # and the old setting did cut it: the test can fail
    cfg["data"]["pixel_mm"] = [0.8, 1.5]
    cut = protocol_volumes(cfg)
    assert any(np.abs(v["images"])[:, :2].max() > 0.5 * np.abs(v["images"]).max() for v in cut)


def test_training_split_note_follows_the_parent_chain_of_the_shipped_priors():
    from benchmarks.protocol import ancestry, training_split_note
    from mri_score.prior import load_prior

    default = load_prior().meta
    # the default prior (mixed corpus, continued) descends from the mixed prior and the brain-only prior (template
    # slices): all render the symmetric template, so the synthetic rows are in-distribution, whatever split each used
    assert [c["data_source"] for c in ancestry(default)] == ["mixed", "mixed", "synthetic"]
    assert "in-distribution" in training_split_note(default)
    broken = {**default, "parent": {"path": "mri_score/weights/nope.safetensors", "sha256": "0" * 64}}
    assert ancestry(broken)[-1]["data_source"].startswith("unknown")
    assert "in-distribution" not in training_split_note(broken)
    assert "unknown" in training_split_note({})


def test_every_group_factor_covers_each_group_where_pooling_does_not():
    # two settings under-dispersed by 2 and by 4: the pooled factor under-covers the harder one, the largest
    # per-group factor covers both at >= the level (and is exactly the harder group's conformal factor)
    rng = np.random.default_rng(1)
    groups = {name: np.abs(rng.normal(0, k, 20000)) for name, k in (("4x", 2.0), ("8x", 4.0))}
    pooled = uncertainty.conformal_factor(np.concatenate(list(groups.values())), 0.9)
    every = uncertainty.every_group_factor(groups, 0.9)
    assert every == uncertainty.conformal_factor(groups["8x"], 0.9) == pytest.approx(4.0, rel=0.03)
    assert uncertainty.coverage(groups["8x"], pooled, 0.9) < 0.87
    assert all(uncertainty.coverage(r, every, 0.9) >= 0.9 for r in groups.values())
    with pytest.raises(InputError):
        uncertainty.every_group_factor({}, 0.9)


def test_protocol_std_factors_take_the_largest_per_setting_factor():
    from benchmarks.protocol import std_factors

    rng = np.random.default_rng(2)
    r4, r8 = np.abs(rng.normal(0, 1.0, 5000)), np.abs(rng.normal(0, 3.0, 5000))
    rows = [{"setting": "4x equispaced", "method": "dds", "_ratios": r4[:2500]},
            {"setting": "4x equispaced", "method": "dds", "_ratios": r4[2500:]},
            {"setting": "8x random", "method": "dds", "_ratios": r8}]
    factors = std_factors(rows, (0.5, 0.9))
    for p in (0.5, 0.9):
        assert factors[p] == uncertainty.conformal_factor(r8, p) > uncertainty.conformal_factor(r4, p)
    # the two 4x rows are pooled within their setting: dropping the 8x setting leaves the 4x factor
    assert std_factors(rows[:2], (0.9,)) == {0.9: uncertainty.conformal_factor(r4, 0.9)}
    assert std_factors([], (0.9,)) == {}


def test_noise_floor_is_the_magnitude_error_of_the_sampled_noise():
    # the coil-combined image of k-space noise on the sampled fraction f, projected on the image phase,
    # has std σ_y·√(f/2) (orthonormal FFT, Σ|S|² = 1): simulate it
    from operators import birdcage_maps, ifft2c, make_mask, sense1_combine

    torch.manual_seed(0)
    h = w = 64
    maps = torch.from_numpy(birdcage_maps(8, (h, w)))
    mask, _ = make_mask("random", 4, 0.08, (h, w), "noise_floor.h5")
    sigma = 0.3
    noise = sigma * torch.complex(torch.randn(200, 8, h, w), torch.randn(200, 8, h, w)) / 2 ** 0.5
    img = sense1_combine(ifft2c(noise * torch.from_numpy(mask)), maps)
    phase = torch.exp(1j * torch.rand(h, w) * 6.283)
    along = (img * phase.conj()).real
    f = float(np.mean(np.asarray(mask) != 0))
    assert float(along.std()) == pytest.approx(uncertainty.noise_floor_std(sigma, f), rel=0.02)
    with pytest.raises(InputError):
        uncertainty.noise_floor_std(-1.0, 0.5)


def test_error_ratios_with_a_floor_read_as_coverage_of_the_combined_std():
    rng = np.random.default_rng(3)
    truth = np.ones((32, 32))
    recon = truth + rng.normal(0, 1.0, truth.shape)
    std = rng.uniform(0.05, 0.5, truth.shape)
    floor, z = 0.4, uncertainty.gaussian_z(0.9)
    r = uncertainty.error_ratios(truth, recon, std, floor, 0.9)
    for c in (0.5, 1.0, 2.0, 4.0):
        direct = np.mean(np.abs(recon - truth) <= z * np.hypot(c * std, floor))
        assert uncertainty.coverage(r, c, 0.9) == pytest.approx(direct, abs=1e-12)
    assert np.array_equal(uncertainty.error_ratios(truth, recon, std), np.abs(recon - truth).ravel() / std.ravel())


def test_clustered_bootstrap_covers_when_slices_of_a_volume_are_correlated():
    """Volume effects make slices dependent: the slice bootstrap under-covers, the volume-clustered one does not."""
    from benchmarks.stats import clustered_mean_ci

    rng = np.random.default_rng(0)
    hits_slice = hits_cluster = 0
    trials = 200
    for t in range(trials):
        effects = rng.normal(0.0, 1.0, 6)  # 6 volumes; the true mean is 0
        values = np.concatenate([e + rng.normal(0.0, 0.2, 8) for e in effects])
        clusters = np.repeat(np.arange(6), 8)
        _, lo, hi = bootstrap_mean_ci(values, resamples=400, seed=t)
        hits_slice += lo <= 0.0 <= hi
        _, lo, hi = clustered_mean_ci(values, clusters, resamples=400, seed=t)
        hits_cluster += lo <= 0.0 <= hi
    assert hits_slice / trials < 0.6  # far below the nominal 95 %
    assert hits_cluster / trials > 0.8  # near nominal (6 clusters: the percentile bootstrap is a little short)


def test_clustered_bootstrap_is_seeded_and_checks_its_inputs():
    from benchmarks.stats import clustered_mean_ci, clustered_paired_difference

    v, c = [1.0, 2.0, 3.0, 4.0], ["a", "a", "b", "b"]
    assert clustered_mean_ci(v, c, seed=1) == clustered_mean_ci(v, c, seed=1)
    assert clustered_mean_ci(v, c)[0] == pytest.approx(2.5)
    assert np.isnan(clustered_mean_ci([], [])[0])
    with pytest.raises(ValueError):
        clustered_mean_ci(v, c[:3])
    m, lo, hi = clustered_paired_difference([2.0, 3.0, 4.0, 5.0], v, c)
    assert m == lo == hi == 1.0


def test_bart_rows_are_named_for_their_regulariser_and_never_vanish_silently(monkeypatch):
    from benchmarks import protocol

    assert protocol.method_label("bart_pics", {}) == "bart pics TV"
    assert protocol.method_label("bart_wavelet", {}) == "bart pics wavelet"
    monkeypatch.setattr(baselines, "bart_available", lambda: False)
    cfg = {"data": {"size": [32, 32], "tuning": {"subjects": [30], "slices_per_subject": 1},
                    "test": {"subjects": [0], "slices_per_subject": 1}},
           "settings": [{"accel": 4, "mask": "equispaced"}], "protocol": {},
           "methods": {"bart_pics": {"lams": [0.01], "iters": 2}}}
    with pytest.raises(InputError, match="bart is not installed"):
        protocol.run_protocol(cfg, None)


def test_bart_regulariser_reaches_the_command(monkeypatch):
    import subprocess

    if not baselines.bart_available():
        pytest.skip("bart not installed")
    calls = []
    real = subprocess.run

    def spy(cmd, *a, **k):
        calls.append(cmd)
        return real(cmd, *a, **k)

    monkeypatch.setattr(subprocess, "run", spy)
    from mri_score.calibration import calibrate

    ks = torch.randn(2, 16, 16, dtype=torch.complex64)
    mask = torch.ones(16)
    cal = calibrate(ks, mask, "lowres")
    baselines.bart_pics(ks.numpy(), mask.numpy(), cal, 0.01, 2, regularizer="W")
    assert any("W:7:0:0.01" in c for c in calls if isinstance(c, list))


def test_final_test_set_is_read_only_under_a_matching_registration(tmp_path, tiny_prior_path, monkeypatch):
    from benchmarks import registration
    from benchmarks.protocol import registered_dds, run_protocol

    cfg = {"name": "final_tiny", "prior": str(tiny_prior_path),
           "data": {"size": [32, 32], "tuning": {"subjects": [30], "slices_per_subject": 1, "seed": 1},
                    "test": {"subjects": [0], "slices_per_subject": 1, "seed": 0}, "real": "final"},
           "settings": [{"accel": 4, "mask": "equispaced", "center_fraction": 0.25}], "protocol": {},
           "methods": {"zero_filled": {}, "dds": {"nfe": 2}}}
    reg = tmp_path / "registration.json"
    monkeypatch.setattr(registration, "REGISTRATION", reg)
    with pytest.raises(InputError, match="no registration"):
        registration.verify(cfg, tiny_prior_path, registered_dds(cfg), reg)
    registration.write(cfg, tiny_prior_path, registered_dds(cfg), reg)
    registration.verify(cfg, tiny_prior_path, registered_dds(cfg), reg)  # matches
    for change in ({"methods": {"zero_filled": {}, "dds": {"nfe": 3}}}, {"settings": [{"accel": 8, "mask": "random"}]}):
        with pytest.raises(InputError, match="differ from the registration"):
            changed = {**cfg, **change}
            registration.verify(changed, tiny_prior_path, registered_dds(changed), reg)
    # a changed code digest refuses too
    monkeypatch.setattr(registration, "code_digest", lambda root=None: "0" * 64)
    with pytest.raises(InputError, match="code_sha256"):
        registration.verify(cfg, tiny_prior_path, registered_dds(cfg), reg)
    with pytest.raises(InputError, match="differ from the registration"):
        run_protocol(cfg, None, prior_path=tiny_prior_path)  # the protocol itself refuses before reading anything


def test_register_command_writes_a_registration_only_for_a_final_config(tmp_path, tiny_prior_path, capfd):
    from benchmarks.register import main as register_main

    cfg = {"name": "x", "prior": str(tiny_prior_path),
           "data": {"size": [32, 32], "tuning": {"subjects": [30], "slices_per_subject": 1, "seed": 1},
                    "test": {"subjects": [0], "slices_per_subject": 1, "seed": 0}, "real": "development"},
           "settings": [{"accel": 4, "mask": "equispaced"}], "protocol": {}, "methods": {"zero_filled": {}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert register_main(["--config", str(path), "--out", str(tmp_path / "r.json")]) == 2
    assert "data.real must be final" in capfd.readouterr().err and not (tmp_path / "r.json").exists()
    path.write_text(yaml.safe_dump({**cfg, "data": {**cfg["data"], "real": "final"}}))
    assert register_main(["--config", str(path), "--out", str(tmp_path / "r.json")]) == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["prior_sha256"] == uncertainty.file_sha256(tiny_prior_path) and len(rec["code_sha256"]) == 64
    assert register_main(["--config", str(path), "--out", str(tmp_path / "r.json"), "--check"]) == 0


def test_real_volumes_use_the_evaluation_physics_and_its_truth():
    """Real slices: loop coils (not the training birdcage), prewhitened correlated noise, truth = RSS of the
    noise-free whitened coil images; the oracle maps are RSS-normalised."""
    from benchmarks.protocol import acquire, real_volumes

    cfg = {"data": {"real": ["nibabel_phantom_epi"], "test": {"seed": 0},
                    "real_physics": {"coils": 6, "snr": 50.0}}}
    (vol,) = real_volumes(cfg)
    vol = {**vol, "images": vol["images"][:2]}
    acq = acquire(vol, {"accel": 4, "mask": "equispaced", "center_fraction": 0.25}, 8, 100.0)
    assert acq["under"].shape[1] == 6 and acq["sigma"] == 1.0
    maps = acq["oracle"][0].maps
    rss = maps.abs().square().sum(0).sqrt()
    assert torch.allclose(rss[rss > 0.5], torch.ones_like(rss[rss > 0.5]), atol=1e-3)
    assert acq["truth"].shape == vol["images"].shape and (acq["truth"] >= 0).all()
    # the whitened noise has unit variance per complex sample: the estimated sigma_y is of that order
    assert 0.3 < acq["cals"][0].sigma_y < 3.0


def test_settings_that_differ_only_in_centre_fraction_get_their_own_names():
    from benchmarks.protocol import setting_tag, validate_protocol

    assert setting_tag({"accel": 4, "mask": "equispaced", "center_fraction": 0.08}) == "4x equispaced"
    assert setting_tag({"accel": 4, "mask": "equispaced", "center_fraction": 0.2}) == "4x equispaced, centre 0.2"
    cfg = {"data": {"size": [32, 32], "tuning": {"subjects": [30], "slices_per_subject": 1, "seed": 1},
                    "test": {"subjects": [0], "slices_per_subject": 1, "seed": 0}},
           "settings": [{"accel": 4, "mask": "equispaced"}, {"accel": 4, "mask": "equispaced", "center_fraction": 0.08}],
           "protocol": {}, "methods": {"zero_filled": {}}}
    with pytest.raises(InputError, match="share a name"):
        validate_protocol(cfg, "c.yaml")


def test_cpu_seconds_count_child_processes_such_as_bart():
    """BART runs as a child process: its CPU time must be in the row's cpu_seconds, not only the wall time."""
    import subprocess
    import sys
    import time

    from benchmarks.protocol import cpu_seconds_now

    start, own = cpu_seconds_now(), time.process_time()
    subprocess.run([sys.executable, "-c", "sum(range(20_000_000))"], check=True)
    child, own = cpu_seconds_now() - start, time.process_time() - own
    assert child > 0.1 and child > 5 * own  # the child's work, which process_time alone does not see


def test_tables_documents_are_checked_before_a_run(tmp_path, monkeypatch):
    from benchmarks import documents, run_benchmark

    readme, doc = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text("<!-- results-summary:begin -->\n<!-- results-summary:end -->\n")
    doc.write_text("<!-- results:begin -->\n<!-- results:end -->\n")
    documents.check_documents(readme, doc, final=False)
    with pytest.raises(InputError, match="results-final"):
        documents.check_documents(readme, doc, final=True)
    # run_benchmark --tables checks the documents (the final block for a final config) before it runs anything
    seen = []
    monkeypatch.setattr(documents, "check_documents", lambda **kw: seen.append(kw))
    monkeypatch.setattr(run_benchmark, "run_protocol_benchmark", lambda *a: seen.append("ran") or 0)
    root = Path(__file__).resolve().parents[1]
    assert run_benchmark.main(["--config", str(root / "configs" / "bench_final.yaml"), "--tables"]) == 0
    assert seen == [{"final": True}, "ran"]
    seen.clear()
    assert run_benchmark.main(["--config", str(root / "configs" / "bench_dev.yaml"), "--tables"]) == 0
    assert seen == [{"final": False}, "ran"]


def test_std_rank_probe_correlations_and_bad_flags(capsys):
    from benchmarks.run_std_rank_probe import main, slice_correlations

    rng = np.random.default_rng(0)
    truth = np.ones((32, 32))
    scale = np.linspace(0.01, 0.2, 32)[None, :].repeat(32, 0)  # the error's scale grows across the image
    recon = truth + scale * rng.standard_normal((32, 32))
    err = np.abs(recon - truth)
    out = slice_correlations(truth, recon, err, [3])
    assert out["raw"] == pytest.approx(1.0)  # the error itself orders the errors perfectly
    noisy = slice_correlations(truth, recon, scale * np.abs(rng.standard_normal((32, 32))), [3, 9])
    assert noisy["pooled 9x9"] > noisy["raw"]  # pooling a one-draw std recovers the scale's order
    assert 0.2 < noisy["oracle (|error| pooled 5x5)"] <= 1.0
    for args, flag in ((["--windows", "4"], "--windows"), (["--stride", "0"], "--stride"),
                       (["--config", "configs/bench_final.yaml"], "final test set")):
        assert main(args) == 2
        assert flag in capsys.readouterr().err


def test_real_physics_matrix_pads_the_real_images_at_their_pixel_size():
    from benchmarks.protocol import MAX_MATRIX, real_volumes, validate_protocol
    from mri_score.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(str(root / "configs" / "bench_matrix.yaml"))
    validate_protocol(cfg, "bench_matrix.yaml")
    vols = real_volumes(cfg)
    assert [v["images"].shape[1:] for v in vols] == [(128, 96), (256, 256), (320, 320)]
    native, padded = vols[0]["images"], vols[2]["images"]
    assert vols[2]["pixel_mm"] == vols[0]["pixel_mm"]  # a larger field of view, not finer pixels
    assert np.array_equal(padded[:, 96:224, 112:208], native) and padded.sum() == pytest.approx(native.sum())
    assert len({v["group"] for v in vols}) == 3
    for bad in (32, MAX_MATRIX + 2, 128.5, True, "320"):
        cfg["data"]["real_physics"][1]["matrix"] = bad
        with pytest.raises(InputError, match="matrix must be an integer"):
            validate_protocol(cfg, "bench_matrix.yaml")


def test_dev_ablation_block_renders_one_table_per_csv_in_order(tmp_path):
    import shutil
    from pathlib import Path

    from benchmarks.documents import DEV_BEGIN, DEV_END, dev_ablation_block
    from benchmarks.tables import render_variants
    from mri_score.errors import InputError

    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "ablation_prior_dev.csv"
    if not committed.is_file():
        pytest.skip("ablation_prior_dev.csv not committed")
    second = tmp_path / "ablation_second.csv"
    shutil.copy(committed, second)
    block = dev_ablation_block([committed, second])
    assert block.startswith(DEV_BEGIN) and block.endswith(DEV_END)
    assert "from ablation_prior_dev.csv, ablation_second.csv;" in block
    first_at, second_at = block.index("From `ablation_prior_dev.csv`:"), block.index("From `ablation_second.csv`:")
    assert first_at < second_at
    from benchmarks.protocol import read_csv

    table = render_variants(read_csv(committed))
    assert block.count(table) == 2  # the same rows give the same table under each heading
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="bad.csv"):
        dev_ablation_block([committed, bad])


def test_oracle_lambda_report_sweeps_per_volume_until_interior_and_refines(tmp_path, tiny_prior_path):
    """The per-volume L1 oracle widens a sweep whose best is at an edge, refines an interior best by half steps, and
    the report pairs DDS with it per volume; a final-set config is refused in one line."""
    from benchmarks.run_oracle_lambda import main
    from benchmarks.stats import half_steps, sweep_until_interior

    calls = []

    def peak_at(best):
        return lambda lam: calls.append(lam) or -abs(np.log(lam / best))

    lam, sweep, interior = sweep_until_interior(peak_at(0.05), [0.001, 0.003, 0.01], 3.0, widen=2)
    assert interior and {0.001, 0.003, 0.01, 0.03, 0.09} <= set(sweep)  # widened twice
    assert set(half_steps(0.03, 3.0)) <= set(sweep) and lam == pytest.approx(0.052)  # then refined around 0.03
    calls.clear()
    lam, sweep, interior = sweep_until_interior(peak_at(1e-6), [0.001, 0.003, 0.01], 3.0, widen=1)
    assert not interior and lam == pytest.approx(0.000333) and len(calls) == 4  # still an edge: no refinement
    cfg = {"name": "bench_oracle_tiny", "seed": 0, "prior": str(tiny_prior_path),
           "data": {"size": [48, 48], "coils": 4, "snr": 100, "families": ["t1"],
                    "tuning": {"subjects": [30], "slices_per_subject": 1, "seed": 1},
                    "test": {"subjects": [0], "slices_per_subject": 2, "seed": 0}, "real": ["nibabel_phantom_epi"]},
           "settings": [{"accel": 4, "mask": "equispaced", "center_fraction": 0.25}],
           "protocol": {"widen": 1},
           "methods": {"l1_wavelet": {"lams": [0.001, 0.01, 0.1], "iters": 5}, "dds": {"nfe": 2, "samples": 2}}}
    path = tmp_path / "bench_oracle_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "oracle.md"
    assert main(["--config", str(path), "--groups", "real", "in-distribution", "--out", str(out)]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith("| 4x")]
    per_volume = [r for r in rows if len(r) == 11]
    assert {r[2] for r in per_volume} == {"nibabel_phantom_epi.h5", "test_subject00_t1.h5"}
    for r in per_volume:  # the reported Δ is DDS − L1 at the volume's best swept λ
        sweep = {float(k): float(v) for k, v in (pair.split(":") for pair in r[10].split())}
        assert max(sweep.values()) == pytest.approx(float(r[5].split("/")[0]), abs=0.006)
        assert float(r[7]) == pytest.approx(float(r[3].split("/")[0]) - float(r[5].split("/")[0]), abs=0.011)
    assert len([r for r in rows if len(r) == 5]) == 2  # one paired row per group
    path.write_text(yaml.safe_dump({**cfg, "data": {**cfg["data"], "real": "final"}}))
    assert main(["--config", str(path), "--out", str(tmp_path / "final.md")]) == 2
    assert not (tmp_path / "final.md").exists()


def test_a_dds_variant_naming_its_maps_is_solved_with_those_maps(tiny_prior_path):
    """A variant's ``maps_phase`` / ``maps_threshold`` re-estimate its ACS maps; the default entry keeps the shared ones."""
    from dataclasses import replace

    from benchmarks import protocol
    from benchmarks.harness import undersample
    from mri_score.calibration import calibrate
    from mri_score.prior import ComplexPrior, load_prior
    from mri_score.simulation import simulate_volume
    from tests.conftest import phantom

    prior = ComplexPrior(load_prior(tiny_prior_path))
    ksp, _, _ = simulate_volume(phantom(32, 1), coils=4, snr=100.0, seed=0)
    acq = undersample(ksp, "equispaced", 2.0, 0.25, "x.h5")
    spec = {"nfe": 2, "samples": 1, "maps_phase": "estimator", "maps_threshold": 0.01}
    own = calibrate(torch.from_numpy(acq["under"][0]), torch.from_numpy(acq["mask"]), maps_phase="estimator",
                    maps_threshold=0.01)
    direct = {**acq, "cals": [replace(acq["cals"][0], maps=own.maps)]}
    variant = protocol.solve("dds:x", spec, None, acq, 0, "acs", prior, 0)
    same = protocol.solve("dds:x", {"nfe": 2, "samples": 1}, None, direct, 0, "acs", prior, 0)
    shared = protocol.solve("dds:x", {"nfe": 2, "samples": 1}, None, acq, 0, "acs", prior, 0)
    assert np.allclose(variant["primary"], same["primary"], atol=1e-5)
    assert not np.allclose(variant["primary"], shared["primary"], atol=1e-3)
