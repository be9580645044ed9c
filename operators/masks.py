"""Undersampling masks with fastMRI's names, arguments and formulas (``fastmri.data.subsample``).

Differences from fastMRI, all deliberate:

* k-space here is complex ``(..., H, W)``, so masks act on the **last** dim ``W``
  (fastMRI's real-view tensors carry a trailing 2 and use ``shape[-2]``);
  returned masks have shape ``(1, ..., 1, W)``, float32.
* :class:`PoissonMaskFunc` adds 2-D variable-density Poisson-disc masks
  (``sigpy.mri.poisson``) of shape ``(1, ..., H, W)``.

Seeding follows fastMRI: the function's own ``numpy.random.RandomState`` is
seeded once at construction; a per-call ``seed`` (e.g. :func:`seed_from_filename`)
temporarily reseeds it, so the same file always gets the same mask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from operators.errors import OperatorInputError


@contextlib.contextmanager
def temp_seed(rng: np.random.RandomState, seed: int | tuple[int, ...] | None) -> Iterator[None]:
    """Reseed ``rng`` inside the block and restore its state afterwards (no-op for None)."""
    if seed is None:
        yield
        return
    state = rng.get_state()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.set_state(state)


def _check_shape(shape: Sequence[int]) -> None:
    if len(shape) < 2:
        raise OperatorInputError(f"shape should have at least 2 dims (..., H, W), got {tuple(shape)}")


def seed_from_filename(fname: str) -> tuple[int, ...]:
    """fastMRI's per-file seed: ``tuple(map(ord, fname))`` of the base file name."""
    return tuple(map(ord, fname))


class MaskFunc:
    """Base class of 1-D Cartesian column masks (fastMRI ``MaskFunc``).

    Parameters
    ----------
    center_fractions : sequence of float
        Fraction of columns fully sampled at the k-space centre.
    accelerations : sequence of int or float
        Target accelerations; the i-th goes with the i-th centre fraction
        unless ``allow_any_combination``.
    allow_any_combination : bool
        Draw centre fraction and acceleration independently.
    seed : int, optional
        Seed of the function's random state.
    """

    def __init__(
        self,
        center_fractions: Sequence[float],
        accelerations: Sequence[float],
        allow_any_combination: bool = False,
        seed: int | None = None,
    ) -> None:
        center_fractions = list(center_fractions)
        accelerations = list(accelerations)
        if len(center_fractions) != len(accelerations) and not allow_any_combination:
            raise OperatorInputError(
                "Number of center fractions should match number of accelerations "
                "if allow_any_combination is False."
            )
        for cf in center_fractions:
            if not 0.0 < cf < 1.0:
                raise OperatorInputError(f"center fraction must be in (0, 1), got {cf}")
        for acc in accelerations:
            if not acc >= 1.0:
                raise OperatorInputError(f"acceleration must be >= 1, got {acc}")
            self.check_acceleration(acc)
        self.center_fractions = center_fractions
        self.accelerations = accelerations
        self.allow_any_combination = allow_any_combination
        self.rng = np.random.RandomState(seed)

    def check_acceleration(self, acceleration: float) -> None:
        """Refuse an acceleration this mask type cannot realise (any R >= 1 here; subclasses narrow it)."""

    def __call__(
        self,
        shape: Sequence[int],
        offset: int | None = None,
        seed: int | tuple[int, ...] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Sample a mask for k-space of ``shape`` ``(..., H, W)``.

        Returns
        -------
        mask : torch.Tensor
            float32, shape ``(1, ..., 1, W)``, 1 where a column is sampled.
        num_low_frequencies : int
            Width of the fully sampled centre block (the ACS), in columns.
        """
        _check_shape(shape)
        with temp_seed(self.rng, seed):
            center_mask, accel_mask, num_low = self.sample_mask(shape, offset)
        return torch.maximum(center_mask, accel_mask), num_low

    def sample_mask(self, shape: Sequence[int], offset: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Centre mask, acceleration mask (both ``(1, ..., W)``) and ACS width."""
        num_cols = int(shape[-1])
        center_fraction, acceleration = self.choose_acceleration()
        num_low = round(num_cols * center_fraction)
        if num_low < 1:
            raise OperatorInputError(f"center fraction {center_fraction} leaves no ACS column for W={num_cols}")
        center = self.reshape_mask(self.calculate_center_mask(shape, num_low), shape)
        accel = self.reshape_mask(
            self.calculate_acceleration_mask(num_cols, acceleration, offset, num_low), shape
        )
        return center, accel, num_low

    def reshape_mask(self, mask: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
        """Reshape a length-W vector to ``(1, ..., 1, W)`` float32."""
        mask_shape = [1 for _ in shape]
        mask_shape[-1] = int(shape[-1])
        return torch.from_numpy(mask.reshape(*mask_shape).astype(np.float32))

    def calculate_center_mask(self, shape: Sequence[int], num_low_freqs: int) -> np.ndarray:
        """fastMRI's centre block: ``pad = (W - num_low + 1) // 2``."""
        num_cols = int(shape[-1])
        mask = np.zeros(num_cols, dtype=np.float32)
        pad = (num_cols - num_low_freqs + 1) // 2
        mask[pad : pad + num_low_freqs] = 1
        return mask

    def calculate_acceleration_mask(
        self, num_cols: int, acceleration: float, offset: int | None, num_low_frequencies: int
    ) -> np.ndarray:  # pragma: no cover - abstract
        """The non-centre columns, float32 ``(W,)`` (subclasses)."""
        raise NotImplementedError

    def choose_acceleration(self) -> tuple[float, float]:
        """Pick (centre fraction, acceleration) with the function's random state."""
        if self.allow_any_combination:
            return self.rng.choice(self.center_fractions), self.rng.choice(self.accelerations)
        choice = self.rng.randint(len(self.center_fractions))
        return self.center_fractions[choice], self.accelerations[choice]


class RandomMaskFunc(MaskFunc):
    """Random columns with probability ``(W/R - num_low) / (W - num_low)`` outside the centre."""

    def calculate_acceleration_mask(
        self, num_cols: int, acceleration: float, offset: int | None, num_low_frequencies: int
    ) -> np.ndarray:
        """Random columns outside the centre, float32 ``(W,)``."""
        prob = (num_cols / acceleration - num_low_frequencies) / (num_cols - num_low_frequencies)
        return (self.rng.uniform(size=num_cols) < prob).astype(np.float32)


class EquiSpacedMaskFunc(MaskFunc):
    """Every R-th column from a random ``offset`` in ``[0, R)``, plus the centre block.

    R must be an integer (fastMRI's ``EquiSpacedMaskFunc`` takes every R-th column with an integer
    step); a fractional R is refused rather than silently rounded to another acceleration
    (:class:`EquispacedMaskFractionFunc` reaches a fractional R).
    """

    def check_acceleration(self, acceleration: float) -> None:
        """Refuse a fractional R (every R-th column needs an integer step)."""
        if not float(acceleration).is_integer():
            raise OperatorInputError(
                f"equispaced mask needs an integer acceleration, got {acceleration:g} "
                "(use the equispaced_fraction mask type for a fractional one)"
            )

    def calculate_acceleration_mask(
        self, num_cols: int, acceleration: float, offset: int | None, num_low_frequencies: int
    ) -> np.ndarray:
        """Every R-th column from ``offset``, float32 ``(W,)``."""
        if offset is None:
            offset = self.rng.randint(0, high=round(acceleration))
        mask = np.zeros(num_cols, dtype=np.float32)
        mask[offset :: int(acceleration)] = 1
        return mask


class EquispacedMaskFractionFunc(MaskFunc):
    """Equispaced with the spacing adjusted so the total fraction sampled is exactly ``1/R``.

    ``adjusted_accel = R (num_low - W) / (num_low R - W)`` (fastMRI's formula).
    """

    def calculate_acceleration_mask(
        self, num_cols: int, acceleration: float, offset: int | None, num_low_frequencies: int
    ) -> np.ndarray:
        """Equispaced columns at the adjusted spacing, float32 ``(W,)``."""
        denom = num_low_frequencies * acceleration - num_cols
        if denom >= 0:
            raise OperatorInputError(
                f"center block of {num_low_frequencies} columns already exceeds 1/{acceleration} of W={num_cols}"
            )
        adjusted_accel = (acceleration * (num_low_frequencies - num_cols)) / denom
        if offset is None:
            offset = self.rng.randint(0, high=round(adjusted_accel))
        mask = np.zeros(num_cols, dtype=np.float32)
        samples = np.around(np.arange(offset, num_cols - 1, adjusted_accel)).astype(np.uint64)
        mask[samples] = 1.0
        return mask


class PoissonMaskFunc:
    """2-D variable-density Poisson-disc mask (``sigpy.mri.poisson``) with a square calibration region.

    Parameters
    ----------
    accelerations : sequence of float
        Target accelerations (one drawn per call).
    calib_size : int
        Side of the fully sampled square ACS region, in samples.
    seed : int, optional
        Seed of the function's random state.

    Called like the 1-D functions; returns a float32 mask ``(1, ..., H, W)``
    and the ACS width ``calib_size``.
    """

    def __init__(self, accelerations: Sequence[float], calib_size: int = 24, seed: int | None = None) -> None:
        self.accelerations = list(accelerations)
        for acc in self.accelerations:
            if not acc > 1.0:
                raise OperatorInputError(f"acceleration must be > 1 for a Poisson mask, got {acc}")
        if calib_size < 1:
            raise OperatorInputError(f"calib_size must be >= 1, got {calib_size}")
        self.calib_size = int(calib_size)
        self.rng = np.random.RandomState(seed)

    def __call__(
        self,
        shape: Sequence[int],
        offset: int | None = None,
        seed: int | tuple[int, ...] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Sample a mask for k-space of ``shape`` ``(..., H, W)``: float32 ``(1, ..., H, W)`` and the ACS width."""
        import sigpy.mri

        _check_shape(shape)
        h, w = int(shape[-2]), int(shape[-1])
        with temp_seed(self.rng, seed):
            acc = float(self.rng.choice(self.accelerations))
            draw = int(self.rng.randint(0, 2**31 - 1))
        try:
            mask = sigpy.mri.poisson((h, w), acc, calib=(self.calib_size, self.calib_size), dtype=np.float32,
                                     crop_corner=True, seed=draw)
        except ValueError as err:
            raise OperatorInputError(
                f"no Poisson-disc mask reaches acceleration {acc:g} on {h}x{w} with a {self.calib_size}² calibration region"
            ) from err
        mask_shape = [1 for _ in shape]
        mask_shape[-2], mask_shape[-1] = h, w
        return torch.from_numpy(np.ascontiguousarray(mask.real.astype(np.float32)).reshape(mask_shape)), self.calib_size


MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "poisson")


def create_mask_for_mask_type(
    mask_type: str, center_fractions: Sequence[float], accelerations: Sequence[float], seed: int | None = None
) -> MaskFunc | PoissonMaskFunc:
    """Mask function by name (fastMRI's ``create_mask_for_mask_type`` plus ``"poisson"``).

    For ``"poisson"`` the calibration square is ``round(center_fraction · 320)``
    clipped to at least 12, a fixed size independent of the image.
    """
    if mask_type == "random":
        return RandomMaskFunc(center_fractions, accelerations, seed=seed)
    if mask_type == "equispaced":
        return EquiSpacedMaskFunc(center_fractions, accelerations, seed=seed)
    if mask_type == "equispaced_fraction":
        return EquispacedMaskFractionFunc(center_fractions, accelerations, seed=seed)
    if mask_type == "poisson":
        calib = max(12, round(float(center_fractions[0]) * 320))
        return PoissonMaskFunc(accelerations, calib_size=calib, seed=seed)
    raise OperatorInputError(f"unknown mask type {mask_type!r}; choose one of {', '.join(MASK_TYPES)}")


#: Accelerations :func:`make_mask` accepts (fastMRI's masks reach up to 32x on realistic widths).
MAX_ACCELERATION = 32.0


def make_mask(
    mask_type: str, acceleration: float, center_fraction: float, shape: tuple[int, int], fname: str
) -> tuple[np.ndarray, int]:
    """A fastMRI mask for k-space ``shape (H, W)``, seeded by the file name as fastMRI does.

    Parameters
    ----------
    mask_type : str
        One of :data:`MASK_TYPES`.
    acceleration : float
        Target acceleration R in ``(1, 32]``.
    center_fraction : float
        Fully sampled centre fraction in ``(0, 1/R]``.
    shape : tuple of int
        ``(H, W)`` of the k-space.
    fname : str
        Base file name; :func:`seed_from_filename` of it seeds the mask.

    Returns
    -------
    mask : np.ndarray
        float32, ``(W,)`` for column masks or ``(H, W)`` for Poisson masks; 1 where sampled.
    num_low_frequencies : int
        ACS width in lines.

    Raises
    ------
    OperatorInputError
        For an acceleration or centre fraction out of range, or a mask that cannot be realised.
    """
    if not 1.0 < acceleration <= MAX_ACCELERATION:
        raise OperatorInputError(f"acceleration must be in (1, {MAX_ACCELERATION:g}], got {acceleration}")
    if not 0.0 < center_fraction < 1.0 / acceleration + 1e-9:
        raise OperatorInputError(f"center fraction must be in (0, 1/acceleration], got {center_fraction}")
    func = create_mask_for_mask_type(mask_type, [center_fraction], [acceleration])
    mask, num_low = func(shape, seed=seed_from_filename(fname))
    m = mask.numpy().squeeze()
    return m.astype(np.float32), int(num_low)
