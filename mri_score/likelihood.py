"""Likelihood terms ``log p(obs | x)`` that the posterior samplers combine with a score prior.

In the spirit of deepinv's data-fidelity objects, a term knows its observation and
offers the quantities a sampler needs, so a sampler is written once against this
interface and a new term (e.g. a noise-conditional classifier for classifier
guidance) plugs in without touching the samplers.  Images are complex
``(K, H, W)`` (``K`` posterior samples) in the scaled units the prior works in; a batch of
``B`` slices sampled together is ``(B·K, H, W)``, with the data term of all ``B`` slices as one
:class:`GaussianKspaceLikelihood` (:meth:`GaussianKspaceLikelihood.stack`) and terms that act on each
image alone (classifier guidance) unchanged.

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
from collections.abc import Callable, Sequence

import torch

from mri_score.errors import InputError
from operators import LinearOperator, Sense, conjugate_gradient


class Likelihood(ABC):
    """One term ``log p(obs | x)`` of the posterior."""

    #: the term offers :meth:`prox` (and a noise std ``sigma_y``)
    has_prox: bool = False
    #: the term offers :meth:`data_step`
    has_data_step: bool = False
    #: the term's forward model samples k-space off the Cartesian grid (a NUFFT); samplers whose tuned settings
    #: differ by physics read it (:meth:`mri_score.samplers.dds.DDSConfig.cg_steps` and ``gamma_floor``, with
    #: :meth:`tuned_cg_steps` and :meth:`tuned_gamma_floor`)
    noncartesian: bool = False

    def tuned_cg_steps(self) -> int:
        """CG steps per DDS step tuned for this term's physics (non-Cartesian terms: by the trajectory's kind and density)."""
        raise InputError(f"{type(self).__name__} has no tuned CG count: give the sampler option cg_iters_noncartesian")

    def tuned_gamma_floor(self) -> float | None:
        """DDS's data-weight floor tuned for this term's physics; None: the sampler's ``gamma_min`` (Cartesian terms)."""
        return None

    def tuned_final_denoise(self) -> float | None:
        """DDS's final denoising factor tuned for this term's physics; None: the sampler's ``final_denoise``."""
        return None

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

    def carried_noise_std(self, gamma: float | torch.Tensor) -> float | torch.Tensor | None:
        """Std per real component and pixel of the measurement noise that :meth:`prox` at ``gamma`` carries into its
        solution (terms with :attr:`has_prox`; None: the term cannot tell, see
        :meth:`GaussianKspaceLikelihood.carried_noise_std`)."""
        return None


class GaussianKspaceLikelihood(Likelihood):
    """``y = A x + n`` with ``A`` a linear forward model (a :class:`~operators.Sense` operator) and complex Gaussian ``n``.

    One term serves one slice or a batch of ``B`` slices sampled together (:meth:`stack`):

    * one slice: ``op`` maps images ``(K, H, W)`` to k-space, ``y`` is ``(coils, h, w)`` and ``sigma_y`` a float;
    * ``B`` slices: ``op`` has maps ``(B, 1, coils, H, W)`` (the singleton axis broadcasts over the ``K``
      samples), ``y`` is ``(B, 1, coils, h, w)`` and ``sigma_y`` one value per slice, float64 ``(B,)``.  Images
      are ``(B·K, H, W)``: rows ``b·K … b·K + K − 1`` are slice ``b``'s samples.  Every quantity that depends on
      the slice (σ_y, the data weight γ of :meth:`prox`, the discrepancy of :meth:`error_variance`) is per
      slice, so each slice gets what it would get alone (to floating-point rounding).  The forward model is
      applied to the whole batch at once (:attr:`op`), or slice by slice with each slice's own operator
      (:attr:`slice_by_slice`, the default on a CPU: one slice's multi-coil intermediates stay in the cache,
      and the batch's are twice as slow per slice at 128², 8 coils, ``benchmarks/results/throughput.md``).

    Parameters
    ----------
    op : LinearOperator
        The forward model, e.g. ``Sense(maps, mask)`` of the slice (its ``gram`` is the CG inner loop).
    y : torch.Tensor
        Masked multi-coil k-space ``(coils, h, w)`` (or ``(B, 1, coils, h, w)``), divided by the calibration's scale.
    sigma_y : float or torch.Tensor
        Noise std per complex k-space sample in the same units (``E|n|² = σ_y²``); each real
        component has variance ``v_y = σ_y²/2``, so ``∇ log p(y | x) = Aᴴ(y − A x) / v_y``.  A 1-D tensor
        (one value per slice) makes the term a batch of slices.
    """

    has_prox = True
    has_data_step = True

    def __init__(self, op: LinearOperator, y: torch.Tensor, sigma_y: float | torch.Tensor) -> None:
        self.op = op
        self.y = y
        #: slices in the batch; None for a one-slice term (float σ_y, images ``(K, H, W)``)
        self.slices: int | None = None
        if torch.is_tensor(sigma_y) and sigma_y.ndim == 1:
            self.sigma_y: float | torch.Tensor = sigma_y.detach().to("cpu", torch.float64)
            self.slices = int(sigma_y.shape[0])
            if y.ndim < 4 or y.shape[0] != self.slices:
                raise ValueError(f"{self.slices} σ_y values for k-space of shape {tuple(y.shape)}; a batch of slices "
                                 "has y (B, 1, coils, h, w)")
        else:
            self.sigma_y = float(sigma_y)
        self.v_y = self.sigma_y**2 / 2.0
        self._aty: torch.Tensor | None = None
        self._trace: tuple[float, int] | tuple[torch.Tensor, torch.Tensor] | None = None
        self._parts: list[LinearOperator] = []
        #: a batch applies each slice's own operator in turn (CPU) instead of :attr:`op` to all slices at once
        self.slice_by_slice = False

    @classmethod
    def stack(cls, terms: Sequence[GaussianKspaceLikelihood]) -> GaussianKspaceLikelihood:
        """One term for the slices of ``terms`` (one-slice terms on :class:`~operators.Sense` operators), sampled together.

        The slices must share the mask, the image grid and the measured matrix (the slices of one volume do);
        their maps, k-space and σ_y are stacked.  ``stack([term])`` is the batch of one slice.

        Raises
        ------
        ValueError
            When a term is not a one-slice Cartesian term or the slices differ in mask or shape.
        """
        if not terms:
            raise ValueError("no slices to stack")
        ops = [t.op for t in terms]
        first = ops[0]
        for t in terms:
            if type(t) is not cls or t.slices is not None or type(t.op) is not Sense:
                raise ValueError("only one-slice Gaussian k-space terms on Sense operators are stacked")
            if (t.op.maps.shape != first.maps.shape or t.op.kspace_shape != first.kspace_shape
                    or t.y.shape != terms[0].y.shape or not torch.equal(t.op.mask, first.mask)):
                raise ValueError("slices stacked into one batch must share the mask, the maps' shape and the matrix")
        crop = first.kspace_shape if first.kspace_shape != first.image_shape else None
        op = Sense(torch.stack([o.maps for o in ops])[:, None], first.mask, kspace_shape=crop)
        out = cls(op, torch.stack([t.y for t in terms])[:, None], torch.tensor([t.sigma_y for t in terms],
                                                                               dtype=torch.float64))
        out._parts = ops
        out.slice_by_slice = first.maps.device.type == "cpu"
        return out

    def _apply(self, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        """``fn(op, *tensors)``: with :attr:`op` on the whole batch, or per slice ``b`` with its own operator on
        ``tensor[b]`` of every tensor, stacked again (:attr:`slice_by_slice`); the two are the same numbers."""
        if self.slices is None or not self.slice_by_slice:
            return fn(self.op, *tensors)
        return torch.stack([fn(op, *(t[b] for t in tensors)) for b, op in enumerate(self._parts)])

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B·K, H, W)`` as ``(B, K, H, W)`` (a batch of slices); unchanged for one slice."""
        return x if self.slices is None else x.reshape(self.slices, -1, *x.shape[-2:])

    def per_slice(self, value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
        """A per-slice quantity ready to scale images viewed as ``(B, K, H, W)``: ``(B, 1, 1, 1)`` in ``like``'s real dtype.

        A float (a one-slice term) is returned as it is.
        """
        if not torch.is_tensor(value):
            return value
        real = like.real.dtype if like.is_complex() else like.dtype
        return value.to(device=like.device, dtype=real).reshape(-1, 1, 1, 1)

    def _aty_view(self) -> torch.Tensor:
        """``Aᴴ y``: ``(H, W)`` for one slice, ``(B, 1, H, W)`` for a batch (computed once)."""
        if self._aty is None:
            self._aty = self._apply(lambda op, y: op.adjoint(y), self.y)
        return self._aty

    def zero_filled(self) -> torch.Tensor:
        """``Aᴴ y``: ``(H, W)`` for one slice, ``(B, H, W)`` for a batch of slices (computed once)."""
        aty = self._aty_view()
        return aty if self.slices is None else aty[:, 0]

    def residual_grad(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᴴ(y − A x)`` for ``x`` ``(K, H, W)`` (a batch: ``(B·K, H, W)``): minus the gradient of ``½‖A x − y‖²``."""
        return self._apply(lambda op, v, y: op.adjoint(y - op(v)), self._view(x), self.y).reshape(x.shape)

    def _traces(self) -> tuple[float, int] | tuple[torch.Tensor, torch.Tensor]:
        """``(tr(AᴴA), measured samples)``: numbers for one slice, float64 ``(B,)`` tensors for a batch (once)."""
        if self._trace is None:
            ops = self._parts or [self.op]
            for op in ops:
                if not (hasattr(op, "gram_trace") and hasattr(op, "sample_count")):
                    raise TypeError(f"{type(op).__name__} has no gram_trace/sample_count for the discrepancy rule")
            traces = [max(op.gram_trace(), 1e-12) for op in ops]
            counts = [op.sample_count() for op in ops]
            if self.slices is None:
                self._trace = (traces[0], counts[0])
            else:
                self._trace = (torch.tensor(traces, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64))
        return self._trace

    def error_variance(self, x: torch.Tensor) -> float | torch.Tensor:
        """Complex error variance ``2 r̂²`` per pixel of an estimate ``x`` ``(K, H, W)``, from its discrepancy.

        ``E‖A x − y‖² = 2 r² tr(AᴴA) + N σ_y²`` for ``x = x_true + e`` with white ``e`` of variance
        ``r²`` per real component and ``N`` measured samples, so ``2 r̂² = max(0, ‖A x − y‖² − N σ_y²)
        / tr(AᴴA)`` (mean over the ``K`` estimates).  Needs an operator with ``gram_trace`` and
        ``sample_count`` (:class:`~operators.Sense`).  A batch of slices (``x`` ``(B·K, H, W)``) gives
        float64 ``(B,)``, each slice's own value.
        """
        trace, count = self._traces()
        res = self._apply(lambda op, v, y: op(v) - y, self._view(x), self.y)
        power = res.real.square() + res.imag.square()
        if self.slices is None:
            estimates = x.shape[0] if x.ndim > 2 else 1
            discrepancy = float(power.sum()) / estimates
            return max(0.0, discrepancy - count * self.sigma_y**2) / trace
        estimates = x.shape[0] // self.slices
        discrepancy = power.reshape(self.slices, -1).sum(dim=1).to("cpu", torch.float64) / estimates
        return (discrepancy - count * self.sigma_y**2).clamp_min(0.0) / trace

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᴴ(y − A x) / v_y``."""
        g = self._view(self.residual_grad(x))
        return (g / self.per_slice(self.v_y, g)).reshape(x.shape)

    def inflated_grad(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``Aᴴ(y − A x) / (v_y + σ²)``: the likelihood with the prior noise σ² added to the data's."""
        g = self._view(self.residual_grad(x))
        return (g / self.per_slice(self.v_y + sigma**2, g)).reshape(x.shape)

    def data_step(self, x: torch.Tensor, weight: float) -> torch.Tensor:
        """Landweber step ``x + λ Aᴴ(y − A x)`` (``AᴴA ≤ I`` for normalised maps, so ``λ ≤ 1`` is stable)."""
        return x + weight * self.residual_grad(x)

    def carried_noise_std(self, gamma: float | torch.Tensor) -> float | torch.Tensor:
        """Std per real component of the measurement noise in :meth:`prox`'s exact solution at ``gamma``, mean over pixels.

        The solution ``z = (I + γAᴴA)⁻¹(x + γAᴴy)`` holds the noise ``γ(I + γAᴴA)⁻¹Aᴴn``.  With ``AᴴA``
        diagonal in the Fourier basis of the image grid with eigenvalues ``ρ_k`` (a Cartesian mask and
        normalised maps: ``ρ_k = 1`` on the measured fraction ``f = tr(AᴴA) / (H W)`` of the grid, 0
        elsewhere), its complex variance per pixel is ``σ_y² mean_k γ²ρ_k / (1 + γρ_k)²``
        ``= σ_y² f γ² / (1 + γ)²``, so the std per real component is ``σ_y γ √f / (√2 (1 + γ))``.  Exact
        for one coil or full sampling; with several coils and undersampling the eigenvalues spread over
        ``[0, 1]`` and this is a lower bound (``γ²λ/(1 + γλ)² ≥ λγ²/(1 + γ)²``).  It is the noise level
        DDS's final denoising step removes (``final_denoise``).

        Parameters
        ----------
        gamma : float or torch.Tensor
            The data weight, a float or one value per slice (``(B,)``).

        Returns
        -------
        float or torch.Tensor
            A float for one slice, float64 ``(B,)`` for a batch.
        """
        trace, _ = self._traces()
        h, w = self.op.image_shape  # type: ignore[attr-defined]
        fraction = trace / (h * w)
        if torch.is_tensor(gamma):
            gamma = gamma.to("cpu", torch.float64)
        return self.sigma_y * gamma / (1.0 + gamma) / 2**0.5 * fraction**0.5

    def prox(self, x: torch.Tensor, gamma: float | torch.Tensor, iters: int) -> torch.Tensor:
        """``argmin_z ½‖z − x‖² + γ/2 ‖A z − y‖²`` by ``iters`` CG steps on ``(I + γ AᴴA) z = x + γ Aᴴy`` from ``x``.

        ``gamma`` is a float, or for a batch of slices one value per slice (``(B,)``).
        """
        v = self._view(x)
        g = self.per_slice(gamma, v)
        if torch.is_tensor(g):
            def normal(u: torch.Tensor) -> torch.Tensor:
                return u + g * self._apply(lambda op, w: op.gram(w), u)
        else:
            def normal(u: torch.Tensor) -> torch.Tensor:
                return torch.add(u, self.op.gram(u), alpha=g)  # v + γ AᴴA v in one fused op
        out = conjugate_gradient(normal, v + g * self._aty_view(), x0=v, max_iter=iters, batch_dims=v.ndim - 2).x
        return out.reshape(x.shape)

    def tweedie_correction(
        self, x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_data: float, zeta: float = 1.0,
        clip: bool = True, retain_graph: bool = False,
    ) -> torch.Tensor:
        """DPS: ``−ζ σ² J_{x̂₀}ᴴ Aᴴ(A x̂₀ − y) / (σ_y² + r²)`` with ``r² = σ² σ_d² / (σ² + σ_d²)``.

        ``p(y | x_σ) ≈ N(y; A x̂₀, (σ_y² + r²) I)`` with ``r²`` the error variance of the Tweedie
        estimate; the Jacobian product is taken by autograd through the denoiser.  With ``clip`` the
        step is never longer than a full data-consistency step ``Aᴴ(A x̂₀ − y)`` (true for a Gaussian
        prior, where ``J ≼ (r²/σ²) I``; a trained network's Jacobian is not bounded that way).
        For a batch of slices the loss is summed over them (one backward pass): each slice's rows get the
        gradient of its own term, as the denoiser treats every image on its own.
        """
        res = self._apply(lambda op, v, y: op(v) - y, self._view(x0), self.y)
        # ½‖A x̂₀ − y‖² summed over samples; its gradient w.r.t. x is J_{x̂₀}ᴴ Aᴴ(A x̂₀ − y)
        loss = 0.5 * (res.real.square().sum() + res.imag.square().sum())
        (grad,) = torch.autograd.grad(loss, x, retain_graph=retain_graph)
        r2 = sigma**2 * sigma_data**2 / (sigma**2 + sigma_data**2)
        g = self._view(grad)
        step = (self.per_slice(zeta * sigma**2 / (self.sigma_y**2 + r2), g) * g).reshape(grad.shape)
        if clip:
            dc = self._apply(lambda op, r: op.adjoint(r), res.detach()).reshape(grad.shape)
            limit = torch.linalg.vector_norm(dc.reshape(dc.shape[0], -1), dim=1)
            norm = torch.linalg.vector_norm(step.reshape(step.shape[0], -1), dim=1)
            step = step * (limit / norm.clamp_min(1e-12)).clamp(max=1.0)[:, None, None]
        return -step.detach()
