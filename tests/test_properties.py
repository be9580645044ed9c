"""Property-based tests (hypothesis) over shapes, dtypes and values of the public operators and I/O."""

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mri_score.errors import InputError
from mri_score.fastmri_io import read_fastmri
from operators import EquiSpacedMaskFunc, RandomMaskFunc, Sense, check_adjoint, conjugate_gradient, fft2c, ifft2c

dims = st.integers(min_value=2, max_value=12)


def crandn(shape, seed, dtype=torch.complex64):
    g = torch.Generator().manual_seed(seed)
    rd = torch.float32 if dtype == torch.complex64 else torch.float64
    return torch.complex(torch.randn(shape, generator=g, dtype=rd), torch.randn(shape, generator=g, dtype=rd))


@settings(max_examples=25, deadline=None)
@given(h=dims, w=dims, batch=st.integers(0, 2), seed=st.integers(0, 10_000),
       dtype=st.sampled_from([torch.complex64, torch.complex128]))
def test_fft_round_trip_and_norm_any_shape(h, w, batch, seed, dtype):
    x = crandn((batch + 1,) * batch + (h, w), seed, dtype)
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    assert torch.allclose(ifft2c(fft2c(x)), x, atol=tol * 10)
    assert torch.allclose(torch.linalg.vector_norm(fft2c(x)), torch.linalg.vector_norm(x), rtol=tol * 10)


@settings(max_examples=25, deadline=None)
@given(h=dims, w=dims, coils=st.integers(1, 5), seed=st.integers(0, 10_000), p=st.floats(0.1, 1.0))
def test_sense_adjoint_any_shape(h, w, coils, seed, p):
    maps = crandn((coils, h, w), seed)
    mask = (torch.rand(w, generator=torch.Generator().manual_seed(seed)) < p).float()
    A = Sense(maps, mask)
    assert check_adjoint(A, crandn((h, w), seed + 1), crandn((coils, h, w), seed + 2)) < 1e-4


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 10), lam=st.floats(0.01, 10.0), seed=st.integers(0, 10_000))
def test_cg_residual_decreases_to_tolerance(n, lam, seed):
    maps = crandn((3, n, n), seed, torch.complex128)
    A = Sense(maps, torch.ones(n))
    b = crandn((n, n), seed + 1, torch.complex128)
    res = conjugate_gradient(A.gram, b, lam=lam, max_iter=200, tol=1e-9)
    assert torch.linalg.vector_norm(A.gram(res.x) + lam * res.x - b) <= 1e-7 * torch.linalg.vector_norm(b)


@settings(max_examples=30, deadline=None)
@given(w=st.integers(16, 400), accel=st.sampled_from([2, 4, 8]), seed=st.integers(0, 10_000),
       cls=st.sampled_from([RandomMaskFunc, EquiSpacedMaskFunc]))
def test_masks_always_keep_centre_and_are_binary(w, accel, seed, cls):
    mask, n = cls([0.08], [accel])((2, w), seed=seed)
    m = mask.reshape(-1).numpy()
    assert set(np.unique(m)) <= {0.0, 1.0} and m.shape == (w,)
    pad = (w - n + 1) // 2
    assert m[pad : pad + n].all()


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=5),
       kind=st.sampled_from(["complex64", "float32", "int16", "complex128"]),
       poison=st.sampled_from([None, "nan", "inf"]))
def test_reader_accepts_valid_and_rejects_invalid(tmp_path_factory, shape, kind, poison):
    path = tmp_path_factory.mktemp("h") / "f.h5"
    rng = np.random.default_rng(0)
    data = rng.standard_normal(shape) + (1j * rng.standard_normal(shape) if kind.startswith("complex") else 0)
    data = data.astype(kind)
    if poison and kind.startswith(("complex", "float")):
        data.flat[0] = np.nan if poison == "nan" else np.inf
    with h5py.File(path, "w") as hf:
        hf["kspace"] = data
    valid = kind.startswith("complex") and len(shape) in (3, 4) and not poison
    if valid:
        vol = read_fastmri(path, require_header=False)
        assert vol.kspace.dtype == np.complex64 and vol.kspace.ndim == 4
    else:
        with pytest.raises(InputError) as info:
            read_fastmri(path, require_header=False)
        assert str(path) in str(info.value)
