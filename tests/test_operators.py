import numpy as np
import pytest
import torch

import operators
from operators import (
    FFT2C,
    CoilSensitivities,
    Diagonal,
    KspaceCrop,
    LinearOperator,
    Sense,
    check_adjoint,
    conjugate_gradient,
    fft2c,
    ifft2c,
)


def crandn(*shape, dtype=torch.complex64, seed=0):
    g = torch.Generator().manual_seed(seed)
    real_dtype = torch.float32 if dtype == torch.complex64 else torch.float64
    return torch.complex(torch.randn(shape, generator=g, dtype=real_dtype), torch.randn(shape, generator=g, dtype=real_dtype))


def test_fft2c_matches_fastmri_definition():
    x = crandn(3, 16, 12)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    assert np.allclose(fft2c(x).numpy(), ref, atol=1e-5)
    ref_i = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    assert np.allclose(ifft2c(x).numpy(), ref_i, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 16), (2, 15, 18), (2, 3, 9, 7)])
def test_fft_unitary_and_inverse(shape):
    x = crandn(*shape)
    k = fft2c(x)
    assert torch.allclose(torch.linalg.vector_norm(k), torch.linalg.vector_norm(x), rtol=1e-5)
    assert torch.allclose(ifft2c(k), x, atol=1e-5)


def _maps_mask(coils=4, h=24, w=20, seed=0):
    maps = crandn(coils, h, w, seed=seed)
    mask = (torch.rand(w, generator=torch.Generator().manual_seed(seed)) > 0.5).float()
    return maps, mask


def test_sense_matches_sigpy():
    import sigpy.mri

    maps, mask = _maps_mask(coils=5, h=16, w=18, seed=3)
    x = crandn(16, 18, seed=9)
    ours = Sense(maps, mask)(x).numpy()
    sp = sigpy.mri.linop.Sense(maps.numpy(), weights=np.broadcast_to(mask.numpy(), (5, 16, 18)), coord=None)
    # sigpy's weights multiply by sqrt(weights): identical for a 0/1 mask
    ref = sp * x.numpy()
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-5
    y = crandn(5, 16, 18, seed=10)
    adj_ref = sp.H * y.numpy()
    assert np.linalg.norm(Sense(maps, mask).adjoint(y).numpy() - adj_ref) / np.linalg.norm(adj_ref) < 1e-5


def test_autograd_gradient_equals_analytic_adjoint():
    maps, mask = _maps_mask(seed=4)
    A = Sense(maps.to(torch.complex128), mask)
    x = crandn(24, 20, dtype=torch.complex128, seed=11).requires_grad_(True)
    y = crandn(4, 24, 20, dtype=torch.complex128, seed=12)
    loss = (A(x) - y).abs().pow(2).sum()
    (g,) = torch.autograd.grad(loss, x)
    analytic = 2 * A.adjoint(A(x.detach()) - y)
    assert torch.allclose(g, analytic, atol=1e-10)


def test_gram_and_composition():
    maps, mask = _maps_mask(seed=5)
    A = Sense(maps, mask)
    x = crandn(24, 20, seed=13)
    assert torch.allclose(A.gram(x), A.H(A(x)), atol=1e-4)
    C = FFT2C().H @ FFT2C()
    assert torch.allclose(C(x), x, atol=1e-5)
    assert check_adjoint(FFT2C() * FFT2C(), x, crandn(24, 20, seed=14)) < 1e-5


@pytest.mark.parametrize("size", [(24, 20), (17, 15)])
@pytest.mark.parametrize("kind", ["column", "column_2d", "2d", "none", "batched_2d"])
def test_gram_fast_path_equals_adjoint_of_forward(size, kind):
    """The shift-folded (and, for column masks, W-only) Gram equals AᴴA for even and odd sizes."""
    h, w = size
    g = torch.Generator().manual_seed(3)
    lead = (3,) if kind == "batched_2d" else ()
    maps = crandn(*lead, 4, h, w, dtype=torch.complex128, seed=21)
    masks = {"column": (torch.rand(w, generator=g) < 0.4), "column_2d": (torch.rand(1, w, generator=g) < 0.4),
             "2d": (torch.rand(h, w, generator=g) < 0.4), "none": None,
             "batched_2d": (torch.rand(3, 1, h, w, generator=g) < 0.4)}
    mask = masks[kind]
    A = Sense(maps, None if mask is None else mask.double())
    x = crandn(*(lead or (2,)), h, w, dtype=torch.complex128, seed=22)
    ref = A.adjoint(A(x))
    assert torch.allclose(A.gram(x), ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("fine,measured", [((48, 40), (24, 20)), ((36, 31), (24, 20)), ((25, 17), (17, 15))])
@pytest.mark.parametrize("kind", ["column", "2d", "none", "batched_2d"])
def test_fine_grid_sense_is_crop_of_fine_kspace_and_its_gram_is_exact(fine, measured, kind):
    """Sense(maps_fine, mask, kspace_shape) = M · Crop · F · S_fine; its fast Gram equals AᴴA."""
    h, w = measured
    g = torch.Generator().manual_seed(5)
    lead = (3,) if kind == "batched_2d" else ()
    masks = {"column": (torch.rand(w, generator=g) < 0.4), "2d": (torch.rand(h, w, generator=g) < 0.4), "none": None,
             "batched_2d": (torch.rand(3, 1, h, w, generator=g) < 0.4)}
    mask = None if masks[kind] is None else masks[kind].double()
    maps = crandn(*lead, 4, *fine, dtype=torch.complex128, seed=23)
    A = Sense(maps, mask, kspace_shape=measured)
    assert A.kspace_shape == measured and A.image_shape == fine
    x = crandn(*(lead or (2,)), *fine, dtype=torch.complex128, seed=24)
    ref = operators.crop_kspace(fft2c(maps * x.unsqueeze(-3)), measured) * (1.0 if mask is None else mask)
    assert torch.allclose(A(x), ref, atol=1e-12)
    assert torch.allclose(A.gram(x), A.adjoint(A(x)), atol=1e-12, rtol=1e-10)
    A.update(mask=torch.ones(w, dtype=torch.float64))
    assert torch.allclose(A.gram(x), A.adjoint(A(x)), atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="does not broadcast"):
        A.update(mask=torch.ones(fine[1], dtype=torch.float64))


@pytest.mark.parametrize("fine", [None, (30, 26)])
@pytest.mark.parametrize("kind", ["column", "2d"])
def test_gram_trace_and_sample_count_match_the_dense_operator(fine, kind):
    """tr(AᴴA) in closed form equals Σ_j <e_j, AᴴA e_j>; sample_count counts the masked range entries."""
    h, w = 12, 10
    g = torch.Generator().manual_seed(6)
    mask = (torch.rand(w, generator=g) < 0.5).double() if kind == "column" else (torch.rand(h, w, generator=g) < 0.5).double()
    maps = crandn(3, *(fine or (h, w)), dtype=torch.complex128, seed=25)
    A = Sense(maps, mask, kspace_shape=(h, w) if fine else None)
    n = A.image_shape[0] * A.image_shape[1]
    basis = torch.eye(n, dtype=torch.complex128).reshape(n, *A.image_shape)
    dense = float(torch.einsum("jhw,jhw->", basis.conj(), A.gram(basis)).real)
    assert A.gram_trace() == pytest.approx(dense, rel=1e-9)
    assert A.sample_count() == int(mask.expand(h, w).sum()) * 3


def test_sense_moves_with_module_to():
    maps, mask = _maps_mask()
    A = Sense(maps, mask).to(torch.device("cpu"))
    assert set(A.state_dict()) == {"coils.maps", "sampling.weights"}
    assert {n for n, _ in A.named_buffers()} == {"coils.maps", "sampling.weights", "_gram_maps", "_gram_maps_conj",
                                                 "_gram_mask"}
    assert A.maps is A.coils.maps and A.mask is A.sampling.weights


def test_sense_is_mask_fft_coils_composed():
    maps, mask = _maps_mask(seed=8)
    A = Sense(maps, mask)
    C = Diagonal(mask) @ FFT2C() @ CoilSensitivities(maps)
    x, y = crandn(2, 24, 20, seed=30), crandn(2, 4, 24, 20, seed=31)
    assert torch.equal(A(x), C(x)) and torch.equal(A.adjoint(y), C.adjoint(y))


@pytest.mark.parametrize("kind", ["column", "2d"])
def test_sense_update_refreshes_the_gram_constants(kind):
    """After update(mask=…, maps=…) forward, adjoint and the fast Gram all equal a freshly built operator."""
    h, w = 24, 20
    g = torch.Generator().manual_seed(9)
    new_masks = {"column": (torch.rand(w, generator=g) < 0.5).double(), "2d": (torch.rand(h, w, generator=g) < 0.5).double()}
    maps = crandn(4, h, w, dtype=torch.complex128, seed=40)
    A = Sense(maps, (torch.rand(w, generator=g) < 0.5).double())
    x = crandn(2, h, w, dtype=torch.complex128, seed=41)
    before = A.gram(x)
    new_maps = crandn(4, h, w, dtype=torch.complex128, seed=42)
    A.update(mask=new_masks[kind])
    fresh = Sense(maps, new_masks[kind])
    assert torch.equal(A.gram(x), fresh.gram(x)) and not torch.allclose(A.gram(x), before)
    A.update(maps=new_maps)
    fresh = Sense(new_maps, new_masks[kind])
    assert torch.equal(A(x), fresh(x)) and torch.equal(A.gram(x), fresh.gram(x))
    assert torch.allclose(A.gram(x), A.adjoint(A(x)), atol=1e-12)
    with pytest.raises(ValueError, match="differ in shape"):
        A.update(maps=crandn(3, h, w, dtype=torch.complex128))
    with pytest.raises(ValueError, match="does not broadcast"):
        A.update(mask=torch.ones(w + 1))


def _operator_cases():
    """Every linear operator of the package (and compositions) with a domain and a range sample shape."""
    maps, mask = _maps_mask(seed=11)
    mask2d = (torch.rand(24, 20, generator=torch.Generator().manual_seed(12)) > 0.6).float()
    return {
        "fft2c": (FFT2C(), (2, 24, 20), (2, 24, 20)),
        "fft2c.H": (FFT2C().H, (2, 24, 20), (2, 24, 20)),
        "diagonal_real": (Diagonal(mask), (3, 24, 20), (3, 24, 20)),
        "diagonal_complex": (Diagonal(crandn(24, 20, seed=13)), (2, 24, 20), (2, 24, 20)),
        "coil_sensitivities": (CoilSensitivities(maps), (2, 24, 20), (2, 4, 24, 20)),
        "sense_column": (Sense(maps, mask), (3, 24, 20), (3, 4, 24, 20)),
        "sense_2d": (Sense(maps, mask2d), (24, 20), (4, 24, 20)),
        "sense_full": (Sense(maps), (24, 20), (4, 24, 20)),
        "sense.H": (Sense(maps, mask).H, (4, 24, 20), (24, 20)),
        "composed": (FFT2C() @ CoilSensitivities(maps), (24, 20), (4, 24, 20)),
        "composed_mul": (Diagonal(mask) * FFT2C(), (4, 24, 20), (4, 24, 20)),
        "kspace_crop": (KspaceCrop((11, 10), (24, 20)), (2, 24, 20), (2, 11, 10)),
        "sense_fine_grid_column": (Sense(crandn(4, 48, 40, seed=14), mask, kspace_shape=(24, 20)),
                                   (2, 48, 40), (2, 4, 24, 20)),
        "sense_fine_grid_2d": (Sense(crandn(4, 36, 30, seed=15), mask2d, kspace_shape=(24, 20)), (36, 30),
                               (4, 24, 20)),
    }


@pytest.mark.parametrize("name", list(_operator_cases()))
def test_every_operator_passes_the_adjoint_test(name):
    op, dom, rng = _operator_cases()[name]
    assert check_adjoint(op, crandn(*dom, seed=50), crandn(*rng, seed=51)) < 1e-5


def test_every_linear_operator_class_is_in_the_adjoint_list():
    from operators import grid, linop, sense

    classes = {c for m in (linop, sense, grid) for c in vars(m).values()
               if isinstance(c, type) and issubclass(c, LinearOperator) and c is not LinearOperator}
    tested = set()
    for op, _, _ in _operator_cases().values():
        tested |= {type(m) for m in op.modules()}
    assert classes <= tested, classes - tested


@pytest.mark.cuda
def test_sense_on_cuda_matches_cpu():
    maps, mask = _maps_mask()
    x = crandn(24, 20)
    A = Sense(maps, mask)
    assert torch.allclose(A.to("cuda")(x.cuda()).cpu(), A.cpu()(x), atol=1e-4)
    assert torch.allclose(A.to("cuda").gram(x.cuda()).cpu(), A.cpu().gram(x), atol=1e-4)


def test_cg_solves_known_system_batched():
    maps, mask = _maps_mask(coils=6, seed=6)
    A = Sense(maps.to(torch.complex128), mask)
    x_true = crandn(3, 24, 20, dtype=torch.complex128, seed=15)
    lam = 0.1
    b = A.gram(x_true) + lam * x_true
    res = conjugate_gradient(A.gram, b, lam=lam, max_iter=200, tol=1e-10, batch_dims=1)
    assert torch.allclose(res.x, x_true, atol=1e-7)
    assert res.iterations < 200
    assert (res.relative_residual <= 1e-10).all()


def test_cg_matches_the_textbook_iteration_and_promotes_dtypes():
    maps, mask = _maps_mask(coils=6, seed=8)
    A = Sense(maps, mask)
    b = crandn(2, 24, 20, seed=17)
    x0 = crandn(2, 24, 20, seed=18)

    def textbook(op, b, x, iters):  # out-of-place CG with separate inner products, as before the in-place rewrite
        r = b - op(x)
        p = r.clone()
        rr = (r.conj() * r).sum(dim=(1, 2), keepdim=True).real
        for _ in range(iters):
            ap = op(p)
            alpha = rr / (p.conj() * ap).sum(dim=(1, 2), keepdim=True).real
            x, r = x + alpha * p, r - alpha * ap
            rr_new = (r.conj() * r).sum(dim=(1, 2), keepdim=True).real
            p, rr = r + (rr_new / rr) * p, rr_new
        return x

    op = lambda v: torch.add(v, A.gram(v), alpha=30.0)  # noqa: E731  DDS's data-consistency system
    res = conjugate_gradient(op, b, x0=x0, max_iter=10, tol=0.0, batch_dims=1)
    ref = textbook(op, b, x0.clone(), 10)
    assert torch.allclose(res.x, ref, rtol=1e-5, atol=1e-6)
    assert res.x.dtype == torch.complex64 and not torch.equal(x0, res.x)
    assert torch.equal(x0, crandn(2, 24, 20, seed=18))  # the initial guess is not overwritten
    # a normal operator that promotes (complex128 maps on a complex64 image) solves in complex128
    A128 = Sense(maps.to(torch.complex128), mask)
    wide = conjugate_gradient(A128.gram, b, lam=0.1, max_iter=50, tol=1e-12, batch_dims=1)
    assert wide.x.dtype == torch.complex128
    assert torch.allclose(A128.gram(wide.x) + 0.1 * wide.x, b.to(torch.complex128), atol=1e-8)
    # a complex128 right-hand side with a complex64 guess is not downcast
    both = conjugate_gradient(A128.gram, b.to(torch.complex128), x0=x0, lam=0.1, max_iter=50, tol=1e-12, batch_dims=1)
    assert both.x.dtype == torch.complex128 and torch.allclose(both.x, wide.x, atol=1e-8)


def test_cg_respects_iteration_cap():
    maps, mask = _maps_mask(seed=7)
    A = Sense(maps, mask)
    b = crandn(24, 20, seed=16)
    res = conjugate_gradient(A.gram, b, lam=0.01, max_iter=3, tol=0.0)
    assert res.iterations == 3


def test_bad_operator_input_raises_value_error():
    with pytest.raises(ValueError):
        fft2c(torch.randn(4, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        Sense(crandn(2, 8, 8), torch.ones(7))
    with pytest.raises(ValueError, match="does not match"):
        Sense(crandn(2, 8, 8))(crandn(8, 9))
    with pytest.raises(ValueError):
        Sense(torch.randn(2, 8, 8))
    assert issubclass(operators.OperatorInputError, ValueError)


def test_coil_maps_are_stored_contiguous_whatever_layout_they_come_in():
    g = torch.Generator().manual_seed(3)
    maps = torch.complex(torch.randn(12, 10, 4, generator=g), torch.randn(12, 10, 4, generator=g)).permute(2, 0, 1)
    y = torch.complex(torch.randn(4, 12, 10, generator=g), torch.randn(4, 12, 10, generator=g))
    op = CoilSensitivities(maps)
    assert not maps.is_contiguous() and op.maps.is_contiguous()
    assert torch.equal(op.maps, maps) and torch.allclose(op.adjoint(y), (maps.conj() * y).sum(-3))
    sense = operators.Sense(maps, torch.ones(10))
    sense.update(maps=maps.clone().permute(0, 1, 2) * 1)  # a fresh permuted view through update()
    assert sense.maps.is_contiguous() and torch.equal(sense.maps, maps)
