"""Statistics the manager's decisions rest on: cost fits and quality bounds.

Pure functions over small lists and vectors; no state. Kept apart from `manager` so that
each piece of math can be read and tested on its own.

The cost fits of many batches (`fit_costs`: the time limit's recent 80, the throughput
optimum's 150) take their sums as numpy vector operations; the line of a step test's
reference (`fit_line`, 20 batches) takes them over lists, where one vector operation costs
more than the loop it would replace.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, repeat
from operator import itemgetter, mul, sub, truediv
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

Column = npt.NDArray[np.float64]
"""A column of a fit (sizes, times, weights), one float per point."""

# The reductions a fit takes on its columns, called as ufuncs: the array methods of the same
# name wrap these in a Python call that costs more than the sum of a hundred floats.
_total, _smallest, _largest = np.add.reduce, np.minimum.reduce, np.maximum.reduce


@dataclass(frozen=True, slots=True)
class CostFit:
    """Batch time model: seconds(n) = fixed + per_item*n + quadratic*n^2, with its uncertainty."""

    fixed: float
    per_item: float
    quadratic: float
    points: int
    scale: float = 1.0
    """Sizes are divided by this before fitting (conditioning)."""
    covariance: tuple[tuple[float, ...], ...] = ()
    """Covariance of the coefficients in scaled units: sigma_w^2 (X'WX)^-1 (seconds^2 when
    the weights are 1/seconds^2, as sigma_w^2 is then a relative variance)."""

    def seconds(self, size: float) -> float:
        return self.fixed + self.per_item * size + self.quadratic * size * size

    def seconds_each(self, sizes: Sequence[float]) -> list[float]:
        """`seconds(n)` of every size in `sizes`."""
        a, b, c = self.fixed, self.per_item, self.quadratic
        return [a + b * n + c * n * n for n in sizes] if c else [a + b * n for n in sizes]

    def seconds_of(self, sizes: Column) -> Column:
        """`seconds(n)` of every size of a vector, term by term in the order `seconds` adds them."""
        a, b, c = self.fixed, self.per_item, self.quadratic
        return a + b * sizes + c * sizes * sizes if c else a + b * sizes

    def design(self, size: float) -> tuple[float, float, float]:
        """The coefficients' multipliers in seconds(size), in the scaled units of `covariance`."""
        x = size / self.scale
        return (1.0, x, x * x)

    def seconds_upper(self, size: float, z: float) -> float:
        """`seconds(size)` plus `z` standard errors of that prediction of the mean."""
        if not self.covariance:
            return self.seconds(size)
        x = size / self.scale
        (c00, c01, c02), (_, c11, c12), (_, _, c22) = self.covariance
        # x' C x for x = (1, x, x^2), C symmetric.
        variance = c00 + 2 * c01 * x + (2 * c02 + c11) * x * x + 2 * c12 * x**3 + c22 * x**4
        return self.seconds(size) + z * math.sqrt(max(variance, 0.0))

    def largest_size_within(self, seconds: float, *, z: float = 0.0, ceiling: float = 1e6) -> float:
        """Largest n with seconds(n) (+ z standard errors) <= `seconds`; math.inf when never reached."""
        a, b, c = self.fixed - seconds, self.per_item, self.quadratic
        if a >= 0:
            return 0.0
        if c > 0:
            # Positive root of c*n^2 + b*n + a = 0 (a < 0, so there is exactly one).
            mean_root = (-b + math.sqrt(b * b - 4 * c * a)) / (2 * c)
        elif b > 0:
            # Solution to fixed + per_item*n = target duration.
            mean_root = -a / b
        else:
            mean_root = math.inf
        if z <= 0 or not self.covariance:
            return mean_root
        # The upper bound grows with n: bisect for where it meets the target.
        low, high = 0.0, min(mean_root, ceiling)
        if self.seconds_upper(high, z) <= seconds:
            return high
        upper = self.seconds_upper
        for _ in range(24):
            middle = (low + high) / 2
            if upper(middle, z) <= seconds:
                low = middle
            else:
                high = middle
        return low

    @property
    def curvature_t(self) -> float:
        """t statistic of the quadratic term (0.0 without one)."""
        if not self.quadratic or not self.covariance:
            return 0.0
        variance = self.covariance[2][2]
        # A curve that fits every point exactly (variance 0) is as certain as a curve gets.
        return self.quadratic * self.scale**2 / math.sqrt(variance) if variance > 0 else math.inf

    def seconds_per_item(self, size: float) -> float:
        return self.seconds(size) / size if size > 0 else math.inf

    def throughput_optimum(self) -> float:
        """Size minimising seconds per item: d/dn (a/n + b + c*n) = 0 gives n = sqrt(a/c)."""
        if self.quadratic > 0 and self.fixed > 0:
            return math.sqrt(self.fixed / self.quadratic)
        return math.inf


def _inverse(matrix: list[list[float]]) -> list[list[float]] | None:
    """Inverse of a symmetric 1x1, 2x2 or 3x3 matrix by cofactors; None when singular."""
    size = len(matrix)
    if size == 1:
        return [[1.0 / matrix[0][0]]] if abs(matrix[0][0]) > 1e-300 else None
    if size == 2:
        (a, b), (c, d) = matrix
        determinant = a * d - b * c
        if abs(determinant) <= 1e-12 * max(abs(a * d), 1e-300):
            return None
        return [[d / determinant, -b / determinant], [-c / determinant, a / determinant]]
    (a, b, c), (d, e, f), (g, h, i) = matrix
    cofactors = [
        [e * i - f * h, c * h - b * i, b * f - c * e],
        [f * g - d * i, a * i - c * g, c * d - a * f],
        [d * h - e * g, b * g - a * h, a * e - b * d],
    ]
    determinant = a * cofactors[0][0] + b * cofactors[1][0] + c * cofactors[2][0]
    if abs(determinant) <= 1e-12 * max(abs(a * e * i), 1e-300):
        return None
    return [[value / determinant for value in row] for row in cofactors]


def _inverse3(a: float, b: float, c: float, e: float, f: float, i: float) -> list[list[float]] | None:
    """`_inverse` of the symmetric [[a, b, c], [b, e, f], [c, f, i]], from its six numbers
    (a cost fit's normal equations: the same operations, without building the matrix)."""
    c00, c01, c02 = e * i - f * f, c * f - b * i, b * f - c * e
    c11, c12, c22 = a * i - c * c, c * b - a * f, a * e - b * b
    determinant = a * c00 + b * (f * c - b * i) + c * (b * f - e * c)
    if abs(determinant) <= 1e-12 * max(abs(a * e * i), 1e-300):
        return None
    return [
        [c00 / determinant, c01 / determinant, c02 / determinant],
        [(f * c - b * i) / determinant, c11 / determinant, c12 / determinant],
        [(b * f - e * c) / determinant, (c * b - a * f) / determinant, c22 / determinant],
    ]


class _Moments(NamedTuple):
    """Sums of w*x^k (k <= 4), w*x^k*y (k <= 2) and w*y^2 over points, sizes x scaled by `scale`."""

    scale: float
    count: int
    xs: tuple[float, ...]
    xys: tuple[float, ...]
    yy: float
    distinct: int
    """Distinct sizes among the points, counted up to `_CURVE_SIZES`."""
    smallest: float

    @classmethod
    def of_line(
        cls,
        sizes: Sequence[float],
        ys: Sequence[float],
        weights: Sequence[float] | None = None,
        *,
        columns: _Columns | None = None,
    ) -> _Moments:
        """The moments a line reads (w x^k for k <= 2, w x^k y for k <= 1, w y^2), for
        `solve((0, 1))`, of the points (sizes[i], ys[i]) with weights[i] (1.0 without), summed
        over lists; `columns`, the `_Columns` of `sizes`, when a fit already has them."""
        scale, x1, x2, distinct, smallest = columns if columns is not None else _Columns.of(sizes)
        # Column by column (each sum one pass in C): x = size / scale.
        if weights is None:
            w_sum, w_x1, wx2, wy = float(len(x1)), sum(x1), x2, ys
        else:
            wx2, wy = list(map(mul, weights, x2)), list(map(mul, weights, ys))
            w_sum, w_x1 = sum(weights), sum(map(mul, weights, x1))
        return cls(
            scale=scale,
            count=len(sizes),
            xs=(w_sum, w_x1, sum(wx2)),
            xys=(sum(wy), sum(map(mul, x1, wy))),
            yy=sum(map(mul, wy, ys)),
            distinct=distinct,
            smallest=smallest,
        )

    @classmethod
    def of_columns(cls, columns: _SizeColumns, ys: Column, weights: Column | None = None) -> _Moments:
        """Every moment, of the points (size, ys[i]) of `columns` with weights[i] (1.0
        without): the sums over the powers x^0..x^4 as two products with `columns.powers`."""
        powers = columns.powers
        if weights is None:
            xs, wy = _total(powers, axis=1), ys
        else:
            xs, wy = powers @ weights, weights * ys
        return cls(
            scale=columns.scale,
            count=len(ys),
            xs=tuple(xs.tolist()),
            xys=tuple((powers[:3] @ wy).tolist()),
            yy=float(wy @ ys),
            distinct=columns.distinct,
            smallest=columns.smallest,
        )

    def solve(self, powers: tuple[int, ...]) -> _Solution | None:
        """Weighted least squares on the given powers of x (0: fixed, 1: per item, 2: quadratic)."""
        xs, xys = self.xs, self.xys
        if len(powers) == 2:
            # The common case, written out: the inverse of [[a, b], [b, d]] is
            # [[d, -b], [-b, a]] / (ad - b^2).
            i, j = powers
            a, b, d = xs[i + i], xs[i + j], xs[j + j]
            determinant = a * d - b * b
            if abs(determinant) <= 1e-12 * max(abs(a * d), 1e-300):
                return None
            inverse = [[d / determinant, -b / determinant], [-b / determinant, a / determinant]]
            y_i, y_j = xys[i], xys[j]
            coefficients = [inverse[0][0] * y_i + inverse[0][1] * y_j, inverse[1][0] * y_i + inverse[1][1] * y_j]
            rss = _residual(self.yy, coefficients[0] * y_i + coefficients[1] * y_j)
            return _Solution(powers, coefficients, inverse, rss)
        if len(powers) == 1:
            (i,) = powers
            a, y_i = xs[i + i], xys[i]
            if abs(a) <= 1e-300:
                return None
            inverse = [[1.0 / a]]
            coefficient = inverse[0][0] * y_i
            return _Solution(powers, [coefficient], inverse, _residual(self.yy, coefficient * y_i))
        i, j, k = powers
        inverse = _inverse3(xs[i + i], xs[i + j], xs[i + k], xs[j + j], xs[j + k], xs[k + k])
        if inverse is None:
            return None
        y0, y1, y2 = xys[i], xys[j], xys[k]
        (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = inverse
        c0, c1, c2 = r00 * y0 + r01 * y1 + r02 * y2, r10 * y0 + r11 * y1 + r12 * y2, r20 * y0 + r21 * y1 + r22 * y2
        # Residual sum of squares from the sums: y'Wy - b'X'Wy.
        rss = _residual(self.yy, c0 * y0 + c1 * y1 + c2 * y2)
        return _Solution(powers, [c0, c1, c2], inverse, rss)

    def best_nonnegative(
        self, candidates: Sequence[tuple[int, ...]], first: _Solution | None = None
    ) -> _Solution | None:
        """The lowest-RSS solution among `candidates` whose coefficients are all >= 0.

        Costs are sums of non-negative parts (fixed, per item, per item^2): a negative
        coefficient is the noise talking, and the best model without that term is taken.
        The first candidate holds every power of the others, so when it is non-negative no
        nested model can fit better and none is solved. `first`, when given, is the first
        candidate already solved.
        """
        best: _Solution | None = None
        for number, powers in enumerate(candidates):
            solution = first if number == 0 and first is not None else self.solve(powers)
            if solution is None or _negative(solution.coefficients):
                continue
            if number == 0:
                return solution
            if best is None or solution.rss < best.rss:
                best = solution
        return best


_RSS_ZERO = 1e-9
"""A residual sum of squares under this share of y'Wy is rounding, not noise: y'Wy - b'X'Wy
cancels to about 1e-11 of it on noise-free points, and timings that close to a curve would
be noise of 3e-5 of the time. It counts as 0, so that a noise-free cost is fitted the same
whatever order its sums were taken in."""


def _residual(yy: float, explained: float) -> float:
    """The residual sum of squares y'Wy - b'X'Wy, 0.0 when it is rounding (`_RSS_ZERO`)."""
    rss = yy - explained
    return rss if rss > _RSS_ZERO * yy else 0.0


def _negative(coefficients: list[float]) -> bool:
    """Whether any coefficient is under 0 (a loop: a generator costs more than three numbers)."""
    for coefficient in coefficients:
        if coefficient < 0:
            return True
    return False


class _Columns(NamedTuple):
    """What the moments of a fit read of its sizes alone, the same in each of its passes."""

    scale: float
    """The largest size: x = size / scale (conditioning)."""
    x1: list[float]
    x2: list[float]
    distinct: int
    smallest: float

    @classmethod
    def of(cls, sizes: Sequence[float]) -> _Columns:
        scale = max(sizes)
        x1 = list(map(truediv, sizes, repeat(scale)))
        return cls(scale, x1, list(map(mul, x1, x1)), _distinct(sizes, _CURVE_SIZES), min(sizes))


class _SizeColumns(NamedTuple):
    """`_Columns` as vectors (`_Moments.of_columns`)."""

    scale: float
    powers: Column
    """x^0 .. x^4 of each size, x = size / scale: a 5 x n matrix."""
    distinct: int
    smallest: float

    @classmethod
    def of(cls, sizes: Column) -> _SizeColumns:
        scale = float(_largest(sizes))
        powers = np.empty((5, len(sizes)))
        powers[0] = 1.0
        x1, x2 = np.divide(sizes, scale, out=powers[1]), powers[2]
        np.multiply(x1, x1, out=x2)
        np.multiply(x2, x1, out=powers[3])
        np.multiply(x2, x2, out=powers[4])
        return cls(scale, powers, _distinct(sizes.tolist(), _CURVE_SIZES), float(_smallest(sizes)))


def _distinct(values: Iterable[float], enough: int) -> int:
    """How many distinct values `values` holds, counted up to `enough` (the first few
    batches usually differ: no set of them all is built)."""
    seen: set[float] = set()
    for value in values:
        seen.add(value)
        if len(seen) >= enough:
            break
    return len(seen)


class _Solution(NamedTuple):
    """Least-squares coefficients on `powers` of x, (X'WX)^-1 and the residual sum of squares."""

    powers: tuple[int, ...]
    coefficients: list[float]
    inverse: list[list[float]]
    rss: float


def median(values: Iterable[float]) -> float:
    """The median of `values` (at least one), as `statistics.median` gives it, without its
    per-call checks (a decision takes several)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def robust_spread(values: Sequence[float]) -> float:
    """1.4826 * median |value - median|: the standard deviation of normal data, robust to outliers."""
    if not values:
        return 0.0
    centre = median(values)
    return 1.4826 * median(map(abs, map(sub, values, repeat(centre))))


def fit_costs(
    sizes: Sequence[float] | Column,
    seconds: Sequence[float] | Column,
    *,
    min_points: int = 4,
    min_spread: float = 1.15,
    outlier_cutoff: float | None = 3.5,
    curvature_t: float = 3.0,
    half_life: float | None = None,
    guide: CostFit | None = None,
) -> CostFit | None:
    """Fit batch time against size, dropping outliers; None when the data cannot determine it.

    A linear fit (fixed + per-item cost) needs `min_points` batches whose sizes span at least
    `min_spread` (max/min). Timing noise is multiplicative (a batch twice as long varies
    twice as much), so the fit is weighted by 1/predicted^2 from an unweighted first pass:
    relative errors count alike, and a slow outlier on a large batch cannot fake a curve.
    The quadratic term is kept only when it is positive, significant (t > `curvature_t`)
    over sizes spanning 1.5x, and leaves a non-negative per-item cost: it places an interior
    throughput optimum, which a spurious curvature must not do. Points whose relative
    residual exceeds `outlier_cutoff` robust standard deviations (1.4826 * MAD) are dropped
    once, as batches that hit a retry or a cold cache would otherwise drag the fit; with
    `outlier_cutoff=None` every point stays (the fit then estimates the mean batch time,
    outliers included, which is what a limit on expected time is about).

    With `half_life`, a point's weight halves every `half_life` points back from the last
    one, so the fit follows costs that drift. A `guide` fit (of similar data) supplies the
    predicted times for the weights and saves the unweighted first pass.
    """
    mean, robust = _fit_costs_pair(
        sizes,
        seconds,
        min_points=min_points,
        min_spread=min_spread,
        outlier_cutoff=outlier_cutoff or 0.0,
        curvature_t=curvature_t,
        half_life=half_life,
        guide=guide,
        robust=outlier_cutoff is not None,
    )
    return robust if outlier_cutoff is not None else mean


@dataclass(frozen=True, slots=True)
class WeightedCostFit:
    """Batch time model with item weights: seconds(n, w) = fixed + per_item*n + per_weight*w.

    `w` is the batch's total weight (tokens, bytes): a batch of heavy items costs more than
    one of as many light ones. Coefficients are in seconds, seconds per item and seconds per
    weight unit; `covariance` is theirs, in the units sizes and weights were scaled by.
    """

    fixed: float
    per_item: float
    per_weight: float
    points: int
    item_scale: float
    weight_scale: float
    covariance: tuple[tuple[float, ...], ...]

    def seconds(self, size: float, weight: float) -> float:
        return self.fixed + self.per_item * size + self.per_weight * weight

    def design(self, size: float, weight: float) -> tuple[float, float, float]:
        """The coefficients' multipliers in seconds(size, weight), in the scaled units of `covariance`."""
        return (1.0, size / self.item_scale, weight / self.weight_scale)

    def seconds_upper(self, size: float, weight: float, z: float) -> float:
        """`seconds(size, weight)` plus `z` standard errors of that prediction of the mean."""
        x = self.design(size, weight)
        variance = sum(x[i] * self.covariance[i][j] * x[j] for i in range(3) for j in range(3))
        return self.seconds(size, weight) + z * math.sqrt(max(variance, 0.0))

    def largest_weight_within(self, size: float, seconds: float, *, z: float = 0.0) -> float:
        """Largest summed weight W of a batch of `size` items with seconds(size, W) (+ `z`
        standard errors) <= `seconds`; 0.0 when even a weightless batch is over it.

        Solution to fixed + per_item*size + per_weight*W = seconds for the mean; the upper
        bound grows with W, so the bound's root is bisected under it.
        """
        mean_root = (seconds - self.fixed - self.per_item * size) / self.per_weight
        if mean_root <= 0:
            return 0.0
        if z <= 0 or self.seconds_upper(size, mean_root, z) <= seconds:
            return mean_root
        low, high = 0.0, mean_root
        if self.seconds_upper(size, low, z) > seconds:
            return 0.0
        for _ in range(24):
            middle = (low + high) / 2
            if self.seconds_upper(size, middle, z) <= seconds:
                low = middle
            else:
                high = middle
        return low

    @property
    def weight_t(self) -> float:
        """t statistic of the per-weight term."""
        variance = self.covariance[2][2]
        return self.per_weight * self.weight_scale / math.sqrt(variance) if variance > 0 else math.inf

    def at(self, weight_per_item: float) -> CostFit:
        """The time model of batches whose items weigh `weight_per_item` each on average:
        w = weight_per_item * n, so seconds(n) = fixed + (per_item + per_weight * weight_per_item) * n.

        In scaled units the per-item coefficient is beta = b + k*d with k = weight_per_item *
        item_scale / weight_scale, so Var(beta) = V_bb + 2k V_bd + k^2 V_dd and
        Cov(fixed, beta) = V_ab + k V_ad.
        """
        k = weight_per_item * self.item_scale / self.weight_scale
        (v_aa, v_ab, v_ad), (_, v_bb, v_bd), (_, _, v_dd) = self.covariance
        variance = v_bb + 2 * k * v_bd + k * k * v_dd
        across = v_ab + k * v_ad
        return CostFit(
            fixed=self.fixed,
            per_item=self.per_item + self.per_weight * weight_per_item,
            quadratic=0.0,
            points=self.points,
            scale=self.item_scale,
            covariance=((v_aa, across, 0.0), (across, variance, 0.0), (0.0, 0.0, 0.0)),
        )


_WEIGHTED_MODELS = ((0, 1, 2), (0, 2), (1, 2))
"""Columns of the weighted cost models, most general first (0: fixed, 1: items, 2: weight);
each holds the weight term, the one the fit is about."""


def fit_weighted_costs(
    sizes: Sequence[float],
    weights: Sequence[float],
    seconds: Sequence[float],
    *,
    min_points: int = 5,
    weight_t: float = 2.0,
    half_life: float | None = None,
) -> WeightedCostFit | None:
    """Fit batch time against items and total weight; None when the weight term is not
    significant (t <= `weight_t`) or the data cannot determine it.

    Weighted least squares on the columns (1, n, w), two passes as in `fit_costs`: the
    second weighted by recency / predicted^2 (timing noise is multiplicative). The weight
    term is only identified when the weight per item varies between batches (otherwise w is
    a multiple of n); a negative coefficient is the noise talking, and the best non-negative
    model that keeps the weight term is taken.
    """
    points = [(n, w, t) for n, w, t in zip(sizes, weights, seconds, strict=True) if n > 0 and w > 0 and t > 0]
    count = len(points)
    if count < min_points:
        return None
    item_scale = max(n for n, _, _ in points)
    weight_scale = max(w for _, w, _ in points)
    rows = [(1.0, n / item_scale, w / weight_scale, t) for n, w, t in points]
    recency = _recency(count, half_life) if half_life else (1.0,) * count
    first = _solve_weighted(rows, recency)
    if first is None:
        return None
    predicted = [sum(c * x for c, x in zip(first[0], row[:3])) for row in rows]
    second = _solve_weighted(rows, [r / (p * p) if p > 1e-9 else r * 1e18 for r, p in zip(recency, predicted)])
    if second is None:
        return None
    coefficients, covariance = second
    fit = WeightedCostFit(
        fixed=coefficients[0],
        per_item=coefficients[1] / item_scale,
        per_weight=coefficients[2] / weight_scale,
        points=count,
        item_scale=item_scale,
        weight_scale=weight_scale,
        covariance=covariance,
    )
    return fit if fit.per_weight > 0 and fit.weight_t > weight_t else None


def _solve_weighted(
    rows: Sequence[tuple[float, float, float, float]], weights: Sequence[float]
) -> tuple[list[float], tuple[tuple[float, ...], ...]] | None:
    """(coefficients of fixed, items, weight; their 3x3 covariance) of the best non-negative
    model of `_WEIGHTED_MODELS`, by weighted least squares on `rows` (1, n, w, seconds)."""
    sums = [[0.0] * 4 for _ in range(3)]
    yy = 0.0
    for row, weight in zip(rows, weights, strict=True):
        y = row[3]
        yy += weight * y * y
        for i in range(3):
            wx = weight * row[i]
            for j in range(i, 4):
                sums[i][j] += wx * row[j]
    best: tuple[float, list[float], list[list[float]], tuple[int, ...]] | None = None
    for columns in _WEIGHTED_MODELS:
        xtx = [[sums[min(i, j)][max(i, j)] for j in columns] for i in columns]
        xty = [sums[i][3] for i in columns]
        inverse = _inverse(xtx)
        if inverse is None:
            continue
        solution = [sum(a * b for a, b in zip(row, xty)) for row in inverse]
        if any(c < 0 for c in solution):
            continue
        rss = max(yy - sum(c * v for c, v in zip(solution, xty)), 0.0)
        if best is None or rss < best[0]:
            best = (rss, solution, inverse, columns)
        if len(columns) == 3:
            break  # the general model is non-negative: no nested one fits better
    if best is None:
        return None
    rss, solution, inverse, columns = best
    dof = len(rows) - len(columns)
    variance = rss / dof if dof > 0 else 0.0
    coefficients = [0.0, 0.0, 0.0]
    covariance = [[0.0] * 3 for _ in range(3)]
    for i, column in enumerate(columns):
        coefficients[column] = solution[i]
        for j, other in enumerate(columns):
            covariance[column][other] = variance * inverse[i][j]
    return coefficients, tuple(tuple(row) for row in covariance)


def _fit_costs_pair(
    sizes: Sequence[float] | Column,
    seconds: Sequence[float] | Column,
    *,
    min_points: int = 4,
    min_spread: float = 1.15,
    outlier_cutoff: float = 3.5,
    curvature_t: float = 3.0,
    half_life: float | None = None,
    guide: CostFit | None = None,
    robust: bool = True,
) -> tuple[CostFit | None, CostFit | None]:
    """(every point, outliers dropped) fits of `fit_costs`, from one pass; without `robust`,
    both are the first."""
    sizes_column, seconds_column = _positive_columns(sizes, seconds)
    count = len(sizes_column)
    if count < min_points:
        return None, None
    columns = _SizeColumns.of(sizes_column)
    if columns.scale < min_spread * columns.smallest:
        return None, None
    recency = _recency_column(count, half_life) if half_life else None
    first = guide or _fit_once(_Moments.of_columns(columns, seconds_column, recency), curvature_t)
    if first is None:
        return None, None
    weights = _relative_weights(first, sizes_column, recency)
    fit = _fit_once(_Moments.of_columns(columns, seconds_column, weights), curvature_t) or first
    if not robust:
        return fit, fit
    deviations = _deviations(seconds_column, fit.seconds_of(sizes_column))
    inside = deviations <= outlier_cutoff * max(1.4826 * _median(deviations), 0.01)
    kept = int(np.count_nonzero(inside))
    if min_points <= kept < count:
        trimmed = _Moments.of_columns(_SizeColumns.of(sizes_column[inside]), seconds_column[inside], weights[inside])
        refit = _fit_once(trimmed, curvature_t)
        if refit is not None:
            return fit, refit
    return fit, fit


def _positive_columns(sizes: Sequence[float] | Column, seconds: Sequence[float] | Column) -> tuple[Column, Column]:
    """The pairs of `sizes` and `seconds` with both positive, as two vectors."""
    if len(sizes) != len(seconds):
        raise ValueError(f"{len(sizes)} sizes but {len(seconds)} times")
    sizes_column, seconds_column = np.asarray(sizes, dtype=float), np.asarray(seconds, dtype=float)
    if not len(sizes_column) or (_smallest(sizes_column) > 0 and _smallest(seconds_column) > 0):
        return sizes_column, seconds_column
    both = (sizes_column > 0) & (seconds_column > 0)
    return sizes_column[both], seconds_column[both]


def _relative_weights(fit: CostFit, sizes: Column, recency: Column | None) -> Column:
    """recency / predicted^2 of each size: timing noise is multiplicative, so relative errors
    count alike (a prediction at or under zero gets an overwhelming weight)."""
    predicted = fit.seconds_of(sizes)
    numerator = 1.0 if recency is None else recency
    if _smallest(predicted) > 1e-9:
        return numerator / (predicted * predicted)
    valid = predicted > 1e-9
    return np.where(valid, numerator / np.where(valid, predicted * predicted, 1.0), numerator * 1e18)


def _deviations(seconds: Column, predicted: Column) -> Column:
    """|t - p| / p of each time against its prediction (0.0 where the prediction is not positive)."""
    if _smallest(predicted) > 1e-9:
        return np.abs((seconds - predicted) / predicted)
    valid = predicted > 1e-9
    return np.where(valid, np.abs((seconds - predicted) / np.where(valid, predicted, 1.0)), 0.0)


def _median(values: Column) -> float:
    """The median of a vector (at least one value), as `median` gives it of a list."""
    ordered = np.sort(values)
    middle = len(ordered) // 2
    return float(ordered[middle]) if len(ordered) % 2 else (float(ordered[middle - 1]) + float(ordered[middle])) / 2


_RATIO_FLOOR = 1e-300
"""Where a time over its prediction underflows (a time of 5e-324 s), the ratio a log reads."""


def log_ratio(seconds: float, expected: float) -> float:
    """log(seconds / expected) of a positive prediction, the ratio floored at `_RATIO_FLOOR`."""
    return math.log(max(seconds / expected, _RATIO_FLOOR))


def log_spread(seconds: Column, expected: Column) -> float:
    """`robust_spread` of `log_ratio`s of the points expected to take time: the relative
    noise of times about a fit."""
    if _smallest(expected) <= 0:
        timed = expected > 0
        seconds, expected = seconds[timed], expected[timed]
    if not len(seconds):
        return 0.0
    residuals = np.log(np.maximum(seconds / expected, _RATIO_FLOOR))
    return 1.4826 * _median(np.abs(residuals - _median(residuals)))


@lru_cache(maxsize=64)
def _recency_column(count: int, half_life: float) -> Column:
    """`_recency` as a vector, computed once per length (read only: it is shared)."""
    weights = np.array(_recency(count, half_life))
    weights.flags.writeable = False
    return weights


def _positive(sizes: Sequence[float], seconds: Sequence[float]) -> tuple[Sequence[float], Sequence[float]]:
    """`_positive_columns` as two lists (the line of `fit_line`)."""
    if len(sizes) != len(seconds):
        raise ValueError(f"{len(sizes)} sizes but {len(seconds)} times")
    if sizes and min(sizes) > 0 and min(seconds) > 0:
        return sizes, seconds
    pairs = [(n, t) for n, t in zip(sizes, seconds) if n > 0 and t > 0]
    return [n for n, _ in pairs], [t for _, t in pairs]


def _relative_errors(seconds: Sequence[float], predicted: Sequence[float]) -> list[float]:
    """(t - p) / p of each time against its prediction (0.0 where the prediction is not positive)."""
    return [(t - p) / p if p > 1e-9 else 0.0 for t, p in zip(seconds, predicted)]


@lru_cache(maxsize=64)
def _recency(count: int, half_life: float) -> tuple[float, ...]:
    """Weights halving every `half_life` points back from the newest of `count` (the same
    few lengths recur every decision: computed once)."""
    decay = 0.5 ** (1.0 / half_life)
    return tuple(decay ** (count - 1 - i) for i in range(count))


_LINEAR_MODELS = ((0, 1), (1,), (0,))
_CURVE_SIZES = 4
"""Distinct sizes a quadratic term needs (three determine any parabola: one more to test it)."""
_CURVED_MODELS = ((0, 1, 2), (0, 2), (1, 2), (2,))


def _fit_once(moments: _Moments, curvature_t: float) -> CostFit | None:
    """The linear fit of `moments`, or the curved one when its quadratic term is significant
    (t > `curvature_t`) over at least 8 points at 4 sizes spanning 1.5x."""
    count = moments.count
    chosen = moments.best_nonnegative(_LINEAR_MODELS)
    if count >= 8 and moments.distinct >= _CURVE_SIZES and moments.scale >= 1.5 * moments.smallest:
        full = moments.solve(_CURVED_MODELS[0])
        # Every curved model holds the quadratic term and at most the full model's others, so
        # its RSS is at least the full model's and its residual variance at least
        # RSS_full / (count - 1): F <= (RSS_linear - RSS_full) * (count - 1) / RSS_full. When
        # even that bound fails the test, no curved model is solved.
        hopeless = (
            chosen is not None
            and full is not None
            and full.rss > 0
            and (chosen.rss - full.rss) * (count - 1) <= curvature_t**2 * full.rss
        )
        curved = None if hopeless else moments.best_nonnegative(_CURVED_MODELS, first=full)
        if curved is not None and count > len(curved.powers):
            # F test of the curvature: the RSS it removes against the residual variance
            # (one extra parameter, so F = t^2).
            variance = curved.rss / (count - len(curved.powers))
            gain = (chosen.rss - curved.rss) if chosen is not None else math.inf
            # A curve that fits exactly (variance 0) where the line does not is significant at any t.
            if gain > 0 and (variance <= 0 or gain / variance > curvature_t**2):
                chosen = curved
    if chosen is None:
        return None
    return _cost_fit(chosen, moments.scale, count)


def _cost_fit(chosen: _Solution, scale: float, count: int) -> CostFit | None:
    """The `CostFit` of a solution in sizes scaled by `scale`; None without a positive size term."""
    values = [0.0, 0.0, 0.0]
    for power, value in zip(chosen.powers, chosen.coefficients, strict=True):
        values[power] = value / scale**power
    fixed, per_item, quadratic = values
    if per_item <= 0 and quadratic <= 0:
        return None
    dof = count - len(chosen.powers)
    variance = chosen.rss / dof if dof > 0 else 0.0
    inverse = chosen.inverse
    covariance: tuple[tuple[float, ...], ...]
    if chosen.powers == (0, 1, 2):
        (c00, c01, c02), (c10, c11, c12), (c20, c21, c22) = inverse
        covariance = (
            (variance * c00, variance * c01, variance * c02),
            (variance * c10, variance * c11, variance * c12),
            (variance * c20, variance * c21, variance * c22),
        )
    elif chosen.powers == (0, 1):
        (c00, c01), (c10, c11) = inverse
        covariance = ((variance * c00, variance * c01, 0.0), (variance * c10, variance * c11, 0.0), (0.0, 0.0, 0.0))
    else:
        rows = [[0.0] * 3 for _ in range(3)]
        for i, row_power in enumerate(chosen.powers):
            for j, column_power in enumerate(chosen.powers):
                rows[row_power][column_power] = variance * inverse[i][j]
        covariance = tuple(tuple(row) for row in rows)
    return CostFit(
        fixed=fixed,
        per_item=per_item,
        quadratic=quadratic,
        points=count,
        scale=scale,
        covariance=covariance,
    )


def fit_line(
    sizes: Sequence[float], seconds: Sequence[float], *, min_points: int = 4, min_spread: float = 1.15
) -> CostFit | None:
    """seconds = fixed + per_item*n by least squares with no sign constraint, for predictions
    whose uncertainty must be honest away from the sizes fitted.

    `fit_costs` drops a fixed cost that comes out negative and keeps per_item*n alone; its
    standard error is then proportional to n, and far below the fitted sizes it claims a
    precision no batch gave it. Here both terms stay, so the covariance carries the spread
    of the fixed cost. Weighted by 1/predicted^2 after an unweighted pass (relative errors,
    as in `fit_costs`); points more than 3.5 robust spreads off are dropped once. None
    without `min_points` points spanning `min_spread` (max/min).
    """
    sizes, seconds = _positive(sizes, seconds)
    count = len(sizes)
    if count < min_points:
        return None
    columns = _Columns.of(sizes)
    if columns.scale < min_spread * columns.smallest:
        return None
    # The unweighted line only weighs the points: its predictions, without a fit's covariance
    # (`_cost_fit`'s coefficients: fixed / scale^0, per_item / scale^1; None without a
    # positive per-item cost).
    solution = _Moments.of_line(sizes, seconds, columns=columns).solve((0, 1))
    if solution is None:
        return None
    fixed, per_item = solution.coefficients[0], solution.coefficients[1] / columns.scale
    if per_item <= 0:
        return None
    weights = _line_weights(seconds, [fixed + per_item * n for n in sizes])
    moments = _Moments.of_line(sizes, seconds, weights, columns=columns)
    solution = moments.solve((0, 1))
    fit = _cost_fit(solution, moments.scale, count) if solution is not None else None
    if fit is None:
        return None
    predicted = fit.seconds_each(sizes)
    relative = _relative_errors(seconds, predicted)
    spread = max(robust_spread(relative), 0.01)
    kept = [i for i, r in enumerate(relative) if abs(r) <= 3.5 * spread]
    if min_points <= len(kept) < count:
        weights = _line_weights(seconds, predicted)
        moments = _Moments.of_line(
            [sizes[i] for i in kept], [seconds[i] for i in kept], [weights[i] for i in kept]
        )
        solution = moments.solve((0, 1))
        refit = _cost_fit(solution, moments.scale, len(kept)) if solution is not None else None
        fit = refit or fit
    return fit


def _line_weights(seconds: Sequence[float], predicted: Sequence[float]) -> list[float]:
    """1 / predicted^2 of each point; where the line goes under zero, the batch's own time
    stands in for its prediction."""
    return [1.0 / max(p if p > 1e-9 else t, 1e-9) ** 2 for t, p in zip(seconds, predicted)]


def two_proportion_z(high_a: float, items_a: float, high_b: float, items_b: float) -> float:
    """z of (share a) - (share b) under the pooled share; 0.0 when either side has no items."""
    if items_a <= 0 or items_b <= 0:
        return 0.0
    pooled = (high_a + high_b) / (items_a + items_b)
    spread = math.sqrt(max(pooled * (1 - pooled), 1e-9) * (1 / items_a + 1 / items_b))
    return (high_a / items_a - high_b / items_b) / spread


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

    sizes: Sequence[float]
    highs: Sequence[int]
    """The High items of each batch, in the order of `sizes`."""
    items: Sequence[int]
    cumulative_high: tuple[float, ...]
    cumulative_items: tuple[float, ...]
    distinct: Sequence[float] | None = None
    """`distinct_sizes`, when the builder already has them."""
    low: tuple[float, Sequence[float]] | None = None
    """(target, `low_sizes(target)`), when the builder already has them."""

    @classmethod
    def of(cls, observations: Sequence[tuple[float, int, int]]) -> QualityPool:
        """Build from `(size, high, items)` triples (a stable sort: batches of one size keep their order)."""
        ordered = sorted(observations, key=itemgetter(0))
        sizes, highs, items = zip(*ordered) if ordered else ((), (), ())
        return cls.of_sorted(sizes, highs, items)

    @classmethod
    def of_sorted(
        cls,
        sizes: Sequence[float],
        highs: Sequence[int],
        items: Sequence[int],
        *,
        distinct: Sequence[float] | None = None,
        low: tuple[float, Sequence[float]] | None = None,
    ) -> QualityPool:
        """Build from the columns of triples already in `of`'s order (and, when the caller
        keeps them, their `distinct_sizes` and one target's `low_sizes`)."""
        return cls(
            sizes=sizes,
            highs=highs,
            items=items,
            cumulative_high=tuple(accumulate(highs, initial=0.0)),
            cumulative_items=tuple(accumulate(items, initial=0.0)),
            distinct=distinct,
            low=low,
        )

    def distinct_sizes(self) -> list[float]:
        """The sizes, each once, ascending."""
        return list(self.distinct) if self.distinct is not None else list(dict.fromkeys(self.sizes))

    def low_sizes(self, target: float) -> list[float]:
        """The sizes of the batches whose High share is under `target`, ascending."""
        if self.low is not None and self.low[0] == target:
            return list(self.low[1])
        return [size for size, high, items in zip(self.sizes, self.highs, self.items) if high < target * items]

    def between(self, low: float, high: float) -> tuple[float, float]:
        """(High items, items) of the batches whose size lies in [low, high]."""
        start = bisect_left(self.sizes, low)
        stop = bisect_right(self.sizes, high)
        return (
            self.cumulative_high[stop] - self.cumulative_high[start],
            self.cumulative_items[stop] - self.cumulative_items[start],
        )
