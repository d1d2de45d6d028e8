"""Statistics the manager's decisions rest on: cost fits and quality bounds.

Pure functions over small lists; no state. Kept apart from `manager` so that each piece
of math can be read and tested on its own.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CostFit:
    """Batch time model: seconds(n) = fixed + per_item*n + quadratic*n^2."""

    fixed: float
    per_item: float
    quadratic: float
    points: int
    residual_scale: float
    """Robust scale (seconds) of the residuals of the points that were kept."""

    def seconds(self, size: float) -> float:
        return self.fixed + self.per_item * size + self.quadratic * size * size

    def seconds_per_item(self, size: float) -> float:
        return self.seconds(size) / size if size > 0 else math.inf

    def largest_size_within(self, seconds: float) -> float:
        """Largest n with seconds(n) <= `seconds` (math.inf when time never reaches it)."""
        a, b, c = self.fixed - seconds, self.per_item, self.quadratic
        if a >= 0:
            return 0.0
        if c > 0:
            # Positive root of c*n^2 + b*n + a = 0 (a < 0, so there is exactly one).
            return (-b + math.sqrt(b * b - 4 * c * a)) / (2 * c)
        if b > 0:
            # Solution to fixed + per_item*n = target duration.
            return -a / b
        return math.inf

    def throughput_optimum(self) -> float:
        """Size minimising seconds per item: d/dn (a/n + b + c*n) = 0 gives n = sqrt(a/c)."""
        if self.quadratic > 0 and self.fixed > 0:
            return math.sqrt(self.fixed / self.quadratic)
        return math.inf


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None when singular."""
    size = len(vector)
    rows = [row[:] + [value] for row, value in zip(matrix, vector, strict=True)]
    for column in range(size):
        pivot = max(range(column, size), key=lambda r: abs(rows[r][column]))
        if abs(rows[pivot][column]) < 1e-12:
            return None
        rows[column], rows[pivot] = rows[pivot], rows[column]
        for r in range(column + 1, size):
            factor = rows[r][column] / rows[column][column]
            for k in range(column, size + 1):
                rows[r][k] -= factor * rows[column][k]
    solution = [0.0] * size
    for r in range(size - 1, -1, -1):
        total = rows[r][size] - sum(rows[r][k] * solution[k] for k in range(r + 1, size))
        solution[r] = total / rows[r][r]
    return solution


def _least_squares(
    sizes: Sequence[float], seconds: Sequence[float], degree: int
) -> tuple[list[float], list[list[float]]] | None:
    """Polynomial least squares; returns the coefficients and the columns of (X'X)^-1.

    Sizes are scaled by their maximum so that the normal equations stay well conditioned.
    The sums are taken in one pass: this runs on every decision.
    """
    scale = max(sizes)
    terms = degree + 1
    moments = [0.0] * (2 * terms - 1)
    xty = [0.0] * terms
    for size, y in zip(sizes, seconds, strict=True):
        x = size / scale
        power = 1.0
        for k in range(2 * terms - 1):
            moments[k] += power
            if k < terms:
                xty[k] += power * y
            power *= x
    xtx = [[moments[i + j] for j in range(terms)] for i in range(terms)]
    scaled = _solve(xtx, xty)
    if scaled is None:
        return None
    inverse_columns = []
    for i in range(terms):
        unit = [1.0 if j == i else 0.0 for j in range(terms)]
        column = _solve(xtx, unit)
        if column is None:
            return None
        inverse_columns.append(column)
    coefficients = [value / scale**power for power, value in enumerate(scaled)]
    return coefficients, inverse_columns


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def fit_costs(
    sizes: Sequence[float],
    seconds: Sequence[float],
    *,
    min_points: int = 4,
    min_spread: float = 1.15,
    outlier_cutoff: float = 3.5,
) -> CostFit | None:
    """Fit batch time against size, dropping outliers; None when the data cannot determine it.

    A linear fit (fixed + per-item cost) needs `min_points` batches whose sizes span at least
    `min_spread` (max/min). The quadratic term is kept only when it is positive and
    significant (t > 3): it then places an interior throughput optimum, which a noisy,
    spurious curvature must not do. Points whose residual exceeds `outlier_cutoff` robust
    standard deviations (1.4826 * MAD) are dropped once and the model refitted, as batches
    that hit a retry or a cold cache would otherwise drag the fit.
    """
    points = [(n, t) for n, t in zip(sizes, seconds, strict=True) if n > 0 and t >= 0]
    if len(points) < min_points:
        return None
    if max(n for n, _ in points) < min_spread * min(n for n, _ in points):
        return None
    fit = _fit_once(points)
    if fit is None:
        return None
    residuals = [t - fit.seconds(n) for n, t in points]
    scale = 1.4826 * _median([abs(r) for r in residuals])
    floor = 1e-9 + 0.01 * _median([t for _, t in points])
    kept = [p for p, r in zip(points, residuals, strict=True) if abs(r) <= outlier_cutoff * max(scale, floor)]
    if len(kept) < len(points) and len(kept) >= min_points:
        refit = _fit_once(kept)
        if refit is not None:
            return refit
    return fit


def _fit_once(points: Sequence[tuple[float, float]]) -> CostFit | None:
    sizes = [n for n, _ in points]
    seconds = [t for _, t in points]
    linear = _least_squares(sizes, seconds, 1)
    if linear is None:
        return None
    (fixed, per_item), _ = linear
    quadratic = 0.0
    distinct = len({round(n) for n in sizes})
    if distinct >= 4 and max(sizes) >= 1.5 * min(sizes) and len(points) >= 8:
        curved = _least_squares(sizes, seconds, 2)
        if curved is not None:
            (c0, c1, c2), inverse = curved
            residual = [t - (c0 + c1 * n + c2 * n * n) for n, t in points]
            dof = len(points) - 3
            variance = sum(r * r for r in residual) / dof
            scale = max(sizes)
            standard_error = math.sqrt(max(variance * inverse[2][2], 0.0)) / scale**2
            if c2 > 0 and standard_error > 0 and c2 / standard_error > 3.0:
                fixed, per_item, quadratic = c0, c1, c2
    if per_item < 0 and quadratic == 0.0:
        return None
    fixed = max(fixed, 0.0)
    residuals = [t - (fixed + per_item * n + quadratic * n * n) for n, t in points]
    return CostFit(
        fixed=fixed,
        per_item=per_item,
        quadratic=quadratic,
        points=len(points),
        residual_scale=1.4826 * _median([abs(r) for r in residuals]),
    )


def wilson_bounds(successes: float, trials: float, z: float) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (lower, upper)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class QualityPool:
    """High and total item counts of batches, sorted by size, for range queries."""

    sizes: tuple[float, ...]
    cumulative_high: tuple[float, ...]
    cumulative_items: tuple[float, ...]

    @classmethod
    def of(cls, observations: Sequence[tuple[float, int, int]]) -> QualityPool:
        """Build from `(size, high, items)` triples."""
        ordered = sorted(observations)
        high_total, item_total = 0.0, 0.0
        cumulative_high, cumulative_items = [0.0], [0.0]
        for _, high, items in ordered:
            high_total += high
            item_total += items
            cumulative_high.append(high_total)
            cumulative_items.append(item_total)
        return cls(
            sizes=tuple(size for size, _, _ in ordered),
            cumulative_high=tuple(cumulative_high),
            cumulative_items=tuple(cumulative_items),
        )

    def between(self, low: float, high: float) -> tuple[float, float]:
        """(High items, items) of the batches whose size lies in [low, high]."""
        start = bisect_left(self.sizes, low)
        stop = bisect_right(self.sizes, high)
        return (
            self.cumulative_high[stop] - self.cumulative_high[start],
            self.cumulative_items[stop] - self.cumulative_items[start],
        )
