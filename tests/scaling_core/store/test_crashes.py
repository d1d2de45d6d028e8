"""Claims of a process that died: attempts, crash suspects and their bisection, on real databases."""

from __future__ import annotations

from sqlalchemy import Engine, text

from scaling_core import BatchManager, ConfidenceLevel, ItemResult, create_schema
from scaling_core import store
from tests.scaling_core.store.support import finished_batch, ledger, new_run

POISON = "item-5"


def _crash(engine: Engine, run_id: str, size: int, *, suspects_of: int | None = None) -> list[str]:
    """A stage of `size` that claims items and dies; its claims are taken back as a rerun does."""
    batches = BatchManager(engine, run_id=run_id, pipeline="p", batch_size=size, worker="dead")
    claimed = batches.next_batch(suspects_of=suspects_of)
    assert claimed is not None
    with store.open_session(engine) as session:
        assert store.recover_dead_claims(session, run_id, max_attempts=3) == len(claimed.items)
    return [item.id for item in claimed.items]


def _suspects(engine: Engine, run_id: str) -> store.CrashSuspects | None:
    with store.open_session(engine) as session:
        return store.crash_suspects(session, run_id)


def test_a_crash_counts_an_attempt_and_names_the_stage(engine: Engine) -> None:
    run_id = new_run(engine, items=10)
    _crash(engine, run_id, 4)
    rows = ledger(engine)
    crashed = [rows[f"item-{i}"] for i in range(4)]
    assert {(row.status, row.attempts, row.claimed_by) for row in crashed} == {(store.ItemStatus.PENDING, 1, None)}
    assert crashed[0].error == "the process died while this item was in stage 1, a batch of 4 items"
    assert rows["item-4"].attempts == 0
    with store.open_session(engine) as session:
        [record] = store.run_batches(session, run_id)
    assert (record.status, record.total_items) == (store.BatchStatus.ABANDONED, 4)
    assert record.error == "the process died; its 4 items taken back, one attempt each"
    assert _suspects(engine, run_id) == store.CrashSuspects(batch_id=record.id, crashed_items=4, pending=4)


def test_claims_released_on_purpose_count_nothing_and_make_no_suspects(engine: Engine) -> None:
    run_id = new_run(engine, items=10)
    batches = BatchManager(engine, run_id=run_id, pipeline="p", batch_size=4, worker="me")
    assert batches.next_batch() is not None
    with store.open_session(engine) as session:
        assert store.recover_abandoned(session, run_id, worker="me") == 4
    assert {row.attempts for row in ledger(engine).values()} == {0}
    assert _suspects(engine, run_id) is None


def test_bisection_isolates_the_item_that_crashes_and_fails_it_for_good(engine: Engine) -> None:
    # Items 0..7 are claimed in a batch of 8; whichever batch holds item-5 crashes. Every
    # crash halves the suspects (rounded up) until item-5 crashes alone, three attempts in all.
    run_id = new_run(engine, items=12)
    sizes: list[int] = []
    first = _crash(engine, run_id, 8)
    sizes.append(len(first))
    while (suspects := _suspects(engine, run_id)) is not None:
        batches = BatchManager(engine, run_id=run_id, pipeline="p", batch_size=suspects.claim_size, worker="w")
        claimed = batches.next_batch(suspects_of=suspects.batch_id)
        assert claimed is not None
        ids = [item.id for item in claimed.items]
        sizes.append(len(ids))
        assert set(ids) <= set(first), f"a stage of suspects claimed {ids}"
        if POISON in ids:
            with store.open_session(engine) as session:
                store.recover_dead_claims(session, run_id, max_attempts=3)
        else:
            results = [ItemResult(item_id=item_id, success=True, confidence=0.9, level=ConfidenceLevel.HIGH) for item_id in ids]
            batches.complete_batch(claimed, results, seconds=0.1)
    # 8 crash; of their suspects, 4 (0-3) are fine and 4 (4-7) crash; of those, 2 (4, 5) crash;
    # then 1 (4) is fine and 1 (5) crashes alone, failed for good; last, 2 (6, 7) are fine.
    assert sizes == [8, 4, 4, 2, 1, 1, 2]
    rows = ledger(engine)
    poison = rows[POISON]
    assert (poison.status, poison.attempts) == (store.ItemStatus.FAILED, 4)
    assert poison.error == "the process died while this item was in stage 6, a batch of 1 item"
    assert {rows[f"item-{i}"].status for i in range(8) if i != 5} == {store.ItemStatus.DONE}
    assert [rows[f"item-{i}"].attempts for i in range(8)] == [1, 1, 1, 1, 3, 4, 2, 2]
    assert {rows[f"item-{i}"].status for i in range(8, 12)} == {store.ItemStatus.PENDING}


def test_a_suspect_that_crashes_alone_is_retried_alone_until_its_attempts_run_out(engine: Engine) -> None:
    run_id = new_run(engine, items=3)
    _crash(engine, run_id, 1)
    for attempt in (2, 3):
        suspects = _suspects(engine, run_id)
        assert suspects is not None and suspects.claim_size == 1
        assert _crash(engine, run_id, suspects.claim_size, suspects_of=suspects.batch_id) == ["item-0"]
        assert ledger(engine)["item-0"].attempts == attempt
    assert ledger(engine)["item-0"].status == store.ItemStatus.FAILED
    assert _suspects(engine, run_id) is None


def test_the_manager_never_sees_a_crash_isolation_batch(engine: Engine) -> None:
    run_id = new_run(engine, items=10)
    finished_batch(engine, run_id, 4, high=4)
    crashed = _crash(engine, run_id, 4)
    suspects = _suspects(engine, run_id)
    assert suspects is not None
    batches = BatchManager(engine, run_id=run_id, pipeline="p", batch_size=suspects.claim_size, worker="w")
    claimed = batches.next_batch(suspects_of=suspects.batch_id)
    assert claimed is not None and [item.id for item in claimed.items] == crashed[:2]
    batches.complete_batch(claimed, [ItemResult(item_id=item.id, success=True, level=ConfidenceLevel.HIGH) for item in claimed.items], 0.1)
    with store.open_session(engine) as session:
        history = store.recent_batches(session, "p", 10)
    assert [result.asked_size for result in history] == [4]


def test_a_store_made_before_crash_suspects_opens_and_gains_them(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_ledger_item_retry"))
        connection.execute(text("ALTER TABLE batch_record DROP COLUMN suspects_of"))
    create_schema(engine)
    run_id = new_run(engine, items=4)
    _crash(engine, run_id, 2)
    suspects = _suspects(engine, run_id)
    assert suspects is not None and suspects.claim_size == 1
