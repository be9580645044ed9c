"""A blend of training sources (``data.source: blend``): proportions, labels, determinism and the config schema."""

from pathlib import Path

import pytest
import torch

from mri_score.config import load_config
from mri_score.data.datasets import BlendedPool
from mri_score.errors import InputError
from mri_score.train_config import validate_config

ROOT = Path(__file__).resolve().parents[1]


class ConstantPool:
    """Crops filled with ``value`` and labelled ``label``; counts the samples it was asked for."""

    def __init__(self, value: float, label: tuple[int, int] | None, crop: int = 8) -> None:
        self.value, self.label, self.crop, self.drawn = value, label, crop, 0
        self.labels = None if label is None else [label]  # SlicePool's attribute: None when unlabelled

    def __len__(self) -> int:
        return 10

    def batch_labelled(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.drawn += n
        torch.rand(1, generator=gen)  # consume a draw, as a real pool does
        x = torch.full((n, 2, self.crop, self.crop), self.value)
        return x, None if self.label is None else torch.tensor([self.label] * n, dtype=torch.int64)


def test_blend_rows_carry_their_own_pools_labels_in_the_drawn_proportions():
    a, b = ConstantPool(1.0, (1, 0)), ConstantPool(2.0, (5, 2))
    pool = BlendedPool([("a", 3.0, a), ("b", 1.0, b)])
    x, lab = pool.batch_labelled(4000, torch.Generator().manual_seed(0))
    from_a = x[:, 0, 0, 0] == 1.0
    assert torch.equal(lab[from_a], torch.tensor([[1, 0]]).expand(int(from_a.sum()), 2))
    assert torch.equal(lab[~from_a], torch.tensor([[5, 2]]).expand(int((~from_a).sum()), 2))
    assert a.drawn + b.drawn == 4000 and abs(a.drawn / 4000 - 0.75) < 0.03
    assert pool.crop == 8 and len(pool) == 20


def test_blend_is_deterministic_by_generator_and_a_zero_weight_part_is_never_drawn():
    def draw(seed: int) -> torch.Tensor:
        pool = BlendedPool([("a", 0.5, ConstantPool(1.0, (0, 0))), ("b", 0.5, ConstantPool(2.0, (1, 1)))])
        return pool.batch(64, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    never = ConstantPool(9.0, (0, 0))
    x = BlendedPool([("a", 1.0, ConstantPool(1.0, (0, 0))), ("z", 0.0, never)]).batch(32, torch.Generator())
    assert never.drawn == 0 and bool((x == 1.0).all())


def test_blend_returns_no_labels_when_a_part_has_none_and_refuses_bad_parts():
    x, lab = BlendedPool([("a", 1.0, ConstantPool(1.0, None)), ("b", 1.0, ConstantPool(2.0, (0, 0)))]).batch_labelled(
        16, torch.Generator().manual_seed(1))
    assert lab is None and x.shape == (16, 2, 8, 8)
    # decided once, not per batch: a rarely drawn unlabelled part leaves every batch unlabelled, even one without it
    rare = BlendedPool([("a", 1e-6, ConstantPool(1.0, None)), ("b", 1.0, ConstantPool(2.0, (0, 0)))])
    assert not rare.labelled
    x, lab = rare.batch_labelled(4, torch.Generator().manual_seed(0))
    assert lab is None and bool((x == 2.0).all())
    with pytest.raises(InputError, match="batch size"):
        rare.batch_labelled(0, torch.Generator())
    with pytest.raises(InputError, match="same fixed square crop"):
        BlendedPool([("a", 1.0, ConstantPool(1.0, None, crop=8)), ("b", 1.0, ConstantPool(1.0, None, crop=16))])
    with pytest.raises(InputError, match="not all 0"):
        BlendedPool([("a", 0.0, ConstantPool(1.0, None))])
    with pytest.raises(InputError, match="at least one part"):
        BlendedPool([])


def _blend_cfg(**data) -> dict:
    return {"out_dir": "runs/x", "train": {"steps": 1}, "data": {"source": "blend", "crop": 32, **data}}


@pytest.mark.parametrize(("data", "message"), [
    ({}, "needs data.blend"),
    ({"blend": {"fastmri": 1.0}}, "fastmri cannot be blended"),
    ({"blend": {"mixed": 0.0}}, "weights are all 0"),
    ({"blend": {"mixed": -1.0}}, "data.blend.mixed"),
    ({"blend": {"mixed": 1.0}, "domain_random": {}}, "data.domain_random is configured but not named"),
    ({"blend": {"mixed": 1.0}, "mixed": {"crop": 64}}, "data.mixed.crop is set by the blend"),
    ({"blend": {"mixed": 1.0}, "mixed": {"pool_sizes": 3}}, "data.mixed"),
    ({"blend": {"mixed": 1.0}, "pixel_mm": [0.5, 3.0]}, "data.pixel_mm has no effect in a blend"),
])
def test_blend_config_errors_name_the_key(data, message):
    with pytest.raises(InputError, match=message):
        validate_config(_blend_cfg(**data))


def test_blend_sections_need_source_blend():
    cfg = {"out_dir": "runs/x", "train": {"steps": 1}, "data": {"source": "mixed", "mixed": {"pool_size": 3}}}
    with pytest.raises(InputError, match=r"data.mixed need\(s\) data.source: blend"):
        validate_config(cfg)


def test_the_blend_prior_config_builds_a_blend_of_the_mixed_corpus_and_the_renderer():
    from mri_score.data.datasets import SlicePool
    from mri_score.data.domain_random import DomainRandomPool
    from mri_score.training import build_source

    cfg = validate_config(load_config(ROOT / "configs" / "prior_blend_dr.yaml"))
    assert cfg["data"]["blend"] == {"mixed": 0.5, "domain_random": 0.5}
    cfg["data"]["crop"] = 32
    cfg["data"]["mixed"].update(pool_size=3, sizes=[64])
    cfg["data"]["domain_random"].update(render_size=[48], num_workers=0)
    pool = build_source(cfg)
    assert isinstance(pool, BlendedPool) and pool.names == ["mixed", "domain_random"]
    assert isinstance(pool.pools[0], SlicePool) and isinstance(pool.pools[1], DomainRandomPool)
    assert pool.pools[1].held_out_family == "joint" and pool.pools[0].crop == pool.pools[1].crop == 32
    x, lab = pool.batch_labelled(6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 2, 32, 32) and torch.isfinite(x).all() and lab.shape == (6, 2)
    # a zero-weight part is neither built nor drawn
    cfg["data"]["blend"] = {"mixed": 0.0, "domain_random": 1.0}
    only = build_source(cfg)
    assert only.names == ["domain_random"] and only.labelled
