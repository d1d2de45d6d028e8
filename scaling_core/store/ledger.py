"""The item ledger: load a run's items, claim them for batches, write their results back.

Each function takes a `Session`. Claiming items is one `UPDATE ... WHERE item_id IN (SELECT
... FOR UPDATE SKIP LOCKED)` statement, so on PostgreSQL several stages (of one run or of
several processes) never claim the same item. SQLite has a single writer: its statements
are serialised by the database lock, which is safe but lets only one process write at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import bindparam, func, or_, text, update
from sqlmodel import Session, col, select

from scaling_core.results import ConfidenceLevel, ItemResult
from scaling_core.store.engine import insert_ignoring_conflicts, worker_lock_key
from scaling_core.store.tables import (
    RETRY_CONDITION,
    BatchRecord,
    BatchStatus,
    ClaimedItem,
    ItemStatus,
    LedgerItem,
    PipelineRun,
    now,
)

_LEDGER = LedgerItem.__table__  # type: ignore[attr-defined]

# Every item's result, by primary key, as one executemany (bind names must differ from the
# column names that the SET clause binds).
def _result_update(*, charged: bool) -> Any:
    statement = (
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
    if charged:
        statement = statement.values(cost=func.coalesce(_LEDGER.c.cost, 0.0) + bindparam("charge"))
    return statement


_RESULT_UPDATE = _result_update(charged=False)
_CHARGED_RESULT_UPDATE = _result_update(charged=True)
"""The same, adding each item's charge for this batch to its cost."""


# A materialised CTE, not `IN (subquery)`: PostgreSQL may run an IN-subquery once per outer
# row, and with LIMIT + SKIP LOCKED each run picks other rows, so the update would claim far
# more than `limit` items. Built once with bind parameters (compiled once, not per stage), on
# the Core table: the ORM's bulk UPDATE path costs a few ms per claim.
def _claim_statement(*where: Any, weighed: bool = False) -> Any:
    columns = (_LEDGER.c.item_id, _LEDGER.c.seq, _LEDGER.c.weight) if weighed else (_LEDGER.c.item_id,)
    claimable = (
        select(*columns)
        .where(_LEDGER.c.run_id == bindparam("claim_run_id"), *where)
        .order_by(_LEDGER.c.seq)
        .limit(bindparam("claim_limit"))
        .with_for_update(skip_locked=True)
        .cte("claimable")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    if weighed:
        # PostgreSQL refuses a window function beside FOR UPDATE, so the running sum is taken
        # over the rows locked above, in a second step: the longest prefix (in ledger order)
        # whose summed weight stays within the budget, and always the first row, however
        # heavy. The rows locked past that prefix stay pending; their locks end with the claim.
        ordered = (
            select(
                claimable.c.item_id,
                func.sum(func.coalesce(claimable.c.weight, 0.0)).over(order_by=claimable.c.seq).label("running"),
                func.row_number().over(order_by=claimable.c.seq).label("position"),
            )
            .cte("ordered")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        claimable = (
            select(ordered.c.item_id)
            .where(or_(ordered.c.position == 1, ordered.c.running <= bindparam("claim_max_weight")))
            .cte("within_budget")
        )
    return (
        update(_LEDGER)
        .where(_LEDGER.c.run_id == bindparam("claim_run_id"), _LEDGER.c.item_id == claimable.c.item_id)
        .values(
            status=ItemStatus.PROCESSING,
            batch_id=bindparam("claim_batch_id"),
            claimed_by=bindparam("claim_worker"),
            claimed_at=bindparam("claim_at"),
        )
        .returning(_LEDGER.c.item_id, _LEDGER.c.seq, _LEDGER.c.payload, _LEDGER.c.attempts, _LEDGER.c.weight)
    )


# Pending items that were in a batch before, written as the partial index `RETRY_INDEX` is
# defined (literally, not with bound values), so that SQLite and PostgreSQL use it.
_RETRIED = text(RETRY_CONDITION)
_PENDING = _LEDGER.c.status == ItemStatus.PENDING
_SUSPECTS = (_RETRIED, _LEDGER.c.batch_id == bindparam("claim_suspects_of"))
_CLAIMS = {
    (False, False): _claim_statement(_PENDING),
    (True, False): _claim_statement(*_SUSPECTS),
    (False, True): _claim_statement(_PENDING, weighed=True),
    (True, True): _claim_statement(*_SUSPECTS, weighed=True),
}
"""The claim statements by (crash suspects only, capped by weight)."""


def next_claim(
    session: Session, run_id: str, limit: int, *, max_weight: float | None = None, suspects_of: int | None = None
) -> tuple[int, float]:
    """(items, summed weight) that `claim_items` with the same arguments would claim now, claiming nothing.

    The same walk in ledger order within `max_weight`, read without locks: what a stage of
    `limit` would take when no other worker claims first (the cost budget prices it).
    """
    if limit <= 0:
        return 0, 0.0
    where = (_PENDING,) if suspects_of is None else (_RETRIED, _LEDGER.c.batch_id == suspects_of)
    candidates = (
        select(_LEDGER.c.seq, func.coalesce(_LEDGER.c.weight, 0.0).label("weight"))
        .where(_LEDGER.c.run_id == run_id, *where)
        .order_by(_LEDGER.c.seq)
        .limit(limit)
        .subquery()
    )
    ordered = select(
        candidates.c.weight,
        func.sum(candidates.c.weight).over(order_by=candidates.c.seq).label("running"),
        func.row_number().over(order_by=candidates.c.seq).label("position"),
    ).subquery()
    taken = select(func.count(), func.coalesce(func.sum(ordered.c.weight), 0.0))
    if max_weight is not None:
        taken = taken.where(or_(ordered.c.position == 1, ordered.c.running <= max_weight))
    items, weight = session.execute(taken).one()
    return int(items), float(weight)


class ItemCounts(BaseModel):
    """A run's items by ledger status (one field per `ItemStatus`), and the sums reports show."""

    # A status without a field is refused, not dropped from the counts.
    model_config = ConfigDict(frozen=True, extra="forbid")

    pending: int = 0
    processing: int = 0
    done: int = 0
    failed: int = 0

    @property
    def unfinished(self) -> int:
        """Items not finished yet: waiting for a stage, or in one."""
        return self.pending + self.processing

    @property
    def total(self) -> int:
        """Every item of the run."""
        return self.pending + self.processing + self.done + self.failed

    def __getitem__(self, status: ItemStatus) -> int:
        """The count of one status: `counts[ItemStatus.DONE]`."""
        return int(getattr(self, ItemStatus(status).value))


LedgerRow = tuple[int, str, dict[str, Any]] | tuple[int, str, dict[str, Any], float | None]
"""A row to load: `(seq, item_id, payload)`, or `(seq, item_id, payload, weight)`."""


def load_items(session: Session, run_id: str, rows: Iterable[LedgerRow]) -> int:
    """Insert `(seq, item_id, payload[, weight])` rows into the ledger in one bulk statement.

    Rows already present (a load resumed after a crash) are left as they are.
    Returns the number of rows handed in. The caller commits.
    """
    values = [
        {
            "run_id": run_id,
            "item_id": row[1],
            "seq": row[0],
            "status": ItemStatus.PENDING,
            "attempts": 0,
            "payload": row[2],
            "weight": float(row[3]) if len(row) > 3 and row[3] is not None else None,
        }
        for row in rows
    ]
    if not values:
        return 0
    # On the Core table, not the ORM entity: a plain executemany. The ORM's bulk INSERT
    # collects and re-keys every row's parameters, which halves the rate of a large load.
    session.execute(insert_ignoring_conflicts(session, _LEDGER), values)
    return len(values)


def mark_loaded(session: Session, run_id: str) -> int:
    """Flag the run's ledger as complete and return its item count. Commits."""
    count = session.exec(
        select(func.count()).select_from(LedgerItem).where(LedgerItem.run_id == run_id)
    ).one()
    session.execute(
        update(PipelineRun)
        .where(col(PipelineRun.run_id) == run_id)
        .values(items_loaded=True, item_count=count, updated_at=now())
    )
    session.commit()
    return int(count)


def claim_items(
    session: Session,
    run_id: str,
    limit: int,
    *,
    batch_id: int,
    worker: str,
    suspects_of: int | None = None,
    max_weight: float | None = None,
) -> list[ClaimedItem]:
    """Move up to `limit` pending items (in source order) to processing, for `batch_id`.

    With `suspects_of`, only the pending items of that crashed batch (its crash suspects,
    see `crash_suspects`). With `max_weight`, the claim stops short of `limit` rather than
    pass that summed weight (items without a weight weigh 0): it takes the pending items in
    ledger order while their running sum stays within it, never skipping one to take a
    lighter one after it, and the first item always, alone when it alone is heavier. One
    statement: on PostgreSQL the inner select locks rows with SKIP LOCKED, so concurrent
    claimers get disjoint items. The caller commits.
    """
    if limit <= 0:
        return []
    if max_weight is not None and not max_weight > 0:
        raise ValueError(f"max_weight must be positive when given, got {max_weight}")
    parameters: dict[str, Any] = {
        "claim_run_id": run_id,
        "claim_limit": limit,
        "claim_batch_id": batch_id,
        "claim_worker": worker,
        "claim_at": now(),
    }
    if suspects_of is not None:
        parameters["claim_suspects_of"] = suspects_of
    if max_weight is not None:
        parameters["claim_max_weight"] = float(max_weight)
    statement = _CLAIMS[(suspects_of is not None, max_weight is not None)]
    rows = session.execute(statement, parameters).all()
    # Plain rows, not `LedgerItem` table models: building a table model runs defaults and
    # instrumented setattr for all 13 fields, about nine tenths of a claim's time.
    items = [ClaimedItem(**row._mapping) for row in rows]
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
    charges: dict[str, float] | None = None,
) -> None:
    """Write every item's outcome in one bulk UPDATE by primary key. The caller commits.

    A failed item goes back to pending while it has attempts left, else it is failed for good.
    Only items still `batch_id`'s are written: an item whose claim was taken back and given
    to another batch keeps that batch's outcome. With `charges`, each item's charge for this
    batch (by item id) is added to its cost.
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
        if charges is not None:
            rows[-1]["charge"] = charges.get(result.item_id, 0.0)
    if rows:
        # A Core executemany by primary key: the ORM's bulk UPDATE re-keys every row first.
        session.execute(_RESULT_UPDATE if charges is None else _CHARGED_RESULT_UPDATE, rows)


def release_items(
    session: Session, run_id: str, *, batch_id: int, charge: tuple[float, float] | None = None
) -> None:
    """Return the items `batch_id` still holds to pending (the batch failed whole). The caller commits.

    Items whose claim has since passed to another batch are left to it. With `charge`
    (cost per item, cost per weight unit), each item's cost grows by what this batch cost it.
    """
    values: dict[str, Any] = {"status": ItemStatus.PENDING, "claimed_by": None, "claimed_at": None}
    if charge is not None:
        per_item, per_weight = charge
        values["cost"] = (
            func.coalesce(_LEDGER.c.cost, 0.0) + per_item + func.coalesce(_LEDGER.c.weight, 0.0) * per_weight
        )
    session.execute(
        update(_LEDGER)
        .where(_LEDGER.c.run_id == run_id, _LEDGER.c.batch_id == batch_id)
        .where(_LEDGER.c.status == ItemStatus.PROCESSING)
        .values(**values)
    )


def recover_abandoned(
    session: Session, run_id: str, *, older_than: timedelta | None = None, worker: str | None = None
) -> int:
    """Release claims on purpose, without counting an attempt; returns how many items went back. Commits.

    For claims whose batch did not crash: this worker's own stage that failed on a store
    error, or a stop asked for (an interrupt). Their items go back to pending as they were,
    and their batches are marked abandoned with no items (they are not crash suspects). Claims
    of a process that died go through `recover_crashed` instead.

    With `older_than`, only claims older than that are released; with `worker`, only that
    worker's claims; with neither, every claim of the run.
    """
    item_filter = [col(LedgerItem.run_id) == run_id, col(LedgerItem.status) == ItemStatus.PROCESSING]
    batch_filter = [col(BatchRecord.run_id) == run_id, col(BatchRecord.status) == BatchStatus.PROCESSING]
    if worker is not None:
        item_filter.append(col(LedgerItem.claimed_by) == worker)
        batch_filter.append(col(BatchRecord.worker) == worker)
    if older_than is not None:
        cutoff = now() - older_than
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
        .values(status=BatchStatus.ABANDONED, finished_at=now()),
        execution_options={"synchronize_session": False},
    )
    session.commit()
    session.expire_all()
    return int(recovered or 0)


def recover_crashed(
    session: Session,
    run_id: str,
    *,
    max_attempts: int,
    worker: str | None = None,
    batch_id: int | None = None,
    cause: str = "the process died",
) -> int:
    """Take back the claims of batches whose process died, counting one attempt each; returns how many. Commits.

    Each item gets one attempt more and the error "<cause> while this item was in stage N, a
    batch of n items". It goes back to pending, a crash suspect (`crash_suspects`), unless it
    crashed alone and its attempts reached `max_attempts`: then it is failed for good. A
    batch of several items only says that one of them may crash the process, so it fails
    none of them for good. Each batch is marked abandoned, with the number of items taken
    back and the cause.

    With `worker`, only that worker's claims (it is known dead); with `batch_id`, only that
    batch's (its processor's own process died); with neither, every claim of the run (SQLite:
    no other process works on the run).
    """
    if max_attempts <= 0:
        raise ValueError(f"max_attempts must be positive, got {max_attempts}")
    item_filter = [_LEDGER.c.run_id == run_id, _LEDGER.c.status == ItemStatus.PROCESSING]
    if worker is not None:
        item_filter.append(_LEDGER.c.claimed_by == worker)
    if batch_id is not None:
        item_filter.append(_LEDGER.c.batch_id == batch_id)
    groups = session.execute(
        select(_LEDGER.c.batch_id, func.count()).where(*item_filter).group_by(_LEDGER.c.batch_id)
    ).all()
    stages = dict(
        session.execute(
            select(BatchRecord.id, BatchRecord.stage).where(
                col(BatchRecord.id).in_([group for group, _ in groups if group is not None])
            )
        ).all()
    )
    recovered = 0
    for crashed, items in groups:
        where = f"stage {stages[crashed]}" if crashed in stages else "a stage"
        group = [*item_filter, _LEDGER.c.batch_id.is_(None) if crashed is None else _LEDGER.c.batch_id == crashed]
        values = {
            "attempts": _LEDGER.c.attempts + 1,
            "error": f"{cause} while this item was in {where}, a batch of {items} item{'s' * (items != 1)}",
            "claimed_by": None,
            "claimed_at": None,
        }
        if items == 1:
            recovered += session.execute(
                update(_LEDGER)
                .where(*group, _LEDGER.c.attempts + 1 >= max_attempts)
                .values(status=ItemStatus.FAILED, **values)
            ).rowcount
        recovered += session.execute(update(_LEDGER).where(*group).values(status=ItemStatus.PENDING, **values)).rowcount
        if crashed is not None:
            session.execute(
                update(BatchRecord)
                .where(col(BatchRecord.id) == crashed, col(BatchRecord.status) == BatchStatus.PROCESSING)
                .values(
                    status=BatchStatus.ABANDONED,
                    finished_at=now(),
                    total_items=items,
                    error=f"{cause}; its {items} item{'s' * (items != 1)} taken back, one attempt each",
                ),
                execution_options={"synchronize_session": False},
            )
    session.commit()
    session.expire_all()
    return recovered


def recover_dead_claims(session: Session, run_id: str, *, max_attempts: int) -> int:
    """Take back the claims of workers that are no longer alive, as crashes; returns how many.

    On SQLite every claim is taken back (single-writer rule: no other process works on the
    run). On PostgreSQL a claim is taken back when its worker's advisory lock can be taken,
    i.e. no live connection holds it (see `hold_worker_lock`). Each item taken back counts
    one attempt (see `recover_crashed`).
    """
    if session.get_bind().dialect.name != "postgresql":
        return recover_crashed(session, run_id, max_attempts=max_attempts)
    owners = session.exec(
        select(LedgerItem.claimed_by)
        .where(LedgerItem.run_id == run_id, LedgerItem.status == ItemStatus.PROCESSING)
        .distinct()
    ).all()
    recovered = 0
    for owner in owners:
        if owner is None:
            continue
        key = worker_lock_key(owner)
        got = session.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
        if got:
            try:
                recovered += recover_crashed(session, run_id, max_attempts=max_attempts, worker=owner)
            finally:
                session.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                session.commit()
    return recovered


@dataclass(frozen=True, slots=True)
class CrashSuspects:
    """The pending items of one crashed batch: one of them may take its process down.

    They are claimed before any other item and apart from them (`claim_items(...,
    suspects_of=batch_id)`), at most `claim_size` at a time.
    """

    batch_id: int
    """The crashed batch (status abandoned) the items were in."""
    crashed_items: int
    """How many items that batch held when its process died."""
    pending: int
    """How many of them wait to be claimed again."""

    @property
    def claim_size(self) -> int:
        """Half the crashed batch, rounded up: ceil(n / 2).

        Rounded up so that the two halves take two stages, not three (for n = 3: 2 then 1,
        not 1, 1, 1); for n >= 2 it is under n, so every further crash halves the suspects
        again, and the item that crashes is alone after ceil(log2 n) crashes. A suspect
        that crashed alone is claimed alone.
        """
        return (self.crashed_items + 1) // 2


def crash_suspects(session: Session, run_id: str) -> CrashSuspects | None:
    """The crashed batch whose suspects go next, or None when no suspect is pending.

    A suspect is a pending item whose last batch crashed: an abandoned batch that counts its
    items (`recover_crashed`). Of several crashed batches, the one with the fewest items goes
    first (the latest, on a tie): its suspects are the likeliest culprits, and bisecting it
    first isolates the item soonest.

    Two bounded reads: the run's crashed batches (one row per crash), then their pending items
    through the partial index of retries; a run without a crash stops after the first.
    """
    crashed = dict(
        session.execute(
            select(BatchRecord.id, BatchRecord.total_items).where(
                BatchRecord.run_id == run_id,
                BatchRecord.status == BatchStatus.ABANDONED,
                col(BatchRecord.total_items) > 0,
            )
        ).all()
    )
    if not crashed:
        return None
    pending = session.execute(
        select(_LEDGER.c.batch_id, func.count())
        .where(_LEDGER.c.run_id == run_id, _RETRIED, _LEDGER.c.batch_id.in_(list(crashed)))
        .group_by(_LEDGER.c.batch_id)
    ).all()
    if not pending:
        return None
    batch_id, count = min(pending, key=lambda row: (crashed[row[0]], -row[0]))
    return CrashSuspects(batch_id=batch_id, crashed_items=crashed[batch_id], pending=count)


def count_items(session: Session, run_id: str) -> ItemCounts:
    """Items of the run by status (zero for a status no item has)."""
    rows = session.execute(
        select(LedgerItem.status, func.count())
        .where(LedgerItem.run_id == run_id)
        .group_by(LedgerItem.status)
    ).all()
    return ItemCounts.model_validate({ItemStatus(status).value: count for status, count in rows})


def count_batch_items(session: Session, run_id: str, batch_id: int, status: ItemStatus) -> int:
    """Items of the run last claimed by batch `batch_id` that have `status`."""
    return session.execute(
        select(func.count()).where(
            _LEDGER.c.run_id == run_id, _LEDGER.c.batch_id == batch_id, _LEDGER.c.status == status
        )
    ).scalar_one()


def has_pending(session: Session, run_id: str) -> bool:
    """True while the run has an item waiting to be claimed."""
    row = session.exec(
        select(LedgerItem.item_id)
        .where(LedgerItem.run_id == run_id, LedgerItem.status == ItemStatus.PENDING)
        .limit(1)
    ).first()
    return row is not None
