"""The quality limit: the largest size whose High share meets the target.

A rule of `scaling_core.limits` (`estimate(window) -> Limit | None`), in a module of its own
for its parts: the proven ceilings (Wilson upper bounds at two strengths), the tentative
ceiling at the base or above, the probes between a good size and a bad one, the test that no
size will meet the target, and the trend of the High share with size near the target.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import islice

from scaling_core._evidence import QualityPool, two_proportion_z, wilson_bounds
from scaling_core.results import Limit
from scaling_core.window import EvidenceWindow, Observation


class QualityLimit:
    """The largest size whose High share meets `high_confidence_threshold`.

    High items are pooled per size. A size whose upper Wilson bound is under the target is
    bad, and so is every larger one (quality does not improve with size): with z = QUALITY_Z
    over the whole window, or z = SOFT_Z over the last SOFT_WINDOW batches, so that one
    unlucky batch cannot hold the size down for long. The size goes to the largest good size
    below the smallest bad one, probing `PROBE_STEP` of the way up while the gap is wide.

    When no size below the bad one met the target, the size halves, unless the evidence says
    no size will: the smallest size tried is bad too, and it is the minimum size or its share
    is no better than that of sizes `SIZE_EFFECT_SPAN` times larger (z < SIZE_EFFECT_Z). The
    constraint is then ignored (unmet).
    """

    QUALITY_Z = 2.0
    SOFT_Z = 1.0
    SOFT_WINDOW = 40
    """Batches the weaker (z = 1, and tentative z = 0) evidence is remembered."""
    TENTATIVE_Z = 0.0
    """z of a tentative ceiling at the base or above: a share under the target, proven or not."""
    NEIGHBOURHOOD = EvidenceWindow.NEIGHBOURHOOD
    """Batches within this size ratio pool their quality evidence."""
    SAME_SIZE = EvidenceWindow.SAME_SIZE
    PROBE_STEP = 0.35
    """Where between the good size and the bad one a probe goes (below halfway: quality falls
    with size, so a probe near the good side is cheaper when it fails)."""
    PROBE_GAP = 3
    """Batches at the good size between two quality probes that have not proven themselves."""
    BISECT_RESOLUTION = 1.08
    """A gap between a good size and a bad one narrower than this ratio is not probed."""
    TREND_REACH = 1.2
    """The quality trend reads batches up to this many times the base (and down to half)."""
    TREND_T = 2.0
    """t of a falling High share at which its trend bounds the growth. A soft limit, asked
    only within `HEADROOM` of the target: a spurious trend stops growth near the target for
    a while, and never shrinks the size."""
    HEADROOM = 0.04
    """High share over the target under which quality counts as near its limit: the trend
    is read, and growth slows (`scaling_core.growth.growth_step`)."""
    SIZE_EFFECT_SPAN = 1.8
    """Sizes this many times the smallest tried are compared with it for an effect of size."""
    SIZE_EFFECT_Z = 1.0
    """z under which smaller batches are taken as no better (one-sided, a lenient test: the
    cost of being wrong is a climb back, the cost of pinning the minimum is the whole run)."""

    def estimate(self, window: EvidenceWindow) -> Limit | None:
        config = window.config
        target = config.high_confidence_threshold
        observations = window.quality
        if not observations:
            return None
        base = window.base
        pool = window.quality_pool()
        sizes = pool.distinct_sizes()
        high, items = pool.between(base / self.NEIGHBOURHOOD, base * self.NEIGHBOURHOOD)
        if items:
            lower, upper = wilson_bounds(high, items, self.QUALITY_Z)
            window.metrics.update(
                {"high_share_near_current": high / items, "high_share_lower_bound": lower, "high_share_upper_bound": upper}
            )
        recent_pool = window.quality_pool(self.SOFT_WINDOW)
        recent_sizes = recent_pool.distinct_sizes()
        # Tentative: the base or a larger size whose recent share is under the target, proven
        # or not. Quality does not improve with size, so growth past it is no bet worth
        # making; the size goes back under it and approaches it by probes, and the evidence
        # expires with the recent window.
        # A pooled share under the target needs a batch under it among the pooled ones: only
        # the sizes with one are looked at.
        doubtful = self._near_low(sizes, pool.low_sizes(target))
        recent_doubtful = list(self._near_low(recent_sizes, recent_pool.low_sizes(target)))
        at_or_above = [size for size in recent_doubtful if size * self.SAME_SIZE >= base]
        candidates = [
            found
            for found in (
                self._ceiling(pool, doubtful, target, self.QUALITY_Z),
                self._ceiling(recent_pool, recent_doubtful, target, self.SOFT_Z),
                self._ceiling(
                    recent_pool,
                    at_or_above,
                    target,
                    self.TENTATIVE_Z,
                    # Items enough that a share HEADROOM over the target looks under it
                    # less than once in six: SOFT_Z * sqrt(t(1-t)/m) <= HEADROOM.
                    min_items=self.SOFT_Z**2 * target * (1 - target) / self.HEADROOM**2,
                ),
            )
            if found is not None
        ]
        if not candidates:
            return self._trend(window, observations, target)
        # The smallest ceiling; at one size, the strongest evidence speaks.
        ceiling, ceiling_share, z = min(candidates, key=lambda found: (found[0], -found[2]))
        window.metrics["quality_ceiling"] = ceiling
        # The floor is the largest size below the ceiling whose own batches met the target:
        # a size merely not yet proven bad is no place to settle.
        floor = next(
            (
                size
                for size in reversed(sizes)
                if size < ceiling and _share(pool.between(size / self.SAME_SIZE, size * self.SAME_SIZE)) >= target
            ),
            None,
        )
        proof = f"upper bound, z={z:g}" if z != self.TENTATIVE_Z else "tentative: not yet proven"
        evidence = f"High share {ceiling_share:.2f} near {ceiling:.0f} items is under the target {target:.2f} ({proof})"
        if floor is None and z == self.TENTATIVE_Z:
            limit, how = ceiling, "not growing past it (unproven, and no smaller size met the target yet)"
        elif floor is None:
            unmet = self._no_size_meets(pool, sizes, target, config.min_batch_size)
            if unmet is not None:
                window.metrics["quality_unmet"] = 1.0
                return Limit(
                    "quality",
                    math.inf,
                    f"no size meets the quality target {target:.2f}: {unmet}; choosing by throughput",
                    unmet=True,
                )
            limit = ceiling / 2
            how = f"no smaller size met the target, halving to {limit:.0f}"
        elif ceiling / floor > self.BISECT_RESOLUTION:
            probe = floor + (ceiling - floor) * self.PROBE_STEP
            since = next(
                (
                    back
                    for back, (size, _, _) in enumerate(reversed(observations))
                    if probe <= size * self.SAME_SIZE and size < ceiling
                ),
                None,
            )
            if since is not None and since < self.PROBE_GAP:
                # A probe that has not proven itself good: back to the good size for a while,
                # so that a size just over the knee is not sat on while its evidence grows.
                limit, how = floor, f"back at {floor:.0f} (good) between probes toward it"
            else:
                limit, how = probe, f"probing between {floor:.0f} (good) and it"
        else:
            limit = floor
            how = f"staying at {floor:.0f}, the largest size below it"
        return Limit("quality", limit, f"the quality limit: {evidence}; {how}", hard=True)

    def _trend(self, window: EvidenceWindow, observations: list[Observation], target: float) -> Limit | None:
        """Where the High share, falling with size around the base, will cross the target.

        Weighted least squares of share = a + b*size over the batches between half and
        `TREND_REACH` times the base (weights: items): with b < 0 at t < -TREND_T, the
        crossing a + b*size = target, that is size = (target - a)/b, bounds the growth. It
        sees a knee coming before a batch has crossed it.
        """
        base = window.base
        share = window.metrics.get("high_share_near_current")
        if share is None or share >= target + self.HEADROOM:
            return None  # far above the target: a knee ahead is no threat yet
        w0 = w1 = w2 = wy = wxy = 0.0
        for size, high, items in observations:
            if base / 2 <= size <= base * self.TREND_REACH and items:
                w0 += items
                w1 += items * size
                w2 += items * size * size
                wy += high
                wxy += high * size
        determinant = w0 * w2 - w1 * w1
        if w0 <= 0 or determinant <= 1e-9 * w0 * w2:
            return None
        # Solution to the weighted normal equations of a + b*size = share.
        b = (w0 * wxy - w1 * wy) / determinant
        a = (wy - b * w1) / w0
        if b >= 0:
            return None
        # Binomial variance of one item at the mean share (weights are item counts).
        share = wy / w0
        variance = max(share * (1 - share), 1e-6)
        t = b / math.sqrt(variance * w0 / determinant)
        if t > -self.TREND_T:
            return None
        crossing = (target - a) / b
        if crossing <= base:
            return None  # at or past the crossing: the ceiling rules decide, on evidence at the sizes
        window.metrics["quality_trend_crossing"] = crossing
        return Limit(
            "quality",
            crossing,
            f"the quality trend: High share falls {-b * 100:.3f} points per 100 items around {base} items "
            f"(t = {t:.1f}) and reaches the target {target:.2f} at {crossing:.0f} items",
        )

    def _near_low(self, sizes: list[float], low: list[float]) -> Iterator[float]:
        """The `sizes` (ascending) that have a size of `low` (the ascending sizes of the batches
        under the target) within `SAME_SIZE` below them, one by one: a ceiling is the first
        of them that is proven bad, and the sizes above it are not looked at."""
        if not low:
            return
        # A size under the smallest low one has none below it.
        for size in islice(sizes, bisect_left(sizes, low[0]), None):
            if (at := bisect_left(low, size / self.SAME_SIZE)) < len(low) and low[at] <= size:
                yield size

    def _ceiling(
        self, pool: QualityPool, sizes: Iterable[float], target: float, z: float, min_items: float = 0.0
    ) -> tuple[float, float, float] | None:
        """(smallest size whose upper bound is under `target`, its High share, z), if any."""
        for size in sizes:
            high, items = pool.between(size / self.SAME_SIZE, size)
            if items == 0 or items < min_items or high >= target * items:
                continue  # its own share meets the target: its bound does too
            _, upper = wilson_bounds(high, items, z)
            if upper < target:
                return size, high / items, z
        return None

    def _no_size_meets(self, pool: QualityPool, sizes: list[float], target: float, minimum: int) -> str | None:
        """Why no size will meet the target, or None while a smaller size still might."""
        smallest = sizes[0]
        high, items = pool.between(smallest, smallest * self.NEIGHBOURHOOD)
        _, upper = wilson_bounds(high, items, self.SOFT_Z)
        if not items or upper >= target:
            return None
        share = high / items
        if smallest <= minimum * self.NEIGHBOURHOOD:
            return f"High share {share:.2f} even at {smallest:.0f} items, the minimum size"
        large_high, large_items = pool.between(smallest * self.SIZE_EFFECT_SPAN, math.inf)
        if large_items and two_proportion_z(high, items, large_high, large_items) < self.SIZE_EFFECT_Z:
            return (
                f"High share {share:.2f} at {smallest:.0f} items is no better than "
                f"{large_high / large_items:.2f} at {smallest * self.SIZE_EFFECT_SPAN:.0f} items and more"
            )
        return None


def _share(counts: tuple[float, float]) -> float:
    high, items = counts
    return high / items if items else 0.0
