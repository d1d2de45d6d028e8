"""The evidence window: which part of a batch history is still current.

A decision reads the history's tail. Within it, evidence older than a change of the
workload is no longer current:

- **cost**: batch times that shifted at unchanged sizes, judged against the regime just
  before a split (`cost_change_point`) or against all older batches (`pooled_change_point`),
  a surprising batch that the batches after it confirm at whatever size (`step_change_point`),
  or recent batches far off the fitted cost in units of its own noise (a shock: a slower
  model, a busier service), cut the timings at the change; a batch far over the time limit
  and the cost before it cuts them until the batches after it rule its rise out
  (`rise_under_test`);
- **quality**: High shares that shifted at unchanged sizes (`quality_change_point`) cut
  the quality observations at the change;
- **failures**: classified by `FailureClassifier`; a failure ceiling that moved down cuts
  the successes before it.

`EvidenceWindow.of` builds all of it once per decision; the limits only read it.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from scaling_core._evidence import (
    Column,
    CostFit,
    QualityPool,
    WeightedCostFit,
    fit_costs,
    fit_weighted_costs,
    log_ratio,
    log_spread,
)
from scaling_core.config import ScalingConfig
from scaling_core.failures import FailureClassifier, FailureReport
from scaling_core.results import BatchView
from scaling_core.shifts import (
    PooledMemo,
    QualityMemo,
    RiseUnderTest,
    StepMemo,
    cost_change_point,
    pooled_change_point,
    quality_change_point,
    rise_under_test,
    slid,
    step_change_point,
)

Timing = tuple[float, float]
"""(items, seconds) of one batch that did not fail whole."""
Observation = tuple[float, int, int]
"""(asked size, High items, items) of one batch that did not fail whole."""


class RecentFit(NamedTuple):
    """The time limit's cost fit of the recent timings, and what the window reads of it."""

    fit: CostFit | None
    """seconds(n) of the next batch (a weighted fit read at the recent weight per item)."""
    noise: float
    """Robust spread of its log residuals (relative timing noise)."""
    expected: list[float]
    """Its seconds of each of the last `RECENT_COST` timings (empty without a fit)."""
    weighed: WeightedCostFit | None = None
    """The fit with item weights, when the batches carry them and their weight costs time."""
    weight_per_item: float | None = None
    """The weight per item of the last `RECENT_WEIGHT` batches, which `fit` reads `weighed` at."""
    heaviest_item: float | None = None
    """The largest weight per item among the fitted batches, when every one carries weights."""


class ViewNumbers(NamedTuple):
    """What the window reads of one batch, computed once per batch (`EvidenceWindow.numbers`)."""

    view: BatchView
    observation: Observation | None
    """(asked size, High items, items), or None when the batch is no evidence (it failed
    whole or held no item)."""
    quality_bucket: int
    """Its `EvidenceWindow.SAME_SIZE` size bucket, by asked size (the quality shift test's)."""
    cost: CostRow | None
    """What the cost tests read of it, or None when it is no timing (no evidence, or no time)."""


class CostRow(NamedTuple):
    """What the cost fits and shift tests read of a batch that took time."""

    timing: Timing
    log_seconds: float
    cost_bucket: int
    """Its `EvidenceWindow.NEIGHBOURHOOD` size bucket, by items and, when its items carry
    weights, by weight per item (the cost shift tests')."""
    view: BatchView
    """The batch (the shift tests' memo key)."""
    weight: float | None
    """Its items' total weight, when they carry weights."""


class PoolCarrier:
    """The `QualityPool` of a stretch of observations, carried from one call to the next.

    When the stretch is the last call's less a few at the front plus at most one new
    observation (by their batches, `keys`), the sorted columns lose those and gain it by
    bisection instead of being sorted again, and so do the pool's distinct sizes and the
    sizes of its batches under the target. The oldest observation of a size is the first
    of that size in the pool's stable order, and a new one goes after every one of its size,
    so the pool is the one `QualityPool.of` builds afresh.
    """

    __slots__ = ("counts", "distinct", "highs", "items", "keys", "low", "observations", "sizes", "target")

    MAX_DROPPED = 4
    """Observations that may leave the front between two calls and still be moved in place."""

    def __init__(self) -> None:
        self.keys: list[object] = []
        self.observations: list[Observation] = []
        self.sizes: list[float] = []
        self.highs: list[int] = []
        self.items: list[int] = []
        self.counts: dict[float, int] = {}
        """Batches of each size."""
        self.distinct: list[float] = []
        self.target = math.nan
        self.low: list[float] = []
        """The sizes of the batches whose High share is under `target`, ascending."""

    def pool(self, observations: Sequence[Observation], keys: Sequence[object], target: float) -> QualityPool:
        """The `QualityPool` of `observations`, whose batches are `keys` (aligned), with its
        `low_sizes(target)` at hand."""
        carried = slid(self.keys, keys, self.MAX_DROPPED) if target == self.target else None
        if carried is None:
            self._rebuild(observations, target)
        else:
            dropped, added = carried
            for observation in self.observations[:dropped]:
                self._remove(observation)
            for observation in observations[len(observations) - added :]:
                self._insert(observation)
        self.keys, self.observations = list(keys), list(observations)
        return QualityPool.of_sorted(
            tuple(self.sizes),
            tuple(self.highs),
            tuple(self.items),
            distinct=tuple(self.distinct),
            low=(target, tuple(self.low)),
        )

    def _rebuild(self, observations: Sequence[Observation], target: float) -> None:
        ordered = sorted(observations, key=itemgetter(0))  # stable, as `QualityPool.of` sorts
        self.sizes[:] = [size for size, _, _ in ordered]
        self.highs[:] = [high for _, high, _ in ordered]
        self.items[:] = [count for _, _, count in ordered]
        self.counts = dict(Counter(self.sizes))
        self.distinct[:] = list(self.counts)
        self.target = target
        self.low[:] = [size for size, high, count in ordered if high < target * count]

    def _remove(self, observation: Observation) -> None:
        """Take out the oldest observation of the pool, `observation`."""
        size, high, count = observation
        at = bisect_left(self.sizes, size)
        del self.sizes[at], self.highs[at], self.items[at]
        self.counts[size] -= 1
        if not self.counts[size]:
            del self.counts[size], self.distinct[bisect_left(self.distinct, size)]
        if high < self.target * count:
            del self.low[bisect_left(self.low, size)]

    def _insert(self, observation: Observation) -> None:
        """Put in `observation`, the newest of the pool."""
        size, high, count = observation
        at = bisect_right(self.sizes, size)
        self.sizes.insert(at, size)
        self.highs.insert(at, high)
        self.items.insert(at, count)
        if size not in self.counts:
            self.counts[size] = 0
            insort(self.distinct, size)
        self.counts[size] += 1
        if high < self.target * count:
            insort(self.low, size)


class EvidenceColumns:
    """The columns `EvidenceWindow.of` reads of the last `EvidenceWindow.EVIDENCE` batches:
    of those that are evidence, their views, observations and quality buckets; of those that
    also took time, their timings, log seconds, cost buckets, views and weights.

    Carried between calls (`update`): when the batches are the last call's less a few at the
    front plus at most one new one, the columns lose those at the front and gain the new
    one, instead of being transposed from every batch again. The sizes and times of the
    timings are also kept as numpy vectors (`sizes`, `seconds`), and the quality limit's
    pools ride along (`pools`).
    """

    __slots__ = (
        "ids",
        "keys",
        "logs",
        "numbers",
        "pools",
        "quality",
        "quality_ids",
        "recent",
        "seconds",
        "sizes",
        "timings",
        "weights",
    )

    MAX_DROPPED = 4
    """Batches that may leave the front between two calls and still be moved in place."""

    def __init__(self) -> None:
        self._clear()
        self.pools = (PoolCarrier(), PoolCarrier())
        """The quality pools of the window's quality evidence and of its last observations
        (`EvidenceWindow.quality_pool`): each checks what it carries by itself."""

    def _clear(self) -> None:
        self.numbers: list[ViewNumbers] = []
        self.recent: list[BatchView] = []
        self.quality: list[Observation] = []
        self.quality_ids: list[int] = []
        self.timings: list[Timing] = []
        self.logs: list[float] = []
        self.ids: list[int] = []
        self.keys: list[BatchView] = []
        self.weights: list[float | None] = []
        self.sizes: Column = np.empty(0)
        self.seconds: Column = np.empty(0)

    def update(self, numbers: Sequence[ViewNumbers]) -> EvidenceColumns:
        """These columns made those of `numbers` (oldest first); returns itself."""
        previous = self.numbers
        count = len(numbers)
        carried = slid(previous, numbers, self.MAX_DROPPED)
        if carried is None:
            self._clear()
            added = count
        else:
            dropped, added = carried
            evidence = sum(number.observation is not None for number in previous[:dropped])
            timed = sum(number.cost is not None for number in previous[:dropped])
            for evidence_column in (self.recent, self.quality, self.quality_ids):
                del evidence_column[:evidence]
            for timing_column in (self.timings, self.logs, self.ids, self.keys, self.weights):
                del timing_column[:timed]
            self.sizes, self.seconds = self.sizes[timed:], self.seconds[timed:]
        before = len(self.timings)
        for number in numbers[count - added :]:
            if number.observation is None:
                continue
            self.recent.append(number.view)
            self.quality.append(number.observation)
            self.quality_ids.append(number.quality_bucket)
            row = number.cost
            if row is not None:
                self.timings.append(row.timing)
                self.logs.append(row.log_seconds)
                self.ids.append(row.cost_bucket)
                self.keys.append(row.view)
                self.weights.append(row.weight)
        if len(self.timings) > before:
            new = self.timings[before:]
            self.sizes = np.concatenate((self.sizes, [size for size, _ in new]))
            self.seconds = np.concatenate((self.seconds, [seconds for _, seconds in new]))
        self.numbers = list(numbers)
        return self


@dataclass(slots=True)
class EvidenceWindow:
    """What the history's tail says, cut at the changes it shows.

    Attributes:
        config: the limits the decision keeps.
        views: the batches of the window, oldest first (at most `HISTORY` of them).
        base: the size the decision starts from (the last batch's asked size).
        remaining_items: items left to process, when the caller knows it.
        failures: the window's whole-batch failures, classified.
        timings: (items, seconds) of the current cost regime, oldest first.
        sizes, seconds: the same timings as two numpy vectors (the cost fits of many batches
            read these).
        quality: (size, High, items) of the current quality regime, oldest first.
        quality_keys: the batch of each of `quality` (what `quality_pool` carries by).
        pools: the carriers of the quality pools (`quality_pool`), kept with the columns.
        fit: the cost fit of the recent timings (None while they do not determine it).
        noise: robust spread of the log residuals of `fit` (relative timing noise).
        metrics: numbers a reader needs to check the decision's reason.
        weighed: the cost fit with item weights that `fit` reads, when there is one.
        rise: the batch far over the time limit that the cost evidence is cut at until the
            batches after it rule its rise out (`shifts.rise_under_test`), or None.
        heaviest_item: the largest weight per item among the recent batches of the current
            cost regime, when every one of them carries its items' weight (None otherwise).
    """

    HISTORY = 400
    """Batches a decision reads: a failure ceiling is remembered this long at most."""
    EVIDENCE = 150
    """Batches the quality and cost evidence reads (a change forgets sooner); a super-linear
    cost's curvature needs the wide sizes of the ramp-up."""
    CHANGE_SCAN = 80
    """Splits the cost shift test tries: as far back as the time limit's fit reads."""
    RECENT_COST = 80
    """Batches the recent cost fit reads (the time limit's)."""
    COST_HALF_LIFE = 40.0
    """Batches after which a batch's weight in the recent cost fit has halved (drift)."""
    FIT_SPREAD = 1.15
    """Max/min size ratio the cost fit needs among its batches."""
    TIME_CURVATURE_T = 2.0
    """t of the quadratic term at which the recent fit (the time limit's) keeps it. A linear
    fit of a cost that curves up is low at the largest sizes, where the time limit is read,
    so the time limit takes curvature on weaker evidence than the throughput optimum
    (`limits.ThroughputOptimum.CURVATURE_T`), which shrinks the size on it."""
    WEIGHT_T = 2.0
    """t of the per-weight cost at which the recent fit takes item weights into account: as
    with curvature (`TIME_CURVATURE_T`), a time model that misses it is low on batches of heavy
    items, where the time limit is read."""
    RECENT_WEIGHT = 3
    """Batches whose weight per item the weighted fit is read at (the items to come are
    most like the last ones: sources are often sorted or grouped)."""
    CHANGE_BATCHES = 3
    """Recent batches tested against older ones for a shift of quality at unchanged sizes."""
    CHANGE_Z = 4.0
    """z of a shift (quality or log seconds) at unchanged sizes that makes the older evidence
    be forgotten: many splits are tried, so a lax z would forget on noise."""
    CHANGE_CHECKPOINT_GROWTH = 1.5
    """The pooled tests (quality, and cost beyond `SHOCK_SCAN`) try splits this much further
    back each time (geometric: cheap, and fine enough, as their shift found at one split stays
    visible from the next)."""
    CHANGE_MIN_ITEMS = 100
    """Older items a size needs before a shift of its quality can be judged."""
    SHOCK_Z = 3.0
    """Recent batches this many noise spreads off the fitted cost (all on one side) mean the
    cost changed: 3 sigma happens to about 1 batch in 700 by chance."""
    SHOCK_SCAN = 8
    """Trailing batches scanned for a shock (and every split the pooled cost test tries)."""
    MIN_NOISE = 0.05
    """Floor on the relative timing noise: identical timings must not make every batch a shock."""
    MAX_NOISE = 2.0
    """Ceiling on the relative timing noise (a factor of e^2 = 7.4 per sigma): beyond it the
    timings say nothing a limit could use."""
    CHANGE_REFERENCE = 20
    """Batches before a split that a cost shift is judged against. The reference's mean error
    adds CHANGE_AFTER / CHANGE_REFERENCE to the variance of the shift: 20 keeps it under a
    third (with Student's factor for a spread from 20 batches, z falls by under a fifth
    against a reference known exactly), and a longer one reaches back into older regimes of a
    cost that alternates."""
    CHANGE_AFTER = 6
    """Batches after a split that a cost shift is judged on. A shift of d noise spreads has
    expected z = d * sqrt(m / (1 + m / CHANGE_REFERENCE)) / sqrt(1.13) (Student's factor); the
    time limit's margin is `TimeLimit.TIME_Z` = 2 spreads, so a shift of 2 spreads is the
    smallest the window must find, and m = 6 is the fewest batches at which it reaches
    `CHANGE_Z` = 4 on average (a shift of 3 spreads is then found with probability 0.98)."""
    STEP_SURPRISE_Z = 2.0
    """Noise spreads off the cost fit before it at which a batch is a candidate for a step of
    the cost (`shifts.step_change_point`): the time limit's own trigger for shrinking at once
    (`limits.TimeLimit.FAR_OVER_ONCE_Z`)."""
    STEP_Z = 3.0
    """z of the batches after such a candidate that confirms the step. Only surprising
    batches are candidates (about 1 in 20), so the bar is lower than `CHANGE_Z`, which every
    split must clear; on the bench's stationary workloads (5 seeds) it cut 35 times in
    30,728 batches, about once in 900 (3.5 cut 25 times, and let more slow batches through
    on latency-alternating: 0.058 of its items on the worst of five seeds)."""
    STEP_CLIP = 3.5
    """Robust spreads at which a residual of the fit before such a candidate is clipped when
    the spread is measured (the cost fits' own outlier cut)."""
    CHANGE_MIN_DOF = 4
    """Degrees of freedom (same-size pairs, in effect) the reference needs before its spread
    is trusted: with fewer, one lucky pair of batches would make every difference a shift."""
    SAME_SIZE = FailureClassifier.SAME_SIZE
    """Batches within this size ratio count as the same size."""
    NEIGHBOURHOOD = 1.10
    """Batches within this size ratio pool their cost evidence in the shift test."""

    config: ScalingConfig
    views: Sequence[BatchView]
    base: int
    remaining_items: int | None
    failures: FailureReport
    timings: list[Timing]
    sizes: Column
    seconds: Column
    quality: list[Observation]
    quality_keys: Sequence[BatchView]
    pools: tuple[PoolCarrier, PoolCarrier]
    fit: CostFit | None
    noise: float
    metrics: dict[str, float] = field(default_factory=dict)
    weighed: WeightedCostFit | None = None
    rise: RiseUnderTest | None = None
    heaviest_item: float | None = None

    @classmethod
    def of(
        cls,
        views: Sequence[BatchView],
        config: ScalingConfig,
        *,
        base: int,
        remaining_items: int | None = None,
        shift_memo: dict[int, tuple[object, bool]] | None = None,
        step_memo: StepMemo | None = None,
        quality_memo: QualityMemo | None = None,
        pooled_memo: PooledMemo | None = None,
        carried: EvidenceColumns | None = None,
        numbers: Sequence[ViewNumbers] | None = None,
    ) -> EvidenceWindow:
        """Build the window of `views` (oldest first), cut at the changes they show.

        `shift_memo`, kept by the caller between calls on a growing history (the same view
        objects, one more each time), remembers the final verdicts of the cost shift test
        (`cost_change_point`), `step_memo` those of the step test (`step_change_point`), and
        `quality_memo` and `pooled_memo` the sums of the quality and pooled shift tests, and
        `carried` the columns of the last call (`EvidenceColumns`);
        `numbers` (`EvidenceWindow.numbers` of each view, aligned with `views`) saves
        computing them. The window is the same with them or without.
        """
        if numbers is None:
            numbers = [cls.numbers(view) for view in views[-cls.EVIDENCE :]]
        elif len(numbers) != len(views) or (views and numbers[-1].view is not views[-1]):
            raise ValueError("numbers must be EvidenceWindow.numbers of each view, aligned with views")
        views = views[-cls.HISTORY :]
        metrics: dict[str, float] = {"current_batch_size": float(base)}
        failures = FailureClassifier(config.min_batch_size).classify(views)
        columns = (carried or EvidenceColumns()).update(numbers[-cls.EVIDENCE :])
        sizes, seconds = columns.sizes, columns.seconds
        recent, timings, logs, ids, keys, weights = (
            columns.recent,
            columns.timings,
            columns.logs,
            columns.ids,
            columns.keys,
            columns.weights,
        )
        # The shift test reads its splits and the reference before the oldest.
        skipped = max(len(timings) - cls.CHANGE_SCAN - cls.CHANGE_REFERENCE, 0)
        found = cost_change_point(
            timings[skipped:], cls, keys=keys[skipped:], memo=shift_memo, logs=logs[skipped:], ids=ids[skipped:]
        )
        change = skipped + found if found else 0
        # The pooled test too (a drift at shared sizes): the more recent cut wins.
        change = max(
            change,
            pooled_change_point(timings, cls, newer_than=change, logs=logs, ids=ids, keys=keys, memo=pooled_memo),
        )
        # And a step at moved sizes, begun by a surprising batch.
        change = max(change, step_change_point(timings, cls, weights=weights, keys=keys, memo=step_memo, since=change))
        recent_fit = cls._fit(timings[change:], weights[change:], sizes[change:], seconds[change:])
        shock = cls._shock(timings[change:], recent_fit.expected, recent_fit.noise)
        if shock:
            change += shock
            recent_fit = cls._fit(timings[change:], weights[change:], sizes[change:], seconds[change:])
        rise = rise_under_test(
            timings, cls, threshold=config.processing_time_threshold, weights=weights, keys=keys, memo=step_memo, since=change
        )
        if rise is not None and cls._clean(timings[change : rise.index], recent_fit, len(timings) - change):
            # In a regime whose noise has shown no such outlier, the slow batch is taken for
            # a step of the cost until the batches after it rule it out: it alone is the
            # evidence until they come in, then they alone are (and it with them once they
            # confirm the step).
            change = rise.index + 1 if rise.index + 1 < len(timings) and not rise.confirmed else rise.index
            recent_fit = cls._fit(timings[change:], weights[change:], sizes[change:], seconds[change:])
            metrics["rise_under_test_batches_ago"] = float(len(timings) - rise.index)
            metrics["rise_under_test_shift"] = math.expm1(rise.shift)
        else:
            rise = None
        fit, noise = recent_fit.fit, recent_fit.noise
        if recent_fit.heaviest_item is not None:
            metrics["heaviest_recent_item_weight"] = recent_fit.heaviest_item
        if recent_fit.weighed is not None and recent_fit.weight_per_item is not None:
            metrics.update(
                {
                    "seconds_per_weight_unit": recent_fit.weighed.per_weight,
                    "seconds_per_item_alone": recent_fit.weighed.per_item,
                    "recent_weight_per_item": recent_fit.weight_per_item,
                }
            )
        if change:
            metrics["cost_change_batches_ago"] = float(len(timings) - change)

        quality = columns.quality
        quality_change = quality_change_point(quality, cls, ids=columns.quality_ids, keys=recent, memo=quality_memo)
        if quality_change:
            metrics["quality_change_batches_ago"] = float(len(quality) - quality_change)

        last = recent[-3:]
        items = sum(v.items for v in last)
        metrics.update(
            {
                "batches_considered": float(len(recent)),
                "recent_high_share": sum(v.high for v in last) / items if items else 0.0,
                "recent_seconds": sum(v.seconds for v in last) / max(len(last), 1),
                "timing_noise": noise,
            }
        )
        if remaining_items is not None:
            metrics["remaining_items"] = float(remaining_items)
        return cls(
            config=config,
            views=views,
            base=base,
            remaining_items=remaining_items,
            failures=failures,
            timings=timings[change:],
            sizes=sizes[change:],
            seconds=seconds[change:],
            quality=quality[quality_change:],
            quality_keys=recent[quality_change:],
            pools=columns.pools,
            fit=fit,
            noise=noise,
            metrics=metrics,
            weighed=recent_fit.weighed,
            rise=rise,
            heaviest_item=recent_fit.heaviest_item,
        )

    @classmethod
    def numbers(cls, view: BatchView) -> ViewNumbers:
        """What the window reads of `view` (the shift tests' buckets by their formulas)."""
        quality_bucket = int(math.log(view.asked) / math.log(cls.SAME_SIZE)) if view.asked > 0 else 0
        if view.items <= 0 or view.failed:
            return ViewNumbers(view, None, quality_bucket, None)
        observation = (float(view.asked), view.high, view.items)
        if view.seconds <= 0:
            return ViewNumbers(view, observation, quality_bucket, None)
        cost_bucket = int(math.log(view.items) / math.log(cls.NEIGHBOURHOOD))
        if view.weight:
            # Items of another weight cost another time: only batches alike in both are neighbours.
            cost_bucket = hash((cost_bucket, int(math.log(view.weight / view.items) / math.log(cls.NEIGHBOURHOOD))))
        timing = (float(view.items), view.seconds)
        return ViewNumbers(
            view, observation, quality_bucket, CostRow(timing, math.log(view.seconds), cost_bucket, view, view.weight)
        )

    @classmethod
    def _fit(
        cls, timings: Sequence[Timing], weights: Sequence[float | None], sizes: Column, seconds: Column
    ) -> RecentFit:
        """The fit of the recent `timings`: every batch kept (the time limit is on expected
        time, outliers included), with the robust spread (1.4826 * MAD) of its log residuals.

        When every recent batch carries its items' total weight (`weights`, aligned with
        `timings`) and the fit finds a significant per-weight cost (`fit_weighted_costs`),
        the fit is that model read at the weight per item of the last `RECENT_WEIGHT` batches:
        heavier items make the size smaller. Otherwise the cost is a function of the item
        count alone. `sizes` and `seconds` are `timings` as two vectors.
        """
        recent = timings[-cls.RECENT_COST :]
        recent_weights = list(weights[-cls.RECENT_COST :])
        heaviest = None
        if recent_weights and all(w is not None and w > 0 for w in recent_weights):
            heaviest = max((w or 0.0) / n for (n, _), w in zip(recent, recent_weights, strict=True))
            weighed = fit_weighted_costs(
                [n for n, _ in recent],
                [float(w or 0.0) for w in recent_weights],
                [t for _, t in recent],
                half_life=cls.COST_HALF_LIFE,
                weight_t=cls.WEIGHT_T,
            )
            if weighed is not None:
                last_items = sum(n for n, _ in recent[-cls.RECENT_WEIGHT :])
                last_weight = sum(w for w in recent_weights[-cls.RECENT_WEIGHT :] if w is not None)
                per_item_weight = last_weight / last_items
                weighed_expected = [weighed.seconds(n, w or 0.0) for (n, _), w in zip(recent, recent_weights, strict=True)]
                return RecentFit(
                    weighed.at(per_item_weight),
                    cls._noise(seconds[-cls.RECENT_COST :], np.array(weighed_expected)),
                    weighed_expected,
                    weighed,
                    per_item_weight,
                    heaviest,
                )
        sizes, seconds = sizes[-cls.RECENT_COST :], seconds[-cls.RECENT_COST :]
        fit = fit_costs(
            sizes,
            seconds,
            min_spread=cls.FIT_SPREAD,
            half_life=cls.COST_HALF_LIFE,
            outlier_cutoff=None,
            curvature_t=cls.TIME_CURVATURE_T,
        )
        if fit is None:
            return RecentFit(None, cls.MIN_NOISE, [], heaviest_item=heaviest)
        expected = fit.seconds_of(sizes)
        return RecentFit(fit, cls._noise(seconds, expected), expected.tolist(), heaviest_item=heaviest)

    @classmethod
    def _clean(cls, timings: Sequence[Timing], recent: RecentFit, count: int) -> bool:
        """Whether none of `timings` (the regime's batches before a slow one) lies
        `SHOCK_Z` noise spreads over the recent fit (`recent`, of the last `count` timings)."""
        expected = recent.expected
        if not expected:
            return True
        offset = count - len(expected)
        limit = math.exp(cls.SHOCK_Z * recent.noise)
        return not any(
            t > limit * expected[index - offset]
            for index, (_, t) in enumerate(timings)
            if index >= offset and expected[index - offset] > 0
        )

    @classmethod
    def _noise(cls, seconds: Column, expected: Column) -> float:
        """Robust spread of the log residuals of `seconds` against `expected`, within
        [`MIN_NOISE`, `MAX_NOISE`]."""
        return min(max(log_spread(seconds, expected), cls.MIN_NOISE), cls.MAX_NOISE)

    @classmethod
    def _shock(cls, timings: Sequence[Timing], expected: Sequence[float], noise: float) -> int:
        """Index (into `timings`) where a trailing run of batches far off the fit begins; 0 for
        none. `expected` holds the fit's seconds of the last timings (empty without a fit).

        The run must end at the last batch and lie on one side of the fit: a cost that
        jumped (or fell) shows in every batch after the jump, an outlier in one.
        """
        if len(expected) < cls.SHOCK_SCAN or len(timings) <= cls.SHOCK_SCAN:
            return 0
        begin = len(timings)
        side = 0
        offset = len(timings) - len(expected)
        for index in range(len(timings) - 1, len(timings) - 1 - cls.SHOCK_SCAN, -1):
            t = timings[index][1]
            predicted = expected[index - offset]
            if predicted <= 0:
                break
            z = log_ratio(t, predicted) / noise
            direction = (z > cls.SHOCK_Z) - (z < -cls.SHOCK_Z)
            if direction == 0 or (side and direction != side):
                break
            side = direction
            begin = index
        return begin if begin < len(timings) else 0

    # -- what the limits ask of the window -------------------------------------------------

    def quality_pool(self, last: int | None = None) -> QualityPool:
        """The `QualityPool` of the quality evidence, or of its `last` observations, with the
        sizes under the quality target at hand (carried from the last call's by
        `EvidenceColumns.pools`)."""
        target = self.config.high_confidence_threshold
        if last is None:
            return self.pools[0].pool(self.quality, self.quality_keys, target)
        return self.pools[1].pool(self.quality[-last:], self.quality_keys[-last:], target)

    @property
    def last(self) -> BatchView:
        """The newest batch."""
        return self.views[-1]

    def successes_at_or_above(self, size: int) -> int:
        """Batches since `failures.start` that succeeded with about `size` items or more."""
        threshold = size / self.SAME_SIZE
        return sum(
            1 for view in self.views[self.failures.start :] if not view.failed and view.items >= threshold
        )

    def largest_success_below(self, size: float) -> int | None:
        """Largest item count under `size` of a batch since `failures.start` that did not fail whole."""
        below = [v.items for v in self.views[self.failures.start :] if not v.failed and 0 < v.items < size]
        return max(below) if below else None

    def last_probe(self, depth: float) -> tuple[int, BatchView] | None:
        """(batches since, view) of the newest batch asked at least `depth` under the base."""
        for back, view in enumerate(reversed(self.views)):
            if view.asked <= self.base * (1 - depth):
                return back, view
        return None
