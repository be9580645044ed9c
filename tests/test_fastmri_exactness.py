"""The project's scoring equals fastMRI 0.3.0's, formula for formula (issue 13, item 7).

fastMRI's evaluation is restated below in a few small functions (no dependency on the
``fastmri`` package), from ``fastmri/evaluate.py``, ``fastmri/data/transforms.py`` and
runstats 2.0 (which ``fastmri.evaluate.Metrics`` uses for its running mean and std):

* ``center_crop``: rows from ``(H − h) // 2``, columns from ``(W − w) // 2``; a crop larger than
  the image raises.
* ``evaluate()``: per volume, the target (``reconstruction_rss`` for multi-coil,
  ``reconstruction_esc`` for single-coil) is centre-cropped to ``(W_t, W_t)``, ``W_t`` its
  width, and the reconstruction to the same square; then MSE, NMSE, PSNR and SSIM of the volume.
* NMSE ``‖gt − pred‖² / ‖gt‖²`` over the volume; PSNR skimage's ``peak_signal_noise_ratio`` over
  the volume with ``data_range = gt.max()``; SSIM skimage's ``structural_similarity`` of each
  slice with that same volume ``data_range``, summed and divided by the slice count.
* The report is ``mean ± 2 · stddev`` over volumes, runstats' ``stddev`` being the sample std
  (``ddof = 1``, Welford's running update).
* The reconstruction crop (``UnetDataTransform``, ``VarNetModule.test_step``, the zero-filled
  and BART examples): the header's recon size ``(x, y)``, replaced by ``(W, W)`` when the image
  width ``W`` is below ``y`` ("FLAIR 203").

fastMRI reads its volumes from HDF5 as float32 and hands them to skimage unconverted; the
reference below does the same, so the comparison also covers the project's float64 casts.
Every volume here is built so that the property under test matters: bright pixels and large
errors in the rows the crop removes, slices of different maxima and error levels, an odd
height difference (an off-by-one centring would shift the crop).
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mri_score.fastmri_io import read_fastmri, recon_crop_size, save_reconstruction, write_fastmri_file
from mri_score.metrics import aggregate, volume_metrics
from mri_score.simulate import main as simulate_main
from operators import ifft2c

TOL = 1e-6  # dB for PSNR; absolute for SSIM and NMSE


# ----------------------------------------------------------------------------------------------
# fastMRI 0.3.0's evaluation, restated


def fm_center_crop(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``fastmri.data.transforms.center_crop``."""
    if not (0 < shape[0] <= data.shape[-2] and 0 < shape[1] <= data.shape[-1]):
        raise ValueError("Invalid shapes.")
    r0 = (data.shape[-2] - shape[0]) // 2
    c0 = (data.shape[-1] - shape[1]) // 2
    return data[..., r0 : r0 + shape[0], c0 : c0 + shape[1]]


def fm_nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def fm_psnr(gt: np.ndarray, pred: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(gt, pred, data_range=gt.max()))


def fm_ssim(gt: np.ndarray, pred: np.ndarray) -> float:
    total = np.array([0])
    for i in range(gt.shape[0]):
        total = total + structural_similarity(gt[i], pred[i], data_range=gt.max())
    return float((total / gt.shape[0])[0])


def fm_volume(target: np.ndarray, recons: np.ndarray) -> dict[str, float]:
    """One iteration of ``evaluate()``'s loop: the two crops, then the metrics."""
    target = fm_center_crop(target, (target.shape[-1], target.shape[-1]))
    recons = fm_center_crop(recons, (target.shape[-1], target.shape[-1]))
    return {"NMSE": fm_nmse(target, recons), "PSNR": fm_psnr(target, recons), "SSIM": fm_ssim(target, recons)}


def fm_evaluate_dir(target_dir: Path, predictions_dir: Path, recons_key: str) -> dict[str, dict[str, float]]:
    """``evaluate()`` over a directory: per-volume metrics by file name (read from HDF5 as fastMRI does)."""
    out = {}
    for tgt_file in sorted(target_dir.iterdir()):
        with h5py.File(tgt_file, "r") as target, h5py.File(predictions_dir / tgt_file.name, "r") as recons:
            out[tgt_file.name] = fm_volume(target[recons_key][()], recons["reconstruction"][()])
    return out


class RunStats:
    """runstats' ``Statistics``: Welford's running mean and ``stddev(ddof=1)``."""

    def __init__(self) -> None:
        self.count, self.eta, self.rho = 0, 0.0, 0.0

    def push(self, value: float) -> None:
        self.count += 1
        delta = value - self.eta
        self.eta += delta / self.count
        self.rho += delta * (value - self.eta)

    def mean(self) -> float:
        return self.eta

    def stddev(self, ddof: float = 1.0) -> float:
        return (self.rho / (self.count - ddof)) ** 0.5


def fm_crop_size(image_shape: tuple[int, int], recon_size: tuple[int, ...]) -> tuple[int, int]:
    """The reconstruction crop of fastMRI's transforms and VarNet test step ("check for FLAIR 203")."""
    crop = (int(recon_size[0]), int(recon_size[1]))
    if image_shape[-1] < crop[1]:
        crop = (image_shape[-1], image_shape[-1])
    return crop


# ----------------------------------------------------------------------------------------------
# volumes where every detail of the protocol changes the numbers


def _paste_centred(canvas: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``canvas`` with ``x`` centred on its last two axes (``x`` centre-cropped where it is larger)."""
    out = canvas.copy()
    src, dst = [slice(None)], [slice(None)]
    for n_out, n_in in zip(canvas.shape[-2:], x.shape[-2:]):
        if n_in <= n_out:
            a = (n_out - n_in) // 2
            dst.append(slice(a, a + n_in))
            src.append(slice(None))
        else:
            a = (n_in - n_out) // 2
            dst.append(slice(None))
            src.append(slice(a, a + n_out))
    out[tuple(dst)] = x[tuple(src)]
    return out


def volume_pair(target_shape: tuple[int, int, int], recon_shape: tuple[int, int, int] | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 target and reconstruction whose target-width-square crops are a plausible image pair.

    Outside the central ``W_t × W_t`` square the target has its brightest pixels and the
    reconstruction errs ten times more; slices differ in scale and error level; the background is
    a non-constant ramp plus texture.  A reconstruction grid larger than the target is padded with
    texture, a smaller one is the centre of the target's grid.
    """
    rng = np.random.default_rng(seed)
    s, h, w = target_shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    blob = np.exp(-(yy**2 / 0.3 + xx**2 / 0.25))
    scales = 1.0 / (1.0 + np.arange(s))  # slice maxima differ: volume data_range != slice data_range
    gt = scales[:, None, None] * (blob + 0.1 * (yy + 1) + 0.05 * rng.random((s, h, w)))
    r0 = (h - min(h, w)) // 2
    inside = np.zeros((h, w), dtype=bool)
    inside[r0 : r0 + w] = True
    if not inside.all():
        gt[0, ~inside] += 1.5 * rng.random(int((~inside).sum()))  # the volume max lies outside the crop
    noise_level = (0.01 * (1 + np.arange(s)))[:, None, None]
    err = noise_level * rng.standard_normal((s, h, w)) * np.where(inside, 1.0, 10.0)
    pred = _paste_centred(0.2 * rng.random(recon_shape or target_shape), gt + err)
    return gt.astype(np.float32), pred.astype(np.float32)


def crop_shifted(x: np.ndarray, side: int, shift: int) -> np.ndarray:
    """The ``side × side`` centre crop moved down by ``shift`` rows (where ``x`` leaves room)."""
    r0 = (x.shape[-2] - side) // 2 + shift
    c0 = (x.shape[-1] - side) // 2
    if r0 + side > x.shape[-2]:
        r0 -= shift
    return x[..., r0 : r0 + side, c0 : c0 + side]


def assert_matches(ours: dict[str, float], ref: dict[str, float]) -> None:
    for key in ("PSNR", "SSIM", "NMSE"):
        assert abs(ours[key] - ref[key]) <= TOL, (key, ours[key], ref[key])


# ----------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize(
    "target_shape,recon_shape",
    [
        ((3, 64, 64), None),  # square
        ((3, 320, 272), None),  # non-square (the case)
        ((3, 75, 64), None),  # odd height difference: the crop starts at row (75 - 64) // 2 = 5
        ((2, 80, 64), (2, 96, 72)),  # reconstruction larger than the target
        ((3, 128, 96), (3, 96, 96)),  # narrow image (width 96 < recon width 128): a 96 x 96 output
    ],
)
def test_volume_metrics_equal_fastmri_evaluate(target_shape, recon_shape):
    gt, pred = volume_pair(target_shape, recon_shape, seed=sum(target_shape))
    ref = fm_volume(gt, pred)
    assert_matches(volume_metrics(gt, pred), ref)
    side = gt.shape[-1]
    if gt.shape[-2] > side:  # the data make the crop matter, far beyond TOL:
        if pred.shape == gt.shape:  # scoring without the crop
            assert abs(fm_psnr(gt, pred) - ref["PSNR"]) > 0.5
        a, b = crop_shifted(gt, side, 1), crop_shifted(pred, side, 1)  # the crop's centring off by one row
        assert abs(fm_psnr(a, b) - ref["PSNR"]) > 1e-3 and abs(fm_ssim(a, b) - ref["SSIM"]) > 1e-5


def test_a_target_wider_than_high_is_refused_as_fastmri_refuses_it():
    gt, pred = volume_pair((2, 64, 80), seed=1)  # no 80 x 80 square fits: fastMRI's center_crop raises
    with pytest.raises(ValueError):
        fm_volume(gt, pred)
    with pytest.raises(ValueError, match="target-width square"):
        volume_metrics(gt, pred)


def test_aggregate_is_mean_and_twice_the_sample_std_as_runstats():
    rows = [volume_metrics(*volume_pair((2, 48 + 8 * k, 40), seed=k)) for k in range(4)]
    agg = aggregate(rows)
    for key in ("PSNR", "SSIM", "NMSE"):
        stats = RunStats()
        for r in rows:
            stats.push(r[key])
        mean, two_std = agg[key]
        assert math.isclose(mean, stats.mean(), rel_tol=1e-12)
        assert math.isclose(two_std, 2 * stats.stddev(), rel_tol=1e-9)
        assert not math.isclose(two_std, 2 * stats.stddev(ddof=0), rel_tol=1e-3)  # ddof = 1, not 0
    # one volume: runstats divides by zero; the project reports NaN rather than a fake 0
    assert math.isnan(aggregate(rows[:1])["PSNR"][1])


@pytest.mark.parametrize(
    "image_shape,recon_size,expected",
    [
        ((256, 96), (128, 128, 1), (96, 96)),  # narrow: width x width (the old rule gave (128, 96))
        ((640, 368), (320, 320, 1), (320, 320)),  # knee
        ((512, 213), (320, 320, 1), (213, 213)),  # a FLAIR 203-like narrow brain
        ((260, 260), (320, 320, 1), (260, 260)),
        ((96, 256), (128, 128, 1), (96, 128)),  # wide and low: fastMRI's crop would not fit; capped at H
    ],
)
def test_recon_crop_size_is_fastmris_rule(image_shape, recon_size, expected):
    assert recon_crop_size(image_shape, recon_size) == expected
    ref = fm_crop_size(image_shape, recon_size)
    if ref[0] <= image_shape[0] and ref[1] <= image_shape[1]:  # fastMRI's crop fits: the same crop
        assert recon_crop_size(image_shape, recon_size) == ref


def test_recon_crop_size_agrees_with_fastmri_wherever_fastmri_can_crop():
    for h in (48, 96, 128, 200, 320, 640):
        for w in (40, 96, 128, 213, 320, 368):
            for rx, ry in ((128, 128), (320, 320), (200, 96), (96, 200)):
                ref = fm_crop_size((h, w), (rx, ry, 1))
                ours = recon_crop_size((h, w), (rx, ry, 1))
                if ref[0] <= h and ref[1] <= w:
                    assert ours == ref, ((h, w), (rx, ry), ours, ref)
                else:  # fastMRI's center_crop raises; the project never crops beyond the image
                    assert ours == (min(ref[0], h), min(ref[1], w))


def _single_coil_files(tmp_path: Path, accel: str | None = None) -> Path:
    """``simulate --coils 1`` of two 48 x 40 slices from a .npy image file; returns the output directory."""
    rng = np.random.default_rng(3)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 48), np.linspace(-1, 1, 40), indexing="ij")
    img = np.exp(-(yy**2 / 0.4 + xx**2 / 0.3)) * (1 + 0.1 * rng.random((2, 48, 40)))
    src = tmp_path / "img.npy"
    np.save(src, (img * np.exp(0.5j * xx)).astype(np.complex64))
    out = tmp_path / ("sim_under" if accel else "sim")
    argv = ["--out", str(out), "--source", str(src), "--coils", "1", "--slices", "2", "--snr", "40"]
    if accel:
        argv += ["--accel", accel, "--center-fraction", "0.25", "--keep-target"]
    assert simulate_main(argv) == 0
    return out


@pytest.mark.parametrize("accel", [None, "2"])
def test_simulate_single_coil_writes_fastmris_single_coil_layout(tmp_path, accel):
    (path,) = sorted(_single_coil_files(tmp_path, accel).iterdir())
    with h5py.File(path) as hf:
        assert "reconstruction_rss" not in hf and "ismrmrd_header" in hf
        k = hf["kspace"]
        assert k.ndim == 3 and k.shape == (2, 48, 40) and k.dtype == np.complex64
        esc = hf["reconstruction_esc"][()]
        assert esc.dtype == np.float32 and esc.shape == (2, 48, 40)
        assert hf.attrs["max"] == pytest.approx(float(esc.max()))
        if accel:
            mask = hf["mask"][()]
            assert mask.shape == (40,) and np.all(k[()][..., mask == 0] == 0)
        else:  # the single-coil target is the magnitude of the (fully sampled) coil image
            img = ifft2c(torch.from_numpy(k[()])).abs().numpy()
            assert np.allclose(esc, img, atol=1e-5 * esc.max())
    vol = read_fastmri(path)
    assert vol.single_coil and vol.kspace.shape == (2, 1, 48, 40)


def test_single_coil_files_are_scored_against_reconstruction_esc(tmp_path):
    """As ``evaluate.py --challenge singlecoil``: the esc target, even when the file also holds an rss one."""
    (path,) = sorted(_single_coil_files(tmp_path).iterdir())
    with h5py.File(path, "a") as hf:  # fastMRI's single-coil files carry both targets; make them differ
        esc = hf["reconstruction_esc"][()]
        hf["reconstruction_rss"] = (1.3 * esc + 0.05 * esc.max()).astype(np.float32)
    rng = np.random.default_rng(0)
    pred = (esc + 0.02 * esc.max() * rng.standard_normal(esc.shape)).astype(np.float32)
    save_reconstruction(tmp_path / "pred", path.name, pred)

    vol = read_fastmri(path)
    assert np.array_equal(vol.target, esc)
    ref = fm_evaluate_dir(path.parent, tmp_path / "pred", "reconstruction_esc")[path.name]
    assert_matches(volume_metrics(vol.target, pred), ref)
    wrong = fm_evaluate_dir(path.parent, tmp_path / "pred", "reconstruction_rss")[path.name]
    assert abs(wrong["PSNR"] - ref["PSNR"]) > 1.0  # the key matters for these data

    # a multi-coil file with both keys is scored against reconstruction_rss
    multi = tmp_path / "multi" / "m.h5"
    write_fastmri_file(multi, np.repeat(vol.kspace, 2, axis=1), esc, "SYN", "p1")
    with h5py.File(multi, "a") as hf:
        hf["reconstruction_esc"] = (0.5 * esc).astype(np.float32)
    assert np.array_equal(read_fastmri(multi).target, esc)


def test_pipeline_summary_of_a_single_coil_file_is_fastmris_score(tmp_path, tiny_prior_path):
    """End to end: the summary ``reconstruct`` stores equals fastMRI's evaluate of its output against esc."""
    import json

    from mri_score.pipeline import reconstruct_file
    from mri_score.prior import ComplexPrior, load_prior
    from mri_score.request import ReconRequest

    (path,) = sorted(_single_coil_files(tmp_path).iterdir())
    out_dir = tmp_path / "recon"
    request = ReconRequest(sampler="dds", steps=2, seed=0, accel=2.0, center_fraction=0.25)
    summary = reconstruct_file(path, ComplexPrior(load_prior(tiny_prior_path)), request, out_dir)
    # a simulated file carries its noise-free truth: the summary scores against it, as fastMRI's evaluate would
    ref = fm_evaluate_dir(path.parent, out_dir, "truth")[path.name]
    assert summary["target"] == "the file's noise-free truth"
    assert_matches(summary, ref)
    with h5py.File(out_dir / path.name) as hf:
        stored = json.loads(hf.attrs["summary"])
    assert_matches(stored, ref)
