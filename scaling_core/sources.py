"""Item sources: stream the items of a CSV or JSON Lines file and validate it before any work.

A source is a file plus the few facts needed to read it (`ItemSource`). `iter_items` and
`iter_item_batches` read it row by row, so a file of millions of rows is never held in
memory. `validate_source` reads the whole file once up front and reports every rejected
row with its line number, so that a bad file fails before the first batch, not halfway.

Example:
    >>> source = ItemSource(path=Path("products.csv"))
    >>> summary = validate_source(source)
    >>> for batch in iter_item_batches(source, chunk_size=1000):
    ...     store_items(batch)
"""

from __future__ import annotations

import codecs
import csv
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = [
    "Item",
    "ItemSource",
    "RowProblem",
    "SourceError",
    "SourceFormat",
    "SourceSummary",
    "iter_item_batches",
    "iter_items",
    "validate_source",
]

SourceFormat = Literal["csv", "jsonl"]

_SUFFIX_FORMATS: dict[str, SourceFormat] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# Bytes that every supported encoding must decode to the same ASCII text: rows are split
# on b"\n" before decoding, which is only sound for ASCII-compatible encodings.
_ASCII_PROBE = bytes(range(0x20, 0x7F)) + b"\t\r\n"


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of work: its id and everything else the row holds.

    Example:
        >>> Item(id="P000001", payload={"name": "Oak Chair", "price": "49.99"})
        Item(id='P000001', payload={'name': 'Oak Chair', 'price': '49.99'})
    """

    id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why one row (or, with `line=None`, the whole file) was rejected."""

    line: int | None
    reason: str

    def __str__(self) -> str:
        return self.reason if self.line is None else f"line {self.line}: {self.reason}"


class SourceError(ValueError):
    """A source that cannot be read, or rows that were rejected.

    `problems` holds the rejected rows in line order; at most `SourceError.MAX_KEPT_PROBLEMS`
    of them are kept, and `problem_count` counts all of them. The message names the file and
    shows the first `SourceError.MAX_SHOWN_PROBLEMS`.
    """

    MAX_SHOWN_PROBLEMS = 20
    MAX_KEPT_PROBLEMS = 1000

    def __init__(self, path: Path, problems: list[RowProblem], problem_count: int | None = None) -> None:
        self.path = path
        self.problems = problems
        self.problem_count = len(problems) if problem_count is None else problem_count
        super().__init__(self._message())

    def _message(self) -> str:
        if self.problem_count == 1 and self.problems:
            return f"{self.path}: {self.problems[0]}"
        lines = [f"{self.path}: {self.problem_count} rows were rejected:"]
        shown = self.problems[: self.MAX_SHOWN_PROBLEMS]
        lines.extend(f"  {problem}" for problem in shown)
        if self.problem_count > len(shown):
            lines.append(f"  ... and {self.problem_count - len(shown)} more")
        return "\n".join(lines)


class ItemSource(BaseModel):
    """A CSV or JSON Lines file of items.

    In a CSV file the header names the columns; `id_field` names the id column and the other
    columns form the payload (values as strings, empty strings kept). In a JSON Lines file
    each non-blank line is one JSON object; `id_field` names its id (a string or an integer)
    and the other keys form the payload.

    Example:
        >>> ItemSource(path="items.ndjson").format
        'jsonl'
        >>> ItemSource(path="items.txt")
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: ... cannot infer the format of 'items.txt' ...
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(description="The file of items: a .csv, .jsonl or .ndjson file.")
    format: SourceFormat | None = Field(
        default=None,
        validate_default=True,
        description="File format; inferred from the file's suffix when left empty.",
    )
    id_field: str = Field(
        default="id",
        min_length=1,
        description="CSV column or JSON key that holds each item's unique id.",
    )
    encoding: str = Field(
        default="utf-8",
        description="Text encoding of the file (an ASCII-compatible one such as utf-8 or latin-1).",
    )
    max_field_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="A row with a field larger than this many bytes is rejected.",
    )

    @field_validator("path")
    @classmethod
    def _expand_user(cls, path: Path) -> Path:
        return path.expanduser()

    @field_validator("format")
    @classmethod
    def _infer_format(cls, value: SourceFormat | None, info: ValidationInfo) -> SourceFormat | None:
        path = info.data.get("path")
        if value is not None or path is None:
            return value
        inferred = _SUFFIX_FORMATS.get(path.suffix.lower())
        if inferred is None:
            known = ", ".join(_SUFFIX_FORMATS)
            raise ValueError(
                f"cannot infer the format of {str(path)!r} from its suffix {path.suffix!r} "
                f"(known: {known}); set format to 'csv' or 'jsonl'"
            )
        return inferred

    @field_validator("encoding")
    @classmethod
    def _check_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        try:
            ascii_compatible = _ASCII_PROBE.decode(value) == _ASCII_PROBE.decode("ascii")
        except LookupError:
            raise ValueError(f"{value!r} is not a text encoding") from None
        except UnicodeDecodeError:
            ascii_compatible = False
        if not ascii_compatible:
            raise ValueError(
                f"encoding {value!r} is not ASCII-compatible; convert the file to utf-8 first"
            )
        return value


class SourceSummary(BaseModel):
    """What `validate_source` found in a valid source."""

    model_config = ConfigDict(frozen=True)

    path: Path
    format: SourceFormat
    item_count: int = Field(ge=1, description="Number of items (up to the limit, when one was given).")
    first_ids: list[str] = Field(description="Ids of the first few items, to show in a report.")
    columns: list[str] | None = Field(
        default=None, description="Payload columns of a CSV source (None for JSON Lines)."
    )


def iter_items(source: ItemSource, limit: int | None = None) -> Iterator[Item]:
    """Stream the items of `source`, at most `limit` of them.

    The file is opened when iteration starts and read one row at a time. The first rejected
    row raises `SourceError` naming its line. Duplicate ids are not detected here (that
    needs a pass over the whole file): call `validate_source` first.

    Example:
        >>> [item.id for item in iter_items(ItemSource(path=Path("items.csv")), limit=2)]
        ['a1', 'a2']
    """
    _check_limit(limit, "limit")
    _check_exists(source)
    return _iter_valid_items(source, limit)


def iter_item_batches(
    source: ItemSource, chunk_size: int, limit: int | None = None
) -> Iterator[list[Item]]:
    """Stream the items of `source` as lists of at most `chunk_size` items, for bulk loading.

    Example:
        >>> [len(chunk) for chunk in iter_item_batches(source, chunk_size=2, limit=5)]
        [2, 2, 1]
    """
    _check_limit(chunk_size, "chunk_size", allow_none=False)
    items = iter_items(source, limit)

    def _chunks() -> Iterator[list[Item]]:
        while chunk := list(islice(items, chunk_size)):
            yield chunk

    return _chunks()


def validate_source(source: ItemSource, limit: int | None = None) -> SourceSummary:
    """Read `source` once (up to `limit` items) and report every rejected row.

    Rejected are: undecodable lines, malformed CSV records or JSON lines, a JSON line that
    is not an object, a missing or empty id, an id that is neither a string nor an integer,
    a field larger than `max_field_bytes`, and a duplicate id (the message names the line
    of its first occurrence). Blank lines are skipped. A missing file, a CSV header without
    the id column, and a source without items fail as a whole.

    Duplicates are found with a table of 64-bit id hashes (8 bytes a slot, about 16 MB for
    a million ids, where a set of the ids themselves takes over 100 MB). Two different ids
    may share a hash, so a hash seen twice only marks a suspect; a second pass over the
    file, made only when there are suspects, compares the ids themselves. No duplicate is
    reported falsely, at the price of reading a file with duplicates twice.

    Raises:
        SourceError: naming the file and listing the rejected rows with their line numbers.

    Example:
        >>> validate_source(ItemSource(path=Path("items.jsonl"))).item_count
        3
    """
    _check_limit(limit, "limit")
    _check_exists(source)
    collector = _ProblemCollector()
    seen = _HashTable()
    suspect_hashes: set[int] = set()
    first_ids: list[str] = []
    columns: list[str] | None = None
    count = 0
    last_line = 0
    rows = _iter_rows(source)
    for line, item, reason in rows:
        last_line = line
        if item is None:
            assert reason is not None
            collector.add(RowProblem(line, reason))
            continue
        id_hash = _id_hash(item.id)
        if not seen.add(id_hash):
            suspect_hashes.add(id_hash)
        count += 1
        if len(first_ids) < 5:
            first_ids.append(item.id)
            if columns is None and source.format == "csv":
                columns = list(item.payload)
        if limit is not None and count >= limit:
            break
    rows.close()
    if suspect_hashes:
        count -= _report_duplicates(source, suspect_hashes, last_line, collector)
    if collector.count:
        raise SourceError(source.path, collector.sorted_problems(), collector.count)
    if count == 0:
        raise SourceError(source.path, [RowProblem(None, "the file contains no items")])
    assert source.format is not None
    return SourceSummary(
        path=source.path, format=source.format, item_count=count, first_ids=first_ids, columns=columns
    )


class _ProblemCollector:
    """Keeps the first `SourceError.MAX_KEPT_PROBLEMS` problems and counts all of them."""

    def __init__(self) -> None:
        self.problems: list[RowProblem] = []
        self.count = 0

    def add(self, problem: RowProblem) -> None:
        self.count += 1
        if len(self.problems) < SourceError.MAX_KEPT_PROBLEMS:
            self.problems.append(problem)

    def sorted_problems(self) -> list[RowProblem]:
        return sorted(self.problems, key=lambda problem: problem.line or 0)


class _HashTable:
    """A set of non-zero 64-bit ints in an open-addressing table with linear probing.

    An `array("Q")` stores each hash in 8 bytes, where a Python int in a `set` costs about
    70 bytes with its share of the table.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._slots = array("Q", [0]) * capacity
        self._mask = capacity - 1
        self._size = 0

    def add(self, value: int) -> bool:
        """Insert `value`; return False when it was already present."""
        slots, mask = self._slots, self._mask
        index = value & mask
        while (current := slots[index]) != 0:
            if current == value:
                return False
            index = (index + 1) & mask
        slots[index] = value
        self._size += 1
        # Keep the load at most 1/2 so that probe runs stay short.
        if 2 * self._size > len(slots):
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("Q", [0]) * (2 * len(old))
        self._mask = len(self._slots) - 1
        self._size = 0
        for value in old:
            if value:
                self.add(value)


def _id_hash(item_id: str) -> int:
    # `hash` of a str is salted per process, which is fine: hashes never outlive one call.
    return (hash(item_id) & 0xFFFF_FFFF_FFFF_FFFF) or 1


def _report_duplicates(
    source: ItemSource, suspect_hashes: set[int], last_line: int, collector: _ProblemCollector
) -> int:
    """Second pass: confirm suspected duplicates by id; return how many rows were duplicates."""
    first_lines: dict[str, int] = {}
    duplicates = 0
    rows = _iter_rows(source)
    for line, item, _ in rows:
        if line > last_line:
            break
        if item is None or _id_hash(item.id) not in suspect_hashes:
            continue
        first = first_lines.setdefault(item.id, line)
        if first != line:
            duplicates += 1
            collector.add(RowProblem(line, f"duplicate id {item.id!r} (first seen on line {first})"))
    rows.close()
    return duplicates


def _check_limit(value: int | None, name: str, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


def _check_exists(source: ItemSource) -> None:
    if not source.path.exists():
        raise SourceError(source.path, [RowProblem(None, "file not found")])
    if source.path.is_dir():
        raise SourceError(source.path, [RowProblem(None, "is a directory, not a file")])


def _iter_valid_items(source: ItemSource, limit: int | None) -> Iterator[Item]:
    rows = _iter_rows(source)
    count = 0
    try:
        for line, item, reason in rows:
            if item is None:
                assert reason is not None
                raise SourceError(source.path, [RowProblem(line, reason)])
            yield item
            count += 1
            if limit is not None and count >= limit:
                return
    finally:
        rows.close()


# A row is (line, item, None) when accepted and (line, None, reason) when rejected; plain
# tuples keep the per-row cost low on files with millions of rows.
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
        if not item_id.strip():
            yield line, None, "empty id"
            continue
        # No field can exceed the limit when the whole line does not.
        if len(raw) > max_bytes:
            oversized = _oversized_json_field(record, encoding, max_bytes)
            if oversized is not None:
                yield line, None, _oversized_problem(oversized, source)
                continue
        yield line, Item(item_id, record), None


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
            continue
        if len(row) != len(header):
            yield line, None, f"expected {len(header)} fields, got {len(row)}"
            continue
        item_id = row[id_index]
        if not item_id.strip():
            yield line, None, "empty id"
            continue
        oversized = _oversized_csv_field(header, row, encoding, max_bytes)
        if oversized is not None:
            yield line, None, _oversized_problem(oversized, source)
            continue
        payload = {name: value for index, (name, value) in enumerate(zip(header, row)) if index != id_index}
        yield line, Item(item_id, payload), None


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
    return header.index(source.id_field)


def _oversized_csv_field(header: list[str], row: list[str], encoding: str, max_bytes: int) -> str | None:
    # A character takes at most 4 bytes in the encodings accepted here, so only fields longer
    # than max_bytes // 4 characters need encoding to be measured.
    quick_limit = max_bytes // 4
    for name, value in zip(header, row):
        if len(value) > quick_limit and len(value.encode(encoding, errors="replace")) > max_bytes:
            return name
    return None
