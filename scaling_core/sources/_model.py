"""What a source is: the file (`ItemSource`), its items, and how a rejected row is reported."""

from __future__ import annotations

import codecs
import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

SourceFormat = Literal["csv", "jsonl"]

MAX_ID_LENGTH = 500
"""The longest item id the store keeps (the ledger's key column); longer ids are rejected rows."""

def _format_choices(schema: dict[str, Any]) -> None:
    """The JSON schema of `ItemSource.format`: one list of the formats, to leave empty or pick.

    A form renders `SourceFormat | None` as a choice of types ("str" or "None"); an optional
    enum without a default is a plain list of choices, and leaving it empty leaves the format
    to the suffix.
    """
    schema.pop("anyOf", None)
    schema.pop("default", None)
    schema.update(type="string", enum=list(get_args(SourceFormat)))


_SUFFIX_FORMATS: dict[str, SourceFormat] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# Bytes that every supported encoding must decode to the same ASCII text: rows are split
# on b"\n" before decoding, which is only sound for ASCII-compatible encodings.
_ASCII_PROBE = bytes(range(0x20, 0x7F)) + b"\t\r\n"


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of work: its id, everything else the row holds, and its weight when it has one.

    `weight` is what the item costs a batch in the unit its source measures (tokens,
    characters, bytes): the value of the source's `weight_field`, or what the processor
    module's `item_weight` function returned. None when the run weighs nothing.

    Example:
        >>> Item(id="P000001", payload={"name": "Oak Chair", "price": "49.99"})
        Item(id='P000001', payload={'name': 'Oak Chair', 'price': '49.99'}, weight=None)
    """

    id: str
    payload: dict[str, Any]
    weight: float | None = None


WeightFunction = Callable[[Item], float]
"""A processor module's `item_weight(item) -> float`: an item's weight, computed once at load."""


def weight_problem(value: Any, where: str) -> str | None:
    """Why `value` is not an item weight (a finite number, zero or more), naming `where`; None when it is.

    Strings are read as numbers (a CSV cell is always text); booleans are refused.
    """
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return f"{where} is not a number: {value!r}"
    elif isinstance(value, bool) or not isinstance(value, int | float):
        return f"{where} is not a number: {value!r}"
    else:
        number = float(value)
    if not math.isfinite(number):
        return f"{where} is not a finite number: {value!r}"
    if number < 0:
        return f"{where} is negative: {value!r}"
    return None


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
        json_schema_extra=_format_choices,
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
    weight_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "CSV column or JSON key that holds each item's weight (tokens, characters, bytes): a number, "
            "zero or more. Empty: the processor module's item_weight function, if it has one, else no weights."
        ),
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
                f"(known: {known}); name its format: format 'csv' or 'jsonl' (on the command line "
                "--format csv or --format jsonl)"
            )
        return inferred

    @field_validator("weight_field")
    @classmethod
    def _weight_apart_from_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value == info.data.get("id_field"):
            raise ValueError(f"weight_field {value!r} must not be the id field")
        return value

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


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
"""SHA-256 of files this process read, by (path, inode, size, mtime, ctime): a write to the
file changes its ctime, which no one can set back, so a hit is the same content."""
_DIGESTS_KEPT = 16


class SourceFingerprint(BaseModel):
    """Which file a run was loaded from, and what it held: a run is resumed only on the same content."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(description="The file's resolved absolute path.")
    size: int = Field(ge=0, description="Its size in bytes.")
    mtime_ns: int = Field(description="Its modification time, in nanoseconds.")
    sha256: str = Field(description="The SHA-256 of its bytes.")

    @classmethod
    def of(cls, source: ItemSource) -> SourceFingerprint:
        """Fingerprint the file of `source` (one streaming read).

        Raises:
            SourceError: the file cannot be read.
        """
        path = source.path.resolve()
        try:
            with path.open("rb") as handle:
                before = os.fstat(handle.fileno())
                # A command checks the run before its flow opens it: one read of a large file.
                key = (str(path), before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns)
                digest = _DIGESTS.get(key) or hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as error:
            raise SourceError(source.path, [RowProblem(None, f"cannot be read: {error.strerror or error}")]) from error
        if len(_DIGESTS) >= _DIGESTS_KEPT:
            _DIGESTS.clear()
        _DIGESTS[key] = digest
        return cls(path=str(path), size=before.st_size, mtime_ns=before.st_mtime_ns, sha256=digest)

    def unchanged_on_disk(self) -> bool:
        """True while the file still has the size and modification time it had when fingerprinted."""
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        return (now.st_size, now.st_mtime_ns) == (self.size, self.mtime_ns)

    def difference(self, other: SourceFingerprint) -> str | None:
        """How `other` differs from this fingerprint, in words, or None when they match."""
        if other.path != self.path:
            return f"was loaded from {self.path}, not {other.path}"
        if other.sha256 != self.sha256:
            return (
                f"was loaded from {self.path} when it held other content (then {self.size} bytes, sha256 "
                f"{self.sha256[:12]}; now {other.size} bytes, sha256 {other.sha256[:12]}): the file changed"
            )
        return None
