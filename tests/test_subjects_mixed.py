"""Subject-level split (voxel exclusion), procedural body/limb slices, labels and the conditional prior."""

import numpy as np
import pytest
import torch

from mri_score.data.body import BODY_FAMILIES, body_slice
from mri_score.data.corpus import (
    ANATOMIES,
    CONTRASTS,
    HEMI_GUARD,
    MIDLINE,
    SyntheticBrainCorpus,
    mirrored_hemisphere,
)
from mri_score.data.datasets import mixed_pool
from mri_score.data.mixed import MixedCorpus
from mri_score.network import EDMDenoiser, NetworkConfig
from mri_score.training import drop_labels


@pytest.mark.parametrize("side", ["left", "right"])
def test_hemisphere_volume_reads_no_voxel_of_the_other_side(side):
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((197, 8, 6)).astype(np.float32)
    out = mirrored_hemisphere(vol, side)
    # perturb every voxel the other split may read (and the guard band): the output must not change
    other = vol.copy()
    if side == "right":
        other[: MIDLINE + HEMI_GUARD] = 1e6
    else:
        other[MIDLINE - HEMI_GUARD + 1:] = 1e6
    assert np.array_equal(mirrored_hemisphere(other, side), out)
    # and it does depend on its own side, and is symmetric
    assert np.array_equal(out, out[::-1])
    assert not np.array_equal(mirrored_hemisphere(vol * 2, side), out)


def test_train_and_test_hemispheres_are_disjoint_voxel_sets():
    idx = np.arange(197, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    train_vox = set(mirrored_hemisphere(idx, "right")[:, 0, 0].astype(int).tolist())
    test_vox = set(mirrored_hemisphere(idx, "left")[:, 0, 0].astype(int).tolist())
    assert train_vox and test_vox and not train_vox & test_vox
    assert min(train_vox) - max(test_vox) == 2 * HEMI_GUARD


def test_subject_split_slices_are_deterministic_and_subjects_differ():
    c = SyntheticBrainCorpus("train", split_by="subject", subjects=5, seed=1)
    a, ia = c.generate(3, shape=(64, 64))
    b, ib = c.generate(3, shape=(64, 64))
    assert np.array_equal(a, b) and ia.subject == ib.subject == c.subject_of(3)
    # the same slice geometry through another subject's anatomy differs
    other = (ia.subject + 1) % 5
    assert not np.allclose(c.generate(3, shape=(64, 64), subject=other)[0], a)
    assert {c.subject_of(i) for i in range(40)} <= set(range(5))
    with pytest.raises(ValueError):
        c.generate(0, subject=5)
    te = SyntheticBrainCorpus("test", split_by="subject", subjects=5, seed=1)
    assert not np.allclose(te.generate(3, shape=(64, 64))[0], a)


@pytest.mark.parametrize("kind", ["body", "limb"])
@pytest.mark.parametrize("family", BODY_FAMILIES)
def test_body_slices_finite_nonempty_and_seeded(kind, family):
    pix = 6.0 if kind == "body" else 3.0  # a field of view that holds the whole cross-section
    img = body_slice(np.random.default_rng([4, 5]), kind, (72, 64), pix, family)
    again = body_slice(np.random.default_rng([4, 5]), kind, (72, 64), pix, family)
    assert img.shape == (72, 64) and img.dtype == np.complex64
    assert np.isfinite(img).all() and np.array_equal(img, again)
    mag = np.abs(img)
    assert mag.max() > 0.05 and (mag < 0.01 * mag.max()).mean() > 0.02  # air around the object


def test_fat_suppression_darkens_fat():
    # same geometry (same draws), fat-bright vs fat-suppressed: the subcutaneous ring is dark when suppressed
    t1 = np.abs(body_slice(np.random.default_rng(9), "limb", (96, 96), 1.5, "t1"))
    fs = np.abs(body_slice(np.random.default_rng(9), "limb", (96, 96), 1.5, "fatsat"))
    assert t1.max() > 0 and np.percentile(t1, 95) > 2 * np.percentile(fs[t1 > 0.5 * t1.max()], 50)


def test_mixed_corpus_labels_cover_anatomies_and_contrasts():
    c = MixedCorpus("train", seed=0, sizes=(64,), subjects=3)
    labels = {c.labels(c.generate(i)[1]) for i in range(30)}
    assert {ANATOMIES[a] for _, a in labels} == set(ANATOMIES)
    assert all(0 <= k < len(CONTRASTS) for k, _ in labels)
    with pytest.raises(ValueError):
        MixedCorpus(anatomy_weights={"foot": 1.0})


def test_mixed_pool_returns_labels_with_batches():
    pool = mixed_pool(6, 32, workers=1, seed=0, sizes=(48,), subjects=2)
    x, lab = pool.batch_labelled(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 2, 32, 32) and lab.shape == (4, 2) and lab.dtype == torch.int64
    assert torch.equal(pool.batch(4, torch.Generator().manual_seed(0)), x)


def test_conditional_network_starts_equal_to_unconditional_and_null_label_is_unconditional():
    torch.manual_seed(0)
    base = NetworkConfig(base_channels=8, channel_mult=(1, 2), emb_dim=16, groups=4)
    uncond = EDMDenoiser(base)
    with torch.no_grad():  # a "trained" network: no zero-initialised layer left
        for prm in uncond.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    cond = EDMDenoiser(NetworkConfig(**{**base.to_dict(), "label_classes": (6, 3)}))
    state = {**cond.state_dict(), **uncond.state_dict()}
    cond.load_state_dict(state)
    x = torch.randn(2, 2, 16, 16)
    lab = torch.tensor([[0, 1], [3, 2]])
    assert torch.allclose(cond(x, 0.5, lab), uncond(x, 0.5), atol=1e-6)  # zero-initialised label tables
    with torch.no_grad():
        for t in cond.net.label_embeds:
            t.weight.normal_()
    assert not torch.allclose(cond(x, 0.5, lab), uncond(x, 0.5), atol=1e-4)
    assert torch.allclose(cond(x, 0.5), cond(x, 0.5, cond.null_labels(2)))
    with pytest.raises(ValueError):
        uncond(x, 0.5, lab)


def test_label_dropout_rates():
    labels = torch.zeros(20000, 2, dtype=torch.long)
    out = drop_labels(labels, (6, 3), 0.2, 0.2, torch.Generator().manual_seed(0))
    null = out == torch.tensor([6, 3])
    assert abs(null.all(1).float().mean() - (0.2 + 0.8 * 0.04)) < 0.015
    assert abs(null[:, 0].float().mean() - (0.2 + 0.8 * 0.2)) < 0.015
    assert torch.equal(out[~null], labels[~null])


def test_real_eval_set_loads_every_volume_with_object_slices():
    from mri_score.data.realset import REAL_VOLUMES, load_real_volume

    for name in REAL_VOLUMES:
        vol = load_real_volume(name)
        assert vol.images.ndim == 3 and vol.images.dtype == np.complex64 and len(vol.images) >= 5
        assert (vol.images.imag == 0).all() and vol.images.real.min() >= 0 and min(vol.pixel_mm) > 0
    assert load_real_volume("nibabel_example4d").images.shape == (24, 128, 96)
    with pytest.raises(ValueError):
        load_real_volume("brainweb")
