"""2-D non-uniform FFT (NUFFT) and the non-Cartesian multi-coil SENSE operator, on torch complex tensors.

Conventions
-----------
* Images are complex ``(..., H, W)`` with the pixel grid of :mod:`operators.fft`: the centre pixel
  is index ``N // 2`` of an axis of size ``N``, so the pixel positions are ``r = i − N // 2``.
* k-space coordinates ``coord`` are real ``(..., M, 2)`` in **cycles per field of view**: ``coord[..., 0]``
  is the frequency along the image rows (dim ``-2``, size ``H``), ``coord[..., 1]`` the one along the
  columns (dim ``-1``, size ``W``).  Valid values lie in ``[-H/2, H/2] × [-W/2, W/2]``
  (``±0.5`` in units of the matrix); sigpy uses the same units and ordering.
* The type-2 NUFFT (image → samples) is the orthonormal non-uniform DFT

  ``y_m = (H W)^{-1/2} Σ_r x_r exp(−2πi (k_m0 r_0 / H + k_m1 r_1 / W))``,

  which equals :func:`operators.fft.fft2c` of ``x`` when the ``k_m`` are the integer grid points
  ``i − N // 2``; the type-1 NUFFT (samples → image) is its adjoint.

Backends
--------
``"torch"`` (our own Kaiser–Bessel gridding: deapodise, zero-pad to a 1.5x oversampled grid, FFT and
interpolate with a precomputed sparse matrix; any device, no extra dependency) and ``"finufft"`` (the
Flatiron NUFFT, an optional dependency imported lazily; CPU tensors only, run in double precision).
``"auto"`` is :data:`AUTO_BACKEND`, the torch gridding: on this project's CPU it measured as fast as or
faster than finufft at the same accuracy and several times faster than sigpy
(``benchmarks/run_nufft_backend.py`` → ``benchmarks/results/nufft_backend.md``), and it is the path that
runs on CUDA.  Both backends give the exact adjoint of their own forward transform (a dot-product test
holds to round-off) and approximate the DFT to about ``1e-5`` relative in complex64 and ``1e-9`` in
complex128.

Both transforms are ``torch.autograd.Function`` s whose backward is the other transform, so gradients
flow through :class:`NonCartesianSense` exactly as through :class:`operators.sense.Sense`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from operators.errors import OperatorInputError
from operators.linop import LinearOperator
from operators.sense import CoilSensitivities

#: backend names accepted by :class:`NufftPlan` and :class:`NonCartesianSense`
BACKENDS = ("auto", "finufft", "torch")
#: what ``"auto"`` runs on CPU (chosen by measurement, ``benchmarks/results/nufft_backend.md``); CUDA always runs "torch"
AUTO_BACKEND = "torch"
#: grid oversampling factor of the torch gridding backend (1.5 with width 7 measured ~2x faster than 2.0 with
#: width 6 at the same ~8e-6 accuracy: the FFT grid and its memory traffic shrink by 44 %)
OVERSAMP = 1.5
#: Kaiser–Bessel kernel width (grid cells) of the torch backend per precision (relative error ~8e-6 / ~7e-10)
KB_WIDTH = {torch.complex64: 7, torch.complex128: 12}
#: finufft tolerance per input precision (finufft always runs in double precision, see ``_Finufft``)
FINUFFT_EPS = {torch.complex64: 1e-5, torch.complex128: 1e-12}
#: finufft upsampling factor per input precision (1.25 is several times faster than 2.0 at a 1e-5 tolerance)
FINUFFT_UPSAMPFAC = {torch.complex64: 1.25, torch.complex128: 2.0}

ArrayLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]]


# ----------------------------------------------------------------------------------------------------------------------
# input checks


def _image_shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError) as err:
        raise OperatorInputError(f"image_shape must be two integers (H, W), got {shape!r}") from err
    if h < 1 or w < 1:
        raise OperatorInputError(f"image_shape must be positive, got {(h, w)}")
    return h, w


def check_coordinates(coord: ArrayLike, image_shape: Sequence[int]) -> torch.Tensor:
    """Validate k-space coordinates against an image grid and return them as a float64 CPU tensor.

    Parameters
    ----------
    coord : torch.Tensor or numpy.ndarray
        Real ``(..., M, 2)`` coordinates in cycles/FOV (row frequency first), ``M ≥ 1``.
    image_shape : (int, int)
        ``(H, W)`` of the image grid.

    Returns
    -------
    torch.Tensor
        ``coord`` as float64 on the CPU, same shape.

    Raises
    ------
    OperatorInputError
        (a ``ValueError``) for a wrong shape, a complex or non-numeric dtype, non-finite values, or
        values outside ``[-H/2, H/2] × [-W/2, W/2]``.
    """
    h, w = _image_shape(image_shape)
    if torch.is_tensor(coord):
        c = coord.detach().to("cpu")
    else:
        try:
            c = torch.as_tensor(np.asarray(coord))
        except (TypeError, ValueError, RuntimeError) as err:
            raise OperatorInputError(f"coordinates must be a real numeric array, got {type(coord).__name__}") from err
    if c.is_complex() or not (c.is_floating_point() or c.dtype in (torch.int16, torch.int32, torch.int64)):
        raise OperatorInputError(f"coordinates must be real, got dtype {c.dtype}")
    if c.ndim < 2 or c.shape[-1] != 2:
        raise OperatorInputError(f"coordinates must have shape (..., M, 2), got {tuple(c.shape)}")
    if c.shape[-2] < 1:
        raise OperatorInputError("coordinates hold no k-space points (M = 0)")
    c = c.to(torch.float64)
    bad = int((~torch.isfinite(c)).sum())
    if bad:
        raise OperatorInputError(f"coordinates have {bad} non-finite value(s) (NaN or inf)")
    half = torch.tensor([h / 2.0, w / 2.0], dtype=torch.float64)
    peak = c.abs().reshape(-1, 2).amax(dim=0)
    if bool((peak > half).any()):
        raise OperatorInputError(
            f"coordinates outside ±N/2 = ±({h / 2:g}, {w / 2:g}) cycles/FOV for image {(h, w)}: "
            f"max |k| = ({float(peak[0]):g}, {float(peak[1]):g}) (expected cycles/FOV, i.e. ±0.5 × matrix)"
        )
    return c


def _check_complex(t: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(t):
        raise OperatorInputError(f"{name} expects a torch tensor, got {type(t).__name__}")
    if t.dtype not in (torch.complex64, torch.complex128):
        raise OperatorInputError(f"{name} expects a complex64 or complex128 tensor, got {t.dtype}")


# ----------------------------------------------------------------------------------------------------------------------
# Kaiser–Bessel gridding kernel


def kb_beta(width: int, oversamp: float) -> float:
    """Kaiser–Bessel shape parameter for a kernel of ``width`` cells on a grid oversampled by ``oversamp`` (Beatty 2005)."""
    return math.pi * math.sqrt((width / oversamp) ** 2 * (oversamp - 0.5) ** 2 - 0.8)


def _i0(beta: float) -> float:
    return float(torch.special.i0(torch.tensor(beta, dtype=torch.float64)))


def kaiser_bessel(t: torch.Tensor, width: int, beta: float) -> torch.Tensor:
    """The Kaiser–Bessel kernel ``I0(β √(1 − (2t/w)²)) / I0(β)`` (peak 1), zero for ``|t| > w/2``; ``t`` in grid cells."""
    a = 2.0 * t / width
    inside = a.abs() <= 1.0
    val = torch.special.i0(beta * torch.sqrt((1.0 - a * a).clamp_min(0.0))) / _i0(beta)
    return torch.where(inside, val, torch.zeros_like(val))


def kaiser_bessel_ft(xi: torch.Tensor, width: int, beta: float) -> torch.Tensor:
    """Continuous Fourier transform ``∫ φ(t) e^{2πi ξ t} dt`` of :func:`kaiser_bessel` (real, even); ``ξ`` in cycles/cell."""
    z = beta**2 - (math.pi * width * xi) ** 2
    s = torch.sqrt(z.abs().clamp_min(1e-300))
    pos = torch.sinh(s) / s
    neg = torch.where(s > 0, torch.sin(s) / s, torch.ones_like(s))
    val = torch.where(z >= 0, pos, neg)
    return width * val / _i0(beta)


def oversampled_grid(image_shape: Sequence[int], width: int, oversamp: float = OVERSAMP) -> tuple[int, int]:
    """The oversampled grid ``(G0, G1)``: ``⌈oversamp·N⌉`` rounded up to even, and at least ``2·width``."""
    return tuple(max(2 * math.ceil(oversamp * n / 2), 2 * width) for n in _image_shape(image_shape))  # type: ignore[return-value]


def interpolation_weights(coord: torch.Tensor, image_shape: Sequence[int], width: int,
                          oversamp: float = OVERSAMP) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Kaiser–Bessel interpolation from the oversampled Cartesian grid to the points ``coord``.

    Parameters
    ----------
    coord : torch.Tensor
        ``(M, 2)`` float64 coordinates in cycles/FOV (checked by :func:`check_coordinates`).
    image_shape : (int, int)
        ``(H, W)``.
    width : int
        Kernel width in grid cells.
    oversamp : float
        Grid oversampling factor.

    Returns
    -------
    cols : torch.Tensor
        ``(M, width²)`` int64 indices into the flattened grid ``G0·G1`` (FFT order: frequency ``l`` at
        ``l mod G``), sorted within each row.
    vals : torch.Tensor
        ``(M, width²)`` float64 weights ``φ(u0 − l0) φ(u1 − l1)`` with ``u = k·G/N`` in grid cells.
    grid : (int, int)
        ``(G0, G1)``.
    """
    h, w = _image_shape(image_shape)
    grid = oversampled_grid((h, w), width, oversamp)
    beta = kb_beta(width, oversamp)
    taps = torch.arange(width, dtype=torch.float64)
    idx, wts = [], []
    for d, (n, g) in enumerate(zip((h, w), grid)):
        u = coord[:, d].to(torch.float64) * (g / n)
        l = torch.ceil(u - width / 2.0)[:, None] + taps  # (M, width) grid frequencies
        wts.append(kaiser_bessel(u[:, None] - l, width, beta))
        idx.append(torch.remainder(l.to(torch.int64), g))
    cols = (idx[0][:, :, None] * grid[1] + idx[1][:, None, :]).reshape(-1, width * width)
    vals = (wts[0][:, :, None] * wts[1][:, None, :]).reshape(-1, width * width)
    cols, order = torch.sort(cols, dim=1)
    return cols, torch.gather(vals, 1, order), grid


def interpolation_matrices(cols: torch.Tensor, vals: torch.Tensor, grid_size: int,
                           dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse CSR matrices ``P`` ``(M, G)`` (grid → points) and ``Pᵀ`` ``(G, M)`` from :func:`interpolation_weights`."""
    m, taps = cols.shape
    flat_cols, flat_vals = cols.reshape(-1), vals.reshape(-1).to(dtype)
    rows = torch.arange(m, dtype=torch.int64).repeat_interleave(taps)
    crow = torch.arange(0, m * taps + 1, taps, dtype=torch.int64)
    order = torch.argsort(flat_cols, stable=True)
    crow_t = torch.zeros(grid_size + 1, dtype=torch.int64)
    crow_t[1:] = torch.cumsum(torch.bincount(flat_cols, minlength=grid_size), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        p = torch.sparse_csr_tensor(crow, flat_cols, flat_vals, (m, grid_size))
        pt = torch.sparse_csr_tensor(crow_t, rows[order], flat_vals[order], (grid_size, m))
    return p, pt


# ----------------------------------------------------------------------------------------------------------------------
# backends: (B, H, W) <-> (B, M) on one dtype and device


class _TorchGridding:
    """Kaiser–Bessel gridding NUFFT in plain torch (any device): ``y = P · FFT(pad(x · deapod))``."""

    name = "torch"

    def __init__(self, coord: torch.Tensor, image_shape: tuple[int, int], dtype: torch.dtype, device: torch.device,
                 width: int | None = None, oversamp: float = OVERSAMP) -> None:
        width = KB_WIDTH[dtype] if width is None else int(width)
        real = torch.float32 if dtype == torch.complex64 else torch.float64
        h, w = image_shape
        cols, vals, grid = interpolation_weights(coord, image_shape, width, oversamp)
        self.grid, self.points, self.image_shape = grid, int(coord.shape[0]), image_shape
        p, pt = interpolation_matrices(cols, vals, grid[0] * grid[1], real)
        self.p, self.pt = p.to(device), pt.to(device)
        beta = kb_beta(width, oversamp)
        r0 = torch.arange(h, dtype=torch.float64) - h // 2
        r1 = torch.arange(w, dtype=torch.float64) - w // 2
        apod = kaiser_bessel_ft(r0 / grid[0], width, beta)[:, None] * kaiser_bessel_ft(r1 / grid[1], width, beta)[None, :]
        self.deapod = (1.0 / (apod * math.sqrt(h * w))).to(device=device, dtype=real)
        flat = torch.remainder(r0.long(), grid[0])[:, None] * grid[1] + torch.remainder(r1.long(), grid[1])[None, :]
        self.flat = flat.reshape(-1).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        g0, g1 = self.grid
        grid = x.new_zeros(b, g0 * g1)
        grid[:, self.flat] = (x * self.deapod).reshape(b, -1)
        k = torch.fft.fft2(grid.view(b, g0, g1)).reshape(b, g0 * g1)
        kr = torch.view_as_real(k.transpose(0, 1).contiguous()).reshape(g0 * g1, 2 * b)
        y = torch.sparse.mm(self.p, kr).reshape(self.points, b, 2)
        return torch.view_as_complex(y).transpose(0, 1).contiguous()

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        b = y.shape[0]
        g0, g1 = self.grid
        yr = torch.view_as_real(y.resolve_conj().transpose(0, 1).contiguous()).reshape(self.points, 2 * b)
        k = torch.view_as_complex(torch.sparse.mm(self.pt, yr).reshape(g0 * g1, b, 2))
        grid = torch.fft.ifft2(k.transpose(0, 1).contiguous().view(b, g0, g1), norm="forward").reshape(b, g0 * g1)
        return grid[:, self.flat].view(b, *self.image_shape) * self.deapod


_FINUFFT: Any = None


def finufft_available() -> bool:
    """Whether the optional ``finufft`` package can be imported (cached)."""
    global _FINUFFT
    if _FINUFFT is None:
        try:
            import finufft

            _FINUFFT = finufft
        except ImportError:
            _FINUFFT = False
    return _FINUFFT is not False


class _Finufft:
    """The Flatiron Institute NUFFT (CPU), always in double precision; plans cached per batch size.

    Type 1 and type 2 share the kernel, so they are an exact adjoint pair.  Single-precision finufft was
    not used for complex64: its float32 coordinates limit it to about ``N·1e-7`` relative error and its
    float32 spreading breaks the dot-product test at the 1e-5 level; double precision with the complex64
    tolerance (``FINUFFT_EPS``) costs about 1.5x and is exact to round-off.
    """

    name = "finufft"

    def __init__(self, coord: torch.Tensor, image_shape: tuple[int, int], dtype: torch.dtype) -> None:
        if not finufft_available():  # pragma: no cover - guarded by the caller
            raise ImportError("the finufft backend needs `pip install finufft`")
        h, w = image_shape
        self.xs = np.ascontiguousarray((2.0 * np.pi / h) * coord[:, 0].numpy(), dtype=np.float64)
        self.ys = np.ascontiguousarray((2.0 * np.pi / w) * coord[:, 1].numpy(), dtype=np.float64)
        self.dtype, self.image_shape, self.points = dtype, image_shape, int(coord.shape[0])
        self.scale = 1.0 / math.sqrt(h * w)
        self._plans: dict[tuple[int, int, int], Any] = {}

    def _plan(self, kind: int, batch: int) -> Any:
        threads = torch.get_num_threads()
        key = (kind, batch, threads)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 8:
                self._plans.clear()
            plan = _FINUFFT.Plan(kind, self.image_shape, n_trans=batch, eps=FINUFFT_EPS[self.dtype],
                                 isign=-1 if kind == 2 else 1, dtype="complex128", nthreads=threads,
                                 upsampfac=FINUFFT_UPSAMPFAC[self.dtype])
            plan.setpts(self.xs, self.ys)
            self._plans[key] = plan
        return plan

    def _run(self, kind: int, data: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor:
        b = data.shape[0]
        arr = data.detach().resolve_conj().to(torch.complex128).contiguous().numpy()
        out = self._plan(kind, b).execute(arr if b > 1 else arr[0])
        out *= self.scale
        return torch.from_numpy(out.reshape(b, *out_shape)).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(2, x, (self.points,))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._run(1, y, self.image_shape)


# ----------------------------------------------------------------------------------------------------------------------
# the plan and the autograd functions


class NufftPlan:
    """A 2-D NUFFT between an image grid ``(H, W)`` and ``M`` fixed k-space points, with its precomputation.

    Parameters
    ----------
    coord : torch.Tensor or numpy.ndarray
        ``(M, 2)`` coordinates in cycles/FOV (row frequency first), within ``±(H/2, W/2)``.
    image_shape : (int, int)
        ``(H, W)``.
    backend : {"auto", "finufft", "torch"}
        ``"auto"``: :data:`AUTO_BACKEND` on CPU.  ``"finufft"`` raises ``ImportError`` if it is not
        installed.  For CUDA tensors every choice runs the torch path.

    Notes
    -----
    The per-(dtype, device) precomputation (interpolation matrices or finufft plans) is built on
    first use and kept, so one plan serves complex64 and complex128, CPU and CUDA inputs.
    ``forward``/``adjoint`` are differentiable (autograd through :class:`NufftType2` / :class:`NufftType1`).
    """

    def __init__(self, coord: ArrayLike, image_shape: Sequence[int], backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise OperatorInputError(f"unknown NUFFT backend {backend!r}; choose one of {BACKENDS}")
        if backend == "finufft" and not finufft_available():
            raise ImportError("NUFFT backend 'finufft' requested but the package is not installed (pip install finufft)")
        self.image_shape = _image_shape(image_shape)
        c = check_coordinates(coord, self.image_shape)
        if c.ndim != 2:
            raise OperatorInputError(f"a NufftPlan takes one trajectory (M, 2), got {tuple(c.shape)}")
        self.coord = c
        self.backend = backend
        self._impls: dict[tuple[str, torch.dtype, str], Any] = {}

    @property
    def num_points(self) -> int:
        """``M``, the number of k-space points."""
        return int(self.coord.shape[0])

    def backend_for(self, device: torch.device | str) -> str:
        """The backend that runs for tensors on ``device`` (``"finufft"`` or ``"torch"``)."""
        device = torch.device(device)
        name = AUTO_BACKEND if self.backend == "auto" else self.backend
        if device.type == "cpu" and name == "finufft" and finufft_available():
            return "finufft"
        return "torch"

    def _impl(self, dtype: torch.dtype, device: torch.device) -> Any:
        name = self.backend_for(device)
        key = (name, dtype, str(device))
        impl = self._impls.get(key)
        if impl is None:
            if name == "finufft":
                impl = _Finufft(self.coord, self.image_shape, dtype)
            else:
                impl = _TorchGridding(self.coord, self.image_shape, dtype, device)
            self._impls[key] = impl
        return impl

    def _check_image(self, x: torch.Tensor) -> None:
        _check_complex(x, "NUFFT")
        if x.ndim < 2 or tuple(x.shape[-2:]) != self.image_shape:
            raise OperatorInputError(f"NUFFT image shape {tuple(x.shape[-2:])} does not match the plan's {self.image_shape}")

    def _check_samples(self, y: torch.Tensor) -> None:
        _check_complex(y, "adjoint NUFFT")
        if y.ndim < 1 or y.shape[-1] != self.num_points:
            raise OperatorInputError(
                f"adjoint NUFFT expects samples (..., {self.num_points}), got {tuple(y.shape)}"
            )

    def apply_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Type-2 NUFFT without autograd: image ``(..., H, W)`` -> samples ``(..., M)``, same dtype and device."""
        lead = x.shape[:-2]
        b = math.prod(lead)
        if b == 0:
            return x.new_zeros(*lead, self.num_points)
        y = self._impl(x.dtype, x.device).forward(x.reshape(b, *self.image_shape))
        return y.to(x.device).reshape(*lead, self.num_points)

    def apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Type-1 NUFFT (the adjoint) without autograd: samples ``(..., M)`` -> image ``(..., H, W)``."""
        lead = y.shape[:-1]
        b = math.prod(lead)
        if b == 0:
            return y.new_zeros(*lead, *self.image_shape)
        x = self._impl(y.dtype, y.device).adjoint(y.reshape(b, self.num_points))
        return x.to(y.device).reshape(*lead, *self.image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Type-2 NUFFT ``y = F x``: image ``(..., H, W)`` complex -> samples ``(..., M)``; differentiable."""
        self._check_image(x)
        return NufftType2.apply(x, self)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Type-1 NUFFT ``x = Fᴴ y``: samples ``(..., M)`` complex -> image ``(..., H, W)``; differentiable."""
        self._check_samples(y)
        return NufftType1.apply(y, self)


class NufftType2(torch.autograd.Function):
    """``y = F x`` (image -> samples) whose vector-Jacobian product is ``Fᴴ g``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, plan: NufftPlan) -> torch.Tensor:  # noqa: D102
        ctx.plan = plan
        return plan.apply_forward(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return NufftType1.apply(grad, ctx.plan), None


class NufftType1(torch.autograd.Function):
    """``x = Fᴴ y`` (samples -> image) whose vector-Jacobian product is ``F g``."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, plan: NufftPlan) -> torch.Tensor:  # noqa: D102
        ctx.plan = plan
        return plan.apply_adjoint(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return NufftType2.apply(grad, ctx.plan), None


def _per_trajectory(coord: torch.Tensor, data: torch.Tensor, data_dims: int, fn: Any) -> torch.Tensor:
    """Apply ``fn(data_b, coord_b)`` for trajectories ``coord (*cb, M, 2)`` broadcast against ``data (*db, ...)``."""
    cb, db = coord.shape[:-2], data.shape[: data.ndim - data_dims]
    batch = torch.broadcast_shapes(cb, db)
    if math.prod(cb) == 1:
        out = fn(data, coord.reshape(-1, 2))
        return out.reshape(*batch, *out.shape[len(db):])
    coords = coord.expand(*batch, *coord.shape[-2:]).reshape(-1, *coord.shape[-2:])
    items = data.expand(*batch, *data.shape[data.ndim - data_dims:]).reshape(-1, *data.shape[data.ndim - data_dims:])
    out = [fn(items[i], coords[i]) for i in range(items.shape[0])]
    return torch.stack(out).reshape(*batch, *out[0].shape)


def nufft(x: torch.Tensor, coord: ArrayLike, backend: str = "auto") -> torch.Tensor:
    """Type-2 NUFFT (image -> non-Cartesian samples), orthonormal, differentiable in ``x``.

    Parameters
    ----------
    x : torch.Tensor
        Complex64/128 image ``(..., H, W)``.
    coord : torch.Tensor or numpy.ndarray
        ``(..., M, 2)`` in cycles/FOV (row frequency first); leading dims broadcast against ``x``'s.
    backend : {"auto", "finufft", "torch"}
        See :class:`NufftPlan`.

    Returns
    -------
    torch.Tensor
        ``(*broadcast(x.shape[:-2], coord.shape[:-2]), M)``, ``x``'s dtype and device.
        On an integer grid it equals :func:`operators.fft.fft2c` sampled at those points.
    """
    _check_complex(x, "nufft")
    if x.ndim < 2:
        raise OperatorInputError(f"nufft expects an image (..., H, W), got shape {tuple(x.shape)}")
    c = check_coordinates(coord, x.shape[-2:])
    return _per_trajectory(c, x, 2, lambda xi, ci: NufftPlan(ci, x.shape[-2:], backend).forward(xi))


def nufft_adjoint(y: torch.Tensor, coord: ArrayLike, image_shape: Sequence[int], backend: str = "auto") -> torch.Tensor:
    """Type-1 NUFFT (non-Cartesian samples -> image), the exact adjoint of :func:`nufft`; differentiable in ``y``.

    Parameters
    ----------
    y : torch.Tensor
        Complex64/128 samples ``(..., M)``.
    coord : torch.Tensor or numpy.ndarray
        ``(..., M, 2)`` in cycles/FOV; leading dims broadcast against ``y``'s.
    image_shape : (int, int)
        ``(H, W)`` of the output image.
    backend : {"auto", "finufft", "torch"}
        See :class:`NufftPlan`.

    Returns
    -------
    torch.Tensor
        ``(*broadcast, H, W)``, ``y``'s dtype and device.
    """
    _check_complex(y, "nufft_adjoint")
    shape = _image_shape(image_shape)
    c = check_coordinates(coord, shape)
    if y.ndim < 1 or y.shape[-1] != c.shape[-2]:
        raise OperatorInputError(f"nufft_adjoint: samples {tuple(y.shape)} do not match {c.shape[-2]} coordinates")
    return _per_trajectory(c, y, 1, lambda yi, ci: NufftPlan(ci, shape, backend).adjoint(yi))


# ----------------------------------------------------------------------------------------------------------------------
# the multi-coil operator


def _check_dcf(dcf: ArrayLike | None, points: int, like: torch.Tensor) -> torch.Tensor | None:
    if dcf is None:
        return None
    d = dcf.detach() if torch.is_tensor(dcf) else torch.as_tensor(np.asarray(dcf))
    if d.is_complex() or not d.is_floating_point():
        raise OperatorInputError(f"density compensation weights must be real floats, got {d.dtype}")
    if tuple(d.shape) != (points,):
        raise OperatorInputError(f"density compensation weights must have shape ({points},), got {tuple(d.shape)}")
    if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
        raise OperatorInputError("density compensation weights must be finite and non-negative")
    return d.to(device=like.device, dtype=like.real.dtype)


class NonCartesianSense(LinearOperator):
    """Multi-coil non-Cartesian SENSE ``A = F_nu ∘ S``: coil sensitivities, then a 2-D type-2 NUFFT.

    Parameters
    ----------
    maps : torch.Tensor
        Coil sensitivities, complex ``(..., coils, H, W)`` (as for :class:`operators.sense.Sense`).
    coord : torch.Tensor or numpy.ndarray
        ``(M, 2)`` k-space coordinates in cycles/FOV, row frequency first, within ``±(H/2, W/2)``
        (e.g. :func:`operators.trajectories.radial`).
    dcf : torch.Tensor or numpy.ndarray, optional
        ``(M,)`` density-compensation weights (e.g. :func:`operators.trajectories.pipe_menon_density`).
        They are **not** part of ``A``: only :meth:`density_compensated_adjoint` (gridding
        reconstruction, preconditioning) uses them, so ``Aᴴ(y − A x)`` stays the likelihood's gradient.
    backend : {"auto", "finufft", "torch"}
        NUFFT backend (see :class:`NufftPlan`).
    toeplitz : bool
        Precompute the Toeplitz embedding kernel so :meth:`gram` costs two FFTs of the ``2H × 2W``
        grid per coil instead of a NUFFT pair (default).  ``False``: ``gram`` is ``adjoint(forward(x))``.

    ``forward``: image ``(..., H, W)`` -> samples ``(..., coils, M)``; ``adjoint``: samples -> image
    ``Σ_c conj(S_c) F_nuᴴ y_c``.  Leading batch dims of the image broadcast against those of the maps.
    ``forward``/``adjoint`` are differentiable (the NUFFTs are autograd functions).

    Notes
    -----
    With normalised maps ``‖AᴴA‖`` is the largest sample density (samples per (cycle/FOV)²), which is far
    above 1 at the centre of radial and spiral k-space: a Landweber step ``x + λ Aᴴ(y − A x)`` needs
    ``λ < 2 / ‖AᴴA‖`` (:meth:`normal_norm`), unlike the Cartesian operator.
    """

    def __init__(self, maps: torch.Tensor, coord: ArrayLike, dcf: ArrayLike | None = None, backend: str = "auto",
                 toeplitz: bool = True) -> None:
        super().__init__()
        self.coils = CoilSensitivities(maps)
        if maps.dtype not in (torch.complex64, torch.complex128):
            raise OperatorInputError(f"NonCartesianSense maps must be complex64 or complex128, got {maps.dtype}")
        shape = (int(maps.shape[-2]), int(maps.shape[-1]))
        self.plan = NufftPlan(coord, shape, backend)
        self.register_buffer("coord", self.plan.coord.to(device=maps.device, dtype=maps.real.dtype))
        self.register_buffer("dcf", _check_dcf(dcf, self.plan.num_points, maps))
        self.toeplitz = bool(toeplitz)
        self.register_buffer("_kernel_fft", self._toeplitz_kernel() if self.toeplitz else None, persistent=False)

    # -- shapes and constants -------------------------------------------------------------------------------------------

    @property
    def maps(self) -> torch.Tensor:
        """Coil sensitivities ``(..., coils, H, W)``."""
        return self.coils.maps

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the images the operator acts on."""
        return self.plan.image_shape

    @property
    def num_points(self) -> int:
        """``M``, the k-space points per coil."""
        return self.plan.num_points

    @property
    def kspace_shape(self) -> tuple[int]:
        """``(M,)``: the trailing shape of the samples per coil (``Sense.kspace_shape`` is ``(h, w)``)."""
        return (self.num_points,)

    def gram_trace(self) -> float:
        """``tr(AᴴA) = M · Σ_c mean_pixels |S_c|²`` exactly (every NUDFT entry has ``|F_mj|² = 1/(H W)``).

        Summed over any leading batch dims of the maps, like :meth:`operators.sense.Sense.gram_trace`.
        """
        power = self.maps.abs().square().mean(dim=(-2, -1))
        return float(power.sum()) * self.num_points

    def sample_count(self) -> int:
        """Complex k-space samples in the range ``(..., coils, M)``."""
        return math.prod(self.maps.shape[:-2]) * self.num_points

    def update(self, maps: torch.Tensor | None = None, dcf: ArrayLike | None = None) -> NonCartesianSense:
        """Replace the maps (same shape) and/or the density weights in place; returns ``self``.

        The Toeplitz kernel depends only on the trajectory and is kept.
        """
        if maps is not None:
            if not torch.is_tensor(maps) or maps.shape != self.maps.shape or maps.dtype != self.maps.dtype:
                got = tuple(maps.shape) if torch.is_tensor(maps) else type(maps).__name__
                raise OperatorInputError(f"new maps {got} differ in shape or dtype from {tuple(self.maps.shape)}")
            self.coils.replace_maps(maps)
        if dcf is not None:
            self.dcf = _check_dcf(dcf, self.num_points, self.maps)
        return self

    # -- application ----------------------------------------------------------------------------------------------------

    def _check_image(self, x: torch.Tensor) -> None:
        _check_complex(x, "NonCartesianSense")
        if x.ndim < 2 or tuple(x.shape[-2:]) != self.image_shape:
            raise OperatorInputError(f"image shape {tuple(x.shape[-2:])} does not match coil maps {self.image_shape}")

    def _check_samples(self, y: torch.Tensor) -> None:
        _check_complex(y, "NonCartesianSense adjoint")
        coils = self.maps.shape[-3]
        if y.ndim < 2 or y.shape[-1] != self.num_points or y.shape[-2] != coils:
            raise OperatorInputError(f"samples {tuple(y.shape)} do not match (..., coils={coils}, M={self.num_points})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(..., H, W)`` -> multi-coil samples ``(..., coils, M)``."""
        self._check_image(x)
        return self.plan.forward(self.coils(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Multi-coil samples ``(..., coils, M)`` -> image ``(..., H, W)``."""
        self._check_samples(y)
        return self.coils.adjoint(self.plan.adjoint(y))

    def density_compensated_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Gridding reconstruction ``Aᴴ(D y)`` with the density weights ``D = diag(dcf)``: samples -> image."""
        if self.dcf is None:
            raise OperatorInputError("this NonCartesianSense has no density compensation weights (pass dcf=...)")
        self._check_samples(y)
        return self.adjoint(y * self.dcf)

    def _toeplitz_kernel(self) -> torch.Tensor:
        """Real FFT of the PSF ``T[d] = (HW)⁻¹ Σ_m exp(2πi k_m·d/N)`` on the ``2H × 2W`` grid (circulant embedding)."""
        h, w = self.image_shape
        maps = self.maps
        big = NufftPlan(2.0 * self.plan.coord, (2 * h, 2 * w), self.plan.backend)
        ones = torch.ones(1, self.num_points, dtype=maps.dtype, device=maps.device)
        # the adjoint NUFFT on the doubled grid is (4HW)^(-1/2) Σ_m exp(2πi k_m·d/N) at offsets d (centred)
        psf = big.apply_adjoint(ones)[0] * (2.0 / math.sqrt(h * w))
        # offsets d = -H (row 0) and d = -W (column 0) never reach the cropped output; zeroing them makes T
        # Hermitian (T[-d] = conj T[d]), so its FFT is real: half the memory, and gram exactly self-adjoint
        psf[0, :] = 0
        psf[:, 0] = 0
        return torch.fft.fft2(torch.fft.ifftshift(psf, dim=(-2, -1))).real.contiguous()

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """``AᴴA x = Σ_c conj(S_c) · crop(T ⊛ pad(S_c x))``: image ``(..., H, W)`` -> same; the inner loop of CG.

        With ``toeplitz`` the convolution with the PSF ``T`` is a product with its precomputed FFT on the
        ``2H × 2W`` grid: two FFTs per coil, no interpolation (a 2-D FFT of the zero-padded input measured
        faster in torch than skipping its zero half with two 1-D passes).  Equal to ``adjoint(forward(x))``
        up to the NUFFT's accuracy.  On a CPU the images of a stack ``(..., H, W)`` (one set of maps) are
        applied one after the other, which is faster there than the batched transform.
        """
        if not self.toeplitz:
            return super().gram(x)
        self._check_image(x)
        if x.device.type == "cpu" and self.maps.ndim == 3 and x.ndim > 2:
            # on a CPU a stack of images goes through one at a time: the multi-coil 2H x 2W intermediates of a
            # whole stack leave the cache, and two 128^2 images at once took 2.5x one (measured, 8 coils, 2 threads)
            flat = x.reshape(-1, *self.image_shape)
            return torch.stack([self._toeplitz_gram(v) for v in flat]).reshape(x.shape)
        return self._toeplitz_gram(x)

    def _toeplitz_gram(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.image_shape
        k = torch.fft.fft2(self.coils(x), s=(2 * h, 2 * w))
        k.mul_(self._kernel_fft)
        return self.coils.adjoint(torch.fft.ifft2(k)[..., :h, :w])

    def normal_norm(self, iterations: int = 30, seed: int = 0) -> float:
        """``‖AᴴA‖₂`` (largest eigenvalue) by power iteration on :meth:`gram`, from a seeded random start.

        Slightly underestimates for few iterations; use ``λ < 2 / normal_norm()`` for Landweber steps.
        """
        gen = torch.Generator().manual_seed(seed)
        real = self.maps.real.dtype
        v = torch.complex(torch.randn(self.image_shape, generator=gen, dtype=real),
                          torch.randn(self.image_shape, generator=gen, dtype=real)).to(self.maps.device)
        lead = self.maps.shape[:-3]
        v = v.expand(*lead, *self.image_shape).clone()
        value = 0.0
        with torch.no_grad():
            for _ in range(max(1, iterations)):
                v = v / torch.linalg.vector_norm(v).clamp_min(1e-30)
                u = self.gram(v)
                value = float(torch.linalg.vector_norm(u))
                v = u
        return value
