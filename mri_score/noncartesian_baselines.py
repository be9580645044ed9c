"""Classical reconstructions of one non-Cartesian multi-coil slice: gridding, CG-SENSE, L1-wavelet, BART ``pics -t``.

The non-Cartesian counterparts of :mod:`mri_score.baselines`.  Each takes the slice's samples complex
``(coils, M)``, the trajectory ``(M, 2)`` in cycles/FOV (:mod:`operators.nufft`) and its
:class:`~mri_score.calibration.Calibration` (the coil maps and scale the score samplers use: every
SENSE-type method shares them), and returns a complex64 image ``(H, W)`` in the data's units.  Data are
divided by the calibration's scale before solving, so regularisation weights are comparable across
volumes (the Cartesian convention).  The forward model is :class:`operators.nufft.NonCartesianSense`;
its normal operator runs through the Toeplitz embedding, and the iterative solvers are preconditioned
by the circulant approximation of ``AᴴA`` (:func:`mri_score.noncartesian.circulant_normal_diagonal`),
which leaves their solutions unchanged and makes them converge in tens of iterations despite the
sample density's spread.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mri_score.baselines import bart_available
from mri_score.calibration import Calibration
from mri_score.cfl import read_cfl, write_cfl
from mri_score.errors import InputError, one_line
from mri_score.noncartesian import circulant_normal_diagonal, preconditioned_cg
from operators.errors import OperatorInputError
from operators.nufft import NonCartesianSense

#: The wavelet of the L1 baseline (sigpy's ``Wavelet``; the Cartesian baseline's ``L1WaveletRecon`` default).
WAVELET = "db4"


class BartNotInstalledError(RuntimeError):
    """``bart`` is not on PATH: the caller reports the method as not run."""


def _operator(samples: np.ndarray, coords: np.ndarray, cal: Calibration,
              density: np.ndarray | None = None) -> tuple[NonCartesianSense, torch.Tensor]:
    """The slice's ``NonCartesianSense`` (CPU, the calibration's maps) and its samples divided by the scale."""
    y = torch.from_numpy(np.asarray(samples)).to(torch.complex64)
    maps = cal.maps.detach().cpu().to(torch.complex64)
    if y.ndim != 2 or y.shape[0] != maps.shape[0]:
        raise InputError(f"samples must be (coils={maps.shape[0]}, M), got {tuple(y.shape)}")
    try:
        op = NonCartesianSense(maps, coords, dcf=density)
    except OperatorInputError as err:
        raise InputError(one_line(err)) from None
    if y.shape[1] != op.num_points:
        raise InputError(f"samples have {y.shape[1]} points per coil, the trajectory {op.num_points}")
    return op, y / cal.scale


def gridding(samples: np.ndarray, coords: np.ndarray, cal: Calibration, density: np.ndarray | None) -> np.ndarray:
    """Gridding reconstruction: the density-compensated adjoint NUFFT, SENSE-1 combined with the maps.

    ``Σ_c conj(S_c) F_nuᴴ(w · y_c) / Σ_c |S_c|²``; ``density`` (``(M,)``, (cycles/FOV)², e.g.
    :func:`operators.trajectories.pipe_menon_density`) is required.  Returns complex64 ``(H, W)``.
    """
    if density is None:
        raise InputError("gridding needs density-compensation weights (e.g. operators.trajectories.pipe_menon_density)")
    op, y = _operator(samples, coords, cal, density)
    with torch.no_grad():
        x = op.density_compensated_adjoint(y) / op.maps.abs().square().sum(dim=0).clamp_min(1e-12)
    return (x * cal.scale).numpy().astype(np.complex64)


def _circulant_solver(op: NonCartesianSense) -> tuple[torch.Tensor, Callable[[float], Callable]]:
    diag = circulant_normal_diagonal(op)

    def precondition(shift: float) -> Callable[[torch.Tensor], torch.Tensor]:
        inv = 1.0 / (shift + diag)
        return lambda r: torch.fft.ifft2(torch.fft.fft2(r) * inv)

    return diag, precondition


def cg_sense(samples: np.ndarray, coords: np.ndarray, cal: Calibration, lam: float = 0.01, iters: int = 30,
             preconditioned: bool = True) -> np.ndarray:
    """CG-SENSE: ``argmin ‖A x − y‖² + λ‖x‖²`` by ``iters`` steps of (preconditioned) CG on ``(AᴴA + λI) x = Aᴴy`` from 0.

    ``λ > 0`` in the scaled units (data / ``cal.scale``).  The normal operator is the Toeplitz Gram;
    the preconditioner ``(λ + ρ)⁻¹`` (circulant) changes the path, not the solution.  Complex64 ``(H, W)``.
    """
    if not lam > 0:
        raise InputError(f"lam must be > 0, got {lam}")
    op, y = _operator(samples, coords, cal)
    with torch.no_grad():
        aty = op.adjoint(y)[None]
        pre = _circulant_solver(op)[1](lam) if preconditioned else None
        x = preconditioned_cg(lambda v: torch.add(op.gram(v), v, alpha=lam), aty, torch.zeros_like(aty), pre, iters)
    return (x[0] * cal.scale).numpy().astype(np.complex64)


def _soft(v: np.ndarray, t: float) -> np.ndarray:
    mag = np.abs(v)
    return v * np.maximum(0.0, 1.0 - t / np.maximum(mag, 1e-30))


def l1_objective(samples: np.ndarray, coords: np.ndarray, cal: Calibration, lam: float, x: np.ndarray) -> float:
    """``½‖A x − y‖² + λ‖Ψ x‖₁`` of an image ``x`` (data units) in the scaled units: what :func:`l1_wavelet` minimises."""
    import sigpy as sp

    op, y = _operator(samples, coords, cal)
    xs = torch.from_numpy(np.asarray(x, dtype=np.complex64)) / cal.scale
    with torch.no_grad():
        res = op(xs) - y
    wav = sp.linop.Wavelet(tuple(xs.shape), wave_name=WAVELET)
    return float(0.5 * res.abs().square().sum() + lam * np.abs(wav(xs.numpy())).sum())


def l1_wavelet(samples: np.ndarray, coords: np.ndarray, cal: Calibration, lam: float, iters: int = 300,
               inner: int = 4, rho: float | None = None, tol: float = 1e-4) -> np.ndarray:
    """L1-wavelet compressed sensing, ``argmin ½‖A x − y‖² + λ‖Ψ x‖₁``, by ADMM on the project's NUFFT operator.

    ``Ψ`` is sigpy's orthogonal Daubechies-4 wavelet transform (:data:`WAVELET`, ``ΨᴴΨ = I``, as the Cartesian
    ``L1WaveletRecon`` baseline); ``A`` the slice's :class:`~operators.nufft.NonCartesianSense` (unweighted
    data term: the maximum-likelihood fit for white noise).  ADMM with the split ``z = Ψx``: ``x ←
    (AᴴA + ρI)⁻¹(Aᴴy + ρΨᴴ(z − u))`` (``inner`` warm-started preconditioned CG steps), ``z ← soft(Ψx + u,
    λ/ρ)``, ``u ← u + Ψx − z``; ``ρ`` is balanced against the residuals every 5 iterations (Boyd et al.
    2011, §3.4.1).  It starts at the scale of the Gram, ``max(10 λ, mean eigenvalue of AᴴA)`` (the mean of
    its circulant approximation): a start far below it leaves ADMM many doublings from balance, and a former
    fixed start (``max(10 λ, 0.05)``, 60 iterations) stopped up to 15 dB short of the minimiser on dense radial
    data at small λ.  It stops when the relative change of ``x`` in an iteration falls below ``tol`` or after
    ``iters`` iterations.  sigpy's own app with a trajectory takes gradient steps of ``1/‖AᴴA‖`` and needs
    hundreds of its (slower) NUFFT iterations on radial data; this reaches the same objective in tens to
    hundreds.

    Parameters
    ----------
    samples, coords, cal
        As every baseline here.
    lam : float
        λ > 0 in the scaled units (swept by the caller).
    iters : int
        Most ADMM iterations.
    inner : int
        CG steps per x-update.
    rho : float, optional
        Initial ADMM penalty (default: the Gram's scale, above).
    tol : float
        Stop when ``‖x_k − x_{k−1}‖ / ‖x_k‖ < tol``; 0 runs all ``iters``.

    Returns
    -------
    np.ndarray
        complex64 ``(H, W)``.
    """
    import sigpy as sp

    if not lam > 0:
        raise InputError(f"lam must be > 0, got {lam}")
    op, y = _operator(samples, coords, cal)
    h, w = op.image_shape
    wav = sp.linop.Wavelet((h, w), wave_name=WAVELET)
    diag, precondition = _circulant_solver(op)
    rho = float(rho) if rho is not None else max(10.0 * lam, float(diag.mean()))
    with torch.no_grad():
        aty = op.adjoint(y)[None]
        x = torch.zeros_like(aty)
        z = np.zeros(wav.oshape, dtype=np.complex64)
        u = np.zeros_like(z)
        for it in range(int(iters)):
            target = torch.from_numpy(np.asarray(wav.H(z - u), dtype=np.complex64))[None]
            x_old = x
            x = preconditioned_cg(lambda v, r=rho: torch.add(op.gram(v), v, alpha=r), aty + rho * target, x,
                                  precondition(rho), inner)
            wx = np.asarray(wav(x[0].numpy()), dtype=np.complex64)
            z_old = z
            z = _soft(wx + u, lam / rho).astype(np.complex64)
            u = u + wx - z
            if tol > 0 and float(torch.linalg.vector_norm(x - x_old)) < tol * float(torch.linalg.vector_norm(x)):
                break
            if (it + 1) % 5 == 0:
                primal = float(np.linalg.norm(wx - z))
                dual = rho * float(np.linalg.norm(z - z_old))
                if primal > 10.0 * dual:
                    rho, u = rho * 2.0, u / 2.0
                elif dual > 10.0 * primal:
                    rho, u = rho / 2.0, u * 2.0
    return (x[0] * cal.scale).numpy().astype(np.complex64)


def bart_pics(samples: np.ndarray, coords: np.ndarray, cal: Calibration, lam: float, iters: int = 100) -> np.ndarray:
    """BART ``pics -t`` with total variation (``-R T:7:0:λ``) and the calibration's maps, complex64 ``(H, W)``.

    ``-R T:7`` is BART's total variation (finite differences along the image axes; its wavelet ℓ1 is ``-R W``), as
    the Cartesian protocol's "bart pics TV" rows.

    BART's conventions: the trajectory ``(3, M, 1)`` with ``traj[0]`` the frequency along image dim 0
    (the rows, our ``coords[:, 0]``) and ``traj[1]`` along dim 1, in the same units (±N/2 spans the
    matrix); the samples ``(1, M, 1, coils)``, the maps ``(H, W, 1, coils)``, all through ``.cfl`` files in a
    temporary directory (:func:`mri_score.cfl.write_cfl`).  ``-S`` rescales the image to the data's units.
    BART runs with ``OMP_NUM_THREADS`` = torch's thread count.

    Raises
    ------
    BartNotInstalledError
        When ``bart`` is not on PATH (one line; the caller reports the method as not run).
    RuntimeError
        When ``bart`` fails (one line with its last message).
    """
    if not bart_available():
        raise BartNotInstalledError("bart not installed (apt-get install bart)")
    if not lam > 0:
        raise InputError(f"lam must be > 0, got {lam}")
    op, y = _operator(samples, coords, cal)
    h, w = op.image_shape
    c = np.asarray(coords, dtype=np.float32)
    traj = np.zeros((3, c.shape[0], 1), dtype=np.complex64)
    traj[0, :, 0], traj[1, :, 0] = c[:, 0], c[:, 1]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with tempfile.TemporaryDirectory(prefix="mri_score_bart_") as tmp:
        t = Path(tmp)
        write_cfl(t / "traj", traj)
        write_cfl(t / "ksp", y.numpy().T[None, :, None, :])
        write_cfl(t / "maps", cal.maps.detach().cpu().numpy().transpose(1, 2, 0)[:, :, None, :])
        cmd = ["bart", "pics", "-S", "-i", str(int(iters)), "-R", f"T:7:0:{lam}", "-t", str(t / "traj"), str(t / "ksp"),
               str(t / "maps"), str(t / "rec")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout or "").strip().splitlines()
            raise RuntimeError(f"bart pics failed (exit {done.returncode}): {tail[-1] if tail else 'no message'}")
        rec = read_cfl(t / "rec")
    return (np.asarray(rec).reshape(h, w) * cal.scale).astype(np.complex64)
