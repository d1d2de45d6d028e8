"""Noise-free workloads that drive the manager through its protocol, for exact size sequences."""

from __future__ import annotations

from collections.abc import Callable

from scaling_core import BatchResult, ConfidenceLevel, ScalingConfig, ScalingDecision, ScalingManager

Outcome = Callable[[int, int], BatchResult]
"""(asked size, batch number from 0) -> the batch's result."""


def result(size: int, seconds: float, high: int | None = None, *, failed: bool = False, error: str | None = None) -> BatchResult:
    """A batch of `size` items that took `seconds`: all High unless `high` says otherwise."""
    if failed:
        return BatchResult(
            batch_id="b", batch_size=size, total_items=size, successful_items=0, failed_items=size,
            processing_time=seconds, confidence_distribution={ConfidenceLevel.LOW: size}, failed_whole=True,
            error=error,
        )
    high = size if high is None else high
    return BatchResult(
        batch_id="b", batch_size=size, total_items=size, successful_items=size, processing_time=seconds,
        confidence_distribution={ConfidenceLevel.HIGH: high, ConfidenceLevel.MEDIUM: size - high},
    )


def weighed_result(asked: int, items: int, seconds: float, weight: float) -> BatchResult:
    """A batch asked for `asked` items that took `items` of summed weight `weight`, all High."""
    return BatchResult(
        batch_id="b", batch_size=asked, total_items=items, successful_items=items, processing_time=seconds,
        confidence_distribution={ConfidenceLevel.HIGH: items}, total_weight=weight,
    )


def drive(
    config: ScalingConfig,
    outcome: Outcome,
    batches: int,
    *,
    remaining: Callable[[int], int] | None = None,
) -> tuple[list[int], ScalingDecision]:
    """The sizes of `batches` batches and the last decision, through the documented protocol."""
    manager = ScalingManager(config)
    history: list[BatchResult] = []
    sizes: list[int] = []
    decision: ScalingDecision | None = None
    for number in range(batches):
        size = manager.get_current_batch_size()
        sizes.append(size)
        history.append(outcome(size, number))
        decision = manager.evaluate_scaling(history, remaining_items=None if remaining is None else remaining(number))
        manager.apply_scaling_decision(decision)
    assert decision is not None
    return sizes, decision
