import torch

from mri_score.generation import heun_samples
from mri_score.prior import load_prior
from mri_score.sample_prior import main as sample_prior_main


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x, sigma):
        self.calls += 1
        return self.model(x, sigma)


def test_heun_samples_deterministic_by_seed_and_spend_2_steps_minus_1_evaluations(tiny_prior_path):
    model = Counting(load_prior(tiny_prior_path))
    a = heun_samples(model, 2, 16, steps=3, seed=1)
    assert model.calls == 5 and a.shape == (2, 2, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, heun_samples(model, 2, 16, steps=3, seed=1))
    assert not torch.equal(a, heun_samples(model, 2, 16, steps=3, seed=2))


def test_sample_prior_cli_writes_a_png(tmp_path, tiny_prior_path):
    out = tmp_path / "grid.png"
    assert sample_prior_main(["--prior", str(tiny_prior_path), "--n", "3", "--size", "16", "--steps", "2",
                              "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "tiny_prior.safetensors"]  # no temporary left
