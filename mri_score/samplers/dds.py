"""Decomposed diffusion sampling (Chung, Lee & Ye, ICLR 2024): the fast default.

Per step i (Karras σ schedule):

1. denoise: ``x̂₀ = D(x_i; σ_i)`` (one NFE);
2. data consistency: ``cg_iters`` CG steps (on radial or spiral data ``cg_iters_noncartesian``, by default a count
   that follows the trajectory's kind and sampling density, :meth:`DDSConfig.cg_steps`) on
   ``(I + γ_i AᴴA) x = x̂₀ + γ_i Aᴴy``, started at ``x̂₀``;
3. re-noise DDIM-style: ``x_{i+1} = x̂₀' + √(σ_{i+1}² − c²) ε̂ + c z`` with
   ``ε̂ = (x_i − x̂₀)/σ_i`` and ``c = η σ_{i+1}``.

γ_i ties the data weight to the noise levels instead of a magic constant: the
Tweedie estimate has error variance of about ``r_i² = σ_i² σ_d² / (σ_i² + σ_d²)``
per real component and the data ``σ_y²/2``, so the MAP of the two is
``γ_i = 2 r_i² / σ_y²`` (times ``gamma_scale``), clipped to ``[gamma_min, gamma_max]``.
A fixed ``gamma`` overrides it.  On a non-Cartesian term the floor is ``gamma_min_noncartesian`` where given, else
the floor tuned for the trajectory's kind (:data:`mri_score.noncartesian.NONCARTESIAN_GAMMA_FLOOR`), else
``gamma_min`` (:meth:`DDSConfig.gamma_floor`).

``gamma_rule=discrepancy`` replaces the formula's ``r_i²`` (right only when the prior is) by the
error the data show: the estimate's discrepancy ``‖A x̂₀ − y‖²`` has expectation
``2 r² tr(AᴴA) + N σ_y²`` (``N`` measured samples, white error of variance ``r²`` per real
component), so ``2 r̂² = max(0, ‖A x̂₀ − y‖² − N σ_y²) / tr(AᴴA)``
(:meth:`mri_score.likelihood.GaussianKspaceLikelihood.error_variance`) and
``γ_i = 2 r̂_i² / σ_y²`` (times ``gamma_scale``, clipped).  An estimate the data agree with to the
noise level gets the floor (:meth:`DDSConfig.gamma_floor`); one the data contradict (a prior off its training distribution)
gets the weight its actual error calls for.  One forward model per step, per slice and step, no tuning.
Both rules give each slice of a batch its own γ_i (its own σ_y and discrepancy).

``final_gamma_rule=discrepancy`` applies the discrepancy rule at the last step only (the others keep
``gamma_rule``): there the noise rule's ``r_i`` (σ_min = 0.002) would claim an all but exact prior estimate and
give the floor, whereas the data show the error the estimate actually has; when the data almost suffice
(high SNR, low acceleration) the last data-consistency step then weighs them by what they are worth.

Likelihood terms with a proximal step (the Gaussian k-space term) enter through step 2, one
after the other; every other term corrects the Tweedie estimate before it, by Tweedie's
formula for the posterior: ``x̂₀ ← x̂₀ + σ_i² ∇ log p(obs | x_i)`` (its inflated gradient).
NFE = budget.

``coarse_steps = n`` runs the first ``n`` steps on the measured matrix when the sampling grid is finer
(``--grid``; :class:`CoarseStage`): the high levels set coarse structure, which the measured grid resolves at a
quarter of a 2x grid's network cost, and the estimate is lifted to the fine grid (Fourier interpolation) and
re-noised there for the rest.  ``auto`` (the default) is a third of the budget (8 of 24), ``0`` turns it off.  On
the measured grid, and on trajectories, it changes nothing (coarse pixels keep a finer grid at every
acceleration).  Chosen by the rule of ``configs/ablation_coarse_dev.yaml`` (development data): −0.04 dB on the real
set at 4x for 22 % less CPU time.

The schedule starts at ``σ_max = 1`` and takes 24 steps by default: the data are scaled so
that the ACS image's 99th percentile is 1, and the start ``Aᴴy + σ_max z`` is already dominated by
noise, so higher levels only spend steps where nothing forms.  Below σ = 1 the 24-step schedule
has the levels of the previous default (30 steps from σ_max = 3) within 9 % each (Karras ρ = 7 puts
few levels up there).  The schedule was chosen by a rule fixed before the run, on tuning slices the
protocol never reports (``benchmarks/run_speed_tuning.py`` → ``benchmarks/results/speed_tuning.md``, where the
measured differences are); ``cg_iters`` by an earlier tuning now archived
(``benchmarks/results/archive/dds_tuning.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from mri_score.errors import InputError
from mri_score.likelihood import Likelihood
from mri_score.prior import ComplexPrior
from mri_score.samplers.base import (
    Generators,
    SamplerConfig,
    SamplerResult,
    karras_sigmas,
    randn_complex,
    split_terms,
)

#: Rules for the data weight γ_i when no fixed ``gamma`` is given (see module docstring).
GAMMA_RULES = ("noise", "discrepancy")
#: The largest ``final_denoise`` factor (a denoising level of several times the carried noise only blurs).
FINAL_DENOISE_MAX = 4.0


@dataclass(frozen=True)
class DDSConfig(SamplerConfig):
    """DDS options: σ range, CG steps per data-consistency step, DDIM η and the data weight γ (see module)."""

    name: ClassVar[str] = "dds"
    default_nfe: ClassVar[int] = 24
    #: 2: σ_max 3 → 1 and 30 → 24 NFE (keys of factors fitted before name no version); 3: coarse_steps auto (a third
    #: of the budget on the measured matrix when the sampling grid is finer)
    defaults_version: ClassVar[int] = 3

    sigma_max: float = 1.0
    sigma_min: float = 0.002
    cg_iters: int = 10
    cg_iters_noncartesian: int | None = None
    eta: float = 1.0
    gamma: float | None = None
    gamma_scale: float = 1.0
    gamma_min: float = 1.0
    gamma_min_noncartesian: float | None = None
    gamma_max: float = 1e4
    gamma_rule: str = "noise"
    final_gamma_rule: str = "same"
    final_denoise: float = 0.0
    final_denoise_noncartesian: float | None = None
    coarse_steps: int | None = None

    def validate(self) -> None:
        """σ_max > σ_min > 0, both CG counts ≥ 0, η in [0, 1], positive γ bounds with γ_min ≤ γ_max, a known γ rule."""
        self._require(self.sigma_min > 0, "sigma_min", "> 0")
        self._require(self.sigma_max > self.sigma_min, "sigma_max", "> sigma_min")
        self._require(self.cg_iters >= 0, "cg_iters", ">= 0")
        self._require(self.cg_iters_noncartesian is None or self.cg_iters_noncartesian >= 0, "cg_iters_noncartesian",
                      ">= 0 or auto")
        self._require(0.0 <= self.eta <= 1.0, "eta", "in [0, 1]")
        self._require(self.gamma is None or self.gamma > 0, "gamma", "> 0, auto or none")
        self._require(self.gamma_scale > 0, "gamma_scale", "> 0")
        self._require(self.gamma_min > 0, "gamma_min", "> 0")
        self._require(self.gamma_max >= self.gamma_min, "gamma_max", ">= gamma_min")
        self._require(self.gamma_min_noncartesian is None or 0 < self.gamma_min_noncartesian <= self.gamma_max,
                      "gamma_min_noncartesian", "in (0, gamma_max], auto or none")
        self._require(self.gamma_rule in GAMMA_RULES, "gamma_rule", f"one of {', '.join(GAMMA_RULES)}")
        self._require(0.0 <= self.final_denoise <= FINAL_DENOISE_MAX, "final_denoise", f"in [0, {FINAL_DENOISE_MAX:g}]")
        self._require(self.final_denoise_noncartesian is None
                      or 0.0 <= self.final_denoise_noncartesian <= FINAL_DENOISE_MAX, "final_denoise_noncartesian",
                      f"in [0, {FINAL_DENOISE_MAX:g}], auto or none")
        self._require(self.final_gamma_rule in ("same", *GAMMA_RULES), "final_gamma_rule",
                      f"one of same, {', '.join(GAMMA_RULES)}")
        self._require(self.coarse_steps is None or self.coarse_steps >= 0, "coarse_steps", ">= 0, auto or none")

    def gamma_floor(self, term: Likelihood) -> float:
        """The lower clip of ``term``'s data weight: on a non-Cartesian k-space term
        (:attr:`mri_score.likelihood.Likelihood.noncartesian`) ``gamma_min_noncartesian`` where given (``auto`` or
        ``none``: not given), else the floor tuned for its trajectory's kind (:meth:`mri_score.likelihood.Likelihood.
        tuned_gamma_floor`, at most ``gamma_max``), else ``gamma_min``; ``gamma_min`` on every other term.

        The noise rule's weight falls below 1 once σ is small, so the floor sets it for most steps.  The
        unweighted NUFFT Gram is not bounded by ``I`` as a masked orthonormal FFT is, so one floor need not suit
        both physics (``docs/history.md``, the floor probe on trajectories).
        """
        if term.noncartesian:
            if self.gamma_min_noncartesian is not None:
                return self.gamma_min_noncartesian
            tuned = term.tuned_gamma_floor()
            if tuned is not None:
                return min(tuned, self.gamma_max)
        return self.gamma_min

    def final_denoise_factor(self, term: Likelihood) -> float:
        """The final denoising factor of ``term``: on a non-Cartesian term ``final_denoise_noncartesian`` where given
        (``auto`` or ``none``: not given), else the factor tuned for its trajectory's kind
        (:meth:`mri_score.likelihood.Likelihood.tuned_final_denoise`), else ``final_denoise``; ``final_denoise`` on
        every other term (as :meth:`gamma_floor`)."""
        if term.noncartesian:
            if self.final_denoise_noncartesian is not None:
                return self.final_denoise_noncartesian
            tuned = term.tuned_final_denoise()
            if tuned is not None:
                return tuned
        return self.final_denoise

    def nfe_used(self, budget: int) -> int:
        """The budget; with a final denoising step its last network evaluation is that step, so the σ schedule has
        ``budget − 1`` levels (:meth:`schedule_steps`; an explicit ``final_denoise`` needs a budget of at least 2)."""
        used = super().nfe_used(budget)
        explicit = self.final_denoise > 0 or (self.final_denoise_noncartesian or 0.0) > 0
        if explicit and used < 2:
            raise InputError(f"the dds sampler with final_denoise needs a budget of at least 2 network evaluations, "
                             f"got {budget}")
        if self.coarse_steps is not None and self.coarse_steps >= used:
            raise InputError(f"dds option coarse_steps must be below the budget of network evaluations ({used}), so "
                             f"that the last steps run on the sampling grid, got {self.coarse_steps}")
        return used

    def coarse_count(self, budget: int) -> int:
        """Steps on the measured matrix when the sampling grid is finer: ``coarse_steps``, or where it is ``auto``
        (None) a third of the budget, rounded (8 of the default 24: the count ``configs/ablation_coarse_dev.yaml``
        measured; on the Karras schedule a third of the steps ends at about the same σ, ≈ 0.2, for any budget)."""
        return self.coarse_steps if self.coarse_steps is not None else round(self.nfe_used(budget) / 3)

    def schedule_steps(self, budget: int, terms: Sequence[Likelihood]) -> int:
        """σ levels of the schedule for a budget and the proximal ``terms``: :meth:`nfe_used`, less the final
        denoising step's evaluation where a term has a factor above 0 (no proximal term, or a budget of 1: no final
        step)."""
        used = self.nfe_used(budget)
        final = any(self.final_denoise_factor(t) > 0 for t in terms)
        return used - 1 if final and used >= 2 else used

    def cg_steps(self, term: Likelihood) -> int:
        """CG steps of ``term``'s proximal step: ``cg_iters`` on Cartesian data; on a non-Cartesian k-space term
        (:attr:`mri_score.likelihood.Likelihood.noncartesian`) ``cg_iters_noncartesian`` when given, else the count
        its trajectory's kind and sampling density call for (:meth:`mri_score.noncartesian.
        NonCartesianKspaceLikelihood.tuned_cg_steps`, ``auto``).

        The partial solve regularises, and its best length differs by physics: 10 was tuned on Cartesian data
        (``benchmarks/results/archive/dds_tuning.md``); on radial and spiral data every step is a Toeplitz Gram,
        the best radial count falls with the sampling density and spirals want few steps at any density
        (``benchmarks/results/noncartesian_tuning.md``: 14 on sparse radial data within twice the Cartesian time,
        6 on dense radial data, 3 on spirals), so it follows the trajectory's kind and grid coverage by the
        tables that ``benchmarks/run_noncartesian_tuning.py``'s rule fitted.
        """
        if not term.noncartesian:
            return self.cg_iters
        if self.cg_iters_noncartesian is not None:
            return self.cg_iters_noncartesian
        return term.tuned_cg_steps()


def dds_gamma(sigma: float, sigma_data: float, sigma_y: float | torch.Tensor, scale: float, lo: float,
              hi: float) -> float | torch.Tensor:
    """Data weight γ for noise level σ (see module docstring); per slice (float64 ``(B,)``) for a batch's σ_y."""
    r2 = sigma**2 * sigma_data**2 / (sigma**2 + sigma_data**2)
    if torch.is_tensor(sigma_y):
        return (scale * 2.0 * r2 / sigma_y.clamp_min(1e-8) ** 2).clamp(lo, hi)
    return float(min(hi, max(lo, scale * 2.0 * r2 / max(sigma_y, 1e-8) ** 2)))


def discrepancy_gamma(term: Likelihood, x0: torch.Tensor, scale: float, lo: float, hi: float) -> float | torch.Tensor:
    """Data weight γ from the discrepancy of the estimate ``x0`` ``(K, H, W)``: ``2 r̂² / σ_y²`` (see module).

    A batch of slices (``x0`` ``(B·K, H, W)``) gets one weight per slice, float64 ``(B,)``.
    """
    err = term.error_variance(x0)  # type: ignore[attr-defined]
    sigma_y = term.sigma_y  # type: ignore[attr-defined]
    if torch.is_tensor(err):
        return (scale * err / sigma_y.clamp_min(1e-8) ** 2).clamp(lo, hi)
    return float(min(hi, max(lo, scale * err / max(sigma_y, 1e-8) ** 2)))


@dataclass(frozen=True)
class CoarseStage:
    """The first steps of a sample on a coarser grid than the sampling grid (DDS's ``coarse_steps``).

    ``likelihoods`` are the terms on the coarse grid (the measured matrix), ``x_init`` their start ``(B·K, h, w)``
    (rows as the sampling grid's), and ``lift`` maps a coarse image ``(B·K, h, w)`` to the sampling grid in its
    units (:func:`operators.fourier_resample`, :func:`mri_score.posterior.reconstruct_slices`).
    """

    likelihoods: Sequence[Likelihood]
    x_init: torch.Tensor
    lift: Callable[[torch.Tensor], torch.Tensor]


def sample_dds(
    prior: ComplexPrior,
    likelihoods: Sequence[Likelihood],
    x_init: torch.Tensor,
    gen: Generators,
    nfe: int,
    config: DDSConfig | None = None,
    coarse: CoarseStage | None = None,
) -> SamplerResult:
    """Run DDS from ``x_init + σ_max z``; ``x_init`` is complex ``(B·K, H, W)`` (:mod:`~mri_score.samplers.base`); ``nfe`` steps.

    With ``coarse`` and ``n = config.coarse_count(nfe) > 0`` the first ``n`` steps run on the coarse grid instead, from
    ``coarse.x_init + σ_max z`` with ``coarse.likelihoods``; after step ``n`` the data-consistent estimate is lifted
    to the sampling grid (``coarse.lift``) and re-noised there with fresh noise at the next level,
    ``x = lift(x̂₀') + σ_{n+1} z`` (with the default η = 1 that is DDS's own step; with η < 1 the coarse noise
    estimate ε̂ is not carried across grids).  The remaining steps, the last data-consistency step and any final
    denoising run on the sampling grid.  Without ``coarse`` (already on the measured grid) every step runs there.

    Without guiding terms (terms without a proximal step, e.g. classifier guidance, which take gradients)
    the loop runs under :func:`torch.inference_mode` (less per-op overhead than ``no_grad``, the same
    bits); the samples are returned as ordinary tensors.
    """
    cfg = config or DDSConfig()
    proxed, guiding = split_terms(likelihoods, "has_prox")
    steps = cfg.schedule_steps(nfe, proxed)
    final = steps < cfg.nfe_used(nfe)  # the budget's last evaluation is the final denoising step
    n_coarse = cfg.coarse_count(nfe)
    stage = coarse if n_coarse > 0 else None
    start = prior.nfe
    coarse_guiding = split_terms(stage.likelihoods, "has_prox")[1] if stage is not None else []
    with torch.no_grad() if guiding or coarse_guiding else torch.inference_mode():
        x0 = _dds_loop(prior, proxed, guiding, x_init, gen, steps, cfg, final, stage, n_coarse)
    return SamplerResult(samples=x0.clone(), nfe=prior.nfe - start)


def _dds_loop(prior: ComplexPrior, proxed: Sequence[Likelihood], guiding: Sequence[Likelihood], x_init: torch.Tensor,
              gen: Generators, steps: int, cfg: DDSConfig, final: bool = False,
              coarse: CoarseStage | None = None, coarse_steps: int = 0) -> torch.Tensor:
    """The DDS steps (module docstring); returns the last data-consistent Tweedie estimate ``(B·K, H, W)``, denoised
    once more by the final denoising step where ``final`` (:func:`_final_denoise`).  With ``coarse`` the first
    ``min(coarse_steps, steps − 1)`` steps run on its grid (:func:`sample_dds`)."""
    sigmas = karras_sigmas(steps, cfg.sigma_max, cfg.sigma_min) + [0.0]
    sd = prior.sigma_data
    switch = min(coarse_steps, steps - 1) if coarse is not None else 0
    terms = (proxed, guiding)
    if switch:
        terms = split_terms(coarse.likelihoods, "has_prox")  # type: ignore[union-attr]
        x_init = coarse.x_init  # type: ignore[union-attr]
    x = x_init + sigmas[0] * randn_complex(tuple(x_init.shape), gen, x_init.device)
    x0 = x
    carried: list[tuple[float, float | torch.Tensor | None]] = []  # the last step's (factor, noise) per term with one
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = prior.denoise(x, s)
        for term in terms[1]:
            den = den + s**2 * term.inflated_grad(x, s)
        x0 = den
        rule = cfg.final_gamma_rule if s_next == 0.0 and cfg.final_gamma_rule != "same" else cfg.gamma_rule
        for term in terms[0]:
            if cfg.gamma is not None:
                g = cfg.gamma
            elif rule == "discrepancy":
                g = discrepancy_gamma(term, x0, cfg.gamma_scale, cfg.gamma_floor(term), cfg.gamma_max)
            else:
                g = dds_gamma(s, sd, term.sigma_y, cfg.gamma_scale, cfg.gamma_floor(term), cfg.gamma_max)
            x0 = term.prox(x0, g, cfg.cg_steps(term))
            factor = cfg.final_denoise_factor(term) if final and s_next == 0.0 else 0.0
            if factor > 0:
                carried.append((factor, term.carried_noise_std(g)))
        if s_next == 0.0:
            return _final_denoise(prior, x0, carried) if final else x0
        if i + 1 == switch:  # onto the sampling grid: lift the estimate, fresh noise at the next level
            x0 = coarse.lift(x0)  # type: ignore[union-attr]
            x = x0 + s_next * randn_complex(tuple(x0.shape), gen, x0.device)
            terms = (proxed, guiding)
            continue
        eps = (x - den) / s
        c = cfg.eta * s_next
        x = x0 + (s_next**2 - c**2) ** 0.5 * eps + c * randn_complex(tuple(x.shape), gen, x.device)
    return x0


def _final_denoise(prior: ComplexPrior, x0: torch.Tensor,
                   carried: Sequence[tuple[float, float | torch.Tensor | None]]) -> torch.Tensor:
    """``D(x0; σ_f)``, ``σ_f² = Σ_t (k_t σ_t)²`` over the proximal terms, ``k_t`` a term's factor
    (:meth:`DDSConfig.final_denoise_factor`) and ``σ_t`` the measurement noise its last data-consistency step carried
    into ``x0`` (:meth:`~mri_score.likelihood.Likelihood.carried_noise_std`; one value per slice of a batch; a term
    that cannot tell counts 0).  The sum ignores what later proximal terms' steps removed of an earlier one's noise
    (an overestimate with several terms); guidance terms do not enter this step.  A slice whose ``σ_f`` is 0 keeps
    ``x0`` (the evaluation is still spent for the batch, so a slice's result does not depend on its batch); with one
    slice and ``σ_f = 0`` the step is skipped."""
    var = sum((k * c) ** 2 for k, c in carried if k > 0 and c is not None)  # type: ignore[operator]
    if torch.is_tensor(var):
        sigma = var.sqrt()
        if not bool((sigma > 0).any()):
            return x0
        reps = x0.shape[0] // sigma.shape[0]
        sigma = sigma.repeat_interleave(reps).to(torch.float32)
        out = prior.denoise(x0, sigma.clamp_min(1e-6))
        keep = (sigma == 0).to(x0.device).reshape(-1, *([1] * (x0.ndim - 1)))
        return torch.where(keep, x0, out)
    sigma = float(var) ** 0.5
    return prior.denoise(x0, sigma) if sigma > 0 else x0
