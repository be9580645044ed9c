"""Synthetic complex brain MR slices from the ICBM152 2009 template (shipped in the ``nilearn`` wheel).

Generative model (one slice, all draws from ``numpy.random.default_rng([seed, split, index])``):

1. **Anatomy.** The 1 mm ICBM152 2009c T1 template, its grey-matter (GM) and
   white-matter (WM) probability maps and brain mask.  CSF probability is
   ``clip(mask − GM − WM, 0, 1)``.  Extra-cerebral layers are built from the 3-D
   distance ``d`` (mm) to the brain mask: a CSF rim, a skull shell and a scalp/fat
   shell whose thicknesses are drawn per slice.
2. **Geometry.** Orientation axial / coronal / sagittal, the plane tilted by up
   to ±12° and rotated in-plane by up to ±15°; slice position drawn inside the
   split's slabs (10 mm slabs along each axis, every 5th slab reserved for the
   test split, with a 2 mm guard on each side); pixel size 0.8–1.5 mm; matrix
   ``H, W`` from ``sizes``; a random in-plane shift of the centre; a smooth
   random elastic displacement (5×5 control grid, up to 4 mm) and an affine
   scaling of ±10 % per axis.
3. **Contrast.** A family is drawn from ``families``: ``t1`` (WM > GM > CSF),
   ``t2`` (CSF > GM > WM), ``pd`` (CSF ≳ GM > WM, low contrast), ``flair``
   (GM > WM > CSF, dark CSF) or ``random`` (any ordering except FLAIR's).
   Tissue intensities are drawn from family ranges; the magnitude is
   ``Σ_k p_k I_k + α · residual`` where ``residual`` is the template's T1
   detail not explained by the tissue probabilities, with a random signed
   weight α, so fine anatomy survives every contrast.
4. **Physics-like nuisance.** A smooth multiplicative bias field
   (``exp`` of a 4×4-grid random field, up to ±30 %), fine texture (filtered
   Gaussian noise, ≤ 3 %), and a smooth background phase (random linear ramp
   plus a 3×3-grid random field, up to ±π) making the image complex.

The output is complex64 ``(H, W)`` with magnitude roughly in ``[0, 1]``.  The
test split never uses a training slab or seed stream; a family can be left out
of training entirely (``families``) to test robustness to unseen contrast.

**Subject-level split** (``split_by="subject"``, used by every new config): one
template is one subject, so the anatomy itself is split by voxel.  The train split
reads only the template's right hemisphere (voxels ``x ≥ midline + 1``), mirrored
into a whole head; the test split only the left one (``x ≤ midline − 1``).  No
template voxel that a test slice can read is ever read by a training slice, for
any orientation, tilt or deformation (tested).  Each split then draws distinct
**subjects**: subject ``k`` of a split is the mirrored template under its own
large smooth 3-D deformation (a 4×4×4 control grid, up to ``subject_warp_mm``),
its own head size (±12 % per axis) and its own scalp/skull thicknesses, all from
``default_rng([seed, 7, split, k])``.  Slices of a subject differ in orientation,
position, tilt, pixel size, contrast and nuisance.  The legacy ``split_by="slab"``
(plane centres in 10 mm slabs) reproduces the round-one benchmarks only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import expit

from mri_score.errors import InputError

FAMILIES = ("t1", "t2", "pd", "flair", "random")
SPLITS = {"train": 0, "test": 1}
#: Intensity ranges per family: (csf, gm, wm, skull, scalp).
_RANGES = {
    "t1": ((0.05, 0.25), (0.45, 0.65), (0.75, 0.95), (0.02, 0.15), (0.7, 1.0)),
    "t2": ((0.85, 1.0), (0.4, 0.6), (0.25, 0.45), (0.02, 0.1), (0.4, 0.8)),
    "pd": ((0.75, 1.0), (0.7, 0.85), (0.55, 0.7), (0.05, 0.15), (0.6, 0.9)),
    "flair": ((0.02, 0.15), (0.55, 0.8), (0.35, 0.55), (0.02, 0.1), (0.4, 0.8)),
    "random": ((0.02, 1.0), (0.05, 1.0), (0.05, 1.0), (0.0, 0.3), (0.2, 1.0)),
}
#: Contrast labels of the conditional prior (``random`` and unnamed body families are ``other``).
CONTRASTS = ("t1", "t2", "pd", "flair", "fatsat", "other")
#: Anatomy labels of the conditional prior.
ANATOMIES = ("brain", "body", "limb")
CONTRAST_OF_FAMILY = {"t1": "t1", "t2": "t2", "pd": "pd", "flair": "flair", "fatsat": "fatsat", "random": "other"}
SLAB_MM = 10.0
TEST_SLAB_EVERY = 5
GUARD_MM = 2.0
PAD = 24


@dataclass(frozen=True)
class Template:
    """Padded template volumes (float32, 1 mm isotropic) and tissue-centre intensities."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    dist: np.ndarray  # mm outside the brain mask, 0 inside
    residual: np.ndarray
    extent: tuple[tuple[int, int], ...]  # brain extent per axis (padded voxel coords)


#: Voxel index (axis 0, unpadded) of the template's mid-sagittal plane (world x = 0 mm).
MIDLINE = 98
#: Voxels on each side of the midline that neither hemisphere split reads.
HEMI_GUARD = 1
#: Which hemisphere each split of the subject-level corpus reads.
HEMISPHERES = {"train": "right", "test": "left"}


def mirrored_hemisphere(vol: np.ndarray, side: str, midline: int = MIDLINE, guard: int = HEMI_GUARD) -> np.ndarray:
    """A symmetric volume made of one hemisphere of ``vol`` ``(X, Y, Z)`` and its mirror image.

    ``side="right"`` keeps voxels ``x ≥ midline + guard``, ``"left"`` keeps
    ``x ≤ midline − guard``; the result has ``2 · kept`` voxels along axis 0 and
    contains no value from the other side (nor from the ``2·guard − 1`` voxels
    around the midline).
    """
    if side == "right":
        half = vol[midline + guard:]
        return np.concatenate([half[::-1], half], axis=0)
    if side == "left":
        half = vol[: midline - guard + 1]
        return np.concatenate([half, half[::-1]], axis=0)
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")


# the nilearn loaders of the 1 mm ICBM152 2009 maps (mni152_maps)
_MNI152_LOADERS = {"t1": "load_mni152_template", "gm": "load_mni152_gm_template", "wm": "load_mni152_wm_template",
                   "mask": "load_mni152_brain_mask"}


def mni152_maps(names: Sequence[str], needed_by: str) -> list[np.ndarray]:
    """The 1 mm ICBM152 2009 maps ``names`` (``t1``, ``gm``, ``wm``, ``mask``: the T1 template, the grey- and
    white-matter probabilities, the brain mask), float32, in that order.

    Read from the installed nilearn wheel (offline); without nilearn one :class:`InputError` saying that
    ``needed_by`` (e.g. ``"the synthetic corpus"``) needs it.
    """
    try:
        from nilearn import datasets
    except ImportError as err:  # pragma: no cover - depends on install
        raise InputError(f"{needed_by} needs nilearn: pip install 'mri-score[data]'") from err
    return [getattr(datasets, _MNI152_LOADERS[name])(resolution=1).get_fdata(dtype=np.float32) for name in names]


@functools.lru_cache(maxsize=3)
def load_template(half: str | None = None) -> Template:
    """Load the ICBM152 template from the installed nilearn wheel (offline) and derive tissue maps.

    ``half=None``: the whole template (legacy slab split); ``"left"``/``"right"``:
    the symmetric template built from one hemisphere (:func:`mirrored_hemisphere`).
    """
    t1, gm, wm, mask = mni152_maps(("t1", "gm", "wm", "mask"), "the synthetic corpus")
    if half is not None:
        t1, gm, wm, mask = (np.ascontiguousarray(mirrored_hemisphere(a, half)) for a in (t1, gm, wm, mask))
    pad = ((PAD, PAD),) * 3
    t1, gm, wm, mask = (np.pad(a, pad) for a in (t1, gm, wm, mask))
    csf = np.clip(mask - gm - wm, 0.0, 1.0) * (mask > 0)
    # tissue-centre intensities of the template, then the detail the probabilities do not explain
    centres = []
    for p in (csf, gm, wm):
        sel = p > 0.8
        centres.append(float(t1[sel].mean()) if sel.any() else 0.0)
    explained = csf * centres[0] + gm * centres[1] + wm * centres[2]
    residual = (t1 - explained) * (mask > 0)
    dist = ndimage.distance_transform_edt(mask < 0.5).astype(np.float32)
    idx = np.nonzero(mask > 0.5)
    extent = tuple((int(i.min()), int(i.max())) for i in idx)
    return Template(t1, gm, wm, csf.astype(np.float32), dist, residual.astype(np.float32), extent)


def smooth_field(rng: np.random.Generator, grid: int, shape: tuple[int, int]) -> np.ndarray:
    """A smooth random field of unit-ish amplitude: a ``grid × grid`` normal draw, cubic-upsampled."""
    coarse = rng.standard_normal((grid, grid))
    return ndimage.zoom(coarse, (shape[0] / grid, shape[1] / grid), order=3, mode="nearest")[: shape[0], : shape[1]]


def _rotation(rng: np.random.Generator, tilt_deg: float, inplane_deg: float) -> np.ndarray:
    """Random rotation: a tilt about a random in-plane axis, then an in-plane rotation."""
    a = np.deg2rad(rng.uniform(-tilt_deg, tilt_deg))
    b = np.deg2rad(rng.uniform(-tilt_deg, tilt_deg))
    c = np.deg2rad(rng.uniform(-inplane_deg, inplane_deg))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


# (normal axis, row axis, row sign, column axis): anterior / superior up, as radiologists view them
_ORIENTATIONS = {"sagittal": (0, 2, -1.0, 1), "coronal": (1, 2, -1.0, 0), "axial": (2, 1, -1.0, 0)}


def slab_positions(axis_extent: tuple[int, int], split: str) -> np.ndarray:
    """Voxel positions along an axis that belong to ``split`` (10 mm slabs, every 5th for test, 2 mm guards)."""
    lo, hi = axis_extent
    lo, hi = lo + 8, hi - 8  # skip the thin end caps of the brain
    pos = np.arange(lo, hi + 1)
    slab = np.floor((pos - lo) / SLAB_MM).astype(int)
    within = (pos - lo) - slab * SLAB_MM
    is_test = slab % TEST_SLAB_EVERY == 2
    guard = (within >= GUARD_MM) & (within < SLAB_MM - GUARD_MM)
    keep = (is_test & guard) if split == "test" else (~is_test & guard)
    return pos[keep]


def _subject_shells(srng: np.random.Generator) -> tuple[float, float, float]:
    """A subject's CSF rim, skull and scalp outer distances (mm from the brain mask)."""
    rim = srng.uniform(1.0, 3.0)
    skull = rim + srng.uniform(3.0, 8.0)
    return rim, skull, skull + srng.uniform(2.0, 10.0)


def _subject_warp(coords: np.ndarray, srng: np.random.Generator, tpl: Template, warp_mm: float) -> np.ndarray:
    """Map plane coordinates ``(3, H, W)`` of a subject's head into template voxels.

    A subject is the template scaled by its own head size (0.88–1.12 per axis about
    the brain centre) and displaced by a smooth 3-D field: a 4×4×4 control grid of
    normal draws spanning the brain's bounding box, cubic-interpolated, scaled so that
    the largest control displacement is ``warp_mm``.  Both are drawn from ``srng``, so
    every slice of a subject sees the same anatomy.
    """
    lo = np.array([e[0] for e in tpl.extent], dtype=np.float64)
    hi = np.array([e[1] for e in tpl.extent], dtype=np.float64)
    centre = (lo + hi) / 2
    size = srng.uniform(0.88, 1.12, size=3)
    grid = srng.standard_normal((3, 4, 4, 4))
    grid *= warp_mm * srng.uniform(0.5, 1.0) / max(np.abs(grid).max(), 1e-6)
    out = centre[:, None, None] + (coords - centre[:, None, None]) / size[:, None, None]
    # control-grid coordinates of each point (0 … 3 across the bounding box; clamped beyond it)
    g = np.stack([(out[a] - lo[a]) / max(hi[a] - lo[a], 1.0) * 3.0 for a in range(3)])
    for a in range(3):
        out[a] += ndimage.map_coordinates(grid[a], g, order=3, mode="nearest")
    return out


def _draw_family_intensities(rng: np.random.Generator, family: str) -> np.ndarray:
    ranges = _RANGES[family]
    while True:
        vals = np.array([rng.uniform(lo, hi) for lo, hi in ranges])
        csf, gm, wm = vals[:3]
        if family != "random" or not (csf < wm < gm):
            return vals


@dataclass
class SliceInfo:
    """Metadata of a generated slice."""

    family: str
    orientation: str
    position: float
    pixel_mm: float
    intensities: tuple[float, ...]
    subject: int | None = None
    anatomy: str = "brain"

    @property
    def contrast(self) -> str:
        """The contrast label (:data:`CONTRASTS`) of the slice's family."""
        return CONTRAST_OF_FAMILY.get(self.family, "other")


class SyntheticBrainCorpus:
    """Deterministic on-the-fly generator of complex brain MR slices.

    Parameters
    ----------
    split : {"train", "test"}
        Disjoint slab sets and seed streams.
    families : sequence of str
        Contrast families to draw from (subset of :data:`FAMILIES`).
    seed : int
        Base seed; slice ``i`` of split ``s`` uses ``default_rng([seed, s, i])``.
    sizes : sequence of int
        Candidate matrix sizes for ``H`` and ``W`` (drawn independently unless ``square``).
    pixel_mm : (float, float)
        Range of in-plane pixel sizes in mm.
    length : int
        Nominal number of distinct slices (``len``); any index is valid.
    """

    def __init__(
        self,
        split: str = "train",
        families: Sequence[str] = ("t1", "t2", "pd", "random"),
        seed: int = 0,
        sizes: Sequence[int] = (160, 192, 224, 256),
        pixel_mm: tuple[float, float] = (0.8, 1.5),
        length: int = 100_000,
        square: bool = False,
        split_by: str = "slab",
        subjects: int = 40,
        subject_warp_mm: float = 10.0,
    ) -> None:
        if split_by not in ("slab", "subject"):
            raise InputError(f"split_by must be 'slab' or 'subject', got {split_by!r}")
        if int(subjects) < 1:
            raise InputError(f"subjects must be >= 1, got {subjects}")
        if not 0.0 <= float(subject_warp_mm) <= 30.0:
            raise InputError(f"subject_warp_mm must lie in [0, 30], got {subject_warp_mm}")
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; choose train or test")
        bad = [f for f in families if f not in FAMILIES]
        if bad or not families:
            raise InputError(f"unknown contrast families {bad}; choose from {', '.join(FAMILIES)}")
        if not sizes or min(sizes) < 32:
            raise InputError(f"sizes must be >= 32, got {list(sizes)}")
        if not 0.2 <= pixel_mm[0] <= pixel_mm[1] <= 5.0:
            raise InputError(f"pixel_mm range must lie in [0.2, 5] mm, got {pixel_mm}")
        self.split = split
        self.families = tuple(families)
        self.seed = int(seed)
        self.sizes = tuple(int(s) for s in sizes)
        self.pixel_mm = (float(pixel_mm[0]), float(pixel_mm[1]))
        self.length = int(length)
        self.square = square
        self.split_by = split_by
        self.subjects = int(subjects)
        self.subject_warp_mm = float(subject_warp_mm)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> np.ndarray:
        return self.generate(index)[0]

    def subject_of(self, index: int) -> int:
        """The subject (``0 … subjects−1`` of this split) that slice ``index`` belongs to (subject split only)."""
        return int(np.random.default_rng([self.seed, 11, SPLITS[self.split], int(index)]).integers(self.subjects))

    def generate(
        self, index: int, shape: tuple[int, int] | None = None, family: str | None = None,
        subject: int | None = None,
    ) -> tuple[np.ndarray, SliceInfo]:
        """Slice ``index``: complex64 ``(H, W)`` and its :class:`SliceInfo`.

        ``shape`` overrides the drawn matrix size, ``family`` the drawn contrast family and
        ``subject`` (subject split only) the subject drawn by :meth:`subject_of`.
        """
        by_subject = self.split_by == "subject"
        tpl = load_template(HEMISPHERES[self.split] if by_subject else None)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], int(index)])
        drawn = self.families[rng.integers(len(self.families))]
        if family is not None and family not in FAMILIES:
            raise InputError(f"unknown contrast family {family!r}; choose from {', '.join(FAMILIES)}")
        family = drawn if family is None else family
        orientation = ("axial", "coronal", "sagittal")[rng.integers(3)]
        normal_ax, row_ax, row_sign, col_ax = _ORIENTATIONS[orientation]
        if shape is None:
            h = int(rng.choice(self.sizes))
            w = h if self.square else int(rng.choice(self.sizes))
        else:
            h, w = shape
        pix = rng.uniform(*self.pixel_mm)
        if by_subject:
            lo, hi = tpl.extent[normal_ax]
            positions = np.arange(lo + 8, hi - 7)
        else:
            positions = slab_positions(tpl.extent[normal_ax], self.split)
        pos = float(rng.choice(positions)) + rng.uniform(-0.5, 0.5)

        centre = np.array([(lo + hi) / 2 for lo, hi in tpl.extent], dtype=np.float64)
        centre[normal_ax] = pos
        centre[row_ax] += rng.uniform(-10, 10)
        centre[col_ax] += rng.uniform(-10, 10)
        rot = _rotation(rng, 12.0, 15.0)
        u = np.zeros(3)
        u[row_ax] = row_sign
        v = np.zeros(3)
        v[col_ax] = 1.0
        n = np.zeros(3)
        n[normal_ax] = 1.0
        u, v = rot @ u, rot @ v
        # the tilt must not move the plane out of its slab: rotate about the plane centre
        scale = 1.0 + rng.uniform(-0.1, 0.1, size=2)
        rows = (np.arange(h) - h / 2 + 0.5) * pix * scale[0]
        cols = (np.arange(w) - w / 2 + 0.5) * pix * scale[1]
        coords = (
            centre[:, None, None]
            + u[:, None, None] * rows[None, :, None]
            + v[:, None, None] * cols[None, None, :]
        )
        amp = rng.uniform(0.0, 4.0)
        for axis in range(3):
            coords[axis] += amp * smooth_field(rng, 5, (h, w)) / 2.0
        subj = None
        if by_subject:
            subj = self.subject_of(index) if subject is None else int(subject)
            if not 0 <= subj < self.subjects:
                raise InputError(f"subject must lie in [0, {self.subjects - 1}], got {subj}")
            srng = np.random.default_rng([self.seed, 7, SPLITS[self.split], subj])
            coords = _subject_warp(coords, srng, tpl, self.subject_warp_mm)

        def sample(vol: np.ndarray) -> np.ndarray:
            return ndimage.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)

        gm, wm, csf, resid = sample(tpl.gm), sample(tpl.wm), sample(tpl.csf), sample(tpl.residual)
        dist = ndimage.map_coordinates(tpl.dist, coords, order=1, mode="nearest")

        vals = _draw_family_intensities(rng, family)
        i_csf, i_gm, i_wm, i_skull, i_scalp = vals
        # extra-cerebral shells (mm from the brain mask)
        rim = rng.uniform(1.0, 3.0)
        skull = rim + rng.uniform(3.0, 7.0)
        scalp = skull + rng.uniform(3.0, 8.0)
        if by_subject:  # a subject keeps its own skull and scalp
            rim, skull, scalp = _subject_shells(srng)
        edge = 0.7
        s_rim = expit((rim - dist) / edge)
        s_skull = expit((skull - dist) / edge)
        s_scalp = expit((scalp - dist) / edge)
        outside = dist > 0
        brain = csf * i_csf + gm * i_gm + wm * i_wm
        alpha = rng.uniform(-1.5, 1.5)
        brain = brain + alpha * resid
        extra = (
            s_rim * i_csf
            + (s_skull - s_rim) * i_skull
            + (s_scalp - s_skull) * i_scalp
        )
        mag = np.where(outside, extra * (1.0 - (gm + wm + csf).clip(0, 1)) + brain, brain)
        tissue = s_scalp
        mag = np.clip(mag, 0.0, None)

        bias = np.exp(rng.uniform(0.0, 0.3) * smooth_field(rng, 4, (h, w)) / 2.0)
        texture = ndimage.gaussian_filter(rng.standard_normal((h, w)), rng.uniform(0.5, 1.2))
        texture *= rng.uniform(0.0, 0.03) / max(texture.std(), 1e-6)
        mag = mag * bias * (1.0 + texture * tissue)
        mag = np.clip(mag, 0.0, None)

        yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        phase = rng.uniform(-np.pi, np.pi) + rng.uniform(-1.5, 1.5) * yy + rng.uniform(-1.5, 1.5) * xx
        phase += rng.uniform(0.0, np.pi) * smooth_field(rng, 3, (h, w)) / 2.0
        img = (mag * np.exp(1j * phase)).astype(np.complex64)
        info = SliceInfo(family, orientation, pos, pix, tuple(float(x) for x in vals), subj)
        return img, info
