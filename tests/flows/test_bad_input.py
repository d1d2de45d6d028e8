"""Bad input is refused with a message that names the problem, before the store is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.exceptions import ParameterTypeError

from scaling_core import ItemSource, ProcessorError, SourceError
from tests.flows.support import (
    FAST_PROCESSOR,
    call_pipeline,
    ledger,
    postgres_store,
    run_pipeline,
    runs,
    stored_rows,
    write_csv,
)


def _csv(text: str) -> Callable[[Path], ItemSource]:
    def make(folder: Path) -> ItemSource:
        path = folder / "items.csv"
        path.write_text(text, encoding="utf-8")
        return ItemSource(path=path)

    return make


def _good(folder: Path) -> ItemSource:
    return write_csv(folder / "items.csv", 10)


CASES: dict[str, tuple[Callable[[Path], ItemSource], dict[str, Any], type[Exception], str]] = {
    "missing source": (
        lambda folder: ItemSource(path=folder / "missing.csv"), {}, SourceError, r"missing\.csv: file not found",
    ),
    "duplicate id": (
        _csv("id,name\ni1,a\ni2,b\ni1,c\n"), {}, SourceError, r"line 4: duplicate id 'i1' \(first seen on line 2\)",
    ),
    "empty source": (_csv("id,name\n"), {}, SourceError, "the file contains no items"),
    "missing id column": (_csv("sku,name\ns1,a\n"), {}, SourceError, r"missing id column 'id' in the header"),
    "processor path syntax": (
        _good, {"processor": "not a path"}, ParameterTypeError, r"processor: String should match",
    ),
    "processor module not found": (
        _good,
        {"processor": "tests.flows.no_such_module:process"},
        ProcessorError,
        r"module 'tests\.flows\.no_such_module' not found",
    ),
    "min above max": (
        _good,
        {"scaling": {"min_batch_size": 300, "max_batch_size": 100}},
        ParameterTypeError,
        r"scaling: .*min_batch_size \(300\) must not exceed max_batch_size \(100\)",
    ),
    "negative limit": (_good, {"limit": -5}, ParameterTypeError, r"limit: Input should be greater than 0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_writes_nothing(case: str, tmp_path: Path, pipeline_name: str) -> None:
    make_source, overrides, error, message = CASES[case]
    store_file = tmp_path / "store.db"
    parameters: dict[str, Any] = {
        "source": make_source(tmp_path),
        "processor": FAST_PROCESSOR,
        "pipeline": pipeline_name,
        "database": f"sqlite:///{store_file}",
        **overrides,
    }
    with pytest.raises(error, match=message):
        call_pipeline(**parameters)
    assert not any(stored_rows(store_file).values()), stored_rows(store_file)


def test_resuming_a_run_by_id_with_another_source_is_refused(
    tmp_path: Path, sqlite_url: str, pipeline_name: str
) -> None:
    common: dict[str, Any] = {"processor": FAST_PROCESSOR, "pipeline": pipeline_name, "database": sqlite_url}
    first, _ = run_pipeline(source=write_csv(tmp_path / "first.csv", 10), **common)
    other = write_csv(tmp_path / "second.csv", 10, start=100)
    # Like a run id of another pipeline, a run id of another source contradicts the call:
    # resuming would silently process nothing of `second.csv`.
    with pytest.raises(ValueError, match=r"second\.csv"):
        call_pipeline(source=other, run_id=first.run_id, **common)
    assert {item.item_id for item in ledger(sqlite_url, first.run_id)} == {f"i{n}" for n in range(10)}


@pytest.mark.postgres
def test_ids_the_store_cannot_hold_are_refused_with_their_lines_before_postgres_is_written(
    tmp_path: Path, request: pytest.FixtureRequest, pipeline_name: str
) -> None:
    url = postgres_store(request)
    path = tmp_path / "items.jsonl"
    rows = [{"id": "ok-1"}, {"id": "nul\u0000id"}, {"id": "x" * 501}, {"id": "x" * 500}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(SourceError) as refused:
        call_pipeline(source=ItemSource(path=path), processor=FAST_PROCESSOR, pipeline=pipeline_name, database=url)
    assert [(problem.line, problem.reason) for problem in refused.value.problems] == [
        (2, "the id holds a NUL character"),
        (3, "the id is 501 characters long; the store keeps ids of up to 500"),
    ]
    assert runs(url, pipeline_name) == []
