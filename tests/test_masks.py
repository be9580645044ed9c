import numpy as np
import pytest
import torch

from operators import (
    EquispacedMaskFractionFunc,
    EquiSpacedMaskFunc,
    PoissonMaskFunc,
    RandomMaskFunc,
    create_mask_for_mask_type,
    seed_from_filename,
)


def centre_block(num_cols, cf):
    n = round(num_cols * cf)
    pad = (num_cols - n + 1) // 2
    return n, pad


@pytest.mark.parametrize("num_cols", [368, 372, 320, 97])
@pytest.mark.parametrize("func_cls", [RandomMaskFunc, EquiSpacedMaskFunc, EquispacedMaskFractionFunc])
def test_centre_block_position_and_width(func_cls, num_cols):
    func = func_cls([0.08], [4], seed=0)
    mask, num_low = func((2, 640, num_cols), seed=1)
    n, pad = centre_block(num_cols, 0.08)
    assert num_low == n
    assert mask.shape == (1, 1, num_cols) and mask.dtype == torch.float32
    m = mask.reshape(-1).numpy()
    assert m[pad : pad + n].all()


def test_equispaced_formula_and_offset():
    func = EquiSpacedMaskFunc([0.08], [4], seed=0)
    mask, n = func((1, 368), offset=2)
    m = mask.reshape(-1).numpy()
    expected = np.zeros(368, dtype=np.float32)
    expected[2::4] = 1
    nn, pad = centre_block(368, 0.08)
    expected[pad : pad + nn] = 1
    assert np.array_equal(m, expected)


def test_equispaced_fraction_samples_one_over_r():
    for accel in (4, 8):
        func = EquispacedMaskFractionFunc([0.08 if accel == 4 else 0.04], [accel], seed=0)
        mask, n = func((1, 368), seed=3)
        frac = float(mask.sum()) / 368
        assert abs(frac - 1 / accel) < 0.02


def test_random_mask_acceleration_and_formula():
    fracs = []
    for s in range(50):
        mask, _ = RandomMaskFunc([0.08], [4])((1, 368), seed=s)
        fracs.append(float(mask.sum()) / 368)
    assert abs(np.mean(fracs) - 0.25) < 0.01
    # the same draw by fastMRI's formula: RandomState(seed), one uniform per column
    rng = np.random.RandomState(7)
    rng.randint(1)  # choose_acceleration with a single option
    prob = (368 / 4 - 29) / (368 - 29)
    expected = rng.uniform(size=368) < prob
    n, pad = centre_block(368, 0.08)
    expected[pad : pad + n] = True
    mask, _ = RandomMaskFunc([0.08], [4])((1, 368), seed=7)
    assert np.array_equal(mask.reshape(-1).numpy().astype(bool), expected)


def test_seeding_is_reproducible_and_per_file():
    func = RandomMaskFunc([0.08], [4], seed=0)
    a, _ = func((1, 320), seed=seed_from_filename("file1000001.h5"))
    b, _ = func((1, 320), seed=seed_from_filename("file1000001.h5"))
    c, _ = func((1, 320), seed=seed_from_filename("file1000002.h5"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert seed_from_filename("ab") == (97, 98)
    # a per-call seed leaves the function's own stream untouched
    f1, f2 = RandomMaskFunc([0.08], [4], seed=5), RandomMaskFunc([0.08], [4], seed=5)
    f1((1, 320), seed=123)
    assert torch.equal(f1((1, 320))[0], f2((1, 320))[0])


def test_multiple_accelerations_choose_pairs():
    func = EquiSpacedMaskFunc([0.08, 0.04], [4, 8], seed=0)
    seen = set()
    for s in range(20):
        _, n = func((1, 320), seed=s)
        seen.add(n)
    assert seen == {round(320 * 0.08), round(320 * 0.04)}


def test_poisson_mask_2d():
    func = PoissonMaskFunc([6], calib_size=16, seed=0)
    mask, calib = func((4, 96, 96), seed=1)
    assert mask.shape == (1, 96, 96) and calib == 16
    m = mask[0].numpy()
    assert m[40:56, 40:56].all()
    assert 3.5 < m.size / m.sum() < 8.5
    mask2, _ = func((4, 96, 96), seed=1)
    assert torch.equal(mask, mask2)


def test_mask_argument_errors():
    with pytest.raises(ValueError):
        RandomMaskFunc([0.08, 0.04], [4])
    with pytest.raises(ValueError):
        RandomMaskFunc([1.5], [4])
    with pytest.raises(ValueError):
        create_mask_for_mask_type("spiral", [0.08], [4])


def test_poisson_unreachable_acceleration_is_a_clear_error():
    with pytest.raises(ValueError, match="no Poisson-disc mask reaches"):
        PoissonMaskFunc([8], calib_size=26, seed=0)((96, 40))


def test_equispaced_refuses_a_fractional_acceleration():
    from operators.errors import OperatorInputError
    from operators.masks import EquispacedMaskFractionFunc, EquiSpacedMaskFunc

    with pytest.raises(OperatorInputError, match="integer acceleration, got 2.5"):
        EquiSpacedMaskFunc([0.08], [4, 2.5], allow_any_combination=True)
    EquiSpacedMaskFunc([0.08], [4.0])  # an integer-valued float is fine
    EquispacedMaskFractionFunc([0.08], [2.5])  # the fraction variant reaches fractional R
