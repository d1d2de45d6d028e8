from __future__ import annotations

import csv
import io
import json
import tempfile
import tracemalloc
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scaling_core import sources
from scaling_core.sources import (
    Item,
    ItemSource,
    RowProblem,
    SourceError,
    SourceFingerprint,
    SourceSummary,
    iter_item_batches,
    iter_items,
    validate_source,
)


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return path


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _problems(source: ItemSource) -> list[RowProblem]:
    with pytest.raises(SourceError) as caught:
        validate_source(source)
    assert caught.value.path == source.path
    assert str(source.path) in str(caught.value)
    return caught.value.problems


# --- ItemSource -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.csv", "csv"), ("a.CSV", "csv"), ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl")],
)
def test_format_is_inferred_from_the_suffix(name: str, expected: str) -> None:
    assert ItemSource(path=Path(name)).format == expected


def test_explicit_format_wins_over_the_suffix() -> None:
    assert ItemSource(path=Path("export.txt"), format="jsonl").format == "jsonl"


def test_unknown_suffix_is_refused_by_name() -> None:
    with pytest.raises(ValidationError, match=r"cannot infer the format of 'export\.txt'.*'\.txt'"):
        ItemSource(path=Path("export.txt"))


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        ("klingon", "unknown encoding 'klingon'"),
        ("utf-16", "encoding 'utf-16' is not ASCII-compatible"),
        ("rot13", "'rot13' is not a text encoding"),
    ],
)
def test_unusable_encodings_are_refused(encoding: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ItemSource(path=Path("a.csv"), encoding=encoding)


def test_every_field_is_described_for_forms() -> None:
    for name, field in ItemSource.model_fields.items():
        assert field.description, name


def test_source_is_frozen() -> None:
    source = ItemSource(path=Path("a.csv"))
    with pytest.raises(ValidationError):
        source.id_field = "sku"  # type: ignore[misc]


# --- Reading ----------------------------------------------------------------------------


def test_csv_round_trip_keeps_strings_and_empty_values(tmp_path: Path) -> None:
    rows = [
        ["name", "id", "note", "price"],
        ["Crème brûlée dish", "a1", "", "12.50"],
        ["Chair, oak", "a2", 'says "hi"', ""],
        ["Multi\nline", "a3", "Grünwald", "7"],
    ]
    source = ItemSource(path=_write_csv(tmp_path / "items.csv", rows))

    items = list(iter_items(source))

    assert items == [
        Item("a1", {"name": "Crème brûlée dish", "note": "", "price": "12.50"}),
        Item("a2", {"name": "Chair, oak", "note": 'says "hi"', "price": ""}),
        Item("a3", {"name": "Multi\nline", "note": "Grünwald", "price": "7"}),
    ]
    summary = validate_source(source)
    assert summary == SourceSummary(
        path=source.path,
        format="csv",
        item_count=3,
        first_ids=["a1", "a2", "a3"],
        columns=["name", "note", "price"],
    )


def test_jsonl_round_trip_with_integer_ids_and_blank_lines(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "items.ndjson",
        [
            json.dumps({"id": 7, "tags": ["a", "b"], "meta": {"w": 1.5}}),
            "",
            "   ",
            json.dumps({"sku": "x", "id": "k-2", "name": "Fjällmark"}, ensure_ascii=False),
        ],
    )
    source = ItemSource(path=path)

    assert list(iter_items(source)) == [
        Item("7", {"tags": ["a", "b"], "meta": {"w": 1.5}}),
        Item("k-2", {"sku": "x", "name": "Fjällmark"}),
    ]
    summary = validate_source(source)
    assert (summary.format, summary.item_count, summary.first_ids, summary.columns) == (
        "jsonl",
        2,
        ["7", "k-2"],
        None,
    )


def test_custom_id_field_and_latin1_encoding(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes("sku,name\nS1,Caf\xe9\n".encode("latin-1"))

    items = list(iter_items(ItemSource(path=path, id_field="sku", encoding="latin-1")))

    assert items == [Item("S1", {"name": "Café"})]


def test_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfid,name\nA,B\n")

    assert list(iter_items(ItemSource(path=path))) == [Item("A", {"name": "B"})]


def test_limit_stops_reading_and_batches_split_evenly(tmp_path: Path) -> None:
    rows = [["id", "n"]] + [[f"i{k}", str(k)] for k in range(10)]
    source = ItemSource(path=_write_csv(tmp_path / "items.csv", rows))

    assert [item.id for item in iter_items(source, limit=3)] == ["i0", "i1", "i2"]
    assert [[item.id for item in chunk] for chunk in iter_item_batches(source, chunk_size=4, limit=9)] == [
        ["i0", "i1", "i2", "i3"],
        ["i4", "i5", "i6", "i7"],
        ["i8"],
    ]
    assert [len(chunk) for chunk in iter_item_batches(source, chunk_size=4)] == [4, 4, 2]
    assert validate_source(source, limit=4).item_count == 4


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_bad_limits_and_chunk_sizes_are_refused_at_call_time(tmp_path: Path, bad: object) -> None:
    source = ItemSource(path=_write_csv(tmp_path / "items.csv", [["id"], ["a"]]))
    with pytest.raises(ValueError, match=rf"limit must be a positive integer or None, got {bad!r}"):
        iter_items(source, limit=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"limit must be a positive integer or None, got {bad!r}"):
        validate_source(source, limit=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"chunk_size must be a positive integer, got {bad!r}"):
        iter_item_batches(source, chunk_size=bad)  # type: ignore[arg-type]


def test_reading_is_lazy_and_limit_never_reaches_a_bad_tail(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for k in range(200_000):
            handle.write(f'{{"id": "r{k}", "v": {k}}}\n')
        handle.write('{"id": "broken", "v": \n')
    source = ItemSource(path=path)

    first = list(islice(iter_items(source), 10))
    limited = validate_source(source, limit=1000)
    with pytest.raises(SourceError, match=r"line 200001: invalid JSON"):
        validate_source(source)

    assert [item.id for item in first] == [f"r{k}" for k in range(10)]
    assert limited.item_count == 1000


def test_iterating_and_validating_a_large_file_use_little_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    rows = 100_000
    with path.open("w", encoding="utf-8") as handle:
        handle.write("id,name,price\n")
        for k in range(rows):
            handle.write(f"item-{k:07d},Product number {k},{k % 997}.99\n")
    source = ItemSource(path=path)

    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_items(source))
        _, iter_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        summary = validate_source(source)
        _, validate_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == summary.item_count == rows
    # Holding the rows would take tens of MB, a set of the ids alone about 11 MB; the hash
    # table of validate_source takes 2 MB (3 MB while it grows).
    assert iter_peak < 1_000_000
    assert validate_peak < 5_000_000


def test_iter_items_raises_at_the_first_bad_row_after_the_good_ones(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "items.jsonl", ['{"id": "a"}', '{"id": "b"}', "[1]", '{"id": "c"}'])
    seen: list[str] = []

    with pytest.raises(SourceError, match=r"line 3: expected a JSON object, got an array") as caught:
        for item in iter_items(ItemSource(path=path)):
            seen.append(item.id)

    assert seen == ["a", "b"]
    assert caught.value.problems == [RowProblem(3, "expected a JSON object, got an array")]


def test_abandoned_iteration_closes_the_file(tmp_path: Path) -> None:
    # Warnings are errors here, so an unclosed file would fail this test with ResourceWarning.
    path = _write_lines(tmp_path / "items.jsonl", [f'{{"id": "{k}"}}' for k in range(100)])
    iterator = iter_items(ItemSource(path=path))
    assert next(iterator).id == "0"
    del iterator


# --- Rejected files and rows --------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    source = ItemSource(path=tmp_path / "nope.csv")
    with pytest.raises(SourceError, match=r"nope\.csv: file not found"):
        validate_source(source)
    with pytest.raises(SourceError, match="file not found"):
        iter_items(source)


def test_directory_is_not_a_source(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    assert _problems(ItemSource(path=tmp_path / "dir.csv")) == [
        RowProblem(None, "is a directory, not a file")
    ]


def test_undecodable_bytes_are_reported_on_their_line(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes(b"id,name\na,ok\nb,caf\xe9\nc,ok\n")

    [problem] = _problems(ItemSource(path=path))

    assert problem.line == 3
    assert "cannot be decoded as utf-8" in problem.reason


def test_undecodable_header_fails_the_file(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes(b"id,n\xe9me\na,b\n")

    [problem] = _problems(ItemSource(path=path))

    assert problem.line == 1
    assert problem.reason.startswith("header cannot be decoded")


def test_missing_id_column_names_the_columns(tmp_path: Path) -> None:
    source = ItemSource(path=_write_csv(tmp_path / "items.csv", [["sku", "name"], ["a", "b"]]))
    with pytest.raises(SourceError, match=r"line 1: missing id column 'id' in the header \(columns: 'sku', 'name'\)"):
        validate_source(source)


def test_duplicate_header_column_is_refused(tmp_path: Path) -> None:
    source = ItemSource(path=_write_csv(tmp_path / "items.csv", [["id", "x", "x"], ["a", "b", "c"]]))
    assert _problems(source) == [RowProblem(1, "duplicate column 'x' in the header")]


def test_csv_row_problems_carry_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        "id,name,price\n"  # 1
        "a,Chair,10\n"  # 2
        'b,"Two\nlines",20\n'  # 3-4
        "\n"  # 5: blank, skipped
        "a,Again,3\n"  # 6
        " ,Blank id,3\n"  # 7
        "c,Short\n"  # 8
        "d,Long,1,2\n"  # 9
        'e,"bad"quote,1\n'  # 10
        "a,Third,1\n"  # 11
        'f,"never closed,5\n',  # 12
        encoding="utf-8",
    )

    problems = _problems(ItemSource(path=path))

    assert problems == [
        RowProblem(6, "duplicate id 'a' (first seen on line 2)"),
        RowProblem(7, "empty id"),
        RowProblem(8, "expected 3 fields, got 2"),
        RowProblem(9, "expected 3 fields, got 4"),
        RowProblem(10, "malformed CSV: ',' expected after '\"'"),
        RowProblem(11, "duplicate id 'a' (first seen on line 2)"),
        RowProblem(12, "malformed CSV: unexpected end of data"),
    ]


def test_jsonl_row_problems_carry_their_line_numbers(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "items.jsonl",
        [
            '{"id": 1, "a": 2}',  # 1
            '{"id": "x", "a": "trunc',  # 2
            "[1, 2]",  # 3
            '{"name": "no id"}',  # 4
            '{"id": ""}',  # 5
            '{"id": true}',  # 6
            '{"id": 1.5}',  # 7
            '{"id": null}',  # 8
            '{"id": "1"}',  # 9: the same id as line 1 once converted
            '{"id": "n", "v": NaN}',  # 10
            '"just a string"',  # 11
        ],
    )

    problems = _problems(ItemSource(path=path))

    assert [(problem.line, problem.reason) for problem in problems] == [
        (2, "invalid JSON at column 18: Unterminated string starting at"),
        (3, "expected a JSON object, got an array"),
        (4, "missing id field 'id'"),
        (5, "empty id"),
        (6, "id field 'id' must be a string or an integer, got a boolean"),
        (7, "id field 'id' must be a string or an integer, got a number"),
        (8, "id field 'id' must be a string or an integer, got null"),
        (9, "duplicate id '1' (first seen on line 1)"),
        (10, "invalid JSON: NaN is not valid JSON"),
        (11, "expected a JSON object, got a string"),
    ]


def test_fields_over_max_field_bytes_are_rejected(tmp_path: Path) -> None:
    csv_path = _write_csv(
        tmp_path / "items.csv",
        [["id", "text"], ["a", "x" * 100], ["b", "é" * 60], ["c", "x" * 101], ["d", "x" * 5000]],
    )
    jsonl_path = _write_lines(
        tmp_path / "items.jsonl",
        [json.dumps({"id": "a", "text": "x" * 100}), json.dumps({"id": "b", "list": ["y" * 200]})],
    )

    csv_problems = _problems(ItemSource(path=csv_path, max_field_bytes=100))
    jsonl_problems = _problems(ItemSource(path=jsonl_path, max_field_bytes=100))

    # "é" * 60 is 60 characters but 120 bytes.
    assert [problem.line for problem in csv_problems] == [3, 4, 5]
    assert csv_problems[0].reason == "field 'text' is larger than max_field_bytes (100 bytes)"
    assert jsonl_problems == [RowProblem(2, "field 'list' is larger than max_field_bytes (100 bytes)")]


def test_fields_beyond_the_csv_modules_default_limit_are_read(tmp_path: Path) -> None:
    big = "z" * 300_000  # the csv module refuses fields over 131,072 characters by default
    source = ItemSource(path=_write_csv(tmp_path / "items.csv", [["id", "text"], ["a", big]]))

    assert list(iter_items(source)) == [Item("a", {"text": big})]


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.csv", ""), ("header.csv", "id,name\n\n"), ("blank.jsonl", "\n  \n\n"), ("empty.jsonl", "")],
)
def test_a_source_without_items_is_refused(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert _problems(ItemSource(path=path)) == [RowProblem(None, "the file contains no items")]


def test_long_problem_lists_are_shortened_in_the_message(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "items.jsonl", ['{"id": ""}'] * 25 + ['{"id": "ok"}'])

    with pytest.raises(SourceError) as caught:
        validate_source(ItemSource(path=path))

    message = str(caught.value)
    assert message.startswith(f"{path}: 25 rows were rejected:")
    assert "line 20: empty id" in message
    assert "line 21: empty id" not in message
    assert message.endswith("... and 5 more")
    assert len(caught.value.problems) == caught.value.problem_count == 25


def test_hash_collisions_are_not_reported_as_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Force every id into one of two hash values so that the second pass must tell
    # colliding ids from equal ones.
    monkeypatch.setattr(sources, "_id_hash", lambda item_id: 1 + len(item_id) % 2)
    path = _write_lines(tmp_path / "items.jsonl", [f'{{"id": "{item_id}"}}' for item_id in ["a", "b", "cc", "a", "dd"]])

    assert _problems(ItemSource(path=path)) == [RowProblem(4, "duplicate id 'a' (first seen on line 1)")]
    assert validate_source(ItemSource(path=path), limit=3).item_count == 3


def test_hash_table_grows_and_remembers_every_value() -> None:
    table = sources._HashTable(capacity=8)
    values = [(k * 0x9E3779B97F4A7C15) % 2**64 or 1 for k in range(1, 5000)]

    assert all(table.add(value) for value in values)
    assert not any(table.add(value) for value in values)


# --- Property: exactly the faulty lines are reported ----------------------------------------

_MAX_FIELD = 64
_JSONL_FAULTS = ("truncated_json", "invalid_utf8", "huge_field", "duplicate_id", "empty_id", "not_object")
_CSV_FAULTS = ("invalid_utf8", "huge_field", "duplicate_id", "empty_id", "field_count")
_CSV_TEXT = st.text(alphabet=st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)), max_size=10)
_JSON_TEXT = st.text(max_size=10)


def _jsonl_line(kind: str, row: int, data: st.DataObject, ok_ids: list[str]) -> bytes | None:
    """The bytes of one line of the given kind, or None when the kind is not possible here."""
    match kind:
        case "ok":
            return json.dumps({"id": f"r{row}", "v": data.draw(_JSON_TEXT)}, ensure_ascii=False).encode()
        case "blank":
            return data.draw(st.sampled_from([b"", b"   ", b"\t"]))
        case "truncated_json":
            text = json.dumps({"id": f"r{row}", "v": data.draw(_JSON_TEXT)}, ensure_ascii=False)
            return text[: data.draw(st.integers(1, len(text) - 1))].encode()
        case "invalid_utf8":
            return f'{{"id": "r{row}", "v": "'.encode() + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + b'"}'
        case "huge_field":
            return json.dumps({"id": f"r{row}", "v": "x" * (_MAX_FIELD + 1)}).encode()
        case "duplicate_id":
            return json.dumps({"id": data.draw(st.sampled_from(ok_ids))}).encode() if ok_ids else None
        case "empty_id":
            return json.dumps({"id": data.draw(st.sampled_from(["", " "]))}).encode()
        case _:
            return data.draw(st.sampled_from([b"[1, 2]", b'"text"', b"3", b"null"]))


def _csv_line(kind: str, row: int, data: st.DataObject, ok_ids: list[str]) -> bytes | None:
    def encode(*fields: str) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(fields)
        return buffer.getvalue().encode()

    match kind:
        case "ok":
            return encode(f"r{row}", data.draw(_CSV_TEXT))
        case "blank":
            return b""
        case "invalid_utf8":
            return f"r{row},".encode() + data.draw(st.sampled_from([b"\xff", b"caf\xe9", b"\x80x"]))
        case "huge_field":
            return encode(f"r{row}", "x" * (_MAX_FIELD + 1))
        case "duplicate_id":
            return encode(data.draw(st.sampled_from(ok_ids)), "dup") if ok_ids else None
        case "empty_id":
            return encode(data.draw(st.sampled_from(["", "  "])), "x")
        case _:
            return encode(f"r{row}", "a", "b")


@pytest.mark.parametrize("file_format", ["jsonl", "csv"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_validate_reports_exactly_the_faulty_lines(file_format: str, data: st.DataObject) -> None:
    faults = _JSONL_FAULTS if file_format == "jsonl" else _CSV_FAULTS
    make_line = _jsonl_line if file_format == "jsonl" else _csv_line
    kinds = data.draw(
        st.lists(st.sampled_from(("ok", "ok", "ok", "blank", *faults)), min_size=1, max_size=30)
    )
    lines: list[bytes] = [b"id,v"] if file_format == "csv" else []
    ok_ids: list[str] = []
    faulty_lines: set[int] = set()
    for row, kind in enumerate(kinds):
        line = make_line(kind, row, data, ok_ids)
        if line is None:
            kind, line = "ok", make_line("ok", row, data, ok_ids)
            assert line is not None
        lines.append(line)
        if kind == "ok":
            ok_ids.append(f"r{row}")
        elif kind != "blank":
            faulty_lines.add(len(lines))

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"items.{file_format}"
        path.write_bytes(b"\n".join(lines) + b"\n")
        source = ItemSource(path=path, max_field_bytes=_MAX_FIELD)
        try:
            summary = validate_source(source)
        except SourceError as error:
            reported = {problem.line for problem in error.problems}
            if faulty_lines:
                assert reported == faulty_lines
                assert error.problem_count == len(faulty_lines)
                for line in sorted(faulty_lines)[: SourceError.MAX_SHOWN_PROBLEMS]:
                    assert f"line {line}: " in str(error)
            else:
                assert not ok_ids
                assert error.problems == [RowProblem(None, "the file contains no items")]
        else:
            assert not faulty_lines
            assert summary.item_count == len(ok_ids)
            assert [item.id for item in iter_items(source)] == ok_ids


def test_ids_the_store_cannot_hold_are_rejected_rows(tmp_path: Path) -> None:
    csv_path = tmp_path / "items.csv"
    csv_path.write_text("id,name\nok,a\n" + "y" * 501 + ",b\n" + "z" * 500 + ",c\n", encoding="utf-8")
    assert _problems(ItemSource(path=csv_path)) == [
        RowProblem(3, "the id is 501 characters long; the store keeps ids of up to 500"),
    ]
    jsonl_path = _write_lines(tmp_path / "items.jsonl", ['{"id": "a\\u0000b"}', '{"id": "fine"}'])
    assert _problems(ItemSource(path=jsonl_path)) == [RowProblem(1, "the id holds a NUL character")]


def test_a_file_is_hashed_once_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scaling_core.sources import _model

    path = tmp_path / "items.csv"
    path.write_text("id,text\na,x\n")
    reads: list[str] = []
    real = _model.hashlib.file_digest

    def counted(handle: Any, digest: str) -> Any:
        reads.append(handle.name)
        return real(handle, digest)

    monkeypatch.setattr(_model.hashlib, "file_digest", counted)
    source = ItemSource(path=path)
    first, second = SourceFingerprint.of(source), SourceFingerprint.of(source)
    assert first == second and len(reads) == 1
    path.write_text("id,text\na,y\n")  # same size, new content
    changed = SourceFingerprint.of(source)
    assert len(reads) == 2 and changed.sha256 != first.sha256
