"""Likelihood terms ``log p(obs | x)`` that the posterior samplers combine with a score prior.

In the spirit of deepinv's data-fidelity objects, a term knows its observation and
offers the quantities a sampler needs, so a sampler is written once against this
interface and a new term (e.g. a noise-conditional classifier for classifier
guidance) plugs in without touching the samplers.  Images are complex
``(K, H, W)`` (``K`` posterior samples) in the scaled units the prior works in.

Every term has

* :meth:`Likelihood.grad`: ``∇_x log p(obs | x)`` at a clean image;
* :meth:`Likelihood.inflated_grad`: ``∇_x log p(obs | x_σ = x)`` at a noisy image, the
  clean likelihood's variance inflated by the prior noise σ² (Jalal et al. 2021);
* :meth:`Likelihood.tweedie_correction`: the correction ``σ² ∇_x log p(obs | x_σ)`` of the
  Tweedie estimate ``x̂₀ = D(x; σ)``, with the gradient taken by autograd through the
  denoiser (DPS, Chung et al. 2023).

Linear-Gaussian terms also have a proximal step and an explicit data-consistency step
(:attr:`Likelihood.has_prox`, :attr:`Likelihood.has_data_step`), used by DDS and PC.
How each sampler combines the terms is in :mod:`mri_score.samplers`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from operators import LinearOperator, conjugate_gradient


class Likelihood(ABC):
    """One term ``log p(obs | x)`` of the posterior."""

    #: the term offers :meth:`prox` (and a noise std ``sigma_y``)
    has_prox: bool = False
    #: the term offers :meth:`data_step`
    has_data_step: bool = False

    @abstractmethod
    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """``∇_x log p(obs | x)`` for complex ``x`` ``(K, H, W)``; same shape."""

    @abstractmethod
    def inflated_grad(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``∇_x log p(obs | x_σ = x)`` at prior noise level σ (variance-inflated); ``(K, H, W)``."""

    @abstractmethod
    def tweedie_correction(
        self, x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_data: float, zeta: float = 1.0,
        clip: bool = True, retain_graph: bool = False,
    ) -> torch.Tensor:
        """Correction ``Δ`` of the Tweedie estimate: ``E[x₀ | x_σ, obs] ≈ x̂₀ + Δ`` (detached, ``(K, H, W)``).

        Parameters
        ----------
        x : torch.Tensor
            The noisy image, a leaf that requires grad.
        x0 : torch.Tensor
            ``D(x; σ)`` computed from ``x`` with grad enabled (its graph is differentiated).
        sigma, sigma_data : float
            Noise level and the prior's data std (for the estimate's error variance).
        zeta : float
            Scale of the step (1: the Gaussian approximation's).
        clip : bool
            Bound the step by the term's own natural step length.
        retain_graph : bool
            Keep the graph for further terms.
        """

    def prox(self, x: torch.Tensor, gamma: float, iters: int) -> torch.Tensor:
        """``argmin_z ½‖z − x‖² − γ σ_y²/2 · log p(obs | z)`` (terms with :attr:`has_prox`)."""
        raise NotImplementedError(f"{type(self).__name__} has no proximal step")

    def data_step(self, x: torch.Tensor, weight: float) -> torch.Tensor:
        """An explicit data-consistency step of size ``weight`` (terms with :attr:`has_data_step`)."""
        raise NotImplementedError(f"{type(self).__name__} has no data-consistency step")


class GaussianKspaceLikelihood(Likelihood):
    """``y = A x + n`` with ``A`` a linear forward model (a :class:`~operators.Sense` operator) and complex Gaussian ``n``.

    Parameters
    ----------
    op : LinearOperator
        The forward model, e.g. ``Sense(maps, mask)`` of the slice (its ``gram`` is the CG inner loop).
    y : torch.Tensor
        Masked multi-coil k-space ``(coils, H, W)``, divided by the calibration's scale.
    sigma_y : float
        Noise std per complex k-space sample in the same units (``E|n|² = σ_y²``); each real
        component has variance ``v_y = σ_y²/2``, so ``∇ log p(y | x) = Aᴴ(y − A x) / v_y``.
    """

    has_prox = True
    has_data_step = True

    def __init__(self, op: LinearOperator, y: torch.Tensor, sigma_y: float) -> None:
        self.op = op
        self.y = y
        self.sigma_y = float(sigma_y)
        self.v_y = self.sigma_y**2 / 2.0
        self._aty: torch.Tensor | None = None
        self._trace: tuple[float, int] | None = None

    def zero_filled(self) -> torch.Tensor:
        """``Aᴴ y``, ``(H, W)`` (computed once)."""
        if self._aty is None:
            self._aty = self.op.adjoint(self.y)
        return self._aty

    def residual_grad(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᴴ(y − A x)`` for ``x`` ``(K, H, W)``: minus the gradient of ``½‖A x − y‖²``."""
        return self.op.adjoint(self.y - self.op(x))

    def error_variance(self, x: torch.Tensor) -> float:
        """Complex error variance ``2 r̂²`` per pixel of an estimate ``x`` ``(K, H, W)``, from its discrepancy.

        ``E‖A x − y‖² = 2 r² tr(AᴴA) + N σ_y²`` for ``x = x_true + e`` with white ``e`` of variance
        ``r²`` per real component and ``N`` measured samples, so ``2 r̂² = max(0, ‖A x − y‖² − N σ_y²)
        / tr(AᴴA)`` (mean over the ``K`` estimates).  Needs an operator with ``gram_trace`` and
        ``sample_count`` (:class:`~operators.Sense`).
        """
        if self._trace is None:
            if not (hasattr(self.op, "gram_trace") and hasattr(self.op, "sample_count")):
                raise TypeError(f"{type(self.op).__name__} has no gram_trace/sample_count for the discrepancy rule")
            self._trace = (max(self.op.gram_trace(), 1e-12), self.op.sample_count())
        trace, count = self._trace
        res = self.op(x) - self.y
        power = res.real.square() + res.imag.square()
        estimates = x.shape[0] if x.ndim > 2 else 1
        discrepancy = float(power.sum()) / estimates
        return max(0.0, discrepancy - count * self.sigma_y**2) / trace

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᴴ(y − A x) / v_y``."""
        return self.residual_grad(x) / self.v_y

    def inflated_grad(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``Aᴴ(y − A x) / (v_y + σ²)``: the likelihood with the prior noise σ² added to the data's."""
        return self.residual_grad(x) / (self.v_y + sigma**2)

    def data_step(self, x: torch.Tensor, weight: float) -> torch.Tensor:
        """Landweber step ``x + λ Aᴴ(y − A x)`` (``AᴴA ≤ I`` for normalised maps, so ``λ ≤ 1`` is stable)."""
        return x + weight * self.residual_grad(x)

    def prox(self, x: torch.Tensor, gamma: float, iters: int) -> torch.Tensor:
        """``argmin_z ½‖z − x‖² + γ/2 ‖A z − y‖²`` by ``iters`` CG steps on ``(I + γ AᴴA) z = x + γ Aᴴy`` from ``x``."""
        aty = self.zero_filled()
        return conjugate_gradient(  # v + γ AᴴA v in one fused op
            lambda v, g=gamma: torch.add(v, self.op.gram(v), alpha=g), x + gamma * aty, x0=x, max_iter=iters,
            batch_dims=1,
        ).x

    def tweedie_correction(
        self, x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_data: float, zeta: float = 1.0,
        clip: bool = True, retain_graph: bool = False,
    ) -> torch.Tensor:
        """DPS: ``−ζ σ² J_{x̂₀}ᴴ Aᴴ(A x̂₀ − y) / (σ_y² + r²)`` with ``r² = σ² σ_d² / (σ² + σ_d²)``.

        ``p(y | x_σ) ≈ N(y; A x̂₀, (σ_y² + r²) I)`` with ``r²`` the error variance of the Tweedie
        estimate; the Jacobian product is taken by autograd through the denoiser.  With ``clip`` the
        step is never longer than a full data-consistency step ``Aᴴ(A x̂₀ − y)`` (true for a Gaussian
        prior, where ``J ≼ (r²/σ²) I``; a trained network's Jacobian is not bounded that way).
        """
        res = self.op(x0) - self.y
        # ½‖A x̂₀ − y‖² summed over samples; its gradient w.r.t. x is J_{x̂₀}ᴴ Aᴴ(A x̂₀ − y)
        loss = 0.5 * (res.real.square().sum() + res.imag.square().sum())
        (grad,) = torch.autograd.grad(loss, x, retain_graph=retain_graph)
        r2 = sigma**2 * sigma_data**2 / (sigma**2 + sigma_data**2)
        step = zeta * sigma**2 / (self.sigma_y**2 + r2) * grad
        if clip:
            dc = self.op.adjoint(res.detach())
            limit = torch.linalg.vector_norm(dc.reshape(dc.shape[0], -1), dim=1)
            norm = torch.linalg.vector_norm(step.reshape(step.shape[0], -1), dim=1)
            step = step * (limit / norm.clamp_min(1e-12)).clamp(max=1.0)[:, None, None]
        return -step.detach()
