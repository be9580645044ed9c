"""Conditional diffusion: a label-conditional prior, classifier-free guidance (CFG) and classifier guidance.

**Classifier-free guidance** (Ho & Salimans 2022) with a network trained with label
dropout (:func:`mri_score.training.drop_labels`):
``D_w(x; σ, c) = D(x; σ, ∅) + w · (D(x; σ, c) − D(x; σ, ∅))``; ``w = 0`` is the
unconditional prior, ``w = 1`` the conditional one, ``w > 1`` guided.
NFE convention: a call costs the network evaluations it runs on one image batch, so
``w = 0`` and ``w = 1`` cost 1 (one evaluation, the other branch has weight zero and is
not run) and any other ``w`` costs 2, although both are run as one forward pass on the
doubled batch (:class:`GuidedDenoiser`, :class:`GuidedPrior`).

**Classifier guidance** (Dhariwal & Nichol 2021) for any prior: Bayes' rule for the noisy
image, ``∇ log p(x_σ | c) = ∇ log p(x_σ) + ∇ log p(c | x_σ)``, with the label likelihood
``s · ∇ log p(c | x_σ, σ)`` of a noise-conditional classifier
(:class:`mri_score.classifier.NoiseClassifier`), scale ``s``, as one more likelihood term
(:class:`ClassifierGuidance`); the variant :class:`DenoisedClassifierGuidance` classifies
the Tweedie estimate instead, ``s · ∇_x log p(c | D(x; σ))``, by autograd through the
denoiser.  Both plug into every sampler through the :class:`~mri_score.likelihood.Likelihood`
interface.  Images are complex ``(K, H, W)`` in the prior's scaled units.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from mri_score.conditioning import (
    Vocabulary,
    acquisition_condition,
    format_condition,
    parse_condition,
    read_acquisition,
)
from mri_score.errors import InputError
from mri_score.likelihood import Likelihood
from mri_score.network import EDMDenoiser, channels_to_complex, complex_to_channels
from mri_score.prior import ComplexPrior

#: σ at which the classifier is asked about a clean image (its training range starts far above it).
CLEAN_SIGMA = 0.002


def cfg_evaluations(weight: float) -> int:
    """Network evaluations of one CFG call: 1 for ``w`` 0 or 1, else 2 (see module docstring)."""
    return 1 if weight in (0.0, 1.0) else 2


class GuidedDenoiser(nn.Module):
    """``D_w(x; σ, c)`` on real channels ``(B, 2, H, W)``: a conditional denoiser under classifier-free guidance.

    Parameters
    ----------
    model : EDMDenoiser
        A conditional network (``cfg.label_classes`` non-empty), used as is (not copied).
    labels : torch.Tensor
        Long ``(F,)``: the condition, one class index per field (the null index leaves a field open).
    weight : float
        Guidance weight ``w ≥ 0``.
    """

    def __init__(self, model: EDMDenoiser, labels: torch.Tensor, weight: float) -> None:
        super().__init__()
        if not model.cfg.label_classes:
            raise InputError("classifier-free guidance needs a conditional prior (this one has no labels)")
        if not weight >= 0:
            raise InputError(f"guidance weight must be >= 0, got {weight}")
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.numel() != len(model.cfg.label_classes):
            raise InputError(f"{labels.numel()} labels for a network with {len(model.cfg.label_classes)} fields")
        self.model = model
        self.register_buffer("labels", labels.clone(), persistent=False)
        self.weight = float(weight)
        self.cfg = model.cfg
        self.sigma_data = model.sigma_data

    @property
    def evaluations_per_call(self) -> int:
        """1 for ``w`` 0 or 1, else 2."""
        return cfg_evaluations(self.weight)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``D_w(x; σ, c)`` for ``x`` ``(B, 2, H, W)``, ``sigma`` a float or ``(B,)``."""
        b = x.shape[0]
        cond = self.labels.to(x.device).expand(b, -1)
        null = self.model.null_labels(b, x.device)
        if self.weight == 0.0:
            return self.model(x, sigma, null)
        if self.weight == 1.0:
            return self.model(x, sigma, cond)
        sig = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(b)
        both = self.model(torch.cat([x, x]), torch.cat([sig, sig]), torch.cat([cond, null]))
        d_cond, d_null = both[:b], both[b:]
        return d_null + self.weight * (d_cond - d_null)


class GuidedPrior(ComplexPrior):
    """:class:`~mri_score.samplers.base.ComplexPrior` of ``D_w(x; σ, c)`` counting ``cfg_evaluations(w)`` per call."""

    def __init__(self, model: EDMDenoiser, labels: torch.Tensor, weight: float) -> None:
        super().__init__(GuidedDenoiser(model, labels, weight))
        self.evaluations_per_call = self.model.evaluations_per_call


class ClassifierGuidance(Likelihood):
    """The label likelihood ``s · log p(c | x_σ, σ)`` of a noise-conditional classifier, as a likelihood term.

    Parameters
    ----------
    classifier : nn.Module
        ``log_prob(x (B, 2, H, W), σ, labels (B, F)) -> (B,)`` (a
        :class:`~mri_score.classifier.NoiseClassifier`); a private frozen copy is used.
    labels : torch.Tensor
        Long ``(F,)``, the condition (null indices leave fields out of the likelihood).
    scale : float
        The guidance scale ``s ≥ 0`` (1: Bayes' rule; larger sharpens ``p(c | x)``).
    """

    def __init__(self, classifier: nn.Module, labels: torch.Tensor, scale: float) -> None:
        if not scale >= 0:
            raise InputError(f"classifier scale must be >= 0, got {scale}")
        self.classifier = copy.deepcopy(classifier).eval()
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        self.labels = torch.as_tensor(labels, dtype=torch.long).reshape(1, -1)
        self.scale = float(scale)
        #: classifier evaluations (each with a backward pass)
        self.evaluations = 0

    def log_prob_grad(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``s · ∇_x log p(c | x, σ)`` for complex ``x`` ``(K, H, W)``; same shape (real, imaginary gradients)."""
        with torch.enable_grad():
            xc = complex_to_channels(x.detach()).requires_grad_(True)
            lp = self.classifier.log_prob(xc, sigma, self.labels.expand(x.shape[0], -1)).sum()
            (g,) = torch.autograd.grad(lp, xc)
        self.evaluations += 1
        return self.scale * channels_to_complex(g)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """At a clean image: the classifier at σ = :data:`CLEAN_SIGMA`."""
        return self.log_prob_grad(x, CLEAN_SIGMA)

    def inflated_grad(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``s · ∇ log p(c | x_σ, σ)``: the noise-conditional classifier at the prior's noise level."""
        return self.log_prob_grad(x, sigma)

    def tweedie_correction(
        self, x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_data: float, zeta: float = 1.0,
        clip: bool = True, retain_graph: bool = False,
    ) -> torch.Tensor:
        """``ζ σ² s ∇ log p(c | x_σ, σ)`` (Tweedie's formula; the noisy classifier needs no graph through ``x0``)."""
        return (zeta * sigma**2 * self.log_prob_grad(x, sigma)).detach()


class DenoisedClassifierGuidance(ClassifierGuidance):
    """``s · ∇_x log p(c | D(x; σ))``: the classifier (at :data:`CLEAN_SIGMA`) on the Tweedie estimate.

    The gradient is taken by autograd through the denoiser.  In DPS it reuses the
    sampler's own evaluation (no extra NFE); elsewhere (:meth:`inflated_grad`) it runs
    ``prior.denoise`` once more with a backward pass, counted by ``prior`` (so the
    sampler's reported NFE is its budget plus one per guided step).

    Parameters
    ----------
    prior : ComplexPrior
        The adapter the sampler uses (so that its extra evaluations are counted with the sampler's).
    """

    def __init__(self, classifier: nn.Module, labels: torch.Tensor, scale: float, prior: ComplexPrior) -> None:
        super().__init__(classifier, labels, scale)
        self.prior = prior

    def _through(self, x: torch.Tensor, x0: torch.Tensor, retain_graph: bool) -> torch.Tensor:
        lp = self.classifier.log_prob(complex_to_channels(x0), CLEAN_SIGMA, self.labels.expand(x.shape[0], -1)).sum()
        (g,) = torch.autograd.grad(lp, x, retain_graph=retain_graph)
        self.evaluations += 1
        return self.scale * g

    def inflated_grad(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``s · ∇_x log p(c | D(x; σ))`` (one extra counted denoiser evaluation)."""
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            return self._through(leaf, self.prior.denoise(leaf, sigma), retain_graph=False).detach()

    def tweedie_correction(
        self, x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_data: float, zeta: float = 1.0,
        clip: bool = True, retain_graph: bool = False,
    ) -> torch.Tensor:
        """``ζ σ² s ∇_x log p(c | x̂₀(x))`` through the sampler's own graph of ``x0``."""
        return (zeta * sigma**2 * self._through(x, x0, retain_graph)).detach()


class TermGuidedDenoiser(nn.Module):
    """``D(x; σ) + σ² Σ_terms ∇ log p(obs | x_σ)`` on real channels: a denoiser with likelihood terms folded in.

    Tweedie's formula for the posterior, for samplers that only call a denoiser (the EDM Heun
    sampler of :func:`mri_score.generation.heun_samples`).  ``sigma`` must be a float.
    """

    def __init__(self, model: nn.Module, terms: Sequence[Likelihood]) -> None:
        super().__init__()
        self.model = model
        self.terms = list(terms)
        self.sigma_data = model.sigma_data
        self.evaluations_per_call = getattr(model, "evaluations_per_call", 1)

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The corrected denoiser output ``(B, 2, H, W)``."""
        out = self.model(x, sigma)
        xc = channels_to_complex(x)
        for term in self.terms:
            out = out + float(sigma) ** 2 * complex_to_channels(term.inflated_grad(xc, float(sigma)))
        return out


#: What the classifier looks at in classifier guidance: the noisy image or the denoised estimate.
CLASSIFIER_INPUTS = ("noisy", "denoised")


def condition_vocabulary(model: EDMDenoiser, classifier: nn.Module | None = None) -> Vocabulary | None:
    """The labels a condition is parsed against: the prior's (conditional prior), else the classifier's."""
    vocab = Vocabulary.from_meta(getattr(model, "meta", {}), "prior") if model.cfg.label_classes else None
    if vocab is not None:
        vocab.check(model.cfg.label_classes, "prior")
    if vocab is None and classifier is not None:
        vocab = classifier_vocabulary(classifier)
    return vocab


def classifier_vocabulary(classifier: nn.Module) -> Vocabulary:
    """A classifier's labels (``meta['labels']``), checked against its heads."""
    vocab = Vocabulary.from_meta(getattr(classifier, "meta", {}), "classifier")
    if vocab is None:
        raise InputError("the classifier's metadata has no 'labels'")
    cfg = getattr(classifier, "cfg", None)
    if cfg is not None:
        vocab.check(cfg.label_classes, "classifier")
    return vocab


def build_guidance(
    model: EDMDenoiser,
    condition: Mapping[str, str],
    weight: float | None = None,
    classifier: nn.Module | None = None,
    scale: float = 1.0,
    classifier_input: str = "noisy",
    base: ComplexPrior | None = None,
) -> tuple[ComplexPrior, list[Likelihood]]:
    """The prior adapter and extra likelihood terms for a condition; the one place the rules live.

    Parameters
    ----------
    model : EDMDenoiser
        The prior (its ``meta['labels']`` is the vocabulary of a conditional one).
    condition : mapping
        ``{field: label}`` (from :func:`mri_score.conditioning.parse_condition`); empty: unconditional.
    weight : float, optional
        CFG weight ``w`` (conditional prior only); None: 1 (the conditional prior) when there is a
        condition and the prior is conditional.
    classifier : nn.Module, optional
        A :class:`~mri_score.classifier.NoiseClassifier` (``meta['labels']``) for classifier guidance.
    scale : float
        Classifier-guidance scale ``s``.
    classifier_input : {"noisy", "denoised"}
        :class:`ClassifierGuidance` or :class:`DenoisedClassifierGuidance`.
    base : ComplexPrior, optional
        The run's runtime of ``model`` (made once per run), returned wherever the plain prior serves;
        a new ``ComplexPrior(model)`` when None.

    Returns
    -------
    prior : ComplexPrior
        ``base`` / ``ComplexPrior(model)`` (unconditional, the null label of a conditional network) or a
        :class:`GuidedPrior`.
    terms : list of Likelihood
        ``[]`` or the classifier-guidance term.
    """
    if classifier_input not in CLASSIFIER_INPUTS:
        raise InputError(f"classifier input must be one of {', '.join(CLASSIFIER_INPUTS)}, got {classifier_input!r}")
    conditional = bool(model.cfg.label_classes)
    if not condition:
        if weight not in (None, 0.0):
            raise InputError("a guidance weight needs a condition (a label)")
        if classifier is not None:
            raise InputError("classifier guidance needs a condition (the label to guide to)")
        return (base or ComplexPrior(model)), []
    if not conditional and weight not in (None, 0.0):
        raise InputError("classifier-free guidance needs a conditional prior; this prior has no labels")
    if not conditional and classifier is None:
        raise InputError("a condition needs a conditional prior or a classifier; this prior has no labels")
    if conditional and weight != 0.0:
        vocab = condition_vocabulary(model)
        assert vocab is not None
        prior: ComplexPrior = GuidedPrior(model, torch.tensor(vocab.indices(condition)), 1.0 if weight is None else weight)
    else:
        prior = base or ComplexPrior(model)
    terms: list[Likelihood] = []
    if classifier is not None:
        cvocab = classifier_vocabulary(classifier)
        missing = {f: lab for f, lab in condition.items() if f not in cvocab.fields
                   or lab not in cvocab.classes[cvocab.fields.index(f)]}
        if missing:
            raise InputError(f"the classifier does not know {format_condition(missing)}; it has {cvocab.describe()}")
        labels = torch.tensor(cvocab.indices(condition))
        terms.append(ClassifierGuidance(classifier, labels, scale) if classifier_input == "noisy"
                     else DenoisedClassifierGuidance(classifier, labels, scale, prior))
    return prior, terms


@dataclass
class GuidanceOptions:
    """A validated request for conditioning (the command lines' ``--condition`` and friends), per file.

    ``condition`` is a ``{field: label}`` dict or ``"auto"`` (read from each fastMRI file's
    ``acquisition``; a file without a known one is reconstructed unconditionally).
    """

    condition: dict[str, str] | str
    weight: float | None = None
    classifier: nn.Module | None = None
    scale: float = 1.0
    classifier_input: str = "noisy"
    base: ComplexPrior | None = None
    #: adapters built so far, by condition text: each is made once per run
    built: dict[str, tuple[ComplexPrior, list[Likelihood]]] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, model: EDMDenoiser, text: str, weight: float | None = None, classifier: nn.Module | None = None,
               scale: float = 1.0, classifier_input: str = "noisy", allow_auto: bool = True,
               base: ComplexPrior | None = None) -> GuidanceOptions:
        """Parse ``text`` (:func:`~mri_score.conditioning.parse_condition`) and refuse bad combinations up front.

        ``base`` is the run's runtime of ``model``, used wherever the plain prior serves (no copy per file).
        """
        condition = parse_condition(text, condition_vocabulary(model, classifier))
        if condition == "auto" and not allow_auto:
            raise InputError("condition auto reads a fastMRI file's acquisition attribute; give a label here")
        out = cls(condition, weight, classifier, scale, classifier_input, base)
        if condition != "auto":
            out.built[format_condition(condition)] = build_guidance(model, condition, weight, classifier, scale,
                                                                    classifier_input, base)
        elif weight not in (None, 0.0) and not model.cfg.label_classes:
            raise InputError("classifier-free guidance needs a conditional prior; this prior has no labels")
        return out

    def resolve(self, model: EDMDenoiser, path: str | os.PathLike[str] | None = None) -> dict[str, str]:
        """The condition for one file (``auto``: its acquisition attribute; ``{}`` when unknown)."""
        if self.condition != "auto":
            return dict(self.condition)
        if path is None:
            return {}
        return acquisition_condition(read_acquisition(path), condition_vocabulary(model, self.classifier))

    def setup(self, model: EDMDenoiser, path: str | os.PathLike[str] | None = None
              ) -> tuple[ComplexPrior, list[Likelihood], dict[str, str | float]]:
        """The prior adapter, extra likelihood terms and output attrs for one file (each adapter built once)."""
        condition = self.resolve(model, path)
        attrs: dict[str, str | float] = {"condition": format_condition(condition)}
        if not condition:
            return (self.base or ComplexPrior(model)), [], attrs
        key = format_condition(condition)
        if key not in self.built:
            self.built[key] = build_guidance(model, condition, self.weight, self.classifier, self.scale,
                                             self.classifier_input, self.base)
        prior, terms = self.built[key]
        if model.cfg.label_classes:
            attrs["guidance"] = 1.0 if self.weight is None else float(self.weight)
        if terms:
            attrs.update(classifier_scale=self.scale, classifier_input=self.classifier_input)
        return prior, terms, attrs
