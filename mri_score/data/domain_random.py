"""Domain-randomised complex MR-like 2-D slices (SynthSeg-style), generated on the fly.

Every slice is a **label map** rendered with **random** tissue intensities, so the
prior learns edges, textures and fine structure of anatomy rather than any one
sequence.  Nothing is held in memory but the (uint8) template volume of the brain
family; slices are drawn as they are needed.

Generative model of one slice (every draw from the ``numpy.random.Generator`` given):

1. **Geometry.**  Output matrix ``(H, W)``; pixel size drawn log-uniformly in
   ``pixel_mm`` (default 0.5–3 mm, so the field of view ``H · pixel`` ranges from a
   zoomed-in part of a structure to a whole head or trunk).  The label map is built on
   a grid **twice as fine** (``2H × 2W``, pixel ``pixel/2``).
2. **Label map** (``family``):

   * ``brain``: the ICBM152 2009 grey-matter / white-matter / brain-mask maps
     (``nilearn``), CSF = mask − GM − WM, and the signed distance (mm) to the brain
     surface.  A plane is cut at a random centre (a random brain voxel ± 8 mm) in a
     random orientation (axial / coronal / sagittal tilted by up to ±25°, in-plane
     rotation ±30°, or any rotation with probability 0.3), through a random **affine**
     (scale 0.7–1.4 per axis, shear ±0.15) and two smooth random **displacement fields**
     on the plane: a large one (3-D displacements, correlation 25–60 mm, standard
     deviation up to 0.25 × the correlation length, i.e. up to ~15 mm) and a fine
     "folding" one (3–8 mm, std ≤ 0.2 × correlation) that folds the cortical ribbon
     like extra sulci.  Because the deformations are drawn per slice on the plane, no
     slice is left-right symmetric although the template is.  Labels: CSF (argmax of
     the three probabilities), ventricles (CSF deeper than 8–14 mm), cortical / deep
     GM (GM deeper than 14–22 mm), WM, extra sulci (p = 0.6: thin CSF curves, the zero
     set of a random field, through the cortical ribbon, whose sulci the
     population-average template blurs), WM lesions (random blobs, p = 0.35), and
     shells outside the brain at distances that vary smoothly around the head: CSF
     rim, inner table, diploe (marrow, with a trabecular lattice of skull label),
     outer table, galea, scalp fat and skin.
   * ``body``: a procedural trunk cross-section (outline of
     :func:`mri_score.data.body._contour_radius`, 220–400 mm wide before the affine):
     skin, subcutaneous fat (thickness varying around the contour), a muscle wall
     split by fascia (the Voronoi model of
     :func:`mri_score.data.body._voronoi_fascia`), visceral fat, a
     vertebra (cortical shell, marrow, trabecular lattice), spinal canal, paraspinal
     muscles, a liver / spleen-like organ, kidneys with sinus fat, bowel loops (wall,
     fluid or air), aorta and IVC, sometimes a fluid collection.
   * ``joint``: a knee-like joint along its long axis (p = 0.7): two bone ends (shaft
     widening to a condylar / plateau end, cortical shell thinning to a subchondral
     plate, marrow with a trabecular lattice denser near the joint, sometimes a physeal
     scar, patella, fibula head), articular cartilage on both ends, synovial fluid in
     the joint space and recesses, menisci and ligaments / tendons (dark bands), fat
     pads, muscle with fascia, a popliteal vessel; or (p = 0.3) a limb cross-section
     with one or two bones, a cartilage rim, fluid, tendons and vessels.

   The procedural families are drawn in anatomy coordinates that are themselves
   mapped through a random rotation, affine (scale 0.7–1.4, shear ±0.15) and large
   smooth displacement field (correlation 30–80 mm, std ≤ 0.12 × correlation).  Fine per-pixel structure is added to every family:
   **vessels** (the zero set of a Gaussian random field gated by a smooth mask:
   curvilinear lines 0.5–2 px wide, rendered with their own random intensity, i.e.
   bright or dark) and **trabecular bone** (the zero set of a fine random field inside
   marrow).
3. **Rendering.**  Each label ``k`` gets a mean ``μ_k ~ U(0, 1)`` (any ordering,
   contrast-agnostic; for half the slices the labels that are dark on every sequence —
   cortical and trabecular bone, air, tendon — are drawn from ``U(0, 0.12)``), and a multiplicative
   texture ``1 + a_k Σ_j w_kj G_j`` from three Gaussian random fields ``G_j`` of random
   correlation lengths (fine 0.5–1.5, medium 2–6, coarse 8–32 fine-grid pixels; the
   medium one anisotropic with probability 0.5), ``a_k ~ U(0, 0.25)`` (the fine field's weight
   halved; ``a_k = 0`` for 15 % of the labels).  With probability
   0.25 each label also gets a phase offset (±0.5 rad: chemical-shift-like phase).
   The fine grid is averaged over 2×2 blocks (**partial volume** at every edge), then
   multiplied by a smooth **bias field** ``exp(b · s)`` (``b ≤ 0.5``) and a smooth
   **phase** (constant, linear ramp up to ±2 rad and a smooth field up to ±π).
   In k-space (orthonormal FFT): a Gaussian **PSF** of width ``σ = 1.5 · U^1.5`` px
   (0–1.5 px, anisotropic up to ×1.5), with probability 0.3 a **truncation** of k-space to
   60–100 % per axis (Gibbs ringing), and complex white Gaussian **noise** of standard
   deviation log-uniform in 0.2–3 % of the 99th-percentile magnitude (none with
   probability 0.1).  Finally the image is divided by its 99th-percentile magnitude.

Held-out evaluation
-------------------
Two mechanisms, usable together:

* ``held_out_family``: the pool never draws that family (it is removed from
  ``families`` before any draw), so an instrument can test on anatomy the training
  generator never produced (:meth:`DomainRandomPool.held_out_pool`).
  What stays shared is the renderer and the generic fine structure (textures, vessels,
  trabeculae, fat / muscle / skin layers): a held-out family's *geometry* (label
  layout) is unseen, not every tissue pattern in it.
* ``split``: ``"train"`` and ``"test"`` draw from different ``numpy`` seed streams
  (``default_rng([seed, 0 or 1, e])`` for batches, ``[seed, 10 or 11, index]`` for
  :meth:`DomainRandomPool.generate`), so no test slice repeats a training slice's draws
  (deformation, anatomy, contrast).  The brain family always reads the same
  (symmetric) template: brain test slices are *new deformations and contrasts of the
  same template*, not new brains; hold out ``brain`` entirely to test on an unseen
  brain anatomy.

Output scale
------------
:func:`render_slice` returns complex64 with magnitude roughly in ``[0, 1]`` (99th
percentile 1), as the other corpora.  :meth:`DomainRandomPool.batch` divides each
rendered slice by :func:`mri_score.scaling.image_scale` (ACS centre fraction
:data:`~mri_score.scaling.TRAIN_CENTER_FRACTION`) exactly as
:class:`mri_score.data.datasets.SlicePool` does, then crops, flips and conjugates
at random, and returns ``(B, 2, H, W)`` float32 (real, imaginary).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.fft as sfft
import torch
from scipy import ndimage

from mri_score.data.body import _blob, _contour_radius
from mri_score.data.corpus import _ORIENTATIONS, ANATOMIES, CONTRASTS, _rotation, mni152_maps
from mri_score.data.datasets import augmented_crop
from mri_score.errors import InputError
from mri_score.scaling import TRAIN_CENTER_FRACTION, image_scale

#: Anatomy families of the generator.
FAMILIES = ("brain", "body", "joint")
#: Label names per family: the label map of a slice holds indices into its family's tuple.
LABELS: dict[str, tuple[str, ...]] = {
    "brain": ("background", "csf", "ventricle", "cortical_gm", "deep_gm", "wm", "lesion", "vessel",
              "skull", "diploe", "scalp_fat", "scalp"),
    "body": ("background", "skin", "fat", "muscle", "cortex", "marrow", "trabecular", "fluid", "organ",
             "kidney", "bowel_wall", "air", "vessel"),
    "joint": ("background", "skin", "fat", "muscle", "cortex", "marrow", "trabecular", "cartilage",
              "synovial_fluid", "ligament", "vessel"),
}
#: The conditional prior's anatomy label (:data:`mri_score.data.corpus.ANATOMIES`) of each family.
ANATOMY_OF_FAMILY = {"brain": "brain", "body": "body", "joint": "limb"}
#: Seed stream of each split.
SPLITS = {"train": 0, "test": 1}
#: Labels that are dark on every common sequence (drawn dark for half of the slices).
_DARK = {"brain": ("skull",), "body": ("cortex", "air", "trabecular"), "joint": ("cortex", "ligament", "trabecular")}
#: Least margin (voxels = mm) around the brain in its volume, and the signed-distance quantisation range (mm).
_PAD = 42
_SD_RANGE = (-24.0, 39.75)


# ----------------------------------------------------------------------------------------------------------------
# random fields
# ----------------------------------------------------------------------------------------------------------------


def _basis(n: int, spacing_px: float) -> np.ndarray:
    """``(n, g)`` float32 Gaussian bumps every ``spacing_px`` pixels, each row of unit L2 norm."""
    spacing_px = max(float(spacing_px), 1.0)
    g = int(np.ceil(n / spacing_px)) + 4
    centres = (n - 1) / 2 + (np.arange(g) - (g - 1) / 2) * spacing_px
    b = np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None, :]) / (0.75 * spacing_px)) ** 2)
    return (b / np.sqrt((b**2).sum(1, keepdims=True))).astype(np.float32)


def smooth_fields(rng: np.random.Generator, shape: tuple[int, int], spacing_px: float, channels: int = 1) -> np.ndarray:
    """Smooth zero-mean unit-variance random fields: a Gaussian-bump basis with normal weights.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : (int, int)
        ``(H, W)``.
    spacing_px : float
        Bump spacing in pixels (≈ the correlation length).
    channels : int
        Number of independent fields.

    Returns
    -------
    numpy.ndarray
        float32 ``(channels, H, W)``.
    """
    bh, bw = _basis(shape[0], spacing_px), _basis(shape[1], spacing_px)
    g = rng.standard_normal((channels, bh.shape[1], bw.shape[1])).astype(np.float32)
    return bh @ g @ bw.T


def gaussian_random_fields(rng: np.random.Generator, shape: tuple[int, int],
                           widths: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """Periodic Gaussian random fields: white noise filtered by (anisotropic) Gaussians in k-space.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : (int, int)
        ``(H, W)``.
    widths : sequence of (float, float, float)
        Per field ``(σ_u, σ_v, angle)``: Gaussian kernel widths (pixels) along two axes rotated
        by ``angle`` (radians).

    Returns
    -------
    numpy.ndarray
        float32 ``(len(widths), H, W)``, each of zero mean and unit standard deviation.
    """
    h, w = shape
    white = rng.standard_normal((len(widths), h, w), dtype=np.float32)
    spec = sfft.rfft2(white, axes=(-2, -1), workers=1)
    fy = sfft.fftfreq(h).astype(np.float32)[:, None]
    fx = sfft.rfftfreq(w).astype(np.float32)[None, :]
    for i, (su, sv, ang) in enumerate(widths):
        c, s = np.float32(np.cos(ang)), np.float32(np.sin(ang))
        u, v = fy * c + fx * s, -fy * s + fx * c
        spec[i] *= np.exp(np.float32(-2 * np.pi**2) * (su**2 * u**2 + sv**2 * v**2))
    out = sfft.irfft2(spec, s=(h, w), axes=(-2, -1), workers=1)
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= np.maximum(out.std(axis=(1, 2), keepdims=True), 1e-8)
    return out.astype(np.float32, copy=False)


def _zero_set(g: np.ndarray, width_px: float) -> np.ndarray:
    """Pixels within ``width_px / 2`` of the zero set of a smooth field: curvilinear lines (bool)."""
    gy, gx = np.gradient(g)
    return np.abs(g) < (0.5 * width_px) * np.hypot(gy, gx)


def _vessels(rng: np.random.Generator, shape: tuple[int, int], rp: float) -> np.ndarray:
    """Random thin curvilinear structures (bool ``(H, W)``) on a grid of pixel ``rp`` mm."""
    corr_px = float(np.clip(rng.uniform(4.0, 15.0) / rp, 3.0, 40.0))  # meander scale (mm → px)
    g = gaussian_random_fields(rng, shape, [(corr_px, corr_px * rng.uniform(1.0, 3.0), rng.uniform(0, np.pi))])[0]
    width = float(np.clip(rng.uniform(0.3, 2.0) / rp, 1.0, 4.0))
    lines = _zero_set(g, width)
    gate = smooth_fields(rng, shape, max(shape) / rng.uniform(3.0, 8.0))[0]
    return lines & (gate > rng.uniform(0.5, 1.8))


def _trabeculae(rng: np.random.Generator, shape: tuple[int, int], rp: float) -> np.ndarray:
    """A trabecular-bone-like lattice (bool ``(H, W)``): the zero set of a fine random field."""
    spacing_px = max(rng.uniform(0.8, 2.5) / rp, 2.0)
    g = gaussian_random_fields(rng, shape, [(spacing_px / 2.5, spacing_px / 2.5 * rng.uniform(0.5, 1.0),
                                             rng.uniform(0, np.pi))])[0]
    return _zero_set(g, max(rng.uniform(0.1, 0.25) / rp, 1.0))


# ----------------------------------------------------------------------------------------------------------------
# brain family: the ICBM152 maps as a compact uint8 volume
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def brain_volume() -> tuple[np.ndarray, np.ndarray]:
    """The brain family's template: uint8 channels and the voxels slice centres are drawn from.

    Built once per process (about 5 s) from the ``nilearn`` ICBM152 2009 maps; a forked worker shares it.

    Returns
    -------
    vol : numpy.ndarray
        uint8 ``(X, Y, Z, 4)`` on the 1 mm template grid, padded so that every brain voxel has at least
        42 mm of margin: GM, WM and the brain mask (probabilities × 255; the mask smoothed by a 0.8 mm
        Gaussian), and the signed distance to the brain surface (mm, > 0 outside; computed on a 2 mm grid and
        trilinearly upsampled) quantised as ``(sd + 24) · 4``, i.e. clipped to ``[-24, 39.75]`` mm.
    centres : numpy.ndarray
        float32 ``(M, 3)`` voxel coordinates of a subsample of the brain-mask voxels.
    """
    gm, wm, mask = mni152_maps(("gm", "wm", "mask"), "the domain-randomised brain family")
    where = np.argwhere(mask > 0.5)
    lo, hi = where.min(0), where.max(0)
    pad = [(max(0, _PAD - int(lo[a])), max(0, _PAD - (mask.shape[a] - 1 - int(hi[a])))) for a in range(3)]
    pad = [(a, b + (mask.shape[ax] + a + b) % 2) for ax, (a, b) in enumerate(pad)]  # even sizes (2 mm grid below)
    gm, wm, mask = (np.pad(a, pad) for a in (gm, wm, mask))
    mask = ndimage.gaussian_filter(mask, 0.8, truncate=3.0)
    inside = mask >= 0.5
    X, Y, Z = mask.shape
    coarse = inside.reshape(X // 2, 2, Y // 2, 2, Z // 2, 2).mean(axis=(1, 3, 5)) >= 0.5
    sd2 = np.where(coarse, 1.0 - ndimage.distance_transform_edt(coarse, sampling=2.0),
                   ndimage.distance_transform_edt(~coarse, sampling=2.0) - 1.0).astype(np.float32)
    sd = ndimage.zoom(sd2, 2, order=1, mode="nearest", grid_mode=True)
    vol = np.empty(mask.shape + (4,), dtype=np.uint8)
    for c, a in enumerate((gm, wm, mask)):
        vol[..., c] = np.clip(np.round(a * 255), 0, 255)
    vol[..., 3] = np.clip(np.round((sd - _SD_RANGE[0]) * 4), 0, 255)
    centres = np.argwhere(inside)[::97].astype(np.float32)
    return vol, centres


def _trilinear(vol: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Trilinear samples of a uint8 ``(X, Y, Z, 4)`` volume at points ``(3, N)`` (clamped): ``(N, 4)`` float32."""
    shape = vol.shape[:3]
    idx, frac = [], []
    for a in range(3):
        p = np.clip(pts[a], 0.0, shape[a] - 1.001).astype(np.float32)
        i = p.astype(np.intp)  # p >= 0: truncation is floor
        idx.append(i)
        frac.append(p - i)
    sy, sx = shape[2], shape[1] * shape[2]
    base = idx[0] * sx + idx[1] * sy + idx[2]
    flat = vol.reshape(-1, 4).view(np.uint32)[:, 0]  # one 4-byte gather per corner
    out = np.zeros((pts.shape[1], 4), dtype=np.float32)
    n = pts.shape[1]
    for dx in (0, 1):
        wx = frac[0] if dx else 1 - frac[0]
        for dy in (0, 1):
            wxy = wx * (frac[1] if dy else 1 - frac[1])
            for dz in (0, 1):
                w = wxy * (frac[2] if dz else 1 - frac[2])
                out += w[:, None] * flat[base + (dx * sx + dy * sy + dz)].view(np.uint8).reshape(n, 4)
    return out


def _brain_labels(rng: np.random.Generator, shape: tuple[int, int], rp: float) -> np.ndarray:
    """Brain label map (int8 ``(H, W)``, :data:`LABELS` ``["brain"]``) on a grid of pixel ``rp`` mm."""
    vol, centres = brain_volume()
    h, w = shape
    if rng.random() < 0.3:  # any orientation
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        u, v = q[:, 0], q[:, 1]
    else:
        normal_ax, row_ax, row_sign, col_ax = _ORIENTATIONS[("axial", "coronal", "sagittal")[rng.integers(3)]]
        rot = _rotation(rng, 25.0, 30.0)
        u, v = np.zeros(3), np.zeros(3)
        u[row_ax], v[col_ax] = row_sign, 1.0
        u, v = rot @ u, rot @ v
    rows = ((np.arange(h) - h / 2 + 0.5) * rp).astype(np.float32)
    cols = ((np.arange(w) - w / 2 + 0.5) * rp).astype(np.float32)
    p = u[:, None, None] * rows[None, :, None] + v[:, None, None] * cols[None, None, :]  # (3, H, W) mm
    big = rng.uniform(25.0, 60.0)
    p += rng.uniform(0.0, 0.25) * big * smooth_fields(rng, shape, big / rp, 3)
    if rng.random() < 0.7:  # sulcal-like folding
        fold = rng.uniform(3.0, 8.0)
        p += rng.uniform(0.05, 0.2) * fold * smooth_fields(rng, shape, fold / rp, 3)
    aff = np.diag(rng.uniform(0.7, 1.4, 3)) @ (np.eye(3) + rng.uniform(-0.15, 0.15, (3, 3)) * (1 - np.eye(3)))
    centre = centres[rng.integers(len(centres))] + rng.normal(0.0, 8.0, 3)
    pts = centre[:, None] + np.linalg.inv(aff) @ p.reshape(3, -1)
    gm, wm, mask, q8 = _trilinear(vol, pts).T
    gm, wm, mask = gm / 255, wm / 255, mask / 255
    sd = (q8 / 4 + _SD_RANGE[0]).reshape(shape)
    csf = np.clip(mask - gm - wm, 0.0, None)
    L = LABELS["brain"]
    tissue = np.array([L.index("csf"), L.index("cortical_gm"), L.index("wm")], dtype=np.int8)
    lab = tissue[np.argmax(np.stack([csf, gm, wm]), axis=0)].reshape(shape)
    inside = (mask >= 0.5).reshape(shape)
    depth = -sd
    lab[(lab == L.index("csf")) & (depth > rng.uniform(8.0, 14.0))] = L.index("ventricle")
    lab[(lab == L.index("cortical_gm")) & (depth > rng.uniform(14.0, 22.0))] = L.index("deep_gm")
    if rng.random() < 0.6:  # extra sulci: thin CSF curves through the cortical ribbon
        c = float(np.clip(rng.uniform(3.0, 8.0) / rp, 2.0, 40.0))
        field = gaussian_random_fields(rng, shape, [(c, c * rng.uniform(1.0, 2.0), rng.uniform(0, np.pi))])[0]
        sulci = _zero_set(field, float(np.clip(rng.uniform(0.3, 1.2) / rp, 0.8, 6.0)))
        lab[sulci & (lab == L.index("cortical_gm"))] = L.index("csf")
    if rng.random() < 0.35:  # white-matter lesions
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) * rp
        for _ in range(int(rng.integers(1, 7))):
            r = rng.uniform(1.5, 8.0)
            blob = _wblob(xx, yy, rng, rng.uniform(0, w * rp), rng.uniform(0, h * rp), r, r * rng.uniform(0.4, 1.0), 0.2)
            lab[(blob > 0) & (lab == L.index("wm"))] = L.index("lesion")
    # shells outside the brain, thicknesses varying smoothly around the head
    mod = np.clip(1.0 + 0.2 * smooth_fields(rng, shape, 40.0 / rp)[0], 0.7, 1.35)  # outermost edge <= 37 mm
    edges = np.cumsum([rng.uniform(1.0, 4.0), rng.uniform(0.8, 2.0), rng.uniform(1.0, 5.0), rng.uniform(0.8, 2.5),
                       rng.uniform(0.5, 2.0), rng.uniform(2.0, 9.0), rng.uniform(1.0, 3.0)])
    names = ("csf", "skull", "diploe", "skull", "scalp", "scalp_fat", "scalp")
    out = np.zeros(shape, dtype=np.int8)
    for e, name in zip(edges[::-1], names[::-1]):  # outermost first, inner shells paint over
        out[sd < e * mod] = L.index(name)
    out[inside] = lab[inside]
    diploe = out == L.index("diploe")
    if diploe.any():
        out[diploe & _trabeculae(rng, shape, rp)] = L.index("skull")
    if rng.random() < 0.8:
        host = np.isin(out, [L.index(n) for n in ("csf", "cortical_gm", "deep_gm", "wm", "scalp_fat", "scalp")])
        out[host & _vessels(rng, shape, rp)] = L.index("vessel")
    return out


# ----------------------------------------------------------------------------------------------------------------
# procedural families
# ----------------------------------------------------------------------------------------------------------------


def _anatomy_grid(rng: np.random.Generator, shape: tuple[int, int], rp: float, centre: tuple[float, float],
                  upright: float) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy coordinates (mm) of the fine grid: random rotation, affine and large smooth displacement.

    ``centre`` is the anatomy point at the centre of the field of view; with probability
    ``upright`` the rotation stays within ±25°, otherwise it is uniform.
    """
    h, w = shape
    y, x = np.meshgrid(((np.arange(h) - h / 2 + 0.5) * rp).astype(np.float32),
                       ((np.arange(w) - w / 2 + 0.5) * rp).astype(np.float32), indexing="ij")
    ang = np.deg2rad(rng.uniform(-25, 25)) if rng.random() < upright else rng.uniform(-np.pi, np.pi)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    aff = np.diag(rng.uniform(0.7, 1.4, 2)) @ np.array([[1.0, rng.uniform(-0.15, 0.15)], [rng.uniform(-0.15, 0.15), 1.0]])
    m = (np.linalg.inv(aff) @ rot).astype(np.float32)
    xa = m[0, 0] * x + m[0, 1] * y + np.float32(centre[0])
    ya = m[1, 0] * x + m[1, 1] * y + np.float32(centre[1])
    big = rng.uniform(30.0, 80.0)
    disp = rng.uniform(0.0, 0.12) * big * smooth_fields(rng, shape, big / rp, 2)
    return xa + disp[0], ya + disp[1]


def _inside_point(rng: np.random.Generator, rx: float, ry: float, frac: float = 0.85) -> tuple[float, float]:
    """A uniform random point inside the ellipse of half-axes ``frac · (rx, ry)``."""
    r, t = np.sqrt(rng.random()) * frac, rng.uniform(0, 2 * np.pi)
    return float(r * rx * np.cos(t)), float(r * ry * np.sin(t))


def _window(x: np.ndarray, y: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
    """The smallest block of grid rows/columns holding every point with ``x0 < x < x1`` and ``y0 < y < y1``."""
    m = (x > x0) & (x < x1) & (y > y0) & (y < y1)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _wblob(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float,
           wobble: float = 0.15, margin: float = 10.0) -> np.ndarray:
    """:func:`mri_score.data.body._blob` (signed distance-like, mm, > 0 inside) evaluated only near the blob.

    Outside a square of half-side ``max(rx, ry) · (1 + 1.5 · wobble) + margin`` mm around the centre the
    value is ``-1e6``; the random draws are those of ``_blob``.
    """
    reach = max(rx, ry) * (1 + 1.5 * wobble) + margin
    win = _window(x, y, cx - reach, cx + reach, cy - reach, cy + reach)
    out = np.full(x.shape, -1e6, dtype=np.float32)
    out[win] = _blob(x[win], y[win], rng, cx, cy, rx, ry, wobble)
    return out


def _fascia(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n: int, extent: float) -> np.ndarray:
    """Distance (mm) to the nearest Voronoi edge of ``n`` random seeds (small on fascia lines).

    The model (and draws) of :func:`mri_score.data.body._voronoi_fascia`, with a running two-smallest
    update instead of a sort over all seeds (about 4× faster).
    """
    seeds = rng.uniform(-extent, extent, size=(n, 2))
    m1 = np.full(x.shape, np.inf, dtype=np.float32)
    m2 = m1.copy()
    for sx, sy in seeds:
        d = np.hypot(x - np.float32(sx), y - np.float32(sy))
        np.minimum(m2, np.maximum(m1, d), out=m2)
        np.minimum(m1, d, out=m1)
    return (m2 - m1) / 2


def _disc(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return r - np.hypot(x - cx, y - cy)


def _body_labels(rng: np.random.Generator, shape: tuple[int, int], rp: float) -> np.ndarray:
    """Trunk cross-section label map (int8 ``(H, W)``, :data:`LABELS` ``["body"]``)."""
    L = {n: i for i, n in enumerate(LABELS["body"])}
    W = rng.uniform(110, 200)
    Hh = W * rng.uniform(0.55, 0.85)
    x, y = _anatomy_grid(rng, shape, rp, _inside_point(rng, W, Hh), upright=0.7)
    theta = np.arctan2(y / Hh, x / W)
    outer = (_contour_radius(rng, theta, 0.12) - np.hypot(x / W, y / Hh)) * min(W, Hh)
    skin_t = rng.uniform(1.0, 3.0)
    fat_t = np.clip(rng.uniform(0.03, 0.15) * W * (1 + 0.5 * smooth_fields(rng, shape, 60.0 / rp)[0]), 2.0, None)
    wall = skin_t + fat_t
    cavity = wall + rng.uniform(5.0, 20.0)
    lab = np.zeros(shape, dtype=np.int8)
    lab[outer > 0] = L["skin"]
    lab[outer > skin_t] = L["fat"]
    inner = outer > wall
    lab[inner] = L["muscle"]
    fascia = _fascia(x, y, rng, int(rng.integers(4, 12)), W)
    lab[inner & (fascia < rng.uniform(0.4, 1.5))] = L["fat"]
    lab[outer > cavity] = L["fat"]  # visceral fat between the organs

    def paint(sd: np.ndarray, name: str) -> None:
        lab[(sd > 0) & inner] = L[name]

    sx, sy = rng.uniform(-0.05, 0.05) * W, Hh * rng.uniform(0.4, 0.6)  # spine, posterior (+y)
    vr = rng.uniform(15, 25)
    for sgn in (-1.0, 1.0):  # paraspinal muscles
        paint(_wblob(x, y, rng, sx + sgn * rng.uniform(25, 40), sy + rng.uniform(5, 20), rng.uniform(20, 30),
                    rng.uniform(15, 25), 0.1), "muscle")
    vert = _wblob(x, y, rng, sx, sy - 0.3 * vr, vr, vr * 0.8, 0.05)
    paint(vert, "cortex")
    marrow = vert - rng.uniform(1.0, 3.0)
    paint(marrow, "marrow")
    lab[(marrow > 0) & inner & _trabeculae(rng, shape, rp)] = L["trabecular"]
    paint(_band(rng, x, y, (sx, sy + vr), (sx + rng.uniform(-8, 8), sy + vr + rng.uniform(25, 45)), rng.uniform(4, 9)),
          "cortex")  # spinous process
    paint(_disc(x, y, sx, sy + 0.9 * vr, rng.uniform(5, 9)), "fluid")
    side = rng.choice([-1.0, 1.0])
    if rng.random() < 0.7:  # liver-like organ
        paint(_wblob(x, y, rng, side * W * rng.uniform(0.3, 0.5), -Hh * rng.uniform(0.0, 0.3), W * 0.45, Hh * 0.55, 0.2),
              "organ")
    if rng.random() < 0.5:  # spleen-like organ on the other side
        paint(_wblob(x, y, rng, -side * W * rng.uniform(0.45, 0.6), Hh * rng.uniform(-0.1, 0.2), W * 0.15, Hh * 0.25, 0.2),
              "organ")
    if rng.random() < 0.7:  # kidneys
        for sgn in (-1.0, 1.0):
            kid = _wblob(x, y, rng, sx + sgn * rng.uniform(45, 75), sy - rng.uniform(0, 25), rng.uniform(20, 30),
                        rng.uniform(30, 45), 0.1)
            paint(kid, "kidney")
            paint(kid - rng.uniform(6, 12), "fat")
    for _ in range(int(rng.integers(3, 12))):  # bowel loops
        br = rng.uniform(8, 25)
        loop = _wblob(x, y, rng, rng.uniform(-0.6, 0.6) * W, rng.uniform(-0.6, 0.3) * Hh, br, br * rng.uniform(0.6, 1.0), 0.2)
        paint(loop, "bowel_wall")
        paint(loop - rng.uniform(1.0, 3.0), "fluid" if rng.random() < 0.6 else "air")
    ay = sy - vr * rng.uniform(1.3, 1.8)
    paint(_disc(x, y, sx + rng.uniform(-25, -5), ay, rng.uniform(8, 14)), "vessel")  # aorta
    paint(_wblob(x, y, rng, sx + rng.uniform(10, 35), ay, rng.uniform(8, 14), rng.uniform(5, 10), 0.1), "vessel")  # IVC
    if rng.random() < 0.2:  # fluid collection
        paint(_wblob(x, y, rng, *_inside_point(rng, W, Hh, 0.6), rng.uniform(15, 50), rng.uniform(10, 35), 0.2), "fluid")
    host = np.isin(lab, [L["fat"], L["muscle"], L["organ"]])
    lab[host & _vessels(rng, shape, rp)] = L["vessel"]
    return lab


def _polyline_distance(x: np.ndarray, y: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance (mm) from every grid point to the polyline ``pts`` ``(n, 2)``."""
    d = np.full(x.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
        d = np.minimum(d, np.hypot(x - (x0 + t * dx), y - (y0 + t * dy)))
    return d


def _band(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
          width: float) -> np.ndarray:
    """Signed distance (mm, > 0 inside) of a slightly curved band of ``width`` mm from ``p0`` to ``p1``."""
    a, b = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    normal = np.array([-(b - a)[1], (b - a)[0]])
    ctrl = (a + b) / 2 + normal * rng.uniform(-0.25, 0.25)
    t = np.linspace(0, 1, 7)[:, None]
    pts = (1 - t) ** 2 * a + 2 * t * (1 - t) * ctrl + t**2 * b
    lo, hi = pts.min(0) - width, pts.max(0) + width
    win = _window(x, y, lo[0], hi[0], lo[1], hi[1])
    out = np.full(x.shape, -1e6, dtype=np.float32)
    out[win] = width / 2 - _polyline_distance(x[win], y[win], pts)
    return out


def _limb_layers(rng: np.random.Generator, lab: np.ndarray, outline: np.ndarray, x: np.ndarray, y: np.ndarray, rp: float,
                 lw: float, seeds_below: int) -> tuple[np.ndarray, float]:
    """Paint a limb's wall into the joint label map ``lab`` inside ``outline`` (mm, > 0 inside): skin, fat of
    smoothly varying thickness, then muscle split by fat along fascia (Voronoi edges of 4 to ``seeds_below - 1``
    seeds within ``lw``).  Returns the muscle region and the skin thickness (mm)."""
    L = {n: i for i, n in enumerate(LABELS["joint"])}
    skin_t = rng.uniform(1.0, 2.5)
    fat_t = np.clip(rng.uniform(3, 20) * (1 + 0.4 * smooth_fields(rng, lab.shape, 50.0 / rp)[0]), 1.5, None)
    lab[outline > 0] = L["skin"]
    lab[outline > skin_t] = L["fat"]
    inner = outline > skin_t + fat_t
    lab[inner] = L["muscle"]
    lab[inner & (_fascia(x, y, rng, int(rng.integers(4, seeds_below)), lw) < rng.uniform(0.4, 1.2))] = L["fat"]
    return inner, skin_t


def _joint_labels(rng: np.random.Generator, shape: tuple[int, int], rp: float) -> np.ndarray:
    """Joint label map (int8 ``(H, W)``, :data:`LABELS` ``["joint"]``): knee-like long axis or limb cross-section."""
    L = {n: i for i, n in enumerate(LABELS["joint"])}
    lab = np.zeros(shape, dtype=np.int8)
    wa = rng.uniform(25, 45)  # half-width of the upper bone end (mm)
    margin = rng.uniform(15, 50)
    lw = wa + margin
    trabec = _trabeculae(rng, shape, rp)
    if rng.random() < 0.7:
        x, y = _anatomy_grid(rng, shape, rp, _inside_point(rng, lw, 1.5 * lw, 0.7), upright=0.6)
        # limb outline: a wobbly tube along y
        limb = lw * (1 + 0.08 * np.sin(y / rng.uniform(30, 80) + rng.uniform(0, 6))) - np.abs(x - rng.uniform(-5, 5))
        inner, skin_t = _limb_layers(rng, lab, limb, x, y, rp, lw, 10)
        gap = rng.uniform(3.0, 9.0)
        wb = wa * rng.uniform(0.85, 1.1)
        xa_, xb_ = rng.uniform(-5, 5), rng.uniform(-5, 5)
        # upper bone: shaft widening to a condylar end; lower bone: a plateau with spines
        sha, shb = wa * rng.uniform(0.45, 0.65), wb * rng.uniform(0.45, 0.7)
        la, lb = rng.uniform(20, 50), rng.uniform(20, 50)
        ua = np.clip((x - xa_) / wa, -1.2, 1.2)
        ub = np.clip((x - xb_) / wb, -1.2, 1.2)
        notch = rng.uniform(0, 8) * np.exp(-((x - xa_) / rng.uniform(5, 12)) ** 2)
        end_a = -gap / 2 - rng.uniform(0.3, 1.0) * wa * (1 - np.sqrt(np.clip(1 - ua**2, 0, None))) - notch
        spines = rng.uniform(0, 6) * np.exp(-((x - xb_) / rng.uniform(4, 9)) ** 2)
        end_b = gap / 2 + rng.uniform(-0.05, 0.15) * wb * ub**2 - spines
        half_a = sha + (wa - sha) * np.exp(-np.clip(end_a - y, 0, None) / la)
        half_b = shb + (wb - shb) * np.exp(-np.clip(y - end_b, 0, None) / lb)
        bone_a = np.minimum(half_a - np.abs(x - xa_), end_a - y)
        bone_b = np.minimum(half_b - np.abs(x - xb_), y - end_b)
        # joint space: synovial fluid, cartilage caps on both ends, menisci at the margins
        cth_a, cth_b = rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0)
        span = np.minimum(wa - np.abs(x - xa_), wb - np.abs(x - xb_))
        space = (y > end_a - 1) & (y < end_b + 1) & (span > -2)
        lab[space & (limb > 0)] = L["synovial_fluid"]
        if rng.random() < 0.6:  # an effusion / recess next to the joint
            side = rng.choice([-1.0, 1.0])
            lab[(_wblob(x, y, rng, side * wa * rng.uniform(0.6, 1.0), -rng.uniform(5, 40), rng.uniform(5, 25),
                       rng.uniform(3, 15), 0.2) > 0) & inner] = L["synovial_fluid"]
        lab[(y > end_a - 0.5) & (y < end_a + cth_a) & (wa * 0.95 - np.abs(x - xa_) > 0)] = L["cartilage"]
        lab[(y < end_b + 0.5) & (y > end_b - cth_b) & (wb * 0.95 - np.abs(x - xb_) > 0)] = L["cartilage"]
        for sgn in (-1.0, 1.0):  # menisci: wedges at the margins of the joint space
            edge = wb * rng.uniform(0.9, 1.05)
            depth = rng.uniform(6, 14)
            rel = sgn * (x - xb_)
            wedge = (rel > edge - depth) & (rel < edge + 2) & (y > end_a + 0.3 * cth_a) & (y < end_b - 0.3 * cth_b)
            lab[wedge & ((end_b - y) < (end_b - end_a) * (rel - edge + depth) / depth + 0.5)] = L["ligament"]
        for bone, end, sign in ((bone_a, end_a, -1.0), (bone_b, end_b, 1.0)):
            from_joint = np.clip(sign * (y - end), 0, None)
            cort = rng.uniform(0.5, 1.5) + (rng.uniform(1.5, 5.0) - 1.0) * (1 - np.exp(-from_joint / rng.uniform(15, 40)))
            lab[bone > 0] = L["cortex"]
            marrow = bone > cort
            lab[marrow] = L["marrow"]
            reach = rng.uniform(20, 80) if rng.random() < 0.7 else np.inf  # trabeculae near the joint only
            lab[marrow & trabec & (from_joint < reach)] = L["trabecular"]
            if rng.random() < 0.5:  # physeal scar
                lab[marrow & (np.abs(from_joint - rng.uniform(10, 25)) < rng.uniform(0.3, 1.0))] = L["cortex"]
        if rng.random() < 0.6:  # patella, anterior to the upper bone end
            side = rng.choice([-1.0, 1.0])
            pat = _wblob(x, y, rng, xa_ + side * (wa + rng.uniform(8, 16)), -gap - rng.uniform(5, 25), rng.uniform(6, 12),
                        rng.uniform(15, 25), 0.1)
            lab[pat > 0] = L["cortex"]
            lab[pat > rng.uniform(1.0, 2.5)] = L["marrow"]
            lab[(pat > 3.0) & trabec] = L["trabecular"]
        if rng.random() < 0.4:  # fibula head, beside the lower bone
            side = rng.choice([-1.0, 1.0])
            fib = _wblob(x, y, rng, xb_ + side * (wb + rng.uniform(2, 8)), gap / 2 + rng.uniform(10, 30), rng.uniform(6, 11),
                        rng.uniform(8, 14), 0.1)
            lab[(fib > 0) & inner] = L["cortex"]
            lab[(fib > 1.5) & inner] = L["marrow"]
        # ligaments and tendons: cruciate-like bands through the notch, collateral bands, an anterior tendon
        for _ in range(int(rng.integers(1, 5))):
            kind = rng.integers(3)
            if kind == 0:
                p0 = (xa_ + rng.uniform(-10, 10), -gap / 2 - rng.uniform(8, 20))
                p1 = (xb_ + rng.uniform(-10, 10), gap / 2 + rng.uniform(4, 12))
            elif kind == 1:
                sgn = rng.choice([-1.0, 1.0])
                p0 = (xa_ + sgn * wa * rng.uniform(0.95, 1.1), -rng.uniform(15, 40))
                p1 = (xb_ + sgn * wb * rng.uniform(0.95, 1.1), rng.uniform(15, 40))
            else:
                sgn = rng.choice([-1.0, 1.0])
                off = sgn * (wa + rng.uniform(5, 15))
                p0, p1 = (xa_ + off, -rng.uniform(5, 60)), (xb_ + off * rng.uniform(0.7, 1.0), rng.uniform(15, 60))
            lab[(_band(rng, x, y, p0, p1, rng.uniform(2.0, 7.0)) > 0) & (limb > skin_t)] = L["ligament"]
        if rng.random() < 0.6:  # fat pad under the tendon
            side = rng.choice([-1.0, 1.0])
            lab[(_wblob(x, y, rng, xb_ + side * wb * rng.uniform(0.7, 0.95), rng.uniform(-5, 10), rng.uniform(6, 14),
                       rng.uniform(8, 18), 0.25) > 0) & inner & (bone_a <= 0) & (bone_b <= 0)] = L["fat"]
        vx = -rng.choice([-1.0, 1.0]) * (wa + rng.uniform(3, 15))  # popliteal vessel
        lab[(rng.uniform(2.5, 5.0) - np.abs(x - vx - 3 * np.sin(y / rng.uniform(20, 60))) > 0) & inner] = L["vessel"]
    else:  # limb cross-section
        x, y = _anatomy_grid(rng, shape, rp, _inside_point(rng, lw, lw), upright=0.0)
        outer = _wblob(x, y, rng, 0.0, 0.0, lw, lw * rng.uniform(0.8, 1.1), 0.12)
        inner, _ = _limb_layers(rng, lab, outer, x, y, rp, lw, 12)
        for _ in range(int(rng.integers(1, 3))):
            r = rng.uniform(0.25, 0.6) * wa
            bx, by = _inside_point(rng, lw * 0.4, lw * 0.4, 1.0)
            bone = _wblob(x, y, rng, bx, by, r, r * rng.uniform(0.7, 1.0), 0.1)
            if rng.random() < 0.5:  # articular end: fluid and a cartilage rim
                lab[(bone + rng.uniform(3, 7) > 0) & inner] = L["synovial_fluid"]
                lab[(bone + rng.uniform(1.5, 3.0) > 0) & inner] = L["cartilage"]
            lab[(bone > 0) & inner] = L["cortex"]
            marrow = (bone > rng.uniform(1.0, 6.0)) & inner
            lab[marrow] = L["marrow"]
            lab[marrow & trabec] = L["trabecular"]
        for _ in range(int(rng.integers(1, 5))):  # tendons
            tx, ty = _inside_point(rng, lw * 0.8, lw * 0.8, 1.0)
            tr = rng.uniform(2, 7)
            lab[(_wblob(x, y, rng, tx, ty, tr, tr * rng.uniform(0.3, 1.0), 0.1) > 0) & inner] = L["ligament"]
        for _ in range(int(rng.integers(1, 4))):  # vessels
            vx, vy = _inside_point(rng, lw * 0.7, lw * 0.7, 1.0)
            lab[(_disc(x, y, vx, vy, rng.uniform(1.5, 5.0)) > 0) & inner] = L["vessel"]
    host = np.isin(lab, [L["fat"], L["muscle"]])
    lab[host & _vessels(rng, shape, rp)] = L["vessel"]
    return lab


_LABEL_MAKERS = {"brain": _brain_labels, "body": _body_labels, "joint": _joint_labels}


# ----------------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------------


def _majority_2x2(lab: np.ndarray) -> np.ndarray:
    """The most frequent label of each 2×2 block (ties: the first in raster order): ``(2H, 2W)`` → ``(H, W)``."""
    h, w = lab.shape[0] // 2, lab.shape[1] // 2
    sub = np.stack([lab[i::2, j::2][:h, :w] for i in (0, 1) for j in (0, 1)])
    counts = (sub[:, None] == sub[None]).sum(1)
    return np.take_along_axis(sub, counts.argmax(0)[None], 0)[0]


def render_labels(rng: np.random.Generator, lab: np.ndarray, family: str) -> np.ndarray:
    """Render a fine-grid label map into a complex MR-like image at half its resolution.

    Parameters
    ----------
    rng : numpy.random.Generator
    lab : numpy.ndarray
        Integer ``(2H, 2W)`` label map, indices into :data:`LABELS` ``[family]``.
    family : str
        One of :data:`FAMILIES` (which labels may be drawn dark).

    Returns
    -------
    numpy.ndarray
        complex64 ``(H, W)``, magnitude divided by its 99th percentile.
    """
    names = LABELS[family]
    k = len(names)
    hr, wr = lab.shape
    h, w = hr // 2, wr // 2
    mu = rng.uniform(0.0, 1.0, k)
    if rng.random() < 0.5:
        for n in _DARK[family]:
            mu[names.index(n)] = rng.uniform(0.0, 0.12)
    mu[0] = 0.0 if rng.random() < 0.85 else rng.uniform(0.0, 0.05)
    aniso = rng.random() < 0.5
    s_med = rng.uniform(2.0, 6.0)
    widths = [(rng.uniform(0.5, 1.5),) * 2 + (0.0,),
              (s_med, s_med * (rng.uniform(0.15, 0.5) if aniso else 1.0), rng.uniform(0, np.pi)),
              (rng.uniform(8.0, 32.0),) * 2 + (0.0,)]
    g = gaussian_random_fields(rng, (hr, wr), widths)
    amp = rng.uniform(0.0, 0.25, k) * (rng.random(k) < 0.85)
    coef = (amp[:, None] * rng.dirichlet(np.ones(3), k) * np.array([0.5, 1.0, 1.0])).astype(np.float32)
    tex = 1.0 + coef[lab, 0] * g[0] + coef[lab, 1] * g[1] + coef[lab, 2] * g[2]
    fine = mu.astype(np.float32)[lab] * np.clip(tex, 0.0, None)
    if rng.random() < 0.25:  # chemical-shift-like phase offsets per label
        fine = fine * np.exp(1j * rng.uniform(-0.5, 0.5, k).astype(np.float32))[lab]
    img = fine.reshape(h, 2, w, 2).mean(axis=(1, 3))  # partial volume
    img = img * np.exp(rng.uniform(0.0, 0.5) * smooth_fields(rng, (h, w), max(h, w) / rng.uniform(2.0, 4.0))[0])
    yy, xx = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32), indexing="ij")
    phase = rng.uniform(-np.pi, np.pi) + rng.uniform(-2, 2) * yy + rng.uniform(-2, 2) * xx
    phase = phase + rng.uniform(0.0, np.pi) * smooth_fields(rng, (h, w), max(h, w) / rng.uniform(1.5, 3.0))[0]
    img = img * np.exp(1j * phase)
    # k-space: PSF, optional truncation (Gibbs), noise
    ksp = sfft.fft2(img, norm="ortho", workers=1)
    s_row = 1.5 * rng.random() ** 1.5
    s_col = min(1.5, s_row * rng.uniform(0.67, 1.5))
    fy, fx = sfft.fftfreq(h)[:, None], sfft.fftfreq(w)[None, :]
    filt = np.exp(-2 * np.pi**2 * (s_row**2 * fy**2 + s_col**2 * fx**2))
    if rng.random() < 0.3:
        filt = filt * (np.abs(fy) <= 0.5 * rng.uniform(0.6, 1.0)) * (np.abs(fx) <= 0.5 * rng.uniform(0.6, 1.0))
    ksp = ksp * filt
    ref = max(float(np.percentile(np.abs(img), 99)), 1e-6)
    if rng.random() < 0.9:
        sigma = ref * np.exp(rng.uniform(np.log(0.002), np.log(0.03)))
        ksp = ksp + sigma / np.sqrt(2) * (rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w)))
    out = sfft.ifft2(ksp, norm="ortho", workers=1)
    scale = max(float(np.percentile(np.abs(out), 99)), 1e-6)
    return (out / scale).astype(np.complex64)


def render_slice(rng: np.random.Generator, family: str, shape: tuple[int, int] = (128, 128),
                 pixel_mm: tuple[float, float] = (0.5, 3.0)) -> tuple[np.ndarray, float, np.ndarray]:
    """One domain-randomised slice of ``family``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every draw (the slice is a deterministic function of its state).
    family : str
        One of :data:`FAMILIES`.
    shape : (int, int)
        Output matrix ``(H, W)``; the label map is built on ``(2H, 2W)``.
    pixel_mm : (float, float)
        Range of the output pixel size (mm), drawn log-uniformly.

    Returns
    -------
    image : numpy.ndarray
        complex64 ``(H, W)``, magnitude roughly in ``[0, 1]`` (99th percentile 1).
    pixel_mm : float
        The drawn output pixel size (mm); field of view ``H · pixel_mm × W · pixel_mm``.
    labels : numpy.ndarray
        int32 ``(H, W)``: the majority label of each pixel's 2×2 fine-grid block, an index into
        :data:`LABELS` ``[family]``.
    """
    if family not in FAMILIES:
        raise InputError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    h, w = int(shape[0]), int(shape[1])
    pix = float(np.exp(rng.uniform(np.log(pixel_mm[0]), np.log(pixel_mm[1]))))
    lab = _LABEL_MAKERS[family](rng, (2 * h, 2 * w), pix / 2)
    img = render_labels(rng, lab, family)
    return img, pix, _majority_2x2(lab).astype(np.int32)


# ----------------------------------------------------------------------------------------------------------------
# the training pool
# ----------------------------------------------------------------------------------------------------------------


def _render_job(args: tuple[int, int, str, int, tuple[int, int], tuple[float, float]]) -> np.ndarray:
    # numpy/scipy only: safe in a forked worker
    seed, split, family, entropy, shape, pixel_mm = args
    rng = np.random.default_rng([seed, split, entropy])
    return render_slice(rng, family, shape, pixel_mm)[0]


def _parse_size(size: Any, name: str) -> tuple[tuple[int, int] | None, tuple[int, ...]]:
    """``int`` or ``(H, W)`` tuple → fixed shape; ``range`` / list → candidate square sizes."""
    if isinstance(size, (int, np.integer)):
        fixed, cands = (int(size), int(size)), ()
    elif isinstance(size, tuple) and len(size) == 2:
        fixed, cands = (int(size[0]), int(size[1])), ()
    elif isinstance(size, (range, list)) and len(size) > 0:
        fixed, cands = None, tuple(int(s) for s in size)
    else:
        raise InputError(f"{name} must be an int, an (H, W) tuple or a range/list of sizes, got {size!r}")
    if min(fixed or cands) < 16:
        raise InputError(f"{name} must be >= 16, got {size!r}")
    return fixed, cands


class DomainRandomPool:
    """Streaming source of domain-randomised training crops with the trainer's pool interface.

    Parameters
    ----------
    size : int, (int, int), range or list of int
        Output crop size: an int (square), an ``(H, W)`` tuple, or a range / list of square sizes of
        which each batch draws one.
    families : sequence of str
        Families to draw from (:data:`FAMILIES`), with equal probability.
    held_out_family : str or None
        A family that this pool never draws (removed from ``families``); see
        :meth:`held_out_pool`.
    seed : int
        Base seed: sample ``e`` of a batch is ``render_slice(default_rng([seed, split, e]), …)`` with
        ``e`` a 62-bit integer drawn from the batch's ``torch.Generator``.
    split : {"train", "test"}
        Disjoint seed streams.
    render_size : None, int, (int, int), range or list of int
        Matrix of the rendered slice that crops are cut from (each side ``>=`` the crop); None renders at the
        crop size.  The slice is scaled as a whole (as a fastMRI slice is) before cropping.
    pixel_mm : (float, float)
        Output pixel-size range (mm), log-uniform.
    workers : int
        Forked worker processes that render a batch in parallel (0: render in this process).
    length : int
        Nominal ``len`` (the stream is endless).
    """

    def __init__(self, size: Any = 64, families: Sequence[str] = FAMILIES, held_out_family: str | None = None,
                 seed: int = 0, split: str = "train", render_size: Any = None,
                 pixel_mm: tuple[float, float] = (0.5, 3.0), workers: int = 0, length: int = 1_000_000) -> None:
        bad = [f for f in families if f not in FAMILIES]
        if bad or not families:
            raise InputError(f"unknown families {bad}; choose from {', '.join(FAMILIES)}")
        if held_out_family is not None and held_out_family not in FAMILIES:
            raise InputError(f"held_out_family must be one of {', '.join(FAMILIES)} or None, got {held_out_family!r}")
        if split not in SPLITS:
            raise InputError(f"split must be train or test, got {split!r}")
        if not 0.1 <= float(pixel_mm[0]) <= float(pixel_mm[1]) <= 10.0:
            raise InputError(f"pixel_mm range must lie in [0.1, 10] mm, got {pixel_mm}")
        self.families = tuple(f for f in dict.fromkeys(families) if f != held_out_family)
        if not self.families:
            raise InputError(f"held_out_family {held_out_family!r} leaves no family to draw from")
        self.all_families = tuple(dict.fromkeys(families))
        self.held_out_family = held_out_family
        self.seed, self.split = int(seed), split
        self.size, self.sizes = _parse_size(size, "size")
        self.render, self.render_sizes = (None, ()) if render_size is None else _parse_size(render_size, "render_size")
        biggest = self.size or (max(self.sizes),) * 2
        smallest_render = self.render or ((min(self.render_sizes),) * 2 if self.render_sizes else biggest)
        if smallest_render[0] < biggest[0] or smallest_render[1] < biggest[1]:
            raise InputError(f"render_size {render_size!r} is smaller than the crop size {size!r}")
        self.pixel_mm = (float(pixel_mm[0]), float(pixel_mm[1]))
        self.workers = int(workers)
        self.length = int(length)
        #: Square crop side (the :class:`~mri_score.data.datasets.SlicePool` attribute), when the crop is square and fixed.
        self.crop = self.size[0] if self.size and self.size[0] == self.size[1] else None
        self._pool: Any = None

    def __len__(self) -> int:
        return self.length

    def held_out_pool(self, **overrides: Any) -> DomainRandomPool:
        """A test-split pool that draws only :attr:`held_out_family` (the anatomy this pool never produces)."""
        if self.held_out_family is None:
            raise InputError("this pool holds no family out")
        kw = {"size": self.size or list(self.sizes), "families": (self.held_out_family,), "seed": self.seed,
              "split": "test", "render_size": self.render or (list(self.render_sizes) or None),
              "pixel_mm": self.pixel_mm, **overrides}
        return DomainRandomPool(**kw)

    def render_slice(self, rng: np.random.Generator, family: str) -> tuple[np.ndarray, float, np.ndarray]:
        """:func:`render_slice` at this pool's render matrix (the crop size when no ``render_size``).

        Returns ``(image complex64 (H, W), pixel_mm float, labels int32 (H, W))``, unscaled (99th percentile 1).
        """
        if family not in self.all_families and family != self.held_out_family:
            raise InputError(f"family {family!r} is not one of this pool's {self.all_families}")
        shape = self._render_shape(self.size or (self.sizes[0],) * 2, int(rng.integers(1 << 30)))
        return render_slice(rng, family, shape, self.pixel_mm)

    def generate(self, index: int, family: str | None = None) -> tuple[np.ndarray, float, np.ndarray, str]:
        """Slice ``index`` of this split's indexed stream (for fixed evaluation sets): ``(image, pixel_mm, labels, family)``.

        Uses ``default_rng([seed, 10 + split, index])``, disjoint from the streams :meth:`batch` draws from.
        """
        rng = np.random.default_rng([self.seed, 10 + SPLITS[self.split], int(index)])
        fam = self.families[int(rng.integers(len(self.families)))] if family is None else family
        img, pix, lab = self.render_slice(rng, fam)
        return img, pix, lab, fam

    def _render_shape(self, crop: tuple[int, int], draw: int) -> tuple[int, int]:
        if self.render is not None:
            return self.render
        if self.render_sizes:
            ok = [s for s in self.render_sizes if s >= max(crop)]
            n = ok[draw % len(ok)]
            return (n, n)
        return crop

    def _map(self, jobs: list) -> list[np.ndarray]:
        if self.workers <= 1 or len(jobs) < 2:
            return [_render_job(j) for j in jobs]
        if self._pool is None:
            if "brain" in self.families:
                brain_volume()  # load once in the parent; forked workers share it
            self._pool = mp.get_context("fork").Pool(self.workers)
            self._finalizer = weakref.finalize(self, self._pool.terminate)
        return self._pool.map(_render_job, jobs, chunksize=max(1, len(jobs) // (4 * self.workers)))

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        if self._pool is not None:
            self._finalizer()
            self._pool = None

    def scaled_slices(self, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, tuple[int, int], list[str]]:
        """The whole rendered slices of the next batch, before cropping, and the crop size.

        Makes the same draws from ``gen`` as the start of :meth:`batch_labelled`.

        Returns
        -------
        slices : torch.Tensor
            complex64 ``(B, Hr, Wr)``, each divided by its :func:`~mri_score.scaling.image_scale`
            (centre fraction :data:`~mri_score.scaling.TRAIN_CENTER_FRACTION`), as
            :class:`~mri_score.data.datasets.SlicePool` scales its slices.
        crop : (int, int)
            The batch's crop ``(H, W)``.
        families : list of str
            The family of each slice.
        """
        if self.size is not None:
            crop = self.size
        else:
            n = self.sizes[int(torch.randint(len(self.sizes), (1,), generator=gen))]
            crop = (n, n)
        shape = self._render_shape(crop, int(torch.randint(1 << 30, (1,), generator=gen)))
        fam_idx = torch.randint(len(self.families), (batch_size,), generator=gen).tolist()
        draws = torch.randint(1 << 62, (batch_size,), generator=gen).tolist()
        families = [self.families[f] for f in fam_idx]
        jobs = [(self.seed, SPLITS[self.split], f, int(e), shape, self.pixel_mm) for f, e in zip(families, draws)]
        full = torch.from_numpy(np.stack(self._map(jobs)))
        return full / image_scale(full, TRAIN_CENTER_FRACTION)[:, None, None], crop, families

    def batch_labelled(self, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch and its ``(contrast, anatomy)`` labels.

        Returns
        -------
        x : torch.Tensor
            float32 ``(B, 2, H, W)``: real and imaginary parts of random crops of :meth:`scaled_slices`,
            randomly flipped and conjugated (the draws of :meth:`~mri_score.data.datasets.SlicePool.batch`).
        labels : torch.Tensor
            int64 ``(B, 2)``: indices into :data:`~mri_score.data.corpus.CONTRASTS` (always ``"other"``:
            the contrast is random) and :data:`~mri_score.data.corpus.ANATOMIES` (``joint`` is ``"limb"``).
        """
        full, crop, families = self.scaled_slices(batch_size, gen)
        out = torch.empty(batch_size, 2, crop[0], crop[1])
        for b in range(batch_size):
            x = augmented_crop(full[b], crop, gen)
            out[b, 0] = x.real
            out[b, 1] = x.imag
        other = CONTRASTS.index("other")
        labels = torch.tensor([[other, ANATOMIES.index(ANATOMY_OF_FAMILY[f])] for f in families], dtype=torch.int64)
        return out, labels

    def batch(self, batch_size: int, gen: torch.Generator) -> torch.Tensor:
        """``(B, 2, H, W)`` float32 crops, as :meth:`~mri_score.data.datasets.SlicePool.batch`."""
        return self.batch_labelled(batch_size, gen)[0]
