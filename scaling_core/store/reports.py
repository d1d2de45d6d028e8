"""Read-only reports of a run: its stages with the decision after each, and its totals.

Each query takes a `Session` and returns plain pydantic models, which the flows format
(a table artifact, a Markdown summary, the `report` command's JSON).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlmodel import Session, col, select

from scaling_core.store.ledger import ItemCounts, count_items
from scaling_core.store.queries import find_run
from scaling_core.store.tables import BatchRecord, BatchStatus, DecisionRecord, PipelineRun, RunStatus


class StageRow(BaseModel):
    """One stage of a run: its size, items, quality, time, and the decision taken after it."""

    model_config = ConfigDict(frozen=True)

    stage: int
    batch_size: int
    items: int
    successful: int
    failed: int
    high: int
    seconds: float
    status: BatchStatus
    weight: float | None = None
    """Summed weight of the stage's items; None when the run weighs nothing."""
    cost: float | None = None
    """What the stage cost; None when nothing is priced."""
    action: str | None = None
    next_batch_size: int | None = None
    reason: str | None = None

    @property
    def high_share(self) -> float:
        """High items / items of the stage (0.0 for an empty stage)."""
        return self.high / self.items if self.items else 0.0


class RunTotals(BaseModel):
    """What a run has done so far: its items by status, the stages that ran and their quality.

    Abandoned stages (their process died) are left out: they did no work.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    pipeline: str
    items: ItemCounts
    stages: int
    failed_stages: int
    sizes_used: list[int]
    high_share: float
    """High items / items of the completed stages (0.0 before the first)."""
    weight: float | None = None
    """Summed weight of the items of its stages, retries included; None when the run weighs nothing."""
    cost: float | None = None
    """What its stages cost, retries included; None when nothing is priced."""


class RunReport(BaseModel):
    """A run as the `report` command shows it: what it ran on, its items, every stage."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    pipeline: str
    status: RunStatus
    source: str
    processor: str
    items: ItemCounts
    stages: list[StageRow]

    @property
    def cost(self) -> float | None:
        """What the run's stages cost; None when nothing is priced."""
        costs = [stage.cost for stage in self.stages if stage.cost is not None]
        return sum(costs) if costs else None

    @property
    def weight(self) -> float | None:
        """Summed weight of the run's stages, retries included; None when the run weighs nothing."""
        weights = [stage.weight for stage in self.stages if stage.weight is not None]
        return sum(weights) if weights else None


def run_stages(session: Session, run_id: str) -> list[StageRow]:
    """Every stage of the run, in order, with the decision taken after it (None when none was)."""
    batches = session.execute(
        select(
            col(BatchRecord.id).label("batch_id"),
            BatchRecord.stage,
            BatchRecord.batch_size,
            col(BatchRecord.total_items).label("items"),
            col(BatchRecord.successful_items).label("successful"),
            col(BatchRecord.failed_items).label("failed"),
            BatchRecord.high,
            BatchRecord.seconds,
            BatchRecord.status,
            col(BatchRecord.total_weight).label("weight"),
            BatchRecord.cost,
        )
        .where(BatchRecord.run_id == run_id)
        .order_by(col(BatchRecord.id))
    ).all()
    decisions = session.execute(
        select(
            DecisionRecord.batch_id,
            DecisionRecord.action,
            col(DecisionRecord.new_size).label("next_batch_size"),
            DecisionRecord.reason,
        )
        .where(DecisionRecord.run_id == run_id)
        .order_by(col(DecisionRecord.id))
    ).all()
    # Should a batch have had several decisions (a run resumed between a decision and its
    # next stage), the latest is the one its next stage followed.
    after: dict[int | None, dict[str, Any]] = {decision.batch_id: dict(decision._mapping) for decision in decisions}
    return [StageRow.model_validate({**after.get(batch.batch_id, {}), **batch._mapping}) for batch in batches]


def run_totals(session: Session, run_id: str) -> RunTotals:
    """The run's items by status and the sizes, failures and High share of its stages.

    Raises `LookupError` when the store holds no run `run_id`.
    """
    pipeline = session.exec(select(PipelineRun.pipeline).where(PipelineRun.run_id == run_id)).first()
    if pipeline is None:
        raise LookupError(f"no run {run_id!r} in the store")
    batches = session.execute(
        select(
            BatchRecord.batch_size,
            BatchRecord.status,
            BatchRecord.total_items,
            BatchRecord.high,
            BatchRecord.total_weight,
            BatchRecord.cost,
        )
        .where(BatchRecord.run_id == run_id, BatchRecord.status != BatchStatus.ABANDONED)
        .order_by(col(BatchRecord.id))
    ).all()
    completed = [batch for batch in batches if batch.status == BatchStatus.COMPLETED]
    finished_items = sum(batch.total_items for batch in completed)
    weights = [batch.total_weight for batch in batches if batch.total_weight is not None]
    costs = [batch.cost for batch in batches if batch.cost is not None]
    return RunTotals(
        run_id=run_id,
        pipeline=pipeline,
        items=count_items(session, run_id),
        stages=len(batches),
        failed_stages=sum(batch.status == BatchStatus.FAILED_WHOLE for batch in batches),
        sizes_used=[batch.batch_size for batch in batches],
        high_share=sum(batch.high for batch in completed) / finished_items if finished_items else 0.0,
        weight=sum(weights) if weights else None,
        cost=sum(costs) if costs else None,
    )


def run_report(session: Session, run_id: str | None = None, *, pipeline: str | None = None) -> RunReport:
    """The report of `run_id`, else of the latest run of `pipeline`, else of the latest run in the store.

    Raises `LookupError` when there is no such run (or no run at all).
    """
    run = find_run(session, run_id=run_id, pipeline=pipeline)
    return RunReport(
        run_id=run.run_id,
        pipeline=run.pipeline,
        status=run.status,
        source=run.source,
        processor=run.processor,
        items=count_items(session, run.run_id),
        stages=run_stages(session, run.run_id),
    )
