"""The SQLModel store on real databases: SQLite files and, in CI, PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, inspect, text

from scaling_core import ConfidenceLevel, ItemResult, ScalingAction, ScalingDecision
from scaling_core import store
from scaling_core.settings import DATABASE_URL_ENV, default_database_url


def _new_run(engine: Engine, items: int = 10, pipeline: str = "p") -> str:
    with store.open_session(engine) as session:
        run = store.start_run(session, pipeline=pipeline, source="s.csv", processor="m:f", config={"a": 1})
        store.load_items(session, run.run_id, [(i, f"item-{i}", {"n": i}) for i in range(items)])
        session.commit()
        store.mark_loaded(session, run.run_id)
        return run.run_id


def test_schema_creation_is_idempotent(engine: Engine) -> None:
    store.create_schema(engine)
    store.create_schema(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"pipeline_run", "ledger_item", "batch_record", "scaling_decision"} <= tables


def test_run_round_trip_and_resume_by_id(engine: Engine) -> None:
    run_id = _new_run(engine)
    with store.open_session(engine) as session:
        run = store.get_run(session, run_id)
        assert run is not None and run.items_loaded and run.item_count == 10
        assert run.config == {"a": 1}
        resumed = store.start_run(session, pipeline="p", source="s.csv", processor="m:f", config={}, run_id=run_id)
        assert resumed.run_id == run_id
        with pytest.raises(ValueError, match="belongs to pipeline 'p'"):
            store.start_run(session, pipeline="other", source="", processor="", config={}, run_id=run_id)


def test_reloading_the_same_items_adds_nothing(engine: Engine) -> None:
    run_id = _new_run(engine, items=5)
    with store.open_session(engine) as session:
        store.load_items(session, run_id, [(i, f"item-{i}", {"n": -1}) for i in range(7)])
        session.commit()
        assert store.mark_loaded(session, run_id) == 7
        counts = store.count_items(session, run_id)
    assert counts[store.ItemStatus.PENDING] == 7


def test_claims_follow_source_order_and_never_overlap(engine: Engine) -> None:
    run_id = _new_run(engine, items=25)
    with store.open_session(engine) as session:
        first = store.claim_items(session, run_id, 10, batch_id=1, worker="a")
        second = store.claim_items(session, run_id, 10, batch_id=2, worker="b")
        third = store.claim_items(session, run_id, 10, batch_id=3, worker="c")
        session.commit()
    assert [item.item_id for item in first] == [f"item-{i}" for i in range(10)]
    assert [item.seq for item in second] == list(range(10, 20))
    assert len(third) == 5
    assert first[0].payload == {"n": 0}


def test_concurrent_claims_share_nothing(engine: Engine) -> None:
    run_id = _new_run(engine, items=400)
    claimed: list[list[str]] = []
    lock = threading.Lock()

    def claim_all(worker: str) -> None:
        mine: list[str] = []
        while True:
            with store.open_session(engine) as session:
                items = store.claim_items(session, run_id, 7, batch_id=0, worker=worker)
                session.commit()
            if not items:
                break
            mine.extend(item.item_id for item in items)
        with lock:
            claimed.append(mine)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [item for mine in claimed for item in mine]
    assert len(every) == 400
    assert len(set(every)) == 400


def test_results_are_written_in_bulk_with_retries(engine: Engine) -> None:
    run_id = _new_run(engine, items=3)
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
        rows = {row.item_id: row for row in session.exec(store.select(store.LedgerItem)).all()}
    assert rows["item-0"].status == store.ItemStatus.DONE and rows["item-0"].output == {"x": 1}
    assert rows["item-0"].level == "High"
    assert rows["item-1"].status == store.ItemStatus.PENDING and rows["item-1"].attempts == 1
    assert rows["item-2"].status == store.ItemStatus.FAILED and rows["item-2"].error == "bad row"


def test_abandoned_claims_go_back_to_pending(engine: Engine) -> None:
    run_id = _new_run(engine, items=6)
    with store.open_session(engine) as session:
        batch = store.open_batch(session, run_id=run_id, pipeline="p", batch_size=4, worker="dead")
        assert batch.id is not None
        store.claim_items(session, run_id, 4, batch_id=batch.id, worker="dead")
        session.commit()
        assert store.recover_abandoned(session, run_id, older_than=timedelta(hours=1)) == 0
        assert store.recover_abandoned(session, run_id) == 4
        assert store.count_items(session, run_id)[store.ItemStatus.PENDING] == 6
        assert store.run_batches(session, run_id)[0].status == store.BatchStatus.ABANDONED


def test_a_late_result_never_overwrites_a_claim_another_batch_holds(engine: Engine) -> None:
    # Batch 1's worker looked dead: its claims were taken back and batch 2 claimed them again.
    run_id = _new_run(engine, items=3)
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
        rows = {row.item_id: row for row in session.exec(store.select(store.LedgerItem)).all()}
    assert [(rows[i].status, rows[i].batch_id, rows[i].output) for i in ("item-0", "item-1")] == [
        (store.ItemStatus.PROCESSING, 2, None)
    ] * 2
    # The item nobody claimed again keeps batch 1's late answer instead of being done twice.
    assert (rows["item-2"].status, rows["item-2"].output) == (store.ItemStatus.DONE, {"by": 1})


@pytest.mark.postgres
def test_a_worker_lock_the_database_dropped_is_taken_again(postgres_url: str) -> None:
    engine = store.make_engine(postgres_url)
    key = store._worker_lock_key("w-1")

    def someone_else_can_take_it() -> bool:
        with engine.connect() as other:
            got = bool(other.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
            if got:
                other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            return got

    lock = store.hold_worker_lock(engine, "w-1")
    assert lock is not None
    try:
        assert not someone_else_can_take_it()
        assert lock.refresh() is False
        # The database ends the lock's session, as a restart or a network cut would.
        with engine.connect() as admin:
            admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )
            admin.commit()
        assert someone_else_can_take_it()
        assert lock.refresh() is True
        assert not someone_else_can_take_it()
    finally:
        lock.close()
        assert someone_else_can_take_it()
        engine.dispose()


def test_batch_history_is_bounded_and_ordered(engine: Engine) -> None:
    from scaling_core import BatchResult

    run_id = _new_run(engine, items=1)
    with store.open_session(engine) as session:
        for size in (10, 20, 30, 40):
            record = store.open_batch(session, run_id=run_id, pipeline="p", batch_size=size, worker="w")
            store.close_batch(
                session,
                record,
                BatchResult(
                    batch_id="x",
                    batch_size=size,
                    total_items=size,
                    successful_items=size,
                    processing_time=size / 10,
                    confidence_distribution={ConfidenceLevel.HIGH: size},
                    failed_whole=size == 40,
                ),
            )
            session.commit()
        history = store.recent_batches(session, "p", 3)
    assert [b.batch_size for b in history] == [20, 30, 40]
    assert history[-1].failed_whole and history[0].high_share == 1.0


def test_decisions_persist_and_give_the_warm_start(engine: Engine) -> None:
    run_id = _new_run(engine, items=1, pipeline="warm")
    bound = store.PipelineStore(engine, pipeline="warm", run_id=run_id)
    decision = ScalingDecision(
        action=ScalingAction.INCREASE,
        new_batch_size=75,
        reason="far from every limit",
        confidence_threshold=0.9,
        performance_metrics={"fixed_seconds": 1.0},
    )
    bound.record_decision(50, decision)
    with store.open_session(engine) as session:
        assert store.last_decided_size(session, "warm") == 75
        assert store.last_decided_size(session, "cold") is None
        [saved] = store.run_decisions(session, run_id)
    assert (saved.old_size, saved.new_size, saved.action) == (50, 75, "increase")
    assert saved.metrics == {"fixed_seconds": 1.0}


def test_default_url_is_a_sqlite_file_under_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    assert default_database_url() == f"sqlite:///{tmp_path}/.batchpilot/batchpilot.db"
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+psycopg://u@h/db")
    assert default_database_url() == "postgresql+psycopg://u@h/db"


def test_redacted_urls_hide_the_password() -> None:
    assert store.redact_url("postgresql+psycopg://user:s3cret@host:5432/db") == (
        "postgresql+psycopg://user:***@host:5432/db"
    )
    assert "s3cret" not in store.redact_url("not a url s3cret")
