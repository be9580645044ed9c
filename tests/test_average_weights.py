"""Weight-space averaging of two priors (``mri_score.average_weights``): the exact endpoints, the linear mix,
the header's provenance, the refusals (one line, exit 2) and a loadable result."""

from __future__ import annotations

import hashlib

import pytest
import torch

from mri_score.average_weights import average_state, main
from mri_score.checkpoint import load_checkpoint, save_checkpoint
from mri_score.errors import CheckpointError, InputError
from mri_score.network import EDMDenoiser, NetworkConfig
from mri_score.prior import load_prior


def _prior(path, cfg: NetworkConfig, seed: int, **extra):
    torch.manual_seed(seed)
    model = EDMDenoiser(cfg)
    meta = {"step": seed, "network": cfg.to_dict(), "config": {"data": {"source": f"src{seed}"}}, "kind": "prior",
            **extra}
    save_checkpoint(path, {f"ema.{k}": v for k, v in model.state_dict().items()}, meta)
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("w", [0.0, 1.0])
def test_endpoints_are_the_inputs_bit_for_bit(tmp_path, tiny_cfg, w):
    a, b = _prior(tmp_path / "a.safetensors", tiny_cfg, 1), _prior(tmp_path / "b.safetensors", tiny_cfg, 2)
    out = tmp_path / "avg.safetensors"
    assert main(["--base", str(a), "--tuned", str(b), "--weight", str(w), "--out", str(out)]) == 0
    got = load_checkpoint(out)[0]
    want = load_checkpoint(b if w == 1.0 else a)[0]
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_mix_is_linear_and_header_records_both_inputs(tmp_path, tiny_cfg):
    a, b = _prior(tmp_path / "a.safetensors", tiny_cfg, 1), _prior(tmp_path / "b.safetensors", tiny_cfg, 2)
    out = tmp_path / "avg.safetensors"
    main(["--base", str(a), "--tuned", str(b), "--weight", "0.25", "--out", str(out)])
    ta, tb = load_checkpoint(a)[0], load_checkpoint(b)[0]
    got, meta = load_checkpoint(out)
    key = next(k for k in ta if ta[k].is_floating_point() and not torch.equal(ta[k], tb[k]))
    torch.testing.assert_close(got[key], 0.75 * ta[key] + 0.25 * tb[key], rtol=1e-6, atol=1e-7)
    assert meta["average"]["base"] == {"path": str(a), "sha256": _sha(a)}
    assert meta["average"]["tuned"] == {"path": str(b), "sha256": _sha(b)}
    assert meta["average"]["weight_tuned"] == 0.25
    assert meta["parent"]["sha256"] == _sha(a) and meta["config"] == {"data": {"source": "src2"}}
    assert "mri_score.average_weights" in meta["command"] and "--weight 0.25" in meta["command"]
    model = load_prior(out)  # loads as a prior of the parents' architecture
    assert isinstance(model, EDMDenoiser)


def test_average_state_refuses_mismatched_tensors():
    a = {"w": torch.ones(2), "n": torch.tensor([3])}
    with pytest.raises(CheckpointError, match="tensors differ"):
        average_state(a, {"w": torch.ones(2)}, 0.5)
    with pytest.raises(CheckpointError, match="tensor w"):
        average_state(a, {"w": torch.ones(3), "n": torch.tensor([3])}, 0.5)
    with pytest.raises(CheckpointError, match="non-floating tensor n"):
        average_state(a, {"w": torch.ones(2), "n": torch.tensor([4])}, 0.5)
    with pytest.raises(InputError, match="--weight"):
        average_state(a, a, 1.5)


def _refusal(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("weight", ["-0.1", "1.5", "nan", "inf", "half"])
def test_bad_weight_is_one_line(tmp_path, tiny_cfg, capsys, weight):
    a, b = _prior(tmp_path / "a.safetensors", tiny_cfg, 1), _prior(tmp_path / "b.safetensors", tiny_cfg, 2)
    out = tmp_path / "avg.safetensors"
    assert "weight" in _refusal(capsys, ["--base", str(a), "--tuned", str(b), "--weight", weight, "--out", str(out)])
    assert not out.exists()


def test_other_architecture_missing_file_and_overwrite_are_refused(tmp_path, tiny_cfg, capsys):
    a = _prior(tmp_path / "a.safetensors", tiny_cfg, 1)
    wide = NetworkConfig.from_dict({**tiny_cfg.to_dict(), "base_channels": 16})
    c = _prior(tmp_path / "c.safetensors", wide, 3)
    out = tmp_path / "avg.safetensors"
    before = {p: p.read_bytes() for p in (a, c)}
    assert "network record differs" in _refusal(capsys, ["--base", str(a), "--tuned", str(c), "--weight", "0.5",
                                                         "--out", str(out)])
    assert "no such file" in _refusal(capsys, ["--base", str(a), "--tuned", str(tmp_path / "x.safetensors"),
                                               "--weight", "0.5", "--out", str(out)])
    _refusal(capsys, ["--base", str(a), "--tuned", str(c), "--weight", "0.5", "--out", str(a)])
    assert not out.exists() and {p: p.read_bytes() for p in (a, c)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "c.safetensors"]


def test_a_training_checkpoint_is_refused(tmp_path, tiny_cfg, capsys):
    a = _prior(tmp_path / "a.safetensors", tiny_cfg, 1)
    ckpt = _prior(tmp_path / "ckpt.safetensors", tiny_cfg, 2)
    tensors, meta = load_checkpoint(ckpt)
    save_checkpoint(ckpt, tensors, {**meta, "kind": "training"})
    err = _refusal(capsys, ["--base", str(a), "--tuned", str(ckpt), "--weight", "0.5",
                            "--out", str(tmp_path / "avg.safetensors")])
    assert "not an exported prior" in err


def test_ancestry_follows_the_base_when_the_fine_tune_is_gone(tmp_path, tiny_cfg):
    from benchmarks.protocol import ancestry

    a, b = _prior(tmp_path / "a.safetensors", tiny_cfg, 1), _prior(tmp_path / "b.safetensors", tiny_cfg, 2)
    out = tmp_path / "avg.safetensors"
    main(["--base", str(a), "--tuned", str(b), "--weight", "0.5", "--out", str(out)])
    b.unlink()
    chain = ancestry(load_checkpoint(out)[1], root=tmp_path)
    assert [c["data_source"] for c in chain] == ["src2", "src1"]
