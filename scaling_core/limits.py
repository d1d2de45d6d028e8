"""The limits on the next batch size, one rule each.

Every limit reads an `EvidenceWindow` and answers `estimate(window) -> Limit | None`: a size
it allows and the reason, or None when its evidence says nothing. The manager moves toward
the smallest. A limit may also add the numbers behind it to `window.metrics`, so that the
decision's reason can be checked.

A limit that no size can meet (quality under the target even at the smallest size, a fixed
cost over the time limit) answers `Limit(size=inf, unmet=True)`: the manager does not shrink
for a constraint that size does not move, and says so.

`QualityLimit`, with its tentative ceiling and its trend, has a module of its own
(`scaling_core.quality`); `Limit` is a domain type (`scaling_core.results`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from scaling_core._evidence import fit_costs
from scaling_core.failures import Failure, FailureKind
from scaling_core.quality import QualityLimit
from scaling_core.results import Limit
from scaling_core.window import EvidenceWindow


class SizeLimit(Protocol):
    """A rule that bounds the next size from the evidence window."""

    def estimate(self, window: EvidenceWindow) -> Limit | None: ...


class MaxSize:
    """The configured `max_batch_size`."""

    def estimate(self, window: EvidenceWindow) -> Limit:
        size = window.config.max_batch_size
        return Limit("max", size, f"the maximum size {size}")


class TimeLimit:
    """The largest size whose expected batch time stays under `processing_time_threshold`.

    From the recent cost fit, seconds(n) = fixed + per_item*n (+ quadratic*n^2), read at its
    upper bound: the largest n with seconds(n) + TIME_Z*se(n) <= TIME_MARGIN * threshold.
    Recent batches at the proportional size, n * threshold / seconds, show what is possible;
    that estimate alone is used while the fit is undetermined, and it takes over at once when
    the newest batch is far over the threshold or the last two are over it (in units of the
    timing noise), so one batch far over the limit shrinks the size at once.
    """

    TIME_Z = 2.0
    """Standard errors of the fitted batch time kept under the threshold. The size is chosen
    where the fit looks cheapest, so a 1-sigma bound would sit over the limit half the time
    the noise flatters it (the winner's curse); 2 sigma keeps it under."""
    TIME_MARGIN = 0.97
    """Aim at this share of `processing_time_threshold` (rounding and drift between fits)."""
    DIRECT_FLOOR = 0.5
    """The fitted limit is never put below this share of the proportional estimate: a fit
    that places it far below what recent batches did is bent by data of mixed regimes."""
    FAR_OVER_ONCE_Z = 2.0
    """Noise spreads over the threshold at which one batch shrinks the size at once (about 2%
    of batches at a size whose expected time is the threshold; a false alarm costs one
    smaller batch)."""
    FAR_OVER_TWICE_Z = 1.0
    """Noise spreads over the threshold at which two batches in a row shrink the size."""
    RECENT = 3
    """Batches the proportional estimate reads."""

    def estimate(self, window: EvidenceWindow) -> Limit | None:
        config = window.config
        threshold = config.processing_time_threshold
        budget = threshold * self.TIME_MARGIN
        metrics = window.metrics
        last = window.timings[-self.RECENT :]
        if not last:
            return None
        once = threshold * math.exp(self.FAR_OVER_ONCE_Z * window.noise)
        twice = threshold * math.exp(self.FAR_OVER_TWICE_Z * window.noise)
        newest_far_over = last[-1][1] > once
        # The newest batch alone when it is far over: the older ones are of the old cost.
        basis = last[-1:] if newest_far_over else last
        per_item = sum(t for _, t in basis) / sum(n for n, _ in basis)
        # Upper bound of the per-item cost from len(basis) batches of relative noise `noise`.
        cautious = per_item * math.exp(self.TIME_Z * window.noise / math.sqrt(len(basis)))
        direct = budget / cautious if per_item > 0 else math.inf
        metrics["recent_seconds_per_item"] = per_item
        fit = window.fit
        # No size meets the limit when even the smallest batch surely takes longer: the fit's
        # lower bound there (a fixed cost alone over the limit). Not the proportional estimate,
        # which assumes no fixed cost and grows with the size the batches ran at.
        if fit is not None and fit.seconds_upper(config.min_batch_size, -self.TIME_Z) > threshold:
            metrics["time_unmet"] = 1.0
            return Limit(
                "time",
                math.inf,
                f"no size meets the time limit: the fitted fixed cost {fit.fixed:.2f} s alone is over "
                f"{threshold:g} s; choosing by throughput",
                unmet=True,
            )
        slow = (
            newest_far_over
            or (len(last) >= 2 and all(t > twice for _, t in last[-2:]))
            or (len(last) == self.RECENT and all(t > threshold for _, t in last))
        )
        if fit is None or slow:
            observed = sum(t for _, t in basis) / len(basis)
            return Limit(
                "time",
                direct,
                f"the time limit: recent batches took {observed:.2f} s ({per_item * 1000:.2f} ms/item) "
                f"against {threshold:g} s",
                hard=slow,
            )
        within = fit.largest_size_within(budget, z=self.TIME_Z, ceiling=config.max_batch_size * 2.0)
        within = max(within, self.DIRECT_FLOOR * direct)
        metrics.update(
            {
                "fixed_seconds": fit.fixed,
                "seconds_per_item": fit.per_item,
                "quadratic_seconds": fit.quadratic,
                "fit_points": float(fit.points),
                "predicted_seconds_at_current": fit.seconds(window.base),
                "size_within_time_limit": min(within, 1e9),
            }
        )
        quadratic = f" + {fit.quadratic * 1e6:.3f} us/item^2" if fit.quadratic else ""
        return Limit(
            "time",
            within,
            f"the time limit: fitted {fit.fixed:.3f} s + {fit.per_item * 1000:.2f} ms/item{quadratic} "
            f"reaches {threshold:g} s at {within:.0f} items (upper bound)",
        )


    def size_within(self, window: EvidenceWindow) -> float:
        """The size the cost fit puts within the time limit (upper bound); 0.0 when the fit
        does not set the limit (no fit, recent batches over the threshold, or no size meets it)."""
        limit = self.estimate(window)
        fitted = window.fit is not None and limit is not None and not limit.hard and not limit.unmet
        return limit.size if fitted and limit is not None else 0.0


class ThroughputOptimum:
    """The size with the lowest seconds per item when the cost is super-linear.

    d/dn (fixed/n + per_item + quadratic*n) = 0 gives n = sqrt(fixed/quadratic). The curvature
    needs a spread of sizes, so the fit reads a longer stretch than the time limit's, and a
    quadratic term is kept only at t > CURVATURE_T; while the long fit disagrees with the
    recent one at the current size, the recent one speaks for the costs.
    """

    LONG = 150
    """Batches the long cost fit reads."""
    CURVATURE_T = 2.0
    """t of the quadratic term (in the long fit) needed to place an interior optimum. A
    decision is made after every batch, so a 2.3% one-sided test alone would find curvature
    in a linear cost now and then: the recent fit (`EvidenceWindow.TIME_CURVATURE_T`) must
    also have kept a quadratic term, on its own batches."""
    COST_AGREEMENT = 0.2
    """Relative gap at the current size beyond which the long fit is not trusted."""
    APPROACH = 1.15
    """Growth per step toward an optimum beyond every size seen (an extrapolation)."""

    def estimate(self, window: EvidenceWindow) -> Limit | None:
        timings = window.timings
        recent = window.fit
        # Two reads of the curvature must agree (see CURVATURE_T): without the recent one's,
        # the long fit could not place an optimum, and is not made.
        if recent is None or recent.quadratic <= 0:
            return None
        if len(timings) > EvidenceWindow.RECENT_COST:
            timings = timings[-self.LONG :]
            fit = fit_costs(
                window.sizes[-self.LONG :],
                window.seconds[-self.LONG :],
                min_spread=EvidenceWindow.FIT_SPREAD,
                guide=recent,
                curvature_t=self.CURVATURE_T,
            )
            expected = recent.seconds(window.base)
            if fit is None or (expected > 0 and abs(fit.seconds(window.base) - expected) > self.COST_AGREEMENT * expected):
                fit = recent  # the costs moved: only the recent batches speak for them
        else:
            fit = recent
        optimum = fit.throughput_optimum()
        if not math.isfinite(optimum) or fit.curvature_t < self.CURVATURE_T:
            return None
        window.metrics["throughput_optimum"] = optimum
        largest_seen = max(timings)[0]  # (items, seconds) pairs: the largest item count
        # An optimum beyond every size seen is an extrapolation of a curvature fitted on
        # smaller sizes: approach it slowly instead of trusting it.
        reach = optimum if optimum <= largest_seen else max(optimum, largest_seen * self.APPROACH)
        return Limit("throughput", reach, f"the throughput optimum sqrt(fixed/quadratic) = {optimum:.0f} items")


class FailureCeiling:
    """The largest size under the smallest size that failed whole for its size.

    Only size failures count (see `scaling_core.failures`). The size goes back to the largest
    size that succeeded under the ceiling and, while fewer than `PROBES` failures stand behind
    it, approaches the ceiling from there in `APPROACH` steps: each step that succeeds is
    cheap, and only the last one fails (bisection would fail about every other probe).

    A ceiling expires: its newest failure is forgotten after M * 2^(k-1) batches, k the
    failures behind it and M the batches whose lost throughput pays for a test (`_memory`);
    where transient failures are on record, a run of failures in a row may be one flaky
    episode (an outage), and counts once,
    and the size may grow back to test it. A ceiling that lifted (a fixed processor, a bigger
    payload limit, a failure that was transient after all) is found again; one that holds
    costs one failure per test, at doubling intervals.
    """

    PROBES = 3
    """Size failures (since the ceiling last moved) after which it is not approached any more."""
    APPROACH = 1.15
    """Growth per step toward the ceiling."""
    MEMORY = 100
    """Batches a ceiling of one failure is remembered while no cost fit says what it costs
    (re-testing it then costs at most one failed batch in a hundred); doubling with each
    failure keeps the failures logarithmic in the length of the run."""
    TEST_COST = 8.0
    """What a test of the ceiling costs, in batch times at the ceiling: the failed batch and
    the retry of its items, doubled for what a failure costs beyond time (an alert, load
    upstream), and doubled again because the gain above the ceiling is an extrapolation of
    the cost fit."""

    def __init__(self, time_limit: TimeLimit | None = None) -> None:
        self.time_limit = time_limit if time_limit is not None else TimeLimit()

    def estimate(self, window: EvidenceWindow) -> Limit | None:
        failures = window.failures.size_failures()
        if not failures:
            return None
        ceiling = min(f.size for f in failures)
        # Every current size failure stands behind the ceiling: a larger size that failed
        # says as much about it as the ceiling's own failure (sizes above a cliff fail).
        newest = max(f.index for f in failures)
        age = len(window.views) - 1 - newest
        floor = window.largest_success_below(ceiling)
        memory = self._memory(window, ceiling, floor, newest) * 2 ** (self._tests(window, failures) - 1)
        window.metrics["failure_ceiling"] = float(ceiling)
        window.metrics["failure_ceiling_memory"] = min(memory, 1e9)
        if age > memory:
            window.metrics["failure_ceiling_expired"] = float(ceiling)
            return None
        if floor is None:
            limit, how = ceiling / 2, "no success below it, halving"
        elif len(failures) == 1 and ceiling / floor <= self.APPROACH * EvidenceWindow.SAME_SIZE:
            # One failure is not yet a ceiling (a flaky call looks the same): try it again.
            limit, how = ceiling, f"trying it once more from {floor} (one failure is no proof)"
        elif len(failures) < self.PROBES and ceiling / floor > self.APPROACH * EvidenceWindow.SAME_SIZE:
            # Beyond one step and rounding: a closer ceiling would be landed on by the step.
            limit = min(floor * self.APPROACH, ceiling - 1)
            how = f"approaching it from {floor} (succeeded)"
        else:
            limit, how = floor, f"staying at {floor}, the largest size that succeeded"
        transient = window.failures.count(FailureKind.TRANSIENT)
        noted = f"; {transient} other failure(s) were transient" if transient else ""
        return Limit(
            "failures",
            limit,
            f"the failure ceiling: {len(failures)} whole-batch failure(s) at {ceiling} items or more, "
            f"the newest {age} batch(es) ago; {how}{noted}",
            hard=True,
        )

    @staticmethod
    def _tests(window: EvidenceWindow, failures: Sequence[Failure]) -> int:
        """How many tests of the ceiling `failures` (oldest first) are: each failure, or, with
        transient failures on record, each run of failures in a row."""
        if not window.failures.transient_rate:
            return len(failures)
        return len({failure.run for failure in failures})

    def _memory(self, window: EvidenceWindow, ceiling: int, floor: int | None, newest: int) -> float:
        """Batches after which a ceiling of one failure is tested again: when the time lost
        under it has paid for the test.

        Staying at the floor f instead of where the size would go, n (one step over the
        ceiling, APPROACH * c, or the time limit when it is further), loses
        f * (seconds(f)/f - seconds(n)/n) seconds a batch (from the cost fit); testing costs a
        failed batch and the retry of its items, TEST_COST * seconds(c). Without a fit, MEMORY.

        The cost is read from the `EvidenceWindow.RECENT_COST` batches before the ceiling's
        newest failure (the view at `newest`), whose sizes were not held under it: held there, the sizes soon
        become too alike to show a fixed cost, and the memory would follow their noise. When
        those do not show one either, the recent fit is read.
        """
        before = [
            v
            for v in window.views[max(newest - EvidenceWindow.RECENT_COST, 0) : newest]
            if not v.failed and v.seconds > 0 and v.items > 0
        ]
        earlier = fit_costs(
            [float(v.items) for v in before], [v.seconds for v in before], min_spread=EvidenceWindow.FIT_SPREAD
        )
        # Those batches may be alike in size too: then the recent fit, if it measured a fixed cost.
        fit = earlier if earlier is not None and earlier.fixed > 0 else window.fit or earlier
        if fit is None or floor is None:
            return float(self.MEMORY)
        # Where the size would go without the ceiling: a step over it, or the time limit
        # when that is further.
        reach = min(self.time_limit.size_within(window), float(window.config.max_batch_size))
        step = max(ceiling * self.APPROACH, reach)
        loss = floor * (fit.seconds(floor) / floor - fit.seconds(step) / step)
        if loss <= 0:
            return math.inf  # nothing to gain above it (a larger batch is no cheaper per item)
        return self.TEST_COST * fit.seconds(ceiling) / loss


_TIME_LIMIT = TimeLimit()
LIMITS: tuple[SizeLimit, ...] = (
    MaxSize(),
    _TIME_LIMIT,
    ThroughputOptimum(),
    QualityLimit(),
    FailureCeiling(_TIME_LIMIT),
)
"""The limits every decision asks, in the order their reasons are read."""
