import pytest
import torch
from torch import nn

from mri_score.errors import InputError
from mri_score.likelihood import GaussianKspaceLikelihood
from mri_score.network import NetworkConfig
from mri_score.prior import ComplexPrior
from mri_score.samplers import DEFAULT_STEPS, SAMPLERS, karras_sigmas, sampler_config
from operators import Sense, birdcage_maps, conjugate_gradient

SD = 0.5


class GaussianDenoiser(nn.Module):
    """Exact denoiser of the prior x ~ N(0, SD²) per real component: D(x; σ) = SD² / (SD² + σ²) x."""

    def __init__(self):
        super().__init__()
        self.sigma_data = SD
        self.cfg = NetworkConfig()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return SD**2 / (SD**2 + s**2) * x + 0 * self.dummy


def make_problem(seed=0, n=12, coils=3, sigma_y=0.05):
    g = torch.Generator().manual_seed(seed)
    maps = torch.complex(torch.randn(coils, n, n, generator=g), torch.randn(coils, n, n, generator=g))
    maps = maps / torch.sqrt((maps.abs() ** 2).sum(0, keepdim=True))
    mask = torch.zeros(n)
    mask[::2] = 1
    mask[n // 2 - 2 : n // 2 + 2] = 1
    op = Sense(maps, mask)
    x = SD * torch.complex(torch.randn(n, n, generator=g), torch.randn(n, n, generator=g))
    noise = sigma_y / 2**0.5 * torch.complex(torch.randn(coils, n, n, generator=g), torch.randn(coils, n, n, generator=g))
    y = op(x) + op.mask * noise
    return GaussianKspaceLikelihood(op, y, sigma_y)


def posterior_mean(problem):
    v_y = problem.sigma_y**2 / 2
    b = problem.op.adjoint(problem.y) / v_y
    return conjugate_gradient(lambda v: problem.op.gram(v) / v_y, b, lam=1 / SD**2, max_iter=500, tol=1e-8).x


def run(name, problem, samples=4, seed=0, steps=None, **opts):
    prior = ComplexPrior(GaussianDenoiser())
    x_init = problem.zero_filled().expand(samples, -1, -1).clone()
    gen = torch.Generator().manual_seed(seed)
    return SAMPLERS[name](prior, [problem], x_init, gen, steps or DEFAULT_STEPS[name], sampler_config(name, opts))


def test_karras_schedule_endpoints_and_monotone():
    s = karras_sigmas(10, 10.0, 0.002)
    assert s[0] == pytest.approx(10.0) and s[-1] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(s, s[1:]))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_deterministic_by_seed_and_counts_nfe(name):
    problem = make_problem()
    steps = {"dds": 8, "langevin": 9, "pc": 10, "dps": 6}[name]
    a = run(name, problem, steps=steps, seed=1)
    b = run(name, problem, steps=steps, seed=1)
    c = run(name, problem, steps=steps, seed=2)
    assert torch.equal(a.samples, b.samples)
    assert not torch.allclose(a.samples, c.samples)
    assert a.samples.shape == (4, 12, 12) and torch.isfinite(torch.view_as_real(a.samples)).all()
    expected_nfe = {"dds": steps, "langevin": (steps - 1) // 3 * 3 + 1, "pc": steps, "dps": steps}[name]
    assert a.nfe == expected_nfe


@pytest.mark.parametrize("name,steps,tol", [("langevin", 601, 0.15), ("pc", 400, 0.2), ("dds", 50, 0.15),
                                            ("dps", 100, 0.08)])
def test_sampler_mean_matches_gaussian_posterior(name, steps, tol):
    problem = make_problem(seed=3)
    mu = posterior_mean(problem)
    out = run(name, problem, samples=64, steps=steps, seed=0)
    mean = out.samples.mean(0)
    rel = torch.linalg.vector_norm(mean - mu) / torch.linalg.vector_norm(mu)
    zf_rel = torch.linalg.vector_norm(problem.zero_filled() - mu) / torch.linalg.vector_norm(mu)
    assert rel < tol, (rel, zf_rel)


def test_langevin_posterior_spread_matches_gaussian_posterior():
    problem = make_problem(seed=4)
    out = run("langevin", problem, samples=256, steps=601, seed=0)
    # the posterior variance is smallest where data constrain the pixel; compare the mean variance
    v_y = problem.sigma_y**2 / 2
    # exact posterior covariance diagonal by probing (small problem): Σ = (AᴴA/v_y + I/SD²)^-1
    n = 12 * 12
    eye = torch.eye(n, dtype=torch.complex64).reshape(n, 12, 12)
    cols = conjugate_gradient(lambda v: problem.op.gram(v) / v_y, eye, lam=1 / SD**2, max_iter=500, tol=1e-8,
                              batch_dims=1).x
    # circular complex Gaussians: the posterior covariance is 2 (AᴴA/v_y + I/SD²)⁻¹ in E[(x-μ)(x-μ)ᴴ]
    var_exact = 2 * cols.reshape(n, n).diagonal().real.mean()
    var_emp = out.samples.var(dim=0).mean()  # torch's complex var is E|x - mean|²
    # annealed Langevin does not fully equilibrate at the smallest σ, so it over-disperses somewhat;
    # it must still be calibrated to within a factor of 2
    assert 0.5 < float(var_emp / var_exact) < 2.0


class AmplifyingDenoiser(GaussianDenoiser):
    """The exact Gaussian denoiser's values with a Jacobian 30·I above it (``x − x.detach()`` is 0 with gradient I):
    far beyond the Gaussian bound r²/σ², as a trained network's Jacobian can be in some directions."""

    def forward(self, x, sigma):
        return super().forward(x, sigma) + 30.0 * (x - x.detach())


def test_dps_step_is_bounded_by_a_data_consistency_step():
    problem = make_problem(seed=5)
    x_init = problem.zero_filled().expand(2, -1, -1).clone()
    out = {}
    for clip in (True, False):
        prior = ComplexPrior(AmplifyingDenoiser())
        res = SAMPLERS["dps"](prior, [problem], x_init, torch.Generator().manual_seed(0), 20,
                              sampler_config("dps", {"clip": clip}))
        out[clip] = torch.linalg.vector_norm(res.samples).item()
    scale = torch.linalg.vector_norm(x_init).item()
    assert out[True] < 100 * scale  # bounded
    assert not out[False] < 100 * scale  # the unbounded step runs away (inf/nan or huge)


def test_output_magnitude_conventions_and_bad_name():
    from mri_score.errors import InputError
    from mri_score.posterior import output_magnitude
    from mri_score.request import ReconRequest

    x = torch.complex(torch.randn(3, 8, 8), torch.randn(3, 8, 8))
    maps = torch.ones(4, 8, 8, dtype=torch.complex64) / 2  # Σ|S|² = 1
    assert torch.equal(output_magnitude(x, maps, 0.1, "sense"), x.abs())
    assert torch.allclose(output_magnitude(x, maps, 0.1, "rss") ** 2, x.abs() ** 2 + 4 * 0.01)
    with pytest.raises(InputError, match="unknown magnitude"):
        output_magnitude(x, maps, 0.1, "phase")
    with pytest.raises(InputError, match="unknown magnitude"):
        ReconRequest(magnitude="phase")


def _noise_only_prox_std(term, gamma, draws, seed=0):
    """Monte-Carlo std per real component of ``prox(0, γ)`` when the data are noise alone (mean over pixels)."""
    g = torch.Generator().manual_seed(seed)
    op, sy = term.op, term.sigma_y
    acc = 0.0
    for _ in range(draws):
        n = sy / 2**0.5 * torch.complex(torch.randn(term.y.shape, generator=g), torch.randn(term.y.shape, generator=g))
        noise_term = GaussianKspaceLikelihood(op, op.mask * n, sy)
        z = noise_term.prox(torch.zeros(1, *op.image_shape, dtype=torch.complex64), gamma, 200)
        acc += float(z.abs().square().mean())
    return (acc / draws / 2) ** 0.5


@pytest.mark.parametrize("gamma", [0.3, 1.0, 5.0])
def test_carried_noise_std_is_the_noise_in_the_proximal_solution(gamma):
    n = 16
    mask = torch.zeros(n)
    mask[::3] = 1
    single = GaussianKspaceLikelihood(Sense(torch.ones(1, n, n, dtype=torch.complex64), mask), torch.zeros(1, n, n),
                                      0.2)
    f = float(mask.mean())
    expect = 0.2 / 2**0.5 * gamma / (1 + gamma) * f**0.5
    assert single.carried_noise_std(gamma) == pytest.approx(expect, rel=1e-6)
    assert _noise_only_prox_std(single, gamma, 60) == pytest.approx(expect, rel=0.05)
    # normalised multi-coil maps: exact when fully sampled (AᴴA = I); undersampled, the eigenvalues of AᴴA spread
    # over [0, 1] and the 0/1 formula is a lower bound (γ²λ/(1 + γλ)² ≥ λ γ²/(1 + γ)² for λ ≤ 1)
    maps = torch.as_tensor(birdcage_maps(4, (n, n))).to(torch.complex64)
    maps = maps / maps.abs().square().sum(0, keepdim=True).sqrt()
    full = GaussianKspaceLikelihood(Sense(maps, torch.ones(n)), torch.zeros(4, n, n), 0.2)
    assert _noise_only_prox_std(full, gamma, 60) == pytest.approx(full.carried_noise_std(gamma), rel=0.05)
    multi = GaussianKspaceLikelihood(Sense(maps, mask), torch.zeros(4, n, n), 0.2)
    mc = _noise_only_prox_std(multi, gamma, 60)
    assert multi.carried_noise_std(gamma) < 1.02 * mc


def test_carried_noise_std_per_slice_of_a_batch():
    terms = [make_problem(seed=s, sigma_y=sy) for s, sy in ((0, 0.05), (1, 0.2))]
    batch = GaussianKspaceLikelihood.stack(terms)
    gammas = torch.tensor([1.0, 3.0], dtype=torch.float64)
    got = batch.carried_noise_std(gammas)
    assert got.shape == (2,)
    for b, t in enumerate(terms):
        assert float(got[b]) == pytest.approx(t.carried_noise_std(float(gammas[b])), rel=1e-6)


def test_dds_final_denoise_removes_the_noise_the_data_weight_floor_keeps():
    # fully sampled and noisy: with the floor γ ≥ 1 the last data-consistency step keeps half the data noise;
    # the final denoising step at the carried level brings the mean toward the exact posterior mean
    n = 12
    g = torch.Generator().manual_seed(2)
    maps = torch.ones(1, n, n, dtype=torch.complex64)
    op = Sense(maps, torch.ones(n))
    x = SD * torch.complex(torch.randn(n, n, generator=g), torch.randn(n, n, generator=g))
    sy = 0.4
    y = op(x) + sy / 2**0.5 * torch.complex(torch.randn(1, n, n, generator=g), torch.randn(1, n, n, generator=g))
    problem = GaussianKspaceLikelihood(op, y, sy)
    mu = posterior_mean(problem)
    err = {}
    for k in (0.0, 1.0):
        out = run("dds", problem, samples=16, steps=25, seed=0, final_denoise=k)
        assert out.nfe == 25
        err[k] = float(torch.linalg.vector_norm(out.samples.mean(0) - mu) / torch.linalg.vector_norm(mu))
    assert err[1.0] < 0.8 * err[0.0], err


def test_dds_final_denoise_spends_the_last_evaluation_of_the_budget(monkeypatch):
    import mri_score.samplers.dds as dds

    seen = {}
    orig = dds.karras_sigmas

    def spy(steps, *a, **kw):
        seen["steps"] = steps
        return orig(steps, *a, **kw)

    monkeypatch.setattr(dds, "karras_sigmas", spy)
    problem = make_problem(seed=1)
    out = run("dds", problem, samples=2, steps=9, final_denoise=0.5)
    assert out.nfe == 9 and seen["steps"] == 8
    out = run("dds", problem, samples=2, steps=9)
    assert out.nfe == 9 and seen["steps"] == 9
    # no proximal term: no final step, the whole budget on σ levels
    prior = ComplexPrior(GaussianDenoiser())
    x_init = torch.zeros(2, 12, 12, dtype=torch.complex64)
    out = SAMPLERS["dds"](prior, [], x_init, torch.Generator().manual_seed(0), 9,
                          sampler_config("dds", {"final_denoise": 0.5}))
    assert out.nfe == 9 and seen["steps"] == 9
    with pytest.raises(InputError, match="budget of at least 2"):
        sampler_config("dds", {"final_denoise": 0.5}).nfe_used(1)
    for bad in (-0.1, 5.0):
        with pytest.raises(InputError, match="final_denoise must be in"):
            sampler_config("dds", {"final_denoise": bad})


def test_dds_final_denoise_in_a_batch_matches_each_slice_alone():
    terms = [make_problem(seed=s, sigma_y=sy) for s, sy in ((0, 0.05), (1, 0.2))]
    opts = sampler_config("dds", {"final_denoise": 1.0})
    alone = [SAMPLERS["dds"](ComplexPrior(GaussianDenoiser()), [t], t.zero_filled().expand(2, -1, -1).clone(),
                             torch.Generator().manual_seed(b), 6, opts).samples for b, t in enumerate(terms)]
    batch = GaussianKspaceLikelihood.stack(terms)
    x_init = batch.zero_filled().repeat_interleave(2, dim=0)
    gens = [torch.Generator().manual_seed(b) for b in range(2)]
    out = SAMPLERS["dds"](ComplexPrior(GaussianDenoiser()), [batch], x_init, gens, 6, opts)
    assert out.nfe == 6
    assert torch.allclose(out.samples, torch.cat(alone), atol=1e-5)
