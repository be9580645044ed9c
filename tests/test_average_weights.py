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
from mri_score.training import NO_PARENT


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prior(path, cfg: NetworkConfig, seed: int, parent=None, dtype=torch.float32, **extra):
    """An exported prior's header as ``export_prior`` writes it; ``parent``: the file it was fine-tuned from."""
    torch.manual_seed(seed)
    model = EDMDenoiser(cfg)
    record = {"path": str(parent), "sha256": _sha(parent)} if parent is not None else NO_PARENT
    meta = {"step": seed, "network": cfg.to_dict(), "config": {"data": {"source": f"src{seed}"}}, "kind": "prior",
            "task": "score", "scaling": None, "parent": record, **extra}
    save_checkpoint(path, {f"ema.{k}": v.to(dtype) for k, v in model.state_dict().items()}, meta)
    return path


def _pair(tmp_path, cfg, **extra):
    a = _prior(tmp_path / "a.safetensors", cfg, 1)
    return a, _prior(tmp_path / "b.safetensors", cfg, 2, parent=a, **extra)


@pytest.mark.parametrize("w", [0.0, 1.0])
def test_endpoints_are_the_inputs_bit_for_bit(tmp_path, tiny_cfg, w):
    a, b = _pair(tmp_path, tiny_cfg)
    out = tmp_path / "avg.safetensors"
    assert main(["--base", str(a), "--tuned", str(b), "--weight", str(w), "--out", str(out)]) == 0
    got = load_checkpoint(out)[0]
    want = load_checkpoint(b if w == 1.0 else a)[0]
    assert set(got) == set(want)
    assert all(got[k].view(torch.uint8).numpy().tobytes() == want[k].view(torch.uint8).numpy().tobytes() for k in want)


def test_mix_is_linear_and_header_records_both_inputs(tmp_path, tiny_cfg):
    a, b = _pair(tmp_path, tiny_cfg)
    out = tmp_path / "avg.safetensors"
    main(["--base", str(a), "--tuned", str(b), "--weight", "0.25", "--out", str(out)])
    ta, tb = load_checkpoint(a)[0], load_checkpoint(b)[0]
    got, meta = load_checkpoint(out)
    key = next(k for k in ta if ta[k].is_floating_point() and not torch.equal(ta[k], tb[k]))
    torch.testing.assert_close(got[key], 0.75 * ta[key] + 0.25 * tb[key], rtol=1e-6, atol=1e-7)
    assert meta["average"]["base"] == {"path": str(a), "sha256": _sha(a), "step": 1}
    assert meta["average"]["tuned"] == {"path": str(b), "sha256": _sha(b), "step": 2}
    assert "step" not in meta and meta["pixel_mm"] == [0.8, 1.5]  # both parents: the default range
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
    for bad in (1.5, -0.0001, float("nan"), True):
        with pytest.raises(InputError, match="weight must be a number"):
            average_state(a, a, bad)


def _refusal(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("weight", ["-0.1", "1.5", "nan", "inf", "half"])
def test_bad_weight_is_one_line(tmp_path, tiny_cfg, capsys, weight):
    a, b = _pair(tmp_path, tiny_cfg)
    out = tmp_path / "avg.safetensors"
    assert "weight" in _refusal(capsys, ["--base", str(a), "--tuned", str(b), "--weight", weight, "--out", str(out)])
    assert not out.exists()


def test_other_architecture_missing_file_and_overwrite_are_refused(tmp_path, tiny_cfg, capsys):
    a = _prior(tmp_path / "a.safetensors", tiny_cfg, 1)
    wide = NetworkConfig.from_dict({**tiny_cfg.to_dict(), "base_channels": 16})
    c = _prior(tmp_path / "c.safetensors", wide, 3, parent=a)
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
    ckpt = _prior(tmp_path / "ckpt.safetensors", tiny_cfg, 2, parent=a)
    tensors, meta = load_checkpoint(ckpt)
    save_checkpoint(ckpt, tensors, {**meta, "kind": "training"})
    err = _refusal(capsys, ["--base", str(a), "--tuned", str(ckpt), "--weight", "0.5",
                            "--out", str(tmp_path / "avg.safetensors")])
    assert "not an exported prior" in err


def test_ancestry_follows_the_base_when_the_fine_tune_is_gone(tmp_path, tiny_cfg):
    from benchmarks.protocol import ancestry

    a, b = _pair(tmp_path, tiny_cfg)
    out = tmp_path / "avg.safetensors"
    main(["--base", str(a), "--tuned", str(b), "--weight", "0.5", "--out", str(out)])
    b.unlink()
    chain = ancestry(load_checkpoint(out)[1], root=tmp_path)
    assert [c["data_source"] for c in chain] == ["src2", "src1"]


def _refused(tmp_path, capsys, a, b, weight="0.5") -> str:
    out = tmp_path / "avg.safetensors"
    err = _refusal(capsys, ["--base", str(a), "--tuned", str(b), "--weight", weight, "--out", str(out)])
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))
    return err


def test_a_network_record_from_before_a_field_existed_is_the_same_architecture(tmp_path, tiny_cfg):
    old = {k: v for k, v in tiny_cfg.to_dict().items() if k != "attention_heads"}
    a = _prior(tmp_path / "a.safetensors", tiny_cfg, 1)
    tensors, meta = load_checkpoint(a)
    save_checkpoint(a, tensors, {**meta, "network": old})
    b = _prior(tmp_path / "b.safetensors", tiny_cfg, 2, parent=a)
    out = tmp_path / "avg.safetensors"
    assert main(["--base", str(a), "--tuned", str(b), "--weight", "0.5", "--out", str(out)]) == 0
    assert load_checkpoint(out)[1]["network"] == tiny_cfg.to_dict()


def test_unrelated_labels_scaling_and_pixel_ranges_are_refused(tmp_path, tiny_cfg, capsys):
    a = _prior(tmp_path / "a.safetensors", tiny_cfg, 1)
    stranger = _prior(tmp_path / "s.safetensors", tiny_cfg, 2)  # trained from scratch, not from a
    assert "not fine-tuned from" in _refused(tmp_path, capsys, a, stranger)
    labels = _prior(tmp_path / "l.safetensors", tiny_cfg, 3, parent=a, labels={"contrast": ["t1"]})
    assert "labels record differs" in _refused(tmp_path, capsys, a, labels)
    scaled = _prior(tmp_path / "c.safetensors", tiny_cfg, 4, parent=a, scaling={"kind": "other"})
    assert "scaling record differs" in _refused(tmp_path, capsys, a, scaled)
    far = _prior(tmp_path / "f.safetensors", tiny_cfg, 5, parent=a, pixel_mm=[2.0, 3.0])
    assert "do not overlap" in _refused(tmp_path, capsys, a, far)


def test_pixel_range_is_what_both_parents_saw(tmp_path, tiny_cfg):
    from mri_score.resolution import prior_pixel_range

    a = _prior(tmp_path / "a.safetensors", tiny_cfg, 1, pixel_mm=[0.5, 3.0])
    b = _prior(tmp_path / "b.safetensors", tiny_cfg, 2, parent=a, pixel_mm=[1.0, 4.0])
    out = tmp_path / "avg.safetensors"
    main(["--base", str(a), "--tuned", str(b), "--weight", "0.5", "--out", str(out)])
    assert prior_pixel_range(load_checkpoint(out)[1]) == (1.0, 3.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_keep_their_dtype_rounded_once(tmp_path, tiny_cfg, dtype):
    a = _prior(tmp_path / "a.safetensors", tiny_cfg, 1, dtype=dtype)
    b = _prior(tmp_path / "b.safetensors", tiny_cfg, 2, parent=a, dtype=dtype)
    out = tmp_path / "avg.safetensors"
    main(["--base", str(a), "--tuned", str(b), "--weight", "0.3", "--out", str(out)])
    ta, tb, got = (load_checkpoint(p)[0] for p in (a, b, out))
    for k in ta:
        want = (0.7 * ta[k].double() + 0.3 * tb[k].double()).to(dtype)
        assert got[k].dtype == dtype and torch.equal(got[k], want)


def test_equal_counters_pass_through_and_success_leaves_inputs_and_no_temporaries(tmp_path, tiny_cfg):
    a, b = _pair(tmp_path, tiny_cfg)
    for path in (a, b):  # a non-floating buffer, equal in both
        tensors, meta = load_checkpoint(path)
        save_checkpoint(path, {**tensors, "ema.counter": torch.tensor([7], dtype=torch.int64)}, meta)
    tensors, meta = load_checkpoint(b)  # re-point b's parent at the rewritten a
    save_checkpoint(b, tensors, {**meta, "parent": {"path": str(a), "sha256": _sha(a)}})
    before = {p: p.read_bytes() for p in (a, b)}
    out = tmp_path / "new" / "avg.safetensors"  # a directory that does not exist yet
    assert main(["--base", str(a), "--tuned", str(b), "--weight", "0.5", "--out", str(out)]) == 0
    assert torch.equal(load_checkpoint(out)[0]["ema.counter"], torch.tensor([7]))
    assert {p: p.read_bytes() for p in (a, b)} == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.safetensors", "avg.safetensors", "b.safetensors", "new"]


def test_a_directory_input_and_a_symlinked_output_are_refused(tmp_path, tiny_cfg, capsys):
    a, b = _pair(tmp_path, tiny_cfg)
    (tmp_path / "d").mkdir()
    assert "not a file" in _refused(tmp_path, capsys, tmp_path / "d", b)
    link = tmp_path / "link.safetensors"
    link.symlink_to(a)
    _refusal(capsys, ["--base", str(a), "--tuned", str(b), "--weight", "0.5", "--out", str(link)])
    assert link.is_symlink() and load_checkpoint(a)[1]["step"] == 1
