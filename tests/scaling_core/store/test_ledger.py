"""The item ledger on real databases: SQLite files and, in CI, PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from scaling_core import ConfidenceLevel, ItemResult
from scaling_core import store
from tests.scaling_core.store.support import claim_concurrently, ledger, new_run


def test_reloading_the_same_items_adds_nothing(engine: Engine) -> None:
    run_id = new_run(engine, items=5)
    with store.open_session(engine) as session:
        store.load_items(session, run_id, [(i, f"item-{i}", {"n": -1}) for i in range(7)])
        session.commit()
        assert store.mark_loaded(session, run_id) == 7
        counts = store.count_items(session, run_id)
    assert counts[store.ItemStatus.PENDING] == 7
    assert ledger(engine)["item-0"].payload == {"n": 0}


def test_claims_follow_source_order_and_never_overlap(engine: Engine) -> None:
    run_id = new_run(engine, items=25)
    with store.open_session(engine) as session:
        first = store.claim_items(session, run_id, 10, batch_id=1, worker="a")
        second = store.claim_items(session, run_id, 10, batch_id=2, worker="b")
        third = store.claim_items(session, run_id, 10, batch_id=3, worker="c")
        session.commit()
    assert [item.item_id for item in first] == [f"item-{i}" for i in range(10)]
    assert [item.seq for item in second] == list(range(10, 20))
    assert len(third) == 5
    assert first[0] == store.ClaimedItem(item_id="item-0", seq=0, payload={"n": 0}, attempts=0)


def test_concurrent_claims_share_nothing(engine: Engine) -> None:
    run_id = new_run(engine, items=400)
    claimed = [[item.item_id for item in claim] for claim in claim_concurrently(engine, run_id, 7)]
    every = [item for mine in claimed for item in mine]
    assert len(every) == 400
    assert len(set(every)) == 400


def test_results_are_written_in_bulk_with_retries(engine: Engine) -> None:
    run_id = new_run(engine, items=3)
    with store.open_session(engine) as session:
        items = store.claim_items(session, run_id, 3, batch_id=1, worker="w")
        results = [
            ItemResult(item_id="item-0", success=True, confidence=0.95, output={"x": 1}, level=ConfidenceLevel.HIGH),
            ItemResult(item_id="item-1", success=False, error="boom"),
            ItemResult(item_id="item-2", success=False, error="bad row"),
        ]
        store.record_item_results(
            session, run_id, results, batch_id=1, attempts_before={"item-1": 0, "item-2": 1}, max_attempts=2
        )
        session.commit()
    assert len(items) == 3
    rows = ledger(engine)
    assert rows["item-0"].status == store.ItemStatus.DONE and rows["item-0"].output == {"x": 1}
    assert rows["item-0"].level == "High"
    assert rows["item-1"].status == store.ItemStatus.PENDING and rows["item-1"].attempts == 1
    assert rows["item-2"].status == store.ItemStatus.FAILED and rows["item-2"].error == "bad row"


def test_abandoned_claims_go_back_to_pending(engine: Engine) -> None:
    run_id = new_run(engine, items=6)
    with store.open_session(engine) as session:
        batch_id, _ = store.insert_batch(session, run_id=run_id, pipeline="p", batch_size=4, worker="dead")
        store.claim_items(session, run_id, 4, batch_id=batch_id, worker="dead")
        session.commit()
        assert store.recover_abandoned(session, run_id, older_than=timedelta(hours=1)) == 0
        assert store.recover_abandoned(session, run_id) == 4
        assert store.count_items(session, run_id)[store.ItemStatus.PENDING] == 6
        assert store.run_batches(session, run_id)[0].status == store.BatchStatus.ABANDONED


def test_a_late_result_never_overwrites_a_claim_another_batch_holds(engine: Engine) -> None:
    # Batch 1's worker looked dead: its claims were taken back and batch 2 claimed them again.
    run_id = new_run(engine, items=3)
    done = [ItemResult(item_id=f"item-{i}", success=True, confidence=0.9, output={"by": 1}) for i in range(3)]
    with store.open_session(engine) as session:
        store.claim_items(session, run_id, 3, batch_id=1, worker="slow")
        session.commit()
        assert store.recover_abandoned(session, run_id) == 3
        store.claim_items(session, run_id, 2, batch_id=2, worker="resumer")
        session.commit()
        # Batch 1 answers late, then fails whole: neither touches batch 2's items.
        store.record_item_results(session, run_id, done, batch_id=1, attempts_before={}, max_attempts=3)
        store.release_items(session, run_id, batch_id=1)
        session.commit()
    rows = ledger(engine)
    assert [(rows[i].status, rows[i].batch_id, rows[i].output) for i in ("item-0", "item-1")] == [
        (store.ItemStatus.PROCESSING, 2, None)
    ] * 2
    # The item nobody claimed again keeps batch 1's late answer instead of being done twice.
    assert (rows["item-2"].status, rows["item-2"].output) == (store.ItemStatus.DONE, {"by": 1})


def test_item_counts_cover_every_status_and_sum_the_unfinished(engine: Engine) -> None:
    run_id = new_run(engine, items=6)
    results = [
        ItemResult(item_id="item-0", success=True, confidence=0.9),
        ItemResult(item_id="item-1", success=False, error="bad row"),
    ]
    with store.open_session(engine) as session:
        assert store.count_items(session, "no such run") == store.ItemCounts()
        store.claim_items(session, run_id, 4, batch_id=1, worker="w")
        store.record_item_results(session, run_id, results, batch_id=1, attempts_before={}, max_attempts=1)
        session.commit()
        counts = store.count_items(session, run_id)
        assert not store.has_pending(session, "no such run") and store.has_pending(session, run_id)
    assert counts == store.ItemCounts(pending=2, processing=2, done=1, failed=1)
    assert (counts.unfinished, counts.total) == (4, 6)
    assert [counts[status] for status in store.ItemStatus] == [2, 2, 1, 1]
