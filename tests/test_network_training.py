import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mri_score.checkpoint import load_checkpoint, save_checkpoint
from mri_score.errors import CheckpointError, InputError
from mri_score.network import EDMDenoiser, channels_to_complex, complex_to_channels
from mri_score.prior import default_prior_path, load_prior
from mri_score.training import train

ROOT = Path(__file__).resolve().parents[1]


def tiny_train_cfg(out_dir, steps=6, **data):
    return {
        "out_dir": str(out_dir),
        "data": {"source": "synthetic", "pool_size": 8, "sizes": [64], "crop": 32, "seed": 0, **data},
        "network": {"base_channels": 8, "channel_mult": [1, 2], "emb_dim": 16, "groups": 4},
        "train": {"steps": steps, "batch": 4, "lr": 1e-3, "warmup": 1, "ckpt_every": 3, "log_every": 1,
                  "precision": "fp32", "seed": 0},
    }


@pytest.mark.parametrize("shape", [(64, 64), (37, 50), (128, 96)])
def test_denoiser_any_size_and_score(tiny_cfg, shape):
    model = EDMDenoiser(tiny_cfg)
    x = torch.randn(2, 2, *shape)
    d = model(x, torch.tensor([0.5, 2.0]))
    assert d.shape == x.shape
    s = model.score(x, torch.tensor([0.5, 2.0]))
    expected = (d - x) / torch.tensor([0.5, 2.0]).reshape(-1, 1, 1, 1) ** 2
    assert torch.allclose(s, expected, atol=1e-5)


def test_channel_boundary_round_trip():
    z = torch.complex(torch.randn(3, 8, 9), torch.randn(3, 8, 9))
    assert torch.equal(channels_to_complex(complex_to_channels(z)), z)


def test_checkpoint_tamper_and_corruption_detected(tmp_path, tiny_prior_path):
    tensors, meta = load_checkpoint(tiny_prior_path)
    # metadata edited: the digest no longer matches
    from safetensors import safe_open

    with safe_open(str(tiny_prior_path), framework="pt") as f:
        header = f.metadata()
    edited = json.loads(header["meta"])
    edited["network"]["base_channels"] = 16
    bad = tmp_path / "tampered.safetensors"
    save_file(load_file(str(tiny_prior_path)), str(bad), metadata={"meta": json.dumps(edited), "digest": header["digest"]})
    with pytest.raises(CheckpointError, match="digest mismatch"):
        load_prior(bad)
    # truncated file
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(tiny_prior_path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_prior(trunc)
    # a pickle is refused without being executed
    pkl = tmp_path / "evil.pt"
    torch.save({"a": torch.ones(1)}, pkl)
    with pytest.raises(CheckpointError):
        load_prior(pkl)
    # consistent metadata but wrong tensor shapes
    wrong = {k: (v[:1] if v.ndim else v) for k, v in tensors.items()}
    p = save_checkpoint(tmp_path / "wrong.safetensors", wrong, {k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(CheckpointError, match="shape"):
        load_prior(p)
    missing = dict(list(tensors.items())[1:])
    p = save_checkpoint(tmp_path / "missing.safetensors", missing, {k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(CheckpointError, match="missing"):
        load_prior(p)


def test_tiny_training_loss_decreases(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_train_cfg(tmp_path, steps=60)
    cfg["train"]["ckpt_every"] = 1000
    out = train(cfg)
    losses = out["losses"]
    assert np.mean(losses[-15:]) < 0.7 * np.mean(losses[:5])


def test_resume_reproduces_uninterrupted_losses(tmp_path):
    full = train(tiny_train_cfg(tmp_path / "full", steps=6))
    part = train(tiny_train_cfg(tmp_path / "part", steps=6), max_steps=3)
    assert part["steps"] == 3
    rest = train(tiny_train_cfg(tmp_path / "part", steps=6), resume=True)
    assert rest["start"] == 3 and rest["steps"] == 6
    assert np.allclose(part["losses"] + rest["losses"], full["losses"], rtol=1e-5, atol=1e-6)
    a, _ = load_checkpoint(tmp_path / "full" / "checkpoint.safetensors")
    b, _ = load_checkpoint(tmp_path / "part" / "checkpoint.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if k.startswith("ema."))
    # a fresh start over a finished run is refused and leaves it (checkpoint and loss log) as it was
    before = {f.name: f.read_bytes() for f in (tmp_path / "full").iterdir()}
    with pytest.raises(InputError, match="already holds a training run.*--resume"):
        train(tiny_train_cfg(tmp_path / "full", steps=6))
    assert {f.name: f.read_bytes() for f in (tmp_path / "full").iterdir()} == before
    # --resume at the last step trains nothing (what --resume --export relies on)
    again = train(tiny_train_cfg(tmp_path / "full", steps=6), resume=True)
    assert again["start"] == again["steps"] == 6 and again["losses"] == []


def test_init_from_starts_at_the_given_weights(tmp_path):
    """``train.init_from`` (stage-2 fine-tuning) starts model and EMA at the source's EMA weights."""
    train(tiny_train_cfg(tmp_path / "stage1", steps=3))
    src = tmp_path / "stage1" / "checkpoint.safetensors"
    cfg = tiny_train_cfg(tmp_path / "stage2", steps=1, crop=48)
    cfg["train"]["init_from"] = str(src)
    cfg["train"]["lr"] = 0.0  # no update: the result must be the source's EMA weights exactly
    train(cfg)
    a, _ = load_checkpoint(src)
    b, _ = load_checkpoint(tmp_path / "stage2" / "checkpoint.safetensors")
    for k in a:
        if k.startswith("ema."):
            assert torch.equal(b["model." + k[4:]], a[k]), k
            assert torch.allclose(b[k], a[k]), k
    cfg["train"]["init_from"] = None  # the control: without it the same run keeps its random initialisation
    cfg["out_dir"] = str(tmp_path / "fresh")
    train(cfg)
    c, _ = load_checkpoint(tmp_path / "fresh" / "checkpoint.safetensors")
    assert any(not torch.allclose(c["model." + k[4:]], a[k]) for k in a if k.startswith("ema."))


def test_init_from_a_different_architecture_is_refused(tmp_path):
    train(tiny_train_cfg(tmp_path / "stage1", steps=1))
    cfg = tiny_train_cfg(tmp_path / "stage2", steps=1)
    cfg["network"]["base_channels"] = 4
    cfg["train"]["init_from"] = str(tmp_path / "stage1" / "checkpoint.safetensors")
    with pytest.raises(CheckpointError, match="architecture differs"):
        train(cfg)


def test_init_from_grows_the_network_and_starts_as_its_parent(tmp_path):
    """A config with more residual blocks per level and a middle attention block starts, by ``train.init_from``, as
    exactly the parent denoiser (the new parts are the identity); the grown run then trains them."""
    train(tiny_train_cfg(tmp_path / "parent", steps=3))
    src = tmp_path / "parent" / "checkpoint.safetensors"
    cfg = tiny_train_cfg(tmp_path / "grown", steps=1)
    cfg["network"].update(num_res_blocks=2, attention_heads=2)
    cfg["train"].update(init_from=str(src), lr=0.0)
    train(cfg)
    parent, grown = load_prior(src), load_prior(tmp_path / "grown" / "checkpoint.safetensors")
    assert grown.cfg.num_res_blocks == 2 and grown.cfg.attention_heads == 2
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in parent.parameters())
    x = torch.randn(2, 2, 40, 24)
    with torch.no_grad():
        assert torch.equal(grown(x, torch.tensor([0.1, 2.0])), parent(x, torch.tensor([0.1, 2.0])))
    cfg["train"]["lr"] = 1e-2  # with a learning rate the new parts move: the grown network differs from its parent
    cfg["out_dir"] = str(tmp_path / "trained")
    train(cfg)
    tensors, _ = load_checkpoint(tmp_path / "trained" / "checkpoint.safetensors")
    assert tensors["model.net.mid_attn.proj.weight"].abs().max() > 0
    assert tensors["model.net.down_blocks.0.1.conv2.weight"].abs().max() > 0


@pytest.mark.parametrize("change", [{"num_res_blocks": 1}, {"attention_heads": 4}, {"emb_dim": 32}])
def test_init_from_refuses_what_is_not_growth(tmp_path, change):
    """Fewer blocks, another attention width or any other field changed is not growth: one CheckpointError."""
    parent = tiny_train_cfg(tmp_path / "parent", steps=1)
    parent["network"].update(num_res_blocks=2, attention_heads=2)
    train(parent)
    cfg = tiny_train_cfg(tmp_path / "child", steps=1)
    cfg["network"].update({"num_res_blocks": 2, "attention_heads": 2, **change})
    cfg["train"]["init_from"] = str(tmp_path / "parent" / "checkpoint.safetensors")
    with pytest.raises(CheckpointError, match="does not grow into it"):
        train(cfg)


def _drop_added_fields(path, section):
    """Rewrite a checkpoint's metadata as a version before :data:`mri_score.network.ADDED_FIELDS` wrote it."""
    from mri_score.network import ADDED_FIELDS

    tensors, meta = load_checkpoint(path)
    meta.pop("format", None)
    for net in ([meta[section]] if section == "network" else [meta[section]["unet"], meta[section]["sens"]]):
        for key in ADDED_FIELDS:
            net.pop(key)
    save_checkpoint(path, tensors, meta)


def test_resume_accepts_a_checkpoint_written_before_attention_heads(tmp_path):
    """A run saved without the ``attention_heads`` key (older code) resumes: the missing field means no attention."""
    train(tiny_train_cfg(tmp_path / "old", steps=3))
    ckpt = tmp_path / "old" / "checkpoint.safetensors"
    _drop_added_fields(ckpt, "network")
    assert "attention_heads" not in load_checkpoint(ckpt)[1]["network"]
    out = train(tiny_train_cfg(tmp_path / "old", steps=4), resume=True)
    assert out["start"] == 3 and len(out["losses"]) == 1
    cfg = tiny_train_cfg(tmp_path / "old", steps=5)  # a real difference is still refused
    cfg["network"]["attention_heads"] = 2
    with pytest.raises(CheckpointError, match="architecture differs"):
        train(cfg, resume=True)


def test_attention_uses_a_fused_kernel_and_keeps_its_channel_layout():
    """The block's q/k/v have a unit last stride (the flash kernel accepts them, on a CPU too) and mean the same
    channels as a plain (3, heads, features) split of the qkv convolution."""
    import torch.nn.functional as F  # noqa: N812
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mri_score.network import AttentionBlock

    torch.manual_seed(0)
    blk = AttentionBlock(16, 4, 4)
    torch.nn.init.normal_(blk.proj.weight)
    x = torch.randn(2, 16, 6, 5)
    b, c, h, w = x.shape
    with torch.no_grad():
        q, k, v = blk.qkv(blk.norm(x)).reshape(b, 3, 4, c // 4, h * w).transpose(-1, -2).unbind(1)
        ref = x + blk.proj(F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the layout forces the math kernel
            for inp in (x, x.to(memory_format=torch.channels_last)):
                assert torch.allclose(blk(inp), ref, atol=1e-5)


def test_grown_parts_names_the_new_blocks():
    from mri_score.network import NetworkConfig
    from mri_score.training import grown_parts

    src = NetworkConfig(base_channels=8, channel_mult=(1, 2, 4), emb_dim=16, groups=4)
    assert grown_parts(src, src) == ()
    deep = NetworkConfig(**{**src.to_dict(), "num_res_blocks": 2, "attention_heads": 4})
    parts = grown_parts(src, deep)
    assert set(parts) == {f"net.{side}.{i}.1." for side in ("down_blocks", "up_blocks") for i in range(3)} | {"net.mid_attn."}
    model = EDMDenoiser(deep)
    new = [k for k in model.state_dict() if k.startswith(parts)]
    old = set(EDMDenoiser(src).state_dict())
    assert set(model.state_dict()) - set(new) == old  # the new keys are exactly what the parent lacks
    assert grown_parts(deep, src) is None


def test_attention_heads_are_checked():
    from mri_score.network import NetworkConfig

    base = {"base_channels": 8, "channel_mult": [1, 3], "emb_dim": 16, "groups": 4}
    assert NetworkConfig.from_dict({**base, "attention_heads": 3}).attention_heads == 3
    with pytest.raises(InputError, match="attention_heads 5 does not divide the 24 channels"):
        NetworkConfig.from_dict({**base, "attention_heads": 5})
    with pytest.raises(InputError, match="attention_heads"):
        NetworkConfig.from_dict({**base, "attention_heads": -1}, strict=True)


def test_attention_heads_are_refused_for_a_classifier(tmp_path):
    from mri_score.train_config import validate_config

    cfg = tiny_train_cfg(tmp_path / "c", steps=1, source="mixed")
    cfg["task"] = "classifier"
    cfg["network"].update(attention_heads=2, label_classes=[6, 3])
    with pytest.raises(InputError, match="attention_heads is a score-prior option"):
        validate_config(cfg)


def test_ddp_gloo_two_ranks_identical_parameters(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(tiny_train_cfg(tmp_path / "ddp", steps=3)))
    script = tmp_path / "run_ddp.py"
    script.write_text(
        "import sys, hashlib, torch, torch.distributed as dist\n"
        "from mri_score.config import load_config\n"
        "import mri_score.training as T\n"
        "dist.init_process_group('gloo')\n"
        "torch.set_num_threads(1)\n"
        "orig = T.train\n"
        "cfg = load_config(sys.argv[1])\n"
        "import copy\n"
        "captured = {}\n"
        "real_ddp = torch.nn.parallel.DistributedDataParallel\n"
        "def spy(module, **kw):\n"
        "    captured['m'] = module\n"
        "    return real_ddp(module, **kw)\n"
        "torch.nn.parallel.DistributedDataParallel = spy\n"
        "T.train(cfg)\n"
        "h = hashlib.sha256(b''.join(p.detach().numpy().tobytes() for p in captured['m'].parameters())).hexdigest()\n"
        "open(sys.argv[2] + f'.{dist.get_rank()}', 'w').write(h)\n"
        "dist.barrier()\n"
        "dist.destroy_process_group()\n"
    )
    import socket

    with socket.socket() as sock:  # a free port, not a fixed one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}",
           str(script), str(cfg_path), str(tmp_path / "hash")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[:3000] + "\n...\n" + res.stderr[-2000:]
    h0 = (tmp_path / "hash.0").read_text()
    h1 = (tmp_path / "hash.1").read_text()
    assert h0 == h1
    assert (tmp_path / "ddp" / "checkpoint.safetensors").is_file()


def test_train_cli_bad_config_exit_2(tmp_path, capsys):
    from mri_score.train import main

    assert main(["--config", str(tmp_path / "none.yaml")]) == 2
    (tmp_path / "bad.yaml").write_text("out_dir: x\ndata: {source: nowhere}\ntrain: {steps: 1}\n")
    assert main(["--config", str(tmp_path / "bad.yaml")]) == 2
    assert main(["--config", str(tmp_path / "bad.yaml"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error:") for e in err)


def test_train_cli_resume_export_of_a_finished_run_exports_without_training(tmp_path, capsys):
    import yaml

    from mri_score.train import main

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_train_cfg(tmp_path / "run", steps=2)))
    assert main(["--config", str(cfg_path)]) == 0
    ckpt = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["--config", str(cfg_path), "--export", str(tmp_path / "w.safetensors")]) == 2  # would retrain
    assert "already holds a training run" in capsys.readouterr().err and not (tmp_path / "w.safetensors").exists()
    assert main(["--config", str(cfg_path), "--resume", "--export", str(tmp_path / "w.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "nothing to train: the run is already at step 2" in out and "exported weights" in out
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == ckpt
    assert load_prior(tmp_path / "w.safetensors").meta["kind"] == "prior"


@pytest.mark.skipif(not default_prior_path().is_file(), reason="default prior not trained yet")
def test_default_prior_loads_and_denoises_held_out_slices():
    from mri_score.data.datasets import held_out_batch

    prior = load_prior()
    assert prior.meta["kind"] == "prior" and "command" in prior.meta
    x0 = held_out_batch(4)
    g = torch.Generator().manual_seed(0)
    for sigma in (0.01, 0.05, 0.2, 1.0, 5.0):
        noisy = x0 + sigma * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            den = prior(noisy, sigma)
        assert ((den - x0) ** 2).mean() < ((noisy - x0) ** 2).mean()


def test_sigterm_saves_checkpoint_and_resume_continues(tmp_path):
    import signal
    import time

    import yaml

    cfg = tiny_train_cfg(tmp_path / "run", steps=100000)
    cfg["train"]["ckpt_every"] = 100000
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mri_score.train", "--config", str(cfg_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "loss.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    _, meta = load_checkpoint(ckpt)
    assert meta["step"] >= 3
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    out = train(tiny_train_cfg(tmp_path / "run", steps=meta["step"] + 2), resume=True)
    assert out["start"] == meta["step"] and out["steps"] == meta["step"] + 2


@pytest.mark.parametrize("name", ["prior_brain_synth", "prior_fastmri_knee", "prior_fastmri_brain"])
def test_shipped_configs_parse_and_build(name):
    from mri_score.config import load_config
    from mri_score.network import NetworkConfig

    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg["data"]["source"] in ("synthetic", "fastmri")
    EDMDenoiser(NetworkConfig.from_dict(cfg["network"]))


def test_saved_checkpoints_are_world_readable(tmp_path):
    p = save_checkpoint(tmp_path / "c.safetensors", {"a": torch.ones(2)}, {"step": 0})
    assert p.stat().st_mode & 0o777 == 0o644


def test_label_lr_mult_scales_only_the_label_tables(tmp_path):
    """label_lr_mult = m moves the label tables m times as far and leaves every other parameter's update alone.

    The output convolution and each block's second convolution start at zero, so the tables get their first
    gradient at step 3; there both runs see the same gradients (tables still zero), and Adam's step is
    proportional to the group's learning rate.
    """
    from mri_score.checkpoint import load_checkpoint
    from mri_score.training import train

    def run(name, mult):
        cfg = tiny_train_cfg(tmp_path / name, steps=3)
        cfg["data"] = {"source": "mixed", "pool_size": 4, "sizes": [48], "crop": 32, "seed": 1, "subjects": 2}
        cfg["network"]["label_classes"] = [6, 3]
        cfg["train"].update(label_lr_mult=mult, label_dropout=0.0, label_field_dropout=0.0, lr=1e-4)
        train(cfg)
        tensors, _ = load_checkpoint(tmp_path / name / "checkpoint.safetensors")
        return tensors

    one, ten = run("m1", 1.0), run("m10", 10.0)
    label = [k for k in one if k.startswith("model.") and "label_embeds" in k]
    other = [k for k in one if k.startswith("model.") and "label_embeds" not in k and one[k].is_floating_point()]
    assert label and other
    step1 = max(float(one[k].abs().max()) for k in label)
    step10 = max(float(ten[k].abs().max()) for k in label)
    assert 0 < step1 <= 1e-4 and step10 == pytest.approx(10 * step1, rel=1e-3)
    assert all(torch.equal(one[k], ten[k]) for k in other)  # the rest of the network sees the same update
    with pytest.raises(InputError, match="label_lr_mult"):
        bad = tiny_train_cfg(tmp_path / "bad", steps=1)
        bad["train"]["label_lr_mult"] = 0
        train(bad)


@pytest.mark.parametrize("fields", [{}, {"label_classes": [4, 3]}, {"label_classes": [2], "attention_heads": 4}])
def test_parameter_count_on_meta_matches_the_built_network(fields):
    from mri_score.network import NetworkConfig, UNet

    cfg = NetworkConfig.from_dict({"base_channels": 16, "channel_mult": [1, 2], "emb_dim": 32, "groups": 8, **fields},
                                  where="net")
    assert cfg.parameter_count() == sum(p.numel() for p in UNet(cfg).parameters())


def test_varnet_parameter_count_on_meta_matches_the_built_network():
    from mri_score.varnet import VarNet, VarNetConfig

    cfg = VarNetConfig(cascades=2)
    assert cfg.parameter_count() == sum(p.numel() for p in VarNet(cfg).parameters())


def test_meta_count_leaves_initialisation_alone_outside_it():
    # the no-op initialiser is scoped to the count: embeddings built afterwards are drawn as before, seed for seed
    from mri_score.network import NetworkConfig

    cfg = NetworkConfig.from_dict({"base_channels": 16, "channel_mult": [1, 2], "emb_dim": 32, "groups": 8,
                                   "label_classes": [3]}, where="net")
    torch.manual_seed(0)
    before = torch.nn.Embedding(4, 8).weight.detach().clone()
    cfg.parameter_count()
    torch.manual_seed(0)
    after = torch.nn.Embedding(4, 8).weight.detach()
    assert before.abs().sum() > 0 and torch.equal(before, after)


def test_command_start_up_imports_no_compiler_or_statistics_stack():
    # loading the shipped prior counts its declared network on the meta device, where normal_ and exp would import
    # torch._dynamo (~1.8 s); scipy.stats (via skimage.metrics) is only needed once something is scored or fitted
    code = ("import sys, mri_score.reconstruct; from mri_score.prior import load_prior; load_prior(); "
            "print(sorted(m for m in ('torch._dynamo', 'scipy.stats', 'skimage.metrics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
