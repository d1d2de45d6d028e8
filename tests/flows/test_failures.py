"""Failures: items that fail, processor calls that raise or hang, stages that keep failing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.models import ExecutionOptions, PipelineSummary
from scaling_core import ScalingConfig
from scaling_core import store
from tests.flows import processors
from tests.flows.support import batches, call_pipeline, ledger, run_pipeline, runs, stages, write_csv

SCALING = ScalingConfig(initial_batch_size=10, min_batch_size=5, max_batch_size=60)


def test_failing_items_are_retried_in_later_stages_until_max_attempts(
    tmp_path: Path, sqlite_url: str, pipeline_name: str, fresh_processors: None
) -> None:
    summary, _ = run_pipeline(
        source=write_csv(tmp_path / "items.csv", 25),
        processor="tests.flows.processors:fails_some_items",
        pipeline=pipeline_name,
        scaling=SCALING,
        execution=ExecutionOptions(max_attempts=3),
        database=sqlite_url,
    )
    items = {item.item_id: item for item in ledger(sqlite_url, summary.run_id)}
    for item_id in processors.ALWAYS_FAILING:
        item = items[item_id]
        assert (item.status, item.attempts, item.output) == (store.ItemStatus.FAILED, 3, None)
        assert item.error == f"cannot process {item_id}"
    flaky = items[processors.FAILS_ONCE]
    assert (flaky.status, flaky.attempts, flaky.output) == (store.ItemStatus.DONE, 1, {"echo": flaky.item_id})
    special = {*processors.ALWAYS_FAILING, processors.FAILS_ONCE}
    others = [item for item in items.values() if item.item_id not in special]
    assert all(item.status == store.ItemStatus.DONE and item.attempts == 0 for item in others)

    # Each attempt was a call of its own, in a later stage than the one before.
    assert len(processors.calls) == summary.stages
    for item_id, attempts in [*((i, 3) for i in processors.ALWAYS_FAILING), (processors.FAILS_ONCE, 2)]:
        seen_in = [n for n, ids in enumerate(processors.calls) if item_id in ids]
        assert len(seen_in) == attempts, (item_id, seen_in)

    assert (summary.items, summary.done, summary.failed, summary.pending) == (25, 23, 2, 0)
    [run] = runs(sqlite_url, pipeline_name)
    assert run.status == store.RunStatus.COMPLETED


def test_a_batch_that_fails_whole_goes_back_and_the_size_shrinks(
    tmp_path: Path, sqlite_url: str, pipeline_name: str, fresh_processors: None
) -> None:
    summary, _ = run_pipeline(
        source=write_csv(tmp_path / "items.csv", 60),
        processor="tests.flows.processors:fails_whole_above_20",
        pipeline=pipeline_name,
        scaling=ScalingConfig(initial_batch_size=30, min_batch_size=5, max_batch_size=100),
        database=sqlite_url,
    )
    records = batches(sqlite_url, summary.run_id)
    rows = stages(sqlite_url, summary.run_id)
    first = records[0]
    assert (first.status, first.batch_size, first.total_items) == (store.BatchStatus.FAILED_WHOLE, 30, 30)
    assert first.error is not None and "overloaded: 30 items exceed 20" in first.error
    assert rows[0]["next_batch_size"] < 30

    failed = [row for row in rows if row["status"] == store.BatchStatus.FAILED_WHOLE]
    assert failed and all(row["next_batch_size"] < row["batch_size"] for row in failed)
    assert all(row["items"] <= processors.WHOLE_FAILURE_ABOVE for row in rows if row["status"] == "completed")

    # The failed batch's items went back to pending: the next call got them again, from the first.
    assert processors.calls[0] == [f"i{n}" for n in range(30)]
    assert processors.calls[1] == [f"i{n}" for n in range(len(processors.calls[1]))]
    items = ledger(sqlite_url, summary.run_id)
    assert all(item.status == store.ItemStatus.DONE for item in items)
    assert all(item.attempts == 0 for item in items), "a whole-batch failure must not use up item attempts"
    assert all(item.batch_id != first.id for item in items)
    assert (summary.done, summary.pending, summary.failed_stages) == (60, 0, len(failed))


@dataclass(frozen=True)
class HungRun:
    url: str
    summary: PipelineSummary
    calls: list[list[str]]


@pytest.fixture(scope="module")
def hung_run(tmp_path_factory: pytest.TempPathFactory) -> HungRun:
    """A run whose first call (10 items) hangs for 8 s, far longer than the 0.5 s stage timeout."""
    folder = tmp_path_factory.mktemp("hang")
    url = f"sqlite:///{folder / 'store.db'}"
    processors.reset()
    # 15 items keep it short: the stage of 10 that times out, then stages of 5.
    summary, _ = run_pipeline(
        source=write_csv(folder / "items.csv", 15),
        processor="tests.flows.processors:hangs_above_5",
        pipeline=f"hang-{uuid.uuid4().hex[:8]}",
        scaling=SCALING,
        execution=ExecutionOptions(stage_timeout_seconds=0.5),
        database=url,
    )
    calls = list(processors.calls)
    processors.reset()
    return HungRun(url=url, summary=summary, calls=calls)


def test_a_stage_that_outlives_its_timeout_fails_whole(hung_run: HungRun) -> None:
    records = batches(hung_run.url, hung_run.summary.run_id)
    rows = stages(hung_run.url, hung_run.summary.run_id)
    first = records[0]
    assert (first.status, first.batch_size) == (store.BatchStatus.FAILED_WHOLE, 10)
    assert first.error == "stage timed out after 0.5 s"
    assert rows[0]["next_batch_size"] < 10
    for record in records[1:]:
        hangs = record.batch_size > processors.HANG_ABOVE
        assert record.status == (store.BatchStatus.FAILED_WHOLE if hangs else store.BatchStatus.COMPLETED)
    # Its items went back to pending: the next call got them again, from the first.
    assert hung_run.calls[0] == [f"i{n}" for n in range(10)]
    assert hung_run.calls[1] == [f"i{n}" for n in range(len(hung_run.calls[1]))]
    items = ledger(hung_run.url, hung_run.summary.run_id)
    assert all(item.status == store.ItemStatus.DONE and item.attempts == 0 for item in items)
    assert hung_run.summary.done == 15


def test_a_stage_timeout_bounds_how_long_the_stage_blocks_the_run(hung_run: HungRun) -> None:
    timed_out, after = batches(hung_run.url, hung_run.summary.run_id)[:2]
    assert timed_out.status == store.BatchStatus.FAILED_WHOLE
    blocked_seconds = (after.started_at - timed_out.started_at).total_seconds()
    # The timeout is 0.5 s and the hung call lasts 8 s: a stage that honours its timeout lets
    # the next stage start well before the hung call returns (the margin covers the ~2 s
    # back-off a SQLite-backed Prefect server sometimes imposes between stages).
    assert blocked_seconds < 6.0, (
        f"the next stage started {blocked_seconds:.1f} s after the stage that timed out after 0.5 s"
    )


def test_a_run_stops_resumably_after_too_many_whole_failures_in_a_row(
    tmp_path: Path, sqlite_url: str, pipeline_name: str, fresh_processors: None
) -> None:
    with pytest.raises(RuntimeError, match="2 stages in a row failed whole .*rerun to resume"):
        call_pipeline(
            source=write_csv(tmp_path / "items.csv", 50),
            processor="tests.flows.processors:fails_whole_above_20",
            pipeline=pipeline_name,
            # Every allowed size is above the processor's limit.
            scaling=ScalingConfig(initial_batch_size=30, min_batch_size=25, max_batch_size=40),
            execution=ExecutionOptions(max_failed_stages_in_a_row=2),
            database=sqlite_url,
        )
    [run] = runs(sqlite_url, pipeline_name)
    assert run.status != store.RunStatus.COMPLETED
    assert [record.status for record in batches(sqlite_url, run.run_id)] == [store.BatchStatus.FAILED_WHOLE] * 2
    assert {item.status for item in ledger(sqlite_url, run.run_id)} == {store.ItemStatus.PENDING}


def test_a_processor_that_hangs_on_every_call_stops_the_run_after_two_timeouts(
    tmp_path: Path, sqlite_url: str, pipeline_name: str
) -> None:
    processors.reset()
    with pytest.raises(RuntimeError, match=r"^2 stages in a row outlived the stage timeout \(last: stage timed out"):
        call_pipeline(
            source=write_csv(tmp_path / "items.csv", 30),
            processor="tests.flows.processors:hangs_above_5",
            pipeline=pipeline_name,
            # Every size the manager may choose hangs: only the timeouts' count can stop the run.
            scaling=ScalingConfig(initial_batch_size=10, min_batch_size=10, max_batch_size=20),
            execution=ExecutionOptions(stage_timeout_seconds=0.5),
            database=sqlite_url,
        )
    processors.reset()
    [run] = runs(sqlite_url, pipeline_name)
    assert run.status == store.RunStatus.FAILED
    assert [record.status for record in batches(sqlite_url, run.run_id)] == [store.BatchStatus.FAILED_WHOLE] * 2
    assert {item.status for item in ledger(sqlite_url, run.run_id)} == {store.ItemStatus.PENDING}
