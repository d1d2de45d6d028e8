"""The manager's predictions: what one performance snapshot or a stretch of history says.

`ScalingManager`'s prediction methods (`predict_optimal_batch_size`, `should_scale_now`,
`analyze_batch_size_efficiency`, `predict_processing_time`) answer from these functions. They
read the evidence directly, with no window and no limits: the decision itself is
`ScalingManager.evaluate_scaling`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scaling_core._evidence import CostFit, fit_costs
from scaling_core.config import ScalingConfig
from scaling_core.results import BatchResult
from scaling_core.window import EvidenceWindow


class PerformanceSnapshot(BaseModel):
    """Recent performance of a pipeline, as `ProgressTracker.get_performance_metrics` gives it."""

    model_config = ConfigDict(extra="ignore")

    current_batch_size: int = Field(default=0, ge=0)
    high_confidence_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    average_processing_time: float = Field(default=0.0, ge=0.0)
    success_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    stability: float = Field(default=0.0, ge=0.0, le=1.0)
    batches: int = Field(default=0, ge=0)


def optimal_batch_size(
    config: ScalingConfig,
    current_performance: PerformanceSnapshot | Mapping[str, Any],
    current_size: int,
    target_confidence_rate: float,
    target_processing_time: float,
) -> int:
    """A size expected to meet both targets, from one performance snapshot.

    Time is taken as proportional to size from the snapshot (a conservative reading when
    batches have a fixed cost); a High rate under the target shrinks the size by the
    shortfall, one above it leaves room to grow by at most `scaling_factor`. `current_size`
    stands in when the snapshot has no size.
    """
    snapshot = PerformanceSnapshot.model_validate(current_performance)
    size = snapshot.current_batch_size or current_size
    if target_processing_time <= 0:
        raise ValueError(f"target_processing_time must be positive, got {target_processing_time}")
    if not 0 < target_confidence_rate <= 1:
        raise ValueError(f"target_confidence_rate must be in (0, 1], got {target_confidence_rate}")
    by_time = (
        size * target_processing_time / snapshot.average_processing_time
        if snapshot.average_processing_time > 0
        else size * config.scaling_factor
    )
    if snapshot.batches == 0:
        by_quality = float(size)
    elif snapshot.high_confidence_rate < target_confidence_rate:
        by_quality = size * snapshot.high_confidence_rate / target_confidence_rate
    else:
        by_quality = size * config.scaling_factor
    return config.clamp(min(by_time, by_quality, size * config.scaling_factor))


def scale_now(
    config: ScalingConfig,
    performance_trend: Sequence[PerformanceSnapshot | Mapping[str, Any] | BatchResult],
    min_confidence_threshold: float,
) -> tuple[bool, str]:
    """Whether the trend is clear enough to change the size now, and why.

    Too few points (under `min_batches_for_scaling`): no. The latest High rate under
    `min_confidence_threshold`: yes, at once. A trend whose High rate swings by more than
    0.15: no, it is not stable yet. Otherwise yes.
    """
    rates = [_high_rate(point) for point in performance_trend]
    needed = config.min_batches_for_scaling
    if len(rates) < needed:
        return False, f"only {len(rates)} of {needed} observations"
    if rates[-1] < min_confidence_threshold:
        return True, f"High rate {rates[-1]:.2f} is under {min_confidence_threshold:.2f}: scale down now"
    window = rates[-needed:]
    swing = max(window) - min(window)
    if swing > 0.15:
        return False, f"High rate swings by {swing:.2f} over the last {needed} observations: wait"
    return True, f"stable High rate {sum(window) / len(window):.2f} over the last {needed} observations"


def size_efficiency(config: ScalingConfig, performance_data: Sequence[BatchResult]) -> dict[str, Any]:
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
        if row["high_confidence_rate"] >= config.high_confidence_threshold
        and row["average_seconds"] <= config.processing_time_threshold
        and row["whole_failures"] == 0
    }
    best = min(eligible, key=lambda s: eligible[s]["seconds_per_successful_item"]) if eligible else None
    fit = _fit([batch for batch in performance_data if not batch.is_whole_failure])
    return {
        "by_size": by_size,
        "most_efficient_batch_size": best,
        "cost_model": (
            {"fixed_seconds": fit.fixed, "seconds_per_item": fit.per_item, "quadratic": fit.quadratic}
            if fit is not None
            else None
        ),
    }


def processing_time(batch_size: int, recent_performance: Sequence[BatchResult]) -> float:
    """Expected seconds for a batch of `batch_size` items.

    From the fitted cost model when the recent batches determine it, else by scaling the
    recent mean seconds per item; 0.0 when there is nothing to go on.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    usable = [b for b in recent_performance if b.total_items > 0 and not b.is_whole_failure]
    fit = _fit(usable)
    if fit is not None:
        return max(fit.seconds(batch_size), 0.0)
    items = sum(batch.total_items for batch in usable)
    if items == 0:
        return 0.0
    return batch_size * sum(batch.processing_time for batch in usable) / items


def _fit(batches: Sequence[BatchResult]) -> CostFit | None:
    usable = [b for b in batches if b.total_items > 0]
    return fit_costs(
        [b.total_items for b in usable],
        [b.processing_time for b in usable],
        min_spread=EvidenceWindow.FIT_SPREAD,
    )


def _high_rate(point: PerformanceSnapshot | Mapping[str, Any] | BatchResult) -> float:
    if isinstance(point, BatchResult):
        return point.high_share
    return PerformanceSnapshot.model_validate(point).high_confidence_rate
