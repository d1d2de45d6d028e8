"""The SQLModel tables of the store and what goes in and out of them.

Laid out after SQLModel's tutorial: `BatchOutcome` is the base and input model of a batch
record (what a finished batch writes), `BatchRecord` the `table=True` model that adds what
the store fills (keys, stage, times). What comes out is read by name from row mappings:
`ClaimedItem` for a stage's claim, `to_result` for the manager's history, and the report
models of `scaling_core.store.reports`. The domain types that the manager reasons about
(`scaling_core.results`) stay apart: `BatchOutcome.of`, `DecisionRecord.of` and `to_result`
convert at this boundary.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, text
from sqlmodel import Field, SQLModel

from scaling_core.results import BatchResult, ConfidenceLevel, ScalingDecision
from scaling_core.sources import MAX_ID_LENGTH


def now() -> datetime:
    """The current time in UTC, as the store records it."""
    return datetime.now(UTC)


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    """A new run of the pipeline replaced this unfinished one (`new_run`); it is never resumed."""
    INTERRUPTED = "interrupted"
    """Stopped by Ctrl-C, SIGTERM or a cancellation, its claims given back; the next run resumes it."""


class ItemStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


class BatchStatus(enum.StrEnum):
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED_WHOLE = "failed_whole"
    ABANDONED = "abandoned"
    """The batch's claims were taken back before it finished; its items went back to pending.

    When its process died (a crash), `total_items` is the number of items taken back and
    `error` says so; claims released on purpose leave `total_items` at 0.
    """


# -- runs ------------------------------------------------------------------------------------


class PipelineRun(SQLModel, table=True):
    """One run of a named pipeline over one source."""

    __tablename__ = "pipeline_run"

    run_id: str = Field(primary_key=True, max_length=64)
    pipeline: str = Field(index=True, max_length=200)
    status: RunStatus = Field(default=RunStatus.RUNNING, max_length=20)
    source: str = Field(default="", max_length=2000)
    processor: str = Field(default="", max_length=500)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    items_loaded: bool = False
    """True once the whole source is in the ledger (the load is resumable until then)."""
    item_count: int = 0
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)


# -- the ledger ---------------------------------------------------------------------------------


RETRY_CONDITION = f"status = '{ItemStatus.PENDING.name}' AND batch_id IS NOT NULL"
"""Pending items that were in a batch before (retries, crash suspects): the rows of `RETRY_INDEX`."""

RETRY_INDEX = Index(
    "ix_ledger_item_retry",
    "run_id",
    "batch_id",
    sqlite_where=text(RETRY_CONDITION),
    postgresql_where=text(RETRY_CONDITION),
)
"""Pending items by their last batch. Partial: a source's rows (never in a batch) and finished
items stay out of it, so loads and claims barely pay for it, and looking up the suspects of a
crashed batch reads only the run's retries."""


class LedgerItem(SQLModel, table=True):
    """One item of a run and where it stands."""

    __tablename__ = "ledger_item"
    __table_args__ = (Index("ix_ledger_item_claim", "run_id", "status", "seq"), RETRY_INDEX)

    run_id: str = Field(primary_key=True, foreign_key="pipeline_run.run_id", max_length=64)
    item_id: str = Field(primary_key=True, max_length=MAX_ID_LENGTH)
    seq: int
    """Position in the source; pending items are claimed in this order."""
    status: ItemStatus = Field(default=ItemStatus.PENDING, max_length=20)
    attempts: int = 0
    """Item-level failed attempts so far."""
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    output: Any | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    confidence: float | None = None
    level: str | None = Field(default=None, max_length=10)
    error: str | None = None
    batch_id: int | None = None
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_at: datetime | None = None
    weight: float | None = None
    """The item's weight (tokens, characters, bytes), computed once at load; None when the run weighs nothing."""
    cost: float | None = None
    """What the item has cost so far, every batch it ran in counted; None while nothing is priced."""


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    """A ledger row handed to a stage: its id, position, payload and failed attempts so far.

    A plain dataclass, not a validated model: a claim reads thousands of rows, and building
    a model per row would cost most of the claim's time.
    """

    item_id: str
    seq: int
    payload: dict[str, Any]
    attempts: int
    weight: float | None = None


# -- batches ------------------------------------------------------------------------------------


class BatchOutcome(SQLModel):
    """What a finished batch writes into its record: counts, quality, time, and how it ended.

    The base of `BatchRecord`, and the input `finish_batch` writes into a record.
    """

    total_items: int = 0
    successful_items: int = 0
    failed_items: int = 0
    high: int = 0
    medium: int = 0
    low: int = 0
    seconds: float = 0.0
    status: BatchStatus = Field(default=BatchStatus.PROCESSING, max_length=20)
    error: str | None = None
    total_weight: float | None = None
    """Summed weight of the batch's items; None when the run weighs nothing."""
    cost: float | None = None
    """What the batch cost (items x cost_per_item + weight x cost_per_weight_unit); None without prices."""
    rate_limited_calls: int = 0
    """Calls refused for the provider's rate limit (429) and made again with the same items."""
    rate_wait_seconds: float = 0.0
    """Seconds waited on those refusals; not part of `seconds`."""

    @classmethod
    def of(cls, result: BatchResult, *, cost: float | None = None) -> BatchOutcome:
        """The outcome of a batch as the manager saw it, and what it cost."""
        distribution = result.confidence_distribution
        return cls(
            total_items=result.total_items,
            successful_items=result.successful_items,
            failed_items=result.failed_items,
            high=distribution.get(ConfidenceLevel.HIGH, 0),
            medium=distribution.get(ConfidenceLevel.MEDIUM, 0),
            low=distribution.get(ConfidenceLevel.LOW, 0),
            seconds=result.processing_time,
            status=BatchStatus.FAILED_WHOLE if result.failed_whole else BatchStatus.COMPLETED,
            error=result.error,
            total_weight=result.total_weight,
            cost=cost,
            rate_limited_calls=result.rate_limited_calls,
            rate_wait_seconds=result.rate_wait,
        )


class BatchRecord(BatchOutcome, table=True):
    """One stage's batch: what was asked, what came back, how long it took."""

    __tablename__ = "batch_record"
    __table_args__ = (Index("ix_batch_record_pipeline_id", "pipeline", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="pipeline_run.run_id", index=True, max_length=64)
    pipeline: str = Field(max_length=200)
    stage: int
    batch_size: int
    worker: str | None = Field(default=None, max_length=64)
    started_at: datetime = Field(default_factory=now)
    finished_at: datetime | None = None
    ended_at: float | None = None
    """`finished_at` in seconds since the epoch: the rate pacer's clock, read with the history
    without parsing a timestamp per row (that would add a fifth to the read)."""
    suspects_of: int | None = None
    """A crash-isolation batch: the id of the crashed batch whose items it re-ran. Its size was
    forced small to find the item that crashes, so the manager does not learn from it."""


RESULT_COLUMNS: tuple[str, ...] = (
    "id", "batch_size", "total_items", "successful_items", "failed_items", "high", "medium", "low", "seconds",
    "status", "error", "total_weight", "rate_limited_calls", "rate_wait_seconds", "ended_at",
)
"""The columns of a batch record that `to_result` reads."""


def to_result(row: Mapping[str, Any]) -> BatchResult:
    """The manager's view of a stored batch, from a row's mapping of `RESULT_COLUMNS`.

    Validated once, by `BatchResult` itself. A read model in between would validate every
    row twice: it doubled the read of the manager's 400-batch window. A batch that failed
    whole with no levels recorded counts all its items Low.
    """
    high, medium, low, total = row["high"], row["medium"], row["low"], row["total_items"]
    failed_whole = row["status"] == BatchStatus.FAILED_WHOLE
    distribution = {ConfidenceLevel.HIGH: high, ConfidenceLevel.MEDIUM: medium, ConfidenceLevel.LOW: low}
    if failed_whole and high + medium + low == 0:
        distribution = {ConfidenceLevel.LOW: total}
    return BatchResult(
        batch_id=str(row["id"]),
        batch_size=row["batch_size"],
        total_items=total,
        successful_items=row["successful_items"],
        failed_items=row["failed_items"],
        processing_time=row["seconds"],
        confidence_distribution=distribution,
        failed_whole=failed_whole,
        error=row["error"],
        total_weight=row["total_weight"],
        rate_limited_calls=row["rate_limited_calls"],
        rate_wait=row["rate_wait_seconds"],
        ended_at=row["ended_at"],
    )


# -- decisions -----------------------------------------------------------------------------------


class DecisionRecord(SQLModel, table=True):
    """One scaling decision taken after a batch."""

    __tablename__ = "scaling_decision"
    __table_args__ = (Index("ix_scaling_decision_pipeline_id", "pipeline", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="pipeline_run.run_id", index=True, max_length=64)
    pipeline: str = Field(max_length=200)
    batch_id: int | None = None
    action: str = Field(max_length=20)
    old_size: int
    new_size: int
    reason: str
    metrics: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=now)

    @classmethod
    def of(
        cls, decision: ScalingDecision, *, run_id: str, pipeline: str, batch_id: int | None, old_size: int
    ) -> DecisionRecord:
        """The record of `decision`, taken after batch `batch_id` of the run at size `old_size`."""
        return cls(
            run_id=run_id,
            pipeline=pipeline,
            batch_id=batch_id,
            action=decision.action.value,
            old_size=old_size,
            new_size=decision.new_batch_size,
            reason=decision.reason,
            metrics=dict(decision.performance_metrics),
            created_at=decision.timestamp,
        )
