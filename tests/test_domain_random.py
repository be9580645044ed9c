"""Domain-randomised generator: determinism, held-out family, interface of the training pools, anatomy properties."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from mri_score.data import domain_random as dr
from mri_score.data.corpus import ANATOMIES, CONTRASTS
from mri_score.data.datasets import SlicePool, _scaled
from mri_score.data.domain_random import FAMILIES, LABELS, DomainRandomPool, render_slice
from mri_score.errors import InputError
from mri_score.scaling import TRAIN_CENTER_FRACTION, image_scale


def _rng(*key):
    return np.random.default_rng(list(key))


@pytest.mark.parametrize("family", FAMILIES)
def test_render_is_deterministic_by_seed_and_well_formed(family):
    a_img, a_pix, a_lab = render_slice(_rng(3, 1), family, (64, 80))
    b_img, b_pix, b_lab = render_slice(_rng(3, 1), family, (64, 80))
    assert np.array_equal(a_img, b_img) and a_pix == b_pix and np.array_equal(a_lab, b_lab)
    assert a_img.shape == (64, 80) and a_img.dtype == np.complex64
    assert a_lab.shape == (64, 80) and np.issubdtype(a_lab.dtype, np.integer)
    assert np.isfinite(a_img).all()
    assert 0 <= a_lab.min() and a_lab.max() < len(LABELS[family])
    assert np.percentile(np.abs(a_img), 99) == pytest.approx(1.0, rel=0.05)  # magnitude roughly in [0, 1]
    assert np.abs(a_img.imag).max() > 0  # complex: a smooth random phase


@pytest.mark.parametrize("family", FAMILIES)
def test_different_seeds_give_different_anatomy(family):
    labs = [render_slice(_rng(5, i), family, (64, 64))[2] for i in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert (labs[i] != labs[j]).mean() > 0.1


def test_pool_seed_changes_the_stream_and_gen_fixes_it():
    x1 = DomainRandomPool(size=32, seed=0).batch(4, torch.Generator().manual_seed(1))
    x2 = DomainRandomPool(size=32, seed=0).batch(4, torch.Generator().manual_seed(1))
    x3 = DomainRandomPool(size=32, seed=1).batch(4, torch.Generator().manual_seed(1))
    x4 = DomainRandomPool(size=32, seed=0, split="test").batch(4, torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2)
    assert not torch.allclose(x1, x3) and not torch.allclose(x1, x4)


def test_held_out_family_is_never_rendered(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the held-out family was rendered")

    monkeypatch.setitem(dr._LABEL_MAKERS, "joint", boom)
    pool = DomainRandomPool(size=32, held_out_family="joint", seed=2)
    assert pool.families == ("brain", "body")
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        _, labels = pool.batch_labelled(8, gen)
        assert ANATOMIES.index("limb") not in labels[:, 1].tolist()
    for i in range(6):
        assert pool.generate(i)[3] != "joint"


def test_held_out_pool_draws_only_the_held_out_family_from_the_test_stream():
    test_pool = DomainRandomPool(size=32, held_out_family="body").held_out_pool()
    assert test_pool.families == ("body",) and test_pool.split == "test"
    _, labels = test_pool.batch_labelled(4, torch.Generator().manual_seed(0))
    assert labels[:, 1].tolist() == [ANATOMIES.index("body")] * 4
    with pytest.raises(InputError):
        DomainRandomPool(families=("brain",), held_out_family="brain")
    with pytest.raises(InputError):
        DomainRandomPool(families=("liver",))
    with pytest.raises(InputError):
        DomainRandomPool(size=64, render_size=48)


def test_batch_matches_the_slice_pool_interface_and_normalisation():
    gen = torch.Generator().manual_seed(0)
    pool = DomainRandomPool(size=48, seed=0)  # no crop: each item is a whole scaled slice (up to flips / conjugation)
    x, labels = pool.batch_labelled(6, gen)
    ref = SlicePool([_scaled(render_slice(_rng(0, i), "body", (48, 48))[0]) for i in range(2)], 48)
    y = ref.batch(6, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (6, 2, 48, 48) and x.dtype == y.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (6, 2)
    assert set(labels[:, 0].tolist()) == {CONTRASTS.index("other")}
    assert torch.isfinite(x).all()
    # the scaling of SlicePool: every whole slice is divided by its own image_scale (then flipped / conjugated)
    full, crop, families = pool.scaled_slices(6, torch.Generator().manual_seed(0))
    assert full.dtype == torch.complex64 and full.shape == (6, 48, 48) and crop == (48, 48)
    assert torch.allclose(image_scale(full, TRAIN_CENTER_FRACTION), torch.ones(6), rtol=1e-4)
    mags = torch.complex(x[:, 0], x[:, 1]).abs().flatten(1).sort(1).values
    assert torch.allclose(mags, full.abs().flatten(1).sort(1).values)
    assert labels[:, 1].tolist() == [ANATOMIES.index(dr.ANATOMY_OF_FAMILY[f]) for f in families]
    # crops of larger rendered slices, and a batch-wise drawn crop size
    crops = DomainRandomPool(size=32, render_size=64).batch(3, gen)
    assert crops.shape == (3, 2, 32, 32)
    varied = DomainRandomPool(size=[32, 48], render_size=[48, 64])
    assert {varied.batch(2, gen).shape[-1] for _ in range(6)} <= {32, 48}


def test_forked_workers_give_the_same_batch():
    pool = DomainRandomPool(size=32, seed=4, workers=2)
    try:
        a = pool.batch(4, torch.Generator().manual_seed(7))
    finally:
        pool.close()
    b = DomainRandomPool(size=32, seed=4).batch(4, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_pixel_size_range_is_covered():
    pix = np.array([render_slice(_rng(9, i), FAMILIES[i % 3], (32, 32))[1] for i in range(90)])
    assert pix.min() >= 0.5 and pix.max() <= 3.0
    assert pix.min() < 0.65 and pix.max() > 2.5
    assert 0.2 < (pix < 1.22).mean() < 0.8  # log-uniform: the geometric mean splits the draws


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_reach_every_tissue_class(family):
    seen: set[int] = set()
    for i in range(40):
        seen |= set(np.unique(render_slice(_rng(11, i), family, (96, 96))[2]).tolist())
    missing = [LABELS[family][k] for k in range(len(LABELS[family])) if k not in seen]
    assert not missing


def _mirror_mismatch(lab: np.ndarray) -> float:
    """Smallest label disagreement between a map and its reflection about any line through the foreground centroid."""
    fg = lab > 0
    c = np.array(ndimage.center_of_mass(fg))
    best = 1.0
    for ang in np.deg2rad(np.arange(0, 180, 2)):
        d = np.array([np.cos(ang), np.sin(ang)])
        refl = 2 * np.outer(d, d) - np.eye(2)
        mirrored = ndimage.affine_transform(lab, refl, offset=c - refl @ c, order=0)
        region = fg | (mirrored > 0)
        best = min(best, float((mirrored != lab)[region].mean()))
    return best


def test_brain_slices_are_not_left_right_symmetric():
    vol, _ = dr.brain_volume()
    z = vol.shape[2] // 2 + 10
    gm, wm, mask = (vol[:, :, z, c].astype(np.float32) / 255 for c in range(3))
    control = np.where(mask >= 0.5, np.argmax(np.stack([np.clip(mask - gm - wm, 0, None), gm, wm]), 0) + 1, 0)
    assert _mirror_mismatch(control) < 0.03  # the template itself is symmetric: the measure sees it
    scores = []
    for i in range(6):
        lab = render_slice(_rng(13, i), "brain", (96, 96), pixel_mm=(1.5, 3.0))[2]  # the whole head in view
        scores.append(_mirror_mismatch(lab))
    assert min(scores) > 0.08, scores


def test_training_config_selects_the_domain_random_pool_with_its_held_out_family():
    from mri_score.config import load_config
    from mri_score.train_config import validate_config
    from mri_score.training import build_source

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = validate_config(load_config(root / "configs" / "prior_domain_random.yaml"))
    cfg["data"].update(crop=32, render_size=[48], num_workers=0)
    pool = build_source(cfg)
    assert isinstance(pool, DomainRandomPool) and pool.held_out_family == "joint"
    x = pool.batch(2, torch.Generator().manual_seed(0))
    assert tuple(x.shape) == (2, 2, 32, 32) and torch.isfinite(x).all()
