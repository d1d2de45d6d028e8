"""Helpers shared by the store tests."""

from __future__ import annotations

import threading

from sqlalchemy import Engine
from sqlmodel import select

from scaling_core import BatchResult, ConfidenceLevel
from scaling_core import store


def new_run(engine: Engine, items: int = 10, pipeline: str = "p") -> str:
    """A loaded run of `items` pending items; returns its id."""
    with store.open_session(engine) as session:
        run = store.start_run(session, pipeline=pipeline, source="s.csv", processor="m:f", config={"a": 1})
        store.load_items(session, run.run_id, [(i, f"item-{i}", {"n": i}) for i in range(items)])
        session.commit()
        store.mark_loaded(session, run.run_id)
        return run.run_id


def ledger(engine: Engine) -> dict[str, store.LedgerItem]:
    """Every ledger row, by item id."""
    with store.open_session(engine) as session:
        return {row.item_id: row for row in session.exec(select(store.LedgerItem)).all()}


def finished_batch(
    engine: Engine, run_id: str, size: int, *, high: int, failed_whole: bool = False, pipeline: str = "p"
) -> int:
    """Open and close a batch of `size` items, `high` of them High; returns its id."""
    with store.open_session(engine) as session:
        batch_id, _ = store.insert_batch(session, run_id=run_id, pipeline=pipeline, batch_size=size, worker="w")
        levels = {} if failed_whole else {ConfidenceLevel.HIGH: high, ConfidenceLevel.LOW: size - high}
        result = BatchResult(
            batch_id=str(batch_id),
            batch_size=size,
            total_items=size,
            successful_items=0 if failed_whole else size,
            failed_items=size if failed_whole else 0,
            processing_time=size / 10,
            confidence_distribution=levels,
            failed_whole=failed_whole,
            error="boom" if failed_whole else None,
        )
        store.finish_batch(session, batch_id, result)
        session.commit()
        return batch_id


def claim_concurrently(
    engine: Engine, run_id: str, limit: int, *, workers: int = 4, max_weight: float | None = None
) -> list[list[store.ClaimedItem]]:
    """Every claim `workers` threads made until nothing was left, each claim of up to `limit` items."""
    claims: list[list[store.ClaimedItem]] = []
    lock = threading.Lock()

    def claim_all(worker: str) -> None:
        mine: list[list[store.ClaimedItem]] = []
        while True:
            with store.open_session(engine) as session:
                items = store.claim_items(session, run_id, limit, batch_id=0, worker=worker, max_weight=max_weight)
                session.commit()
            if not items:
                break
            mine.append(items)
        with lock:
            claims.extend(mine)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return claims
