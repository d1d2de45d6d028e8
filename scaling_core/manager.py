"""The unified `ScalingManager`: batch-size decisions and the predictions behind them.

The manager is handed the ordered history of a pipeline after every batch and answers with
a `ScalingDecision`. A decision is a pure function of the configuration, the history's tail
(and the items left, when told), so the same history always gives the same answer and the
cost of a decision does not grow with the history.

A decision is made of small parts (see `docs/manager.md` for the diagram and the formulas):

1. `EvidenceWindow` (`scaling_core.window`) decides which evidence is still current: the
   cost and quality evidence is cut where it shifted, and whole-batch failures are
   classified as size, transient or deterministic (`scaling_core.failures`).
2. A batch that failed whole is answered first (`_after_failure`): a deterministic streak
   keeps the size it started at (never learned as a size); a single failure at a size that
   has succeeded, or a streak there that the window's rate of transient failures makes
   likely, is taken as transient (same size again); otherwise the size steps back to the
   largest success below, or halves in a streak.
3. A batch whose High share is surely under `low_confidence_threshold` halves the size,
   unless no size meets the quality target.
4. Otherwise every limit of `scaling_core.limits` estimates the size it allows (maximum,
   time, throughput optimum, quality, failure ceiling) and `_combine` moves toward the
   smallest: down at once when the evidence is about the current size, through a dead band
   when it is a cost estimate; up by `scaling_factor` (squared while a determined cost fit
   shows every limit far away, 1.15 near one; straight back to a size that ran within every
   limit lately); and, at rest where cost sets the size, a probe `PROBE_DEPTHS` smaller
   every `PROBE_EVERY` batches keeps the cost curve measured, unless too few items remain
   to repay it. These growth and probe rules are small functions in `scaling_core.growth`.

The prediction methods (`predict_optimal_batch_size` and the others) are answered by
`scaling_core.predictions`; they are not part of the decision.
"""

from __future__ import annotations

import math
import operator
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any, Protocol

from scaling_core import growth, predictions
from scaling_core._evidence import wilson_bounds
from scaling_core.config import ScalingConfig
from scaling_core.failures import FailureKind
from scaling_core.limits import LIMITS, SizeLimit, TimeLimit
from scaling_core.predictions import PerformanceSnapshot
from scaling_core.rates import RatePacer
from scaling_core.results import BatchResult, BatchView, Limit, ScalingAction, ScalingDecision
from scaling_core.shifts import PooledMemo, QualityMemo, ShiftMemo, StepMemo
from scaling_core.window import EvidenceColumns, EvidenceWindow, ViewNumbers


class DecisionStore(Protocol):
    """What the manager needs of a store: the recent history and a place for decisions."""

    def recent_batches(self, limit: int) -> list[BatchResult]: ...

    def record_decision(self, old_size: int, decision: ScalingDecision) -> None: ...


class ScalingManager:
    """Chooses each next batch size from the pipeline's batch history.

    Args:
        config: the limits to keep; `ScalingConfig()` when None.
        store: where decisions are persisted and, when `evaluate_scaling` is called
            without batches, where the history is read from.
        limits: the rules that bound the size (`scaling_core.limits.LIMITS` by default).
        batch_size: the size the pipeline is at now (a manager made between two stages);
            `config.initial_batch_size` when None.

    Example:
        >>> manager = ScalingManager(ScalingConfig(initial_batch_size=20))
        >>> history.append(run_batch(manager.get_current_batch_size()))
        >>> manager.apply_scaling_decision(manager.evaluate_scaling(history))
    """

    HISTORY = EvidenceWindow.HISTORY
    """Batches a decision reads (the store is asked for this many)."""
    KNOWN_GOOD = 2
    """Successes at a size (since the ceiling last moved) after which one failure there is
    taken as transient and the size kept: a ceiling that moved below a size that worked is
    rarer than a flaky call, and a second failure in a row says otherwise."""
    LOW_CONFIDENCE_Z = 1.0
    """z of the upper bound of the last batch's High share for the hard cut."""
    NEIGHBOURHOOD = 1.10
    """A limit within one growth step times this is near."""
    NEAR_LIMIT_GROWTH = 1.15
    """Growth per step when a limit is within one `scaling_factor` step."""
    FAST_GROWTH_SHARE = 0.5
    """Growth is `scaling_factor` squared only while the cost fit puts the bigger step under
    this share of the time threshold: a cost that curves up where no batch has been yet would
    have to double the prediction to break the limit."""
    DEAD_BAND = 0.03
    """Relative moves smaller than this are not made when a cost estimate asks (no jitter)."""
    PROBE_EVERY = 6
    """Batches at rest between two probes below the size."""
    PROBE_DEPTHS = (0.15, 0.3)
    """How much smaller the probes go, in turn, where cost sets the size: the curvature that
    places an interior optimum only shows across a spread of sizes."""
    SPREAD_PROBE_DEPTH = 0.14
    """Probe depth elsewhere, only while the recent sizes are too alike to fit a cost: the
    probe must itself make the spread the cost fit needs (1 - 1/`EvidenceWindow.FIT_SPREAD`
    = 0.13, and a little for rounding), or the fit stays undetermined at a size that another
    limit holds (a failure ceiling then never learns what staying under it costs)."""
    KNOWN_GROUND = 12
    """Batches back (two probe cycles) in which a size that ran well counts as known ground."""
    PROBE_HORIZON = 20
    """A probe informs the batches after it: with fewer than this many batches of items left
    it cannot repay its cost, and none is made."""
    DECISION_LOG = 1000
    """Decisions kept in memory for `get_scaling_summary`."""

    def __init__(
        self,
        config: ScalingConfig | None = None,
        store: DecisionStore | None = None,
        *,
        limits: Sequence[SizeLimit] = LIMITS,
        batch_size: int | None = None,
    ) -> None:
        self.config = config if config is not None else ScalingConfig()
        self.store = store
        self.limits = tuple(limits)
        start = self.config.initial_batch_size if batch_size is None else batch_size
        self._current_batch_size = self.config.clamp(start)
        self._current_max_weight: float | None = None
        self._decisions: deque[ScalingDecision] = deque(maxlen=self.DECISION_LOG)
        self._last_history: tuple[list[BatchResult], list[BatchView], list[ViewNumbers]] = ([], [], [])
        self._shift_memo = ShiftMemo()
        """Final verdicts of the cost shift test while the history only grows (`_views`)."""
        self._step_memo = StepMemo()
        """The step test's reference fit and verdict of each recent batch (`shifts.step_change_point`), likewise."""
        self._quality_memo = QualityMemo()
        """The quality shift test's sums per split, carried from call to call (`shifts.QualityMemo`)."""
        self._pooled_memo = PooledMemo()
        """The pooled shift test's, likewise (`shifts.PooledMemo`)."""
        self._columns = EvidenceColumns()
        """The window's columns of the last decision, likewise (`window.EvidenceColumns`)."""
        self._refused_batches = 0
        """Batches of the history `_views` last read that met a rate limit (HTTP 429)."""
        self._changes = 0
        self.pacer = RatePacer(self.config.rate_limit_period_seconds)
        """Learns a rate limit from batches that met a 429 and paces the next batch under it."""

    # -- the decision protocol ---------------------------------------------------------------

    def get_current_batch_size(self) -> int:
        """The size the next batch should have."""
        return self._current_batch_size

    def get_current_batch_weight(self) -> float | None:
        """The most summed item weight the next batch may take (`ScalingDecision.max_weight`
        of the last decision applied), or None when the time limit puts no bound on it."""
        return self._current_max_weight

    def evaluate_scaling(
        self, batches: Sequence[BatchResult] | None = None, *, remaining_items: int | None = None
    ) -> ScalingDecision:
        """Decide the next batch size from the ordered history (oldest first), and the wait before it.

        The size comes from `_decide_size`; the wait (`ScalingDecision.wait_seconds`) from the
        manager's `RatePacer`, which is 0 until a batch met a rate limit (HTTP 429).
        """
        if batches is None:
            if self.store is None:
                raise ValueError("evaluate_scaling needs batches when the manager has no store")
            batches = self.store.recent_batches(self.HISTORY)
        decision = self._decide_size(batches, remaining_items=remaining_items)
        # -- rate limits (scaling_core.rates): once a 429 taught the ceiling, a batch is kept to a
        # small share of it and starts when the window has room. The pacer learns nothing from
        # a history without a refused call (`_views` counts them).
        pacing = (
            self.pacer.pacing(batches[-self.HISTORY :], decision.new_batch_size, whole=len(batches) < self.HISTORY)
            if batches and self._refused_batches
            else None
        )
        if pacing is None or pacing.ceiling is None:
            return decision
        size, reason = decision.new_batch_size, decision.reason
        if pacing.max_size is not None and self.config.clamp(pacing.max_size) < size:
            size = self.config.clamp(pacing.max_size)
            reason += f"; at most {size} items a batch under the learned rate limit"
        if pacing.wait_seconds > 0.0:
            reason += f"; {pacing.reason}"
        if (size, reason) == (decision.new_batch_size, decision.reason):
            return decision
        base = batches[-1].asked_size if batches else size
        metrics = {
            **decision.performance_metrics,
            "rate_ceiling_per_minute": pacing.ceiling.per_minute,
            "pacing_wait_s": pacing.wait_seconds,
        }
        return self._decision(base, size, reason, metrics).model_copy(
            # A smaller size only makes the weight its batch may take within the time limit larger.
            update={"wait_seconds": pacing.wait_seconds, "max_weight": decision.max_weight}
        )

    def _decide_size(self, batches: Sequence[BatchResult], *, remaining_items: int | None = None) -> ScalingDecision:
        """Decide the next batch size from the ordered history (oldest first).

        `remaining_items`, when given, lets the manager skip exploration that too few items are
        left to repay.
        Never raises on a legal history: an empty one, zero-item batches, batches where every
        item failed and zero processing times all give a decision.
        """
        if remaining_items is not None and remaining_items < 0:
            raise ValueError(f"remaining_items must not be negative, got {remaining_items}")
        tail = batches[-self.HISTORY :]
        history = tail if isinstance(tail, list) else list(tail)
        config = self.config
        base = config.clamp(history[-1].asked_size if history else self._current_batch_size)
        if not history:
            return self._decision(base, base, "no batches yet: keep the starting size", {})
        views, numbers = self._views(history)
        window = EvidenceWindow.of(
            views,
            config,
            base=base,
            remaining_items=remaining_items,
            shift_memo=self._shift_memo,
            step_memo=self._step_memo,
            quality_memo=self._quality_memo,
            pooled_memo=self._pooled_memo,
            carried=self._columns,
            numbers=numbers,
        )
        return self._within_weight(window, self._decide(window, len(history)))

    def _decide(self, window: EvidenceWindow, batches: int) -> ScalingDecision:
        """The decision on `window` of a history of `batches` batches (module docstring, steps 1-4)."""
        config = self.config
        base = window.base
        if window.last.failed:
            return self._after_failure(window)
        limits = [limit for rule in self.limits if (limit := rule.estimate(window)) is not None]
        quality_unmet = any(limit.unmet and limit.name == "quality" for limit in limits)
        last = window.last
        if last.items > 0 and not quality_unmet:
            _, upper = wilson_bounds(last.high, last.items, self.LOW_CONFIDENCE_Z)
            if upper < config.low_confidence_threshold:
                return self._decision(
                    base,
                    min(base, config.clamp(base / 2)),
                    f"the last batch's High share {last.high / last.items:.2f} of {last.items} items is under "
                    f"the low-confidence threshold {config.low_confidence_threshold:.2f}: cut hard",
                    window.metrics,
                )
        if batches < config.min_batches_for_scaling:
            return self._decision(
                base,
                base,
                f"collecting evidence: {batches} of {config.min_batches_for_scaling} batches"
                + _unmet_note(limits),
                window.metrics,
            )
        return self._combine(window, limits)

    def _within_weight(self, window: EvidenceWindow, decision: ScalingDecision) -> ScalingDecision:
        """`decision` with the weight its next batch may take (`ScalingDecision.max_weight`).

        With a significant cost per unit of weight (`EvidenceWindow.weighed`), the time limit
        reads, at the decided size n, the largest summed weight W with

            seconds(n, W) + TIME_Z * se(n, W) <= TIME_MARGIN * processing_time_threshold

        (`TimeLimit`'s margins): a batch of heavy items takes fewer of them instead of running
        over the limit, and the size in items can follow the typical item.

        When the items carry weights but their cost per unit of weight is not yet known (the
        recent batches had about the same weight per item, so the fit cannot tell weight from
        count), the size's evidence holds only for items as heavy as those it was measured on:

            W = n * heaviest weight per item among the recent batches

        A batch of heavier items than any seen is cut to that weight; it then shows what such
        items cost, and the cap follows the heaviest items seen.
        """
        size = decision.new_batch_size
        weighed = window.weighed
        if weighed is not None:
            budget = TimeLimit.TIME_MARGIN * self.config.processing_time_threshold
            within = weighed.largest_weight_within(size, budget, z=TimeLimit.TIME_Z)
        elif window.heaviest_item is not None:
            within = size * window.heaviest_item
        else:
            return decision
        metrics = {**decision.performance_metrics, "max_weight_within_time_limit": within}
        return decision.model_copy(update={"max_weight": within, "performance_metrics": metrics})

    def _after_failure(self, window: EvidenceWindow) -> ScalingDecision:
        """The answer to a batch that failed whole (see the module docstring, step 2)."""
        config = self.config
        failures = window.failures
        last = window.last
        base = window.base
        failed = last.asked
        detail = f" ({last.error})" if last.error else ""
        metrics = {**window.metrics, "whole_failures_in_a_row": float(failures.streak)}
        if failures.deterministic:
            sizes = [failure.size for failure in failures.trailing]
            first = config.clamp(sizes[0])
            metrics["deterministic_failures"] = float(failures.streak)
            return self._decision(
                base,
                first,
                f"deterministic failure: {failures.streak} whole failures in a row at {min(sizes)} to "
                f"{max(sizes)} items{detail}; keeping {first}, learning no size from it",
                metrics,
            )
        if failures.streak == 1:
            known = window.successes_at_or_above(failed)
            if known >= self.KNOWN_GOOD:
                return self._decision(
                    base,
                    base,
                    f"the last batch ({failed} items) failed whole{detail} at a size that succeeded {known} "
                    "times: taken as transient, same size again",
                    metrics,
                )
        trailing = failures.trailing
        if failures.streak >= 2 and all(failure.kind is FailureKind.TRANSIENT for failure in trailing):
            metrics["transient_failure_rate"] = failures.transient_rate
            return self._decision(
                base,
                base,
                f"the last {failures.streak} batches ({failed} items) failed whole{detail} at a size that succeeded: "
                f"taken as transient, same size again (a share {failures.transient_rate:.3f} of the recent "
                f"batches failed and then succeeded at their size, so such a streak is likely by chance)",
                metrics,
            )
        floor = window.largest_success_below(failed)
        if failures.streak >= 2:
            new, how = failed / 2, f"{failures.streak} failures in a row: halving"
        elif floor is None:
            new, how = failed / 2, "no smaller success on record: halving"
        else:
            new, how = floor, f"back to {floor}, the largest size that succeeded"
        new_size = min(base, config.clamp(new))
        if new_size >= base and base > config.min_batch_size:
            new_size = config.clamp(base - 1)
        metrics["failure_ceiling"] = float(failed)
        return self._decision(
            base, new_size, f"the last batch ({failed} items) failed whole{detail}; {how}", metrics
        )

    def _combine(self, window: EvidenceWindow, limits: Sequence[Limit]) -> ScalingDecision:
        """Move toward the smallest limit (see the module docstring, step 4)."""
        config = self.config
        base = window.base
        metrics = window.metrics
        bounds = [limit for limit in limits if not limit.unmet]
        note = _unmet_note(limits)
        if not bounds:
            return self._decision(base, base, f"no limit applies: keeping the size{note}", metrics)
        binding = min(bounds, key=lambda limit: limit.size)
        target = config.clamp(binding.size)
        if target < base and (binding.hard or target < base * (1 - self.DEAD_BAND)):
            return self._decision(base, target, binding.reason + note, metrics)
        if target > base * (1 + self.DEAD_BAND):
            if config.stability_required and growth.failed_for_size_lately(window):
                return self._decision(
                    base, base, f"holding: a batch failed whole for its size within the last few batches{note}", metrics
                )
            factor, pace = growth.growth_step(window, bounds, type(self))
            step = config.clamp(min(target, base * factor))
            known = growth.known_ground(window, target, type(self))
            if known > step:
                step, pace = known, f"back to {known}, where recent batches ran within every limit"
            if step > base:
                return self._decision(base, step, f"{pace}: toward {binding.reason}{note}", metrics)
        probe = growth.probe(window, binding, type(self))
        if probe is not None:
            return self._decision(
                base,
                probe,
                f"at the best size ({binding.reason}); trying {probe} once so the cost curve stays measured{note}",
                metrics,
            )
        return self._decision(base, base, f"at the best size: {binding.reason}{note}", metrics)

    def _views(self, history: list[BatchResult]) -> tuple[list[BatchView], list[ViewNumbers]]:
        """The batches as `BatchView`s and their `ViewNumbers`, reusing the previous call's
        when the history only grew.

        The protocol hands in the same (immutable) batch objects again, grown or slid by one
        batch; reading their numbers once keeps a decision cheap.
        """
        previous, previous_views, previous_numbers = self._last_history
        views: list[BatchView] | None = None
        numbers: list[ViewNumbers] = []
        if previous and history:
            if len(history) == len(previous) + 1 and all(map(operator.is_, history, previous)):
                views, numbers = previous_views[:], previous_numbers[:]
            elif len(history) == len(previous) and all(map(operator.is_, history, islice(previous, 1, None))):
                views, numbers = previous_views[1:], previous_numbers[1:]
            if views is not None:
                views.append(history[-1].view)
                numbers.append(EvidenceWindow.numbers(views[-1]))
        if views is None:
            views = [batch.view for batch in history]
            numbers = [EvidenceWindow.numbers(view) for view in views]
            self._shift_memo.clear()  # another history: its verdicts are not these
            self._step_memo.clear()
            self._refused_batches = sum(1 for view in views if view.rate_limited_calls)
        else:
            dropped = previous_views[0] if len(views) == len(previous_views) else None
            self._refused_batches += bool(views[-1].rate_limited_calls) - bool(dropped and dropped.rate_limited_calls)
        self._last_history = (history, views, numbers)
        return views, numbers

    def apply_scaling_decision(self, decision: ScalingDecision) -> bool:
        """Adopt `decision`'s size (kept within [min, max]); True when the size changed.

        The decision is persisted when the manager has a store.
        """
        old_size = self._current_batch_size
        self._current_batch_size = self.config.clamp(decision.new_batch_size)
        self._current_max_weight = decision.max_weight
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
        """A size expected to meet both targets, from one performance snapshot
        (`scaling_core.predictions.optimal_batch_size`)."""
        return predictions.optimal_batch_size(
            self.config, current_performance, self._current_batch_size, target_confidence_rate, target_processing_time
        )

    def should_scale_now(
        self,
        performance_trend: Sequence[PerformanceSnapshot | Mapping[str, Any] | BatchResult],
        min_confidence_threshold: float = 0.8,
    ) -> tuple[bool, str]:
        """Whether the trend is clear enough to change the size now, and why
        (`scaling_core.predictions.scale_now`)."""
        return predictions.scale_now(self.config, performance_trend, min_confidence_threshold)

    def analyze_batch_size_efficiency(self, performance_data: Sequence[BatchResult]) -> dict[str, Any]:
        """Per size: batches, seconds per successful item, High share; and the best of them
        (`scaling_core.predictions.size_efficiency`)."""
        return predictions.size_efficiency(self.config, performance_data)

    def predict_processing_time(self, batch_size: int, recent_performance: Sequence[BatchResult]) -> float:
        """Expected seconds for a batch of `batch_size` items (`scaling_core.predictions.processing_time`)."""
        return predictions.processing_time(batch_size, recent_performance)

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
                    decision.new_batch_size, historical_data[-EvidenceWindow.EVIDENCE :]
                ),
                "efficiency_analysis": self.analyze_batch_size_efficiency(historical_data[-EvidenceWindow.EVIDENCE :]),
            },
            "combined_recommendation": {
                "recommended_action": decision.action.value,
                "recommended_batch_size": decision.new_batch_size,
                "confidence_score": round(evidence * agreement, 3),
                "reason": decision.reason,
            },
        }

    # -- shared ------------------------------------------------------------------------------

    def _decision(self, base: int, new_size: int, reason: str, metrics: Mapping[str, float]) -> ScalingDecision:
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


def _unmet_note(limits: Sequence[Limit]) -> str:
    """What a decision's reason adds for each constraint that no size meets."""
    return "".join(f"; {limit.reason}" for limit in limits if limit.unmet)
