"""Figure 2: the store's ledger writes against raw `sqlite3` `executemany` on the same table.

1,000,000 items are loaded (`load_items` per 5,000, as `open_run` does) and 1,000,000 results
written (`claim_items` + `record_item_results` per 5,000).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from bench.performance.common import CHUNK, Targets, item_id, payload, verdict
from scaling_core import ConfidenceLevel, ItemResult, store

__all__ = ["StoreFigures", "StoreRates", "measure_store"]



@dataclass(frozen=True)
class StoreRates:
    """Items per second of one way of writing the ledger."""

    load: float
    results: float
    claim_seconds: float
    record_seconds: float


@dataclass(frozen=True)
class StoreFigures:
    """The store's ledger writes against raw `sqlite3` on the same table."""

    items: int
    store: StoreRates
    raw: StoreRates

    @property
    def load_ratio(self) -> float:
        return self.store.load / self.raw.load

    @property
    def results_ratio(self) -> float:
        return self.store.results / self.raw.results

    @property
    def met(self) -> bool:
        return min(self.load_ratio, self.results_ratio) >= Targets.MIN_STORE_OVER_RAW

    def lines(self) -> list[str]:
        target = Targets.MIN_STORE_OVER_RAW

        def row(name: str, rates: StoreRates) -> str:
            return (
                f"{name:<22} load {rates.load:>9,.0f} items/s   results {rates.results:>9,.0f} items/s "
                f"(claim {rates.claim_seconds:.1f} s + record {rates.record_seconds:.1f} s)"
            )

        return [
            f"{self.items:,} items, {CHUNK:,} per transaction, SQLite file (WAL, synchronous=NORMAL) in a temp dir",
            row("store", self.store),
            row("raw sqlite3", self.raw),
            f"store / raw: load {self.load_ratio:.2f}x, results {self.results_ratio:.2f}x "
            f"(target >= {target}x for both): {verdict(self.met)}",
        ]


def _ledger_rows(start: int, count: int) -> list[tuple[int, str, dict[str, Any]]]:
    return [(n, item_id(n), payload(n)) for n in range(start, start + count)]


def _results_for(item_ids: Sequence[str]) -> list[ItemResult]:
    # Every 50th item fails (it goes back to pending once), the rest succeed.
    return [
        ItemResult(item_id=item_id, success=False, error="simulated item failure", level=ConfidenceLevel.LOW)
        if n % 50 == 49
        else ItemResult(
            item_id=item_id,
            success=True,
            confidence=0.9,
            output={"answer": f"answer for {item_id}"},
            level=ConfidenceLevel.HIGH,
        )
        for n, item_id in enumerate(item_ids)
    ]


@dataclass
class _Timer:
    seconds: float = 0.0
    _started: float = field(default=0.0, repr=False)

    def __enter__(self) -> _Timer:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._started


class _LedgerWriter:
    """One way of writing the ledger, timed: `load` a chunk, then claim and record batches."""

    def __init__(self) -> None:
        self.load_timer, self.claim_timer, self.record_timer = _Timer(), _Timer(), _Timer()
        self.loaded = 0
        self.written = 0
        self.batches = 0

    def load(self, rows: list[tuple[int, str, dict[str, Any]]]) -> None:
        raise NotImplementedError

    def claim_and_record(self, size: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def rates(self) -> StoreRates:
        return StoreRates(
            load=self.loaded / self.load_timer.seconds,
            results=self.written / (self.claim_timer.seconds + self.record_timer.seconds),
            claim_seconds=self.claim_timer.seconds,
            record_seconds=self.record_timer.seconds,
        )


class _StoreWriter(_LedgerWriter):
    """Through the store's functions, as the pipeline calls them."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.engine = store.make_engine(f"sqlite:///{path}")
        store.create_schema(self.engine)
        # One session for the whole load, as flows.pipeline._prepare_run holds.
        self.load_session = store.open_session(self.engine)
        self.run_id = store.start_run(
            self.load_session, pipeline="perf-store", source="bench", processor="bench", config={}
        ).run_id

    def load(self, rows: list[tuple[int, str, dict[str, Any]]]) -> None:
        with self.load_timer:  # one bulk statement and a commit per chunk
            store.load_items(self.load_session, self.run_id, rows)
            self.load_session.commit()
        self.loaded += len(rows)

    def claim_and_record(self, size: int) -> None:
        self.batches += 1
        with store.open_session(self.engine) as session:
            with self.claim_timer:  # as BatchManager.next_batch: the claim is committed on its own
                claimed = store.claim_items(session, self.run_id, size, batch_id=self.batches, worker="bench")
                session.commit()
            if not claimed:
                raise RuntimeError(f"nothing left to claim after {self.written} results")
            attempts = {row.item_id: row.attempts for row in claimed}
            results = _results_for([row.item_id for row in claimed])
            with self.record_timer:  # as BatchManager.complete_batch: every result in one transaction
                store.record_item_results(
                    session, self.run_id, results, batch_id=self.batches, attempts_before=attempts, max_attempts=3
                )
                session.commit()
        self.written += len(results)

    def close(self) -> None:
        self.load_session.close()
        self.engine.dispose()


def _raw_schema(connection: sqlite3.Connection) -> None:
    # The store's own DDL (same columns, types, keys and indexes), run through sqlite3.
    for table in (store.PipelineRun.__table__, store.LedgerItem.__table__):  # type: ignore[attr-defined]
        connection.execute(str(CreateTable(table).compile(dialect=sqlite_dialect.dialect())))
        for index in table.indexes:
            connection.execute(str(CreateIndex(index).compile(dialect=sqlite_dialect.dialect())))


def _sqlite_timestamp(moment: datetime) -> str:
    # How SQLAlchemy's DateTime stores a value in SQLite.
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


_RAW_INSERT = (
    "INSERT INTO ledger_item (run_id, item_id, seq, status, attempts, payload) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_RAW_CLAIM = (
    "WITH claimable AS (SELECT item_id FROM ledger_item WHERE run_id = ? AND status = ? "
    "ORDER BY seq LIMIT ?) "
    "UPDATE ledger_item SET status = ?, batch_id = ?, claimed_by = ?, claimed_at = ? FROM claimable "
    "WHERE ledger_item.run_id = ? AND ledger_item.item_id = claimable.item_id "
    "RETURNING item_id, seq, payload, attempts"
)
_RAW_RESULT = (
    "UPDATE ledger_item SET output = ?, confidence = ?, level = ?, error = ?, attempts = ?, "
    "claimed_by = NULL, status = ? WHERE run_id = ? AND item_id = ? AND batch_id = ? AND status IN (?, ?)"
)


class _RawWriter(_LedgerWriter):
    """The same writes with `sqlite3` alone: executemany, JSON by `json.dumps`, same pragmas."""

    PENDING = store.ItemStatus.PENDING.name  # SQLAlchemy's Enum type stores member names
    PROCESSING = store.ItemStatus.PROCESSING.name

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.connection = sqlite3.connect(path, timeout=60)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            self.connection.execute(f"PRAGMA {pragma}")
        _raw_schema(self.connection)
        self.run_id = store.new_run_id()
        now = _sqlite_timestamp(datetime.now(UTC))
        self.connection.execute(
            "INSERT INTO pipeline_run (run_id, pipeline, status, source, processor, config, items_loaded, "
            "item_count, created_at, updated_at) "
            "VALUES (?, 'perf-store', 'RUNNING', 'bench', 'bench', '{}', 0, 0, ?, ?)",
            (self.run_id, now, now),
        )
        self.connection.commit()

    def load(self, rows: list[tuple[int, str, dict[str, Any]]]) -> None:
        with self.load_timer:
            self.connection.executemany(
                _RAW_INSERT,
                [(self.run_id, item_id, seq, self.PENDING, 0, json.dumps(payload)) for seq, item_id, payload in rows],
            )
            self.connection.commit()
        self.loaded += len(rows)

    def claim_and_record(self, size: int) -> None:
        self.batches += 1
        run_id = self.run_id
        with self.claim_timer:
            rows = self.connection.execute(
                _RAW_CLAIM,
                (run_id, self.PENDING, size, self.PROCESSING, self.batches, "bench",
                 _sqlite_timestamp(datetime.now(UTC)), run_id),
            ).fetchall()
            self.connection.commit()
            claimed = sorted(
                ((item_id, seq, json.loads(payload), attempts) for item_id, seq, payload, attempts in rows),
                key=lambda row: row[1],
            )
        if not claimed:
            raise RuntimeError(f"nothing left to claim after {self.written} results")
        attempts_before = {row[0]: row[3] for row in claimed}
        results = _results_for([row[0] for row in claimed])
        with self.record_timer:
            updates = []
            for result in results:
                attempts = attempts_before.get(result.item_id, 0) + (0 if result.success else 1)
                if result.success:
                    status = store.ItemStatus.DONE.name
                else:
                    status = (store.ItemStatus.PENDING if attempts < 3 else store.ItemStatus.FAILED).name
                updates.append(
                    (json.dumps(result.output), result.confidence, (result.level or ConfidenceLevel.LOW).value,
                     result.error, attempts, status, run_id, result.item_id, self.batches, self.PROCESSING,
                     self.PENDING)
                )
            self.connection.executemany(_RAW_RESULT, updates)
            self.connection.commit()
        self.written += len(results)

    def close(self) -> None:
        self.connection.close()


def measure_store(items: int = 1_000_000) -> StoreFigures:
    """Run figure 2: the store's ledger writes and raw sqlite3's, on temp files.

    The two take turns chunk by chunk and batch by batch, so that a noisy neighbour slows
    them alike and their ratios hold.
    """
    with tempfile.TemporaryDirectory(prefix="batchpilot-perf-store-") as tmp:
        work = Path(tmp)
        writers: list[_LedgerWriter] = [_StoreWriter(work / "store.db"), _RawWriter(work / "raw.db")]
        try:
            for start in range(0, items, CHUNK):
                rows = _ledger_rows(start, min(CHUNK, items - start))
                for writer in writers:
                    writer.load(rows)
            while writers[0].written < items:
                for writer in writers:
                    writer.claim_and_record(CHUNK)
            rates = [writer.rates() for writer in writers]
        finally:
            for writer in writers:
                writer.close()
    return StoreFigures(items=items, store=rates[0], raw=rates[1])

