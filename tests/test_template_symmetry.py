"""The ICBM152 template the synthetic corpus is built from is exactly left-right symmetric.

So the subject-level corpus split (:mod:`mri_score.data.corpus`: the train split reads the right
hemisphere mirrored into a whole head, the test split the left one) is **not** a subject split:
both hemispheres hold the same voxel values, and the two mirrored templates are the same array.
Held-out "test subjects" are the training anatomy under other random deformations; a test on them
measures generalisation across deformations, not across people.
"""

import numpy as np
import pytest

pytest.importorskip("nilearn")

from mri_score.data.corpus import HEMI_GUARD, MIDLINE, PAD, load_template, mirrored_hemisphere  # noqa: E402


@pytest.fixture(scope="module")
def template():
    return load_template()  # the project's loader: the whole 1 mm template, padded by PAD voxels


def test_template_midline_is_the_centre_of_axis_0(template):
    assert template.t1.shape[0] == 2 * (MIDLINE + PAD) + 1


@pytest.mark.parametrize("field", ["t1", "gm", "wm", "csf"])
def test_template_is_left_right_symmetric(template, field):
    vol = getattr(template, field)
    mirrored = vol[::-1]  # x -> 2 · (MIDLINE + PAD) - x: reflection about the mid-sagittal plane
    assert np.abs(vol).max() > 0
    np.testing.assert_array_equal(vol, mirrored)


def test_hemisphere_split_gives_train_and_test_the_same_anatomy(template):
    t1 = template.t1[PAD:-PAD, PAD:-PAD, PAD:-PAD]  # unpadded, as load_template(half) mirrors it
    left = mirrored_hemisphere(t1, "left", MIDLINE, HEMI_GUARD)  # what the test split reads
    right = mirrored_hemisphere(t1, "right", MIDLINE, HEMI_GUARD)  # what the train split reads
    assert left.shape == right.shape
    np.testing.assert_array_equal(left, right)
