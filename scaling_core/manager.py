"""The unified `ScalingManager`: batch-size decisions and the predictions behind them.

The manager is handed the whole ordered history of a pipeline after every batch and answers
with a `ScalingDecision`. A decision is a pure function of the configuration and the
history's tail, so the same history always gives the same answer and the cost of a decision
does not grow with the history.

How a size is chosen, in order:

1. A batch that failed whole sets a failure ceiling at its size; the next size is the largest
   recent success below it (or half, when there is none). Later the gap between that success
   and the ceiling is bisected, at most `FAILURE_PROBES` failures a window: the cliff is found
   in a few steps instead of being crept up on one failure at a time.
2. A batch whose High share is under `low_confidence_threshold` halves the size at once.
3. Otherwise every limit is estimated from the evidence and the size moves toward the
   smallest of them:
   - time: batch seconds = fixed + per_item*n (+ quadratic*n^2 when that curvature is
     significant), least squares over recent batches with outliers dropped; the limit is the
     size whose predicted time is the threshold, and the throughput optimum sqrt(fixed/quadratic)
     when the cost is super-linear;
   - quality: High items are pooled over batches of neighbouring sizes; a size whose pooled
     upper Wilson bound is under the target is "bad", and so is every larger size (quality
     does not improve with size). The size moves to the largest size seen below the smallest
     bad one, bisecting the gap while it is wide;
   - failures: the ceiling of rule 1.
   Growth is `scaling_factor` per step while every limit is far, `NEAR_LIMIT_GROWTH` near one.
4. Evidence that recent batches contradict (a shift of quality or cost at the same size) cuts
   the window at the change, so old evidence is forgotten (drift).
5. When the recent sizes are too alike to determine the cost fit, every `DITHER_EVERY`-th
   decision tries a size `DITHER_DEPTH` smaller (never larger: above may be a limit).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from scaling_core._evidence import CostFit, QualityPool, fit_costs, wilson_bounds
from scaling_core.config import ScalingConfig
from scaling_core.results import BatchResult, BatchView, ScalingAction, ScalingDecision


class DecisionStore(Protocol):
    """What the manager needs of a store: the recent history and a place for decisions."""

    def recent_batches(self, limit: int) -> list[BatchResult]: ...

    def record_decision(self, old_size: int, decision: ScalingDecision) -> None: ...


class PerformanceSnapshot(BaseModel):
    """Recent performance of a pipeline, as `ProgressTracker.get_performance_metrics` gives it."""

    model_config = ConfigDict(extra="ignore")

    current_batch_size: int = Field(default=0, ge=0)
    high_confidence_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    average_processing_time: float = Field(default=0.0, ge=0.0)
    success_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    stability: float = Field(default=0.0, ge=0.0, le=1.0)
    batches: int = Field(default=0, ge=0)


@dataclass(slots=True)
class _Limit:
    """One bound on the next size and the evidence behind it."""

    name: str
    size: float
    reason: str


@dataclass(slots=True)
class _Evidence:
    """What the history's tail says; the inputs of a decision."""

    base: int
    fit: CostFit | None = None
    limits: list[_Limit] = field(default_factory=list)
    near_limit: bool = False
    quality_at_base: float | None = None
    failure_ceiling: float = math.inf
    metrics: dict[str, float] = field(default_factory=dict)


class ScalingManager:
    """Chooses each next batch size from the pipeline's batch history.

    Args:
        config: the limits to keep; `ScalingConfig()` when None.
        store: where decisions are persisted and, when `evaluate_scaling` is called
            without batches, where the history is read from.

    Example:
        >>> manager = ScalingManager(ScalingConfig(initial_batch_size=20))
        >>> history.append(run_batch(manager.get_current_batch_size()))
        >>> manager.apply_scaling_decision(manager.evaluate_scaling(history))
    """

    EVIDENCE_WINDOW = 200
    """Batches the quality evidence and the long cost fit read (a shift, see `CHANGE_Z`,
    forgets sooner); a super-linear cost's curvature needs the wide sizes of the ramp-up."""
    RECENT_COST_WINDOW = 80
    """Batches the time limit's cost fit reads."""
    LONG_COST_WINDOW = 150
    """Batches the throughput optimum's cost fit reads (the curvature needs a spread of sizes)."""
    COST_HALF_LIFE = 40.0
    """Batches after which a batch's weight in the time limit's fit has halved (drift)."""
    TIME_Z = 2.0
    """Standard errors of the fitted batch time kept under the time threshold. The size is
    chosen where the fit looks cheapest, so a 1-sigma bound would sit over the limit half the
    time the noise flatters it (the winner's curse); 2 sigma keeps it under."""
    DIRECT_FLOOR = 0.5
    """The fitted time limit is never put below this share of the proportional estimate."""
    FAR_OVER = 1.25
    """Two batches in a row this far over the time threshold mean the cost jumped."""
    FAR_OVER_ONCE = 1.8
    """One batch this far over the time threshold means the cost jumped."""
    CURVATURE_T = 2.0
    """t of the quadratic cost term (in the long fit) needed to place an interior optimum."""
    COST_AGREEMENT = 0.2
    """Relative gap at the current size beyond which the long cost fit is not trusted."""
    FAILURE_WINDOW = 400
    """Batches scanned for whole-batch failures (a cliff is remembered this long)."""
    FAILURE_PROBES = 2
    """Whole-batch failures in the window after which the cliff is no longer probed."""
    QUALITY_Z = 2.0
    """z of the upper Wilson bound that calls a size's quality bad."""
    SOFT_QUALITY_Z = 1.0
    """z of the weaker quality evidence, remembered for `SOFT_QUALITY_WINDOW` batches."""
    SOFT_QUALITY_WINDOW = 40
    LOW_CONFIDENCE_Z = 1.0
    """z of the upper bound of the last batch's High share for the hard cut."""
    NEIGHBOURHOOD = 1.10
    """Batches within this size ratio pool their quality evidence."""
    QUALITY_PROBE_STEP = 0.35
    """Where between the good size and the bad one a quality probe goes (below halfway: quality falls with size, so a probe near the good side is cheaper when it fails)."""
    SAME_SIZE = 1.03
    """Batches within this size ratio count as the same size."""
    BISECT_RESOLUTION = 1.08
    """A gap between a good size and a bad one narrower than this ratio is not probed."""
    NEAR_LIMIT_GROWTH = 1.15
    """Growth per step when a limit is within one `scaling_factor` step."""
    QUALITY_HEADROOM = 0.04
    """High share above the target under which quality counts as near its limit."""
    TIME_MARGIN = 0.97
    """Aim at this share of `processing_time_threshold`."""
    DEAD_BAND = 0.03
    """Relative moves smaller than this are not made (no jitter)."""
    DITHER_EVERY = 6
    DITHER_DEPTH = 0.08
    COST_DITHER_DEPTHS = (0.15, 0.3)
    FIT_SPREAD = 1.15
    """Max/min size ratio the cost fit needs among its batches."""
    CHANGE_BATCHES = 3
    """Recent batches tested against older ones for a shift (drift)."""
    CHANGE_Z = 4.0
    """z of a shift in quality at unchanged sizes that makes the older evidence be forgotten."""
    CHANGE_CHECKPOINT_GROWTH = 1.5
    """Splits are tried this much further back each time (geometric: cheap, and fine
    enough, as a shift found at one split stays visible from the next)."""
    CHANGE_MIN_ITEMS = 100
    CHANGE_MIN_BATCHES = 1
    """Older batches a size needs before a shift of its cost can be judged."""
    """Older items a size needs before a shift at that size can be judged."""
    DECISION_LOG = 1000
    """Decisions kept in memory for `get_scaling_summary`."""

    def __init__(self, config: ScalingConfig | None = None, store: DecisionStore | None = None) -> None:
        self.config = config if config is not None else ScalingConfig()
        self.store = store
        self._current_batch_size = self.config.initial_batch_size
        self._decisions: deque[ScalingDecision] = deque(maxlen=self.DECISION_LOG)
        self._last_history: tuple[list[BatchResult], list[BatchView]] = ([], [])
        self._changes = 0

    # -- the decision protocol ---------------------------------------------------------------

    def get_current_batch_size(self) -> int:
        """The size the next batch should have."""
        return self._current_batch_size

    def evaluate_scaling(self, batches: Sequence[BatchResult] | None = None) -> ScalingDecision:
        """Decide the next batch size from the ordered history (oldest first).

        With `batches=None` the recent history is read from the store. Never raises on a
        legal history: an empty one, zero-item batches, batches where every item failed and
        zero processing times all give a decision.
        """
        if batches is None:
            if self.store is None:
                raise ValueError("evaluate_scaling needs batches when the manager has no store")
            batches = self.store.recent_batches(self.FAILURE_WINDOW)
        history = list(batches[-self.FAILURE_WINDOW :])
        config = self.config
        base = config.clamp(history[-1].asked_size if history else self._current_batch_size)
        if not history:
            return self._decision(base, base, "no batches yet: keep the starting size", {})

        last = history[-1]
        views = self._views(history)
        evidence = self._gather(views, base)
        metrics = evidence.metrics

        if last.is_whole_failure:
            return self._after_failure(views, base, last, metrics)

        if last.total_items > 0:
            _, upper = wilson_bounds(last.high_count, last.total_items, self.LOW_CONFIDENCE_Z)
            if upper < config.low_confidence_threshold:
                return self._decision(
                    base,
                    min(base, config.clamp(base / 2)),
                    f"batch {last.batch_id}: High share {last.high_share:.2f} of {last.total_items} items "
                    f"is under the low-confidence threshold {config.low_confidence_threshold:.2f}: cut hard",
                    metrics,
                )

        if len(history) < config.min_batches_for_scaling:
            return self._decision(
                base,
                base,
                f"collecting evidence: {len(history)} of {config.min_batches_for_scaling} batches",
                metrics,
            )

        binding = min(evidence.limits, key=lambda limit: limit.size)
        target = config.clamp(min(binding.size, config.max_batch_size))
        # The dead band damps noisy cost estimates; quality and failure limits rest on
        # evidence that the current size itself is too large, so they always apply.
        hard = binding.name in ("quality", "failures")
        if target < base and (hard or target < base * (1 - self.DEAD_BAND)):
            return self._decision(base, target, binding.reason, metrics)
        if target > base * (1 + self.DEAD_BAND):
            recent = views[-config.min_batches_for_scaling :]
            if config.stability_required and any(view.failed for view in recent):
                return self._decision(
                    base, base, "holding: a batch failed whole within the last few batches", metrics
                )
            growth = self.NEAR_LIMIT_GROWTH if evidence.near_limit else config.scaling_factor
            step = config.clamp(min(target, base * growth))
            if step > base:
                pace = "near a limit, growing slowly" if evidence.near_limit else "far from every limit"
                return self._decision(base, step, f"{pace}: toward {binding.reason}", metrics)
        depth = self._dither_depth(views, binding)
        if depth and len(history) % self.DITHER_EVERY == 0:
            dithered = config.clamp(base * (1 - depth))
            if dithered < base:
                return self._decision(
                    base,
                    dithered,
                    f"at the best size ({binding.reason}); trying {dithered} once so the cost fit "
                    "stays determined",
                    metrics,
                )
        return self._decision(base, base, f"at the best size: {binding.reason}", metrics)

    def _views(self, history: list[BatchResult]) -> list[BatchView]:
        """The batches as `BatchView`s, reusing the previous call's when the history only grew.

        The protocol hands in the same (immutable) batch objects again, grown or slid by one
        batch; reading their numbers once keeps a decision cheap.
        """
        previous, previous_views = self._last_history
        views: list[BatchView] | None = None
        if previous and history:
            if len(history) == len(previous) + 1 and all(a is b for a, b in zip(history, previous)):
                views = [*previous_views, history[-1].view]
            elif len(history) == len(previous) and all(a is b for a, b in zip(history, previous[1:])):
                views = [*previous_views[1:], history[-1].view]
        if views is None:
            views = [batch.view for batch in history]
        self._last_history = (history, views)
        return views

    def apply_scaling_decision(self, decision: ScalingDecision) -> bool:
        """Adopt `decision`'s size (kept within [min, max]); True when the size changed.

        The decision is persisted when the manager has a store.
        """
        old_size = self._current_batch_size
        self._current_batch_size = self.config.clamp(decision.new_batch_size)
        self._decisions.append(decision)
        changed = self._current_batch_size != old_size
        self._changes += int(changed)
        if self.store is not None:
            self.store.record_decision(old_size, decision)
        return changed

    def get_scaling_summary(self) -> dict[str, Any]:
        """Current size, limits, and counts and the last of the decisions applied so far."""
        actions = Counter(decision.action.value for decision in self._decisions)
        last = self._decisions[-1] if self._decisions else None
        return {
            "current_batch_size": self._current_batch_size,
            "min_batch_size": self.config.min_batch_size,
            "max_batch_size": self.config.max_batch_size,
            "decisions": len(self._decisions),
            "size_changes": self._changes,
            "actions": {action.value: actions.get(action.value, 0) for action in ScalingAction},
            "last_decision": last.model_dump(mode="json") if last is not None else None,
            "recent_sizes": [decision.new_batch_size for decision in list(self._decisions)[-20:]],
        }

    # -- predictions ---------------------------------------------------------------------------

    def predict_optimal_batch_size(
        self,
        current_performance: PerformanceSnapshot | Mapping[str, Any],
        target_confidence_rate: float = 0.9,
        target_processing_time: float = 2.0,
    ) -> int:
        """A size expected to meet both targets, from one performance snapshot.

        Time is taken as proportional to size from the snapshot (a conservative reading when
        batches have a fixed cost); a High rate under the target shrinks the size by the
        shortfall, one above it leaves room to grow by at most `scaling_factor`.
        """
        snapshot = PerformanceSnapshot.model_validate(current_performance)
        size = snapshot.current_batch_size or self._current_batch_size
        if target_processing_time <= 0:
            raise ValueError(f"target_processing_time must be positive, got {target_processing_time}")
        if not 0 < target_confidence_rate <= 1:
            raise ValueError(f"target_confidence_rate must be in (0, 1], got {target_confidence_rate}")
        by_time = (
            size * target_processing_time / snapshot.average_processing_time
            if snapshot.average_processing_time > 0
            else size * self.config.scaling_factor
        )
        if snapshot.batches == 0:
            by_quality = float(size)
        elif snapshot.high_confidence_rate < target_confidence_rate:
            by_quality = size * snapshot.high_confidence_rate / target_confidence_rate
        else:
            by_quality = size * self.config.scaling_factor
        return self.config.clamp(min(by_time, by_quality, size * self.config.scaling_factor))

    def should_scale_now(
        self,
        performance_trend: Sequence[PerformanceSnapshot | Mapping[str, Any] | BatchResult],
        min_confidence_threshold: float = 0.8,
    ) -> tuple[bool, str]:
        """Whether the trend is clear enough to change the size now, and why.

        Too few points: no. The latest High rate under `min_confidence_threshold`: yes, at
        once. A trend whose High rate swings by more than 0.15: no, it is not stable yet.
        Otherwise yes.
        """
        rates = [_high_rate(point) for point in performance_trend]
        needed = self.config.min_batches_for_scaling
        if len(rates) < needed:
            return False, f"only {len(rates)} of {needed} observations"
        if rates[-1] < min_confidence_threshold:
            return True, f"High rate {rates[-1]:.2f} is under {min_confidence_threshold:.2f}: scale down now"
        window = rates[-needed:]
        swing = max(window) - min(window)
        if swing > 0.15:
            return False, f"High rate swings by {swing:.2f} over the last {needed} observations: wait"
        return True, f"stable High rate {sum(window) / len(window):.2f} over the last {needed} observations"

    def analyze_batch_size_efficiency(self, performance_data: Sequence[BatchResult]) -> dict[str, Any]:
        """Per size: batches, seconds per successful item, High share; and the best of them.

        `most_efficient_batch_size` is the size with the lowest seconds per successful item
        among those whose pooled High share meets `high_confidence_threshold` (None when none
        does); `cost_model` is the fitted fixed and per-item cost when the data determine it.
        """
        groups: dict[int, list[BatchResult]] = {}
        for batch in performance_data:
            if batch.total_items > 0:
                groups.setdefault(batch.asked_size, []).append(batch)
        by_size: dict[int, dict[str, float]] = {}
        for size, group in sorted(groups.items()):
            items = sum(batch.total_items for batch in group)
            successes = sum(batch.successful_items for batch in group)
            seconds = sum(batch.processing_time for batch in group)
            by_size[size] = {
                "batches": len(group),
                "items": items,
                "average_seconds": seconds / len(group),
                "seconds_per_successful_item": seconds / successes if successes else math.inf,
                "high_confidence_rate": sum(batch.high_count for batch in group) / items,
                "success_rate": successes / items,
                "whole_failures": sum(batch.is_whole_failure for batch in group),
            }
        eligible = {
            size: row
            for size, row in by_size.items()
            if row["high_confidence_rate"] >= self.config.high_confidence_threshold
            and row["average_seconds"] <= self.config.processing_time_threshold
            and row["whole_failures"] == 0
        }
        best = min(eligible, key=lambda s: eligible[s]["seconds_per_successful_item"]) if eligible else None
        fit = self._fit([batch for batch in performance_data if not batch.is_whole_failure])
        return {
            "by_size": by_size,
            "most_efficient_batch_size": best,
            "cost_model": (
                {"fixed_seconds": fit.fixed, "seconds_per_item": fit.per_item, "quadratic": fit.quadratic}
                if fit is not None
                else None
            ),
        }

    def predict_processing_time(self, batch_size: int, recent_performance: Sequence[BatchResult]) -> float:
        """Expected seconds for a batch of `batch_size` items.

        From the fitted cost model when the recent batches determine it, else by scaling the
        recent mean seconds per item; 0.0 when there is nothing to go on.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        usable = [b for b in recent_performance if b.total_items > 0 and not b.is_whole_failure]
        fit = self._fit(usable)
        if fit is not None:
            return max(fit.seconds(batch_size), 0.0)
        items = sum(batch.total_items for batch in usable)
        if items == 0:
            return 0.0
        return batch_size * sum(batch.processing_time for batch in usable) / items

    def get_comprehensive_scaling_recommendation(
        self,
        current_performance: PerformanceSnapshot | Mapping[str, Any],
        historical_data: Sequence[BatchResult],
    ) -> dict[str, Any]:
        """The decision on `historical_data` next to the predictions, and one combined answer.

        Returns `scaling_decision`, `prediction_analysis` (`optimal_batch_size`,
        `predicted_processing_time`, `efficiency_analysis`) and `combined_recommendation`
        (`recommended_action`, `recommended_batch_size`, `confidence_score`). The decision
        leads; `confidence_score` (0 to 1) grows with the evidence and with the agreement of
        the prediction's direction.
        """
        decision = self.evaluate_scaling(historical_data)
        optimal = self.predict_optimal_batch_size(
            current_performance,
            target_confidence_rate=self.config.high_confidence_threshold,
            target_processing_time=self.config.processing_time_threshold,
        )
        base = historical_data[-1].asked_size if historical_data else self._current_batch_size
        predicted_direction = (optimal > base) - (optimal < base)
        decided_direction = (decision.new_batch_size > base) - (decision.new_batch_size < base)
        evidence = min(1.0, len(historical_data) / max(self.config.min_batches_for_scaling * 3, 1))
        agreement = 1.0 if predicted_direction == decided_direction else 0.5
        return {
            "scaling_decision": decision.model_dump(mode="json"),
            "prediction_analysis": {
                "optimal_batch_size": optimal,
                "predicted_processing_time": self.predict_processing_time(
                    decision.new_batch_size, historical_data[-self.EVIDENCE_WINDOW :]
                ),
                "efficiency_analysis": self.analyze_batch_size_efficiency(historical_data[-self.EVIDENCE_WINDOW :]),
            },
            "combined_recommendation": {
                "recommended_action": decision.action.value,
                "recommended_batch_size": decision.new_batch_size,
                "confidence_score": round(evidence * agreement, 3),
                "reason": decision.reason,
            },
        }

    # -- evidence --------------------------------------------------------------------------------

    def _fit(self, batches: Sequence[BatchResult]) -> CostFit | None:
        usable = [b for b in batches if b.total_items > 0]
        return fit_costs(
            [b.total_items for b in usable],
            [b.processing_time for b in usable],
            min_spread=self.FIT_SPREAD,
        )

    def _gather(self, views: Sequence[BatchView], base: int) -> _Evidence:
        config = self.config
        evidence = _Evidence(base=base)
        window = [v for v in views[-self.EVIDENCE_WINDOW :] if v.items > 0]
        evidence.limits.append(_Limit("max", config.max_batch_size, f"the maximum size {config.max_batch_size}"))
        timings = [(float(v.items), v.seconds) for v in window if not v.failed and v.seconds > 0]
        cost_change = self._cost_change_point(timings)
        if cost_change:
            evidence.metrics["cost_change_batches_ago"] = float(len(timings) - cost_change)
        self._time_limits(evidence, timings[cost_change:], base)
        observations = [(float(v.asked), v.high, v.items) for v in window]
        change = self._quality_change_point(observations)
        if change:
            evidence.metrics["quality_change_batches_ago"] = float(len(observations) - change)
        self._quality_limit(evidence, observations[change:], base)
        self._failure_limit(evidence, views)

        growth_reach = base * config.scaling_factor
        evidence.near_limit = any(
            limit.name != "max" and limit.size < growth_reach * self.NEIGHBOURHOOD for limit in evidence.limits
        ) or (
            evidence.quality_at_base is not None
            and evidence.quality_at_base < config.high_confidence_threshold + self.QUALITY_HEADROOM
        )
        recent = window[-3:]
        items = sum(v.items for v in recent)
        evidence.metrics.update(
            {
                "batches_considered": float(len(window)),
                "current_batch_size": float(base),
                "recent_high_share": sum(v.high for v in recent) / items if items else 0.0,
                "recent_seconds": sum(v.seconds for v in recent) / max(len(recent), 1),
            }
        )
        return evidence

    def _cost_change_point(self, timings: Sequence[tuple[float, float]]) -> int:
        """Index from which the cost evidence is current (0 when the cost did not shift).

        Like `_quality_change_point`, on log seconds: each batch after a split is compared
        with the older batches of about its size (buckets `NEIGHBOURHOOD` wide: timing noise
        dwarfs the size effect within them), in units of the spread that batches of one size
        show; the most recent split with |z| > `CHANGE_Z` wins.
        """
        if len(timings) <= self.CHANGE_BATCHES:
            return 0
        ids, width = _dense([_bucket(n, self.NEIGHBOURHOOD) for n, _ in timings])
        logs = [math.log(t) for _, t in timings]
        sums, squares, counts = [0.0] * width, [0.0] * width, [0] * width
        for key, value in zip(ids, logs, strict=True):
            sums[key] += value
            squares[key] += value * value
            counts[key] += 1
        # Spread of log seconds within a size, pooled over sizes (at least 5%: no division
        # by a spread that a few identical timings make zero).
        spread_sum = spread_dof = 0.0
        for key in range(width):
            if counts[key] > 1:
                spread_sum += squares[key] - sums[key] ** 2 / counts[key]
                spread_dof += counts[key] - 1
        variance = max(spread_sum / spread_dof if spread_dof else 0.0, 0.05**2)
        after_sums, after_counts = [0.0] * width, [0] * width
        touched: list[int] = []
        checkpoint = self.CHANGE_BATCHES
        minimum = self.CHANGE_MIN_BATCHES
        for back in range(1, len(timings)):
            index = len(timings) - back
            key = ids[index]
            if not after_counts[key]:
                touched.append(key)
            after_sums[key] += logs[index]
            after_counts[key] += 1
            if back < checkpoint:
                continue
            checkpoint = max(checkpoint + 1, int(checkpoint * self.CHANGE_CHECKPOINT_GROWTH))
            difference = spread = 0.0
            for key in touched:
                n_after = after_counts[key]
                n_before = counts[key] - n_after
                if n_before < minimum:
                    continue
                difference += after_sums[key] - n_after * (sums[key] - after_sums[key]) / n_before
                spread += n_after * (1 + n_after / n_before)
            if spread > 0 and abs(difference) / math.sqrt(variance * spread) > self.CHANGE_Z:
                return index
        return 0

    def _quality_change_point(self, observations: Sequence[tuple[float, int, int]]) -> int:
        """Index from which the quality evidence is current (0 when nothing shifted).

        Each candidate split compares the batches after it with the batches before it at the
        same size (buckets `SAME_SIZE` wide): observed High counts against those the older
        share at that size predicts, summed into one z. The most recent split with
        |z| > `CHANGE_Z` wins, so a shift found once stays found while its evidence lasts.
        Splits are tried at geometric distances from the end, so the cost stays small.
        """
        if len(observations) <= self.CHANGE_BATCHES:
            return 0
        ids, width = _dense([_bucket(size, self.SAME_SIZE) for size, _, _ in observations])
        total_high, total_items = [0.0] * width, [0.0] * width
        for key, (_, high, items) in zip(ids, observations, strict=True):
            total_high[key] += high
            total_items[key] += items
        after_high, after_items = [0.0] * width, [0.0] * width
        touched: list[int] = []
        checkpoint = self.CHANGE_BATCHES
        minimum = self.CHANGE_MIN_ITEMS
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
            checkpoint = max(checkpoint + 1, int(checkpoint * self.CHANGE_CHECKPOINT_GROWTH))
            observed = expected = variance = 0.0
            for key in touched:
                n_after = after_items[key]
                n_before = total_items[key] - n_after
                if n_before < minimum:
                    continue
                share = (total_high[key] - after_high[key]) / n_before
                observed += after_high[key]
                expected += n_after * share
                # Binomial spread of the new counts plus the uncertainty of the old share.
                variance += n_after * share * (1 - share) * (1 + n_after / n_before)
            if variance > 0 and abs(observed - expected) / math.sqrt(variance) > self.CHANGE_Z:
                return index
        return 0

    def _time_limits(self, evidence: _Evidence, timings: Sequence[tuple[float, float]], base: int) -> None:
        """Limits from batch times: the time threshold and, for super-linear costs, the optimum.

        The time limit comes from a fit over the recent batches only (it follows a drifting
        cost), read at its upper bound (`TIME_Z` standard errors): the target is on expected
        batch time, and a noisy fit must not place the size over it. The throughput optimum
        needs curvature, which only the wide sizes of a longer history determine; that fit is
        used while it agrees with the recent one.
        """
        config = self.config
        budget = config.processing_time_threshold * self.TIME_MARGIN
        metrics = evidence.metrics
        recent = timings[-self.RECENT_COST_WINDOW :]
        fit = fit_costs(
            [n for n, _ in recent],
            [t for _, t in recent],
            min_spread=self.FIT_SPREAD,
            half_life=self.COST_HALF_LIFE,
            outlier_cutoff=None,
        )
        evidence.fit = fit
        last = [(n, t) for n, t in timings[-self.CHANGE_BATCHES :] if t > 0]
        per_item = sum(t for _, t in last) / sum(n for n, _ in last) if last else 0.0
        direct = budget / per_item if per_item > 0 else math.inf
        if fit is not None:
            within = fit.largest_size_within(budget, z=self.TIME_Z, ceiling=config.max_batch_size * 2.0)
            # Recent batches at the proportional size show what is possible: a fit that
            # places the limit far below it is bent by data of mixed regimes.
            within = max(within, self.DIRECT_FLOOR * direct)
            metrics.update(
                {
                    "fixed_seconds": fit.fixed,
                    "seconds_per_item": fit.per_item,
                    "quadratic_seconds": fit.quadratic,
                    "fit_points": float(fit.points),
                    "predicted_seconds_at_current": fit.seconds(base),
                    "size_within_time_limit": min(within, 1e9),
                }
            )
            evidence.limits.append(
                _Limit(
                    "time",
                    within,
                    f"the time limit: fitted {fit.fixed:.3f} s + {fit.per_item * 1000:.2f} ms/item"
                    + (f" + {fit.quadratic * 1e6:.3f} us/item^2" if fit.quadratic else "")
                    + f" reaches {config.processing_time_threshold:g} s at {within:.0f} items (upper bound)",
                )
            )
        self._throughput_limit(evidence, timings, fit, base)
        if last:
            # Seconds proportional to size over-estimate the growth of a batch with a fixed
            # cost: a safe bound while (or where) the fit is not determined. With a fit, it
            # only steps in when the last three batches broke the threshold, the last two
            # broke it by `FAR_OVER`, or the last by `FAR_OVER_ONCE` (the cost jumped; one
            # batch a little slow is noise, and a false alarm costs one smaller batch).
            observed = sum(t for _, t in last) / len(last)
            metrics["recent_seconds_per_item"] = per_item
            threshold = config.processing_time_threshold
            all_slow = len(last) == self.CHANGE_BATCHES and all(t > threshold for _, t in last)
            far_over = (len(last) >= 2 and all(t > self.FAR_OVER * threshold for _, t in last[-2:])) or (
                last[-1][1] > self.FAR_OVER_ONCE * threshold
            )
            if fit is None or all_slow or far_over:
                evidence.limits.append(
                    _Limit(
                        "time",
                        direct,
                        f"the time limit: recent batches took {observed:.2f} s "
                        f"({per_item * 1000:.2f} ms/item) against {config.processing_time_threshold:g} s",
                    )
                )

    def _throughput_limit(
        self, evidence: _Evidence, timings: Sequence[tuple[float, float]], recent: CostFit | None, base: int
    ) -> None:
        if len(timings) > self.RECENT_COST_WINDOW:
            timings = timings[-self.LONG_COST_WINDOW :]
            fit = fit_costs(
                [n for n, _ in timings],
                [t for _, t in timings],
                min_spread=self.FIT_SPREAD,
                guide=recent,
                curvature_t=self.CURVATURE_T,
            )
            if fit is not None and recent is not None:
                expected = recent.seconds(base)
                if expected > 0 and abs(fit.seconds(base) - expected) > self.COST_AGREEMENT * expected:
                    fit = recent  # the costs moved: only the recent batches speak for them
        else:
            fit = recent
        if fit is None:
            return
        optimum = fit.throughput_optimum()
        if not math.isfinite(optimum):
            return
        evidence.metrics["throughput_optimum"] = optimum
        largest_seen = max(n for n, _ in timings)
        # An optimum beyond every size seen is an extrapolation of a curvature fitted on
        # smaller sizes: approach it slowly instead of trusting it.
        reach = optimum if optimum <= largest_seen else max(optimum, largest_seen * self.NEAR_LIMIT_GROWTH)
        evidence.limits.append(
            _Limit("throughput", reach, f"the throughput optimum sqrt(fixed/quadratic) = {optimum:.0f} items")
        )

    def _quality_limit(
        self, evidence: _Evidence, observations: Sequence[tuple[float, int, int]], base: int
    ) -> None:
        """The quality limit from `(size, High, items)` observations of the current regime."""
        config = self.config
        target = config.high_confidence_threshold
        if not observations:
            return
        pool = QualityPool.of(observations)
        sizes = sorted({size for size, _, _ in observations})
        high, items = pool.between(base / self.NEIGHBOURHOOD, base * self.NEIGHBOURHOOD)
        if items:
            evidence.quality_at_base = high / items
            lower, upper = wilson_bounds(high, items, self.QUALITY_Z)
            evidence.metrics.update(
                {"high_share_near_current": high / items, "high_share_lower_bound": lower, "high_share_upper_bound": upper}
            )
        # Two tiers: strong evidence (z = QUALITY_Z) is remembered over the whole window;
        # weaker evidence (z = SOFT_QUALITY_Z) over the last SOFT_QUALITY_WINDOW batches only,
        # so that one unlucky batch cannot hold the size down for long.
        recent = observations[-self.SOFT_QUALITY_WINDOW :]
        candidates = [
            found
            for found in (
                self._quality_ceiling(pool, sizes, target, self.QUALITY_Z),
                self._quality_ceiling(
                    QualityPool.of(recent), sorted({o[0] for o in recent}), target, self.SOFT_QUALITY_Z
                ),
            )
            if found is not None
        ]
        if not candidates:
            return
        ceiling, ceiling_share, z = min(candidates)
        evidence.metrics["quality_ceiling"] = ceiling
        # The floor is the largest size below the ceiling whose own batches met the target:
        # a size merely not yet proven bad is no place to settle.
        floor = next(
            (
                size
                for size in reversed(sizes)
                if size < ceiling
                and _share_of(pool.between(size / self.SAME_SIZE, size * self.SAME_SIZE)) >= target
            ),
            None,
        )
        if floor is None:
            limit = ceiling / 2
            how = f"no smaller size met the target, halving to {limit:.0f}"
        else:
            if ceiling / floor > self.BISECT_RESOLUTION:
                limit = floor + (ceiling - floor) * self.QUALITY_PROBE_STEP
                how = f"probing between {floor:.0f} (good) and it"
            else:
                limit = floor
                how = f"staying at {floor:.0f}, the largest size below it"
        evidence.limits.append(
            _Limit(
                "quality",
                limit,
                f"the quality limit: High share {ceiling_share:.2f} near {ceiling:.0f} items is under "
                f"the target {target:.2f} (upper bound, z={z:g}); {how}",
            )
        )

    def _quality_ceiling(
        self, pool: QualityPool, sizes: Sequence[float], target: float, z: float
    ) -> tuple[float, float, float] | None:
        """(smallest size whose upper bound is under `target`, its High share, z), if any."""
        for size in sizes:
            high, items = pool.between(size / self.SAME_SIZE, size)
            if items == 0 or high >= target * items:
                continue  # its own share meets the target: its bound does too
            _, upper = wilson_bounds(high, items, z)
            if upper < target:
                return size, high / items, z
        return None

    def _failure_limit(self, evidence: _Evidence, views: Sequence[BatchView]) -> None:
        ceiling, failures, success_floor = self._failure_bounds(views)
        if not math.isfinite(ceiling):
            return
        evidence.failure_ceiling = ceiling
        evidence.metrics["failure_ceiling"] = ceiling
        if success_floor is None:
            limit, how = ceiling / 2, "no success below it, halving"
        elif failures < self.FAILURE_PROBES and ceiling / success_floor > self.NEIGHBOURHOOD:
            limit, how = (success_floor + ceiling) / 2, f"bisecting from {success_floor} (succeeded)"
        else:
            limit, how = success_floor, f"staying at {success_floor}, the largest size that succeeded"
        evidence.limits.append(
            _Limit(
                "failures",
                min(limit, ceiling - 1),
                f"the failure ceiling: {failures} whole-batch failure(s), the smallest at "
                f"{ceiling:.0f} items; {how}",
            )
        )

    def _failure_bounds(self, views: Sequence[BatchView]) -> tuple[float, int, int | None]:
        """(smallest failing size, failures counted, largest success below it).

        A failure counts unless a later batch of at least its size succeeded (then it was
        transient, not a size the processor cannot take).
        """
        ceiling = math.inf
        failures = 0
        largest_success_after = 0
        for view in reversed(views):
            if view.failed:
                if view.asked > largest_success_after:
                    failures += 1
                    ceiling = min(ceiling, view.asked)
            elif view.items > largest_success_after:
                largest_success_after = view.items
        if not math.isfinite(ceiling):
            return ceiling, 0, None
        below = [v.items for v in views if not v.failed and 0 < v.items < ceiling]
        return ceiling, failures, max(below) if below else None

    def _after_failure(
        self, views: Sequence[BatchView], base: int, last: BatchResult, metrics: dict[str, float]
    ) -> ScalingDecision:
        ceiling, failures, floor = self._failure_bounds(views)
        failed_size = last.asked_size
        if floor is not None and floor < failed_size:
            new = floor
            how = f"back to {floor}, the largest recent size that succeeded"
        else:
            new = failed_size / 2
            how = "no smaller success on record: halving"
        new_size = min(base, self.config.clamp(new))
        if new_size >= base and base > self.config.min_batch_size:
            new_size = self.config.clamp(base - 1)
        detail = f" ({last.error})" if last.error else ""
        metrics = {**metrics, "failure_ceiling": float(min(ceiling, failed_size)), "whole_failures": float(failures)}
        return self._decision(
            base,
            new_size,
            f"batch {last.batch_id} of {failed_size} items failed whole{detail}; {how}",
            metrics,
        )

    def _dither_depth(self, views: Sequence[BatchView], binding: _Limit) -> float:
        """How much smaller the occasional probe below the current size is (0: no probe).

        Where cost sets the size (time limit, throughput optimum, maximum), the curvature
        that places an interior optimum is only seen across a spread of sizes, so probes go
        `COST_DITHER_DEPTHS` below in turn. Elsewhere a shallow probe keeps the fit
        determined when the recent sizes are too alike.
        """
        if binding.name in ("time", "throughput", "max"):
            depths = self.COST_DITHER_DEPTHS
            return depths[(len(views) // self.DITHER_EVERY) % len(depths)]
        sizes = [v.items for v in views[-self.RECENT_COST_WINDOW :] if v.items > 0 and not v.failed]
        if len(sizes) >= 2 and max(sizes) < self.FIT_SPREAD * min(sizes):
            return self.DITHER_DEPTH
        return 0.0

    def _decision(self, base: int, new_size: int, reason: str, metrics: dict[str, float]) -> ScalingDecision:
        new_size = self.config.clamp(new_size)
        action = (
            ScalingAction.INCREASE
            if new_size > base
            else ScalingAction.DECREASE
            if new_size < base
            else ScalingAction.MAINTAIN
        )
        finite = {key: float(value) for key, value in metrics.items() if math.isfinite(value)}
        return ScalingDecision(
            action=action,
            new_batch_size=new_size,
            reason=reason,
            confidence_threshold=self.config.high_confidence_threshold,
            performance_metrics=finite,
        )


def _high_rate(point: PerformanceSnapshot | Mapping[str, Any] | BatchResult) -> float:
    if isinstance(point, BatchResult):
        return point.high_share
    return PerformanceSnapshot.model_validate(point).high_confidence_rate


def _dense(keys: Sequence[int]) -> tuple[list[int], int]:
    """`keys` renumbered 0..k-1 (in order of first appearance), and k."""
    numbers = {key: number for number, key in enumerate(dict.fromkeys(keys))}
    return [numbers[key] for key in keys], len(numbers)


@lru_cache(maxsize=65536)
def _bucket(size: float, ratio: float) -> int:
    """Index of the geometric size bucket (`ratio` wide) that `size` falls in."""
    return int(math.log(size) / math.log(ratio))


def _two_proportion_z(high: int, items: int, others: Sequence[BatchResult]) -> float:
    """z of (High share of `high/items`) minus (pooled High share of `others`); 0 without data."""
    other_items = sum(b.total_items for b in others)
    if items == 0 or other_items == 0:
        return 0.0
    other_high = sum(b.high_count for b in others)
    pooled = (high + other_high) / (items + other_items)
    spread = math.sqrt(max(pooled * (1 - pooled), 1e-9) * (1 / items + 1 / other_items))
    return (high / items - other_high / other_items) / spread


def _share_of(counts: tuple[float, float]) -> float:
    high, items = counts
    return high / items if items else 0.0


def _pooled_high_share(batches: Sequence[BatchResult]) -> float:
    items = sum(b.total_items for b in batches)
    return sum(b.high_count for b in batches) / items if items else 0.0


def _pooled_success_rate(batches: Sequence[BatchResult]) -> float:
    items = sum(b.total_items for b in batches)
    return sum(b.successful_items for b in batches) / items if items else 0.0
