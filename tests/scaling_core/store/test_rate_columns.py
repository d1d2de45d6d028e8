"""What a batch's rate limit costs reaches the store and comes back in the manager's history."""

from __future__ import annotations

import time

from sqlalchemy import Engine, inspect, text

from scaling_core import BatchManager, ConfidenceLevel, ItemResult, create_schema
from scaling_core import store
from scaling_core.rates import RateWaits
from tests.scaling_core.store.support import new_run


def test_a_batch_keeps_its_refused_calls_its_wait_and_its_end(engine: Engine) -> None:
    run_id = new_run(engine, items=4)
    batches = BatchManager(engine, run_id=run_id, pipeline="p", batch_size=4, worker="w")
    claimed = batches.next_batch()
    assert claimed is not None
    results = [ItemResult(item_id=item.id, success=True, level=ConfidenceLevel.HIGH) for item in claimed.items]
    before = time.time()
    batches.complete_batch(claimed, results, 0.5, rate=RateWaits(rate_limited_calls=2, waited=3.25))
    with store.open_session(engine) as session:
        [batch] = store.recent_batches(session, "p", 10)
    assert (batch.rate_limited_calls, batch.rate_wait, batch.processing_time) == (2, 3.25, 0.5)
    assert batch.ended_at is not None and before - 1.0 <= batch.ended_at <= time.time() + 1.0


def test_a_store_made_before_rate_limits_opens_and_gains_their_columns(engine: Engine) -> None:
    with engine.begin() as connection:
        for column in ("rate_limited_calls", "rate_wait_seconds", "ended_at"):
            connection.execute(text(f"ALTER TABLE batch_record DROP COLUMN {column}"))
    create_schema(engine)
    columns = {column["name"] for column in inspect(engine).get_columns("batch_record")}
    assert {"rate_limited_calls", "rate_wait_seconds", "ended_at"} <= columns
    test_a_batch_keeps_its_refused_calls_its_wait_and_its_end(engine)
