"""Network precision (``auto``/``bf16``/``fp32``): one rule for training and sampling, fp32 outputs, refused modes."""

import h5py
import numpy as np
import pytest
import torch

from mri_score.errors import InputError
from mri_score.network import EDMDenoiser, complex_to_channels
from mri_score.posterior import reconstruct_slice
from mri_score.precision import PRECISIONS, choose_precision, native_bf16, precision_name
from mri_score.prior import ComplexPrior
from mri_score.reconstruct import main
from mri_score.request import ReconRequest
from operators import fft2c


def test_choose_precision_modes_and_refusal():
    cpu = torch.device("cpu")
    assert choose_precision(cpu, "fp32")["enabled"] is False
    assert choose_precision(cpu, "bf16")["enabled"] is True
    assert choose_precision(cpu, "auto")["enabled"] is native_bf16(cpu)
    assert precision_name(choose_precision(cpu, "bf16")) == "bf16"
    with pytest.raises(InputError, match="train.precision must be one of auto, bf16, fp32"):
        choose_precision(cpu, "fp16", "train.precision")
    assert PRECISIONS == ("auto", "bf16", "fp32")


def random_model(cfg):
    """A denoiser with every weight random (a fresh one's zero-initialised output layer hides its network)."""
    torch.manual_seed(0)
    model = EDMDenoiser(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return model


def test_fp32_adapter_is_the_network_and_bf16_is_close_in_fp32(tiny_cfg):
    model = random_model(tiny_cfg)
    x = torch.complex(torch.randn(2, 32, 32), torch.randn(2, 32, 32))
    with torch.no_grad():
        ref = model(complex_to_channels(x), 0.3)
        fp32 = ComplexPrior(model, "fp32")
        out32 = fp32.network(complex_to_channels(x), 0.3)
        bf16 = ComplexPrior(model, "bf16")
        out16 = bf16.network(complex_to_channels(x), 0.3)
    assert fp32.precision == "fp32" and bf16.precision == "bf16"
    assert torch.allclose(out32, ref, atol=1e-6)
    assert out16.dtype == torch.float32
    rel = float((out16 - ref).norm() / ref.norm())
    assert 0 < rel < 2e-2  # bf16 really ran (not bit-identical) and stayed close


def test_bf16_weight_copy_gives_autocasts_bits_without_touching_the_fp32_network(tiny_cfg):
    from mri_score.precision import autocast
    from mri_score.prior import bf16_weight_copy

    model = random_model(tiny_cfg)
    x = complex_to_channels(torch.complex(torch.randn(2, 32, 32), torch.randn(2, 32, 32)))
    prior = ComplexPrior(model, "bf16")
    with torch.no_grad():
        out = prior.network(x, 0.3)
        with autocast(prior.autocast):  # what the adapter ran before: autocast casting fp32 weights per call
            ref = prior.model(x.contiguous(memory_format=torch.channels_last), 0.3).float()
    assert torch.equal(out, ref)
    # the fp32 network (what --adapt trains) is unchanged; the copy holds bf16 conv/linear weights only
    assert all(p.dtype == torch.float32 for p in prior.model.parameters())
    copy16 = bf16_weight_copy(prior.model)
    convs = [m for m in copy16.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    norms = [m for m in copy16.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    assert not any(p.requires_grad for p in copy16.parameters())
    # fp32 mode runs the fp32 network itself
    prior.set_precision("fp32")
    with torch.no_grad():
        assert torch.allclose(prior.network(x, 0.3), model(x, 0.3), atol=1e-6)


def test_dds_returns_ordinary_tensors_from_its_inference_mode_loop(tiny_cfg):
    model = random_model(tiny_cfg)
    g = torch.Generator().manual_seed(0)
    img = torch.complex(torch.randn(32, 32, generator=g), torch.randn(32, 32, generator=g))
    mask = torch.zeros(32)
    mask[::2] = 1
    mask[12:20] = 1
    res = reconstruct_slice(fft2c(img.expand(2, -1, -1).clone()), mask, ComplexPrior(model, "bf16"),
                            ReconRequest(steps=3, samples=2, seed=1, maps="lowres"))
    assert not res.mean.is_inference() and not res.image.is_inference()
    # usable as data in a later autograd graph (test-time adaptation trains on the pilot means)
    w = torch.ones((), requires_grad=True)
    (res.mean.abs() * w).sum().backward()
    assert w.grad is not None


def test_bf16_copy_follows_changes_to_the_fp32_network_and_survives_inference_mode(tiny_cfg):
    model = random_model(tiny_cfg)
    prior = ComplexPrior(model, "bf16")
    x = torch.complex(torch.randn(2, 32, 32), torch.randn(2, 32, 32))
    with torch.inference_mode():  # the first bf16 call inside a sampler's inference mode (as DDS makes it)
        first = prior.denoise(x, 0.3)
    # the same adapter then differentiates through the network (DPS, classifier guidance)
    xg = x.clone().requires_grad_(True)
    prior.denoise(xg, 0.3).abs().sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    # an in-place change of the fp32 network reaches the bf16 copy
    with torch.no_grad():
        next(p for p in prior.model.parameters() if p.ndim == 4).mul_(3.0)
        changed = prior.denoise(x, 0.3)
        again = prior.denoise(x, 0.3)
    assert not torch.equal(first, changed) and torch.equal(changed, again)


def test_dds_inference_mode_loop_gives_the_no_grad_bits(tiny_cfg):
    from mri_score.likelihood import GaussianKspaceLikelihood
    from mri_score.samplers import DDSConfig, sample_dds
    from mri_score.samplers.dds import _dds_loop
    from operators import Sense

    model = random_model(tiny_cfg)
    g = torch.Generator().manual_seed(0)
    maps = torch.ones(1, 32, 32, dtype=torch.complex64)
    mask = torch.zeros(32)
    mask[::2] = 1
    img = torch.complex(torch.randn(32, 32, generator=g), torch.randn(32, 32, generator=g))
    term = GaussianKspaceLikelihood(Sense(maps, mask), Sense(maps, mask)(img), 0.05)
    x_init = term.zero_filled().expand(2, -1, -1).clone()
    cfg = DDSConfig()
    fast = sample_dds(ComplexPrior(model, "bf16"), [term], x_init, torch.Generator().manual_seed(3), 4, cfg).samples
    with torch.no_grad():
        ref = _dds_loop(ComplexPrior(model, "bf16"), [term], [], x_init, torch.Generator().manual_seed(3), 4, cfg)
    assert torch.equal(fast, ref) and not fast.is_inference()


def test_reconstruct_slice_sets_the_adapters_precision(tiny_cfg):
    model = random_model(tiny_cfg)
    g = torch.Generator().manual_seed(0)
    img = torch.complex(torch.randn(32, 32, generator=g), torch.randn(32, 32, generator=g))
    ks = fft2c(img.expand(2, -1, -1).clone())
    mask = torch.zeros(32)
    mask[::2] = 1
    mask[12:20] = 1
    adapter = ComplexPrior(model, "bf16")
    res = {}
    for mode in ("fp32", "bf16"):
        settings = ReconRequest(steps=3, samples=2, seed=1, maps="lowres", precision=mode)
        res[mode] = reconstruct_slice(ks, mask, adapter, settings)
        assert adapter.precision == mode
    again = reconstruct_slice(ks, mask, adapter, ReconRequest(steps=3, samples=2, seed=1, maps="lowres",
                                                                  precision="fp32"))
    assert torch.equal(again.mean, res["fp32"].mean)  # deterministic by seed in each precision
    assert not torch.equal(res["fp32"].mean, res["bf16"].mean)


def test_sampler_settings_refuse_an_unknown_precision():
    with pytest.raises(InputError, match="unknown precision 'fp16'; choose one of auto, bf16, fp32"):
        ReconRequest(precision="fp16")


def test_cli_precision_flag_reaches_the_output(tmp_path, fully_sampled_file, tiny_prior_path):
    rc = main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / "o"), "--prior", str(tiny_prior_path),
               "--steps", "2", "--center-fraction", "0.25", "--precision", "fp32"])
    assert rc == 0
    with h5py.File(tmp_path / "o" / fully_sampled_file.name) as hf:
        assert hf.attrs["precision"] == "fp32"
        assert np.isfinite(hf["reconstruction"][()]).all()


def test_cli_bad_precision_one_line_exit_2(tmp_path, fully_sampled_file, tiny_prior_path, capsys):
    rc = main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / "o"), "--prior", str(tiny_prior_path),
               "--precision", "half"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--precision" in err[0] and "half" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("module", ["reconstruct", "sample_prior", "simulate", "preprocess", "train", "average_weights"])
def test_every_command_line_reports_usage_errors_in_one_line(module, capsys):
    import importlib

    rc = importlib.import_module(f"mri_score.{module}").main(["--no-such-flag"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ")  # a missing or an unknown flag, named
