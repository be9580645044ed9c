import hashlib

import h5py
import numpy as np
import pytest

from mri_score.reconstruct import main


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_reconstruct_file_writes_fastmri_output_and_leaves_input(tmp_path, fully_sampled_file, tiny_prior_path, capsys):
    before = sha(fully_sampled_file)
    out = tmp_path / "out"
    rc = main(["--kspace", str(fully_sampled_file), "--out", str(out), "--prior", str(tiny_prior_path),
               "--steps", "3", "--samples", "2", "--center-fraction", "0.25", "--png"])
    assert rc == 0
    assert sha(fully_sampled_file) == before
    with h5py.File(out / fully_sampled_file.name) as hf:
        rec = hf["reconstruction"][()]
        assert rec.dtype == np.float32 and rec.shape == (2, 64, 64)
        assert hf["reconstruction_std"].shape == (2, 64, 64)
        assert hf["mask"].shape == (64,)
        assert hf.attrs["sampler"] == "dds" and hf.attrs["nfe_per_slice"] == 3
    assert (out / "vol_a.png").is_file()
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "PSNR" in line and "NFE 3/slice" in line
    assert sorted(p.name for p in out.iterdir()) == ["vol_a.h5", "vol_a.png"]


def test_reconstruct_is_deterministic_by_seed(tmp_path, fully_sampled_file, tiny_prior_path):
    outs = []
    for d in ("a", "b"):
        main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / d), "--prior", str(tiny_prior_path),
              "--steps", "2", "--center-fraction", "0.25", "--seed", "5"])
        with h5py.File(tmp_path / d / fully_sampled_file.name) as hf:
            outs.append(hf["reconstruction"][()])
    assert np.array_equal(*outs)


@pytest.mark.parametrize("args,message", [
    (["--sampler", "magic"], "unknown sampler"),
    (["--accel", "64"], "--accel"),
    (["--center-fraction", "0.9"], "--center-fraction"),
    (["--device", "cuda"], "CUDA"),
    (["--center-fraction", "0.02"], "ACS too narrow"),
    (["--sampler-opt", "cg_iter=5"], "--sampler-opt: unknown dds option cg_iter; the dds sampler takes"),
    (["--sampler-opt", "cg_iters"], "must look like key=value"),
    (["--sampler-opt", "eta=2"], "--sampler-opt: dds option eta must be in [0, 1]"),
    (["--sampler-opt", "coarse_steps=-1"], "--sampler-opt: dds option coarse_steps must be >= 0, auto or none, got -1"),
    (["--sampler-opt", "coarse_steps=2"], "dds option coarse_steps must be below the budget of network evaluations (2)"),
    (["--sampler-opt", "coarse_steps=1.5"], "dds option coarse_steps must be int, auto or none"),
    (["--sampler", "langevin", "--gamma", "2"], "the langevin sampler has no gamma"),
    (["--sampler", "pc", "--steps", "1"], "--steps: the pc sampler needs a budget of at least 2"),
    (["--gamma", "2", "--sampler-opt", "gamma=3"], "both given"),
    (["--maps-phase", "coil0"], "--maps-phase"),
    (["--maps-threshold", "2"], "--maps-threshold must be noise or a number in (0, 1)"),
    (["--maps-threshold", "loud"], "--maps-threshold must be noise or a number in (0, 1), got 'loud'"),
])
def test_bad_arguments_one_line_exit_2(tmp_path, fully_sampled_file, tiny_prior_path, capsys, args, message):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA present")
    rc = main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / "o"), "--prior", str(tiny_prior_path),
               "--steps", "2", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o" / fully_sampled_file.name).exists()


def test_directory_with_good_and_bad_files(tmp_path, fully_sampled_file, tiny_prior_path, capsys):
    d = fully_sampled_file.parent
    (d / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    (d / "empty.h5").write_bytes(b"")
    rc = main(["--kspace", str(d), "--out", str(tmp_path / "o"), "--prior", str(tiny_prior_path), "--steps", "2",
               "--center-fraction", "0.25"])
    captured = capsys.readouterr()
    assert rc == 2
    assert (tmp_path / "o" / "vol_a.h5").is_file()
    assert "broken.h5" in captured.err and "empty.h5" in captured.err
    assert not (tmp_path / "o" / "broken.h5").exists()


def test_missing_file_and_bad_prior(tmp_path, fully_sampled_file, capsys):
    assert main(["--kspace", str(tmp_path / "nope.h5")]) == 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["--kspace", str(fully_sampled_file), "--prior", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nope.h5" in err[0] and "bad.safetensors" in err[1]


def test_magnitude_convention_rss_adds_the_noise_floor_of_the_target(tmp_path, fully_sampled_file, tiny_prior_path):
    # same seed, same samples: rss = sqrt(|x|² Σ|S|² + C σ_y²) with ESPIRiT maps (Σ|S|² = 1), sense = |x|
    recs = {}
    for mag in ("rss", "sense"):
        main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / mag), "--prior", str(tiny_prior_path),
              "--steps", "2", "--center-fraction", "0.25", "--magnitude", mag])
        with h5py.File(tmp_path / mag / fully_sampled_file.name) as hf:
            recs[mag] = hf["reconstruction"][()]
            assert hf.attrs["magnitude"] == mag
    floor2 = recs["rss"].astype(np.float64) ** 2 - recs["sense"].astype(np.float64) ** 2
    assert floor2.min() > 0
    # one σ_y per slice: the squared floor is the same constant over the whole slice
    for s in range(floor2.shape[0]):
        assert np.allclose(floor2[s], np.median(floor2[s]), rtol=1e-2, atol=1e-3 * floor2[s].max())


def test_sampler_options_reach_the_sampler_and_the_output(tmp_path, fully_sampled_file, tiny_prior_path):
    import json

    def run(name, *extra):
        rc = main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / name), "--prior", str(tiny_prior_path),
                   "--steps", "2", "--center-fraction", "0.25", *extra])
        assert rc == 0
        with h5py.File(tmp_path / name / fully_sampled_file.name) as hf:
            return hf["reconstruction"][()], json.loads(hf.attrs["options"])

    default, opts = run("default")
    assert opts["cg_iters"] == 10 and opts["gamma"] is None  # every effective option is recorded
    fewer, opts = run("cg1", "--sampler-opt", "cg_iters=1")
    assert opts["cg_iters"] == 1 and not np.array_equal(fewer, default)
    sugar, _ = run("gamma", "--gamma", "5")
    spelled, opts = run("gamma_opt", "--sampler-opt", "gamma=5")
    assert opts["gamma"] == 5.0 and np.array_equal(sugar, spelled) and not np.array_equal(sugar, default)


def test_the_noise_edge_threshold_runs_from_the_command_line(tmp_path, fully_sampled_file, tiny_prior_path):
    recs = {}
    for name, extra in (("fixed", ["--maps-threshold", "0.02"]), ("noise", ["--maps-threshold", "noise"]),
                        ("default", [])):
        rc = main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / name), "--prior", str(tiny_prior_path),
                   "--steps", "2", "--center-fraction", "0.25", "--maps", "espirit", *extra])
        assert rc == 0
        with h5py.File(tmp_path / name / fully_sampled_file.name) as hf:
            recs[name] = hf["reconstruction"][()]
    assert np.isfinite(recs["noise"]).all() and recs["noise"].shape == recs["fixed"].shape
    assert not np.allclose(recs["noise"], recs["fixed"])  # the rule reached the maps
    assert np.array_equal(recs["default"], recs["noise"])  # and is the Cartesian default
