"""``mri_score.evaluate`` / ``evaluation.evaluate_dirs`` against independent fastMRI-evaluate formulas."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from mri_score.evaluate import main as evaluate_main
from mri_score.evaluation import evaluate_dirs

ROOT = Path(__file__).resolve().parents[1]
S, H, W = 3, 80, 64  # targets taller than wide: the target-width crop matters
PH, PW = 96, 72  # predictions larger still
R0, C0 = 8, 4  # where the target sits inside a prediction so that the two crops align


# ---------------------------------------------------------------- independent reference (fastMRI evaluate.py)


def ref_crop(x: np.ndarray, side: int) -> np.ndarray:
    h0, w0 = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
    return x[..., h0 : h0 + side, w0 : w0 + side]


def ref_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    side = gt.shape[-1]
    gt = ref_crop(gt.astype(np.float64), side)
    pred = ref_crop(pred.astype(np.float64), side)
    err = gt - pred
    mse = float(np.mean(err**2))
    maxval = float(gt.max())
    return {
        "MSE": mse,
        "NMSE": float(np.sum(err**2) / np.sum(gt**2)),
        "PSNR": float(10 * np.log10(maxval**2 / mse)),
        "SSIM": float(np.mean([structural_similarity(gt[i], pred[i], data_range=maxval, win_size=7)
                               for i in range(gt.shape[0])])),
    }


# ---------------------------------------------------------------- data


def _image(seed: int, shape=(S, H, W)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, shape[1]), np.linspace(-1, 1, shape[2]), indexing="ij")
    base = np.exp(-(xx**2 + (yy / 1.3) ** 2) * 3)
    vol = np.stack([base * (1 + 0.3 * k) + 0.05 * rng.random(base.shape) for k in range(shape[0])])
    return (vol * 1e-4).astype(np.float32)


def _prediction(target: np.ndarray, seed: int, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    pred = np.abs(rng.standard_normal((target.shape[0], PH, PW))) * 1e-4  # garbage outside the crop
    pred[:, R0 : R0 + target.shape[1], C0 : C0 + target.shape[2]] = target
    pred += noise * target.max() * rng.standard_normal(pred.shape)
    return pred.astype(np.float32)


def _write_target(path: Path, rss: np.ndarray, esc: np.ndarray | None = None, **attrs) -> Path:
    with h5py.File(path, "w") as hf:
        hf["reconstruction_rss"] = rss
        if esc is not None:
            hf["reconstruction_esc"] = esc
        for k, v in attrs.items():
            hf.attrs[k] = v
    return path


def _write_pred(path: Path, recon: np.ndarray) -> Path:
    with h5py.File(path, "w") as hf:
        hf["reconstruction"] = recon
    return path


@pytest.fixture
def dirs(tmp_path):
    """Three volumes: acceleration 4, 4, 8; acquisitions AXT2, AXFLAIR, AXT2."""
    t, p = tmp_path / "targets", tmp_path / "preds"
    t.mkdir()
    p.mkdir()
    data = {}
    for k, (acc, acq) in enumerate([(4, "AXT2"), (4, "AXFLAIR"), (8, "AXT2")]):
        gt, esc = _image(k), _image(k + 50)
        pred = _prediction(gt, k, noise=0.02 * (k + 1))
        name = f"file_brain_{k:03d}.h5"
        _write_target(t / name, gt, esc, acceleration=acc, acquisition=acq, max=float(gt.max()))
        _write_pred(p / name, pred)
        data[name] = (gt, esc, pred)
    return t, p, data


def _tree_state(*roots: Path) -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "dir"
            for r in roots for f in sorted(r.rglob("*"))}


def _assert_matches(row: dict[str, float], ref: dict[str, float]) -> None:
    assert list(row) == ["MSE", "NMSE", "PSNR", "SSIM"]
    assert abs(row["PSNR"] - ref["PSNR"]) < 1e-6
    assert abs(row["SSIM"] - ref["SSIM"]) < 1e-9
    assert math.isclose(row["NMSE"], ref["NMSE"], rel_tol=1e-9)
    assert math.isclose(row["MSE"], ref["MSE"], rel_tol=1e-9)


# ---------------------------------------------------------------- formulas


def test_per_volume_metrics_and_summary_match_independent_formulas(dirs):
    t, p, data = dirs
    res = evaluate_dirs(t, p)
    assert res["target_key"] == "reconstruction_rss" and res["failed"] == {} and res["skipped"] == {}
    assert list(res["volumes"]) == sorted(data)
    for name, (gt, _, pred) in data.items():
        ref = ref_metrics(gt, pred)
        _assert_matches(res["volumes"][name], ref)
        # the crop's centring matters far beyond the tolerance: one row off changes PSNR
        g = ref_crop(gt.astype(np.float64), W)
        q = pred[:, (PH - W) // 2 + 1 : (PH - W) // 2 + 1 + W, (PW - W) // 2 : (PW - W) // 2 + W].astype(np.float64)
        assert abs(10 * np.log10(g.max() ** 2 / np.mean((g - q) ** 2)) - ref["PSNR"]) > 1e-3
    for key in ("MSE", "NMSE", "PSNR", "SSIM"):
        vals = np.array([ref_metrics(gt, pred)[key] for gt, _, pred in data.values()])
        assert math.isclose(res["metrics"][key]["mean"], vals.mean(), rel_tol=1e-9)
        assert math.isclose(res["metrics"][key]["std"], vals.std(ddof=1), rel_tol=1e-6)
        assert res["metrics"][key]["count"] == 3
    means = {k: v["mean"] for k, v in res["metrics"].items()}
    stds = {k: v["std"] for k, v in res["metrics"].items()}
    assert res["report"] == " ".join(f"{k} = {means[k]:.4g} +/- {2 * stds[k]:.4g}" for k in sorted(means))


def test_singlecoil_scores_reconstruction_esc(dirs):
    t, p, data = dirs
    res = evaluate_dirs(t, p, challenge="singlecoil")
    assert res["target_key"] == "reconstruction_esc"
    for name, (_, esc, pred) in data.items():
        _assert_matches(res["volumes"][name], ref_metrics(esc, pred))


def test_prediction_of_exactly_the_target_shape_and_of_the_square(tmp_path):
    t, p = tmp_path / "t", tmp_path / "p"
    t.mkdir()
    p.mkdir()
    gt = _image(7)
    rng = np.random.default_rng(0)
    same = (gt + 1e-6 * rng.standard_normal(gt.shape)).astype(np.float32)
    square = ref_crop(same, W).copy()
    _write_target(t / "a.h5", gt)
    _write_pred(p / "a.h5", same)
    _write_target(t / "b.h5", gt)
    _write_pred(p / "b.h5", square)
    res = evaluate_dirs(t, p)
    _assert_matches(res["volumes"]["a.h5"], ref_metrics(gt, same))
    assert res["volumes"]["b.h5"] == res["volumes"]["a.h5"]


# ---------------------------------------------------------------- filters


def test_filters_on_target_attributes(dirs):
    t, p, data = dirs
    names = sorted(data)
    (p / names[2]).unlink()  # filtered out below: its missing prediction is not a failure
    res = evaluate_dirs(t, p, acceleration=4)
    assert list(res["volumes"]) == names[:2] and res["failed"] == {}
    assert res["skipped"] == {names[2]: "acceleration 8 != 4"}
    res = evaluate_dirs(t, p, acceleration=4, acquisition="AXFLAIR")
    assert list(res["volumes"]) == [names[1]]
    assert set(res["skipped"]) == {names[0], names[2]}
    assert math.isnan(res["metrics"]["PSNR"]["std"])  # one volume: the sample std is undefined


def test_a_filter_whose_attribute_is_missing_fails_that_file(dirs):
    t, p, data = dirs
    name = sorted(data)[0]
    with h5py.File(t / name, "a") as hf:
        del hf.attrs["acquisition"]
    res = evaluate_dirs(t, p, acquisition="AXT2")
    assert "no 'acquisition' attribute" in res["failed"][name] and str(t / name) in res["failed"][name]
    assert list(res["volumes"]) == [sorted(data)[2]]


# ---------------------------------------------------------------- failures are reported per file


def test_failures_are_reported_per_file_and_the_rest_is_scored(dirs, capsys):
    t, p, data = dirs
    a, b, c = sorted(data)
    (p / a).unlink()  # missing prediction
    _write_pred(p / b, data[b][2][:2])  # one slice short
    for extra, pred in [("narrow.h5", data[c][2][:, :, :40]), ("nan.h5", np.full((S, PH, PW), np.nan, np.float32))]:
        _write_target(t / extra, data[c][0])
        _write_pred(p / extra, pred)
    _write_target(t / "esc_only.h5", data[c][0])
    with h5py.File(t / "esc_only.h5", "a") as hf:
        hf.move("reconstruction_rss", "reconstruction_esc")
    _write_pred(p / "esc_only.h5", data[c][2])
    _write_target(t / "corrupt.h5", data[c][0])
    (p / "corrupt.h5").write_bytes(b"not hdf5 at all")
    (t / "notes.txt").write_text("not a volume")
    _write_pred(p / "orphan.h5", data[c][2])

    res = evaluate_dirs(t, p)
    assert list(res["volumes"]) == [c]
    _assert_matches(res["volumes"][c], ref_metrics(data[c][0], data[c][2]))
    failed = res["failed"]
    assert set(failed) == {a, b, "narrow.h5", "nan.h5", "esc_only.h5", "corrupt.h5"}
    assert "no prediction" in failed[a] and str(p / a) in failed[a]
    assert "differ after the crop" in failed[b] and str(p / b) in failed[b]
    assert "target-width square" in failed["narrow.h5"]
    assert "NaN" in failed["nan.h5"]
    assert "use --challenge singlecoil" in failed["esc_only.h5"]
    assert "not a readable HDF5" in failed["corrupt.h5"]
    assert all("\n" not in m for m in failed.values())
    assert res["skipped"] == {"notes.txt": "not a .h5 file"}
    assert res["unmatched_predictions"] == ["orphan.h5"]

    rc = evaluate_main(["--target-dir", str(t), "--predictions-dir", str(p)])
    out, err = capsys.readouterr()
    assert rc == 2
    err_lines = err.strip().splitlines()
    assert len(err_lines) == len(failed) + 1 and all(line.startswith("error: ") for line in err_lines)
    assert err_lines[-1].startswith(f"error: {len(failed)} of {len(failed) + 1} volumes could not be scored")
    assert "Traceback" not in err
    out_lines = out.strip().splitlines()
    assert out_lines[0].startswith(f"{c}: MSE = ") and out_lines[-1] == res["report"]


# ---------------------------------------------------------------- command line


def test_cli_scores_writes_json_and_leaves_the_inputs_alone(dirs, tmp_path, capsys):
    t, p, data = dirs
    before = _tree_state(t, p)
    out = tmp_path / "out" / "res.json"
    rc = evaluate_main(["--target-path", str(t), "--predictions-path", str(p), "--acceleration", "4",
                        "--json", str(out)])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("MSE = ") and "PSNR = " in lines[-1]
    assert _tree_state(t, p) == before
    res = json.loads(out.read_text())
    assert set(res["volumes"]) == set(sorted(data)[:2]) and res["filters"] == {"acceleration": 4.0, "acquisition": None}
    for name in res["volumes"]:
        _assert_matches(res["volumes"][name], ref_metrics(data[name][0], data[name][2]))
    assert sorted(p.name for p in out.parent.iterdir()) == ["res.json"]
    rc = evaluate_main(["--target-dir", str(t), "--predictions-dir", str(p), "--acquisition", "AXFLAIR",
                        "--json", str(out)])
    assert rc == 0 and json.loads(out.read_text())["metrics"]["PSNR"]["std"] is None  # NaN -> null
    assert _tree_state(t, p) == before


@pytest.mark.parametrize("case,phrase", [
    ("missing_target_dir", "no such directory"),
    ("target_dir_is_file", "not a directory"),
    ("missing_predictions_dir", "no such directory"),
    ("empty_target_dir", "no .h5 files"),
    ("unknown_flag", "unrecognized arguments"),
    ("bad_challenge", "invalid choice"),
    ("missing_flag", "required"),
    ("bad_acceleration", "invalid float"),
    ("nan_acceleration", "finite number"),
    ("no_match", "no volume matches --acceleration 12"),
    ("json_onto_input", "overwrite an input"),
])
def test_cli_bad_input_is_one_line_exit_2(dirs, tmp_path, capsys, case, phrase):
    t, p, data = dirs
    before = _tree_state(t, p)
    args = {"--target-dir": str(t), "--predictions-dir": str(p)}
    extra: list[str] = []
    if case == "missing_target_dir":
        args["--target-dir"] = str(tmp_path / "nope")
    elif case == "target_dir_is_file":
        args["--target-dir"] = str(t / sorted(data)[0])
    elif case == "missing_predictions_dir":
        args["--predictions-dir"] = str(tmp_path / "nope")
    elif case == "empty_target_dir":
        (tmp_path / "empty").mkdir()
        args["--target-dir"] = str(tmp_path / "empty")
    elif case == "unknown_flag":
        extra = ["--frobnicate"]
    elif case == "bad_challenge":
        extra = ["--challenge", "knee"]
    elif case == "missing_flag":
        del args["--predictions-dir"]
    elif case == "bad_acceleration":
        extra = ["--acceleration", "four"]
    elif case == "nan_acceleration":
        extra = ["--acceleration", "nan"]
    elif case == "no_match":
        extra = ["--acceleration", "12"]
    elif case == "json_onto_input":
        extra = ["--json", str(p / sorted(data)[0])]
    argv = [x for kv in args.items() for x in kv] + extra
    rc = evaluate_main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], lines
    assert "Traceback" not in err and out == ""
    assert _tree_state(t, p) == before


def test_module_entry_point(dirs):
    t, p, _ = dirs
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mri_score.evaluate", "--target-dir", str(t), "--predictions-dir",
                           str(p), "--challenge", "multicoil"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("MSE = ") and proc.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "mri_score.evaluate", "--target-dir", str(t / "nope"),
                          "--predictions-dir", str(p)], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
