"""A run's results read out of the ledger, one row per item, in source order, in bounded memory.

`iter_results` streams the ledger with one ordered query whose rows are fetched in chunks
(a server-side cursor on PostgreSQL, SQLite's own step-by-step cursor), so exporting a
million items holds one chunk in memory at a time. `list_runs` lists the runs of a store,
newest first, for the `runs` command.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, func, select

from scaling_core.store.tables import BatchRecord, ItemStatus, LedgerItem, PipelineRun, RunStatus

RESULT_FIELDS: tuple[str, ...] = (
    "id", "success", "confidence", "level", "output", "error", "attempts", "stage", "weight", "cost",
)
"""The fields of an exported row, in order; `iter_results(..., with_source=True)` adds `source`."""

EXPORT_CHUNK = 5_000
"""Rows fetched from the database at a time while streaming a run's results."""

_LEDGER = LedgerItem.__table__  # type: ignore[attr-defined]
_BATCHES = BatchRecord.__table__  # type: ignore[attr-defined]
_RUNS = PipelineRun.__table__  # type: ignore[attr-defined]

# An item's success as the export shows it: None while the item is not finished.
_SUCCESS = {ItemStatus.DONE: True, ItemStatus.FAILED: False}


def iter_results(
    engine: Engine, run_id: str, *, with_source: bool = False, chunk_size: int = EXPORT_CHUNK
) -> Iterator[dict[str, Any]]:
    """Every item of run `run_id` with its result, in source order, one dict per item.

    Each row has the keys of `RESULT_FIELDS`: the item's `id`; `success` (True when done,
    False when failed for good, None while it waits for a stage); its `confidence`, `level`,
    `output` (the processor's JSON value) and `error`; its failed `attempts`; and the `stage`
    that wrote it (the stage number of the run, as its report shows it; None before its
    first claim); its `weight` (None when the run weighs nothing); and its `cost`, what every
    batch it ran in charged it, retries included (None while nothing is priced). With
    `with_source`, `source` holds the item's own fields from the source.

    The rows are streamed `chunk_size` at a time over one connection, which stays open until
    the iterator is exhausted or closed.

    Raises:
        LookupError: the store holds no run `run_id` (before any row is yielded).

    Example:
        >>> for row in iter_results(engine, run_id):
        ...     print(row["id"], row["success"], row["output"])
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    columns = [
        _LEDGER.c.item_id,
        _LEDGER.c.status,
        _LEDGER.c.confidence,
        _LEDGER.c.level,
        _LEDGER.c.output,
        _LEDGER.c.error,
        _LEDGER.c.attempts,
        _BATCHES.c.stage,
        _LEDGER.c.weight,
        _LEDGER.c.cost,
    ]
    if with_source:
        columns.append(_LEDGER.c.payload)
    query = (
        select(*columns)
        .select_from(_LEDGER.outerjoin(_BATCHES, _BATCHES.c.id == _LEDGER.c.batch_id))
        .where(_LEDGER.c.run_id == run_id)
        .order_by(_LEDGER.c.seq)
        .execution_options(yield_per=chunk_size)
    )
    with engine.connect() as connection:
        if connection.execute(select(_RUNS.c.run_id).where(_RUNS.c.run_id == run_id)).first() is None:
            raise LookupError(f"no run {run_id!r} in the store")
        for item_id, status, confidence, level, output, error, attempts, stage, weight, cost, *payload in (
            connection.execute(query)
        ):
            row = {
                "id": item_id,
                "success": _SUCCESS.get(ItemStatus(status)),
                "confidence": confidence,
                "level": level,
                "output": output,
                "error": error,
                "attempts": attempts,
                "stage": stage,
                "weight": weight,
                "cost": cost,
            }
            if with_source:
                row["source"] = payload[0]
            yield row


class RunListing(BaseModel):
    """One run as the `runs` command lists it."""

    model_config = ConfigDict(frozen=True)

    pipeline: str
    run_id: str
    status: RunStatus
    items: int
    done: int
    started: datetime


def list_runs(engine: Engine, *, pipeline: str | None = None, limit: int | None = None) -> list[RunListing]:
    """The store's runs (of `pipeline` when given), newest first, with their items and items done."""
    runs_query = select(_RUNS.c.pipeline, _RUNS.c.run_id, _RUNS.c.status, _RUNS.c.item_count, _RUNS.c.created_at)
    if pipeline is not None:
        runs_query = runs_query.where(_RUNS.c.pipeline == pipeline)
    runs_query = runs_query.order_by(_RUNS.c.created_at.desc())
    if limit is not None:
        runs_query = runs_query.limit(limit)
    with engine.connect() as connection:
        runs = connection.execute(runs_query).all()
        done: dict[str, int] = {}
        if runs:
            counted = connection.execute(
                select(_LEDGER.c.run_id, func.count())
                .where(_LEDGER.c.run_id.in_([run.run_id for run in runs]), _LEDGER.c.status == ItemStatus.DONE)
                .group_by(_LEDGER.c.run_id)
            ).all()
            done = {run_id: count for run_id, count in counted}
    return [
        RunListing(
            pipeline=run.pipeline,
            run_id=run.run_id,
            status=run.status,
            items=run.item_count,
            done=done.get(run.run_id, 0),
            started=run.created_at,
        )
        for run in runs
    ]
