"""Training sources of complex MR slices, all scaled by :mod:`mri_score.scaling`.

Each source holds full complex slices (already divided by their ACS reference
scale) and hands out random crops as 2-channel float tensors drawn with an
explicit ``torch.Generator``, so a resumed run reproduces the batches exactly.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mri_score.data.corpus import SyntheticBrainCorpus, load_template
from mri_score.errors import InputError
from mri_score.scaling import TRAIN_CENTER_FRACTION, image_scale


def _scaled(img: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(img)
    return (x / image_scale(x, TRAIN_CENTER_FRACTION)).numpy().astype(np.complex64)


def augmented_crop(image: torch.Tensor, crop: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """A random ``crop`` window of a complex image ``(H, W)``, flipped vertically / horizontally and conjugated at random.

    The draws, all from ``gen``: the row offset, the column offset, then three coin flips (rows, columns,
    conjugation); :func:`mri_score.data.fastmri_stream.augment_crop` is the same augmentation drawn from a
    numpy generator.  Returns a complex view or copy of ``image``, ``crop`` in shape.
    """
    h, w = image.shape
    r = int(torch.randint(h - crop[0] + 1, (1,), generator=gen))
    c = int(torch.randint(w - crop[1] + 1, (1,), generator=gen))
    flips = torch.randint(2, (3,), generator=gen).tolist()
    x = image[r : r + crop[0], c : c + crop[1]]
    if flips[0]:
        x = x.flip(-2)
    if flips[1]:
        x = x.flip(-1)
    if flips[2]:
        x = x.conj()
    return x


def _gen_one(args: tuple[dict, int]) -> np.ndarray:
    # numpy/scipy only: torch's thread pool must not be touched in a forked worker
    kwargs, index = args
    return SyntheticBrainCorpus(**kwargs).generate(index)[0]


class SlicePool:
    """In-memory complex slices (scaled) with random crop / flip / conjugation sampling."""

    def __init__(self, slices: Sequence[np.ndarray], crop: int, labels: np.ndarray | None = None) -> None:
        if not slices:
            raise InputError("the training source holds no slices")
        keep = [i for i, s in enumerate(slices) if min(s.shape) >= crop]
        self.slices = [slices[i] for i in keep]
        if not self.slices:
            raise InputError(f"no training slice is at least {crop}x{crop}")
        self.crop = crop
        #: ``(N, F)`` int64 label indices per slice (contrast, anatomy), or None
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)[keep]

    def __len__(self) -> int:
        return len(self.slices)

    def batch(self, batch_size: int, gen: torch.Generator) -> torch.Tensor:
        """``(B, 2, crop, crop)`` float32 of random crops, flips and conjugations."""
        return self.batch_labelled(batch_size, gen)[0]

    def batch_labelled(self, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like :meth:`batch`, plus the slices' labels ``(B, F)`` int64 (None when the pool has none)."""
        idx = torch.randint(len(self.slices), (batch_size,), generator=gen).tolist()
        out = torch.empty(batch_size, 2, self.crop, self.crop)
        for b, i in enumerate(idx):
            x = augmented_crop(torch.from_numpy(self.slices[i]), (self.crop, self.crop), gen)
            out[b, 0] = x.real
            out[b, 1] = x.imag
        labels = None if self.labels is None else torch.from_numpy(self.labels[idx])
        return out, labels


class BlendedPool:
    """Training crops drawn from several pools at fixed proportions (a corpus blend).

    Each sample of a batch picks its pool by a categorical draw with probabilities ``weights`` (normalised);
    each pool then fills its share of the batch with its own draws from the same ``torch.Generator``, so the
    batches are deterministic by seed and a resumed run reproduces them.

    Parameters
    ----------
    parts : sequence of (str, float, pool)
        ``(name, weight, pool)``: a name for messages, a weight ``>= 0`` (at least one ``> 0``) and a pool with
        ``batch_labelled(n, gen) -> (x float32 (n, 2, H, W), labels int64 (n, F) or None)`` and a common crop.
        A pool whose ``labels`` attribute is None (an unlabelled :class:`SlicePool`) makes the blend unlabelled:
        :attr:`labelled` is decided here, once, so every batch has labels or none does.
    """

    def __init__(self, parts: Sequence[tuple[str, float, Any]]) -> None:
        if not parts:
            raise InputError("a blend needs at least one part")
        weights = torch.tensor([float(w) for _, w, _ in parts], dtype=torch.float64)
        if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()) or float(weights.sum()) <= 0:
            raise InputError(f"blend weights must be finite, >= 0 and not all 0, got {weights.tolist()}")
        crops = {getattr(pool, "crop", None) for _, _, pool in parts}
        if len(crops) != 1 or None in crops:
            raise InputError(f"every part of a blend needs the same fixed square crop, got {sorted(map(str, crops))}")
        self.names = [name for name, _, _ in parts]
        self.pools = [pool for _, _, pool in parts]
        self.weights = weights / weights.sum()
        #: Square crop side, shared by every part.
        self.crop = crops.pop()
        #: Whether batches carry labels: every part with a positive weight has them.
        self.labelled = all(getattr(pool, "labels", ()) is not None for (_, w, pool) in parts if float(w) > 0)

    def __len__(self) -> int:
        return sum(len(p) for p in self.pools)

    def batch_labelled(self, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, 2, crop, crop)`` float32 crops and their labels ``(B, F)`` int64 (None unless :attr:`labelled`)."""
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        which = torch.multinomial(self.weights, batch_size, replacement=True, generator=gen)
        out = torch.empty(batch_size, 2, self.crop, self.crop)
        drawn: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # (part, rows, labels)
        for k, pool in enumerate(self.pools):
            at = torch.nonzero(which == k).flatten()
            if at.numel() == 0:
                continue
            xb, lab = pool.batch_labelled(int(at.numel()), gen)
            out[at] = xb
            drawn.append((k, at, lab))
        if not self.labelled:
            return out, None
        missing = [self.names[k] for k, _, lab in drawn if lab is None]
        if missing:
            raise InputError(f"blend part(s) {missing} returned no labels")
        lab_out = torch.empty(batch_size, drawn[0][2].shape[1], dtype=torch.int64)
        for _, at, lab in drawn:
            lab_out[at] = lab
        return out, lab_out

    def batch(self, batch_size: int, gen: torch.Generator) -> torch.Tensor:
        """``(B, 2, crop, crop)`` float32 crops, as :meth:`SlicePool.batch`."""
        return self.batch_labelled(batch_size, gen)[0]

    def close(self) -> None:
        """Close every part that holds worker processes."""
        for pool in self.pools:
            if hasattr(pool, "close"):
                pool.close()


def synthetic_pool(
    count: int,
    crop: int,
    seed: int = 0,
    families: Sequence[str] = ("t1", "t2", "pd", "random"),
    sizes: Sequence[int] = (96, 128, 160),
    pixel_mm: tuple[float, float] = (0.8, 1.5),
    workers: int | None = None,
) -> SlicePool:
    """A pool of ``count`` scaled synthetic training slices (crops of ``crop``²), deterministic by seed."""
    slices = synthetic_slices(count, seed, families, sizes, pixel_mm, workers=workers)
    return SlicePool([_scaled(s) for s in slices], crop)


def _gen_mixed(args: tuple[dict, int]) -> tuple[np.ndarray, tuple[int, int]]:
    from mri_score.data.mixed import MixedCorpus

    kwargs, index = args
    corpus = MixedCorpus(**kwargs)
    img, info = corpus.generate(index)
    return img, corpus.labels(info)


def mixed_pool(count: int, crop: int, workers: int | None = None, **corpus_kwargs: Any) -> SlicePool:
    """A pool of ``count`` scaled, labelled training slices of the :class:`~mri_score.data.mixed.MixedCorpus`.

    ``corpus_kwargs`` go to :class:`~mri_score.data.mixed.MixedCorpus` (``split`` is always ``"train"``).
    Labels are ``(contrast, anatomy)`` indices into :data:`corpus.CONTRASTS` and :data:`corpus.ANATOMIES`.
    """
    from mri_score.data.mixed import MixedCorpus

    kwargs = {**corpus_kwargs, "split": "train"}
    MixedCorpus(**kwargs)  # validate before forking
    load_template("right")
    workers = workers or min(2, os.cpu_count() or 1)
    jobs = [(kwargs, i) for i in range(count)]
    if workers > 1 and count > 16:
        with mp.get_context("fork").Pool(workers) as pool:
            out = pool.map(_gen_mixed, jobs, chunksize=32)
    else:
        out = [_gen_mixed(j) for j in jobs]
    return SlicePool([_scaled(img) for img, _ in out], crop, labels=np.array([lab for _, lab in out]))


def synthetic_slices(
    count: int,
    seed: int = 0,
    families: Sequence[str] = ("t1", "t2", "pd", "random"),
    sizes: Sequence[int] = (96, 128, 160),
    pixel_mm: tuple[float, float] = (0.8, 1.5),
    square: bool = False,
    workers: int | None = None,
) -> list[np.ndarray]:
    """``count`` unscaled complex64 training-split slices, generated in parallel worker processes."""
    kwargs = {"split": "train", "families": tuple(families), "seed": seed, "sizes": tuple(sizes),
              "pixel_mm": tuple(pixel_mm), "square": square}
    SyntheticBrainCorpus(**kwargs)  # validate arguments before forking
    load_template()  # load once in the parent; forked workers share it
    workers = workers or min(2, os.cpu_count() or 1)
    jobs = [(kwargs, i) for i in range(count)]
    if workers > 1 and count > 16:
        with mp.get_context("fork").Pool(workers) as pool:
            slices = pool.map(_gen_one, jobs, chunksize=32)
    else:
        slices = [_gen_one(j) for j in jobs]
    return slices


def fastmri_pool(
    root: str | os.PathLike[str],
    crop: int,
    target: str = "complex",
    center_fraction: float = TRAIN_CENTER_FRACTION,
    max_slices: int | None = None,
) -> SlicePool:
    """Slices of a directory of fastMRI **train** files (fully sampled k-space), all held in memory.

    The slices are those of :class:`mri_score.data.fastmri_stream.FastMRISlices`
    (same index, validation and :func:`~mri_score.data.fastmri_stream.training_image`:
    ``target="complex"`` SENSE-1 with ACS coil maps, ``"magnitude"`` the file's
    ``reconstruction_rss``/``_esc``, each divided by its ACS reference scale).
    For data that does not fit in memory train through the streaming dataset.
    """
    from mri_score.data.fastmri_stream import FastMRISlices

    ds = FastMRISlices(root, crop, target=target, center_fraction=center_fraction, max_slices=max_slices)
    try:
        return SlicePool([ds.full_slice(i) for i in range(len(ds))], crop)
    finally:
        ds.close()


def held_out_batch(count: int, size: int = 96, seed: int = 0) -> torch.Tensor:
    """``count`` scaled test-split slices (t1/t2/pd/flair) as ``(count, 2, size, size)`` float32, for denoising checks."""
    from mri_score.network import complex_to_channels

    corpus = SyntheticBrainCorpus("test", families=("t1", "t2", "pd", "flair"), seed=seed)
    imgs = [torch.from_numpy(_scaled(corpus.generate(i, shape=(size, size))[0])) for i in range(count)]
    return complex_to_channels(torch.stack(imgs))
