"""Rows of CSV and JSON Lines files, read as bytes and decoded line by line.

A row is `(line, item, None)` when accepted and `(line, None, reason)` when rejected.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any

from scaling_core.sources._model import MAX_ID_LENGTH, Item, ItemSource, RowProblem, SourceError, weight_problem

_Row = tuple[int, Item | None, str | None]


def _iter_rows(source: ItemSource) -> Iterator[_Row]:
    try:
        with source.path.open("rb") as handle:
            if source.format == "csv":
                yield from _iter_csv_rows(source, handle)
            else:
                yield from _iter_jsonl_rows(source, handle)
    except OSError as error:
        raise SourceError(source.path, [RowProblem(None, f"cannot be read: {error.strerror or error}")]) from error


def _id_problem(item_id: str) -> str | None:
    """Why the store could not hold `item_id` as a ledger key, or None."""
    if not item_id.strip():
        return "empty id"
    if "\x00" in item_id:
        # PostgreSQL text cannot hold a NUL character; SQLite would cut the key short.
        return "the id holds a NUL character"
    if len(item_id) > MAX_ID_LENGTH:
        return f"the id is {len(item_id)} characters long; the store keeps ids of up to {MAX_ID_LENGTH}"
    return None


def _decode_problem(error: UnicodeDecodeError, encoding: str) -> str:
    return f"cannot be decoded as {encoding} at byte {error.start} of the line: {error.reason}"


def _oversized_problem(name: str, source: ItemSource) -> str:
    return f"field {name!r} is larger than max_field_bytes ({source.max_field_bytes} bytes)"


def _iter_jsonl_rows(source: ItemSource, handle: Any) -> Iterator[_Row]:
    id_field, encoding, max_bytes = source.id_field, source.encoding, source.max_field_bytes
    for line, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as error:
            yield line, None, _decode_problem(error, encoding)
            continue
        if line == 1:
            text = text.removeprefix("\ufeff")
        try:
            # Without its line break, a truncated line reads "Unterminated string", not
            # "Invalid control character".
            record = json.loads(text.rstrip("\r\n"), parse_constant=_reject_constant)
        except json.JSONDecodeError as error:
            yield line, None, f"invalid JSON at column {error.pos + 1}: {error.msg}"
            continue
        except ValueError as error:
            yield line, None, f"invalid JSON: {error}"
            continue
        if not isinstance(record, dict):
            yield line, None, f"expected a JSON object, got {_json_type(record)}"
            continue
        if id_field not in record:
            yield line, None, f"missing id field {id_field!r}"
            continue
        raw_id = record.pop(id_field)
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            yield line, None, f"id field {id_field!r} must be a string or an integer, got {_json_type(raw_id)}"
            continue
        item_id = str(raw_id)
        if problem := _id_problem(item_id):
            yield line, None, problem
            continue
        # No field can exceed the limit when the whole line does not.
        if len(raw) > max_bytes:
            oversized = _oversized_json_field(record, encoding, max_bytes)
            if oversized is not None:
                yield line, None, _oversized_problem(oversized, source)
                continue
        weight: float | None = None
        if source.weight_field is not None:
            if source.weight_field not in record:
                yield line, None, f"missing weight field {source.weight_field!r}"
                continue
            raw_weight = record[source.weight_field]
            if problem := weight_problem(raw_weight, f"weight field {source.weight_field!r}"):
                yield line, None, problem
                continue
            weight = float(raw_weight)
        yield line, Item(item_id, record, weight), None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case _:
            return type(value).__name__


def _oversized_json_field(record: dict[str, Any], encoding: str, max_bytes: int) -> str | None:
    for name, value in record.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(text.encode(encoding, errors="replace")) > max_bytes:
            return name
    return None


class _LineFeed:
    """Decoded lines for `csv.reader`, remembering where each record starts.

    Lines are decoded one by one so that an undecodable byte is reported on its own line
    (a text-mode file decodes 8 KB blocks and cannot say where). Undecodable lines are
    skipped and kept in `problems` for the caller to report.
    """

    def __init__(self, handle: Any, encoding: str) -> None:
        self._lines = enumerate(handle, start=1)
        self._encoding = encoding
        self.record_start: int | None = None
        self.last_line = 0
        self.problems: list[tuple[int, str]] = []

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        while True:
            line, raw = next(self._lines)
            self.last_line = line
            try:
                text: str = raw.decode(self._encoding)
            except UnicodeDecodeError as error:
                self.problems.append((line, _decode_problem(error, self._encoding)))
                continue
            if line == 1:
                text = text.removeprefix("\ufeff")
            if self.record_start is None:
                self.record_start = line
            return text


def _ensure_csv_field_limit(max_field_bytes: int) -> None:
    # The csv module's field limit is process-wide and 128 KiB by default. It is only ever
    # raised here, to the largest limit any source asked for; smaller limits are enforced
    # per source after parsing. A field of n bytes has at most n characters, so a field
    # that hits the module's limit is over `max_field_bytes` too.
    if csv.field_size_limit() < max_field_bytes:
        csv.field_size_limit(max_field_bytes)


def _iter_csv_rows(source: ItemSource, handle: Any) -> Iterator[_Row]:
    _ensure_csv_field_limit(source.max_field_bytes)
    feed = _LineFeed(handle, source.encoding)
    reader = csv.reader(feed, strict=True)
    encoding, max_bytes = source.encoding, source.max_field_bytes
    header: list[str] | None = None
    id_index = 0
    weight_index: int | None = None
    while True:
        feed.record_start = None
        try:
            row = next(reader)
            error = None
        except StopIteration:
            row, error = None, None
        except csv.Error as exc:
            row, error = None, exc
        line = feed.record_start if feed.record_start is not None else feed.last_line
        if feed.problems:
            if header is None:
                bad_line, reason = feed.problems[0]
                raise SourceError(source.path, [RowProblem(bad_line, f"header {reason}")])
            for bad_line, reason in feed.problems:
                yield bad_line, None, reason
            feed.problems.clear()
        if error is not None:
            if header is None:
                raise SourceError(source.path, [RowProblem(line, f"malformed CSV header: {error}")])
            if "field larger than field limit" in str(error):
                yield line, None, f"a field is larger than max_field_bytes ({max_bytes} bytes)"
            else:
                yield line, None, f"malformed CSV: {error}"
            continue
        if row is None:
            return
        if not row:
            continue
        if header is None:
            header = row
            id_index = _check_header(source, header, line)
            weight_index = None if source.weight_field is None else header.index(source.weight_field)
            continue
        if len(row) != len(header):
            yield line, None, f"expected {len(header)} fields, got {len(row)}"
            continue
        item_id = row[id_index]
        if problem := _id_problem(item_id):
            yield line, None, problem
            continue
        oversized = _oversized_csv_field(header, row, encoding, max_bytes)
        if oversized is not None:
            yield line, None, _oversized_problem(oversized, source)
            continue
        weight: float | None = None
        if weight_index is not None:
            if problem := weight_problem(row[weight_index], f"weight field {source.weight_field!r}"):
                yield line, None, problem
                continue
            weight = float(row[weight_index])
        payload = {name: value for index, (name, value) in enumerate(zip(header, row)) if index != id_index}
        yield line, Item(item_id, payload, weight), None


def _check_header(source: ItemSource, header: list[str], line: int) -> int:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise SourceError(source.path, [RowProblem(line, f"duplicate column {name!r} in the header")])
        seen.add(name)
    if source.id_field not in seen:
        columns = ", ".join(repr(name) for name in header)
        raise SourceError(
            source.path,
            [RowProblem(line, f"missing id column {source.id_field!r} in the header (columns: {columns})")],
        )
    if source.weight_field is not None and source.weight_field not in seen:
        columns = ", ".join(repr(name) for name in header)
        raise SourceError(
            source.path,
            [RowProblem(line, f"missing weight column {source.weight_field!r} in the header (columns: {columns})")],
        )
    return header.index(source.id_field)


def _oversized_csv_field(header: list[str], row: list[str], encoding: str, max_bytes: int) -> str | None:
    # A character takes at most 4 bytes in the encodings accepted here, so only fields longer
    # than max_bytes // 4 characters need encoding to be measured.
    quick_limit = max_bytes // 4
    for name, value in zip(header, row):
        if len(value) > quick_limit and len(value.encode(encoding, errors="replace")) > max_bytes:
            return name
    return None
