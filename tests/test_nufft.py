"""The non-Cartesian operator layer: NUFFT (both backends), NonCartesianSense, trajectories and density compensation."""

import math

import numpy as np
import pytest
import torch

import operators.nufft as nufft_module
from operators.fft import fft2c
from operators.linop import check_adjoint
from operators.nufft import NonCartesianSense, NufftPlan, check_coordinates, finufft_available, nufft, nufft_adjoint
from operators.trajectories import GOLDEN_ANGLE_DEG, pipe_menon_density, radial, radial_ramp_density, spiral

BACKENDS = ["torch"] + (["finufft"] if finufft_available() else [])


def crandn(*shape, dtype=torch.complex64, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    return torch.complex(torch.randn(shape, generator=g, dtype=real), torch.randn(shape, generator=g, dtype=real))


def random_coord(m, shape, seed=0):
    rng = np.random.default_rng(seed)
    h, w = shape
    return np.stack([rng.uniform(-h / 2, h / 2, m), rng.uniform(-w / 2, w / 2, m)], axis=-1)


def nudft(x, coord):
    """The exact orthonormal non-uniform DFT ``(..., H, W) -> (..., M)`` (numpy, complex128)."""
    h, w = x.shape[-2:]
    e0 = np.exp(-2j * np.pi * np.outer(coord[:, 0], np.arange(h) - h // 2) / h)
    e1 = np.exp(-2j * np.pi * np.outer(coord[:, 1], np.arange(w) - w // 2) / w)
    return np.einsum("mh,mw,...hw->...m", e0, e1, np.asarray(x, dtype=np.complex128)) / math.sqrt(h * w)


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def smooth_phantom(n):
    """A smooth complex phantom, essentially band-limited to the disc |k| < n/2 (radial's support)."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    img = ((xx / 0.7) ** 2 + (yy / 0.85) ** 2 < 1) + 0.5 * (((xx - 0.2) / 0.2) ** 2 + (yy / 0.3) ** 2 < 1)
    return torch.from_numpy(gaussian_filter(img.astype(float), 1.5) * np.exp(0.5j * xx)).to(torch.complex64)


# ---------------------------------------------------------------------------------------------------- the transform


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, tol", [(torch.complex64, 1e-4), (torch.complex128, 1e-8)])
def test_forward_matches_exact_nudft(backend, dtype, tol):
    shape = (24, 20)  # non-square: catches swapped axes
    coord = random_coord(300, shape)
    x = crandn(3, *shape, dtype=dtype)
    y = NufftPlan(coord, shape, backend).forward(x)
    assert y.shape == (3, 300) and y.dtype == dtype
    assert rel(y.numpy(), nudft(x.numpy(), coord)) < tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(16, 12), (15, 9)])
def test_cartesian_grid_equals_fft2c(backend, shape):
    h, w = shape
    grid = np.stack(np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij"), -1).reshape(-1, 2)
    x = crandn(2, h, w, seed=1)
    y = nufft(x, grid.astype(np.float32), backend)
    ref = fft2c(x).reshape(2, -1)
    assert float((y - ref).norm() / ref.norm()) < 1e-4
    # a unitary transform on the full grid: the adjoint inverts it
    back = nufft_adjoint(y, grid, shape, backend)
    assert float((back - x).norm() / x.norm()) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_adjoint_dot_product(backend):
    shape = (20, 18)
    plan = NufftPlan(random_coord(250, shape, seed=2), shape, backend)
    x, y = crandn(4, *shape, seed=3), crandn(4, 250, seed=4)
    lhs = (plan.forward(x).conj() * y).sum()
    rhs = (x.conj() * plan.adjoint(y)).sum()
    assert float((lhs - rhs).abs() / lhs.abs()) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_sigpy(backend):
    import sigpy

    shape = (18, 22)
    coord = random_coord(200, shape, seed=5)  # sigpy: same units (cycles/FOV) and axis order
    x = crandn(2, *shape, seed=6)
    y = crandn(2, 200, seed=7)
    ref_f = sigpy.nufft(x.numpy().astype(np.complex128), coord, oversamp=2.0, width=8)
    ref_a = sigpy.nufft_adjoint(y.numpy().astype(np.complex128), coord, (2, *shape), oversamp=2.0, width=8)
    assert rel(nufft(x, coord, backend).numpy(), ref_f) < 1e-4
    assert rel(nufft_adjoint(y, coord, shape, backend).numpy(), ref_a) < 1e-4


def test_backends_agree():
    if not finufft_available():
        pytest.skip("finufft not installed")
    shape = (32, 28)
    coord = radial(20, 64, matrix=28)
    x = crandn(2, *shape, seed=8)
    a, b = NufftPlan(coord, shape, "torch"), NufftPlan(coord, shape, "finufft")
    assert rel(a.forward(x).numpy(), b.forward(x).numpy()) < 1e-4
    y = a.forward(x)
    assert rel(a.adjoint(y).numpy(), b.adjoint(y).numpy()) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    shape = (5, 4)
    coord = random_coord(7, shape, seed=9)
    x = crandn(*shape, dtype=torch.complex128, seed=10).requires_grad_()
    y = crandn(7, dtype=torch.complex128, seed=11).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: nufft(v, coord, backend), (x,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda v: nufft_adjoint(v, coord, shape, backend), (y,), eps=1e-6, atol=1e-7)


def test_vjp_is_the_adjoint_complex64():
    shape = (12, 10)
    coord = random_coord(60, shape, seed=12)
    maps = crandn(3, *shape, seed=13)
    op = NonCartesianSense(maps, coord)
    x = crandn(*shape, seed=14).requires_grad_()
    g = crandn(3, 60, seed=15)
    (vjp,) = torch.autograd.grad(op(x), x, grad_outputs=g)
    assert float((vjp - op.adjoint(g)).norm() / vjp.norm()) < 1e-6


def test_batched_trajectories():
    shape = (10, 12)
    coords = np.stack([random_coord(30, shape, seed=s) for s in (16, 17)])  # (2, M, 2)
    x = crandn(2, *shape, seed=18)
    y = nufft(x, coords)
    assert y.shape == (2, 30)
    for i in range(2):
        assert rel(y[i].numpy(), nudft(x[i].numpy(), coords[i])) < 1e-4
    back = nufft_adjoint(y, coords, shape)
    assert back.shape == (2, *shape)
    assert torch.allclose(back[1], nufft_adjoint(y[1], coords[1], shape), atol=1e-5)


def test_auto_falls_back_to_torch_without_finufft(monkeypatch):
    shape = (12, 12)
    coord = random_coord(40, shape, seed=19)
    assert NufftPlan(coord, shape).backend_for("cpu") == nufft_module.AUTO_BACKEND == "torch"  # the measured choice
    with monkeypatch.context() as patched:  # the optional package need not be installed for this check
        if not nufft_module.finufft_available():
            patched.setattr(nufft_module, "_FINUFFT", object())  # stands in for the module: never called here
        assert NufftPlan(coord, shape, "finufft").backend_for("cuda") == "torch"  # CUDA tensors always run torch
    monkeypatch.setattr(nufft_module, "_FINUFFT", False)  # finufft not installed ...
    monkeypatch.setattr(nufft_module, "AUTO_BACKEND", "finufft")  # ... even where auto would prefer it
    plan = NufftPlan(coord, shape, "auto")
    assert plan.backend_for("cpu") == "torch"
    x = crandn(*shape, seed=20)
    assert rel(plan.forward(x).numpy(), nudft(x.numpy(), coord)) < 1e-4
    with pytest.raises(ImportError, match="finufft"):
        NufftPlan(coord, shape, "finufft")


# ------------------------------------------------------------------------------------------------------ the operator


def _op(backend="auto", shape=(20, 16), coils=3, seed=21, **kw):
    coord = radial(16, 40, golden_angle=True, matrix=min(shape))
    maps = crandn(coils, *shape, seed=seed)
    maps = maps / maps.abs().square().sum(0).sqrt()
    return NonCartesianSense(maps, coord, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_operator_adjoint_and_batching(backend):
    op = _op(backend)
    x = crandn(2, *op.image_shape, seed=22)
    y = crandn(2, 3, op.num_points, seed=23)
    assert check_adjoint(op, x, y) <= 1e-5
    out = op(x)
    assert out.shape == (2, 3, op.num_points)
    assert torch.allclose(out[1], op(x[1]), atol=1e-5)
    assert op.adjoint(y).shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_toeplitz_gram_matches_explicit(backend):
    op = _op(backend)
    x = crandn(2, *op.image_shape, seed=24)
    explicit = op.adjoint(op(x))
    assert float((op.gram(x) - explicit).norm() / explicit.norm()) < 1e-4
    # the embedded Gram is exactly self-adjoint (real kernel spectrum): CG needs a Hermitian operator
    u = crandn(*op.image_shape, seed=25)
    lhs, rhs = (u.conj() * op.gram(x[0])).sum(), (op.gram(u).conj() * x[0]).sum()
    assert float((lhs - rhs).abs() / lhs.abs()) < 1e-5
    plain = _op(backend, toeplitz=False)
    assert torch.allclose(plain.gram(x), explicit, atol=1e-5)
    # a stack of images (on a CPU applied one at a time) equals the batched transform and each image's own Gram
    stack = crandn(2, 3, *op.image_shape, seed=26)
    per = torch.stack([torch.stack([op.gram(stack[i, j]) for j in range(3)]) for i in range(2)])
    assert torch.equal(op.gram(stack), per)
    assert torch.allclose(op.gram(stack), op._toeplitz_gram(stack), atol=1e-5)


def test_gram_trace_and_sample_count():
    op = _op(shape=(6, 5), coils=2)
    eye = torch.eye(30, dtype=torch.complex64).reshape(30, 6, 5)
    brute = float(torch.einsum("khw,khw->", eye.conj(), op.adjoint(op(eye))).real)
    assert op.gram_trace() == pytest.approx(brute, rel=1e-4)
    assert op.sample_count() == 2 * op.num_points
    assert op.kspace_shape == (op.num_points,)


def test_normal_norm_bounds_the_gram():
    op = _op(shape=(8, 8), coils=2)
    eye = torch.eye(64, dtype=torch.complex128).reshape(64, 8, 8)
    op64 = NonCartesianSense(op.maps.to(torch.complex128), op.coord)
    mat = op64.gram(eye).reshape(64, 64)
    top = float(torch.linalg.eigvalsh(mat).max())
    assert 0.95 * top <= op.normal_norm(iterations=100) <= 1.0001 * top


def test_likelihood_uses_the_operator_unchanged():
    from mri_score.likelihood import GaussianKspaceLikelihood

    op = _op()
    truth = crandn(*op.image_shape, seed=26)
    y = op(truth)
    like = GaussianKspaceLikelihood(op, y, sigma_y=1e-3)
    x = torch.zeros(1, *op.image_shape, dtype=torch.complex64)
    z = like.prox(x, gamma=1e3, iters=30)
    assert float((op(z) - y).norm()) < 0.1 * float(y.norm())
    # the discrepancy rule (gram_trace, sample_count) recovers the variance of white error in an estimate
    noisy = truth + 0.1 * crandn(16, *op.image_shape, seed=27)  # complex variance 2 · 0.1²
    assert like.error_variance(noisy) == pytest.approx(0.02, rel=0.2)


def test_density_compensated_adjoint_requires_weights():
    with pytest.raises(ValueError, match="density"):
        _op().density_compensated_adjoint(torch.zeros(3, 16 * 40, dtype=torch.complex64))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    op = _op("auto")
    x = crandn(*op.image_shape, seed=27)
    cuda = op.to("cuda")
    assert cuda.plan.backend_for("cuda") == "torch"
    y = cuda(x.cuda())
    ref = _op("torch")(x)
    assert float((y.cpu() - ref).norm() / ref.norm()) < 1e-4
    gram = _op("torch").gram(x)
    assert float((cuda.gram(x.cuda()).cpu() - gram).norm() / gram.norm()) < 1e-4
    assert float((cuda.adjoint(y).cpu() - _op("torch").adjoint(ref)).norm() / gram.norm()) < 1e-3


# -------------------------------------------------------------------------------------------------- trajectories


@pytest.mark.parametrize("golden", [False, True])
def test_radial_in_range_and_geometry(golden):
    coord = radial(13, 64, golden_angle=golden)
    assert coord.dtype == np.float32 and coord.shape == (13 * 64, 2)
    assert np.abs(coord).max() <= 16 and check_coordinates(coord, (32, 32)).shape == (13 * 64, 2)
    spokes = coord.reshape(13, 64, 2).astype(np.float64)
    assert np.allclose(spokes[:, 32], 0)  # every spoke through the centre
    direction = spokes[:, -1] - spokes[:, 0]
    angles = np.degrees(np.arctan2(direction[:, 0], direction[:, 1]))
    step = GOLDEN_ANGLE_DEG if golden else 180 / 13
    assert np.allclose(np.diff(angles) % 180, step % 180, atol=1e-3)
    assert abs(GOLDEN_ANGLE_DEG - 111.246) < 1e-3


def test_spiral_in_range_and_variable_density():
    uniform = spiral(8, 1200, 64)
    dense = spiral(8, 1200, 64, density_power=2.0)
    for c in (uniform, dense):
        assert c.dtype == np.float32 and c.shape == (8 * 1200, 2)
        assert np.hypot(c[:, 0], c[:, 1]).max() < 32
        check_coordinates(c, (64, 64))
    # reaches the edge, and p > 1 puts a larger share of the samples near the centre
    assert np.hypot(*uniform.T).max() > 31
    inner = lambda c: np.mean(np.hypot(*c.T) < 8)  # noqa: E731
    assert inner(uniform) == pytest.approx(0.25, abs=0.01) and inner(dense) > 1.8 * inner(uniform)


def test_pipe_menon_matches_ramp_and_cartesian():
    coord = radial(64, 64)  # N = 32, fully sampled (64 > π/2 · 32 spokes)
    w = pipe_menon_density(coord, (32, 32), iterations=20)
    ramp = radial_ramp_density(coord, 64)
    radius = np.hypot(*coord.astype(np.float64).T)
    band = (radius > 3) & (radius < 13)
    ratio = w[band] / ramp[band]
    assert w.dtype == np.float32 and np.all(w >= 0)
    assert np.all(np.abs(ratio - 1) < 0.1)  # ∝ |k| away from the centre, and in the same units
    assert np.corrcoef(w[band], radius[band])[0, 1] > 0.99
    grid = np.stack(np.meshgrid(np.arange(16) - 8, np.arange(16) - 8, indexing="ij"), -1).reshape(-1, 2)
    cartesian = pipe_menon_density(grid, (16, 16))
    assert np.ptp(cartesian) < 0.01 * cartesian.mean()  # a full Cartesian grid: uniform (scale: see the docstring)
    assert np.allclose(pipe_menon_density(grid, (16, 16), width=6, oversamp=2.0), 1.0, atol=0.02)  # area 1 each


def test_density_compensated_adjoint_recovers_image():
    n = 48
    x = smooth_phantom(n)
    coord = radial(80, 2 * n)
    maps = torch.ones(1, n, n, dtype=torch.complex64)
    op = NonCartesianSense(maps, coord, dcf=pipe_menon_density(coord, (n, n)), toeplitz=False)
    y = op(x)
    gridded = op.density_compensated_adjoint(y)
    plain = op.adjoint(y)
    best = (plain.conj() * x).sum() / (plain.conj() * plain).sum()  # the best scalar rescaling of Aᴴy
    err_dc = float((gridded - x).norm() / x.norm())
    err_plain = float((best * plain - x).norm() / x.norm())
    assert err_dc < 0.03 and err_dc < 0.1 * err_plain
    ramp = op.adjoint(y * torch.from_numpy(radial_ramp_density(coord, 80)))
    assert float((ramp - x).norm() / x.norm()) < 0.08


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "coord, match",
    [
        (np.array([[0.0, 0.0], [8.01, 0.0]]), "outside"),
        (np.array([[0.0, -6.5]]), "outside"),
        (np.array([[0.0, np.nan]]), "non-finite"),
        (np.array([[np.inf, 0.0]]), "non-finite"),
        (np.zeros((4, 3)), "shape"),
        (np.zeros(4), "shape"),
        (np.zeros((0, 2)), "no k-space"),
        (np.zeros((3, 2), dtype=np.complex64), "real"),
    ],
)
def test_bad_coordinates_raise(coord, match):
    for build in (lambda: NufftPlan(coord, (16, 12)),
                  lambda: NonCartesianSense(torch.ones(1, 16, 12, dtype=torch.complex64), coord),
                  lambda: nufft(torch.zeros(16, 12, dtype=torch.complex64), coord),
                  lambda: pipe_menon_density(coord, (16, 12))):
        with pytest.raises(ValueError, match=match) as err:
            build()
        assert "\n" not in str(err.value)


def test_edge_coordinates_are_accepted():
    edge = np.array([[-8.0, 6.0], [8.0, -6.0]])
    x = crandn(16, 12)
    assert rel(NufftPlan(edge, (16, 12)).forward(x).numpy(), nudft(x.numpy(), edge)) < 1e-4


def test_bad_shapes_and_values_raise():
    op = _op()
    h, w = op.image_shape
    cases = [
        (lambda: op(crandn(h, w + 1)), "image shape"),
        (lambda: op(torch.zeros(h, w)), "complex"),
        (lambda: op.adjoint(crandn(2, op.num_points)), "coils"),
        (lambda: op.adjoint(crandn(3, op.num_points + 1)), "M="),
        (lambda: op.gram(crandn(h + 1, w)), "image shape"),
        (lambda: NonCartesianSense(op.maps, op.coord, dcf=np.ones(5)), "shape"),
        (lambda: NonCartesianSense(op.maps, op.coord, dcf=-np.ones(op.num_points)), "non-negative"),
        (lambda: NonCartesianSense(op.maps.real, op.coord), "complex"),
        (lambda: NonCartesianSense(op.maps, op.coord, backend="cufinufft"), "backend"),
        (lambda: op.update(maps=op.maps[:2]), "differ"),
        (lambda: NufftPlan(op.coord, (h, w)).adjoint(crandn(op.num_points + 2)), "samples"),
        (lambda: nufft_adjoint(crandn(5), op.coord, (h, w)), "do not match"),
        (lambda: NufftPlan(op.coord, (0, w)), "positive"),
        (lambda: radial(0, 64), "spokes"),
        (lambda: spiral(4, 100, 32, density_power=0), "density_power"),
        (lambda: radial_ramp_density(radial(4, 16), 3), "spokes"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            fn()
        assert "\n" not in str(err.value)
