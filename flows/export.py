"""A run's results written as CSV, JSON Lines or Parquet, streamed row by row (no Prefect needed).

The rows come from `scaling_core.store.iter_results`; this module only writes them. Memory
stays bounded: CSV and JSON Lines are written a row at a time, Parquet a row group of
`EXPORT_CHUNK` rows at a time.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal, TextIO

from scaling_core.store import EXPORT_CHUNK, RESULT_FIELDS

ExportFormat = Literal["csv", "jsonl", "parquet"]

EXPORT_FORMATS: tuple[ExportFormat, ...] = ("csv", "jsonl", "parquet")

_SUFFIX_FORMATS: dict[str, ExportFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}

PARQUET_EXTRA = "batchpilot[parquet]"
"""The optional extra that brings pyarrow, which Parquet output needs."""


def export_format(output: Path | None, given: ExportFormat | None) -> ExportFormat:
    """The format to write: `given`, else the one the output file's suffix names, else CSV on stdout.

    Raises:
        ValueError: the suffix names no format, Parquet is asked for on stdout, or Parquet is
            asked for and pyarrow is not installed (naming the extra that brings it).
    """
    chosen = given
    if chosen is None and output is not None:
        chosen = _SUFFIX_FORMATS.get(output.suffix.lower())
        if chosen is None:
            known = ", ".join(_SUFFIX_FORMATS)
            raise ValueError(
                f"cannot tell the format of {str(output)!r} from its suffix {output.suffix!r} "
                f"(known: {known}); give --format csv, jsonl or parquet"
            )
    chosen = chosen or "csv"
    if chosen == "parquet":
        if output is None:
            raise ValueError("Parquet is written to a file, not to stdout: give --output results.parquet")
        _pyarrow()
    return chosen


def write_results(
    rows: Iterable[dict[str, Any]], output: Path | None, export: ExportFormat, stdout: TextIO
) -> int:
    """Write `rows` (as `iter_results` yields them) to `output`, or to `stdout` when None; returns the count.

    A file is written beside its final name and moved into place once complete, so an export
    that fails leaves no partial file behind.

    Raises:
        ValueError: Parquet without pyarrow (naming the extra to install), or a source field
            of a CSV or Parquet row that the first row did not have.
    """
    if export == "parquet":
        _pyarrow()  # before the file is opened: a missing extra leaves nothing behind
    if output is None:
        return _write_csv(rows, stdout) if export == "csv" else _write_jsonl(rows, stdout)
    partial = output.with_name(output.name + ".partial")
    try:
        if export == "parquet":
            count = _write_parquet(rows, partial)
        else:
            with partial.open("w", encoding="utf-8", newline="") as handle:
                count = _write_csv(rows, handle) if export == "csv" else _write_jsonl(rows, handle)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return count


def _cell(value: Any) -> Any:
    """A JSON value as a flat cell: text and None as they are, anything else as JSON."""
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class _Flattener:
    """Rows as flat cells: the result fields, then the first row's source fields as `source.<name>`."""

    def __init__(self, first: dict[str, Any]) -> None:
        self.source_fields = list(first.get("source") or {})
        self.columns = [*RESULT_FIELDS, *(f"source.{name}" for name in self.source_fields)]

    def cells(self, row: dict[str, Any]) -> list[Any]:
        cells = [row[field] for field in RESULT_FIELDS]
        cells[_OUTPUT] = _cell(cells[_OUTPUT])
        source = row.get("source")
        if source is None:
            return cells
        if source.keys() != set(self.source_fields):
            raise ValueError(
                f"item {row['id']!r} has other source fields than the first item ({sorted(source)} against "
                f"{sorted(self.source_fields)}); export as JSON Lines (--format jsonl), which keeps each "
                "item's own fields"
            )
        return cells + [_cell(source[name]) for name in self.source_fields]


_OUTPUT = RESULT_FIELDS.index("output")
_SUCCESS = RESULT_FIELDS.index("success")


def _write_csv(rows: Iterable[dict[str, Any]], handle: IO[str]) -> int:
    out = csv.writer(handle, lineterminator="\n")
    count = 0
    flattener: _Flattener | None = None
    for row in rows:
        if flattener is None:
            flattener = _Flattener(row)
            out.writerow(flattener.columns)
        cells = flattener.cells(row)
        success = cells[_SUCCESS]
        cells[_SUCCESS] = "" if success is None else str(success).lower()
        out.writerow(cells)
        count += 1
    if flattener is None:
        out.writerow(RESULT_FIELDS)
    return count


def _write_jsonl(rows: Iterable[dict[str, Any]], handle: IO[str]) -> int:
    count = 0
    for row in rows:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ValueError(f"Parquet output needs pyarrow, which is not installed: install {PARQUET_EXTRA}") from None
    return pyarrow


def _write_parquet(rows: Iterable[dict[str, Any]], path: Path) -> int:
    pa = _pyarrow()
    types = {
        "success": pa.bool_(),
        "confidence": pa.float64(),
        "attempts": pa.int64(),
        "stage": pa.int64(),
        "weight": pa.float64(),
        "cost": pa.float64(),
    }
    count = 0
    writer: Any = None
    try:
        for chunk in _chunks(rows, EXPORT_CHUNK):
            if writer is None:
                flattener = _Flattener(chunk[0])
                schema = pa.schema([(name, types.get(name, pa.string())) for name in flattener.columns])
                writer = pa.parquet.ParquetWriter(path, schema)
            flat = [flattener.cells(row) for row in chunk]
            columns = [
                pa.array([cells[i] for cells in flat], type=schema.field(i).type) for i in range(len(schema))
            ]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            count += len(chunk)
        if writer is None:
            schema = pa.schema([(name, types.get(name, pa.string())) for name in RESULT_FIELDS])
            writer = pa.parquet.ParquetWriter(path, schema)
    finally:
        if writer is not None:
            writer.close()
    return count


def _chunks(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
