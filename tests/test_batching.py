"""Throughput: batched slices and samples give slice-by-slice results; the shard deal; one merged summary."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mri_score import batching, pipeline, posterior, runs, sharding
from mri_score.classifier import NoiseClassifier
from mri_score.errors import InputError
from mri_score.fastmri_io import write_fastmri_file
from mri_score.guidance import ClassifierGuidance, DenoisedClassifierGuidance, GuidedPrior
from mri_score.likelihood import GaussianKspaceLikelihood
from mri_score.network import EDMDenoiser, NetworkConfig
from mri_score.pipeline import reconstruct_volume
from mri_score.prior import ComplexPrior
from mri_score.reconstruct import main
from mri_score.request import ReconRequest
from mri_score.samplers import SAMPLERS, sampler_config
from mri_score.samplers.base import randn_complex
from mri_score.simulation import simulate_volume
from operators import Sense, make_mask
from tests.conftest import phantom

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"dds": 3, "dps": 3, "pc": 4, "langevin": 4}


def _network(cfg: NetworkConfig, seed: int = 0) -> EDMDenoiser:
    """A tiny prior with non-trivial weights (a fresh network's output layer is zero: D(x) = c_skip x)."""
    torch.manual_seed(seed)
    model = EDMDenoiser(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    return model


@pytest.fixture(scope="module")
def volume():
    ksp, _, _ = simulate_volume(phantom(32, 5, seed=2), coils=3, snr=60.0, seed=4)
    mask, _ = make_mask("equispaced", 4.0, 0.25, (32, 32), "vol.h5")
    return ksp, mask


@pytest.fixture(scope="module")
def prior():
    return ComplexPrior(_network(NetworkConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, emb_dim=16,
                                               groups=4)), "fp32")


def _close(a: np.ndarray, b: np.ndarray, rel: float = 1e-5) -> None:
    assert np.max(np.abs(a - b)) <= rel * np.max(np.abs(b)), np.max(np.abs(a - b)) / np.max(np.abs(b))


def _both(ksp, mask, prior, request, batch, **kw):
    one = reconstruct_volume(ksp, mask, prior, request, batch_slices=1, **kw)
    many = reconstruct_volume(ksp, mask, prior, request, batch_slices=batch, **kw)
    assert one.batch_slices == 1 and many.batch_slices == min(batch, ksp.shape[0])
    return one, many


@pytest.fixture(params=["per-slice operators", "one batched operator"])
def operator_mode(request, monkeypatch):
    """The data term of a batch applies each slice's operator in turn (the CPU default) or one batched ``Sense``
    (the CUDA default): both are run here, on the CPU."""
    batched = request.param == "one batched operator"
    stack = GaussianKspaceLikelihood.stack.__func__

    def forced(cls, terms):
        out = stack(cls, terms)
        out.slice_by_slice = not batched
        return out

    monkeypatch.setattr(GaussianKspaceLikelihood, "stack", classmethod(forced))
    return request.param


@pytest.mark.parametrize("sampler,options,grid", [
    ("dds", {}, "native"), ("dds", {"gamma_rule": "discrepancy"}, "native"), ("dds", {}, 2),
    ("dds", {"coarse_steps": 2}, 2),
    ("dps", {}, "native"), ("dps", {}, 2), ("pc", {}, "native"), ("pc", {}, 2), ("langevin", {}, "native"),
])
def test_batched_slices_match_slice_by_slice(volume, prior, sampler, options, grid, operator_mode):
    ksp, mask = volume
    request = ReconRequest(sampler=sampler, steps=STEPS[sampler], samples=2, seed=3, precision="fp32", options=options,
                           grid=grid)
    one, many = _both(ksp, mask, prior, request, 3)  # 5 slices: batches of 3 and 2
    for a, b in zip(many.means, one.means):
        _close(a.numpy(), b.numpy())
    _close(many.image, one.image)
    _close(many.std, one.std, 1e-4)  # a std of two samples: a difference of nearly equal numbers
    assert many.nfe == one.nfe == [STEPS[sampler]] * 5
    assert [c.scale for c in many.calibrations] == [c.scale for c in one.calibrations]


def test_the_single_slice_term_and_a_batch_of_one_agree():
    """``GaussianKspaceLikelihood.stack([term])`` with ``[gen]``: the term of one slice as the batch code runs it."""
    g = torch.Generator().manual_seed(0)
    maps = torch.complex(torch.randn(3, 16, 16, generator=g), torch.randn(3, 16, 16, generator=g))
    maps = maps / maps.abs().square().sum(0).sqrt()
    mask = (torch.arange(16) % 2 == 0).float()
    x = torch.complex(torch.randn(16, 16, generator=g), torch.randn(16, 16, generator=g))
    term = GaussianKspaceLikelihood(Sense(maps, mask), Sense(maps, mask)(x), 0.05)
    batch = GaussianKspaceLikelihood.stack([term])
    assert batch.slice_by_slice  # on a CPU: each slice's own operator
    model = ComplexPrior(_network(NetworkConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, emb_dim=16,
                                                groups=4)), "fp32")
    for name in SAMPLERS:
        for options in ({}, {"gamma_rule": "discrepancy"}) if name == "dds" else ({},):
            cfg = sampler_config(name, options)
            a = SAMPLERS[name](model, [term], term.zero_filled().expand(2, -1, -1).clone(),
                               torch.Generator().manual_seed(1), STEPS[name], cfg).samples
            b = SAMPLERS[name](model, [batch], batch.zero_filled().expand(2, -1, -1).clone(),
                               [torch.Generator().manual_seed(1)], STEPS[name], cfg).samples
            _close(b.numpy(), a.numpy())
    assert torch.equal(batch.zero_filled()[0], term.zero_filled())
    est = x.expand(2, -1, -1) + 0.1
    assert float(batch.error_variance(est)[0]) == pytest.approx(term.error_variance(est), rel=1e-5)


def test_each_slice_draws_its_noise_from_its_own_generator_in_the_same_order():
    gens = [torch.Generator().manual_seed(s) for s in (7, 8, 9)]
    both = randn_complex((6, 4, 4), gens, torch.device("cpu"))
    again = randn_complex((6, 4, 4), gens, torch.device("cpu"))  # the generators moved on
    for b, seed in enumerate((7, 8, 9)):
        alone = torch.Generator().manual_seed(seed)
        assert torch.equal(both[2 * b : 2 * b + 2], randn_complex((2, 4, 4), alone, torch.device("cpu")))
        assert torch.equal(again[2 * b : 2 * b + 2], randn_complex((2, 4, 4), alone, torch.device("cpu")))
    with pytest.raises(ValueError, match="generators"):
        randn_complex((5, 4, 4), gens, torch.device("cpu"))


def test_stack_refuses_slices_that_do_not_share_a_mask():
    maps = torch.ones(1, 8, 8, dtype=torch.complex64)
    a = GaussianKspaceLikelihood(Sense(maps, torch.ones(8)), torch.zeros(1, 8, 8, dtype=torch.complex64), 0.1)
    b = GaussianKspaceLikelihood(Sense(maps, torch.zeros(8)), torch.zeros(1, 8, 8, dtype=torch.complex64), 0.1)
    with pytest.raises(ValueError, match="share the mask"):
        GaussianKspaceLikelihood.stack([a, b])
    with pytest.raises(ValueError, match="one-slice"):
        GaussianKspaceLikelihood.stack([GaussianKspaceLikelihood.stack([a])])


@pytest.mark.parametrize("guidance", ["noisy", "denoised", "cfg"])
def test_guidance_terms_batch_like_the_slices(volume, guidance, operator_mode):
    """Guidance acts on each image alone: the batched run is the slice-by-slice one (classifier and CFG priors)."""
    ksp, mask = volume
    tiny = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, emb_dim=16, groups=4)
    if guidance == "cfg":
        runtime = GuidedPrior(_network(NetworkConfig(**tiny, label_classes=(3,)), seed=1), torch.tensor([1]), 2.0)
        runtime.set_precision("fp32")
        terms = []
    else:
        runtime = ComplexPrior(_network(NetworkConfig(**tiny)), "fp32")
        torch.manual_seed(2)
        clf = NoiseClassifier(NetworkConfig(**tiny, label_classes=(3,))).eval()
        terms = [ClassifierGuidance(clf, torch.tensor([1]), 2.0) if guidance == "noisy"
                 else DenoisedClassifierGuidance(clf, torch.tensor([1]), 2.0, runtime)]
    for sampler in ("dds", "dps"):
        request = ReconRequest(sampler=sampler, steps=3, samples=2, seed=1, precision="fp32")
        one, many = _both(ksp[:3], mask, runtime, request, 3, extra_terms=terms)
        _close(many.image, one.image)
        assert many.nfe == one.nfe


def test_auto_batch_is_bounded_by_the_free_memory(monkeypatch):
    per = batching.slice_working_set(2, 15, (320, 320))
    assert per == batching.MEM_COPIES * 2 * 15 * 320 * 320 * 8
    # half the free memory, at least one slice, never more than the volume
    assert batching.auto_batch_slices(30, per, 6 * per, "cuda") == 3
    assert batching.auto_batch_slices(30, per, per, "cuda") == 1 and batching.auto_batch_slices(30, per, 0, "cuda") == 1
    assert batching.auto_batch_slices(2, per, 100 * per, "cuda") == 2
    assert batching.auto_batch_slices(30, per, 100 * per, "cuda") == 30
    # on a CPU slice by slice, however much memory is free (batches ran slower there: throughput.md)
    assert batching.AUTO_MAX_SLICES == 1
    assert batching.auto_batch_slices(30, per, 100 * per) == 1 and batching.auto_batch_slices(30, per, 6 * per) == 1
    monkeypatch.setattr(batching.limits, "available_memory", lambda: 8 * per)
    assert batching.resolve_batch_slices("auto", 30, 2, 15, (320, 320), torch.device("cpu")) == 1
    assert batching.resolve_batch_slices(16, 30, 2, 15, (320, 320), torch.device("cpu")) == 16
    assert batching.resolve_batch_slices("7", 3, 2, 15, (320, 320), torch.device("cpu")) == 3
    # a finer sampling grid (--grid 2) needs four times the memory per slice
    monkeypatch.setattr(batching, "free_memory", lambda device: 8 * per)
    assert batching.resolve_batch_slices("auto", 30, 2, 15, (320, 320), torch.device("cuda")) == 4
    assert batching.resolve_batch_slices("auto", 30, 2, 15, (640, 640), torch.device("cuda")) == 1


def test_auto_batch_on_cuda_reads_mem_get_info_and_the_allocator_cache(monkeypatch):
    """The CUDA path of ``auto`` on a CPU machine: ``mem_get_info`` and the caching allocator mocked."""
    per = batching.slice_working_set(2, 8, (256, 256))
    seen = []

    def mem_get_info(device):
        seen.append(device)
        return 10 * per, 80 * per

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 7 * per)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1 * per)
    dev = torch.device("cuda:1")
    assert batching.free_memory(dev) == 16 * per and seen == [dev]
    assert batching.resolve_batch_slices("auto", 40, 2, 8, (256, 256), dev) == 8  # half of 16 slices' worth
    assert batching.resolve_batch_slices("auto", 5, 2, 8, (256, 256), dev) == 5


def test_reconstruct_volume_auto_batch_and_halving_after_out_of_memory(volume, prior, monkeypatch):
    ksp, mask = volume
    request = ReconRequest(steps=2, samples=2, seed=0, precision="fp32", grid="native")
    per = batching.slice_working_set(2, ksp.shape[1], ksp.shape[-2:])
    monkeypatch.setattr(batching.limits, "available_memory", lambda: 6 * per)
    assert reconstruct_volume(ksp, mask, prior, request).batch_slices == 1  # a CPU: slice by slice
    monkeypatch.setattr(batching, "AUTO_MAX_SLICES", 8)  # the memory bound, as on CUDA
    auto = reconstruct_volume(ksp, mask, prior, request)
    assert auto.batch_slices == 3
    real = posterior.reconstruct_slices
    sizes = []

    def tight(kspace, *args, **kwargs):  # a device that holds two slices at most
        sizes.append(kspace.shape[0])
        if kspace.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(kspace, *args, **kwargs)

    monkeypatch.setattr(pipeline, "reconstruct_slices", tight)
    halved = reconstruct_volume(ksp, mask, prior, request, batch_slices=5)
    assert sizes == [5, 2, 2, 1] and halved.batch_slices == 2
    _close(halved.image, auto.image)
    sizes.clear()

    def full(kspace, *args, **kwargs):
        sizes.append(kspace.shape[0])
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(pipeline, "reconstruct_slices", full)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # not even one slice fits: the error is the caller's
        reconstruct_volume(ksp, mask, prior, request, batch_slices=4)
    assert sizes == [4, 2, 1]


@pytest.mark.parametrize("value", ["0", "-2", "x", "1.5", ""])
def test_bad_batch_slices_is_refused(value):
    with pytest.raises(InputError, match="--batch-slices must be a positive number of slices or auto"):
        batching.parse_batch_slices(value)
    assert batching.parse_batch_slices("AUTO") == "auto" and batching.parse_batch_slices("12") == 12


def test_deal_is_largest_first_and_balanced():
    files = [Path(f"f{k}.h5") for k in range(7)]
    sizes = [10, 70, 20, 40, 30, 50, 60]
    ranks = sharding.deal(files, 3, sizes)
    assert sorted(f for r in ranks for f in r) == sorted(files)  # each file exactly once
    loads = [sum(sizes[files.index(f)] for f in r) for r in ranks]
    assert loads == [100, 90, 90]  # 70+20+10 | 60+30 | 50+40 (dealt in turn by name: 110 | 100 | 70)
    assert ranks == [[files[0], files[1], files[2]], [files[4], files[6]], [files[3], files[5]]]  # listing order
    assert sharding.deal(files, 1, sizes) == [files]
    assert sharding.deal(files[:1], 3, sizes[:1]) == [[files[0]], [], []]
    # equal sizes: name order, dealt in turn
    assert sharding.deal(files[:3], 2, [5, 5, 5]) == [[files[0], files[2]], [files[1]]]


def test_deal_reads_the_sizes_on_disk(tmp_path):
    for name, size in (("a.h5", 100), ("b.h5", 300), ("c.cfl", 250), ("d.h5", 50)):
        (tmp_path / name).write_bytes(b"x" * size)
    files = sorted(tmp_path.iterdir())
    assert sharding.deal(files, 2) == [[tmp_path / "b.h5", tmp_path / "d.h5"], [tmp_path / "a.h5", tmp_path / "c.cfl"]]
    assert sharding.files_of(files, 1, 2) == sharding.deal(files, 2)[1]


@pytest.mark.parametrize("text", ["3/2", "2/2", "0/0", "x", "1", "-1/2", "1/x", "1/2/3"])
def test_bad_shard_is_refused(text):
    with pytest.raises(InputError, match="--shard must be i/n with 0 <= i < n"):
        sharding.parse_shard(text)


def test_shard_and_torchrun_environment():
    assert sharding.parse_shard(" 1/4 ") == (1, 4)
    assert sharding.process_of(None, {}) == (0, 1)
    assert sharding.process_of(None, {"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert sharding.process_of("2/3", {}) == (2, 3)
    assert sharding.process_of("2/3", {"RANK": "0", "WORLD_SIZE": "1"}) == (2, 3)
    with pytest.raises(InputError, match="cannot be combined with torchrun"):
        sharding.process_of("0/2", {"RANK": "0", "WORLD_SIZE": "2"})


def _write_inputs(d: Path, slices: tuple[int, ...]) -> list[Path]:
    paths = []
    for i, s in enumerate(slices):
        ksp, target, _ = simulate_volume(phantom(32, s, seed=i), coils=2, snr=100.0, seed=i)
        paths.append(write_fastmri_file(d / f"v{i}.h5", ksp, target, "SYN", f"p{i}"))
    return paths


def test_shard_and_torchrun_reconstruct_the_same_files(tmp_path, monkeypatch, tiny_prior_path):
    """``--shard i/n`` and torchrun rank i of n go through one deal: the same files (a larger file first)."""
    from mri_score import reconstruct

    d = tmp_path / "in"
    _write_inputs(d, (1, 3, 1, 2, 1))
    dealt = {}

    def spy(run, files):
        dealt[(run.rank, run.world, os.environ.get("WORLD_SIZE", "-"))] = [f.name for f in files]
        assert run.inputs == sorted(d.iterdir())
        return 0

    monkeypatch.setattr(reconstruct, "_run", spy)
    args = ["--kspace", str(d), "--out", str(tmp_path / "o"), "--prior", str(tiny_prior_path)]
    for r in range(2):
        assert main([*args, "--shard", f"{r}/2"]) == 0
    for r in range(2):
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main(args) == 0
    assert dealt[(0, 2, "-")] == dealt[(0, 2, "2")] and dealt[(1, 2, "-")] == dealt[(1, 2, "2")]
    assert [dealt[(r, 2, "-")] for r in (0, 1)] == [[f.name for f in fs] for fs in sharding.deal(sorted(d.iterdir()), 2)]
    assert sorted(dealt[(0, 2, "-")] + dealt[(1, 2, "-")]) == [f"v{i}.h5" for i in range(5)]
    assert "v1.h5" in dealt[(0, 2, "-")] and "v3.h5" in dealt[(1, 2, "-")]  # the two largest start the two ranks


@pytest.mark.parametrize("flag,value", [("--shard", "3/2"), ("--shard", "0/0"), ("--shard", "x"),
                                        ("--batch-slices", "0"), ("--batch-slices", "x")])
def test_bad_flags_are_one_line_and_exit_2(fully_sampled_file, tmp_path, tiny_prior_path, capsys, flag, value):
    rc = main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / "o"), "--prior", str(tiny_prior_path),
               flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and flag in err, err
    assert not (tmp_path / "o").exists()


def test_shard_under_torchrun_is_refused(fully_sampled_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["--kspace", str(fully_sampled_file), "--out", str(tmp_path / "o"), "--shard", "0/2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--shard 0/2 cannot be combined with torchrun" in err


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as fh:
        return {os.path.basename(r["file"]): r for r in csv.DictReader(fh)}


def test_finish_process_merges_when_the_last_process_of_the_same_run_finishes(tmp_path):
    out = tmp_path / "o"
    order = [str(tmp_path / f"v{i}.h5") for i in range(3)]
    runs.write_summary(runs.summary_path(out, 1, 2), [{"file": order[1], "status": "done", "slices": 1}])
    assert runs.finish_process(out, 1, 2, "run-a", order) is None  # rank 0 has not finished
    runs.write_summary(runs.summary_path(out, 0, 2), [{"file": order[2], "status": "failed", "error": "bad"},
                                                      {"file": order[0], "status": "done", "slices": 2}])
    merged = runs.finish_process(out, 0, 2, "run-a", order)
    assert merged == out / "summary.csv"
    assert [r["file"] for r in runs.read_summary(merged)] == order  # the inputs' order
    # a later run with other settings: rank 1's old marker does not complete it
    (out / "summary.csv").unlink()
    runs.start_process(out, 0, 2)
    assert not runs.marker_path(out, 0, 2).exists()
    assert runs.finish_process(out, 0, 2, "run-b", order) is None and not (out / "summary.csv").exists()


def test_run_id_changes_with_inputs_settings_and_world(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    a.write_bytes(b"1")
    b.write_bytes(b"22")
    ident = runs.run_id([a, b], {"seed": 0}, 2)
    assert runs.run_id([b, a], {"seed": 0}, 2) == ident
    assert len({ident, runs.run_id([a], {"seed": 0}, 2), runs.run_id([a, b], {"seed": 1}, 2),
                runs.run_id([a, b], {"seed": 0}, 3)}) == 4


def test_two_shard_processes_write_one_merged_summary_and_a_rerun_completes_only_the_missing(tmp_path,
                                                                                           tiny_prior_path):
    """Two ``--shard`` processes at once (2 CPU processes); then a killed shard's rerun does only its missing files."""
    d, out = tmp_path / "in", tmp_path / "out"
    _write_inputs(d, (2, 1, 1))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "mri_score.reconstruct", "--kspace", str(d), "--out", str(out), "--prior",
           str(tiny_prior_path), "--steps", "2", "--samples", "1", "--quiet", "--center-fraction", "0.25"]
    procs = [subprocess.Popen([*cmd, "--shard", f"{r}/2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    per_rank = [_rows(out / f"summary-rank{r}-of-2.csv") for r in (0, 1)]
    assert set(per_rank[0]) == {"v0.h5"} and set(per_rank[1]) == {"v1.h5", "v2.h5"}  # 2 slices | 1 + 1
    merged = _rows(out / "summary.csv")
    assert list(merged) == ["v0.h5", "v1.h5", "v2.h5"] and {r["status"] for r in merged.values()} == {"done"}
    assert sum("merged summary" in o[0] for o in outs) >= 1
    # shard 1 is "killed": one of its outputs and its marker are gone, the merged summary is stale
    (out / "v2.h5").unlink()
    (out / "summary-rank1-of-2.done").unlink()
    (out / "summary.csv").unlink()
    stamp = (out / "v1.h5").stat().st_mtime_ns
    res = subprocess.run([*cmd, "--shard", "1/2"], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _rows(out / "summary.csv")
    assert rows["v1.h5"]["status"] == "skipped" and rows["v2.h5"]["status"] == "done"
    assert rows["v0.h5"]["status"] == "done" and (out / "v1.h5").stat().st_mtime_ns == stamp
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_failing_file_never_stops_the_others(tmp_path, tiny_prior_path, monkeypatch, capsys):
    from mri_score import reconstruct

    d = tmp_path / "in"
    _write_inputs(d, (1, 1, 1))
    real = reconstruct.reconstruct_file

    def flaky(path, *args, **kwargs):
        if path.name == "v1.h5":
            raise RuntimeError("device lost")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(reconstruct, "reconstruct_file", flaky)
    rc = main(["--kspace", str(d), "--out", str(tmp_path / "o"), "--prior", str(tiny_prior_path), "--steps", "2",
               "--samples", "1", "--batch-slices", "2", "--center-fraction", "0.25"])
    assert rc == 2
    rows = _rows(tmp_path / "o" / "summary.csv")
    assert {k: r["status"] for k, r in rows.items()} == {"v0.h5": "done", "v1.h5": "failed", "v2.h5": "done"}
    assert "RuntimeError: device lost" in rows["v1.h5"]["error"] and rows["v0.h5"]["batch_slices"] == "1"
    assert "v1.h5: RuntimeError: device lost" in capsys.readouterr().err


def test_the_two_ways_of_applying_a_batch_operator_agree():
    """Each slice's operator in turn (CPU) and one batched ``Sense`` (CUDA): the same data term, to rounding."""
    g = torch.Generator().manual_seed(4)
    terms = []
    for k in range(3):
        maps = torch.complex(torch.randn(2, 12, 12, generator=g), torch.randn(2, 12, 12, generator=g))
        maps = maps / maps.abs().square().sum(0).sqrt()
        mask = (torch.arange(12) % 3 == 0).float()
        op = Sense(maps, mask)
        terms.append(GaussianKspaceLikelihood(op, op(torch.randn(12, 12, dtype=torch.complex64, generator=g)),
                                              0.02 * (k + 1)))
    per, whole = GaussianKspaceLikelihood.stack(terms), GaussianKspaceLikelihood.stack(terms)
    whole.slice_by_slice = False
    x = torch.complex(torch.randn(6, 12, 12, generator=g), torch.randn(6, 12, 12, generator=g))
    gamma = torch.tensor([1.0, 5.0, 20.0], dtype=torch.float64)
    for a, b in ((per.zero_filled(), whole.zero_filled()), (per.inflated_grad(x, 0.3), whole.inflated_grad(x, 0.3)),
                 (per.prox(x, gamma, 5), whole.prox(x, gamma, 5)), (per.error_variance(x), whole.error_variance(x))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # each slice's rows are its own term's: γ, σ_y and the data per slice
    for k, term in enumerate(terms):
        rows = slice(2 * k, 2 * k + 2)
        torch.testing.assert_close(per.prox(x, gamma, 5)[rows], term.prox(x[rows], float(gamma[k]), 5))
        torch.testing.assert_close(per.inflated_grad(x, 0.3)[rows], term.inflated_grad(x[rows], 0.3))
        assert float(per.error_variance(x)[k]) == pytest.approx(term.error_variance(x[rows]), rel=1e-5)
