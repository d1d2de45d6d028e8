"""Processors that break their contract, run through the whole pipeline.

A broken answer must never be counted silently: it fails the batch whole (recorded with an
error naming the problem, its items back to pending, the run stopped resumably after
`max_failed_stages_in_a_row`), or it is an item failure recorded against the item.
The import-path rules of processors are tested in tests/scaling_core/test_processing.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.models import ExecutionOptions
from scaling_core import ScalingConfig
from scaling_core import store
from tests.flows import fault_processors
from tests.flows.fault_support import assert_every_item_finished_once
from tests.flows.support import batches, call_pipeline, ledger, run_pipeline, runs, write_csv

ITEMS = 20
IDS = [f"i{n}" for n in range(ITEMS)]
SIZE_10 = ScalingConfig(initial_batch_size=10, min_batch_size=10, max_batch_size=10)

VIOLATIONS = {
    "one result short": (
        "one_result_short",
        "ProcessorContractError: the processor returned 9 results for 10 items; "
        "it must return exactly one result per item, in order",
    ),
    "a result for an unknown item": (
        "answers_a_stranger",
        "ProcessorContractError: result at position 0 is for unknown item 'stranger-i0' (expected 'i0')",
    ),
    "a confidence above 1": (
        "confidence_above_one",
        "ProcessorContractError: result at position 0 (item 'i0') has confidence 1.5, outside [0, 1]",
    ),
    "raising on every call": (
        "raises_on_every_call",
        "RuntimeError: the model endpoint is unavailable (10 items not processed)",
    ),
    "a mapping instead of a list": (
        "returns_a_mapping",
        "ProcessorContractError: a processor must return a list of results, got dict",
    ),
}


@pytest.fixture
def fresh_fault_processors() -> Iterator[None]:
    fault_processors.reset()
    yield
    fault_processors.reset()


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_a_broken_answer_fails_batches_whole_then_stops_the_run_resumably(
    case: str, tmp_path: Path, sqlite_url: str, pipeline_name: str, fresh_fault_processors: None
) -> None:
    name, error = VIOLATIONS[case]
    parameters = dict(
        source=write_csv(tmp_path / "items.csv", ITEMS),
        processor=f"tests.flows.fault_processors:{name}",
        pipeline=pipeline_name,
        scaling=SIZE_10,
        execution=ExecutionOptions(max_failed_stages_in_a_row=2),
        database=sqlite_url,
    )
    with pytest.raises(RuntimeError) as caught:
        call_pipeline(**parameters)

    [run] = runs(sqlite_url, pipeline_name)
    assert str(caught.value) == (
        f"2 stages in a row failed whole (last: {error}); "
        f"stopping run {run.run_id}: its items are pending again, rerun to resume"
    )
    assert run.status == store.RunStatus.FAILED
    # Both stages asked for the same first ten items and recorded why they failed.
    assert [
        (record.stage, record.status, record.total_items, record.successful_items, record.error)
        for record in batches(sqlite_url, run.run_id)
    ] == [(stage, store.BatchStatus.FAILED_WHOLE, 10, 0, error) for stage in (1, 2)]
    assert fault_processors.calls() == 2
    # Nothing of the broken answers was written; no item used up an attempt.
    assert [(item.item_id, item.status, item.attempts, item.output) for item in ledger(sqlite_url, run.run_id)] == [
        (item_id, store.ItemStatus.PENDING, 0, None) for item_id in IDS
    ]

    fault_processors.repair()
    summary, _ = run_pipeline(**parameters)
    assert summary.run_id == run.run_id
    assert_every_item_finished_once(sqlite_url, run.run_id, IDS)


def test_a_processor_that_fails_every_item_fails_each_for_good_after_its_attempts(
    tmp_path: Path, sqlite_url: str, pipeline_name: str, fresh_fault_processors: None
) -> None:
    summary, _ = run_pipeline(
        source=write_csv(tmp_path / "items.csv", ITEMS),
        processor="tests.flows.fault_processors:fails_every_item",
        pipeline=pipeline_name,
        scaling=SIZE_10,
        execution=ExecutionOptions(max_attempts=2),
        database=sqlite_url,
    )
    records = assert_every_item_finished_once(sqlite_url, summary.run_id, IDS, failed=frozenset(IDS), max_attempts=2)
    assert [(record.status, record.total_items, record.failed_items) for record in records] == [
        (store.BatchStatus.COMPLETED, 10, 10)
    ] * 4
    assert all(item.error == f"cannot tag {item.item_id}" for item in ledger(sqlite_url, summary.run_id))
    assert (summary.done, summary.failed, summary.pending) == (0, ITEMS, 0)


def test_a_processor_that_drops_an_item_from_its_input_list_fails_the_batch_whole(
    tmp_path: Path, sqlite_url: str, pipeline_name: str, fresh_fault_processors: None
) -> None:
    summary, _ = run_pipeline(
        source=write_csv(tmp_path / "items.csv", ITEMS),
        processor="tests.flows.fault_processors:drops_an_item_from_its_input_once",
        pipeline=pipeline_name,
        scaling=SIZE_10,
        database=sqlite_url,
    )
    records = batches(sqlite_url, summary.run_id)
    first = records[0]
    # Ten items were claimed and nine results came back: that breaks the contract whatever
    # the processor did to the list it was handed.
    assert (first.status, first.batch_size, first.total_items, first.error) == (
        store.BatchStatus.FAILED_WHOLE,
        10,
        10,
        "ProcessorContractError: the processor returned 9 results for 10 items; "
        "it must return exactly one result per item, in order",
    )
    assert_every_item_finished_once(sqlite_url, summary.run_id, IDS)
