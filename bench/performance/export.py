"""Figure 6: peak resident memory of `python -m flows export` on a run of 1,000,000 items.

The store is built directly through the store's functions (`load_items`, then stages of
`insert_batch` + `claim_items` + `record_item_results` + `finish_batch`), not through the
pipeline: the figure is about reading the results out, and a million items through Prefect
would take most of an hour. Each export runs in a process of its own, whose peak is read
from its own resource usage (`wait4`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.performance.common import CHUNK, REPO_ROOT, Targets, item_id, payload, verdict
from scaling_core import ItemResult, store, summarize_batch
from scaling_core.results import ConfidenceLevel

__all__ = ["ExportFigures", "ExportRun", "build_results_store", "measure_export"]

PIPELINE = "perf-export"


def build_results_store(url: str, items: int, *, stage_size: int = 10_000) -> str:
    """A store at `url` holding one completed run of `items` items, every item done; returns its run id.

    Built in bulk through the store's own functions, in stages of `stage_size` items.
    """
    engine = store.make_engine(url)
    try:
        store.create_schema(engine)
        with store.open_session(engine) as session:
            run = store.start_run(session, pipeline=PIPELINE, source="generated", processor="bench", config={})
            for start in range(0, items, CHUNK):
                rows = [(n, item_id(n), payload(n)) for n in range(start, min(items, start + CHUNK))]
                store.load_items(session, run.run_id, rows)
                session.commit()
            store.mark_loaded(session, run.run_id)
            for _ in range(0, items, stage_size):
                batch_id, _stage = store.insert_batch(
                    session, run_id=run.run_id, pipeline=PIPELINE, batch_size=stage_size, worker="bench"
                )
                claimed = store.claim_items(session, run.run_id, stage_size, batch_id=batch_id, worker="bench")
                results = [
                    ItemResult(
                        item_id=item.item_id,
                        confidence=0.95,
                        level=ConfidenceLevel.HIGH,
                        output={"answer": f"answer for {item.item_id}", "seq": item.seq},
                    )
                    for item in claimed
                ]
                store.record_item_results(
                    session, run.run_id, results, batch_id=batch_id, attempts_before={}, max_attempts=3
                )
                store.finish_batch(session, batch_id, summarize_batch(str(batch_id), stage_size, results, 1.0))
                session.commit()
            store.finish_run(session, run.run_id, store.RunStatus.COMPLETED)
            return run.run_id
    finally:
        engine.dispose()


@dataclass(frozen=True)
class ExportRun:
    """One export of the run to a file, in a process of its own."""

    format: str
    seconds: float
    peak_mb: float
    rows: int

    @property
    def met(self) -> bool:
        return self.peak_mb < Targets.MAX_PEAK_MB


@dataclass(frozen=True)
class ExportFigures:
    """Peak resident memory of each export of one `items`-item run."""

    items: int
    build_seconds: float
    exports: list[ExportRun]
    parquet_skipped: bool

    @property
    def met(self) -> bool:
        return all(export.met for export in self.exports)

    def lines(self) -> list[str]:
        lines = [f"a completed run of {self.items} items built through the store in {self.build_seconds:.1f} s"]
        for export in self.exports:
            lines.append(
                f"export to {export.format}: {export.rows} rows in {export.seconds:.1f} s, peak resident memory "
                f"{export.peak_mb:.0f} MB (target < {Targets.MAX_PEAK_MB:.0f} MB): {verdict(export.met)}"
            )
        if self.parquet_skipped:
            lines.append("Parquet not measured: pyarrow is not installed (install batchpilot[parquet])")
        return lines


def _export(url: str, output: Path) -> ExportRun:
    """`python -m flows export` of the latest run into `output`; its time and peak resident memory."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "flows", "export", "--database-url", url, "--output", str(output)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert child.stderr is not None
    with child.stderr:
        error = child.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"export to {output.name} failed ({child.returncode}): {error.strip()}")
    return ExportRun(
        format=output.suffix.lstrip("."),
        seconds=seconds,
        peak_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        rows=_rows(output),
    )


def _rows(output: Path) -> int:
    if output.suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(output).metadata.num_rows)
    with output.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")) - 1


def measure_export(items: int = 1_000_000) -> ExportFigures:
    """Run figure 6: build a completed run of `items` items, export it to CSV (and Parquet)."""
    parquet = importlib.util.find_spec("pyarrow") is not None
    with tempfile.TemporaryDirectory(prefix="batchpilot-perf-export-") as tmp:
        work = Path(tmp)
        url = f"sqlite:///{work / 'store.db'}"
        started = time.perf_counter()
        build_results_store(url, items)
        build_seconds = time.perf_counter() - started
        exports = [_export(url, work / "results.csv")]
        if parquet:
            exports.append(_export(url, work / "results.parquet"))
        return ExportFigures(items=items, build_seconds=build_seconds, exports=exports, parquet_skipped=not parquet)
