"""Runs, batches and decisions on real databases: SQLite files and, in CI, PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from scaling_core import BatchResult, ConfidenceLevel, ScalingAction, ScalingDecision
from scaling_core import store
from tests.scaling_core.store.support import finished_batch, new_run


def test_run_round_trip_and_resume_by_id(engine: Engine) -> None:
    run_id = new_run(engine)
    with store.open_session(engine) as session:
        run = store.get_run(session, run_id)
        assert run is not None and run.items_loaded and run.item_count == 10
        assert run.config == {"a": 1}
        resumed = store.start_run(session, pipeline="p", source="s.csv", processor="m:f", config={}, run_id=run_id)
        assert resumed.run_id == run_id
        with pytest.raises(ValueError, match="belongs to pipeline 'p'"):
            store.start_run(session, pipeline="other", source="", processor="", config={}, run_id=run_id)


def test_the_latest_unfinished_run_is_the_one_to_resume(engine: Engine) -> None:
    first, second = new_run(engine), new_run(engine)
    with store.open_session(engine) as session:
        store.finish_run(session, second, store.RunStatus.COMPLETED)
        latest, unfinished = store.latest_run(session, "p"), store.latest_unfinished_run(session, "p")
        assert store.latest_run(session, "other") is None
    assert latest is not None and latest.run_id == second
    assert unfinished is not None and unfinished.run_id == first


def test_a_closed_batch_holds_its_outcome(engine: Engine) -> None:
    run_id = new_run(engine, items=1)
    batch_id = finished_batch(engine, run_id, 20, high=15)
    with store.open_session(engine) as session:
        [record] = store.run_batches(session, run_id)
        assert store.last_batch_id(session, run_id) == batch_id
        assert store.last_batch_id(session, "no such run") is None
    assert (record.id, record.stage, record.status) == (batch_id, 1, store.BatchStatus.COMPLETED)
    assert (record.total_items, record.successful_items, record.high, record.low) == (20, 20, 15, 5)
    assert record.seconds == 2.0 and record.finished_at is not None


def test_batch_history_is_bounded_and_ordered(engine: Engine) -> None:
    run_id = new_run(engine, items=1)
    for size in (10, 20, 30, 40):
        finished_batch(engine, run_id, size, high=size, failed_whole=size == 40)
    with store.open_session(engine) as session:
        history = store.recent_batches(session, "p", 3)
        assert store.recent_batches(session, "other", 3) == []
    assert [b.batch_size for b in history] == [20, 30, 40]
    assert history[0].high_share == 1.0 and history[0].processing_time == 2.0
    # A batch that failed whole with no levels recorded counts all its items Low.
    assert history[-1].failed_whole and history[-1].error == "boom"
    assert history[-1].confidence_distribution == {ConfidenceLevel.LOW: 40}


def test_decisions_persist_and_give_the_warm_start(engine: Engine) -> None:
    run_id = new_run(engine, items=1, pipeline="warm")
    batch_id = finished_batch(engine, run_id, 50, high=50, pipeline="warm")
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
    assert (saved.batch_id, saved.old_size, saved.new_size, saved.action) == (batch_id, 50, 75, "increase")
    assert saved.metrics == {"fixed_seconds": 1.0}
    assert [b.batch_size for b in bound.recent_batches(5)] == [50]


def test_a_batch_inserted_by_key_is_numbered_and_finished_by_key(engine: Engine) -> None:
    run_id, other = new_run(engine, items=1), new_run(engine, items=1)
    with store.open_session(engine) as session:
        first = store.insert_batch(session, run_id=run_id, pipeline="p", batch_size=20, worker="w")
        second = store.insert_batch(session, run_id=run_id, pipeline="p", batch_size=30, worker="w")
        elsewhere = store.insert_batch(session, run_id=other, pipeline="p", batch_size=5, worker="w")
        result = BatchResult(
            batch_id=str(second[0]),
            batch_size=30,
            total_items=30,
            successful_items=30,
            failed_items=0,
            processing_time=1.5,
            confidence_distribution={ConfidenceLevel.HIGH: 25, ConfidenceLevel.LOW: 5},
        )
        store.finish_batch(session, second[0], result)
        session.commit()
        records = store.run_batches(session, run_id)
    # Stages are counted per run; the keys come back from the INSERT itself.
    assert (first[1], second[1], elsewhere[1]) == (1, 2, 1)
    assert [(record.id, record.stage, record.batch_size) for record in records] == [(first[0], 1, 20), (second[0], 2, 30)]
    assert records[0].status == store.BatchStatus.PROCESSING and records[0].finished_at is None
    finished = records[1]
    assert (finished.status, finished.total_items, finished.high, finished.low) == (store.BatchStatus.COMPLETED, 30, 25, 5)
    assert finished.seconds == 1.5 and finished.finished_at is not None


def test_a_decision_records_the_batch_it_is_given(engine: Engine) -> None:
    run_id = new_run(engine, items=1)
    earlier = finished_batch(engine, run_id, 50, high=50)
    finished_batch(engine, run_id, 60, high=60)
    decision = ScalingDecision(
        action=ScalingAction.MAINTAIN, new_batch_size=50, reason="steady", confidence_threshold=0.9
    )
    store.PipelineStore(engine, pipeline="p", run_id=run_id, batch_id=earlier).record_decision(50, decision)
    with store.open_session(engine) as session:
        [saved] = store.run_decisions(session, run_id)
    assert saved.batch_id == earlier  # the given batch, not the run's latest
