"""Statistics of the benchmark protocol: volume-clustered bootstrap intervals, paired differences, λ selection.

Slices of one volume are not independent (same anatomy, same coils and noise level), so every reported interval
comes from a two-stage (hierarchical) bootstrap: volumes are resampled with replacement, then slices within each
drawn volume (:func:`clustered_mean_ci`).  All resampling is seeded, so the same inputs give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

#: Bootstrap resamples and confidence level of every reported interval.
RESAMPLES = 2000
LEVEL = 0.95


def bootstrap_mean_ci(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap ``level`` interval: ``(mean, low, high)``.

    Resamples the values (slices) with replacement ``resamples`` times from
    ``numpy.random.default_rng(seed)``; NaN for an empty input, a zero-width interval for one value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(int(resamples), v.size))
    means = v[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(v.mean()), float(lo), float(hi)


def clustered_mean_ci(values: Sequence[float], clusters: Sequence[object], resamples: int = RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of ``values`` and its two-stage (volume-clustered) percentile-bootstrap interval: ``(mean, low, high)``.

    Each resample draws as many clusters as there are, with replacement, and within each drawn cluster as many
    of its units as it has, with replacement; the statistic is the mean over all drawn units.  With one unit per
    cluster this is the ordinary bootstrap of :func:`bootstrap_mean_ci` (the same draws for the same seed is not
    promised).  NaN for an empty input.

    Parameters
    ----------
    values : sequence of float
        One value per unit (slice).
    clusters : sequence
        The cluster (volume) of each unit, any hashable labels, same length as ``values``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    labels = list(clusters)
    if len(labels) != v.size:
        raise ValueError(f"{v.size} values but {len(labels)} cluster labels")
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    groups = [v[[i for i, c in enumerate(labels) if c == k]] for k in dict.fromkeys(labels)]
    rng = np.random.default_rng(seed)
    means = np.empty(int(resamples))
    for b in range(int(resamples)):
        drawn = rng.integers(0, len(groups), size=len(groups))
        total, count = 0.0, 0
        for g in drawn:
            unit = groups[g][rng.integers(0, groups[g].size, size=groups[g].size)]
            total += float(unit.sum())
            count += unit.size
        means[b] = total / count
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(v.mean()), float(lo), float(hi)


def clustered_paired_difference(a: Sequence[float], b: Sequence[float], clusters: Sequence[object],
                                resamples: int = RESAMPLES, seed: int = 0,
                                level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of ``a − b`` over paired units and its volume-clustered bootstrap interval (:func:`clustered_mean_ci`)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired difference needs equal-length inputs, got {a.shape} and {b.shape}")
    return clustered_mean_ci(a - b, clusters, resamples, seed, level)


def paired_difference(a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of ``a − b`` over paired units (the same slices, in the same order) and its bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired difference needs equal-length inputs, got {a.shape} and {b.shape}")
    return bootstrap_mean_ci(a - b, resamples, seed, level)


def half_steps(value: float, step: float) -> tuple[float, float]:
    """The two values half a sweep step on either side of ``value`` (``value ·/÷ √step``, 3 significant digits):
    the refinement of an interior best of a geometric sweep with ratio ``step``."""
    half = float(step) ** 0.5
    return float(f"{value / half:.3g}"), float(f"{value * half:.3g}")


def sweep_until_interior(run: Callable[[float], float], values: Sequence[float], step: float,
                         widen: int) -> tuple[float, dict[float, float], bool]:
    """Sweep ``run(value) -> score`` (higher is better) until its best is interior, then refine it.

    Every value of ``values`` is run; a best at an end (:func:`select_parameter`) extends the sweep by one value
    ``step`` beyond that end (3 significant digits), at most ``widen`` times; an interior best is then refined by
    :func:`half_steps`.  Returns the best value, every value's score and whether the best is interior.
    """
    scores = {float(v): float(run(float(v))) for v in sorted(values)}

    def chosen() -> tuple[float, str]:
        return select_parameter({v: [s] for v, s in scores.items()})

    for _ in range(widen):
        best, where = chosen()
        if not where.startswith("edge"):
            break
        new = float(f"{(best / step if where == 'edge (lowest)' else best * step):.3g}")
        scores[new] = float(run(new))
    best, where = chosen()
    if where == "interior":
        for new in half_steps(best, step):
            if new not in scores:
                scores[new] = float(run(new))
        best, where = chosen()
    return best, scores, where == "interior"


def select_parameter(scores: Mapping[float, Sequence[float]]) -> tuple[float, str]:
    """The swept value with the highest mean score, and where it lies in the sweep.

    Parameters
    ----------
    scores : mapping
        Swept value (e.g. λ) -> scores on the tuning slices (higher is better).

    Returns
    -------
    (float, str)
        The chosen value and ``"interior"``, ``"edge (lowest)"``, ``"edge (highest)"`` or
        ``"single value"``: an edge means the sweep should be widened (the optimum may lie outside).
        Ties go to the smaller value.
    """
    if not scores:
        raise ValueError("no swept values to select from")
    values = sorted(scores)
    means = [float(np.mean(scores[v])) for v in values]
    best = int(np.argmax(means))
    if len(values) == 1:
        where = "single value"
    elif best == 0:
        where = "edge (lowest)"
    elif best == len(values) - 1:
        where = "edge (highest)"
    else:
        where = "interior"
    return values[best], where
