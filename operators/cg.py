"""Batched conjugate gradient for ``(λI + AᴴA) x = b`` on complex tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from operators.errors import OperatorInputError


@dataclass
class CGResult:
    """Solution ``x``, iterations used and the final relative residual per batch item."""

    x: torch.Tensor
    iterations: int
    relative_residual: torch.Tensor


def conjugate_gradient(
    normal_op: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    lam: float = 0.0,
    max_iter: int = 20,
    tol: float = 1e-6,
    batch_dims: int = 0,
) -> CGResult:
    """Solve ``(λI + N) x = b`` for Hermitian positive (semi-)definite ``N``.

    Parameters
    ----------
    normal_op : callable
        ``x -> N x``, e.g. ``Sense.gram``.
    b : torch.Tensor
        Right-hand side, complex, shape ``(*batch, ...)``.
    x0 : torch.Tensor, optional
        Initial guess (zeros by default).
    lam : float
        Tikhonov weight λ ≥ 0 added to the diagonal.
    max_iter : int
        Iteration cap.
    tol : float
        Stop when every batch item has ``‖r‖ / ‖b‖ ≤ tol``.
    batch_dims : int
        Number of leading dims that index independent systems; inner products
        are taken over the remaining dims with ``Σ conj(a)·b``.

    Notes
    -----
    The iterates are updated in place, so the solve is not differentiable by autograd (no caller
    needs that).  The working dtype is the promotion of ``b``'s, ``x0``'s and ``N x``'s (e.g.
    complex128 maps applied to a complex64 image give a complex128 solve).
    """
    if lam < 0:
        raise OperatorInputError(f"lam must be >= 0, got {lam}")
    if max_iter < 0:
        raise OperatorInputError(f"max_iter must be >= 0, got {max_iter}")
    batch = b.shape[:batch_dims]
    shape = batch + (1,) * (b.ndim - batch_dims)

    def apply(v: torch.Tensor) -> torch.Tensor:
        out = normal_op(v)
        return out + lam * v if lam else out

    def dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # Σ conj(u)·v over the non-batch dims, fused (no product tensor)
        return torch.linalg.vecdot(u.reshape(*batch, -1), v.reshape(*batch, -1)).reshape(shape)

    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = dot(r, r).real
    bnorm = dot(b, b).real.sqrt().clamp_min(1e-30)
    it = 0
    for it in range(1, max_iter + 1):
        if bool(((rr.sqrt() / bnorm) <= tol).all()):
            it -= 1
            break
        ap = apply(p)
        if ap.dtype != x.dtype:  # b, x0 or N promotes (e.g. complex128 maps): move the iterates there once
            dtype = torch.promote_types(ap.dtype, x.dtype)
            x, r, p, ap = (t.to(dtype) for t in (x, r, p, ap))
        pap = dot(p, ap).real
        alpha = rr / pap.clamp_min(1e-30)
        alpha = torch.where(rr > 0, alpha, torch.zeros_like(alpha))
        # x, r and p are this function's own tensors: update them in place
        x.addcmul_(p, alpha)
        r.addcmul_(ap, alpha, value=-1)
        rr_new = dot(r, r).real
        beta = rr_new / rr.clamp_min(1e-30)
        p.mul_(beta).add_(r)
        rr = rr_new
    rel = (rr.sqrt() / bnorm).reshape(b.shape[:batch_dims])
    return CGResult(x=x, iterations=it, relative_residual=rel)
