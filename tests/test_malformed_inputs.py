"""A corpus of malformed inputs, generated here, against every command line.

Each case must give exit code 2 and exactly one stderr line that names the
file and says what is wrong; no traceback, no output file, input unchanged.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from mri_score.fastmri_io import build_ismrmrd_header, write_fastmri_file
from mri_score.reconstruct import main as reconstruct_main
from mri_score.simulate import main as simulate_main
from mri_score.simulation import simulate_volume
from mri_score.train import main as train_main
from tests.conftest import phantom

ROOT = Path(__file__).resolve().parents[1]


def _kspace(s: int = 2, c: int = 4, n: int = 64) -> np.ndarray:
    ksp, _, _ = simulate_volume(phantom(n, s), coils=c, snr=100.0, seed=0)
    return ksp


def _write(path: Path, kspace, header: bytes | None = None, target=None, **extra) -> Path:
    with h5py.File(path, "w") as hf:
        hf["kspace"] = kspace
        # every case is a 64x64 matrix (the header is written even when the k-space array is malformed)
        hf["ismrmrd_header"] = np.bytes_(header if header is not None else build_ismrmrd_header((64, 64, 1), (64, 64, 1)))
        if target is not None:
            hf["reconstruction_rss"] = target
        for k, v in extra.items():
            hf[k] = v
    return path


def _no_acs_mask(w: int = 64) -> np.ndarray:
    mask = np.zeros(w, dtype=np.float32)
    mask[::4] = 1  # equispaced lines but no fully sampled centre block
    mask[w // 2 - 1 : w // 2 + 1] = 0
    return mask


def make_case(case: str, d: Path) -> tuple[Path, str]:
    """Write malformed input ``case`` into ``d``; return its path and a phrase the error must contain."""
    p = d / f"{case}.h5"
    k = _kspace()
    target = np.abs(k).sum(1)[:, :, :].astype(np.float32)
    if case == "truncated":
        good = _write(d / "good_tmp.h5", k, target=target)
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        good.unlink()
        return p, "not a readable HDF5"
    if case == "zero_byte":
        p.write_bytes(b"")
        return p, "not a readable HDF5"
    if case == "not_hdf5":
        p.write_bytes(b"\x00\x01MRI? no, a text file\n" * 50)
        return p, "not a readable HDF5"
    if case == "no_kspace":
        with h5py.File(p, "w") as hf:
            hf["reconstruction_rss"] = target
        return p, "no 'kspace'"
    if case == "real_kspace":
        return _write(p, k.real.astype(np.float32), target=target), "must be complex"
    if case == "integer_kspace":
        return _write(p, (k.real * 1000).astype(np.int16), target=target), "must be complex"
    if case == "wrong_rank":
        return _write(p, k[0, 0, 0], target=target), "must have shape"
    if case == "zero_coils":
        return _write(p, np.zeros((2, 0, 64, 64), np.complex64), target=target), "empty dimension"
    if case == "nan":
        k[0, 0, 3, 3] = np.nan
        return _write(p, k, target=target), "NaN or Inf"
    if case == "inf":
        k[1, 2, 5, 5] = np.inf
        return _write(p, k, target=target), "NaN or Inf"
    if case == "all_zero":
        return _write(p, np.zeros_like(k), target=target), "all zeros"
    if case == "mask_wrong_length":
        return _write(p, k, target=target, mask=np.ones(63, np.float32)), "mask length"
    if case == "mask_all_zero":
        return _write(p, k, target=target, mask=np.zeros(64, np.float32)), "mask is all zeros"
    if case == "no_acs":
        m = _no_acs_mask()
        return _write(p, k * m, target=target, mask=m), "ACS too narrow"
    if case == "header_garbled":
        return _write(p, k, header=b"<ismrmrdHeader><encoding><encodedSpace>", target=target), "not valid XML"
    if case == "header_missing":
        with h5py.File(p, "w") as hf:
            hf["kspace"] = k
            hf["reconstruction_rss"] = target
        return p, "no 'ismrmrd_header'"
    if case == "recon_larger":
        return _write(p, k, header=build_ismrmrd_header((64, 64, 1), (640, 640, 1)), target=target), "larger than"
    if case == "huge_dims":
        with h5py.File(p, "w") as hf:  # declared, never written: a tiny file that claims ~2 TB
            hf.create_dataset("kspace", shape=(4000, 32, 2048, 2048), dtype=np.complex64, chunks=(1, 1, 64, 64))
            hf["ismrmrd_header"] = np.bytes_(build_ismrmrd_header((2048, 2048, 1), (2048, 2048, 1)))
        return p, "too large"
    raise AssertionError(case)


CASES = ["truncated", "zero_byte", "not_hdf5", "no_kspace", "real_kspace", "integer_kspace", "wrong_rank",
         "zero_coils", "nan", "inf", "all_zero", "mask_wrong_length", "mask_all_zero", "no_acs",
         "header_garbled", "header_missing", "recon_larger", "huge_dims"]
# cases that only matter for k-space consumers: simulate reads the target image, not the mask
SIMULATE_CASES = [c for c in CASES if c not in ("no_acs", "mask_wrong_length", "mask_all_zero")]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def one_error_line(capsys, path: Path, phrase: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and str(path) in err[0] and phrase in err[0], err[0]
    assert "Traceback" not in err[0]


@pytest.mark.parametrize("case", CASES)
def test_reconstruct_rejects_malformed_file(tmp_path, tiny_prior_path, capsys, case):
    (tmp_path / "in").mkdir()
    path, phrase = make_case(case, tmp_path / "in")
    before = sha(path)
    rc = reconstruct_main(["--kspace", str(path), "--out", str(tmp_path / "out"), "--prior", str(tiny_prior_path),
                           "--steps", "2", "--center-fraction", "0.25"])
    assert rc == 2
    one_error_line(capsys, path, phrase)
    assert sha(path) == before
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("case", SIMULATE_CASES)
def test_simulate_rejects_malformed_source(tmp_path, capsys, case):
    (tmp_path / "in").mkdir()
    path, phrase = make_case(case, tmp_path / "in")
    before = sha(path)
    rc = simulate_main(["--out", str(tmp_path / "out"), "--source", str(path), "--coils", "2"])
    assert rc == 2
    one_error_line(capsys, path, phrase)
    assert sha(path) == before
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.h5"))


@pytest.mark.parametrize("case", ["truncated", "zero_byte", "real_kspace", "integer_kspace", "zero_coils", "nan",
                                  "all_zero", "header_garbled", "header_missing", "recon_larger", "huge_dims"])
def test_train_rejects_malformed_training_file(tmp_path, capsys, case):
    d = tmp_path / "train"
    d.mkdir()
    k = _kspace()
    _write(d / "good.h5", k)
    path, phrase = make_case(case, d)
    cfg = {"out_dir": str(tmp_path / "run"), "data": {"source": "fastmri", "path": str(d), "crop": 32},
           "network": {"base_channels": 8, "channel_mult": [1, 2], "emb_dim": 16, "groups": 4},
           "train": {"steps": 1, "batch": 2, "precision": "fp32"}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    rc = train_main(["--config", str(tmp_path / "cfg.yaml")])
    assert rc == 2
    one_error_line(capsys, path, phrase)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_directory_run_processes_good_files_and_lists_all_bad(tmp_path, tiny_prior_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    k = _kspace()
    write_fastmri_file(d / "good.h5", k, None, "SYN", "p")
    bad = [make_case(c, d)[0] for c in ("truncated", "nan", "header_garbled", "no_acs")]
    rc = reconstruct_main(["--kspace", str(d), "--out", str(tmp_path / "out"), "--prior", str(tiny_prior_path),
                           "--steps", "2", "--center-fraction", "0.25"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.h5", "summary.csv"]
    summary = (tmp_path / "out" / "summary.csv").read_text()
    assert summary.count(",failed,") == len(bad) and summary.count(",done,") == 1
    assert len(err) == len(bad) + 1  # one line per bad file, then the summary
    assert all(str(b) in err[-1] for b in bad)


@pytest.mark.parametrize("text,phrase", [
    (":\n  - [unclosed", "YAML"),
    ("name: x\n", "not a protocol config"),
    ("name: x\nprotocol: {}\n", "missing key"),
    ("name: x\nseed: 0\ndata: {size: [32, 32], tuning: {subjects: [30], slices_per_subject: 1}, test: {subjects: [0], "
     "slices_per_subject: 1}}\nsettings: [{accel: 4, mask: equispaced}]\nprotocol: {}\nmethods: {magic: {}}\n",
     "unknown methods"),
])
def test_benchmark_rejects_malformed_config(tmp_path, capfd, text, phrase):
    from benchmarks.run_benchmark import main as benchmark_main

    cfg = tmp_path / "bench_bad.yaml"
    cfg.write_text(text)
    rc = benchmark_main(["--config", str(cfg), "--out-dir", str(tmp_path / "res")])
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and phrase in lines[0] and "Traceback" not in err
    assert str(cfg) in lines[0]
    assert not (tmp_path / "res").exists()


def test_benchmark_rejects_missing_prior(tmp_path, capfd):
    from benchmarks.run_benchmark import main as benchmark_main

    rc = benchmark_main(["--config", str(ROOT / "configs" / "bench_quick.yaml"), "--prior",
                         str(tmp_path / "nope.safetensors"), "--out-dir", str(tmp_path / "res")])
    err = capfd.readouterr().err
    assert rc == 2 and "nope.safetensors" in err and "Traceback" not in err


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_killed_reconstruction_leaves_no_partial_output(tmp_path, tiny_prior_path, sig, code):
    d = tmp_path / "in"
    d.mkdir()
    ksp, target, _ = simulate_volume(phantom(64, 8), coils=4, snr=100.0, seed=0)
    src = write_fastmri_file(d / "vol.h5", ksp, target, "SYN", "p")
    before = sha(src)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mri_score.reconstruct", "--kspace", str(src), "--out", str(out),
                             "--prior", str(tiny_prior_path), "--steps", "400", "--center-fraction", "0.25",
                             "--threads", "1"], stderr=subprocess.PIPE, text=True, env=env,
                            # a suite run in a background job inherits SIGINT as ignored; the child is a
                            # foreground program here, so it gets the default disposition back
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(6.0)  # imports, prior, maps: well inside the 8 slices x 400 steps
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert not out.exists() or not list(out.iterdir())  # neither the .h5 nor a temporary file
    assert sha(src) == before


def test_volume_that_would_not_fit_is_refused_before_allocating(tmp_path, fully_sampled_file, tiny_prior_path,
                                                                 capsys, monkeypatch):
    from mri_score import limits

    # pretend only 1 MiB is free: the 4-coil 64x64 slice needs ~ 24 copies x 2 samples x 128 KiB = 6 MiB natively,
    # 9x that on the 192² grid that --grid auto picks for its 4 mm pixels
    monkeypatch.setattr(limits, "available_memory", lambda: 2**20)
    rc = reconstruct_main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / "out"),
                           "--prior", str(tiny_prior_path), "--steps", "2", "--center-fraction", "0.25"])
    assert rc == 2
    one_error_line(capsys, fully_sampled_file, "but only")
    assert not (tmp_path / "out").exists()


def test_memory_check_counts_the_sampling_grid_that_the_header_asks_for(tmp_path, tiny_prior_path, capsys,
                                                                        monkeypatch):
    """A header whose field of view makes ``--grid auto`` refine 4x is refused on the fine grid's working set."""
    import h5py

    from mri_score import limits

    imgs = phantom(64, 1)
    ksp, target, _ = simulate_volume(imgs, coils=4, snr=100.0, seed=1)
    path = tmp_path / "in" / "huge_fov.h5"
    write_fastmri_file(path, ksp, target, "SYN", "p0")
    with h5py.File(path, "r+") as hf:  # 64 pixels over 64 m: 1000 mm pixels, beyond any prior's range
        hdr = hf["ismrmrd_header"][()].decode()
        del hf["ismrmrd_header"]
        hf["ismrmrd_header"] = hdr.replace("<x>256", "<x>64000").replace("<y>256", "<y>64000").encode()
    # the native working set (24 copies x 2 samples x 4 coils x 64² x 8 B = 6 MiB) fits; the 256² grid's does not
    monkeypatch.setattr(limits, "available_memory", lambda: 16 * 2**20)
    out = tmp_path / "out"
    assert reconstruct_main(["--kspace", str(path), "--out", str(out), "--prior", str(tiny_prior_path), "--steps", "2",
                             "--center-fraction", "0.25", "--grid", "native"]) == 0
    capsys.readouterr()
    out2 = tmp_path / "out2"
    rc = reconstruct_main(["--kspace", str(path), "--out", str(out2), "--prior", str(tiny_prior_path), "--steps", "2",
                           "--center-fraction", "0.25"])
    assert rc == 2
    one_error_line(capsys, path, "256x256 sampling grid")
    assert not out2.exists()
    # an explicit factor is checked the same way
    rc = reconstruct_main(["--kspace", str(path), "--out", str(out2), "--prior", str(tiny_prior_path), "--steps", "2",
                           "--center-fraction", "0.25", "--grid", "3"])
    assert rc == 2
    one_error_line(capsys, path, "192x192 sampling grid")
    assert not out2.exists()


def test_untrusted_checkpoints_give_one_line_errors(tmp_path, fully_sampled_file, tiny_prior_path, tiny_cfg,
                                                     tiny_unet_path, capsys):
    import torch

    from mri_score.checkpoint import load_checkpoint, save_checkpoint
    from mri_score.network import EDMDenoiser, NetworkConfig

    tensors, meta = load_checkpoint(tiny_prior_path)
    meta = {k: v for k, v in meta.items() if k != "format"}
    cases = {}
    # validly signed, but the declared architecture is not the one the tensors were made for
    other = {**meta, "network": {**meta["network"], "base_channels": 12}}
    cases["other_arch"] = (save_checkpoint(tmp_path / "other_arch.safetensors", tensors, other), "shape")
    cases["no_network"] = (save_checkpoint(tmp_path / "no_network.safetensors", tensors,
                                           {k: v for k, v in meta.items() if k != "network"}), "architecture")
    cases["missing_keys"] = (save_checkpoint(tmp_path / "missing.safetensors", dict(list(tensors.items())[3:]), meta),
                             "missing")
    one_channel = NetworkConfig.from_dict({**tiny_cfg.to_dict(), "in_channels": 1})
    cases["one_channel"] = (save_checkpoint(tmp_path / "one_channel.safetensors",
                                            {f"ema.{k}": v for k, v in EDMDenoiser(one_channel).state_dict().items()},
                                            {**meta, "network": one_channel.to_dict()}), "image channels")
    cases["supervised"] = (tiny_unet_path, "not a score prior")
    pkl = tmp_path / "pickled.safetensors"
    torch.save({"weights": torch.ones(2)}, pkl)
    cases["pickle"] = (pkl, "not a readable")
    for name, (path, phrase) in cases.items():
        rc = reconstruct_main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / "out"),
                               "--prior", str(path), "--steps", "2", "--center-fraction", "0.25"])
        assert rc == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and phrase in err[0], (name, err)
    assert not (tmp_path / "out").exists()


def test_resume_with_a_different_architecture_is_refused(tmp_path, capsys):
    cfg = {"out_dir": str(tmp_path / "run"), "data": {"source": "synthetic", "pool_size": 4, "sizes": [64], "crop": 32},
           "network": {"base_channels": 8, "channel_mult": [1, 2], "emb_dim": 16, "groups": 4},
           "train": {"steps": 1, "batch": 2, "precision": "fp32", "ckpt_every": 1}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(path)]) == 0
    capsys.readouterr()
    assert train_main(["--config", str(path), "--resume", "network.base_channels=16", "train.steps=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "architecture differs" in err[0]
