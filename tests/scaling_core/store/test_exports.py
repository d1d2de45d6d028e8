"""A run's results streamed out of the ledger, and the list of runs, on real databases."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from scaling_core import ConfidenceLevel, ItemResult
from scaling_core import store
from tests.scaling_core.store.support import new_run


def _stage(engine: Engine, run_id: str, size: int, results: dict[int, ItemResult | None]) -> int:
    """A stage that claims `size` items and writes `results` (by position; None: a failed item)."""
    with store.open_session(engine) as session:
        batch_id, stage = store.insert_batch(session, run_id=run_id, pipeline="p", batch_size=size, worker="w")
        claimed = store.claim_items(session, run_id, size, batch_id=batch_id, worker="w")
        written = [
            results.get(position)
            or ItemResult(item_id=item.item_id, success=False, confidence=0.0, error=f"no answer for {item.item_id}")
            for position, item in enumerate(claimed)
        ]
        written = [result.model_copy(update={"item_id": item.item_id}) for result, item in zip(written, claimed)]
        store.record_item_results(
            session, run_id, written, batch_id=batch_id, attempts_before={}, max_attempts=1
        )
        session.commit()
        return stage


def test_iter_results_streams_every_item_in_source_order_with_its_stage(engine: Engine) -> None:
    run_id = new_run(engine, items=7)
    answer = ItemResult(item_id="?", confidence=0.9, level=ConfidenceLevel.HIGH, output={"tag": "x"})
    assert _stage(engine, run_id, 3, {0: answer, 2: answer}) == 1
    assert _stage(engine, run_id, 2, {0: answer, 1: answer}) == 2

    rows = list(store.iter_results(engine, run_id, chunk_size=2))

    assert [row["id"] for row in rows] == [f"item-{i}" for i in range(7)]
    assert [(row["success"], row["stage"]) for row in rows] == [
        (True, 1), (False, 1), (True, 1), (True, 2), (True, 2), (None, None), (None, None)
    ]
    assert rows[0]["output"] == {"tag": "x"} and rows[0]["level"] == "High" and rows[0]["confidence"] == 0.9
    assert (rows[1]["error"], rows[1]["attempts"]) == ("no answer for item-1", 1)
    assert all(tuple(row) == store.RESULT_FIELDS for row in rows)


def test_iter_results_joins_the_source_fields_when_asked(engine: Engine) -> None:
    run_id = new_run(engine, items=3)
    rows = list(store.iter_results(engine, run_id, with_source=True))
    assert [row["source"] for row in rows] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_iter_results_names_an_unknown_run_before_any_row(engine: Engine) -> None:
    with pytest.raises(LookupError, match="no run 'nope' in the store"):
        next(store.iter_results(engine, "nope"))


def test_runs_are_listed_newest_first_with_their_items_done(engine: Engine) -> None:
    first = new_run(engine, items=4)
    _stage(engine, first, 3, {0: ItemResult(item_id="?", confidence=0.9)})
    second = new_run(engine, items=2, pipeline="q")

    listed = store.list_runs(engine)
    assert [(run.run_id, run.pipeline, run.items, run.done) for run in listed] == [
        (second, "q", 2, 0),
        (first, "p", 4, 1),
    ]
    assert [run.run_id for run in store.list_runs(engine, pipeline="p")] == [first]
    with store.open_session(engine) as session:
        assert store.find_run(session, pipeline="p").run_id == first
        assert store.find_run(session).run_id == second
        with pytest.raises(LookupError, match="belongs to pipeline 'q', not 'p'"):
            store.find_run(session, run_id=second, pipeline="p")
