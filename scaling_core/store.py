"""SQLModel persistence: pipeline runs, the item ledger, batches and scaling decisions.

Every function takes a `Session` (or an `Engine` where it manages its own transactions);
no engine is built at import time. Table models live here and nowhere else; the manager
reasons about the domain types of `scaling_core.results`, converted at this boundary.

Concurrency: claiming items is one `UPDATE ... WHERE item_id IN (SELECT ... FOR UPDATE
SKIP LOCKED)` statement, so on PostgreSQL several stages (of one run or of several
processes) never claim the same item. SQLite has a single writer: its statements are
serialised by the database lock, which is safe but lets only one process write at a time.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, Connection, Engine, Index, bindparam, event, func, or_, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from scaling_core.results import (
    BatchResult,
    ConfidenceLevel,
    ItemResult,
    ScalingDecision,
)

# -- tables -------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


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
    """The process running the batch died; its items went back to pending."""


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
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class LedgerItem(SQLModel, table=True):
    """One item of a run and where it stands."""

    __tablename__ = "ledger_item"
    __table_args__ = (Index("ix_ledger_item_claim", "run_id", "status", "seq"),)

    run_id: str = Field(primary_key=True, foreign_key="pipeline_run.run_id", max_length=64)
    item_id: str = Field(primary_key=True, max_length=500)
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


class BatchRecord(SQLModel, table=True):
    """One stage's batch: what was asked, what came back, how long it took."""

    __tablename__ = "batch_record"
    __table_args__ = (Index("ix_batch_record_pipeline_id", "pipeline", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="pipeline_run.run_id", index=True, max_length=64)
    pipeline: str = Field(max_length=200)
    stage: int
    batch_size: int
    total_items: int = 0
    successful_items: int = 0
    failed_items: int = 0
    high: int = 0
    medium: int = 0
    low: int = 0
    seconds: float = 0.0
    status: BatchStatus = Field(default=BatchStatus.PROCESSING, max_length=20)
    error: str | None = None
    worker: str | None = Field(default=None, max_length=64)
    started_at: datetime = Field(default_factory=_now)
    finished_at: datetime | None = None


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
    created_at: datetime = Field(default_factory=_now)


_LEDGER = LedgerItem.__table__  # type: ignore[attr-defined]

# Every item's result, by primary key, as one executemany (bind names must differ from the
# column names that the SET clause binds).
_RESULT_UPDATE = (
    update(_LEDGER)
    .where(
        _LEDGER.c.run_id == bindparam("key_run_id"),
        _LEDGER.c.item_id == bindparam("key_item_id"),
        # Only while the item is still this batch's: a claim taken back (its worker looked
        # dead) is pending and still names the batch until another batch claims it; then it
        # belongs to that batch.
        _LEDGER.c.batch_id == bindparam("key_batch_id"),
        or_(_LEDGER.c.status == ItemStatus.PROCESSING, _LEDGER.c.status == ItemStatus.PENDING),
    )
    .values(
        output=bindparam("output"),
        confidence=bindparam("confidence"),
        level=bindparam("level"),
        error=bindparam("error"),
        attempts=bindparam("attempts"),
        claimed_by=None,
        status=bindparam("status"),
    )
)


# -- engines --------------------------------------------------------------------------------


class StoreError(RuntimeError):
    """The store could not be read or written; the message names the database (no password)."""

    @classmethod
    def wrap(cls, url: str, error: Exception) -> StoreError:
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        return cls(f"the store at {redact_url(url)} failed: {type(error).__name__}: {detail}")


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Build an engine for `url`: a SQLite file (parent folders created) or PostgreSQL.

    `sqlite://` (no path) gives one shared in-memory database, handy in tests.
    PostgreSQL URLs use psycopg 3: `postgresql+psycopg://user@host:5432/db`. Statement
    parameters (item payloads and outputs) are kept out of error messages and logs.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            return create_engine(
                url,
                echo=echo,
                hide_parameters=True,
                connect_args={"check_same_thread": False},
                poolclass=StaticPool,
            )
        from pathlib import Path

        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, echo=echo, hide_parameters=True, connect_args={"check_same_thread": False, "timeout": 60}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, echo=echo, hide_parameters=True, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (report, the UI's scaling task) run while a stage writes;
    # NORMAL sync is durable across process crashes (not power loss), which is the
    # failure this ledger is built to survive.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, safe for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: show no part of it that could hold a secret
        return "<unparsable database URL>"


def open_session(engine: Engine) -> Session:
    """A session whose objects stay readable after commit (they are handed back to callers)."""
    return Session(engine, expire_on_commit=False)


def create_schema(engine: Engine) -> None:
    """Create the tables and indexes that do not exist yet (idempotent).

    Safe when several processes create the schema at the same moment: on PostgreSQL a
    transaction-scoped advisory lock serialises them (their CREATE TYPE / CREATE TABLE would
    otherwise collide); on a SQLite file an exclusive lock on a file beside it does.
    """
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if database and database != ":memory:":
        import fcntl

        with open(f"{database}.schema-lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                SQLModel.metadata.create_all(engine)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('batchpilot.create_schema'))"))
        SQLModel.metadata.create_all(connection)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


# -- runs -----------------------------------------------------------------------------------


def new_run_id() -> str:
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
    now = _now()
    inserted = session.execute(
        _insert_ignoring_conflicts(session, PipelineRun).values(
            run_id=run_id,
            pipeline=pipeline,
            status=RunStatus.RUNNING,
            source=source,
            processor=processor,
            config=config,
            items_loaded=False,
            item_count=0,
            created_at=now,
            updated_at=now,
        )
    ).rowcount
    session.commit()
    run = session.get(PipelineRun, run_id, populate_existing=True)
    assert run is not None
    if run.pipeline != pipeline:
        raise ValueError(f"run {run_id!r} belongs to pipeline {run.pipeline!r}, not {pipeline!r}")
    if not inserted:
        run.status = RunStatus.RUNNING
        run.updated_at = now
        session.add(run)
        session.commit()
        session.refresh(run)
    return run


def get_run(session: Session, run_id: str) -> PipelineRun | None:
    return session.get(PipelineRun, run_id)


def latest_run(session: Session, pipeline: str | None = None) -> PipelineRun | None:
    """The most recently created run (of `pipeline` when given)."""
    query = select(PipelineRun)
    if pipeline is not None:
        query = query.where(PipelineRun.pipeline == pipeline)
    return session.exec(query.order_by(col(PipelineRun.created_at).desc()).limit(1)).first()


def latest_unfinished_run(session: Session, pipeline: str) -> PipelineRun | None:
    query = (
        select(PipelineRun)
        .where(PipelineRun.pipeline == pipeline, PipelineRun.status != RunStatus.COMPLETED)
        .order_by(col(PipelineRun.created_at).desc())
        .limit(1)
    )
    return session.exec(query).first()


def finish_run(session: Session, run_id: str, status: RunStatus) -> None:
    session.execute(
        update(PipelineRun)
        .where(col(PipelineRun.run_id) == run_id)
        .values(status=status, updated_at=_now())
    )
    session.commit()


# -- the ledger -----------------------------------------------------------------------------


def load_items(
    session: Session, run_id: str, rows: Iterable[tuple[int, str, dict[str, Any]]]
) -> int:
    """Insert `(seq, item_id, payload)` rows into the ledger in one bulk statement.

    Rows already present (a load resumed after a crash) are left as they are.
    Returns the number of rows handed in. The caller commits.
    """
    values = [
        {
            "run_id": run_id,
            "item_id": item_id,
            "seq": seq,
            "status": ItemStatus.PENDING,
            "attempts": 0,
            "payload": payload,
        }
        for seq, item_id, payload in rows
    ]
    if not values:
        return 0
    # On the Core table, not the ORM entity: a plain executemany. The ORM's bulk INSERT
    # collects and re-keys every row's parameters, which halves the rate of a large load.
    session.execute(_insert_ignoring_conflicts(session, _LEDGER), values)
    return len(values)


def _insert_ignoring_conflicts(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    raise ValueError(f"unsupported database dialect {dialect!r}: use SQLite or PostgreSQL")


def mark_loaded(session: Session, run_id: str) -> int:
    """Flag the run's ledger as complete and return its item count."""
    count = session.exec(
        select(func.count()).select_from(LedgerItem).where(LedgerItem.run_id == run_id)
    ).one()
    session.execute(
        update(PipelineRun)
        .where(col(PipelineRun.run_id) == run_id)
        .values(items_loaded=True, item_count=count, updated_at=_now())
    )
    session.commit()
    return int(count)


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    """A ledger row handed to a stage: its id, position, payload and failed attempts so far."""

    item_id: str
    seq: int
    payload: dict[str, Any]
    attempts: int


def claim_items(
    session: Session, run_id: str, limit: int, *, batch_id: int, worker: str
) -> list[ClaimedItem]:
    """Move up to `limit` pending items (in source order) to processing, for `batch_id`.

    One statement: on PostgreSQL the inner select locks rows with SKIP LOCKED, so
    concurrent claimers get disjoint items. The caller commits.
    """
    if limit <= 0:
        return []
    # A materialised CTE, not `IN (subquery)`: PostgreSQL may run an IN-subquery once per
    # outer row, and with LIMIT + SKIP LOCKED each run picks other rows, so the update
    # would claim far more than `limit` items.
    candidates = (
        select(LedgerItem.item_id)
        .where(LedgerItem.run_id == run_id, LedgerItem.status == ItemStatus.PENDING)
        .order_by(col(LedgerItem.seq))
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("claimable")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    statement = (
        update(LedgerItem)
        .where(col(LedgerItem.run_id) == run_id, col(LedgerItem.item_id) == candidates.c.item_id)
        .values(
            status=ItemStatus.PROCESSING,
            batch_id=batch_id,
            claimed_by=worker,
            claimed_at=_now(),
        )
        .returning(LedgerItem.item_id, LedgerItem.seq, LedgerItem.payload, LedgerItem.attempts)
    )
    rows = session.execute(statement, execution_options={"synchronize_session": False}).all()
    # Plain rows, not `LedgerItem` table models: building a table model runs defaults and
    # instrumented setattr for all 13 fields, about nine tenths of a claim's time.
    items = [ClaimedItem(item_id=row[0], seq=row[1], payload=row[2], attempts=row[3]) for row in rows]
    items.sort(key=lambda item: item.seq)
    return items


def record_item_results(
    session: Session,
    run_id: str,
    results: Sequence[ItemResult],
    *,
    batch_id: int,
    attempts_before: dict[str, int],
    max_attempts: int,
) -> None:
    """Write every item's outcome in one bulk UPDATE by primary key. The caller commits.

    A failed item goes back to pending while it has attempts left, else it is failed for good.
    Only items still `batch_id`'s are written: an item whose claim was taken back and given
    to another batch keeps that batch's outcome.
    """
    rows: list[dict[str, Any]] = []
    for result in results:
        attempts = attempts_before.get(result.item_id, 0) + (0 if result.success else 1)
        if result.success:
            status = ItemStatus.DONE
        else:
            status = ItemStatus.PENDING if attempts < max_attempts else ItemStatus.FAILED
        rows.append(
            {
                "key_run_id": run_id,
                "key_item_id": result.item_id,
                "key_batch_id": batch_id,
                "output": result.output,
                "confidence": result.confidence,
                "level": (result.level or ConfidenceLevel.LOW).value,
                "error": result.error,
                "attempts": attempts,
                "status": status,
            }
        )
    if rows:
        # A Core executemany by primary key: the ORM's bulk UPDATE re-keys every row first.
        session.execute(_RESULT_UPDATE, rows)


def release_items(session: Session, run_id: str, *, batch_id: int) -> None:
    """Return the items `batch_id` still holds to pending (the batch failed whole). The caller commits.

    Items whose claim has since passed to another batch are left to it.
    """
    session.execute(
        update(LedgerItem)
        .where(col(LedgerItem.run_id) == run_id, col(LedgerItem.batch_id) == batch_id)
        .where(col(LedgerItem.status) == ItemStatus.PROCESSING)
        .values(status=ItemStatus.PENDING, claimed_by=None, claimed_at=None),
        execution_options={"synchronize_session": False},
    )


def recover_abandoned(
    session: Session, run_id: str, *, older_than: timedelta | None = None, worker: str | None = None
) -> int:
    """Send items left in processing by a dead stage back to pending; returns how many.

    With `older_than`, only claims older than that are taken back (several live
    processes share the run on PostgreSQL); without it every claim is taken back (SQLite's
    single-writer rule: no other process is working on the run). With `worker`, only that
    worker's claims are taken back (its stage failed before it could release them).
    """
    item_filter = [col(LedgerItem.run_id) == run_id, col(LedgerItem.status) == ItemStatus.PROCESSING]
    batch_filter = [col(BatchRecord.run_id) == run_id, col(BatchRecord.status) == BatchStatus.PROCESSING]
    if worker is not None:
        item_filter.append(col(LedgerItem.claimed_by) == worker)
        batch_filter.append(col(BatchRecord.worker) == worker)
    if older_than is not None:
        cutoff = _now() - older_than
        item_filter.append(col(LedgerItem.claimed_at) < cutoff)
        batch_filter.append(col(BatchRecord.started_at) < cutoff)
    recovered = session.execute(
        update(LedgerItem)
        .where(*item_filter)
        .values(status=ItemStatus.PENDING, claimed_by=None, claimed_at=None),
        execution_options={"synchronize_session": False},
    ).rowcount
    session.execute(
        update(BatchRecord)
        .where(*batch_filter)
        .values(status=BatchStatus.ABANDONED, finished_at=_now()),
        execution_options={"synchronize_session": False},
    )
    session.commit()
    session.expire_all()
    return int(recovered or 0)


def _worker_lock_key(worker: str) -> int:
    # pg_advisory_lock takes a signed 64-bit key: a stable hash of the worker's name.
    digest = hashlib.blake2b(f"batchpilot-worker:{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class WorkerLock:
    """A PostgreSQL session advisory lock that says `worker` is alive, held on a connection of its own.

    The lock vanishes with a dead process's connection, so `recover_dead_claims` can tell a
    crashed worker's claims from a live one's. It also vanishes when the database restarts
    or the network drops the connection: `refresh` notices and takes it again.
    """

    def __init__(self, engine: Engine, worker: str) -> None:
        self.engine = engine
        self.worker = worker
        self._key = _worker_lock_key(worker)
        self._connection: Connection | None = None
        self._take()

    def _take(self) -> None:
        connection = self.engine.connect()
        try:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
            connection.commit()
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def refresh(self) -> bool:
        """Make sure the lock is held; returns True when it had been lost and was taken again.

        Raises a SQLAlchemy error when the database cannot be reached to take it again.
        """
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT 1"))
                self._connection.commit()
                return False
            except DBAPIError as error:
                if not error.connection_invalidated:
                    raise
                self._connection.close()
                self._connection = None
        self._take()
        return True

    def close(self) -> None:
        """Release the lock (the worker stops)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        # A session lock outlives `close()` on a pooled connection: unlock it, and should
        # that fail, drop the database connection itself rather than return it to the pool.
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
            connection.commit()
        except DBAPIError:
            connection.invalidate()
        finally:
            connection.close()


def hold_worker_lock(engine: Engine, worker: str) -> WorkerLock | None:
    """On PostgreSQL, take the lock that says `worker` is alive (see `WorkerLock`).

    Close it when the worker stops. SQLite needs none (single writer): returns None.
    """
    if not is_postgres(engine):
        return None
    return WorkerLock(engine, worker)


def recover_dead_claims(session: Session, run_id: str) -> int:
    """Send items claimed by workers that are no longer alive back to pending; returns how many.

    On SQLite every claim is taken back (single-writer rule: no other process works on the
    run). On PostgreSQL a claim is taken back when its worker's advisory lock can be taken,
    i.e. no live connection holds it (see `hold_worker_lock`).
    """
    if session.get_bind().dialect.name != "postgresql":
        return recover_abandoned(session, run_id)
    owners = session.exec(
        select(LedgerItem.claimed_by)
        .where(LedgerItem.run_id == run_id, LedgerItem.status == ItemStatus.PROCESSING)
        .distinct()
    ).all()
    recovered = 0
    for owner in owners:
        if owner is None:
            continue
        key = _worker_lock_key(owner)
        got = session.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
        if got:
            try:
                recovered += recover_abandoned(session, run_id, worker=owner)
            finally:
                session.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                session.commit()
    return recovered


def count_items(session: Session, run_id: str) -> dict[ItemStatus, int]:
    """Items of the run by status (every status present, zero when none)."""
    rows = session.exec(
        select(LedgerItem.status, func.count())
        .where(LedgerItem.run_id == run_id)
        .group_by(LedgerItem.status)
    ).all()
    counts = {status: 0 for status in ItemStatus}
    for status, count in rows:
        counts[ItemStatus(status)] = int(count)
    return counts


def has_pending(session: Session, run_id: str) -> bool:
    row = session.exec(
        select(LedgerItem.item_id)
        .where(LedgerItem.run_id == run_id, LedgerItem.status == ItemStatus.PENDING)
        .limit(1)
    ).first()
    return row is not None


# -- batches ---------------------------------------------------------------------------------


def open_batch(
    session: Session, *, run_id: str, pipeline: str, batch_size: int, worker: str
) -> BatchRecord:
    """Create the record of a starting batch, numbered as the run's next stage. Commits."""
    stage = session.exec(
        select(func.count()).select_from(BatchRecord).where(BatchRecord.run_id == run_id)
    ).one()
    record = BatchRecord(
        run_id=run_id, pipeline=pipeline, stage=int(stage) + 1, batch_size=batch_size, worker=worker
    )
    session.add(record)
    session.commit()
    session.refresh(record)
    return record


def close_batch(session: Session, record: BatchRecord, result: BatchResult) -> BatchRecord:
    """Fill a batch record from its result. The caller commits (with the item results)."""
    record.total_items = result.total_items
    record.successful_items = result.successful_items
    record.failed_items = result.failed_items
    record.high = result.confidence_distribution.get(ConfidenceLevel.HIGH, 0)
    record.medium = result.confidence_distribution.get(ConfidenceLevel.MEDIUM, 0)
    record.low = result.confidence_distribution.get(ConfidenceLevel.LOW, 0)
    record.seconds = result.processing_time
    record.status = BatchStatus.FAILED_WHOLE if result.failed_whole else BatchStatus.COMPLETED
    record.error = result.error
    record.finished_at = _now()
    session.add(record)
    return record


def _batch_result(
    batch_id: int | None,
    batch_size: int,
    total_items: int,
    successful_items: int,
    failed_items: int,
    high: int,
    medium: int,
    low: int,
    seconds: float,
    status: BatchStatus,
    error: str | None,
) -> BatchResult:
    failed_whole = status == BatchStatus.FAILED_WHOLE
    distribution = {ConfidenceLevel.HIGH: high, ConfidenceLevel.MEDIUM: medium, ConfidenceLevel.LOW: low}
    if failed_whole and high + medium + low == 0:
        distribution = {ConfidenceLevel.LOW: total_items}
    return BatchResult(
        batch_id=str(batch_id),
        batch_size=batch_size,
        total_items=total_items,
        successful_items=successful_items,
        failed_items=failed_items,
        processing_time=seconds,
        confidence_distribution=distribution,
        failed_whole=failed_whole,
        error=error,
    )


def recent_batches(session: Session, pipeline: str, limit: int) -> list[BatchResult]:
    """The last `limit` finished batches of `pipeline` across its runs, oldest first.

    A bounded, indexed read (pipeline, id): its cost does not grow with the history.
    """
    # The columns a `BatchResult` needs, not whole `BatchRecord` entities: loading an entity
    # builds an instrumented object and parses two timestamps, half the read of the window.
    rows = session.execute(
        select(
            BatchRecord.id,
            BatchRecord.batch_size,
            BatchRecord.total_items,
            BatchRecord.successful_items,
            BatchRecord.failed_items,
            BatchRecord.high,
            BatchRecord.medium,
            BatchRecord.low,
            BatchRecord.seconds,
            BatchRecord.status,
            BatchRecord.error,
        )
        .where(
            BatchRecord.pipeline == pipeline,
            col(BatchRecord.status).in_([BatchStatus.COMPLETED, BatchStatus.FAILED_WHOLE]),
        )
        .order_by(col(BatchRecord.id).desc())
        .limit(limit)
    ).all()
    return [_batch_result(*row) for row in reversed(rows)]


def run_batches(session: Session, run_id: str) -> list[BatchRecord]:
    """Every batch record of a run, in stage order."""
    return list(
        session.exec(
            select(BatchRecord).where(BatchRecord.run_id == run_id).order_by(col(BatchRecord.id))
        ).all()
    )


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
    """Persist one decision. Commits."""
    record = DecisionRecord(
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
    session.add(record)
    session.commit()
    session.refresh(record)
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
    return list(
        session.exec(
            select(DecisionRecord)
            .where(DecisionRecord.run_id == run_id)
            .order_by(col(DecisionRecord.id))
        ).all()
    )


# -- a store bound to one run -------------------------------------------------------------------


class PipelineStore:
    """The manager's and the controller's view of the store: one pipeline run on one engine.

    It opens a short session per call, so it can be handed to code that runs between
    stages without holding a connection.
    """

    def __init__(self, engine: Engine, *, pipeline: str, run_id: str) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.run_id = run_id

    def recent_batches(self, limit: int) -> list[BatchResult]:
        with open_session(self.engine) as session:
            return recent_batches(session, self.pipeline, limit)

    def record_decision(self, old_size: int, decision: ScalingDecision) -> None:
        with open_session(self.engine) as session:
            last_batch = session.exec(
                select(func.max(BatchRecord.id)).where(BatchRecord.run_id == self.run_id)
            ).one()
            record_decision(
                session,
                run_id=self.run_id,
                pipeline=self.pipeline,
                batch_id=last_batch,
                old_size=old_size,
                decision=decision,
            )
