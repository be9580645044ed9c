"""The likelihood interface, the prior adapter and the typed sampler options."""

import pytest
import torch

from mri_score.errors import InputError
from mri_score.likelihood import GaussianKspaceLikelihood, Likelihood
from mri_score.network import EDMDenoiser
from mri_score.prior import ComplexPrior
from mri_score.samplers import DEFAULT_STEPS, SAMPLER_CONFIGS, SAMPLERS, sampler_config
from operators import conjugate_gradient
from tests.test_samplers import SD, GaussianDenoiser, make_problem


def test_gaussian_term_gradients_match_autograd_of_the_log_likelihood():
    term = make_problem(seed=1)
    x = torch.complex(torch.randn(2, 12, 12, dtype=torch.float64), torch.randn(2, 12, 12, dtype=torch.float64))
    op = term.op
    op.update(maps=op.maps.to(torch.complex128), mask=op.mask.double())
    term = GaussianKspaceLikelihood(op, term.y.to(torch.complex128), term.sigma_y)
    leaf = x.clone().requires_grad_(True)
    r = term.y - op(leaf)
    logp = -(r.abs() ** 2).sum() / term.sigma_y**2  # complex Gaussian, E|n|² = σ_y²
    (g,) = torch.autograd.grad(logp, leaf)
    assert torch.allclose(term.grad(x), g, atol=1e-9)
    # variance inflation: σ² added to each real component's variance σ_y²/2
    assert torch.allclose(term.inflated_grad(x, 0.3), term.residual_grad(x) / (term.sigma_y**2 / 2 + 0.09))
    assert torch.allclose(term.inflated_grad(x, 0.0), g, atol=1e-9)


def test_prox_satisfies_its_optimality_condition():
    term = make_problem(seed=2)
    x = torch.complex(torch.randn(3, 12, 12), torch.randn(3, 12, 12))
    z = term.prox(x, 2.5, iters=200)
    # ∇_z [½‖z − x‖² + γ/2 ‖Az − y‖²] = (z − x) − γ Aᴴ(y − Az) = 0
    opt = (z - x) - 2.5 * term.residual_grad(z)
    assert torch.linalg.vector_norm(opt) < 1e-4 * torch.linalg.vector_norm(x)


def test_tweedie_correction_through_a_linear_denoiser_is_analytic():
    """D(x) = c x: J = c I, so the DPS correction is −ζ σ² c Aᴴ(A c x − y) / (σ_y² + r²) (unclipped)."""
    term = make_problem(seed=3)
    prior = ComplexPrior(GaussianDenoiser())
    x = torch.complex(torch.randn(2, 12, 12), torch.randn(2, 12, 12))
    s = 0.7
    leaf = x.clone().requires_grad_(True)
    with torch.enable_grad():
        x0 = prior.denoise(leaf, s)
        corr = term.tweedie_correction(leaf, x0, s, SD, zeta=0.5, clip=False)
    c = SD**2 / (SD**2 + s**2)
    r2 = s**2 * SD**2 / (s**2 + SD**2)
    expected = 0.5 * s**2 * c * term.residual_grad(c * x) / (term.sigma_y**2 + r2)
    assert torch.allclose(corr, expected, rtol=1e-4, atol=1e-6)
    assert prior.nfe == 1  # the autograd path is counted


class PullTowards(Likelihood):
    """An extra term: ``t = x + n``, ``n ~ N(0, w²)`` per real component, observed ``t = target``.

    Under the test's Gaussian prior ``p(t | x_σ) = N(t; c x_σ, w² + r²)`` exactly (``c = SD²/(SD² + σ²)``,
    ``r² = σ² SD²/(σ² + SD²)``), so its noisy-image score is exact, as a noise-conditional classifier's is meant to be.
    """

    def __init__(self, target, width):
        self.target, self.v = target, width**2

    def grad(self, x):
        return (self.target - x) / self.v

    def inflated_grad(self, x, sigma):
        c = SD**2 / (SD**2 + sigma**2)
        r2 = sigma**2 * SD**2 / (sigma**2 + SD**2)
        return c * (self.target - c * x) / (self.v + r2)

    def tweedie_correction(self, x, x0, sigma, sigma_data, zeta=1.0, clip=True, retain_graph=False):
        loss = 0.5 * ((x0 - self.target).abs() ** 2).sum()
        (g,) = torch.autograd.grad(loss, x, retain_graph=retain_graph)
        r2 = sigma**2 * sigma_data**2 / (sigma**2 + sigma_data**2)
        return -(zeta * sigma**2 / (self.v + r2) * g).detach()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_new_likelihood_term_plugs_into_every_sampler(name):
    """A second term, written outside the samplers, is used by every sampler and moves its samples towards the
    exact two-term posterior mean.  DDS and PC keep their hard data-consistency steps for the k-space term, which
    override a soft term on the sampled components, so they move less than Langevin and DPS."""
    problem = make_problem(seed=6)
    target = torch.full((12, 12), 2.0 + 0j)
    pull = PullTowards(target, 0.05)
    calls = {"inflated_grad": 0, "tweedie_correction": 0}

    def counted(f, method):
        def spy(*args, **kw):
            calls[method] += 1
            return f(*args, **kw)
        return spy

    for method in calls:
        setattr(pull, method, counted(getattr(pull, method), method))
    v_y, v = problem.sigma_y**2 / 2, 0.05**2
    b = problem.op.adjoint(problem.y) / v_y + target / v
    exact = conjugate_gradient(lambda z: problem.op.gram(z) / v_y + z / v, b, lam=1 / SD**2, max_iter=500, tol=1e-10).x
    budget = {"dds": 10, "langevin": 31, "pc": 20, "dps": 10}[name]
    dist = {}
    for terms in ("data", "data+pull"):
        lik = [problem] + ([pull] if terms == "data+pull" else [])
        prior = ComplexPrior(GaussianDenoiser())
        x_init = problem.zero_filled().expand(4, -1, -1).clone()
        out = SAMPLERS[name](prior, lik, x_init, torch.Generator().manual_seed(0), budget, sampler_config(name))
        assert out.nfe <= budget
        dist[terms] = float(torch.linalg.vector_norm(out.samples.mean(0) - exact))
    used = "tweedie_correction" if name == "dps" else "inflated_grad"
    assert calls[used] > 0
    factor = 0.9 if name in ("dds", "pc") else 0.6
    assert dist["data+pull"] < factor * dist["data"], dist


def test_prior_adapter_leaves_the_callers_network_alone_and_exposes_sigma_data(tiny_cfg):
    torch.manual_seed(0)
    model = EDMDenoiser(tiny_cfg)
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    prior = ComplexPrior(model)
    prior.denoise(torch.complex(torch.randn(2, 16, 16), torch.randn(2, 16, 16)), 1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1], k
    assert prior.sigma_data == model.sigma_data and prior.nfe == 1
    conv = next(p for p in prior.model.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)  # the private copy runs channels_last


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_budget_is_network_evaluations_for_every_sampler(name):
    problem = make_problem(seed=7)
    cfg = sampler_config(name)
    for budget in range(1, 14):
        try:
            used = cfg.nfe_used(budget)
        except InputError as err:
            assert "budget of at least" in str(err)
            continue
        prior = ComplexPrior(GaussianDenoiser())
        x_init = problem.zero_filled().expand(1, -1, -1).clone()
        out = SAMPLERS[name](prior, [problem], x_init, torch.Generator().manual_seed(0), budget, cfg)
        assert out.nfe == used <= budget and prior.nfe == used
        assert used >= budget - {"dds": 0, "dps": 0, "pc": 1, "langevin": 2}[name]


@pytest.mark.parametrize("name,options,phrase", [
    ("dds", {"cg_iter": 5}, "unknown dds option cg_iter; the dds sampler takes sigma_max"),
    ("dds", {"cg_iters": 2.5}, "dds option cg_iters must be int"),
    ("dds", {"cg_iters": -1}, "dds option cg_iters must be >= 0"),
    ("dds", {"gamma": "lots"}, "dds option gamma must be float, auto or none"),
    ("dds", {"sigma_max": 0.001}, "sigma_max must be > sigma_min"),
    ("langevin", {"gamma": 2.0}, "unknown langevin option gamma"),
    ("langevin", {"steps_per_level": 0}, "steps_per_level must be >= 1"),
    ("pc", {"dc_weight": 3}, "dc_weight must be in (0, 2)"),
    ("pc", {"snr": True}, "snr must be float"),
    ("dps", {"clip": "maybe"}, "clip must be bool"),
    ("dps", {"sigma_min": float("nan")}, "sigma_min must be float"),
])
def test_bad_sampler_options_are_refused_in_one_line(name, options, phrase):
    with pytest.raises(InputError, match=None) as err:
        sampler_config(name, options)
    assert phrase in str(err.value) and "\n" not in str(err.value)


def test_sampler_options_from_strings_and_yaml_values():
    cfg = sampler_config("dds", {"cg_iters": "5", "gamma": "none", "sigma_max": 4})
    assert cfg.cg_iters == 5 and cfg.gamma is None and cfg.sigma_max == 4.0
    assert sampler_config("dps", {"clip": "false"}).clip is False
    assert sampler_config("dds", {"gamma": "1e-3"}).gamma == pytest.approx(1e-3)
    assert set(DEFAULT_STEPS) == set(SAMPLER_CONFIGS) == set(SAMPLERS)
    with pytest.raises(InputError, match="budget of at least 2"):
        sampler_config("pc").nfe_used(1)
