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

from array import array
from collections.abc import Iterator
from itertools import islice

from scaling_core.sources._model import (
    MAX_ID_LENGTH,
    Item,
    ItemSource,
    RowProblem,
    SourceError,
    SourceFingerprint,
    SourceFormat,
    SourceSummary,
    WeightFunction,
    weight_problem,
)
from scaling_core.sources._rows import _iter_rows

__all__ = [
    "MAX_ID_LENGTH",
    "Item",
    "ItemSource",
    "RowProblem",
    "SourceError",
    "SourceFingerprint",
    "SourceFormat",
    "SourceSummary",
    "WeightFunction",
    "iter_item_batches",
    "iter_items",
    "validate_source",
]


def iter_items(source: ItemSource, limit: int | None = None, *, weigh: WeightFunction | None = None) -> Iterator[Item]:
    """Stream the items of `source`, at most `limit` of them.

    The file is opened when iteration starts and read one row at a time. The first rejected
    row raises `SourceError` naming its line. Duplicate ids are not detected here (that
    needs a pass over the whole file): call `validate_source` first. With `weigh` (a
    processor module's `item_weight`), an item without a weight from the source's
    `weight_field` gets `weigh(item)` as its weight.

    Example:
        >>> [item.id for item in iter_items(ItemSource(path=Path("items.csv")), limit=2)]
        ['a1', 'a2']
    """
    _check_limit(limit, "limit")
    _check_exists(source)
    return _iter_valid_items(source, limit, weigh)


def iter_item_batches(
    source: ItemSource, chunk_size: int, limit: int | None = None, *, weigh: WeightFunction | None = None
) -> Iterator[list[Item]]:
    """Stream the items of `source` as lists of at most `chunk_size` items, for bulk loading.

    Example:
        >>> [len(chunk) for chunk in iter_item_batches(source, chunk_size=2, limit=5)]
        [2, 2, 1]
    """
    _check_limit(chunk_size, "chunk_size", allow_none=False)
    items = iter_items(source, limit, weigh=weigh)

    def _chunks() -> Iterator[list[Item]]:
        while chunk := list(islice(items, chunk_size)):
            yield chunk

    return _chunks()


def validate_source(
    source: ItemSource, limit: int | None = None, *, weigh: WeightFunction | None = None
) -> SourceSummary:
    """Read `source` once (up to `limit` items) and report every rejected row.

    Rejected are: undecodable lines, malformed CSV records or JSON lines, a JSON line that
    is not an object, a missing or empty id, an id that is neither a string nor an integer,
    a field larger than `max_field_bytes`, a duplicate id (the message names the line of its
    first occurrence) and, with a `weight_field`, a weight that is missing, not a number or
    negative. With `weigh` (a processor module's `item_weight`, used when the source names no
    weight field), a row whose weight it cannot give (it raises, or returns no number of zero
    or more) is rejected too. Blank lines are skipped. A missing file, a CSV header without
    the id (or weight) column, and a source without items fail as a whole.

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
        if weigh is not None and item.weight is None and (problem := _weigh(weigh, item)[1]):
            collector.add(RowProblem(line, problem))
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


def _weigh(weigh: WeightFunction, item: Item) -> tuple[float | None, str | None]:
    """`(weigh(item), None)`, or `(None, why)` when it raises or returns no number of zero or more."""
    name = getattr(weigh, "__name__", "item_weight")
    try:
        value = weigh(item)
    except Exception as error:  # noqa: BLE001 - a user's function may raise anything; the row names it
        return None, f"{name}() raised {type(error).__name__}: {error}"
    if problem := weight_problem(value, f"the weight {name}() returned"):
        return None, problem
    return float(value), None


def _iter_valid_items(source: ItemSource, limit: int | None, weigh: WeightFunction | None) -> Iterator[Item]:
    rows = _iter_rows(source)
    count = 0
    try:
        for line, item, reason in rows:
            if item is None:
                assert reason is not None
                raise SourceError(source.path, [RowProblem(line, reason)])
            if weigh is not None and item.weight is None:
                weight, problem = _weigh(weigh, item)
                if problem is not None:
                    raise SourceError(source.path, [RowProblem(line, problem)])
                item = Item(item.id, item.payload, weight)
            yield item
            count += 1
            if limit is not None and count >= limit:
                return
    finally:
        rows.close()


# A row is (line, item, None) when accepted and (line, None, reason) when rejected; plain
# tuples keep the per-row cost low on files with millions of rows.
