"""Item weights from a source's weight field or a processor module's `item_weight`, and the cost budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from scaling_core import (
    CostBudget,
    Item,
    ItemSource,
    SourceError,
    iter_items,
    load_item_weight,
    validate_source,
)
from scaling_core.processing import ProcessorError
from scaling_core.runs import check_inputs, weight_function

WEIGHED = "tests.scaling_core.weighed_processor:embed"
"""A processor whose module defines `item_weight` (the length of the item's text)."""


def _csv(path: Path, rows: list[str], header: str = "id,text,tokens") -> ItemSource:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return ItemSource(path=path, weight_field="tokens")


def test_a_weight_column_gives_each_item_its_weight_and_stays_in_the_payload(tmp_path: Path) -> None:
    source = _csv(tmp_path / "docs.csv", ["a,hello,12", "b,world, 3.5 ", "c,empty,0"])
    assert validate_source(source).item_count == 3
    assert list(iter_items(source)) == [
        Item("a", {"text": "hello", "tokens": "12"}, 12.0),
        Item("b", {"text": "world", "tokens": " 3.5 "}, 3.5),
        Item("c", {"text": "empty", "tokens": "0"}, 0.0),
    ]


def test_bad_weights_are_rejected_rows_naming_the_line_and_the_field(tmp_path: Path) -> None:
    source = _csv(tmp_path / "docs.csv", ["a,ok,1", "b,neg,-2", "c,word,many", "d,blank,", "e,inf,inf"])
    with pytest.raises(SourceError) as caught:
        validate_source(source)
    assert [str(problem) for problem in caught.value.problems] == [
        "line 3: weight field 'tokens' is negative: '-2'",
        "line 4: weight field 'tokens' is not a number: 'many'",
        "line 5: weight field 'tokens' is not a number: ''",
        "line 6: weight field 'tokens' is not a finite number: 'inf'",
    ]
    with pytest.raises(SourceError, match="line 3: weight field 'tokens' is negative"):
        list(iter_items(source))


def test_a_csv_header_without_the_weight_column_fails_the_file(tmp_path: Path) -> None:
    source = _csv(tmp_path / "docs.csv", ["a,hello"], header="id,text")
    with pytest.raises(SourceError, match=r"line 1: missing weight column 'tokens' in the header \(columns: 'id', 'text'\)"):
        validate_source(source)


def test_json_lines_weights_must_be_numbers_present_in_every_row(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    rows = [{"id": "a", "tokens": 7}, {"id": "b"}, {"id": "c", "tokens": True}, {"id": "d", "tokens": "8"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    source = ItemSource(path=path, weight_field="tokens")
    with pytest.raises(SourceError) as caught:
        validate_source(source)
    assert [str(problem) for problem in caught.value.problems] == [
        "line 2: missing weight field 'tokens'",
        "line 3: weight field 'tokens' is not a number: True",
    ]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[3]) + "\n", encoding="utf-8")
    assert [item.weight for item in iter_items(source)] == [7.0, 8.0]


def test_the_weight_field_cannot_be_the_id_field(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="weight_field 'id' must not be the id field"):
        ItemSource(path=tmp_path / "docs.csv", weight_field="id")


def test_a_processor_module_may_weigh_items_with_item_weight(tmp_path: Path) -> None:
    source = ItemSource(path=tmp_path / "docs.csv")
    source.path.write_text("id,text\na,hello\nb,hi\n", encoding="utf-8")
    weigh = load_item_weight(WEIGHED)
    assert weigh is not None and weight_function(source, WEIGHED) is weigh
    assert check_inputs(source, WEIGHED, None).item_count == 2
    assert [item.weight for item in iter_items(source, weigh=weigh)] == [5.0, 2.0]
    # A processor module without one weighs nothing; a named weight field wins over the function.
    assert load_item_weight("scaling_core.samples.simulated_llm:simulated_llm_fast") is None
    assert weight_function(source.model_copy(update={"weight_field": "text"}), WEIGHED) is None


def test_rows_item_weight_cannot_weigh_are_rejected_before_any_work(tmp_path: Path) -> None:
    source = ItemSource(path=tmp_path / "docs.csv")
    source.path.write_text("id,text\na,hello\nb,\nc,boom\n", encoding="utf-8")
    with pytest.raises(SourceError) as caught:
        check_inputs(source, WEIGHED, None)
    assert [str(problem) for problem in caught.value.problems] == [
        "line 3: the weight item_weight() returned is negative: -1.0",
        "line 4: item_weight() raised ValueError: no weight for 'boom'",
    ]


def test_an_item_weight_that_is_not_a_function_is_refused() -> None:
    with pytest.raises(ProcessorError, match="item_weight in module .* must be a function"):
        load_item_weight("tests.scaling_core.weighed_processor_bad:embed")


def test_a_batch_costs_its_items_and_its_weight_at_the_prices_per_unit() -> None:
    budget = CostBudget(cost_per_item=0.001, cost_per_weight_unit=0.002 / 1000, max_cost=1.0)
    assert budget.batch_cost(items=10, weight=5_000) == pytest.approx(0.02)
    assert budget.batch_cost(items=10, weight=None) == pytest.approx(0.01)
    assert CostBudget().batch_cost(items=10, weight=5_000) is None


def test_the_budget_stops_only_when_spent_plus_the_next_stage_would_pass_it() -> None:
    budget = CostBudget(cost_per_item=0.01, max_cost=2.0)
    assert budget.stop_message(spent=1.5, next_cost=0.5, finished=150) is None
    assert budget.stop_message(spent=1.5, next_cost=0.51, finished=150) == (
        "budget reached after 150 items, $1.50; rerun with a higher --max-cost to continue"
    )
    assert budget.stop_message(spent=0.0042, next_cost=9.0, finished=3) == (
        "budget reached after 3 items, $0.0042; rerun with a higher --max-cost to continue"
    )
    assert CostBudget(cost_per_item=0.01).stop_message(spent=1e9, next_cost=1e9, finished=1) is None


@pytest.mark.parametrize(
    ("values", "named"),
    [({"cost_per_item": -0.1}, "cost_per_item"), ({"cost_per_weight_unit": -1}, "cost_per_weight_unit"),
     ({"max_cost": 0}, "max_cost"), ({"max_cost": -5}, "max_cost")],
)
def test_negative_prices_and_a_budget_of_zero_or_less_are_refused(values: dict[str, float], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        CostBudget.model_validate(values)
