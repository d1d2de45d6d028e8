"""Orchestration over the store: hand out batches, track progress, apply scaling.

`BatchManager` claims pending items from the ledger and writes their results back;
`ProgressTracker` reads the recent batches and summarises them; the
`DynamicScalingController` joins both to the unified `ScalingManager`.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from scaling_core import store
from scaling_core.budget import CostBudget
from scaling_core.config import ScalingConfig
from scaling_core.manager import PerformanceSnapshot, ScalingManager
from scaling_core.processing import summarize_batch
from scaling_core.rates import RateWaits
from scaling_core.results import BatchResult, ConfidenceLevel, ItemResult, ScalingDecision
from scaling_core.sources import Item


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    """Items claimed for one batch, with what is needed to write their results back."""

    batch_id: int
    stage: int
    batch_size: int
    items: list[Item]
    attempts: dict[str, int]
    total_weight: float | None = None
    """Summed weight of the items, when they have weights."""


class BatchManager:
    """Hands out the next batch of pending items at the current size and records outcomes.

    Args:
        engine: the database holding the run's ledger.
        run_id: the run whose items are handed out.
        pipeline: the run's pipeline name.
        batch_size: the size of the next batch.
        max_attempts: item-level attempts before an item is failed for good.
        worker: a name for whoever claims items (defaults to a random id).
        max_batch_weight: a batch stops short of its size rather than pass this summed item
            weight (`store.claim_items`); None: no weight budget.
        budget: the prices each finished batch is charged at (`CostBudget.batch_cost`).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        run_id: str,
        pipeline: str,
        batch_size: int,
        max_attempts: int = 3,
        worker: str | None = None,
        max_batch_weight: float | None = None,
        budget: CostBudget | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_attempts <= 0:
            raise ValueError(f"max_attempts must be positive, got {max_attempts}")
        self.engine = engine
        self.run_id = run_id
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.worker = worker or uuid.uuid4().hex[:16]
        self.max_batch_weight = max_batch_weight
        self.budget = budget or CostBudget()

    def next_batch(self, size: int | None = None, *, suspects_of: int | None = None) -> ClaimedBatch | None:
        """Claim up to `size` (default: the current size) pending items; None when none are left.

        With `suspects_of`, only the crash suspects of that batch (`store.crash_suspects`),
        in a crash-isolation batch. The batch record and the claim are one transaction, with
        no pending check before it: a claim that finds nothing is rolled back, so no record is
        left behind, and a process killed in between leaves neither a record nor a claim.
        """
        size = size if size is not None else self.batch_size
        with store.open_session(self.engine) as session:
            batch_id, stage = store.insert_batch(
                session,
                run_id=self.run_id,
                pipeline=self.pipeline,
                batch_size=size,
                worker=self.worker,
                suspects_of=suspects_of,
            )
            claimed = store.claim_items(
                session,
                self.run_id,
                size,
                batch_id=batch_id,
                worker=self.worker,
                suspects_of=suspects_of,
                max_weight=self.max_batch_weight,
            )
            if not claimed:
                session.rollback()  # nothing pending, or another worker took the last items
                return None
            session.commit()
        return ClaimedBatch(
            batch_id=batch_id,
            stage=stage,
            batch_size=size,
            items=[Item(id=row.item_id, payload=row.payload, weight=row.weight) for row in claimed],
            attempts={row.item_id: row.attempts for row in claimed},
            total_weight=_total_weight(claimed),
        )

    def complete_batch(
        self, batch: ClaimedBatch, results: Sequence[ItemResult], seconds: float, *, rate: RateWaits | None = None
    ) -> BatchResult:
        """Write every item's result and the batch summary in one transaction.

        `rate`: the calls refused for a rate limit and the seconds waited on them (not in `seconds`).
        """
        summary = summarize_batch(str(batch.batch_id), batch.batch_size, list(results), seconds, rate=rate)
        if batch.total_weight is not None:
            summary = summary.model_copy(update={"total_weight": batch.total_weight})
        with store.open_session(self.engine) as session:
            store.record_item_results(
                session,
                self.run_id,
                results,
                batch_id=batch.batch_id,
                attempts_before=batch.attempts,
                max_attempts=self.max_attempts,
                charges=self._charges(batch),
            )
            store.finish_batch(session, batch.batch_id, summary, cost=self._cost(batch))
            session.commit()
        return summary

    def _cost(self, batch: ClaimedBatch) -> float | None:
        return self.budget.batch_cost(items=len(batch.items), weight=batch.total_weight)

    def _charges(self, batch: ClaimedBatch) -> dict[str, float] | None:
        """What this batch cost each of its items, by id; None when nothing is priced."""
        if not self.budget.charges:
            return None
        return {item.id: self.budget.batch_cost(items=1, weight=item.weight) or 0.0 for item in batch.items}

    def fail_batch(
        self, batch: ClaimedBatch, error: str, seconds: float, *, rate: RateWaits | None = None
    ) -> BatchResult:
        """Record a batch that failed whole; its items go back to pending."""
        summary = BatchResult(
            batch_id=str(batch.batch_id),
            batch_size=batch.batch_size,
            total_items=len(batch.items),
            successful_items=0,
            failed_items=len(batch.items),
            processing_time=seconds,
            confidence_distribution={ConfidenceLevel.LOW: len(batch.items)},
            failed_whole=True,
            error=error,
            total_weight=batch.total_weight,
            rate_limited_calls=rate.rate_limited_calls if rate is not None else 0,
            rate_wait=rate.waited if rate is not None else 0.0,
        )
        with store.open_session(self.engine) as session:
            charge = (
                (self.budget.cost_per_item, self.budget.cost_per_weight_unit) if self.budget.charges else None
            )
            store.release_items(session, self.run_id, batch_id=batch.batch_id, charge=charge)
            store.finish_batch(session, batch.batch_id, summary, cost=self._cost(batch))
            session.commit()
        return summary

    def crash_batch(self, batch: ClaimedBatch, cause: str) -> int:
        """Record a batch whose processor's process died: each item counts an attempt
        (`store.recover_crashed`). Returns how many of its items that failed for good (one
        that crashed alone with its attempts used up, else none)."""
        with store.open_session(self.engine) as session:
            store.recover_crashed(
                session, self.run_id, max_attempts=self.max_attempts, batch_id=batch.batch_id, cause=cause
            )
            if len(batch.items) != 1:
                return 0
            return store.count_batch_items(session, self.run_id, batch.batch_id, store.ItemStatus.FAILED)

    def counts(self) -> store.ItemCounts:
        """The run's items by status."""
        with store.open_session(self.engine) as session:
            return store.count_items(session, self.run_id)


def _total_weight(claimed: Sequence[store.ClaimedItem]) -> float | None:
    """The summed weight of claimed items; None when none of them has a weight."""
    weights = [row.weight for row in claimed if row.weight is not None]
    return float(sum(weights)) if weights else None


class Trend(enum.StrEnum):
    IMPROVING = "improving"
    STABLE = "stable"
    DECLINING = "declining"


class ProgressTracker:
    """Recent batch results of a pipeline, read from the store, and what they say.

    Args:
        engine: the database.
        pipeline: whose batches are tracked (across its runs).
        window: how many recent batches the metrics cover.
    """

    TREND_MARGIN = 0.05
    """Change of High share between the halves of the window that counts as a trend."""

    def __init__(self, engine: Engine, *, pipeline: str, window: int = 10) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.engine = engine
        self.pipeline = pipeline
        self.window = window

    def recent_results(self, limit: int | None = None) -> list[BatchResult]:
        with store.open_session(self.engine) as session:
            return store.recent_batches(session, self.pipeline, limit or self.window)

    def get_performance_metrics(self) -> PerformanceSnapshot:
        """High-confidence rate, mean seconds, success rate and stability of the window.

        Stability is 1 minus the spread (max - min) of the per-batch High shares.
        """
        results = [r for r in self.recent_results() if r.total_items > 0]
        if not results:
            return PerformanceSnapshot()
        items = sum(r.total_items for r in results)
        shares = [r.high_share for r in results]
        return PerformanceSnapshot(
            current_batch_size=results[-1].asked_size,
            high_confidence_rate=sum(r.high_count for r in results) / items,
            average_processing_time=sum(r.processing_time for r in results) / len(results),
            success_rate=sum(r.successful_items for r in results) / items,
            stability=max(0.0, 1.0 - (max(shares) - min(shares))),
            batches=len(results),
        )

    def analyze_trend(self) -> Trend:
        """Compare the High share of the older and newer half of the window."""
        results = [r for r in self.recent_results() if r.total_items > 0]
        if len(results) < 4:
            return Trend.STABLE
        half = len(results) // 2
        older, newer = results[:half], results[half:]
        change = _share(newer) - _share(older)
        if change > self.TREND_MARGIN:
            return Trend.IMPROVING
        if change < -self.TREND_MARGIN:
            return Trend.DECLINING
        return Trend.STABLE


def _share(results: Sequence[BatchResult]) -> float:
    items = sum(r.total_items for r in results)
    return sum(r.high_count for r in results) / items if items else 0.0


class DynamicScalingController:
    """Runs the unified `ScalingManager` over what the tracker reads and sizes the next batch.

    Args:
        batch_manager: hands out batches; its `batch_size` is set after each decision.
        progress_tracker: reads the pipeline's recent batches from the store.
        scaling_config: the limits; `ScalingConfig()` when None.
        store: persists decisions (a `PipelineStore`), optional.
    """

    def __init__(
        self,
        batch_manager: BatchManager,
        progress_tracker: ProgressTracker,
        scaling_config: ScalingConfig | None = None,
        store: Any | None = None,
    ) -> None:
        self.batch_manager = batch_manager
        self.progress_tracker = progress_tracker
        self.scaling_manager = ScalingManager(scaling_config, store=store)
        self.scaling_active = True
        self._last_decision: ScalingDecision | None = None
        self._sync_size()

    def _sync_size(self) -> None:
        self.batch_manager.batch_size = self.scaling_manager.get_current_batch_size()

    def process_batch_completion(self, result: BatchResult) -> ScalingDecision | None:
        """React to a finished batch (already in the store): evaluate and apply when active."""
        if not self.scaling_active:
            return None
        return self.evaluate_and_apply_scaling()

    def evaluate_and_apply_scaling(self, *, remaining_items: int | None = None) -> ScalingDecision:
        """Decide on the store's recent history, apply the decision, resize the batch manager.

        `remaining_items`, when known, lets the manager skip exploration that cannot repay.
        """
        history = self.progress_tracker.recent_results(ScalingManager.HISTORY)
        decision = self.scaling_manager.evaluate_scaling(history, remaining_items=remaining_items)
        self.scaling_manager.apply_scaling_decision(decision)
        self._sync_size()
        self._last_decision = decision
        return decision

    def force_scaling_evaluation(self) -> dict[str, Any]:
        """Evaluate now, even while scaling is disabled, without applying anything."""
        history = self.progress_tracker.recent_results(ScalingManager.HISTORY)
        performance = self.progress_tracker.get_performance_metrics()
        return {
            "current_batch_size": self.scaling_manager.get_current_batch_size(),
            "recommendation": self.scaling_manager.get_comprehensive_scaling_recommendation(
                performance, history
            ),
            "current_performance": performance.model_dump(),
            "scaling_active": self.scaling_active,
        }

    def enable_scaling(self) -> None:
        self.scaling_active = True

    def disable_scaling(self) -> None:
        self.scaling_active = False

    def get_scaling_status(self) -> dict[str, Any]:
        return {
            "scaling_active": self.scaling_active,
            "current_batch_size": self.scaling_manager.get_current_batch_size(),
            "last_decision": self._last_decision.model_dump(mode="json") if self._last_decision else None,
            "trend": self.progress_tracker.analyze_trend().value,
            "summary": self.scaling_manager.get_scaling_summary(),
        }
