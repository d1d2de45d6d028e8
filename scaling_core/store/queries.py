"""Queries on runs, batches and scaling decisions; each takes a `Session`.

The item ledger has its own module (`ledger`), and the read-only reports theirs (`reports`).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import bindparam, func, insert, update
from sqlmodel import Session, col, select

from scaling_core.results import BatchResult, ScalingDecision
from scaling_core.store.engine import insert_ignoring_conflicts
from scaling_core.store.tables import (
    RESULT_COLUMNS,
    BatchOutcome,
    BatchRecord,
    BatchStatus,
    DecisionRecord,
    PipelineRun,
    RunStatus,
    now,
    to_result,
)

# -- runs -----------------------------------------------------------------------------------


def new_run_id() -> str:
    """A fresh, unique run id."""
    return uuid.uuid4().hex


def start_run(
    session: Session,
    *,
    pipeline: str,
    source: str,
    processor: str,
    config: dict[str, Any],
    run_id: str | None = None,
) -> PipelineRun:
    """Register a run, or mark the existing one with `run_id` running again (resume).

    Safe when several processes start the same run at once: the row is inserted with
    ON CONFLICT DO NOTHING and then read back.
    """
    run_id = run_id or new_run_id()
    started = now()
    inserted = session.execute(
        insert_ignoring_conflicts(session, PipelineRun).values(
            run_id=run_id,
            pipeline=pipeline,
            status=RunStatus.RUNNING,
            source=source,
            processor=processor,
            config=config,
            items_loaded=False,
            item_count=0,
            created_at=started,
            updated_at=started,
        )
    ).rowcount
    session.commit()
    run = session.get(PipelineRun, run_id, populate_existing=True)
    assert run is not None
    if run.pipeline != pipeline:
        raise ValueError(f"run {run_id!r} belongs to pipeline {run.pipeline!r}, not {pipeline!r}")
    if not inserted:
        run.status = RunStatus.RUNNING
        run.updated_at = started
        session.add(run)
        session.commit()
        session.refresh(run)
    return run


def get_run(session: Session, run_id: str) -> PipelineRun | None:
    """The run `run_id`, or None when the store holds no such run."""
    return session.get(PipelineRun, run_id)


def latest_run(session: Session, pipeline: str | None = None) -> PipelineRun | None:
    """The most recently created run (of `pipeline` when given)."""
    query = select(PipelineRun)
    if pipeline is not None:
        query = query.where(PipelineRun.pipeline == pipeline)
    return session.exec(query.order_by(col(PipelineRun.created_at).desc()).limit(1)).first()


def find_run(session: Session, *, run_id: str | None = None, pipeline: str | None = None) -> PipelineRun:
    """The run `run_id`, else the latest run of `pipeline`, else the latest run in the store.

    Raises:
        LookupError: naming what was looked for, when the store holds no such run.
    """
    if run_id:
        run = get_run(session, run_id)
        if run is not None and pipeline is not None and run.pipeline != pipeline:
            raise LookupError(f"run {run_id} belongs to pipeline {run.pipeline!r}, not {pipeline!r}")
        missing = f"no run {run_id!r} in the store"
    else:
        run = latest_run(session, pipeline)
        missing = f"no run of pipeline {pipeline!r} in the store" if pipeline else "the store holds no run yet"
    if run is None:
        raise LookupError(missing)
    return run


def latest_unfinished_run(session: Session, pipeline: str) -> PipelineRun | None:
    """The most recently created run of `pipeline` that has not completed (the one to resume)."""
    query = (
        select(PipelineRun)
        .where(PipelineRun.pipeline == pipeline, PipelineRun.status != RunStatus.COMPLETED)
        .order_by(col(PipelineRun.created_at).desc())
        .limit(1)
    )
    return session.exec(query).first()


def finish_run(
    session: Session, run_id: str, status: RunStatus, *, only_if: RunStatus | tuple[RunStatus, ...] | None = None
) -> bool:
    """Set the run's `status` (with `only_if`, only while the run has that status, or one of them). Commits.

    Returns whether this call changed the run: of several workers that finish a run at
    once, exactly one completes it.
    """
    statement = update(PipelineRun).where(col(PipelineRun.run_id) == run_id)
    if only_if is not None:
        statement = statement.where(col(PipelineRun.status).in_(only_if if isinstance(only_if, tuple) else (only_if,)))
    changed = session.execute(statement.values(status=status, updated_at=now())).rowcount
    session.commit()
    return bool(changed)


# -- batches ---------------------------------------------------------------------------------

# The stage's own statements go to the Core table, not the ORM entity: the ORM's bulk
# INSERT and UPDATE paths cost a few ms per statement, on the critical path between two
# processor calls.
_BATCHES = BatchRecord.__table__  # type: ignore[attr-defined]

# Built once, with bind parameters, so that it is compiled once. The stage number is counted
# inside the INSERT (bind names must differ from the column names the VALUES clause binds).
_INSERT_BATCH = (
    insert(_BATCHES)
    .values(
        run_id=bindparam("new_run_id"),
        pipeline=bindparam("new_pipeline"),
        stage=select(func.count() + 1)
        .select_from(_BATCHES)
        .where(_BATCHES.c.run_id == bindparam("new_run_id"))
        .scalar_subquery(),
        batch_size=bindparam("new_batch_size"),
        worker=bindparam("new_worker"),
        suspects_of=bindparam("new_suspects_of"),
    )
    .returning(_BATCHES.c.id, _BATCHES.c.stage)
)


def insert_batch(
    session: Session, *, run_id: str, pipeline: str, batch_size: int, worker: str, suspects_of: int | None = None
) -> tuple[int, int]:
    """Insert the record of a starting batch, numbered as the run's next stage; returns its (id, stage).

    `suspects_of` marks a crash-isolation batch (see `BatchRecord.suspects_of`). One
    statement: the stage number is counted inside the INSERT and the keys come back by
    RETURNING, so that a stage can claim its items in the same transaction. The caller commits.
    """
    row = session.execute(
        _INSERT_BATCH,
        {
            "new_run_id": run_id,
            "new_pipeline": pipeline,
            "new_batch_size": batch_size,
            "new_worker": worker,
            "new_suspects_of": suspects_of,
        },
    ).one()
    return int(row.id), int(row.stage)


def finish_batch(session: Session, batch_id: int, result: BatchResult, *, cost: float | None = None) -> None:
    """Fill the record of batch `batch_id` from its result and its `cost`, by key. The caller commits.

    One UPDATE by key: loading the record first would cost a SELECT on the stage's critical path.
    """
    finished = now()
    session.execute(
        update(_BATCHES)
        .where(_BATCHES.c.id == batch_id)
        .values(**BatchOutcome.of(result, cost=cost).model_dump(), finished_at=finished, ended_at=finished.timestamp())
    )


# The columns a `BatchResult` needs, not whole `BatchRecord` entities: loading an entity
# builds an instrumented object and parses two timestamps, half the read of the window.
_RESULT_COLUMNS = [BatchRecord.__table__.c[name] for name in RESULT_COLUMNS]  # type: ignore[attr-defined]


def recent_batches(session: Session, pipeline: str, limit: int) -> list[BatchResult]:
    """The last `limit` finished batches of `pipeline` across its runs, oldest first.

    Crash-isolation batches are left out: their size was forced, not chosen. A bounded,
    indexed read (pipeline, id): its cost does not grow with the history.
    """
    rows = session.execute(
        select(*_RESULT_COLUMNS)
        .where(
            BatchRecord.pipeline == pipeline,
            col(BatchRecord.status).in_([BatchStatus.COMPLETED, BatchStatus.FAILED_WHOLE]),
            col(BatchRecord.suspects_of).is_(None),
        )
        .order_by(col(BatchRecord.id).desc())
        .limit(limit)
    ).all()
    return [to_result(row._mapping) for row in reversed(rows)]


def run_batches(session: Session, run_id: str) -> list[BatchRecord]:
    """Every batch record of a run, in stage order."""
    return list(
        session.exec(
            select(BatchRecord).where(BatchRecord.run_id == run_id).order_by(col(BatchRecord.id))
        ).all()
    )


def run_cost(session: Session, run_id: str) -> float:
    """What the run's batches have cost so far (every batch whose processor was called): one indexed sum."""
    return float(session.execute(select(func.sum(_BATCHES.c.cost)).where(_BATCHES.c.run_id == run_id)).scalar() or 0.0)


def last_batch_id(session: Session, run_id: str) -> int | None:
    """The id of the run's latest batch, or None before its first."""
    return session.exec(select(func.max(BatchRecord.id)).where(BatchRecord.run_id == run_id)).one()


# -- decisions -------------------------------------------------------------------------------


def record_decision(
    session: Session,
    *,
    run_id: str,
    pipeline: str,
    batch_id: int | None,
    old_size: int,
    decision: ScalingDecision,
) -> DecisionRecord:
    """Persist one decision. Commits.

    The record keeps its values after the commit (the store's sessions do not expire them)
    and its id from the INSERT: reading it back would cost the scaling task a SELECT.
    """
    record = DecisionRecord.of(decision, run_id=run_id, pipeline=pipeline, batch_id=batch_id, old_size=old_size)
    session.add(record)
    session.commit()
    return record


def last_decided_size(session: Session, pipeline: str) -> int | None:
    """The size the latest decision of `pipeline` chose (warm start for a new run)."""
    size = session.exec(
        select(DecisionRecord.new_size)
        .where(DecisionRecord.pipeline == pipeline)
        .order_by(col(DecisionRecord.id).desc())
        .limit(1)
    ).first()
    return int(size) if size is not None else None


def run_decisions(session: Session, run_id: str) -> list[DecisionRecord]:
    """Every decision of a run, in the order they were taken."""
    return list(
        session.exec(
            select(DecisionRecord)
            .where(DecisionRecord.run_id == run_id)
            .order_by(col(DecisionRecord.id))
        ).all()
    )
