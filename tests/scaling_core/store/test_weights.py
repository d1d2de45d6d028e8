"""Claims within a weight budget, and the weight and cost of batches and items, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from scaling_core import (
    BatchManager,
    ConfidenceLevel,
    CostBudget,
    ItemResult,
    create_schema,
    iter_results,
    store,
)
from scaling_core.store import run_report, run_totals
from tests.scaling_core.store.support import claim_concurrently

WEIGHTS = [3.0, 4.0, 10.0, 1.0, 1.0, 2.0, 9.0, 1.0]


def _weighed_run(engine: Engine, weights: list[float], pipeline: str = "w") -> str:
    with store.open_session(engine) as session:
        run = store.start_run(session, pipeline=pipeline, source="s.csv", processor="m:f", config={})
        store.load_items(session, run.run_id, [(i, f"item-{i}", {"n": i}, w) for i, w in enumerate(weights)])
        session.commit()
        store.mark_loaded(session, run.run_id)
        return run.run_id


def _claim(engine: Engine, run_id: str, limit: int, max_weight: float | None, batch_id: int = 1) -> list[str]:
    with store.open_session(engine) as session:
        claimed = store.claim_items(session, run_id, limit, batch_id=batch_id, worker="a", max_weight=max_weight)
        session.commit()
    return [item.item_id for item in claimed]


def test_a_claim_takes_items_in_ledger_order_within_the_weight_budget(engine: Engine) -> None:
    run_id = _weighed_run(engine, WEIGHTS)
    # 3 + 4 fit 8; 10 does not follow, and nothing lighter after it is taken instead.
    assert _claim(engine, run_id, 5, 8.0) == ["item-0", "item-1"]
    # An item heavier than the budget runs alone.
    assert _claim(engine, run_id, 5, 8.0) == ["item-2"]
    # The size still binds: 1 + 1 would leave room for 2, but two items were asked for.
    assert _claim(engine, run_id, 2, 8.0) == ["item-3", "item-4"]
    assert _claim(engine, run_id, 5, 8.0) == ["item-5"]
    assert _claim(engine, run_id, 5, 8.0) == ["item-6"]
    assert _claim(engine, run_id, 5, 8.0) == ["item-7"]
    assert _claim(engine, run_id, 5, 8.0) == []


def test_the_items_a_claim_leaves_over_the_budget_stay_pending_for_the_next(engine: Engine) -> None:
    run_id = _weighed_run(engine, WEIGHTS)
    with store.open_session(engine) as session:
        first = store.claim_items(session, run_id, 8, batch_id=1, worker="a", max_weight=20.0)
        session.commit()
        counts = store.count_items(session, run_id)
    assert [(item.item_id, item.weight) for item in first] == [("item-0", 3.0), ("item-1", 4.0), ("item-2", 10.0),
                                                              ("item-3", 1.0), ("item-4", 1.0)]
    assert (counts.processing, counts.pending) == (5, 3)
    assert _claim(engine, run_id, 8, None, batch_id=2) == ["item-5", "item-6", "item-7"]


def test_items_without_weights_weigh_nothing_in_a_weighed_claim(engine: Engine) -> None:
    with store.open_session(engine) as session:
        run = store.start_run(session, pipeline="w", source="s.csv", processor="m:f", config={})
        store.load_items(session, run.run_id, [(i, f"item-{i}", {}) for i in range(6)])
        session.commit()
    assert _claim(engine, run.run_id, 4, 1.0) == ["item-0", "item-1", "item-2", "item-3"]


def test_concurrent_weighed_claims_share_nothing_and_keep_within_the_budget(engine: Engine) -> None:
    weights = [float(1 + (i * 7) % 13) for i in range(300)]
    run_id = _weighed_run(engine, weights)
    claims = claim_concurrently(engine, run_id, 9, max_weight=25.0)
    assert all(len(claim) == 1 or sum(item.weight or 0.0 for item in claim) <= 25.0 for claim in claims)
    claimed = [[item.item_id for item in claim] for claim in claims]
    every = [item for batch in claimed for item in batch]
    assert sorted(every) == sorted(f"item-{i}" for i in range(300))
    # Each claim is a run of consecutive items of the ledger.
    for batch in claimed:
        seqs = [int(item_id.removeprefix("item-")) for item_id in batch]
        assert seqs == sorted(seqs)


def test_a_bad_weight_budget_is_refused(engine: Engine) -> None:
    run_id = _weighed_run(engine, WEIGHTS)
    with store.open_session(engine) as session, pytest.raises(ValueError, match="max_weight must be positive"):
        store.claim_items(session, run_id, 3, batch_id=1, worker="a", max_weight=0.0)


def _results(items: list[str], *, failing: frozenset[str] = frozenset()) -> list[ItemResult]:
    return [
        ItemResult(item_id=item, success=item not in failing, confidence=0.9, level=ConfidenceLevel.HIGH)
        for item in items
    ]


def test_batches_and_items_record_their_weight_and_cost_retries_included(engine: Engine) -> None:
    run_id = _weighed_run(engine, WEIGHTS)
    budget = CostBudget(cost_per_item=0.5, cost_per_weight_unit=0.1)
    batches = BatchManager(
        engine, run_id=run_id, pipeline="w", batch_size=5, worker="a", max_batch_weight=8.0, budget=budget
    )
    first = batches.next_batch()
    assert first is not None and first.total_weight == 7.0
    result = batches.complete_batch(first, _results(["item-0", "item-1"], failing=frozenset({"item-1"})), 1.0)
    assert result.total_weight == 7.0
    second = batches.next_batch()
    assert second is not None and [item.id for item in second.items] == ["item-1"]  # the retry comes first
    batches.fail_batch(second, "boom", 1.0)
    third = batches.next_batch()
    assert third is not None
    batches.complete_batch(third, _results([item.id for item in third.items]), 1.0)
    # Batch costs: 2 x 0.5 + 7 x 0.1; 0.5 + 4 x 0.1; 0.5 + 4 x 0.1 (item-1 again, alone: 4 + 10 > 8).
    expected = [1.7, 0.9, 0.9]
    with store.open_session(engine) as session:
        rows = store.run_stages(session, run_id)
        spent = store.run_cost(session, run_id)
        totals = run_totals(session, run_id)
        report = run_report(session, run_id)
        history = store.recent_batches(session, "w", 10)
    assert [row.cost for row in rows] == pytest.approx(expected)
    assert [row.weight for row in rows] == [7.0, 4.0, 4.0]
    assert [result.total_weight for result in history] == [7.0, 4.0, 4.0]
    assert spent == pytest.approx(sum(expected)) and totals.cost == pytest.approx(sum(expected))
    assert report.cost == pytest.approx(sum(expected)) and totals.weight == report.weight == 15.0
    exported = {row["id"]: row for row in iter_results(engine, run_id)}
    # item-1 ran three times: 3 x (0.5 + 0.4).
    assert exported["item-1"]["cost"] == pytest.approx(2.7)
    assert exported["item-0"]["cost"] == pytest.approx(0.8) and exported["item-0"]["weight"] == 3.0
    assert exported["item-2"]["cost"] is None and exported["item-2"]["weight"] == 10.0
    assert sum(row["cost"] or 0.0 for row in exported.values()) == pytest.approx(sum(expected))


def test_the_next_claim_is_known_before_it_is_made_and_claims_nothing(engine: Engine) -> None:
    run_id = _weighed_run(engine, WEIGHTS)
    with store.open_session(engine) as session:
        assert store.next_claim(session, run_id, 5, max_weight=8.0) == (2, 7.0)
        assert store.next_claim(session, run_id, 5) == (5, 19.0)
        assert store.next_claim(session, run_id, 0) == (0, 0.0)
        assert store.count_items(session, run_id).pending == len(WEIGHTS)
    for limit in (5, 5, 2, 5, 5, 5):
        with store.open_session(engine) as session:
            expected = store.next_claim(session, run_id, limit, max_weight=8.0)
            claimed = store.claim_items(session, run_id, limit, batch_id=1, worker="a", max_weight=8.0)
            session.commit()
        assert expected == (len(claimed), sum(item.weight or 0.0 for item in claimed))
    with store.open_session(engine) as session:
        assert store.next_claim(session, run_id, 5, max_weight=8.0) == (0, 0.0)


def test_an_unpriced_run_records_no_cost(engine: Engine) -> None:
    run_id = _weighed_run(engine, WEIGHTS)
    with store.open_session(engine) as session:
        assert store.run_cost(session, run_id) == 0.0
    batches = BatchManager(engine, run_id=run_id, pipeline="w", batch_size=3, worker="a")
    claimed = batches.next_batch()
    assert claimed is not None
    batches.complete_batch(claimed, _results([item.id for item in claimed.items]), 1.0)
    with store.open_session(engine) as session:
        [row] = store.run_stages(session, run_id)
        assert run_totals(session, run_id).cost is None
    assert (row.cost, row.weight) == (None, 17.0)


def test_a_store_made_before_weights_opens_and_gains_them(engine: Engine) -> None:
    with engine.begin() as connection:
        for table, column in (("ledger_item", "weight"), ("ledger_item", "cost"), ("batch_record", "total_weight"),
                              ("batch_record", "cost")):
            connection.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    create_schema(engine)
    run_id = _weighed_run(engine, WEIGHTS)
    assert _claim(engine, run_id, 5, 8.0) == ["item-0", "item-1"]
