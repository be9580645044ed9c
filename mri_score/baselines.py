"""fastMRI-style baselines on one multi-coil slice: zero-filled RSS, CG-SENSE, sigpy L1-wavelet and TV, BART pics.

All take undersampled k-space ``(coils, H, W)`` complex64 (numpy), its mask and
(except zero-filled) the slice's :class:`~mri_score.calibration.Calibration`
(ACS coil maps and reference scale, the same the score samplers use), and
return a complex or real image ``(H, W)``.  Data are divided by the
calibration's scale before solving, so regularisation weights are comparable
across volumes; results are returned in the original units.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from mri_score.calibration import Calibration
from operators import Sense, conjugate_gradient, ifft2c, rss

#: Seed of the power iteration sigpy's apps run to find their step size.
SIGPY_SEED = 0


def zero_filled_rss(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RSS of the zero-filled coil images, real ``(H, W)``."""
    k = torch.from_numpy(kspace) * torch.from_numpy(mask)
    return rss(ifft2c(k), dim=0).numpy()


def cg_sense(kspace: np.ndarray, mask: np.ndarray, cal: Calibration, lam: float = 1e-3,
             iters: int = 30) -> np.ndarray:
    """CG-SENSE: ``argmin ‖Ax − y‖² + λ‖x‖²`` by ``iters`` CG steps, complex ``(H, W)``."""
    scale = cal.scale
    op = Sense(cal.maps.cpu(), torch.from_numpy(mask))
    y = torch.from_numpy(kspace) / scale
    x = conjugate_gradient(op.gram, op.adjoint(y), lam=lam, max_iter=iters, tol=1e-6).x
    return (x * scale).numpy()


def _sigpy_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(mask, shape).astype(np.float32)


def _sigpy_app(app_name: str, kspace: np.ndarray, mask: np.ndarray, cal: Calibration, lam: float,
               iters: int) -> np.ndarray:
    import sigpy.mri.app

    scale = cal.scale
    y = kspace / scale
    app = getattr(sigpy.mri.app, app_name)
    # sigpy estimates the step size by power iteration from a start vector drawn from numpy's *global*
    # random state; seeding it here (and restoring it after) makes the baselines deterministic
    state = np.random.get_state()
    np.random.seed(SIGPY_SEED)
    try:
        x = app(y, cal.maps.cpu().numpy(), lam, weights=_sigpy_mask(mask, y.shape), max_iter=iters,
                show_pbar=False).run()
    finally:
        np.random.set_state(state)
    return np.asarray(x) * scale


def l1_wavelet(kspace: np.ndarray, mask: np.ndarray, cal: Calibration, lam: float, iters: int = 100) -> np.ndarray:
    """sigpy ``L1WaveletRecon`` (Daubechies-4 wavelets, FISTA-type), complex ``(H, W)``."""
    return _sigpy_app("L1WaveletRecon", kspace, mask, cal, lam, iters)


def total_variation(kspace: np.ndarray, mask: np.ndarray, cal: Calibration, lam: float, iters: int = 100) -> np.ndarray:
    """sigpy ``TotalVariationRecon`` (primal-dual), complex ``(H, W)``."""
    return _sigpy_app("TotalVariationRecon", kspace, mask, cal, lam, iters)


def bart_available() -> bool:
    """True when the ``bart`` command line (Debian package ``bart``) is on PATH."""
    return shutil.which("bart") is not None


def _write_cfl(base: Path, arr: np.ndarray) -> None:
    dims = list(arr.shape) + [1] * (16 - arr.ndim)
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    arr.astype(np.complex64).flatten(order="F").tofile(base.with_suffix(".cfl"))


def _read_cfl(base: Path) -> np.ndarray:
    dims = [int(d) for d in base.with_suffix(".hdr").read_text().splitlines()[1].split()]
    n = int(np.prod(dims))
    data = np.fromfile(base.with_suffix(".cfl"), dtype=np.complex64, count=n)
    last = max(i for i, d in enumerate(dims) if d > 1) + 1 if n > 1 else 1
    return data.reshape(dims[:last], order="F")


def bart_version() -> str | None:
    """``bart version``'s output (e.g. ``v0.8.00``), or None when bart is not installed."""
    if not bart_available():
        return None
    out = subprocess.run(["bart", "version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def bart_pics(kspace: np.ndarray, mask: np.ndarray, cal: Calibration, lam: float, iters: int = 100,
              calib: int | None = None, maps: str = "shared", regularizer: str = "T") -> np.ndarray:
    """BART's ``pics`` with one regulariser: ``-R T:7:0:λ`` (total variation, fastMRI's CS baseline script) or
    ``-R W:7:0:λ`` (wavelet ℓ1); complex ``(H, W)``.

    ``maps="shared"`` (default) solves with the calibration's coil maps, the same every
    SENSE-type method uses; ``maps="ecalib"`` lets BART estimate its own (``bart ecalib -m1
    -c0``, ``calib`` ACS lines when given), as the fastMRI baseline does.  k-space goes to
    BART as ``(H, W, 1, coils)`` ``.cfl`` files (readout, phase, slice, coil).
    """
    if maps not in ("shared", "ecalib"):
        raise ValueError(f"maps must be 'shared' or 'ecalib', got {maps!r}")
    if regularizer not in ("T", "W"):
        raise ValueError(f"regularizer must be 'T' (total variation) or 'W' (wavelet), got {regularizer!r}")
    scale = cal.scale
    if not bart_available():
        raise RuntimeError("bart is not installed (apt-get install bart)")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        k = (kspace * mask / scale).transpose(1, 2, 0)[:, :, None, :]
        _write_cfl(t / "ksp", k)
        if maps == "ecalib":
            width = ["-r", str(calib)] if calib else []
            subprocess.run(["bart", "ecalib", "-m1", "-c0", *width, str(t / "ksp"), str(t / "maps")], check=True,
                           capture_output=True)
        else:
            _write_cfl(t / "maps", cal.maps.cpu().numpy().transpose(1, 2, 0)[:, :, None, :])
        subprocess.run(["bart", "pics", "-S", "-i", str(iters), "-R", f"{regularizer}:7:0:{lam}", str(t / "ksp"),
                        str(t / "maps"), str(t / "rec")], check=True, capture_output=True)
        rec = _read_cfl(t / "rec")
    return np.asarray(rec).reshape(kspace.shape[-2:]) * scale
