"""The noise-conditional classifier: its network, training as ``task: classifier`` (with exact resume), loading."""

from __future__ import annotations

import copy

import h5py
import pytest
import torch

from mri_score.checkpoint import load_checkpoint, save_checkpoint
from mri_score.classifier import NoiseClassifier, load_classifier
from mri_score.errors import CheckpointError, InputError
from mri_score.network import NetworkConfig
from mri_score.prior import load_prior
from mri_score.training import NO_PARENT, export_prior, train

LABELS_META = {"contrast": ["t1", "t2", "pd", "flair", "fatsat", "other"], "anatomy": ["brain", "body", "limb"]}


def _cfg(tmp_path, name: str, steps: int = 4) -> dict:
    return {
        "task": "classifier", "out_dir": str(tmp_path / name),
        "data": {"source": "mixed", "pool_size": 6, "sizes": [64], "crop": 32, "seed": 1, "subjects": 2},
        "network": {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "emb_dim": 16, "groups": 4,
                    "label_classes": [6, 3]},
        "sigma": {"p_mean": -1.2, "p_std": 1.2},
        "train": {"steps": steps, "batch": 4, "lr": 1e-3, "warmup": 1, "ckpt_every": 2, "log_every": 1,
                  "precision": "fp32", "seed": 3},
    }


def test_classifier_logits_any_size_and_null_fields_leave_the_likelihood(tiny_cfg):
    torch.manual_seed(0)
    model = NoiseClassifier(NetworkConfig.from_dict({**tiny_cfg.to_dict(), "label_classes": [6, 3]}))
    x = torch.randn(2, 2, 37, 50)
    logits = model(x, torch.tensor([0.1, 2.0]))
    assert [tuple(lg.shape) for lg in logits] == [(2, 6), (2, 3)]
    only_contrast = model.log_prob(x, 0.5, torch.tensor([[2, 3], [4, 3]]))
    want = torch.log_softmax(model(x, 0.5)[0], dim=1)[[0, 1], [2, 4]]
    torch.testing.assert_close(only_contrast, want)
    both = model.log_prob(x, 0.5, torch.tensor([[2, 1], [4, 0]]))
    torch.testing.assert_close(both - only_contrast, torch.log_softmax(model(x, 0.5)[1], dim=1)[[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="label_classes"):
        NoiseClassifier(tiny_cfg)


def test_tiny_classifier_trains_and_resumes_exactly(tmp_path):
    full = train(_cfg(tmp_path, "full"))
    assert full["steps"] == 4 and all(torch.isfinite(torch.tensor(full["losses"])))
    part = train(_cfg(tmp_path, "split"), max_steps=2)
    assert part["steps"] == 2
    rest = train(_cfg(tmp_path, "split"), resume=True)
    assert rest["start"] == 2 and rest["steps"] == 4
    a, meta = load_checkpoint(tmp_path / "full" / "checkpoint.safetensors")
    b, _ = load_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    assert meta["task"] == "classifier" and meta["labels"] == LABELS_META
    for k in a:
        if k.startswith(("model.", "ema.")):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert rest["losses"] == full["losses"][2:]


def test_classifier_checkpoints_load_only_as_classifiers(tmp_path):
    train(_cfg(tmp_path, "run", steps=1))
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    model = load_classifier(ckpt)
    assert isinstance(model, NoiseClassifier) and model.meta["labels"] == LABELS_META
    with pytest.raises(CheckpointError, match="'classifier' checkpoint, not a score prior"):
        load_prior(ckpt)
    out = export_prior(ckpt, tmp_path / "clf.safetensors", "test")
    _, meta = load_checkpoint(out)
    assert meta["kind"] == "classifier" and meta["labels"] == LABELS_META
    assert meta["parent"] == NO_PARENT and meta["command"] == "test" and meta["config"]["task"] == "classifier"
    exported = load_classifier(out)
    x = torch.randn(1, 2, 32, 32)
    torch.testing.assert_close(exported(x, 0.3)[0], model(x, 0.3)[0])


def test_classifier_task_needs_labels(tmp_path):
    cfg = _cfg(tmp_path, "x")
    cfg["network"]["label_classes"] = []
    with pytest.raises(InputError, match="label_classes"):
        train(cfg, max_steps=1)
    cfg = _cfg(tmp_path, "y")
    cfg["data"] = {"source": "synthetic", "pool_size": 4, "sizes": [64], "crop": 32}
    with pytest.raises(InputError, match="labelled source"):
        train(cfg, max_steps=1)


def _save_classifier(path, tiny_cfg, labels=LABELS_META):
    torch.manual_seed(1)
    model = NoiseClassifier(NetworkConfig.from_dict({**tiny_cfg.to_dict(), "label_classes": [6, 3]}))
    save_checkpoint(path, {f"ema.{k}": v for k, v in model.state_dict().items()},
                    {"step": 0, "network": model.cfg.to_dict(), "config": {}, "kind": "classifier", "task": "classifier",
                     "labels": labels})
    return path


def _save_conditional_prior(path, tiny_cfg):
    from mri_score.network import EDMDenoiser

    torch.manual_seed(0)
    model = EDMDenoiser(NetworkConfig.from_dict({**tiny_cfg.to_dict(), "label_classes": [6, 3]}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    save_checkpoint(path, {f"ema.{k}": v for k, v in model.state_dict().items()},
                    {"step": 0, "network": model.cfg.to_dict(), "config": {}, "kind": "prior", "labels": LABELS_META})
    return path


# ---------------------------------------------------------------- command lines

def test_reconstruct_cli_conditions_guides_and_records(tmp_path, fully_sampled_file, tiny_cfg, capsys):
    from mri_score.reconstruct import main

    prior = _save_conditional_prior(tmp_path / "cond.safetensors", tiny_cfg)
    common = ["--kspace", str(fully_sampled_file), "--prior", str(prior), "--steps", "2", "--samples", "1"]
    assert main([*common, "--out", str(tmp_path / "a"), "--condition", "t2", "--guidance", "2"]) == 0
    assert "NFE 4/slice" in capsys.readouterr().out  # 2 steps x 2 evaluations
    with h5py.File(tmp_path / "a" / fully_sampled_file.name) as hf:
        assert hf.attrs["condition"] == "contrast=t2" and hf.attrs["guidance"] == 2.0
    # auto: the file's acquisition ("SYN") is unknown, so unconditional
    assert main([*common, "--out", str(tmp_path / "b"), "--condition", "auto", "--guidance", "3"]) == 0
    assert "NFE 2/slice" in capsys.readouterr().out
    with h5py.File(tmp_path / "b" / fully_sampled_file.name) as hf:
        assert hf.attrs["condition"] == "none"
    flair = tmp_path / "flair" / "vol_f.h5"
    flair.parent.mkdir()
    with h5py.File(fully_sampled_file) as src, h5py.File(flair, "w") as dst:
        for key in src:
            src.copy(key, dst)
        dst.attrs.update(dict(src.attrs))
        dst.attrs["acquisition"] = "AXFLAIR"
    assert main([*common[:1], str(flair), *common[2:], "--out", str(tmp_path / "c"), "--condition", "auto"]) == 0
    with h5py.File(tmp_path / "c" / flair.name) as hf:
        assert hf.attrs["condition"] == "contrast=flair,anatomy=brain" and hf.attrs["guidance"] == 1.0


def test_reconstruct_cli_classifier_guidance(tmp_path, fully_sampled_file, tiny_prior_path, tiny_cfg, capsys):
    from mri_score.reconstruct import main

    clf = _save_classifier(tmp_path / "clf.safetensors", tiny_cfg)
    rc = main(["--kspace", str(fully_sampled_file), "--prior", str(tiny_prior_path), "--steps", "2", "--samples", "1",
               "--out", str(tmp_path / "o"), "--condition", "anatomy=knee", "--classifier", str(clf),
               "--classifier-scale", "2"])
    assert rc == 0
    with h5py.File(tmp_path / "o" / fully_sampled_file.name) as hf:
        assert hf.attrs["condition"] == "anatomy=limb" and hf.attrs["classifier_scale"] == 2.0
        assert "guidance" not in hf.attrs  # an unconditional prior has no CFG weight


@pytest.mark.parametrize("extra, message", [
    (["--condition", "t7", "--prior", "COND"], "'t7' is not a label; accepted: none, auto, or contrast: t1"),
    (["--condition", "t7"], "'t7' needs a conditional prior or a classifier; there are no labels (accepted: none, auto)"),
    (["--condition", "t2"], "conditional prior or a classifier"),
    (["--guidance", "2"], "needs a condition"),
    (["--condition", "t2", "--guidance", "-1"], "--guidance must be a finite number >= 0"),
    (["--classifier-scale", "2"], "without --classifier"),
    (["--condition", "t2", "--classifier", "PRIOR"], "--classifier: "),
    (["--condition", "t2", "--classifier", "CLF", "--classifier-scale", "0"], "--classifier-scale must be"),
])
def test_reconstruct_cli_refuses_bad_conditioning_in_one_line(tmp_path, fully_sampled_file, tiny_prior_path, tiny_cfg,
                                                              capsys, extra, message):
    from mri_score.reconstruct import main

    clf = _save_classifier(tmp_path / "clf.safetensors", tiny_cfg)
    cond = _save_conditional_prior(tmp_path / "cond.safetensors", tiny_cfg)
    names = {"PRIOR": str(tiny_prior_path), "CLF": str(clf), "COND": str(cond)}
    extra = [names.get(e, e) for e in extra]
    before = fully_sampled_file.read_bytes()
    rc = main(["--kspace", str(fully_sampled_file), "--prior", str(tiny_prior_path), "--steps", "2",
               "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert fully_sampled_file.read_bytes() == before


def test_sample_prior_cli_conditional_and_refusals(tmp_path, tiny_cfg, tiny_prior_path, capsys):
    from mri_score.sample_prior import main

    prior = _save_conditional_prior(tmp_path / "cond.safetensors", tiny_cfg)
    out = tmp_path / "grid.png"
    assert main(["--prior", str(prior), "--out", str(out), "--n", "2", "--size", "16", "--steps", "2",
                 "--condition", "contrast=pd,anatomy=limb", "--guidance", "2"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    clf = _save_classifier(tmp_path / "clf.safetensors", tiny_cfg)
    assert main(["--prior", str(tiny_prior_path), "--out", str(tmp_path / "g2.png"), "--n", "1", "--size", "16",
                 "--steps", "2", "--condition", "t1", "--classifier", str(clf), "--classifier-input", "denoised"]) == 0
    capsys.readouterr()
    for args, message in ((["--condition", "auto"], "condition auto"), (["--condition", "xx"], "'xx' is not a label"),
                          (["--n", "0"], "--n must be in [1, ")):
        assert main(["--prior", str(prior), "--out", str(tmp_path / "bad.png"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "bad.png").exists()


def test_guidance_leaves_the_classifier_alone(tiny_cfg):
    from mri_score.guidance import ClassifierGuidance

    torch.manual_seed(0)
    clf = NoiseClassifier(NetworkConfig.from_dict({**tiny_cfg.to_dict(), "label_classes": [6, 3]}))
    before = copy.deepcopy(clf.state_dict())
    term = ClassifierGuidance(clf, torch.tensor([1, 3]), 1.0)
    term.inflated_grad(torch.randn(1, 16, 16, dtype=torch.complex64), 0.5)
    assert all(p.requires_grad for p in clf.parameters())
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())


def test_conditional_benchmark_script_runs_end_to_end_tiny(tmp_path, tiny_cfg):
    import yaml

    from benchmarks.run_conditional import main

    prior = _save_conditional_prior(tmp_path / "cond.safetensors", tiny_cfg)
    clf = _save_classifier(tmp_path / "clf.safetensors", tiny_cfg)
    cfg = {"prior": str(prior), "clean_classifier": str(clf), "classifier": str(clf), "seed": 0,
           "generation": {"labels": ["t2", "contrast=pd,anatomy=limb"], "weights": [0, 2], "classifier_scales": [1],
                          "n": 1, "size": 16, "steps": 2, "classifier_check": 2},
           "reconstruction": {"slices": 1, "real": [], "size": 64, "coils": 2, "snr": 50, "nfe": 2,
                              "accelerations": [4], "weights": [1, 2], "classifier_scales": [2]}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path), "--out", str(tmp_path / "res")]) == 0
    text = (tmp_path / "res" / "conditional.md").read_text()
    assert "| contrast=t2 | CFG w=2 | 6 |" in text  # 2 Heun steps = 3 calls x 2 evaluations
    assert "| contrast=pd,anatomy=limb | classifier s=1 | 3 |" in text
    for method, nfe in (("unconditional", 2), ("conditional (w=1)", 2), ("CFG w=2", 4), ("wrong label (w=1)", 2),
                        ("classifier s=2", 2)):
        assert f"| synthetic test split | 4 | {method} |" in text and f"| {nfe} |" in text
    assert "held-out clean test slices (n=2)" in text and "- command: `python benchmarks/run_conditional.py" in text
    assert len(list((tmp_path / "res" / "conditional_grids").glob("*.png"))) == 2
