"""Procedural body and limb cross-sections: complex MR-like slices that are not brains.

Generative model (one slice, all draws from the ``numpy.random.Generator`` passed in):

1. **Outline.** A closed contour ``r(θ) = R (1 + Σ_k a_k cos(kθ + φ_k))`` (k = 2…6, small
   ``a_k``) with an aspect ratio: the trunk (``body``, 220–400 mm wide, flattened) or a
   limb (``limb``, 80–180 mm, rounder).  Position, size and in-plane rotation vary; an
   object wider than 92 % of the field of view is shrunk to fit (a scan's field of view
   is prescribed around the anatomy, so nothing is cut off or aliased).
2. **Layers.** Skin (1–2.5 mm) and subcutaneous fat whose thickness varies around the
   contour (2–30 mm); inside it muscle, split into compartments by thin fascia (the
   edges of a random Voronoi partition).
3. **Structures.** ``limb``: one or two bones (a dark cortical ring 1.5–6 mm around
   fat-like marrow), occasionally joint fluid and a cartilage rim (knee-like); vessels.
   ``body``: a spine (vertebral body with marrow, a fluid-filled canal), a liver-like
   organ on one side, two kidneys, bowel loops (fluid or air, thin walls), an aorta,
   and sometimes a fluid collection.
4. **Partial volume.** Every structure is a soft (logistic) indicator of its signed
   distance, so edges are one pixel-ish wide at any pixel size.
5. **Contrast.** A family sets tissue intensities: ``t1`` (fat bright, fluid dark),
   ``t2`` (fluid bright, fat bright-ish), ``pd`` (fat bright, fluid intermediate-bright),
   ``fatsat`` (fat suppressed, fluid bright) or ``random``.
6. **Nuisance.** Muscle striation (oriented filtered noise), a smooth bias field and a
   smooth background phase, as for the brain corpus.

Intensities follow published relative orders at 1.5–3 T; the absolute values are
drawn from ranges, so the prior learns boundaries and textures, not one sequence.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.special import expit

from mri_score.data.corpus import smooth_field

BODY_FAMILIES = ("t1", "t2", "pd", "fatsat", "random")
BODY_KINDS = ("body", "limb")

# tissue intensity ranges per family: fat, muscle, fluid, cortical bone, organ (liver-like), kidney, skin, cartilage
_TISSUES = ("fat", "muscle", "fluid", "cortex", "organ", "kidney", "skin", "cartilage")
_BODY_RANGES = {
    "t1": ((0.8, 1.0), (0.25, 0.4), (0.05, 0.15), (0.0, 0.05), (0.35, 0.55), (0.25, 0.4), (0.4, 0.7), (0.3, 0.45)),
    "t2": ((0.55, 0.8), (0.12, 0.25), (0.85, 1.0), (0.0, 0.05), (0.15, 0.3), (0.4, 0.6), (0.3, 0.5), (0.25, 0.4)),
    "pd": ((0.8, 1.0), (0.35, 0.5), (0.6, 0.85), (0.0, 0.06), (0.45, 0.6), (0.5, 0.7), (0.5, 0.75), (0.5, 0.7)),
    "fatsat": ((0.03, 0.15), (0.25, 0.4), (0.8, 1.0), (0.0, 0.05), (0.3, 0.45), (0.45, 0.65), (0.3, 0.5), (0.45, 0.65)),
    "random": ((0.0, 1.0), (0.05, 0.8), (0.0, 1.0), (0.0, 0.1), (0.05, 1.0), (0.05, 1.0), (0.1, 1.0), (0.05, 1.0)),
}


def _soft(signed_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """Soft indicator of ``signed_mm > 0`` (inside), edge width ``edge_mm``."""
    return expit(signed_mm / max(edge_mm, 1e-3))


def _contour_radius(rng: np.random.Generator, theta: np.ndarray, wobble: float) -> np.ndarray:
    r = np.ones_like(theta)
    for k in range(2, 7):
        r += rng.uniform(0, wobble / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return r


def _blob(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float,
          wobble: float = 0.15) -> np.ndarray:
    """Signed distance-like field (mm, > 0 inside) of a wobbly rotated ellipse centred at (cx, cy)."""
    ang = rng.uniform(0, np.pi)
    dx, dy = x - cx, y - cy
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = -dx * np.sin(ang) + dy * np.cos(ang)
    theta = np.arctan2(v / ry, u / rx)
    rho = np.hypot(u / rx, v / ry)
    rad = _contour_radius(rng, theta, wobble)
    return (rad - rho) * min(rx, ry)


def _voronoi_fascia(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n: int, extent: float) -> np.ndarray:
    """Distance (mm) to the nearest Voronoi edge of ``n`` random seeds: small on fascia lines."""
    seeds = rng.uniform(-extent, extent, size=(n, 2))
    d = np.stack([np.hypot(x - sx, y - sy) for sx, sy in seeds])
    d.sort(axis=0)
    return (d[1] - d[0]) / 2


def _draw_intensities(rng: np.random.Generator, family: str) -> dict[str, float]:
    return {t: float(rng.uniform(lo, hi)) for t, (lo, hi) in zip(_TISSUES, _BODY_RANGES[family])}


def body_slice(
    rng: np.random.Generator, kind: str, shape: tuple[int, int], pixel_mm: float, family: str
) -> np.ndarray:
    """One procedural cross-section: complex64 ``(H, W)``, magnitude roughly in ``[0, 1]``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random draw (the slice is a deterministic function of its state).
    kind : {"body", "limb"}
        Trunk (abdomen/pelvis-like) or limb (thigh/arm/knee-like) cross-section.
    shape : (int, int)
        Matrix ``(H, W)``.
    pixel_mm : float
        In-plane pixel size in mm.
    family : str
        Contrast family, one of :data:`BODY_FAMILIES`.
    """
    if kind not in BODY_KINDS:
        raise ValueError(f"kind must be one of {BODY_KINDS}, got {kind!r}")
    if family not in BODY_FAMILIES:
        raise ValueError(f"family must be one of {BODY_FAMILIES}, got {family!r}")
    h, w = shape
    iv = _draw_intensities(rng, family)
    y, x = np.meshgrid((np.arange(h) - h / 2 + 0.5) * pixel_mm, (np.arange(w) - w / 2 + 0.5) * pixel_mm, indexing="ij")
    edge = max(0.5 * pixel_mm, 0.4)
    if kind == "body":
        half_w = rng.uniform(110, 200)
        half_h = half_w * rng.uniform(0.55, 0.85)
    else:
        half_w = rng.uniform(40, 90)
        half_h = half_w * rng.uniform(0.8, 1.1)
    # the field of view is prescribed around the object, as in a real scan: shrink what would not fit
    fit = min(1.0, 0.46 * w * pixel_mm / half_w, 0.46 * h * pixel_mm / half_h)
    half_w, half_h = half_w * fit, half_h * fit
    cx = rng.uniform(-1, 1) * max(0.0, 0.48 * w * pixel_mm - half_w * 1.02)
    cy = rng.uniform(-1, 1) * max(0.0, 0.48 * h * pixel_mm - half_h * 1.02)
    outer = _blob(x, y, rng, cx, cy, half_w, half_h, wobble=0.12)
    skin_t = rng.uniform(1.0, 2.5)
    fat_t = rng.uniform(0.02, 0.2) * half_w * (1 + 0.5 * smooth_field(rng, 4, (h, w)))
    fat_t = np.clip(fat_t, 1.0, None)
    s_body = _soft(outer, edge)
    s_inner = _soft(outer - skin_t, edge)
    s_muscle = _soft(outer - skin_t - fat_t, edge)
    fascia = _voronoi_fascia(x - cx, y - cy, rng, int(rng.integers(4, 12)), max(half_w, half_h))
    s_fascia = _soft(rng.uniform(0.5, 1.5) - fascia, edge) * s_muscle

    tex = ndimage.gaussian_filter(rng.standard_normal((h, w)), (rng.uniform(0.5, 1.0), rng.uniform(1.5, 4.0)))
    tex = ndimage.rotate(tex, rng.uniform(0, 180), reshape=False, mode="reflect")
    tex *= rng.uniform(0.03, 0.12) / max(tex.std(), 1e-6)
    muscle = iv["muscle"] * (1 + tex)
    mag = (s_body - s_inner) * iv["skin"] + (s_inner - s_muscle) * iv["fat"]
    mag = mag + s_muscle * ((1 - s_fascia) * muscle + s_fascia * iv["fat"])
    structures: list[tuple[np.ndarray, float]] = []  # (soft mask inside the muscle, intensity), painted in order

    if kind == "limb":
        for _ in range(int(rng.integers(1, 3))):
            r = rng.uniform(8, 30) * half_w / 70
            bx = cx + rng.uniform(-0.35, 0.35) * half_w
            by = cy + rng.uniform(-0.35, 0.35) * half_h
            bone = _blob(x, y, rng, bx, by, r, r * rng.uniform(0.7, 1.0), wobble=0.1)
            if rng.random() < 0.35:  # a joint: fluid and a cartilage rim around the bone
                structures.append((_soft(bone + rng.uniform(2, 6), edge), iv["fluid"]))
                structures.append((_soft(bone + rng.uniform(1.5, 3.0), edge), iv["cartilage"]))
            structures.append((_soft(bone, edge), iv["cortex"]))
            marrow = iv["fat"] * rng.uniform(0.8, 1.0) if family != "fatsat" else iv["fat"] * rng.uniform(1.0, 2.0)
            structures.append((_soft(bone - rng.uniform(1.5, 6.0), edge), marrow))
        for _ in range(int(rng.integers(1, 4))):  # vessels
            vx = cx + rng.uniform(-0.5, 0.5) * half_w
            vy = cy + rng.uniform(-0.5, 0.5) * half_h
            vr = rng.uniform(1.5, 5.0)
            structures.append((_soft(vr - np.hypot(x - vx, y - vy), edge), iv["fluid"] * rng.uniform(0.3, 1.0)))
    else:
        sx, sy = cx + rng.uniform(-0.05, 0.05) * half_w, cy + half_h * rng.uniform(0.35, 0.6)
        vert_r = rng.uniform(15, 25)
        vert = _blob(x, y, rng, sx, sy - 0.3 * vert_r, vert_r, vert_r * 0.8, wobble=0.05)
        structures.append((_soft(vert, edge), iv["cortex"]))
        structures.append((_soft(vert - rng.uniform(1.5, 3.0), edge), iv["fat"] * rng.uniform(0.5, 0.8)))
        canal = rng.uniform(5, 9) - np.hypot(x - sx, y - (sy + 0.9 * vert_r))
        structures.append((_soft(canal, edge), iv["fluid"]))
        side = rng.choice([-1.0, 1.0])
        if rng.random() < 0.7:  # liver-like organ
            lx, ly = cx + side * half_w * rng.uniform(0.3, 0.5), cy - half_h * rng.uniform(0.0, 0.3)
            structures.append((_soft(_blob(x, y, rng, lx, ly, half_w * 0.45, half_h * 0.55, 0.2), edge), iv["organ"]))
        if rng.random() < 0.7:  # kidneys
            for sgn in (-1.0, 1.0):
                kx, ky = sx + sgn * rng.uniform(45, 75), sy - rng.uniform(0, 25)
                kid = _blob(x, y, rng, kx, ky, rng.uniform(20, 30), rng.uniform(30, 45), 0.1)
                structures.append((_soft(kid, edge), iv["kidney"]))
                structures.append((_soft(kid - rng.uniform(6, 12), edge), iv["fat"] * rng.uniform(0.6, 1.0)))
        for _ in range(int(rng.integers(3, 12))):  # bowel loops: fluid or air, thin walls
            bx = cx + rng.uniform(-0.6, 0.6) * half_w
            by = cy + rng.uniform(-0.6, 0.3) * half_h
            br = rng.uniform(8, 25)
            loop = _blob(x, y, rng, bx, by, br, br * rng.uniform(0.6, 1.0), 0.2)
            structures.append((_soft(loop, edge), iv["muscle"] * rng.uniform(0.8, 1.3)))
            content = iv["fluid"] * rng.uniform(0.3, 1.0) if rng.random() < 0.6 else rng.uniform(0.0, 0.05)
            structures.append((_soft(loop - rng.uniform(1.5, 3.0), edge), content))
        ax_ = sx + rng.uniform(-20, 20)
        ay = sy - vert_r * rng.uniform(1.3, 1.8)
        structures.append((_soft(rng.uniform(8, 14) - np.hypot(x - ax_, y - ay), edge), iv["fluid"] * rng.uniform(0.1, 1.0)))

    for soft, value in structures:
        soft = soft * s_muscle
        mag = mag * (1 - soft) + soft * value
    mag = np.clip(mag, 0.0, None)
    bias = np.exp(rng.uniform(0.0, 0.5) * smooth_field(rng, 4, (h, w)) / 2)
    mag = mag * bias
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    phase = rng.uniform(-np.pi, np.pi) + rng.uniform(-1.5, 1.5) * yy + rng.uniform(-1.5, 1.5) * xx
    phase += rng.uniform(0.0, np.pi) * smooth_field(rng, 3, (h, w)) / 2
    return (mag * np.exp(1j * phase)).astype(np.complex64)
