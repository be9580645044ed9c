"""Training through the streaming path: gradient accumulation, 2-rank gloo DDP (disjoint slices, exact resume after SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mri_score.train as train_mod
import mri_score.training as training
from mri_score.checkpoint import load_checkpoint
from tests.test_fastmri_stream import write_train_file

ROOT = Path(__file__).resolve().parents[1]
TINY_NET = {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "emb_dim": 16, "groups": 4}


def stream_cfg(data: Path, out: Path, steps: int, batch: int = 2, micro: int | None = None, workers: int = 0) -> dict:
    return {"out_dir": str(out), "data": {"source": "fastmri", "path": str(data), "crop": 32, "num_workers": workers},
            "network": dict(TINY_NET),
            "train": {"steps": steps, "batch": batch, "micro_batch": micro, "lr": 1e-3, "warmup": 1, "precision": "fp32",
                      "ckpt_every": 1000, "log_every": 1, "seed": 3}}


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "train"
    for i in range(3):
        write_train_file(d / f"vol_{i}.h5", seed=i)
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradient_accumulation_equals_the_full_batch(data_dir, tmp_path, monkeypatch):
    """4 = 2 micro-batches x 2 gives the update of one batch of 4 (a loss that uses no random draws)."""
    def plain_loss(model, x, gen, p_mean, p_std, sigma_data, autocast, labels=None):
        return ((model(x, torch.ones(x.shape[0])) - 0.5 * x) ** 2).mean()

    monkeypatch.setattr(training, "edm_loss", plain_loss)
    full = training.train(stream_cfg(data_dir, tmp_path / "full", steps=3, batch=4))
    assert full["accumulation"] == 1
    # through the command line, as the README's 1-GPU command (train.micro_batch=...)
    (tmp_path / "acc.yaml").write_text(yaml.safe_dump(stream_cfg(data_dir, tmp_path / "acc", steps=3, batch=4)))
    assert train_mod.main(["--config", str(tmp_path / "acc.yaml"), "train.micro_batch=2"]) == 0
    acc = [json.loads(x)["loss"] for x in (tmp_path / "acc" / "loss.jsonl").read_text().splitlines()]
    assert np.allclose(full["losses"], acc, rtol=1e-5)
    a, _ = load_checkpoint(tmp_path / "full" / "checkpoint.safetensors")
    b, _ = load_checkpoint(tmp_path / "acc" / "checkpoint.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if k.startswith("model."))
    _, meta = load_checkpoint(tmp_path / "acc" / "checkpoint.safetensors")
    assert meta["config"]["train"]["micro_batch"] == 2
    with pytest.raises(ValueError, match="micro_batch"):
        training.train(stream_cfg(data_dir, tmp_path / "bad", steps=1, batch=4, micro=3))


def test_stream_resume_reproduces_uninterrupted_run(data_dir, tmp_path):
    full = training.train(stream_cfg(data_dir, tmp_path / "full", steps=5, micro=1))
    training.train(stream_cfg(data_dir, tmp_path / "part", steps=5, micro=1), max_steps=2)
    rest = training.train(stream_cfg(data_dir, tmp_path / "part", steps=5, micro=1, workers=1), resume=True)
    assert rest["start"] == 2 and np.allclose(rest["losses"], full["losses"][2:], rtol=1e-5, atol=1e-7)
    assert rest["slices_per_s"] > 0


_SPY = """
import json, os, sys
import mri_score.data.fastmri_stream as S
from mri_score.train import main
seen = []
orig = S.CropDataset.__getitem__
def spy(self, key):
    seen.append(list(key))
    return orig(self, key)
S.CropDataset.__getitem__ = spy
rc = main(sys.argv[2:])
json.dump(seen, open(sys.argv[1] + "." + os.environ["RANK"], "w"))
sys.exit(rc)
"""


def _torchrun(launcher: list[str], args: list[str]) -> subprocess.Popen:
    """``torchrun LAUNCHER ARGS`` (as ``python -m torch.distributed.run``), gloo on CPU."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


#: The README's one-node form (``torchrun --standalone --nproc_per_node=N``), with N = 2.
ONE_NODE = ["--standalone", "--nproc_per_node=2"]


def _two_nodes(port: int) -> list[str]:
    """The README's several-node form (c10d rendezvous), as 2 nodes of 1 process on this machine."""
    return ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
            "--rdzv_id=test"]


def test_two_rank_ddp_disjoint_slices_and_identical_resume_after_sigterm(data_dir, tmp_path):
    """torchrun, 2 gloo ranks: each epoch's slices split disjointly; SIGTERM + --resume equals an uninterrupted run.

    The interrupted and resumed runs use the README's one-node command, the uninterrupted one its several-node
    (rendezvous) command with two single-process nodes on this machine.
    """
    # interrupted run: SIGTERM to the launcher once 3 steps are logged
    cfg = stream_cfg(data_dir, tmp_path / "cut", steps=100000, workers=1)
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(cfg))
    proc = _torchrun(ONE_NODE, ["-m", "mri_score.train", "--config", str(tmp_path / "cut.yaml")])
    log = tmp_path / "cut" / "loss.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    _, meta = load_checkpoint(tmp_path / "cut" / "checkpoint.safetensors")
    k = int(meta["step"])
    assert k >= 3, err[-2000:]
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.endswith(".tmp")]
    total = k + 3
    # resume to k + 3 (the README's command plus --resume)
    res = _torchrun(ONE_NODE, ["-m", "mri_score.train", "--config", str(tmp_path / "cut.yaml"), "--resume",
                               f"train.steps={total}"])
    _, err = res.communicate(timeout=120)
    assert res.returncode == 0, err[-2000:]
    # uninterrupted run to k + 3 as two "nodes" meeting at a rendezvous, recording which slices each rank reads
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(stream_cfg(data_dir, tmp_path / "full", steps=total, workers=0)))
    (tmp_path / "spy.py").write_text(_SPY)
    port = _free_port()
    nodes = [_torchrun(_two_nodes(port), [str(tmp_path / "spy.py"), str(tmp_path / "keys"), "--config",
                                          str(tmp_path / "full.yaml")]) for _ in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=120)
        assert node.returncode == 0, err[-2000:]
    a, ma = load_checkpoint(tmp_path / "full" / "checkpoint.safetensors")
    b, mb = load_checkpoint(tmp_path / "cut" / "checkpoint.safetensors")
    assert ma["step"] == mb["step"] == total
    for name in a:
        if name.startswith(("model.", "ema.", "opt.")):
            assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-7), name
    assert torch.equal(a["rng.gen.1"], b["rng.gen.1"])  # rank 1's generator travelled through the checkpoint
    keys = [json.loads((tmp_path / f"keys.{r}").read_text()) for r in (0, 1)]
    assert len(keys[0]) == len(keys[1]) == total  # micro-batch 1 per rank per step
    for epoch in {e for e, _ in keys[0]}:
        ranks = [{i for e, i in ks if e == epoch} for ks in keys]
        assert not ranks[0] & ranks[1], epoch
        if len([1 for e, _ in keys[0] if e == epoch]) == 3:  # a complete epoch covers all 6 slices
            assert ranks[0] | ranks[1] == set(range(6))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "full" / "loss.jsonl").read_text().splitlines()]
    cut = [json.loads(line)["loss"] for line in log.read_text().splitlines()]
    assert np.allclose(losses, cut[:k] + cut[-3:], rtol=1e-5)
