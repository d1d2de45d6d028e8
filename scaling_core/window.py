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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from scaling_core._evidence import CostFit, fit_costs, robust_spread
from scaling_core.config import ScalingConfig
from scaling_core.failures import FailureClassifier, FailureReport
from scaling_core.results import BatchView
from scaling_core.shifts import cost_change_point, pooled_change_point, quality_change_point

Timing = tuple[float, float]
"""(items, seconds) of one batch that did not fail whole."""
Observation = tuple[float, int, int]
"""(asked size, High items, items) of one batch that did not fail whole."""


class ViewNumbers(NamedTuple):
    """What the shift tests read of one batch, computed once per batch (`EvidenceWindow.numbers`)."""

    log_seconds: float
    """log of its seconds (0.0 when it took none: such a batch is no timing)."""
    cost_bucket: int
    """Its `EvidenceWindow.NEIGHBOURHOOD` size bucket, by items (the cost shift tests')."""
    quality_bucket: int
    """Its `EvidenceWindow.SAME_SIZE` size bucket, by asked size (the quality shift test's)."""


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
        numbers: Sequence[ViewNumbers] | None = None,
    ) -> EvidenceWindow:
        """Build the window of `views` (oldest first), cut at the changes they show.

        `shift_memo`, kept by the caller between calls on a growing history (the same view
        objects, one more each time), remembers the final verdicts of the cost shift test
        (`cost_change_point`); `numbers` (`EvidenceWindow.numbers` of each view, aligned with
        `views`) saves computing them. The window is the same with them or without.
        """
        if numbers is None:
            numbers = [cls.numbers(view) for view in views[-cls.EVIDENCE :]]
        views = views[-cls.HISTORY :]
        metrics: dict[str, float] = {"current_batch_size": float(base)}
        failures = FailureClassifier(config.min_batch_size).classify(views)
        evidence = [
            (v, number)
            for v, number in zip(views[-cls.EVIDENCE :], numbers[-cls.EVIDENCE :], strict=True)
            if v.items > 0 and not v.failed
        ]
        recent = [v for v, _ in evidence]

        timed = [(v, number) for v, number in evidence if v.seconds > 0]
        timings = [(float(v.items), v.seconds) for v, _ in timed]
        logs = [number.log_seconds for _, number in timed]
        ids = [number.cost_bucket for _, number in timed]
        keys = [v for v, _ in timed]
        # The shift test reads its splits and the reference before the oldest.
        skipped = max(len(timings) - cls.CHANGE_SCAN - cls.CHANGE_REFERENCE, 0)
        found = cost_change_point(
            timings[skipped:], cls, keys=keys[skipped:], memo=shift_memo, logs=logs[skipped:], ids=ids[skipped:]
        )
        change = skipped + found if found else 0
        # The pooled test too (a drift at shared sizes): the more recent cut wins.
        change = max(change, pooled_change_point(timings, cls, newer_than=change, logs=logs, ids=ids))
        fit, noise = cls._fit(timings[change:])
        shock = cls._shock(timings[change:], fit, noise)
        if shock:
            change += shock
            fit, noise = cls._fit(timings[change:])
        if change:
            metrics["cost_change_batches_ago"] = float(len(timings) - change)

        quality = [(float(v.asked), v.high, v.items) for v in recent]
        quality_change = quality_change_point(quality, cls, ids=[number.quality_bucket for _, number in evidence])
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
    def numbers(cls, view: BatchView) -> ViewNumbers:
        """The numbers the shift tests read of `view` (the same formulas as theirs)."""
        return ViewNumbers(
            log_seconds=math.log(view.seconds) if view.seconds > 0 else 0.0,
            cost_bucket=int(math.log(view.items) / math.log(cls.NEIGHBOURHOOD)) if view.items > 0 else 0,
            quality_bucket=int(math.log(view.asked) / math.log(cls.SAME_SIZE)) if view.asked > 0 else 0,
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
