"""The mixed training corpus: brain subjects (ICBM152, subject split) plus procedural body and limb slices.

Every slice carries its labels (contrast and anatomy, :data:`CONTRASTS` and
:data:`ANATOMIES`) for the conditional prior.  Draws are deterministic by
``[seed, split, index]``; body/limb slices of the two splits come from disjoint
seed streams (each procedural slice is its own subject).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mri_score.data.body import BODY_FAMILIES, body_slice
from mri_score.data.corpus import ANATOMIES, CONTRASTS, FAMILIES, SPLITS, SliceInfo, SyntheticBrainCorpus
from mri_score.errors import InputError


class MixedCorpus:
    """Brain, body and limb slices in given proportions, each with its labels.

    Parameters
    ----------
    split : {"train", "test"}
    anatomy_weights : mapping of str to float
        Relative frequency of each anatomy (keys from :data:`ANATOMIES`).
    families : sequence of str
        Brain contrast families (:data:`corpus.FAMILIES`).
    body_families : sequence of str
        Body/limb contrast families (:data:`body.BODY_FAMILIES`).
    seed : int
    sizes : sequence of int
        Matrix sizes (``H`` and ``W`` drawn independently unless ``square``).
    pixel_mm : (float, float)
        In-plane pixel size range (mm), drawn log-uniformly so that 0.5 and 3 mm are equally represented.
    subjects : int
        Brain subjects in the split.
    """

    def __init__(
        self,
        split: str = "train",
        anatomy_weights: Mapping[str, float] | None = None,
        families: Sequence[str] = FAMILIES,
        body_families: Sequence[str] = BODY_FAMILIES,
        seed: int = 0,
        sizes: Sequence[int] = (128, 160, 192, 256, 320),
        pixel_mm: tuple[float, float] = (0.5, 3.0),
        subjects: int = 40,
        square: bool = False,
    ) -> None:
        weights = dict(anatomy_weights or {"brain": 0.6, "body": 0.2, "limb": 0.2})
        bad = [a for a in weights if a not in ANATOMIES]
        if bad or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
            raise InputError(f"anatomy_weights must map {', '.join(ANATOMIES)} to non-negative weights, got {weights}")
        badf = [f for f in body_families if f not in BODY_FAMILIES]
        if badf or not body_families:
            raise InputError(f"unknown body families {badf}; choose from {', '.join(BODY_FAMILIES)}")
        self.split = split
        self.seed = int(seed)
        self.anatomies = tuple(a for a in ANATOMIES if weights.get(a, 0) > 0)
        p = np.array([weights[a] for a in self.anatomies], dtype=np.float64)
        self.p = p / p.sum()
        self.body_families = tuple(body_families)
        self.pixel_mm = (float(pixel_mm[0]), float(pixel_mm[1]))
        self.sizes = tuple(int(s) for s in sizes)
        self.square = square
        self.brain = SyntheticBrainCorpus(split, families=families, seed=seed, sizes=sizes, pixel_mm=pixel_mm,
                                          square=square, split_by="subject", subjects=subjects)

    def generate(self, index: int, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, SliceInfo]:
        """Slice ``index``: complex64 ``(H, W)`` and its :class:`SliceInfo` (``anatomy``, ``contrast``)."""
        rng = np.random.default_rng([self.seed, 20 + SPLITS[self.split], int(index)])
        anatomy = self.anatomies[int(rng.choice(len(self.anatomies), p=self.p))]
        if anatomy == "brain":
            return self.brain.generate(index, shape=shape)
        family = self.body_families[int(rng.integers(len(self.body_families)))]
        if shape is None:
            h = int(rng.choice(self.sizes))
            w = h if self.square else int(rng.choice(self.sizes))
        else:
            h, w = shape
        pix = float(np.exp(rng.uniform(np.log(self.pixel_mm[0]), np.log(self.pixel_mm[1]))))
        img = body_slice(rng, anatomy, (h, w), pix, family)
        return img, SliceInfo(family, "axial", 0.0, pix, (), None, anatomy)

    def labels(self, info: SliceInfo) -> tuple[int, int]:
        """``(contrast, anatomy)`` label indices of a slice."""
        return CONTRASTS.index(info.contrast), ANATOMIES.index(info.anatomy)
