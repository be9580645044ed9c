"""The E2E-VarNet baseline: architecture, data consistency, learned maps, training, export and loading."""

import hashlib

import numpy as np
import pytest
import torch

from mri_score.calibration import calibrate
from mri_score.checkpoint import load_checkpoint, save_checkpoint
from mri_score.errors import CheckpointError, InputError
from mri_score.network import NetworkConfig
from mri_score.prior import load_prior
from mri_score.supervised import load_unet
from mri_score.training import NO_PARENT
from mri_score.varnet import VarNet, VarNetCascade, VarNetConfig, acs_window, load_varnet, varnet_outputs, varnet_reconstruct
from mri_score.varnet_training import (
    VarNetPairSource,
    export_varnet,
    ssim,
    train_varnet,
    validate_varnet_config,
    varnet_loss,
)
from operators import birdcage_maps, create_mask_for_mask_type, fft2c, ifft2c, rss
from tests.conftest import phantom

TINY_NET = {"in_channels": 2, "base_channels": 8, "channel_mult": [1, 2], "emb_dim": 8, "groups": 4}


def tiny_config(cascades: int = 2) -> VarNetConfig:
    return VarNetConfig.from_dict({"cascades": cascades, "unet": TINY_NET, "sens": TINY_NET})


def perturb(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give every parameter a random offset (the zero-initialised last layers included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))


def example(n: int = 32, w: int = 40, coils: int = 4, batch: int = 2, seed: int = 0):
    """Masked k-space (B, C, n, w), a 4x equispaced column mask (B, 1, 1, w) and the full k-space."""
    imgs = [torch.from_numpy(phantom(max(n, w), 1, seed=seed + b)[0])[:n, :w] for b in range(batch)]
    maps = torch.from_numpy(birdcage_maps(coils, (n, w)))
    full = torch.stack([fft2c(maps * im) for im in imgs])
    func = create_mask_for_mask_type("equispaced", [0.16], [4])
    mask = torch.stack([func((coils, n, w), seed=seed + b)[0].reshape(1, 1, w) for b in range(batch)])
    return full * mask, mask, full


def run_cfg(out_dir, steps: int = 20, **train) -> dict:
    return {
        "task": "varnet",
        "out_dir": str(out_dir),
        "data": {"source": "synthetic", "pool_size": 6, "sizes": [32], "pixel_mm": [4.0, 5.0], "crop": 32, "coils": 4,
                 "seed": 0, "mask": {"type": "equispaced", "accel": 4, "center_fraction": 0.16}},
        "varnet": {"cascades": 2, "unet": TINY_NET, "sens": TINY_NET},
        "train": {"steps": steps, "batch": 2, "lr": 3e-3, "warmup": 1, "ckpt_every": 1000, "log_every": 5, "seed": 0,
                  **train},
    }


@pytest.fixture
def phantom_data(monkeypatch):
    """Train on Shepp-Logan phantoms instead of the synthetic corpus (its template takes 10-20 s to load)."""
    import mri_score.varnet_training as vt

    def source(cfg):
        mask = cfg["data"]["mask"]
        return VarNetPairSource([phantom(32, 1, seed=i)[0] for i in range(4)], rows=cfg["data"]["crop"],
                                mask_type=mask["type"], acceleration=mask["accel"],
                                center_fraction=mask["center_fraction"], coils=cfg["data"]["coils"])

    monkeypatch.setattr(vt, "build_varnet_source", source)


def test_forward_shapes_dtypes_and_untrained_network_is_zero_filled():
    torch.manual_seed(0)
    model = VarNet(tiny_config())
    k0, mask, _ = example(n=30, w=36)  # not multiples of the U-Net stride
    out_rss, out_comb = model(k0, mask)
    assert out_rss.shape == out_comb.shape == (2, 30, 36)
    assert out_rss.dtype == out_comb.dtype == torch.float32
    # the last convolutions start at zero: an untrained VarNet is the zero-filled reconstruction
    maps = model.sens_maps(k0, mask)
    assert maps.shape == k0.shape and maps.dtype == torch.complex64
    coils = ifft2c(k0)
    assert torch.allclose(out_rss, rss(coils, dim=1), atol=1e-5)
    assert torch.allclose(out_comb, (maps.conj() * coils).sum(1).abs(), atol=1e-5)
    with pytest.raises(InputError, match="mask"):
        model(k0, mask[:, :, :, :-1])


def test_data_consistency_of_a_cascade():
    torch.manual_seed(0)
    cascade = VarNetCascade(NetworkConfig.from_dict(TINY_NET))
    k0, mask, _ = example()
    maps = VarNet(tiny_config()).sens_maps(k0, mask)
    k = torch.randn(k0.shape, dtype=torch.complex64)
    sampled = (mask != 0).expand(k0.shape)
    with torch.no_grad():
        # eta = 1 (its initial value) with the zero-initialised refinement: hard data consistency
        out = cascade(k, k0, mask, maps)
        assert torch.allclose(out[sampled], k0[sampled], atol=1e-6)
        assert torch.equal(out[~sampled], k[~sampled])
        # soft data consistency: k - eta M (k - k0)
        cascade.eta.fill_(0.25)
        out = cascade(k, k0, mask, maps)
        assert torch.allclose(out[sampled], (k - 0.25 * (k - k0))[sampled], atol=1e-6)
        # at the measured data with a zero refinement every sample stays what it is
        assert torch.equal(cascade(k0, k0, mask, maps), k0)
        # a non-zero refinement adds F E(G(R F^-1 k)): the same term wherever it lands
        perturb(cascade.refine)
        term = cascade(k0, k0, mask, maps) - k0
        assert float(term.abs().max()) > 0
        image = (maps.conj() * ifft2c(k0)).sum(1)
        assert torch.allclose(term, fft2c(maps * cascade.refine(image)[:, None]), atol=1e-5)


def test_learned_maps_are_normalised_and_use_the_acs_only():
    torch.manual_seed(0)
    model = VarNet(tiny_config())
    perturb(model.sens, seed=1)
    k0, mask, full = example()
    maps = model.sens_maps(k0, mask)
    sos = (maps.abs() ** 2).sum(1)
    obj = rss(ifft2c(full), dim=1) > 0.05 * rss(ifft2c(full), dim=1).amax()
    assert torch.allclose(sos[obj], torch.ones(()), atol=1e-5)
    assert torch.allclose(sos[sos > 0], torch.ones(()), atol=1e-5)  # 1 wherever defined
    # only the fully sampled centre is used: the lines outside it do not change the maps
    win = acs_window(mask)
    other = k0 * win + 3.0 * (k0 * (1 - win)).roll(1, dims=-2)
    assert torch.allclose(model.sens_maps(other, mask), maps, atol=1e-6)


def test_acs_window_of_column_and_2d_masks():
    line = torch.zeros(1, 1, 1, 16)
    line[..., 6:10] = 1
    line[..., 10] = 1  # an equispaced line next to the block extends the ACS, as the sampled data do
    line[..., 2] = 1
    win = acs_window(line)
    assert win.shape == line.shape and win[0, 0, 0].nonzero().flatten().tolist() == [6, 7, 8, 9, 10]
    grid = torch.zeros(1, 1, 16, 16)
    grid[..., 5:11, 5:11] = 1
    grid[..., 0, 0] = 1
    win2 = acs_window(grid)
    assert int(win2.sum()) == 36 and win2[0, 0, 0, 0] == 0
    with pytest.raises(InputError, match="centre"):
        acs_window(torch.zeros(1, 1, 1, 16))


def test_reconstruct_contract_scales_with_the_data():
    torch.manual_seed(0)
    model = VarNet(tiny_config()).eval()
    perturb(model)
    k0, mask, _ = example(batch=1)
    k, m = k0[0], mask[0, 0, 0]
    cal = calibrate(k, m)
    rec = varnet_reconstruct(model, k, m, cal)
    assert rec.shape == (32, 40) and rec.dtype == torch.float32 and torch.isfinite(rec).all()
    # every block is positively homogeneous and the data are divided by the ACS scale: the output follows the data
    rec7 = varnet_reconstruct(model, 7.0 * k, m, calibrate(7.0 * k, m))
    assert torch.allclose(rec7, 7.0 * rec, rtol=1e-4, atol=1e-5 * float(rec.max()))
    both = varnet_outputs(model, k, m[None], cal)
    assert torch.equal(both[0], rec) and torch.equal(both[1], varnet_reconstruct(model, k, m, cal, output="combined"))
    with pytest.raises(InputError, match="output"):
        varnet_reconstruct(model, k, m, cal, output="magnitude")


def test_pair_source_examples():
    slices = [phantom(32, 1, seed=i)[0] for i in range(3)] + [phantom(48, 1)[0]]
    src = VarNetPairSource(slices, rows=24, coils=4, center_fraction=0.16)
    a = src.batch(3, torch.Generator().manual_seed(1))
    b = src.batch(3, torch.Generator().manual_seed(1))
    w = a.kspace.shape[-1]
    assert a.kspace.shape == (3, 4, 24, w) and w in (32, 48) and a.kspace.dtype == torch.complex64
    assert a.mask.shape == (3, 1, 1, w) and a.target.shape == (3, 24, w) and a.target.dtype == torch.float32
    assert torch.equal(a.kspace, b.kspace) and torch.equal(a.mask, b.mask) and torch.equal(a.target, b.target)
    assert torch.equal(a.kspace * a.mask, a.kspace)  # zero where not sampled
    assert 0.2 < float(a.target.amax()) < 20.0  # the ACS reference scale maps the object to O(1)
    # the mask-shift setting: 8x random masks (and 2-D Poisson masks) from the same source type
    rnd = VarNetPairSource(slices, rows=32, mask_type="random", acceleration=8, center_fraction=0.08, coils=4)
    batch = rnd.batch(2, torch.Generator().manual_seed(0))
    assert 1 / 12 < float(batch.mask.mean()) < 1 / 4
    poi = VarNetPairSource(slices[:1], rows=32, mask_type="poisson", acceleration=4, center_fraction=0.04, coils=4)
    pb = poi.batch(1, torch.Generator().manual_seed(0))
    assert pb.mask.shape == (1, 1, 32, 32)
    model = VarNet(tiny_config())
    assert model(pb.kspace, pb.mask)[0].shape == (1, 32, 32)
    with pytest.raises(InputError, match="rows"):
        VarNetPairSource(slices, rows=64)


def test_ssim_and_loss():
    x = torch.rand(2, 16, 16)
    assert torch.allclose(ssim(x, x, torch.ones(2)), torch.ones(2), atol=1e-5)
    assert float(ssim(x, x.flip(-1), torch.ones(2)).mean()) < 0.9
    src = VarNetPairSource([phantom(32, 1)[0]], rows=32, coils=4, center_fraction=0.16)
    batch = src.batch(2, torch.Generator().manual_seed(0))
    model = VarNet(tiny_config())
    with torch.no_grad():
        losses = {kind: float(varnet_loss(model, batch, kind)) for kind in ("ssim_l1", "l1", "ssim")}
    assert losses["ssim_l1"] == pytest.approx(0.84 * losses["ssim"] + 0.16 * losses["l1"], rel=1e-5)
    with pytest.raises(InputError, match="train.loss"):
        varnet_loss(model, batch, "l2")


def test_source_is_built_from_the_config(monkeypatch, tmp_path):
    import mri_score.data.datasets as datasets
    from mri_score.varnet_training import build_varnet_source

    calls = []

    def fake(count, seed, families, sizes, pixel_mm, square=False):
        calls.append((count, seed, families, sizes, pixel_mm, square))
        return [phantom(32, 1, seed=i)[0] for i in range(count)]

    monkeypatch.setattr(datasets, "synthetic_slices", fake)
    cfg = run_cfg(tmp_path)
    cfg["data"]["mask"] = {"type": "random", "accel": 8, "center_fraction": 0.08}
    src = build_varnet_source(validate_varnet_config(cfg))
    assert calls == [(6, 0, ("t1", "t2", "pd", "random"), (32,), (4.0, 5.0), True)]
    assert len(src) == 6 and src.rows == 32 and src.maps[(32, 32)].shape == (4, 32, 32)
    assert type(src.mask_func).__name__ == "RandomMaskFunc" and src.mask_func.accelerations == [8.0]


def test_training_reduces_the_loss_and_export_round_trips(tmp_path, phantom_data):
    out = train_varnet(run_cfg(tmp_path / "run"))
    assert out["steps"] == 20 and len(out["losses"]) == 20 and out["parameters"] > 0
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    assert (tmp_path / "run" / "loss.jsonl").read_text().count("\n") == 4
    # on fixed held-out batches the trained weights beat the untrained network (= zero-filled)
    src = VarNetPairSource([phantom(32, 1, seed=s)[0] for s in (5, 6)], rows=32, coils=4, center_fraction=0.16)
    held = [src.batch(2, torch.Generator().manual_seed(s)) for s in range(3)]
    trained = load_varnet(ckpt, use_ema=False)
    torch.manual_seed(0)
    untrained = VarNet(trained.cfg)
    with torch.no_grad():
        before = np.mean([float(varnet_loss(untrained, b)) for b in held])
        after = np.mean([float(varnet_loss(trained, b)) for b in held])
    assert after < 0.7 * before
    # every part learns: the maps network and the data-consistency weights too (they get gradients from step 2)
    assert not torch.equal(trained.sens.net.out.weight, untrained.sens.net.out.weight)
    # (not the first cascade's: it starts at k = k0, where M (k - k0) = 0, as in fastMRI's VarNet)
    assert float(trained.cascades[0].eta.detach()) == 1.0 and all(float(c.eta.detach()) != 1.0 for c in trained.cascades[1:])
    assert np.mean(out["losses"][-5:]) < np.mean(out["losses"][:3])
    # export: EMA weights with the exact config, the command and the parent
    path = export_varnet(ckpt, tmp_path / "varnet.safetensors", "python -m mri_score.train --config x.yaml")
    tensors, meta = load_checkpoint(path)
    assert all(k.startswith("ema.") for k in tensors)
    assert meta["task"] == "varnet" and meta["kind"] == "varnet" and meta["step"] == 20
    assert meta["command"] == "python -m mri_score.train --config x.yaml"
    assert meta["config"] == validate_varnet_config(run_cfg(tmp_path / "run"))
    assert meta["parent"] == NO_PARENT
    assert meta["varnet"] == trained.cfg.to_dict() and meta["network"] == trained.cfg.unet.to_dict()
    exported, ema = load_varnet(path), load_varnet(ckpt)
    k0, mask, _ = example(batch=1)
    with torch.no_grad():
        a, b = exported(k0, mask), ema(k0, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the other loaders refuse it, and a VarNet loader refuses theirs
    with pytest.raises(CheckpointError, match="not a supervised"):
        load_unet(str(path))
    with pytest.raises(CheckpointError, match="not a score prior"):
        load_prior(path)


def test_determinism_resume_and_parent(tmp_path, phantom_data):
    a = train_varnet(run_cfg(tmp_path / "a"), steps=8)
    b = train_varnet(run_cfg(tmp_path / "b", steps=8))
    assert a["losses"] == b["losses"]
    wa = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors")[0]
    wb = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")[0]
    assert all(torch.equal(wa[k], wb[k]) for k in wa if k.startswith(("model.", "ema.")))
    # another seed: other batches and another initialisation
    c = train_varnet(run_cfg(tmp_path / "c", seed=1), steps=2)
    assert c["losses"][:2] != a["losses"][:2]
    # 4 steps, then --resume to 8: the same weights as 8 steps at once
    train_varnet(run_cfg(tmp_path / "r"), steps=4)
    r = train_varnet(run_cfg(tmp_path / "r"), steps=8, resume=True)
    assert r["start"] == 4 and r["losses"] == a["losses"][4:]
    wr = load_checkpoint(tmp_path / "r" / "checkpoint.safetensors")[0]
    assert all(torch.equal(wa[k], wr[k]) for k in wa if not k.startswith("rng."))
    with pytest.raises(InputError, match="already holds a training run"):  # a fresh start would overwrite it
        train_varnet(run_cfg(tmp_path / "r"), steps=8)
    # fine-tuning from exported weights records the parent's path and digest
    parent = export_varnet(tmp_path / "a" / "checkpoint.safetensors", tmp_path / "parent.safetensors", "test")
    train_varnet(run_cfg(tmp_path / "ft", init_from=str(parent)), steps=1)
    meta = load_checkpoint(tmp_path / "ft" / "checkpoint.safetensors")[1]
    assert meta["parent"] == {"path": str(parent), "sha256": hashlib.sha256(parent.read_bytes()).hexdigest()}
    child = export_varnet(tmp_path / "ft" / "checkpoint.safetensors", tmp_path / "child.safetensors", "test")
    assert load_checkpoint(child)[1]["parent"] == meta["parent"]


def test_resume_accepts_sub_networks_written_before_attention_heads(tmp_path, phantom_data):
    from tests.test_network_training import _drop_added_fields

    train_varnet(run_cfg(tmp_path / "old"), steps=2)
    _drop_added_fields(tmp_path / "old" / "checkpoint.safetensors", "varnet")
    assert train_varnet(run_cfg(tmp_path / "old"), steps=3, resume=True)["start"] == 2


def test_attention_is_refused_in_a_varnet():
    from mri_score.varnet import VarNetConfig

    with pytest.raises(InputError, match="varnet.unet.attention_heads must be 0"):
        VarNetConfig.from_dict({"unet": {**TINY_NET, "attention_heads": 2}}, strict=True)


def test_bad_checkpoints_are_one_line_errors(tmp_path, tiny_prior_path, phantom_data):
    with pytest.raises(CheckpointError, match="not a VarNet") as err:
        load_varnet(tiny_prior_path)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="not a VarNet"):
        export_varnet(tiny_prior_path, tmp_path / "x.safetensors", "test")
    # a varnet checkpoint whose metadata lacks the architecture, or whose weights do not match it
    torch.manual_seed(0)
    model = VarNet(tiny_config())
    ema = {f"ema.{k}": v for k, v in model.state_dict().items()}
    base = {"step": 0, "network": model.cfg.unet.to_dict(), "task": "varnet", "config": {}}
    save_checkpoint(tmp_path / "noarch.safetensors", ema, base)
    with pytest.raises(CheckpointError, match="cannot build") as err:
        load_varnet(tmp_path / "noarch.safetensors")
    assert "\n" not in str(err.value)
    save_checkpoint(tmp_path / "other.safetensors", ema, {**base, "varnet": tiny_config(cascades=3).to_dict()})
    with pytest.raises(CheckpointError, match="do not match"):
        load_varnet(tmp_path / "other.safetensors")
    save_checkpoint(tmp_path / "ok.safetensors", ema, {**base, "varnet": model.cfg.to_dict()})
    assert load_varnet(tmp_path / "ok.safetensors").cfg.to_dict() == model.cfg.to_dict()
    # resuming a run from a checkpoint of another task
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.safetensors").write_bytes(tiny_prior_path.read_bytes())
    with pytest.raises(CheckpointError, match="not a VarNet"):
        train_varnet(run_cfg(run), steps=1, resume=True)


def test_config_validation(tmp_path):
    import yaml

    shipped = validate_varnet_config(yaml.safe_load(open("configs/varnet_synth_4x.yaml")))
    assert shipped["varnet"] == VarNetConfig().to_dict()  # the config and the defaults agree
    assert shipped["data"]["mask"] == {"type": "equispaced", "accel": 4.0, "center_fraction": 0.08}
    assert 1_000_000 <= VarNetConfig().parameter_count() <= 3_000_000
    full = validate_varnet_config(run_cfg(tmp_path))
    assert full["train"]["loss"] == "ssim_l1" and full["data"]["snr"] == [30.0, 300.0]
    bad = [({"train": {"lr": "fast"}}, "train.lr"), ({"data": {"crop": 64}}, "data.crop"),
           ({"varnet": {"cascades": 0}}, "varnet.cascades"), ({"varnet": {"unet": {"in_channels": 1}}}, "in_channels"),
           ({"varnet": {"unet": {"width": 3}}}, "width"), ({"task": "supervised"}, "task"),
           ({"data": {"mask": {"type": "equispaced", "accel": 2.5}}}, "integer"), ({"extra": 1}, "extra")]
    for change, match in bad:
        cfg = run_cfg(tmp_path)
        for key, value in change.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key in cfg else value
        with pytest.raises(InputError, match=match) as err:
            validate_varnet_config(cfg, "cfg.yaml")
        assert str(err.value).startswith("cfg.yaml: ")


@pytest.mark.cuda
def test_runs_on_cuda_like_on_cpu():
    torch.manual_seed(0)
    model = VarNet(tiny_config()).eval()
    perturb(model)
    k0, mask, _ = example()
    with torch.no_grad():
        cpu = model(k0, mask)
        gpu = model.to("cuda")(k0.cuda(), mask.cuda())
    assert gpu[0].device.type == "cuda"
    assert torch.allclose(gpu[0].cpu(), cpu[0], rtol=1e-3, atol=1e-4)
    assert torch.allclose(gpu[1].cpu(), cpu[1], rtol=1e-3, atol=1e-4)
