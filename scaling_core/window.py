"""The evidence window: which part of a batch history is still current.

A decision reads the history's tail. Within it, evidence older than a change of the
workload is no longer current:

- **cost**: batch times that shifted at unchanged sizes, judged against the regime just
  before a split (`cost_change_point`) or against all older batches (`pooled_change_point`),
  or recent batches far off the fitted cost in units of its own noise (a shock: a slower
  model, a busier service), cut the timings at the change;
- **quality**: High shares that shifted at unchanged sizes (`quality_change_point`) cut
  the quality observations at the change;
- **failures**: classified by `FailureClassifier`; a failure ceiling that moved down cuts
  the successes before it.

`EvidenceWindow.of` builds all of it once per decision; the limits only read it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from scaling_core._evidence import CostFit, fit_costs, robust_spread
from scaling_core.config import ScalingConfig
from scaling_core.failures import FailureClassifier, FailureReport
from scaling_core.results import BatchView

Timing = tuple[float, float]
"""(items, seconds) of one batch that did not fail whole."""
Observation = tuple[float, int, int]
"""(asked size, High items, items) of one batch that did not fail whole."""


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
        quality: (size, High, items) of the current quality regime, oldest first.
        fit: the cost fit of the recent timings (None while they do not determine it).
        noise: robust spread of the log residuals of `fit` (relative timing noise).
        metrics: numbers a reader needs to check the decision's reason.
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
    """Batches before a split that a cost shift is judged against: about three probe cycles
    (`ScalingManager.PROBE_EVERY`), enough neighbours at the sizes in use for the spread,
    and short enough to hold only the regime just before the split."""
    CHANGE_AFTER = 6
    """Batches after a split that a cost shift is judged on: about one probe cycle, after
    which the size has moved to where the new cost puts it (sizes an older regime may
    have used)."""
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
    quality: list[Observation]
    fit: CostFit | None
    noise: float
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        views: Sequence[BatchView],
        config: ScalingConfig,
        *,
        base: int,
        remaining_items: int | None = None,
        shift_memo: dict[int, tuple[object, bool]] | None = None,
    ) -> EvidenceWindow:
        """Build the window of `views` (oldest first), cut at the changes they show.

        `shift_memo`, kept by the caller between calls on a growing history (the same view
        objects, one more each time), remembers the final verdicts of the cost shift test
        (`cost_change_point`); the window is the same with it or without.
        """
        views = views[-cls.HISTORY :]
        metrics: dict[str, float] = {"current_batch_size": float(base)}
        failures = FailureClassifier(config.min_batch_size).classify(views)
        recent = [v for v in views[-cls.EVIDENCE :] if v.items > 0 and not v.failed]

        timed = [v for v in recent if v.seconds > 0]
        timings = [(float(v.items), v.seconds) for v in timed]
        # The shift test reads its splits and the reference before the oldest.
        skipped = max(len(timings) - cls.CHANGE_SCAN - cls.CHANGE_REFERENCE, 0)
        found = cost_change_point(timings[skipped:], cls, keys=timed[skipped:], memo=shift_memo)
        change = skipped + found if found else 0
        # The pooled test too (a drift at shared sizes): the more recent cut wins.
        change = max(change, pooled_change_point(timings, cls, newer_than=change))
        fit, noise = cls._fit(timings[change:])
        shock = cls._shock(timings[change:], fit, noise)
        if shock:
            change += shock
            fit, noise = cls._fit(timings[change:])
        if change:
            metrics["cost_change_batches_ago"] = float(len(timings) - change)

        quality = [(float(v.asked), v.high, v.items) for v in recent]
        quality_change = quality_change_point(quality, cls)
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
            quality=quality[quality_change:],
            fit=fit,
            noise=noise,
            metrics=metrics,
        )

    @classmethod
    def _fit(cls, timings: Sequence[Timing]) -> tuple[CostFit | None, float]:
        """(fit, noise) of the recent `timings`: every batch kept (the time limit is on expected
        time, outliers included), and the robust spread (1.4826 * MAD) of its log residuals."""
        recent = timings[-cls.RECENT_COST :]
        fit = fit_costs(
            [n for n, _ in recent],
            [t for _, t in recent],
            min_spread=cls.FIT_SPREAD,
            half_life=cls.COST_HALF_LIFE,
            outlier_cutoff=None,
            curvature_t=cls.TIME_CURVATURE_T,
        )
        if fit is None:
            return None, cls.MIN_NOISE
        a, b, c = fit.fixed, fit.per_item, fit.quadratic
        residuals = [math.log(max(t / e, 1e-300)) for n, t in recent if (e := a + b * n + c * n * n) > 0]
        return fit, min(max(robust_spread(residuals), cls.MIN_NOISE), cls.MAX_NOISE)

    @classmethod
    def _shock(cls, timings: Sequence[Timing], fit: CostFit | None, noise: float) -> int:
        """Index (into `timings`) where a trailing run of batches far off `fit` begins; 0 for none.

        The run must end at the last batch and lie on one side of the fit: a cost that
        jumped (or fell) shows in every batch after the jump, an outlier in one.
        """
        if fit is None or len(timings) <= cls.SHOCK_SCAN:
            return 0
        begin = len(timings)
        side = 0
        for index in range(len(timings) - 1, len(timings) - 1 - cls.SHOCK_SCAN, -1):
            n, t = timings[index]
            expected = fit.seconds(n)
            if expected <= 0:
                break
            z = math.log(max(t / expected, 1e-300)) / noise
            direction = (z > cls.SHOCK_Z) - (z < -cls.SHOCK_Z)
            if direction == 0 or (side and direction != side):
                break
            side = direction
            begin = index
        return begin if begin < len(timings) else 0

    # -- what the limits ask of the window -------------------------------------------------

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


def _shifted(
    difference: float, spread: float, within: float, dof: float, window: type[EvidenceWindow], *, few: bool = True
) -> bool:
    """|z| > `CHANGE_Z` for the summed shift `difference` with variance `spread` x the pooled
    within-size variance within/dof (at least `MIN_NOISE` squared).

    With `few` (a spread from a short reference) the variance is scaled by dof/(dof - 2), the
    variance of Student's t over the normal's, and with fewer than `CHANGE_MIN_DOF` degrees of
    freedom nothing is judged: one lucky pair would make every difference a shift.
    """
    if spread <= 0 or (few and dof < window.CHANGE_MIN_DOF):
        return False
    variance = max(within / dof if dof else 0.0, window.MIN_NOISE**2)
    if few:
        variance *= dof / (dof - 2)
    return abs(difference) / math.sqrt(variance * spread) > window.CHANGE_Z


def cost_change_point(
    timings: Sequence[Timing],
    window: type[EvidenceWindow] = EvidenceWindow,
    *,
    keys: Sequence[object] | None = None,
    memo: dict[int, tuple[object, bool]] | None = None,
) -> int:
    """Index from which the cost evidence is current (0 when the cost did not shift).

    A split is judged on the `CHANGE_AFTER` batches after it, each compared with the batches
    of about its size (buckets `NEIGHBOURHOOD` wide: timing noise dwarfs the size effect
    within them) among the `CHANGE_REFERENCE` batches just before it, on log seconds:

        z = sum(after - mean_before) / sqrt(s^2 * sum(n_a * (1 + n_a/n_b)))

    s^2 the spread those older batches show within a size (the newer ones would inflate it
    with the very shift under test). Only the regime just before the split is the reference:
    a cost that alternates has batches of the new cost at the new sizes further back, and
    pooling them would hide the change and inflate the spread. Only the first batches after
    the split are judged: they ran at the sizes of before, and later ones at sizes that older
    regimes may have used. So a split's verdict is final once its batches are in, and a change
    stays found while it is in the window. A batch with no such neighbour adds nothing. Every
    split up to `CHANGE_SCAN` back is tried, newest first; the first with |z| > `CHANGE_Z`
    wins.

    With `keys` (one object per timing, its batch) and a `memo` that the caller keeps between
    calls on a growing history, final verdicts are remembered by key: only the newest
    `CHANGE_AFTER` + 1 splits are judged again, with the same answer.
    """
    count = len(timings)
    if count < 2:
        return 0
    last = max(count - window.CHANGE_SCAN, 1)
    kept: dict[int, tuple[object, bool]] = {}
    lookup = memo if keys is not None else None
    found = 0
    for split, shifted in _judged_splits(timings, window, last):
        final = split + window.CHANGE_AFTER <= count
        if final and keys is not None:
            kept[id(keys[split])] = (keys[split], shifted)
        if shifted:
            found = split
            break
        if final and lookup and keys is not None:
            # The older splits' verdicts are final: remembered, they need no steps.
            older = [(back, lookup.get(id(keys[back]))) for back in range(split - 1, last - 1, -1)]
            if all(entry is not None and entry[0] is keys[back] for back, entry in older):
                remembered = [(back, entry) for back, entry in older if entry is not None]
                for back, entry in remembered:
                    kept[id(keys[back])] = entry
                    if entry[1]:
                        found = back
                        break
                break
            lookup = None  # some are not remembered: judge them
    if memo is not None:
        memo.clear()
        memo.update(kept)
    return found


def _judged_splits(timings: Sequence[Timing], window: type[EvidenceWindow], last: int) -> Iterator[tuple[int, bool]]:
    """(split, |z| > CHANGE_Z) for every split from the newest back to `last` (see
    `cost_change_point`). Moving the split back one batch moves one batch from the reference
    to the newer side, one into the reference and one out of the newer side: every sum is
    updated in O(1)."""
    count = len(timings)
    ratio = window.NEIGHBOURHOOD
    # Bucket and log seconds per batch, computed as the scan reaches them (a remembered scan
    # stops after a few splits).
    ids: dict[int, int] = {}
    logs: dict[int, float] = {}

    def read(index: int) -> tuple[int, float]:
        if index not in ids:
            size, seconds = timings[index]
            ids[index] = _bucket(size, ratio)
            logs[index] = math.log(seconds)
        return ids[index], logs[index]

    reference, after = window.CHANGE_REFERENCE, window.CHANGE_AFTER
    # Per size bucket: count, sum and sum of squares of the reference (before the split);
    # count and sum of the newer batches.
    b_n: dict[int, int] = defaultdict(int)
    b_sum: dict[int, float] = defaultdict(float)
    b_sq: dict[int, float] = defaultdict(float)
    a_n: dict[int, int] = defaultdict(int)
    a_sum: dict[int, float] = defaultdict(float)
    for index in range(max(count - reference, 0), count):
        key, value = read(index)
        b_n[key] += 1
        b_sum[key] += value
        b_sq[key] += value * value
    # The reference's pooled within-bucket sum of squares and its degrees of freedom; the
    # newer batches' shift from the reference means, and its variance in units of s^2.
    within = sum(b_sq[k] - b_sum[k] * b_sum[k] / n for k, n in b_n.items() if n > 1)
    dof = sum(n - 1 for n in b_n.values() if n > 1)
    difference = spread = 0.0
    for split in range(count - 1, last - 1, -1):
        moved, moved_log = read(split)
        entering, entering_log = read(split - reference) if split >= reference else (None, 0.0)
        leaving, leaving_log = read(split + after) if split + after < count else (None, 0.0)
        touched = [moved]
        if entering is not None and entering != moved:
            touched.append(entering)
        if leaving is not None and leaving not in touched:
            touched.append(leaving)
        for key in touched:  # take the buckets' terms out ...
            n_old = b_n[key]
            if n_old:
                mean = b_sum[key] / n_old
                if n_old > 1:
                    within -= b_sq[key] - b_sum[key] * mean
                    dof -= n_old - 1
                n_new = a_n[key]
                difference -= a_sum[key] - n_new * mean
                spread -= n_new * (1 + n_new / n_old)
        b_n[moved] -= 1  # ... move the batches ...
        b_sum[moved] -= moved_log
        b_sq[moved] -= moved_log * moved_log
        a_n[moved] += 1
        a_sum[moved] += moved_log
        if entering is not None:
            b_n[entering] += 1
            b_sum[entering] += entering_log
            b_sq[entering] += entering_log * entering_log
        if leaving is not None:
            a_n[leaving] -= 1
            a_sum[leaving] -= leaving_log
        for key in touched:  # ... and put their terms back
            n_old = b_n[key]
            if n_old:
                mean = b_sum[key] / n_old
                if n_old > 1:
                    within += b_sq[key] - b_sum[key] * mean
                    dof += n_old - 1
                n_new = a_n[key]
                difference += a_sum[key] - n_new * mean
                spread += n_new * (1 + n_new / n_old)
        yield split, _shifted(difference, spread, within, dof, window)


def _geometric_backs(length: int, window: type[EvidenceWindow]) -> list[int]:
    """Batches after each split tried beyond `SHOCK_SCAN`: geometric, `CHANGE_CHECKPOINT_GROWTH` apart."""
    backs: list[int] = []
    back = max(window.SHOCK_SCAN, 1)
    while True:
        back = max(back + 1, int(back * window.CHANGE_CHECKPOINT_GROWTH))
        if back >= length:
            return backs
        backs.append(back)


def pooled_change_point(
    timings: Sequence[Timing], window: type[EvidenceWindow] = EvidenceWindow, *, newer_than: int = 0
) -> int:
    """Index from which the cost evidence is current by the pooled test (0 when nothing shifted).

    Every batch after a split is compared with *all* the older batches of about its size, on
    log seconds, in units of the spread those older batches show within a size: the same z as
    `cost_change_point`. It sees a lasting shift at sizes that older batches of any regime
    share (a drift), as its evidence grows with every batch after the split; the local test
    sees a change at sizes only the regime just before it used (costs that alternate). The
    most recent split with |z| > `CHANGE_Z` wins; every split up to `SHOCK_SCAN` batches back
    is tried, geometric ones beyond. Moving the split back one batch updates every sum in O(1).
    Splits at or before `newer_than` (a cut found already) are not tried.
    """
    count = len(timings)
    if count < 2:
        return 0
    ids, width = _dense(_buckets([n for n, _ in timings], window.NEIGHBOURHOOD))
    logs = [math.log(t) for _, t in timings]
    # Per size bucket, of the older batches (before the split) and of the newer ones.
    b_n, b_sum, b_sq = [0] * width, [0.0] * width, [0.0] * width
    a_n, a_sum = [0] * width, [0.0] * width
    for key, value in zip(ids, logs, strict=True):
        b_n[key] += 1
        b_sum[key] += value
        b_sq[key] += value * value
    # Pooled within-bucket sum of squares and degrees of freedom of the older batches.
    spread_sum = sum(b_sq[k] - b_sum[k] * b_sum[k] / b_n[k] for k in range(width) if b_n[k] > 1)
    spread_dof = sum(b_n[k] - 1 for k in range(width) if b_n[k] > 1)
    difference = spread = 0.0
    fine = min(window.SHOCK_SCAN, count - 1)
    for back in range(1, fine + 1):
        index = count - back
        if index <= newer_than:
            return 0
        key, value = ids[index], logs[index]
        n_old, n_new = b_n[key], a_n[key]
        # Take the bucket's old contributions out ...
        if n_old > 1:
            spread_sum -= b_sq[key] - b_sum[key] * b_sum[key] / n_old
            spread_dof -= n_old - 1
        if n_new:
            difference -= a_sum[key] - n_new * b_sum[key] / n_old
            spread -= n_new * (1 + n_new / n_old)
        # ... move the batch from the older side to the newer one ...
        n_old -= 1
        n_new += 1
        b_n[key], a_n[key] = n_old, n_new
        b_sum[key] -= value
        b_sq[key] -= value * value
        a_sum[key] += value
        # ... and put them back. Later batches' log seconds minus what the older mean of
        # their size predicts; its variance in units of the within-size spread.
        if n_old > 1:
            spread_sum += b_sq[key] - b_sum[key] * b_sum[key] / n_old
            spread_dof += n_old - 1
        if n_old:
            difference += a_sum[key] - n_new * b_sum[key] / n_old
            spread += n_new * (1 + n_new / n_old)
        if _shifted(difference, spread, spread_sum, spread_dof, window, few=False):
            return index
    # Beyond: geometric splits, the sums taken over the buckets the newer batches touch.
    touched = {ids[index] for index in range(count - fine, count)}
    back = fine
    for checkpoint in _geometric_backs(count, window):
        if count - checkpoint <= newer_than:
            return 0
        while back < checkpoint:
            back += 1
            index = count - back
            key, value = ids[index], logs[index]
            b_n[key] -= 1
            b_sum[key] -= value
            b_sq[key] -= value * value
            a_n[key] += 1
            a_sum[key] += value
            touched.add(key)
        spread_sum = spread_dof = difference = spread = 0.0
        for key in range(width):
            n_old = b_n[key]
            if n_old > 1:
                spread_sum += b_sq[key] - b_sum[key] * b_sum[key] / n_old
                spread_dof += n_old - 1
        for key in touched:
            n_old, n_new = b_n[key], a_n[key]
            if n_old:
                difference += a_sum[key] - n_new * b_sum[key] / n_old
                spread += n_new * (1 + n_new / n_old)
        if _shifted(difference, spread, spread_sum, spread_dof, window, few=False):
            return count - checkpoint
    return 0




def quality_change_point(observations: Sequence[Observation], window: type[EvidenceWindow] = EvidenceWindow) -> int:
    """Index from which the quality evidence is current (0 when nothing shifted).

    Each candidate split compares the batches after it with the batches before it at the
    same size (buckets `SAME_SIZE` wide): observed High counts against those the older share
    at that size predicts, summed into one z. The most recent split with |z| > `CHANGE_Z`
    wins, so a shift found once stays found while its evidence lasts.
    """
    if len(observations) <= window.CHANGE_BATCHES:
        return 0
    ids, width = _dense(_buckets([size for size, _, _ in observations], window.SAME_SIZE))
    total_high, total_items = [0.0] * width, [0.0] * width
    for key, (_, high, items) in zip(ids, observations, strict=True):
        total_high[key] += high
        total_items[key] += items
    after_high, after_items = [0.0] * width, [0.0] * width
    touched: list[int] = []
    checkpoint = window.CHANGE_BATCHES
    for back in range(1, len(observations)):
        index = len(observations) - back
        key = ids[index]
        _, high, items = observations[index]
        if not after_items[key]:
            touched.append(key)
        after_high[key] += high
        after_items[key] += items
        if back < checkpoint:
            continue
        checkpoint = max(checkpoint + 1, int(checkpoint * window.CHANGE_CHECKPOINT_GROWTH))
        observed = expected = variance = 0.0
        for key in touched:
            n_after = after_items[key]
            n_before = total_items[key] - n_after
            if n_before < window.CHANGE_MIN_ITEMS:
                continue
            share = (total_high[key] - after_high[key]) / n_before
            observed += after_high[key]
            expected += n_after * share
            # Binomial spread of the new counts plus the uncertainty of the old share.
            variance += n_after * share * (1 - share) * (1 + n_after / n_before)
        if variance > 0 and abs(observed - expected) / math.sqrt(variance) > window.CHANGE_Z:
            return index
    return 0


def _dense(keys: Sequence[int]) -> tuple[list[int], int]:
    """`keys` renumbered 0..k-1 (in order of first appearance), and k."""
    numbers = {key: number for number, key in enumerate(dict.fromkeys(keys))}
    return [numbers[key] for key in keys], len(numbers)


def _buckets(sizes: Sequence[float], ratio: float) -> list[int]:
    """`_bucket` of every size, in one pass."""
    log, width = math.log, math.log(ratio)
    return [int(log(size) / width) for size in sizes]


@lru_cache(maxsize=65536)
def _bucket(size: float, ratio: float) -> int:
    """Index of the geometric size bucket (`ratio` wide) that `size` falls in."""
    return int(math.log(size) / math.log(ratio))
