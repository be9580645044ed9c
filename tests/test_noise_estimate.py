"""σ_y, the noise std every slice's likelihood uses, against the simulator's known σ (issue 13, item 8).

:func:`operators.noise.estimate_sigma_y` takes the median absolute deviation of the real
and imaginary parts of the sampled k-space in the outermost ``1/16`` of the readout rows at each
edge.  For pure complex Gaussian noise (``E|n|² = σ²``, each part ``N(0, σ²/2)``) over ``N`` real
values, that estimator has a relative standard deviation of ``1.167/√N`` (the MAD's asymptotic
efficiency is 0.368 that of the sample std, whose relative sd is ``1/√(2N)``).  The tolerances
below are derived from that: per slice ``LEAK + 4 sd``, and for the mean over ``K`` slices (the
bias) ``LEAK + 4 sd/√K``, where ``LEAK = 5 %`` allows the signal left in the outer rows to add up
to ~10 % of the noise power.  Anything beyond is the estimator mistaking anatomy for noise.

The images are the project's procedural body and limb slices (soft edges, texture, bias field,
smooth phase), which take milliseconds; 8 coils, as the benchmark.  Where the estimator fails
(high SNR: the outer rows' anatomy exceeds the noise) the case is a strict xfail whose reason
holds the measured numbers, so a fix turns it into a failure that asks for the marker's removal.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mri_score.data.body import BODY_FAMILIES, body_slice
from mri_score.simulation import simulate_volume
from operators import make_mask
from operators.noise import estimate_sigma_y

SIZES = ((64, 64), (128, 96))
MASKS = (("equispaced", 4.0), ("random", 8.0))
SLICES = 8  # per case: body and limb alternating, contrast families cycling
COILS = 8
LEAK = 0.05
EDGE_FRACTION = 1 / 16  # estimate_sigma_y's default


@functools.cache
def images(shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """``SLICES`` complex slices of ``shape`` (field of view 400 mm for the trunk, 200 mm for a limb)."""
    out = []
    for i in range(SLICES):
        kind = ("body", "limb")[i % 2]
        pix = (400.0 if kind == "body" else 200.0) / shape[1]
        fam = BODY_FAMILIES[(i // 2) % 4]
        out.append(body_slice(np.random.default_rng([17, i]), kind, shape, pix, fam))
    return tuple(out)


def ratios(shape: tuple[int, int], mask_type: str, accel: float, snr: float) -> tuple[np.ndarray, np.ndarray]:
    """σ̂/σ per slice and the number of real values each estimate used."""
    r, n = [], []
    for i, img in enumerate(images(shape)):
        ksp, _, sigma = simulate_volume(img[None], coils=COILS, snr=snr, seed=1000 + i)
        mask, _ = make_mask(mask_type, accel, 0.08, shape, f"noise_{i}.h5")
        m = torch.from_numpy(mask)
        r.append(estimate_sigma_y(torch.from_numpy(ksp[0]) * m, m) / sigma)
        rows = 2 * max(1, round(shape[0] * EDGE_FRACTION))
        n.append(2 * COILS * rows * int((mask != 0).sum()))
    return np.array(r), np.array(n)


def tolerances(n: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-slice and mean (bias) tolerances from the MAD estimator's relative sd ``1.167/√N``."""
    sd = 1.167 / np.sqrt(n)
    return LEAK + 4 * sd, float(LEAK + 4 * np.sqrt(np.mean(sd**2) / len(n)))


CASES = [(shape, mt, r, snr) for shape in SIZES for mt, r in MASKS for snr in (10.0, 100.0, 1000.0)]
# The cases the estimator fails, with what it gives on this file's images (σ̂/σ: mean ± sd over the 8 slices
# [min, max]).  High SNR: the anatomy left in the outer readout rows (edges, texture) is above the noise there.
# 64 x 64 at SNR 100: a coarse grid puts more of each edge's energy in those rows, and most sampled columns are
# the ACS (5 of ~8 at 8x, 5 of 16 at 4x), whose outer rows hold the most signal.
FAILING = {
    ((64, 64), "equispaced", 100.0): "1.08 ± 0.07 [1.01, 1.22]",
    ((64, 64), "random", 100.0): "1.14 ± 0.12 [1.01, 1.41]",
    ((64, 64), "equispaced", 1000.0): "3.08 ± 0.71 [2.03, 4.02]",
    ((64, 64), "random", 1000.0): "3.82 ± 1.42 [2.02, 6.33]",
    ((128, 96), "equispaced", 1000.0): "2.16 ± 0.36 [1.58, 2.65]",
    ((128, 96), "random", 1000.0): "2.52 ± 0.65 [1.57, 3.45]",
}


def _param(case):
    shape, mt, r, snr = case
    known = FAILING.get((shape, mt, snr))
    marks = [pytest.mark.xfail(strict=True, reason=(
        f"estimate_sigma_y reads anatomy in the outer readout rows as noise: sigma_hat/sigma = {known} "
        "(issue 13 item 8; a fix changes every slice's likelihood weight and the tuned DDS settings: "
        "the lead's call)"))] if known else []
    return pytest.param(shape, mt, r, snr, marks=marks, id=f"{shape[0]}x{shape[1]}-{mt}{r:g}x-snr{snr:g}")


@pytest.mark.parametrize("shape,mask_type,accel,snr", [_param(c) for c in CASES])
def test_sigma_y_estimate_matches_the_simulated_noise(shape, mask_type, accel, snr):
    r, n = ratios(shape, mask_type, accel, snr)
    per_slice, bias = tolerances(n)
    assert np.all(np.abs(r - 1) <= per_slice), f"sigma_hat/sigma {np.round(r, 3)} beyond {np.round(per_slice, 3)}"
    assert abs(r.mean() - 1) <= bias, f"mean sigma_hat/sigma {r.mean():.3f} beyond 1 ± {bias:.3f}"


def test_sigma_y_estimate_of_pure_noise_has_the_mad_statistics():
    """The tolerance's premise: on noise alone the estimator is unbiased with relative sd ≈ 1.167/√N."""
    gen = torch.Generator().manual_seed(0)
    h, w, sigma = 64, 64, 0.3
    mask = torch.zeros(w)
    mask[::4] = 1
    est = []
    for _ in range(200):
        noise = sigma / 2**0.5 * torch.complex(torch.randn(COILS, h, w, generator=gen),
                                               torch.randn(COILS, h, w, generator=gen))
        est.append(estimate_sigma_y(noise * mask, mask) / sigma)
    est = np.array(est)
    n = 2 * COILS * 2 * round(h * EDGE_FRACTION) * int(mask.sum())
    sd = 1.167 / np.sqrt(n)
    assert abs(est.mean() - 1) < 4 * sd / np.sqrt(len(est))  # unbiased
    assert 0.8 * sd < est.std(ddof=1) < 1.25 * sd  # the sd the tolerances assume
