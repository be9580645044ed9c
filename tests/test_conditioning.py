"""Conditional diffusion: condition parsing and the fastMRI map, classifier-free guidance, classifier guidance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mri_score.checkpoint import save_checkpoint
from mri_score.conditioning import (
    FASTMRI_ACQUISITIONS,
    Vocabulary,
    acquisition_condition,
    format_condition,
    parse_condition,
    read_acquisition,
)
from mri_score.data.corpus import ANATOMIES, CONTRASTS
from mri_score.errors import InputError
from mri_score.guidance import (
    CLEAN_SIGMA,
    ClassifierGuidance,
    DenoisedClassifierGuidance,
    GuidedDenoiser,
    GuidedPrior,
    build_guidance,
)
from mri_score.likelihood import GaussianKspaceLikelihood
from mri_score.network import EDMDenoiser, NetworkConfig, channels_to_complex, complex_to_channels
from mri_score.prior import ComplexPrior
from mri_score.samplers import DDSConfig, DPSConfig, sample_dds, sample_dps
from operators import Sense

VOCAB = Vocabulary(("contrast", "anatomy"), (CONTRASTS, ANATOMIES))
LABELS_META = {"contrast": list(CONTRASTS), "anatomy": list(ANATOMIES)}


# ---------------------------------------------------------------- parsing and mapping

@pytest.mark.parametrize("text, expected", [
    ("none", {}), ("", {}), ("auto", "auto"), ("t2", {"contrast": "t2"}), ("FLAIR", {"contrast": "flair"}),
    ("knee", {"anatomy": "limb"}), ("brain", {"anatomy": "brain"}),
    ("contrast=t2,anatomy=brain", {"contrast": "t2", "anatomy": "brain"}),
    ("anatomy=knee", {"anatomy": "limb"}), (" pd , anatomy = limb ", {"contrast": "pd", "anatomy": "limb"}),
])
def test_parse_condition(text, expected):
    assert parse_condition(text, VOCAB) == expected


@pytest.mark.parametrize("text, fragment", [
    ("t7", "'t7' is not a label"), ("contrast=knee", "contrast='knee' is not a label"),
    ("colour=t2", "field 'colour' unknown"), ("t2,contrast=t1", "gives contrast twice"),
])
def test_unknown_labels_are_refused_listing_the_accepted_ones(text, fragment):
    with pytest.raises(InputError) as err:
        parse_condition(text, VOCAB)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg
    if "twice" not in fragment:
        assert "contrast: t1, t2, pd, flair, fatsat, other; anatomy: brain, body, limb" in msg


def test_ambiguous_bare_label_and_unconditional_network_are_refused():
    vocab = Vocabulary(("a", "b"), (("x", "y"), ("y", "z")))
    with pytest.raises(InputError, match="ambiguous"):
        parse_condition("y", vocab)
    assert parse_condition("b=y", vocab) == {"b": "y"}
    with pytest.raises(InputError, match="no labels"):
        parse_condition("t2", None)
    assert parse_condition("none", None) == {} and parse_condition("auto", None) == "auto"


def test_vocabulary_indices_and_round_trip():
    assert VOCAB.indices({"contrast": "t2"}) == (1, 3)  # anatomy open: the null index
    assert VOCAB.labels({"anatomy": "limb", "contrast": "flair"}, 2).tolist() == [[3, 2], [3, 2]]
    for cond in ({}, {"contrast": "pd"}, {"contrast": "t1", "anatomy": "body"}):
        assert parse_condition(format_condition(cond), VOCAB) == cond
    assert Vocabulary.from_meta({"labels": LABELS_META}) == VOCAB
    assert Vocabulary.from_meta({}) is None
    with pytest.raises(InputError):
        Vocabulary.from_meta({"labels": {"contrast": "t1"}})


def test_fastmri_acquisitions_map_onto_the_corpus_labels(tmp_path):
    for acq, cond in FASTMRI_ACQUISITIONS.items():
        assert cond["contrast"] in CONTRASTS and cond["anatomy"] in ANATOMIES
        assert acquisition_condition(acq.lower(), VOCAB) == cond
    assert acquisition_condition("AXT2", VOCAB) == {"contrast": "t2", "anatomy": "brain"}
    assert acquisition_condition("CORPDFS_FBK", VOCAB) == {"contrast": "fatsat", "anatomy": "limb"}
    assert acquisition_condition("SAGT1_XYZ", VOCAB) == {} and acquisition_condition(None, VOCAB) == {}
    only_anatomy = Vocabulary(("anatomy",), (ANATOMIES,))
    assert acquisition_condition("AXFLAIR", only_anatomy) == {"anatomy": "brain"}
    import h5py

    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as hf:
        hf.attrs["acquisition"] = "AXFLAIR"
    assert read_acquisition(path) == "AXFLAIR"
    assert read_acquisition(tmp_path / "missing.h5") is None


# ---------------------------------------------------------------- classifier-free guidance

def _conditional(tiny_cfg, seed=0) -> EDMDenoiser:
    torch.manual_seed(seed)
    cfg = NetworkConfig.from_dict({**tiny_cfg.to_dict(), "label_classes": [6, 3]})
    model = EDMDenoiser(cfg).eval()
    with torch.no_grad():  # non-trivial weights: label tables and output layers start at zero
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    model.meta = {"labels": LABELS_META}
    return model


def test_cfg_w0_is_unconditional_w1_conditional_exactly_and_w2_extrapolates(tiny_cfg):
    model = _conditional(tiny_cfg)
    x = torch.randn(3, 2, 32, 32)
    labels = torch.tensor([1, 0])
    cond = labels.expand(3, -1)
    with torch.no_grad():
        d_null, d_cond = model(x, 0.7), model(x, 0.7, cond)
        assert not torch.allclose(d_null, d_cond)  # the label matters
        assert torch.equal(GuidedDenoiser(model, labels, 0.0)(x, 0.7), d_null)
        assert torch.equal(GuidedDenoiser(model, labels, 1.0)(x, 0.7), d_cond)
        for w in (2.0, 0.5):
            torch.testing.assert_close(GuidedDenoiser(model, labels, w)(x, 0.7), d_null + w * (d_cond - d_null),
                                       rtol=1e-4, atol=1e-5)


def test_cfg_runs_one_forward_pass_and_counts_two_nfe(tiny_cfg):
    model = _conditional(tiny_cfg)
    calls = []
    x = torch.randn(2, 16, 16, dtype=torch.complex64)
    for w, per_call in ((0.0, 1), (1.0, 1), (2.0, 2), (4.0, 2)):
        prior = GuidedPrior(model, torch.tensor([1, 3]), w)
        prior.model.model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
        calls.clear()
        prior.denoise(x, 0.5)
        prior.score(x, 0.5)
        assert prior.nfe == 2 * per_call
        assert calls == [2 * per_call] * 2  # one batched pass per call (2B images when guided)


def test_guided_prior_in_a_sampler_spends_twice_the_budget_and_leaves_the_network_alone(tiny_cfg):
    model = _conditional(tiny_cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = torch.ones(1, 16, 16, dtype=torch.complex64)
    mask = torch.zeros(16, 16)
    mask[:, ::2] = 1
    op = Sense(maps, mask)
    y = op(torch.randn(16, 16, dtype=torch.complex64))
    data = GaussianKspaceLikelihood(op, y, 0.05)
    x0 = data.zero_filled().expand(2, -1, -1).clone()
    guided = GuidedPrior(model, torch.tensor([2, 0]), 2.0)
    res = sample_dds(guided, [data], x0, torch.Generator().manual_seed(0), 3, DDSConfig(cg_iters=2))
    assert res.nfe == 6 and guided.nfe == 6
    plain = ComplexPrior(model)
    assert sample_dds(plain, [data], x0, torch.Generator().manual_seed(0), 3, DDSConfig(cg_iters=2)).nfe == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- classifier guidance: closed forms

class GaussianClassifier(nn.Module):
    """Exact ``p(c | x_σ)`` for ``x = μ_c + τ n`` with equal priors: logits ``−‖x − μ_c‖² / (2(τ² + σ²))``."""

    def __init__(self, means: torch.Tensor, tau: float) -> None:
        super().__init__()
        self.register_buffer("means", means)  # (C, 2, H, W)
        self.tau = tau
        self.dummy = nn.Parameter(torch.zeros(()))

    def log_prob(self, x: torch.Tensor, sigma: float, labels: torch.Tensor) -> torch.Tensor:
        d2 = ((x[:, None] - self.means[None]) ** 2).sum(dim=(2, 3, 4))
        logp = torch.log_softmax(-d2 / (2 * (self.tau**2 + sigma**2)), dim=1)
        return logp.gather(1, labels[:, :1]).squeeze(1)


def _closed_form(x: np.ndarray, means: np.ndarray, c: int, var: float) -> np.ndarray:
    """``∇ log p(c | x) = −(x − μ_c)/v + Σ_k p_k (x − μ_k)/v`` for real ``x`` ``(2, H, W)``."""
    d2 = np.array([((x - m) ** 2).sum() for m in means])
    logits = -d2 / (2 * var)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return -(x - means[c]) / var + sum(pk * (x - mk) for pk, mk in zip(p, means)) / var


def test_classifier_guidance_gradient_matches_the_gaussian_closed_form():
    gen = torch.Generator().manual_seed(3)
    means = torch.randn(3, 2, 8, 8, generator=gen) * 0.3
    tau, sigma, scale = 0.4, 0.6, 2.5
    term = ClassifierGuidance(GaussianClassifier(means, tau), torch.tensor([1]), scale)
    x = torch.complex(torch.randn(2, 8, 8, generator=gen), torch.randn(2, 8, 8, generator=gen)) * 0.5
    g = term.inflated_grad(x, sigma)
    for k in range(2):
        want = scale * _closed_form(complex_to_channels(x)[k].numpy().astype(np.float64), means.numpy(), 1,
                                    tau**2 + sigma**2)
        np.testing.assert_allclose(complex_to_channels(g)[k].numpy(), want, rtol=1e-4, atol=1e-5)
    clean = scale * _closed_form(complex_to_channels(x)[0].numpy(), means.numpy(), 1, tau**2 + CLEAN_SIGMA**2)
    np.testing.assert_allclose(complex_to_channels(term.grad(x))[0].numpy(), clean, rtol=1e-4, atol=1e-5)
    corr = term.tweedie_correction(x, x, sigma, 0.5, zeta=0.5)
    torch.testing.assert_close(corr, 0.5 * sigma**2 * g)
    assert term.evaluations == 3


class ShrinkDenoiser(nn.Module):
    """The exact denoiser of a Gaussian prior N(0, σ_d² I): ``D(x; σ) = σ_d² / (σ² + σ_d²) · x``."""

    sigma_data = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2) * x + 0 * self.dummy


def test_denoised_classifier_guidance_differentiates_through_the_denoiser_and_counts_its_nfe():
    gen = torch.Generator().manual_seed(4)
    means = torch.randn(2, 2, 8, 8, generator=gen) * 0.3
    tau, sigma, scale = 0.3, 0.8, 1.5
    prior = ComplexPrior(ShrinkDenoiser())
    term = DenoisedClassifierGuidance(GaussianClassifier(means, tau), torch.tensor([0]), scale, prior)
    x = torch.complex(torch.randn(1, 8, 8, generator=gen), torch.randn(1, 8, 8, generator=gen))
    a = 0.25 / (sigma**2 + 0.25)
    g = term.inflated_grad(x, sigma)
    assert prior.nfe == 1
    y = a * complex_to_channels(x)[0].numpy().astype(np.float64)
    want = scale * a * _closed_form(y, means.numpy(), 0, tau**2 + CLEAN_SIGMA**2)  # chain rule: Jᵀ = a I
    np.testing.assert_allclose(complex_to_channels(g)[0].numpy(), want, rtol=1e-4, atol=1e-5)
    leaf = x.clone().requires_grad_(True)
    with torch.enable_grad():
        corr = term.tweedie_correction(leaf, prior.denoise(leaf, sigma), sigma, 0.5, zeta=1.0)
    torch.testing.assert_close(corr, sigma**2 * g)


def test_classifier_guidance_plugs_into_samplers(tiny_cfg):
    gen = torch.Generator().manual_seed(5)
    means = torch.randn(2, 2, 16, 16, generator=gen) * 0.3
    model = _conditional(tiny_cfg)
    maps = torch.ones(1, 16, 16, dtype=torch.complex64)
    mask = torch.zeros(16, 16)
    mask[:, ::2] = 1
    op = Sense(maps, mask)
    data = GaussianKspaceLikelihood(op, op(torch.randn(16, 16, dtype=torch.complex64)), 0.05)
    x0 = data.zero_filled().expand(1, -1, -1).clone()
    prior = ComplexPrior(model)
    noisy = ClassifierGuidance(GaussianClassifier(means, 0.3), torch.tensor([1]), 1.0)
    res = sample_dds(prior, [data, noisy], x0, torch.Generator().manual_seed(0), 3, DDSConfig(cg_iters=1))
    assert res.nfe == 3 and noisy.evaluations == 3 and torch.isfinite(res.samples).all()
    prior = ComplexPrior(model)
    den = DenoisedClassifierGuidance(GaussianClassifier(means, 0.3), torch.tensor([1]), 1.0, prior)
    res = sample_dds(prior, [data, den], x0, torch.Generator().manual_seed(0), 3, DDSConfig(cg_iters=1))
    assert res.nfe == 6  # one extra counted evaluation per guided step outside DPS
    prior = ComplexPrior(model)
    den = DenoisedClassifierGuidance(GaussianClassifier(means, 0.3), torch.tensor([1]), 1.0, prior)
    res = sample_dps(prior, [data, den], x0, torch.Generator().manual_seed(0), 3, DPSConfig())
    assert res.nfe == 3 and den.evaluations == 3  # DPS reuses its own evaluation


def test_guidance_moves_samples_toward_the_class():
    """Heun-free check of the sign: a guided Tweedie estimate is closer to μ_c than the prior's."""
    gen = torch.Generator().manual_seed(6)
    means = torch.randn(2, 2, 8, 8, generator=gen)
    term = ClassifierGuidance(GaussianClassifier(means, 0.2), torch.tensor([1]), 1.0)
    x = channels_to_complex(0.5 * (means[0] + means[1])[None]) + 0.01
    moved = x + 0.5**2 * term.inflated_grad(x, 0.5)
    target = channels_to_complex(means[1][None])
    assert (moved - target).abs().norm() < (x - target).abs().norm()
    assert math.isfinite(float(moved.abs().sum()))


# ---------------------------------------------------------------- the rules of combination

def test_build_guidance_rules(tiny_cfg):
    cond_model = _conditional(tiny_cfg)
    uncond = EDMDenoiser(tiny_cfg).eval()
    prior, terms = build_guidance(cond_model, {"contrast": "t2"}, None)
    assert isinstance(prior, GuidedPrior) and prior.evaluations_per_call == 1 and terms == []
    assert prior.model.labels.tolist() == [1, 3]
    prior, _ = build_guidance(cond_model, {"contrast": "t2"}, 2.0)
    assert prior.evaluations_per_call == 2
    prior, _ = build_guidance(cond_model, {}, None)
    assert type(prior) is ComplexPrior
    with pytest.raises(InputError, match="needs a condition"):
        build_guidance(cond_model, {}, 2.0)
    with pytest.raises(InputError, match="conditional prior"):
        build_guidance(uncond, {"contrast": "t2"}, 2.0)
    with pytest.raises(InputError, match="conditional prior or a classifier"):
        build_guidance(uncond, {"contrast": "t2"}, None)
    clf = GaussianClassifier(torch.zeros(6, 2, 4, 4), 1.0)
    clf.meta = {"labels": {"contrast": list(CONTRASTS)}}
    prior, terms = build_guidance(uncond, {"contrast": "pd"}, None, clf, 3.0)
    assert type(prior) is ComplexPrior and terms[0].labels.tolist() == [[2]] and terms[0].scale == 3.0
    with pytest.raises(InputError, match="does not know anatomy=brain"):
        build_guidance(uncond, {"contrast": "pd", "anatomy": "brain"}, None, clf)


def test_tiny_conditional_checkpoint_round_trip(tmp_path, tiny_cfg):
    from mri_score.prior import load_prior

    model = _conditional(tiny_cfg)
    path = tmp_path / "cond.safetensors"
    save_checkpoint(path, {f"ema.{k}": v for k, v in model.state_dict().items()},
                    {"step": 0, "network": model.cfg.to_dict(), "config": {}, "kind": "prior", "labels": LABELS_META})
    loaded = load_prior(path)
    assert list(loaded.meta["labels"]) == ["anatomy", "contrast"]  # stored with sorted keys
    assert Vocabulary.from_meta(loaded.meta) == VOCAB  # the networks' field order restored
    with pytest.raises(InputError, match="do not fit"):
        Vocabulary.from_meta({"labels": {"contrast": ["a", "b"], "anatomy": ["c"]}}).check((6, 3), "x")
