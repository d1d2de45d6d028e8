"""Domain types that the manager reasons about: item and batch results, limits, scaling decisions.

These are plain pydantic models, kept apart from the SQLModel tables in `scaling_core.store.tables`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ConfidenceLevel(enum.StrEnum):
    """Quality bucket of one item."""

    HIGH = "High"
    MEDIUM = "Medium"
    LOW = "Low"


class ItemResult(BaseModel):
    """What a processor returns for one item.

    A processor may return this model or a plain dict with the same keys, so that it needs
    no import of this package. `level` is derived from `confidence` by the thresholds in
    `ScalingConfig` when it is not given; a failed item is always Low.
    """

    model_config = ConfigDict(frozen=True)

    item_id: str = Field(min_length=1)
    success: bool = True
    confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    output: Any = None
    error: str | None = None
    level: ConfidenceLevel | None = None


class BatchView(NamedTuple):
    """The numbers of a batch that decisions read, as plain values (cheap to read in loops)."""

    asked: int
    items: int
    high: int
    seconds: float
    failed: bool
    """True when the batch failed whole (no item came back successful)."""
    error: str | None = None
    """Why it failed whole, when it did."""
    weight: float | None = None
    """Total weight of its items (tokens, bytes), when the items carry weights."""
    rate_limited_calls: int = 0
    """Calls the provider refused for its rate limit (HTTP 429)."""


class BatchResult(BaseModel):
    """Outcome of one batch, as the manager sees it.

    `batch_size` is the size that was asked for; `total_items` may be smaller at the end of
    a dataset. Failed items count as Low in `confidence_distribution`. A batch that failed
    as a whole (timeout, processor exception) has `failed_whole=True`.

    Example:
        >>> BatchResult(batch_id="b1", batch_size=50, total_items=50, successful_items=49,
        ...             failed_items=1, processing_time=2.5,
        ...             confidence_distribution={"High": 45, "Medium": 4, "Low": 1})
    """

    model_config = ConfigDict(frozen=True)

    batch_id: str
    batch_size: int | None = Field(default=None, gt=0)
    total_items: int = Field(ge=0)
    successful_items: int = Field(ge=0)
    failed_items: int = Field(default=0, ge=0)
    processing_time: float = Field(ge=0.0)
    confidence_distribution: dict[ConfidenceLevel, int] = Field(default_factory=dict)
    failed_whole: bool = False
    error: str | None = None
    item_results: list[ItemResult] | None = None
    total_weight: float | None = None
    """Summed weight of the batch's items (tokens, characters, bytes), when the items have weights."""
    rate_limited_calls: int = Field(default=0, ge=0)
    """Calls of this batch that the provider refused for its rate limit (HTTP 429) and that
    were made again with the same items; the `RatePacer` learns the ceiling from them."""
    rate_wait: float = Field(default=0.0, ge=0.0)
    """Seconds waited on those refusals, left out of `processing_time` (a wait is not a cost
    of the batch's size)."""
    ended_at: float | None = None
    """When the batch ended, in seconds since the epoch (the store's record of it); the
    pacer's clock. None when not recorded."""

    @model_validator(mode="after")
    def _check_counts(self) -> Self:
        if self.successful_items + self.failed_items != self.total_items:
            raise ValueError(
                f"successful_items ({self.successful_items}) + failed_items ({self.failed_items}) "
                f"must equal total_items ({self.total_items})"
            )
        if self.total_weight is not None and not self.total_weight >= 0.0:
            raise ValueError(f"total_weight must not be negative, got {self.total_weight}")
        if any(count < 0 for count in self.confidence_distribution.values()):
            raise ValueError("confidence_distribution counts must not be negative")
        counted = sum(self.confidence_distribution.values())
        if counted not in (0, self.total_items):
            raise ValueError(
                f"confidence_distribution counts {counted} items but total_items is {self.total_items}"
            )
        return self

    @property
    def asked_size(self) -> int:
        """The size that was asked for, or the item count when it was not recorded."""
        return self.batch_size if self.batch_size is not None else self.total_items

    @property
    def high_count(self) -> int:
        return self.confidence_distribution.get(ConfidenceLevel.HIGH, 0)

    @property
    def high_share(self) -> float:
        """High items / items in the batch (0.0 for an empty batch)."""
        return self.high_count / self.total_items if self.total_items else 0.0

    @property
    def success_rate(self) -> float:
        return self.successful_items / self.total_items if self.total_items else 0.0

    @property
    def is_whole_failure(self) -> bool:
        """True when no item of a non-empty batch came back successful."""
        return self.failed_whole or (self.total_items > 0 and self.successful_items == 0)

    @property
    def view(self) -> BatchView:
        """The batch as a `BatchView`."""
        return BatchView(
            asked=self.asked_size,
            items=self.total_items,
            high=self.high_count,
            seconds=self.processing_time,
            failed=self.is_whole_failure,
            error=self.error,
            weight=self.total_weight,
            rate_limited_calls=self.rate_limited_calls,
        )


@dataclass(frozen=True, slots=True)
class Limit:
    """One bound on the next size and the evidence behind it.

    Attributes:
        name: which rule: "max", "time", "throughput", "quality" or "failures".
        size: the largest size the rule allows (math.inf when it allows any).
        reason: the evidence, in words.
        hard: the evidence says the current size itself is too large, so the move is made
            however small it is (no dead band).
        unmet: no size meets this constraint; the manager ignores it and says so.
    """

    name: str
    size: float
    reason: str
    hard: bool = False
    unmet: bool = False


class ScalingAction(enum.StrEnum):
    INCREASE = "increase"
    DECREASE = "decrease"
    MAINTAIN = "maintain"


class ScalingDecision(BaseModel):
    """One answer of the manager: the next batch size and why.

    `performance_metrics` carries the model's estimates (fitted costs, quality bounds,
    limits) so that a reader can check the `reason`.
    """

    model_config = ConfigDict(frozen=True)

    action: ScalingAction
    new_batch_size: int = Field(gt=0)
    reason: str
    confidence_threshold: float = Field(ge=0.0, le=1.0)
    performance_metrics: dict[str, float] = Field(default_factory=dict)
    max_weight: float | None = Field(default=None, ge=0.0)
    """The most summed item weight the next batch may take: its time limit read through the
    cost of item weights (None without a significant weight cost). A stage claims up to
    `new_batch_size` items within it, so a run of heavy items makes the batch smaller."""
    wait_seconds: float = Field(default=0.0, ge=0.0)
    """Seconds to wait before the next batch to stay under a learned rate limit
    (`scaling_core.rates.RatePacer`); the `reason` says so when it is not 0."""
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
