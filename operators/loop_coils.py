"""Evaluation-only receive physics: Biot–Savart loop-coil maps, smooth background phase, correlated coil noise.

This is deliberately **not** the training physics.  Training data (:mod:`mri_score.simulation`)
use sigpy's analytic birdcage maps (:func:`operators.coils.birdcage_maps`), a zero or
spline-field phase and white noise of equal variance in every coil.  Here:

* **Coil maps** are computed from first principles: each receive element is a circular
  wire loop; its quasi-static magnetic field on the image plane is integrated numerically
  with the Biot–Savart law (:func:`loop_field`), and by reciprocity the receive
  sensitivity is ``B1⁻ ∝ Bx − i·By``, the transverse components with B0 along ``z`` (the
  slice normal; an axial slice).  Loops sit on a ring (circular or elliptical) around the
  object, optionally in several rings, above or below the slice, and shifted off-centre
  (:class:`LoopGeometry`, :data:`GEOMETRIES`).  No wave effects (valid while the object is
  small against the RF wavelength, i.e. at 1.5 T and for heads at 3 T to first order).
* **Background phase**: a random low-order Legendre polynomial (:func:`smooth_phase`).
* **Noise**: complex Gaussian with a Hermitian coil covariance — unequal coil variances and
  correlation between neighbouring coils (:func:`correlated_noise`), removed again by
  :func:`prewhiten`.

Coordinates (millimetres, metres inside :func:`loop_field`): the image plane is ``z = 0``;
``x`` runs along the columns (``W``, spacing ``pixel_mm[1]``), ``y`` along the rows (``H``,
spacing ``pixel_mm[0]``), the origin at the centre of the field of view.  Maps follow the
project's convention: ``Σ_c |S_c|² = 1`` at every pixel (:func:`operators.coils.normalize_maps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np
import torch

from operators.coils import normalize_maps
from operators.errors import OperatorInputError

#: Vacuum permeability (T·m/A).
MU0 = 4e-7 * np.pi
#: Coil counts the loop-coil model accepts.
MIN_COILS, MAX_COILS = 4, 20

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def loop_field(
    points_m: np.ndarray,
    center_m: np.ndarray,
    normal: np.ndarray,
    radius_m: float,
    current_a: float = 1.0,
    segments: int = 256,
    eps_m: float = 0.0,
    chunk: int = 8192,
) -> np.ndarray:
    """Magnetic field of a circular current loop by numerical Biot–Savart integration.

    The loop is cut into ``segments`` straight chords; each chord contributes
    ``μ0 I / (4π) · dl × r / |r|³`` evaluated at its midpoint (``r`` from the midpoint to the
    field point).  The current circulates counter-clockwise about ``normal`` (right-hand
    rule), so on the axis the field points along ``+normal``.  The relative error against
    the exact loop is of order ``(π / segments)²``.

    Parameters
    ----------
    points_m : np.ndarray
        Field points, float ``(N, 3)``, metres.
    center_m : np.ndarray
        Loop centre, ``(3,)``, metres.
    normal : np.ndarray
        Loop axis ``(3,)`` (any length > 0).
    radius_m : float
        Loop radius, metres (> 0).
    current_a : float
        Current, amperes.
    segments : int
        Number of chords (>= 8).
    eps_m : float
        Softening length, metres: ``|r|³`` is replaced by ``(|r|² + eps²)^{3/2}`` so a point on
        the wire stays finite (0: the exact law).
    chunk : int
        Field points per batch (bounds the memory to about ``chunk · segments · 48`` bytes).

    Returns
    -------
    np.ndarray
        ``B``, float64 ``(N, 3)``, tesla.
    """
    pts = np.asarray(points_m, dtype=np.float64).reshape(-1, 3)
    n = np.asarray(normal, dtype=np.float64).reshape(3)
    if not np.linalg.norm(n) > 0:
        raise OperatorInputError("loop normal must be a non-zero vector")
    if not radius_m > 0:
        raise OperatorInputError(f"loop radius must be > 0, got {radius_m}")
    if segments < 8:
        raise OperatorInputError(f"loop needs at least 8 segments, got {segments}")
    n = n / np.linalg.norm(n)
    helper = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(n, helper)
    u /= np.linalg.norm(u)
    v = np.cross(n, u)  # (u, v, n) right-handed: increasing angle is counter-clockwise about n
    t = np.linspace(0.0, 2 * np.pi, segments + 1)
    wire = np.asarray(center_m, dtype=np.float64).reshape(1, 3) + radius_m * (
        np.cos(t)[:, None] * u[None] + np.sin(t)[:, None] * v[None])
    dl = np.diff(wire, axis=0)  # (M, 3)
    mid = 0.5 * (wire[1:] + wire[:-1])
    out = np.empty_like(pts)
    scale = MU0 * current_a / (4 * np.pi)
    for lo in range(0, pts.shape[0], chunk):
        p = pts[lo : lo + chunk]
        rx, ry, rz = (p[:, k, None] - mid[None, :, k] for k in range(3))  # (n, M) each
        w = scale / (rx * rx + ry * ry + rz * rz + eps_m**2) ** 1.5
        # (dl × r) / |r|³ summed over the chords
        out[lo : lo + chunk, 0] = ((dl[:, 1] * rz - dl[:, 2] * ry) * w).sum(axis=1)
        out[lo : lo + chunk, 1] = ((dl[:, 2] * rx - dl[:, 0] * rz) * w).sum(axis=1)
        out[lo : lo + chunk, 2] = ((dl[:, 0] * ry - dl[:, 1] * rx) * w).sum(axis=1)
    return out


def loop_axis_field(radius_m: float, z_m: np.ndarray | float, current_a: float = 1.0) -> np.ndarray:
    """Closed-form field on a loop's axis: ``B_z = μ0 I R² / (2 (R² + z²)^{3/2})`` (tesla)."""
    z = np.asarray(z_m, dtype=np.float64)
    return MU0 * current_a * radius_m**2 / (2 * (radius_m**2 + z**2) ** 1.5)


@dataclass(frozen=True)
class LoopGeometry:
    """Placement of a receive array of circular loops around the object (lengths in mm).

    Loops are spread evenly over ``rings`` rings (coil ``c`` goes to ring ``c % rings``);
    each ring is an ellipse with semi-axes ``a`` (along ``x``, the columns) and
    ``b = ellipticity · a`` (along ``y``, the rows), centred at ``offset_mm`` (x, y) from the
    image centre, at height ``z = elevation_mm + (ring − (rings − 1) / 2) · ring_spacing_mm``
    above the image plane.  Each loop is tangent to its ring: its axis is the ring's outward
    normal at the loop centre, so the loop's plane contains ``z``.  Ring ``k`` is rotated by
    ``start_deg + k · 180° / n_k`` so stacked rings interleave.

    Attributes
    ----------
    ring_radius_mm : float or None
        Semi-axis ``a``.  ``None``: the ellipse of the given ellipticity through the corner
        of the field of view (seen from the array's axis, ``offset_mm``) pushed out by
        ``clearance_mm`` along ``x`` and ``y``; it encloses the image, and as every loop lies in
        a tangent plane of this convex ring, no wire crosses the image.
    loop_radius_mm : float
        Radius of each loop.
    elevation_mm : float
        Height of the array's centre above the image plane (the slice is off the coils'
        centre plane when non-zero).
    rings : int
        Number of rings (>= 1).
    ring_spacing_mm : float
        Distance between neighbouring rings along ``z``.
    ellipticity : float
        ``b / a`` (> 0); 1 is a circular ring.
    offset_mm : tuple of float
        ``(x, y)`` position of the array's axis relative to the image centre.
    start_deg : float
        Angle of the first loop of ring 0, degrees from ``+x`` towards ``+y``.
    clearance_mm : float
        Gap between the field of view and the ring when ``ring_radius_mm`` is ``None``.
    """

    ring_radius_mm: float | None = None
    loop_radius_mm: float = 40.0
    elevation_mm: float = 0.0
    rings: int = 1
    ring_spacing_mm: float = 60.0
    ellipticity: float = 1.0
    offset_mm: tuple[float, float] = (0.0, 0.0)
    start_deg: float = 0.0
    clearance_mm: float = 15.0

    def semi_axes(self, fov_mm: tuple[float, float]) -> tuple[float, float]:
        """Ring semi-axes ``(a, b)`` in mm for an image whose field of view is ``fov_mm = (rows, cols)``."""
        if not self.ellipticity > 0:
            raise OperatorInputError(f"ellipticity must be > 0, got {self.ellipticity}")
        if self.ring_radius_mm is not None:
            if not self.ring_radius_mm > 0:
                raise OperatorInputError(f"ring radius must be > 0, got {self.ring_radius_mm}")
            a = float(self.ring_radius_mm)
        else:
            x = fov_mm[1] / 2 + abs(self.offset_mm[0]) + self.clearance_mm
            y = fov_mm[0] / 2 + abs(self.offset_mm[1]) + self.clearance_mm
            a = float(np.hypot(x, y / self.ellipticity))
        return a, a * float(self.ellipticity)

    def loops(self, coils: int, fov_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """Loop centres (mm) and unit axes, float64 ``(coils, 3)`` each, for ``fov_mm = (rows, cols)``."""
        if self.rings < 1 or self.rings > coils:
            raise OperatorInputError(f"rings must be in 1..{coils} (the coil count), got {self.rings}")
        if not self.loop_radius_mm > 0:
            raise OperatorInputError(f"loop radius must be > 0, got {self.loop_radius_mm}")
        a, b = self.semi_axes(fov_mm)
        centres, axes = [], []
        for c in range(coils):
            ring, k = c % self.rings, c // self.rings
            n_ring = len(range(ring, coils, self.rings))
            z = self.elevation_mm + (ring - (self.rings - 1) / 2) * self.ring_spacing_mm
            th = np.deg2rad(self.start_deg + ring * 180.0 / n_ring) + 2 * np.pi * k / n_ring
            centres.append((self.offset_mm[0] + a * np.cos(th), self.offset_mm[1] + b * np.sin(th), z))
            nrm = np.array([b * np.cos(th), a * np.sin(th), 0.0])  # outward normal of the ellipse
            axes.append(nrm / np.linalg.norm(nrm))
        return np.asarray(centres), np.asarray(axes)


#: Named array geometries for the evaluation physics (none of them is the training birdcage).
GEOMETRIES: dict[str, LoopGeometry] = {
    # one ring of 40 mm loops around the head, slice through the ring's plane
    "head_ring": LoopGeometry(),
    # the same ring 45 mm above the slice (a slice near the top or bottom of the array)
    "head_ring_elevated": LoopGeometry(elevation_mm=45.0),
    # two interleaved rings of smaller loops 70 mm apart, the slice half-way between them
    "two_rings": LoopGeometry(loop_radius_mm=32.0, rings=2, ring_spacing_mm=70.0),
    # an elliptical body-style array of large loops
    "body_ellipse": LoopGeometry(loop_radius_mm=60.0, ellipticity=0.7, clearance_mm=30.0),
    # the array's axis 25 mm right of and 15 mm below the image centre
    "offset": LoopGeometry(offset_mm=(25.0, -15.0), start_deg=20.0),
}


def resolve_geometry(geometry: str | LoopGeometry) -> LoopGeometry:
    """A :class:`LoopGeometry` from itself or from a name of :data:`GEOMETRIES`."""
    if isinstance(geometry, LoopGeometry):
        return geometry
    if geometry not in GEOMETRIES:
        raise OperatorInputError(f"unknown loop-coil geometry {geometry!r}; choose one of {', '.join(GEOMETRIES)}")
    return GEOMETRIES[geometry]


def pixel_grid_mm(shape: tuple[int, int], pixel_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)`` in mm, float64 ``(H, W)`` each, origin at the centre of the field of view."""
    h, w = shape
    y = (np.arange(h) - (h - 1) / 2) * float(pixel_mm[0])
    x = (np.arange(w) - (w - 1) / 2) * float(pixel_mm[1])
    yy, xx = np.meshgrid(y, x, indexing="ij")
    return xx, yy


def loop_coil_maps(
    coils: int,
    shape: tuple[int, int],
    pixel_mm: tuple[float, float],
    geometry: str | LoopGeometry = "head_ring",
    rng: np.random.Generator | None = None,
    segments: int = 128,
) -> np.ndarray:
    """Receive sensitivities of a loop array from the Biot–Savart field, ``B1⁻ ∝ Bx − i·By``.

    Parameters
    ----------
    coils : int
        Number of loops, :data:`MIN_COILS` to :data:`MAX_COILS`.
    shape : tuple of int
        Image ``(H, W)``.
    pixel_mm : tuple of float
        Pixel size ``(rows, cols)`` in mm (the field of view is ``shape · pixel_mm``).
    geometry : str or LoopGeometry
        A name of :data:`GEOMETRIES` or a geometry.
    rng : np.random.Generator, optional
        When given, each coil gets a random constant phase (receiver cable / preamplifier
        phase); otherwise the phase is the field's own.
    segments : int
        Chords per loop in the Biot–Savart integral.

    Returns
    -------
    np.ndarray
        complex64 ``(coils, H, W)``, ``Σ_c |S_c|² = 1`` at every pixel.
    """
    if not MIN_COILS <= int(coils) <= MAX_COILS:
        raise OperatorInputError(f"loop-coil maps take {MIN_COILS} to {MAX_COILS} coils, got {coils}")
    if len(shape) != 2 or min(shape) < 1:
        raise OperatorInputError(f"shape must be (H, W) with H, W >= 1, got {shape}")
    if len(pixel_mm) != 2 or not min(pixel_mm) > 0:
        raise OperatorInputError(f"pixel_mm must be two sizes > 0, got {pixel_mm}")
    geo = resolve_geometry(geometry)
    fov = (shape[0] * float(pixel_mm[0]), shape[1] * float(pixel_mm[1]))
    centres, axes = geo.loops(int(coils), fov)
    xx, yy = pixel_grid_mm(shape, pixel_mm)
    pts = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], axis=1) * 1e-3
    eps = 0.5e-3 * min(pixel_mm)
    maps = np.empty((int(coils), *shape), dtype=np.complex128)
    for c in range(int(coils)):
        b = loop_field(pts, centres[c] * 1e-3, axes[c], geo.loop_radius_mm * 1e-3, segments=segments, eps_m=eps)
        maps[c] = (b[:, 0] - 1j * b[:, 1]).reshape(shape)
    if rng is not None:
        maps *= np.exp(1j * rng.uniform(-np.pi, np.pi, size=int(coils)))[:, None, None]
    maps /= np.abs(maps).max()  # scale-free before normalising (the field is ~1e-6 T/A)
    return normalize_maps(torch.from_numpy(maps.astype(np.complex64))).numpy()


def smooth_phase(shape: tuple[int, int], rng: np.random.Generator, order: int = 3, amplitude: float = np.pi) -> np.ndarray:
    """A random smooth background phase: a constant plus a low-order 2-D Legendre polynomial.

    ``φ(y, x) = φ0 + s · f(y, x) / max|f|`` with ``f = Σ_{1 ≤ p+q ≤ order} c_pq P_p(y) P_q(x)``
    on ``y, x ∈ [−1, 1]`` across the field of view, ``c_pq ~ N(0, 1/(p+q)²)``, ``φ0`` uniform on
    ``[−π, π)`` and ``s`` uniform on ``[amplitude/2, amplitude]``.  By Markov's inequality for
    polynomials the phase step between neighbouring pixels is at most
    ``order² · s · 2 / (n − 1)`` radians along an axis of ``n`` pixels.

    Parameters
    ----------
    shape : tuple of int
        Image ``(H, W)``.
    rng : np.random.Generator
        Random source.
    order : int
        Highest total polynomial degree (>= 1).
    amplitude : float
        Largest excursion of the varying part, radians (> 0).

    Returns
    -------
    np.ndarray
        float32 ``(H, W)``, radians.
    """
    if order < 1:
        raise OperatorInputError(f"phase order must be >= 1, got {order}")
    if not amplitude > 0:
        raise OperatorInputError(f"phase amplitude must be > 0, got {amplitude}")
    h, w = shape
    y = np.linspace(-1.0, 1.0, h) if h > 1 else np.zeros(1)
    x = np.linspace(-1.0, 1.0, w) if w > 1 else np.zeros(1)
    py = np.polynomial.legendre.legvander(y, order)  # (H, order+1)
    px = np.polynomial.legendre.legvander(x, order)
    coef = np.zeros((order + 1, order + 1))
    for p in range(order + 1):
        for q in range(order + 1 - p):
            if p + q >= 1:
                coef[p, q] = rng.standard_normal() / (p + q)
    f = py @ coef @ px.T
    peak = np.abs(f).max()
    if not peak > 0:  # a one-pixel image: nothing varies
        f, peak = np.zeros_like(f), 1.0
    phi = rng.uniform(-np.pi, np.pi) + rng.uniform(amplitude / 2, amplitude) * f / peak
    return phi.astype(np.float32)


class CorrelatedNoise(NamedTuple):
    """A draw of correlated coil noise and its statistics.

    Attributes
    ----------
    noise : np.ndarray
        complex64 ``(coils, *shape)``, ``E[n nᴴ] = cov`` over the coil axis, independent across samples.
    cov : np.ndarray
        complex128 ``(coils, coils)`` Hermitian positive-definite covariance, mean diagonal 1.
    chol : np.ndarray
        complex128 ``(coils, coils)`` lower-triangular ``L`` with ``L Lᴴ = cov``.
    """

    noise: np.ndarray
    cov: np.ndarray
    chol: np.ndarray


def noise_covariance(coils: int, rng: np.random.Generator, correlation: float = 0.3,
                     spread: float = 0.25) -> np.ndarray:
    """A coil noise covariance with unequal variances and neighbour correlation.

    ``cov = D R D`` with ``R_ij = ρ^{j−i}`` for ``j ≥ i`` (Hermitian below), a complex
    ``ρ = correlation · e^{iθ}`` with a random ``θ`` — the correlation matrix of a complex AR(1)
    sequence, positive definite for ``|ρ| < 1``: neighbouring coils correlate by ``correlation``,
    coils ``k`` apart by ``correlation^k`` — and ``D = diag(σ_c)`` with ``σ_c²`` log-uniform in
    ``[1 − spread, 1 + spread]``, rescaled so the mean variance is 1.

    Parameters
    ----------
    coils : int
        Number of coils (>= 1).
    rng : np.random.Generator
        Random source.
    correlation : float
        Magnitude of the neighbour correlation coefficient, ``[0, 1)``.
    spread : float
        Relative spread of the coil noise variances, ``[0, 1)``.

    Returns
    -------
    np.ndarray
        complex128 ``(coils, coils)``.
    """
    if coils < 1:
        raise OperatorInputError(f"coils must be >= 1, got {coils}")
    if not 0 <= correlation < 1:
        raise OperatorInputError(f"noise correlation must be in [0, 1), got {correlation}")
    if not 0 <= spread < 1:
        raise OperatorInputError(f"noise variance spread must be in [0, 1), got {spread}")
    rho = correlation * np.exp(1j * rng.uniform(-np.pi, np.pi))
    lag = np.arange(coils)[None, :] - np.arange(coils)[:, None]
    corr = np.where(lag >= 0, rho ** np.abs(lag), np.conj(rho) ** np.abs(lag))
    var = np.exp(rng.uniform(np.log(1 - spread), np.log(1 + spread), size=coils)) if spread > 0 else np.ones(coils)
    var /= var.mean()
    sd = np.sqrt(var)
    cov = sd[:, None] * corr * sd[None, :]
    return 0.5 * (cov + cov.conj().T)


def correlated_noise(shape: tuple[int, ...], coils: int, rng: np.random.Generator, correlation: float = 0.3,
                     spread: float = 0.25) -> CorrelatedNoise:
    """Complex Gaussian coil noise with the covariance of :func:`noise_covariance`.

    ``n = L z`` over the coil axis with ``z`` i.i.d. circular complex normal
    (``E|z|² = 1``) and ``L`` the Cholesky factor of the covariance.

    Parameters
    ----------
    shape : tuple of int
        Sample shape per coil, e.g. k-space ``(H, W)``.
    coils : int
        Number of coils.
    rng : np.random.Generator
        Random source (the covariance is drawn first, then the samples).
    correlation, spread : float
        See :func:`noise_covariance`.

    Returns
    -------
    CorrelatedNoise
        ``noise`` complex64 ``(coils, *shape)``, ``cov`` and ``chol`` complex128 ``(coils, coils)``.
    """
    cov = noise_covariance(coils, rng, correlation, spread)
    chol = np.linalg.cholesky(cov)
    size = (coils, int(np.prod(shape, dtype=np.int64)))
    z = (rng.standard_normal(size) + 1j * rng.standard_normal(size)) / np.sqrt(2)
    noise = (chol @ z).reshape(coils, *shape).astype(np.complex64)
    return CorrelatedNoise(noise, cov, chol)


def prewhiten(data: ArrayT, cov: np.ndarray | torch.Tensor, coil_axis: int = -3) -> ArrayT:
    """Decorrelate coil data: ``L⁻¹ x`` over the coil axis, ``L`` the Cholesky factor of ``cov``.

    Noise of covariance ``cov`` comes out white with unit variance.  The transform is linear
    in the coil axis, so apply it to the coil maps too (``prewhiten(maps, cov)``) before a
    SENSE model uses the whitened data; the whitened maps are then no longer RSS-normalised.

    Parameters
    ----------
    data : np.ndarray or torch.Tensor
        Complex ``(..., coils, ...)``, the coil axis at ``coil_axis`` (default ``-3``:
        ``(..., coils, H, W)``).
    cov : np.ndarray or torch.Tensor
        Hermitian positive-definite ``(coils, coils)``.
    coil_axis : int
        Axis of ``data`` that holds the coils.

    Returns
    -------
    np.ndarray or torch.Tensor
        Same type, shape and dtype as ``data``.
    """
    is_np = isinstance(data, np.ndarray)
    x = torch.from_numpy(np.asarray(data)) if is_np else data
    c = torch.as_tensor(np.asarray(cov) if not torch.is_tensor(cov) else cov).to(torch.complex128)
    if x.ndim == 0 or c.ndim != 2 or c.shape[0] != c.shape[1] or x.shape[coil_axis] != c.shape[0]:
        raise OperatorInputError(f"prewhiten: covariance {tuple(c.shape)} does not match the coil axis {coil_axis} of "
                                 f"data {tuple(x.shape)}")
    try:
        chol = torch.linalg.cholesky(c)
    except RuntimeError as err:
        raise OperatorInputError("prewhiten: the noise covariance is not positive definite") from err
    moved = torch.movedim(x, coil_axis, 0)
    flat = moved.reshape(moved.shape[0], -1).to(device=chol.device, dtype=torch.complex128)
    white = torch.linalg.solve_triangular(chol, flat, upper=False)
    out = torch.movedim(white.reshape(moved.shape).to(x.dtype if torch.is_complex(x) else torch.complex64), 0, coil_axis)
    return out.numpy() if is_np else out

