"""Reports of a run on real databases: SQLite files and, in CI, PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from scaling_core import ItemResult, ScalingAction, ScalingDecision
from scaling_core import store
from tests.scaling_core.store.support import finished_batch, new_run


def _decide(engine: Engine, run_id: str, old_size: int, new_size: int, reason: str) -> None:
    decision = ScalingDecision(
        action=ScalingAction.INCREASE if new_size > old_size else ScalingAction.DECREASE,
        new_batch_size=new_size,
        reason=reason,
        confidence_threshold=0.9,
    )
    store.PipelineStore(engine, pipeline="p", run_id=run_id).record_decision(old_size, decision)


def _abandoned_batch(engine: Engine, run_id: str, size: int) -> None:
    with store.open_session(engine) as session:
        batch_id, _ = store.insert_batch(session, run_id=run_id, pipeline="p", batch_size=size, worker="dead")
        store.claim_items(session, run_id, size, batch_id=batch_id, worker="dead")
        session.commit()
        store.recover_abandoned(session, run_id, worker="dead")


@pytest.fixture
def run_id(engine: Engine) -> str:
    """A run of 100 items: stages of 10 (8 High), 20 (failed whole), 30 abandoned, 40 (10 High)."""
    run_id = new_run(engine, items=100)
    finished_batch(engine, run_id, 10, high=8)
    _decide(engine, run_id, 10, 15, "first guess")
    _decide(engine, run_id, 10, 20, "far from every limit")  # resumed: the latest one counts
    finished_batch(engine, run_id, 20, high=0, failed_whole=True)
    _decide(engine, run_id, 20, 30, "failure was not the size")
    _abandoned_batch(engine, run_id, 30)
    finished_batch(engine, run_id, 40, high=10)
    with store.open_session(engine) as session:
        claimed = store.claim_items(session, run_id, 3, batch_id=99, worker="w")
        done = [ItemResult(item_id=claimed[0].item_id, success=True, confidence=0.9)]
        failed = [ItemResult(item_id=claimed[1].item_id, success=False, error="bad row")]
        store.record_item_results(session, run_id, done + failed, batch_id=99, attempts_before={}, max_attempts=1)
        session.commit()
    return run_id


def test_stage_rows_carry_the_decision_taken_after_each_stage(engine: Engine, run_id: str) -> None:
    with store.open_session(engine) as session:
        stages = store.run_stages(session, run_id)
        assert store.run_stages(session, "no such run") == []
    assert [(s.stage, s.batch_size, s.items, s.high, s.status) for s in stages] == [
        (1, 10, 10, 8, store.BatchStatus.COMPLETED),
        (2, 20, 20, 0, store.BatchStatus.FAILED_WHOLE),
        (3, 30, 0, 0, store.BatchStatus.ABANDONED),
        (4, 40, 40, 10, store.BatchStatus.COMPLETED),
    ]
    assert [(s.action, s.next_batch_size, s.reason) for s in stages] == [
        ("increase", 20, "far from every limit"),
        ("increase", 30, "failure was not the size"),
        (None, None, None),
        (None, None, None),
    ]
    assert [s.high_share for s in stages] == [0.8, 0.0, 0.0, 0.25]
    assert (stages[1].successful, stages[1].failed, stages[0].seconds) == (0, 20, 1.0)


def test_run_totals_leave_abandoned_stages_out(engine: Engine, run_id: str) -> None:
    with store.open_session(engine) as session:
        totals = store.run_totals(session, run_id)
        with pytest.raises(LookupError, match="no run 'nope' in the store"):
            store.run_totals(session, "nope")
    assert totals.items == store.ItemCounts(pending=97, processing=1, done=1, failed=1)
    assert (totals.run_id, totals.pipeline, totals.stages, totals.failed_stages) == (run_id, "p", 3, 1)
    assert totals.sizes_used == [10, 20, 40]
    # High items of the completed stages over their items: (8 + 10) / (10 + 40).
    assert totals.high_share == pytest.approx(18 / 50)


def test_a_run_without_stages_has_no_high_share(engine: Engine) -> None:
    run_id = new_run(engine, items=2)
    with store.open_session(engine) as session:
        totals = store.run_totals(session, run_id)
    assert (totals.stages, totals.sizes_used, totals.high_share, totals.items.unfinished) == (0, [], 0.0, 2)


def test_the_report_is_of_the_named_run_or_the_latest(engine: Engine, run_id: str) -> None:
    later = new_run(engine, items=1)
    with store.open_session(engine) as session:
        named = store.run_report(session, run_id)
        latest = store.run_report(session)
        with pytest.raises(LookupError, match="no run 'nope' in the store"):
            store.run_report(session, "nope")
    assert (named.run_id, named.status, named.source, named.processor) == (run_id, store.RunStatus.RUNNING, "s.csv", "m:f")
    assert named.items.total == 100 and len(named.stages) == 4
    assert (latest.run_id, latest.items.total, latest.stages) == (later, 1, [])


def test_an_empty_store_has_no_report(engine: Engine) -> None:
    with store.open_session(engine) as session, pytest.raises(LookupError, match="the store holds no run yet"):
        store.run_report(session)
