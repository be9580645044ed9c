"""The split code reads only its own hemisphere's voxels, end to end, on a fake ASYMMETRIC template.

This checks the code path, not the data: the shipped ICBM152 2009a template is left-right symmetric
(``tests/test_template_symmetry.py``), so on it the two hemispheres are the same anatomy and the synthetic test
subjects are in-distribution (the protocol labels them so).

``test_subjects_mixed.py`` checks :func:`mirrored_hemisphere` on its own.  Here the whole
generator is checked by voxel: the template loader is handed a small synthetic template, every
voxel one split may not read is overwritten, and that split's slices must come out bit-identical,
through every orientation, tilt, in-plane deformation and subject warp, the tissue maps, residual
and distance shells derived from the template, and through the entry points the project uses:
:func:`mri_score.simulation.subject_volume` (the protocol's test and tuning subjects) and the
``mixed`` training source's :class:`mri_score.data.mixed.MixedCorpus`.  The same overwrite must
change the other split's slices, so the check is not vacuous.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from mri_score.data.corpus import HEMI_GUARD, MIDLINE, SyntheticBrainCorpus, load_template
from mri_score.data.mixed import MixedCorpus
from mri_score.simulation import subject_volume

SHAPE = (197, 48, 40)  # the template's x extent (MIDLINE = 98 is its mid-sagittal plane), small y and z
SIZE = (32, 32)
INDICES = range(8)  # all three orientations in both splits


class _Image:
    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def get_fdata(self, dtype=np.float64) -> np.ndarray:
        return self.data.astype(dtype)


def fake_template(seed: int) -> dict[str, np.ndarray]:
    """T1, GM, WM and brain mask volumes in the template's ranges ([0, 1]): an ellipsoidal 'brain' of
    smooth random WM/GM patches (a distinct texture per seed)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    mask = (((x - MIDLINE) / 60) ** 2 + ((y - 24) / 19) ** 2 + ((z - 20) / 15) ** 2 <= 1).astype(np.float64)
    wm = ndimage.gaussian_filter((ndimage.gaussian_filter(rng.random(SHAPE), 3.0) > 0.5).astype(float), 1.0)
    wm *= mask
    gm = (1 - wm) * mask * (ndimage.gaussian_filter(rng.random(SHAPE), 2.0) > 0.45)
    t1 = (0.85 * wm + 0.6 * gm + 0.2 * (mask - wm - gm).clip(0, 1)) * (1 + 0.05 * rng.standard_normal(SHAPE))
    return {"t1": t1.clip(0, 1) * mask, "gm": gm, "wm": wm, "mask": mask}


def overwrite(vols: dict[str, np.ndarray], lo: int, hi: int, seed: int) -> dict[str, np.ndarray]:
    """``vols`` with every voxel ``lo ≤ x < hi`` replaced (values and brain mask alike)."""
    rng = np.random.default_rng(seed)
    out = {k: v.copy() for k, v in vols.items()}
    for v in out.values():
        v[lo:hi] = rng.random(v[lo:hi].shape)
    out["mask"][lo:hi] = out["mask"][lo:hi] > 0.5
    return out


@pytest.fixture
def template(monkeypatch):
    """Point the template loader (``from nilearn import datasets``) at ``holder["vols"]``; the loader's
    cache is cleared around each use.  A stand-in module, so the test never imports nilearn."""
    holder: dict[str, dict[str, np.ndarray]] = {}
    datasets = types.ModuleType("nilearn.datasets")
    for name, key in (("load_mni152_template", "t1"), ("load_mni152_gm_template", "gm"),
                      ("load_mni152_wm_template", "wm"), ("load_mni152_brain_mask", "mask")):
        setattr(datasets, name, lambda resolution=1, _k=key: _Image(holder["vols"][_k]))
    nilearn = types.ModuleType("nilearn")
    nilearn.datasets = datasets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nilearn", nilearn)
    monkeypatch.setitem(sys.modules, "nilearn.datasets", datasets)

    def use(vols: dict[str, np.ndarray]) -> None:
        holder["vols"] = vols
        load_template.cache_clear()

    yield use
    load_template.cache_clear()


def split_slices(split: str) -> list[np.ndarray]:
    """The slices each entry point makes of ``split``: corpus slices of 3 subjects, a protocol volume
    (test) or the mixed training source's brain slices (train)."""
    corpus = SyntheticBrainCorpus(split, split_by="subject", subjects=3, seed=0)
    made = [corpus.generate(i, shape=SIZE) for i in INDICES]
    assert {info.orientation for _, info in made} == {"axial", "coronal", "sagittal"}
    out = [img for img, _ in made]
    if split == "test":
        out += list(subject_volume("test", 1, 3, SIZE, "t2", 0, first=500, subjects=3))
    else:
        mixed = MixedCorpus("train", anatomy_weights={"brain": 1.0}, sizes=SIZE, subjects=3, seed=0)
        out += [mixed.generate(i)[0] for i in range(3)]
    return out


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Every slice bit-identical."""
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def all_differ(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """No slice unchanged."""
    return not any(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_no_voxel_of_the_training_hemisphere_reaches_a_test_slice_and_vice_versa(template):
    base = fake_template(0)
    template(base)
    test0, train0 = split_slices("test"), split_slices("train")
    assert all((np.abs(s) > 0.05).mean() > 0.5 for s in test0 + train0)  # the planes cut through the fake head

    # every voxel the test split may not read: the right hemisphere and the guard band around the midline
    template(overwrite(base, MIDLINE - HEMI_GUARD + 1, SHAPE[0], seed=1))
    assert same(split_slices("test"), test0)
    assert all_differ(split_slices("train"), train0)  # the overwrite is seen where it may be

    # every voxel the train split may not read: the left hemisphere and the guard band
    template(overwrite(base, 0, MIDLINE + HEMI_GUARD, seed=2))
    assert same(split_slices("train"), train0)
    assert all_differ(split_slices("test"), test0)
