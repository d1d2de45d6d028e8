"""Performance benchmark of the pipeline: orchestration overhead, store throughput, decision
cost and memory, each as a ratio measured in the same run.

Usage::

    python -m bench.performance                      # full sizes (about 12 minutes on 2 CPUs)
    python -m bench.performance --quick              # 100k items for the store and memory figures
    python -m bench.performance --only overhead,store --json figures.json

Figures and targets:

1. overhead: a 5,000-item run whose processor sleeps 1.0 s per call, through `batch_pipeline`
   (ephemeral Prefect, embedded SQLite store, default scaling) against a plain loop calling
   the processor with the same batch sizes. Target: pipeline wall / loop wall <= 1.10. Also
   the median per-stage overhead (stage cycle minus the processor's own time) against
   Prefect's floor, an empty async stage flow plus an empty sync task called the same way
   (including the pipeline's `settle` wait and its one shared API client). Target: <= 2x
   the floor.
2. store: 1,000,000 items loaded into the ledger (`load_items` per 5,000, as `_prepare_run`
   does) and 1,000,000 results written (`claim_items` + `record_item_results` per 5,000),
   against raw `sqlite3` `executemany` on the same table. Target: >= 0.5x raw for both.
3. decision: the scaling task's time with 100 and with 100,000 batches stored (and 1,000,
   past the 400-batch window the task reads). Target: < 2x.
4. memory: peak resident memory of a process running 1,000,000 JSON Lines items end to end
   through `batch_pipeline`. Target: < 400 MB.

The Prefect figures run in a child process (`python -m bench.performance _child SPEC`) with a
temporary `PREFECT_HOME`; its wall times are taken inside the flow call, after a warm-up flow
has started the ephemeral server. The exit code is 0 whether targets are met or not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from scaling_core import (
    ConfidenceLevel,
    ItemResult,
    ItemSource,
    ScalingConfig,
    ScalingManager,
    iter_items,
    store,
)
from scaling_core.settings import DATABASE_URL_ENV

__all__ = [
    "DecisionFigures",
    "MemoryFigures",
    "OverheadFigures",
    "PipelineTiming",
    "StoreFigures",
    "StoreRates",
    "Targets",
    "main",
    "measure_decision",
    "measure_memory",
    "measure_overhead",
    "measure_overhead_and_memory",
    "measure_store",
    "write_jsonl_source",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SLEEP_ONE_SECOND = "bench._perf_processors:sleep_one_second"
FAST_PROCESSOR = "scaling_core.samples.simulated_llm:simulated_llm_fast"
CHUNK = 5_000
"""Items per ledger transaction (`flows.pipeline.LOAD_CHUNK`) and per claimed batch."""


class Targets:
    """What each figure must reach."""

    MAX_WALL_RATIO = 1.10
    MAX_OVERHEAD_OVER_FLOOR = 2.0
    MIN_STORE_OVER_RAW = 0.5
    MAX_DECISION_RATIO = 2.0
    MAX_PEAK_MB = 400.0


def _verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


# -- sources ------------------------------------------------------------------------------------

_CATEGORIES = ("Home", "Garden", "Kitchen", "Electronics Accessories", "Outdoor", "Office")


def _payload(n: int) -> dict[str, Any]:
    category = _CATEGORIES[n % len(_CATEGORIES)]
    return {
        "name": f"Item {n} {category.lower()}",
        "category": category,
        "price": round(5 + (n * 37 % 9_500) / 10, 2),
        "description": f"Product {n} in the {category} range. Machine washable.",
    }


def _item_id(n: int) -> str:
    return f"P{n:07d}"


def write_jsonl_source(path: Path, count: int) -> ItemSource:
    """A JSON Lines source of `count` product-like items, written in blocks."""
    with path.open("w", encoding="utf-8") as handle:
        for start in range(0, count, 10_000):
            handle.write(
                "".join(
                    json.dumps({"id": _item_id(n), **_payload(n)}) + "\n"
                    for n in range(start, min(count, start + 10_000))
                )
            )
    return ItemSource(path=path)


# -- the Prefect child process --------------------------------------------------------------------


def _child_env(prefect_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", DATABASE_URL_ENV):
        env.pop(name, None)  # ephemeral Prefect and the embedded store, whatever the caller set
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]),
    )
    return env


def _run_child(jobs: list[dict[str, Any]], workdir: Path) -> tuple[list[dict[str, Any]], float]:
    """Run Prefect jobs in a fresh process (cwd `workdir`); returns their raw data and its wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / "spec.json"
    out = workdir / "results.json"
    spec.write_text(json.dumps({"jobs": jobs, "out": str(out)}), encoding="utf-8")
    prefect_home = workdir / "prefect-home"
    prefect_home.mkdir(exist_ok=True)
    log = workdir / "child.log"
    started = time.perf_counter()
    with log.open("wb") as handle:
        completed = subprocess.run(
            [sys.executable, "-m", "bench.performance", "_child", str(spec)],
            cwd=workdir,
            env=_child_env(prefect_home),
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.perf_counter() - started
    if completed.returncode != 0 or not out.exists():
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"the Prefect child process failed (exit {completed.returncode}):\n{tail}")
    return json.loads(out.read_text(encoding="utf-8")), seconds


def _vm_kib(field_name: str, pid: int | str = "self") -> int:
    """A memory figure of /proc/<pid>/status in KiB (VmRSS, VmHWM), 0 when unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _children_peak_kib() -> int:
    """The largest VmHWM among this process's live children (the ephemeral Prefect server)."""
    me = str(os.getpid())
    peak = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the command name, which is in parentheses and may hold spaces.
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        if parent == me:
            peak = max(peak, _vm_kib("VmHWM", entry.name))
    return peak


@dataclass
class _ClientTrouble:
    """Retry back-offs of the Prefect client (e.g. after a 503 from a busy SQLite-backed
    server) and the requests that were refused, which would otherwise pass for overhead."""

    back_offs: list[float] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.back_offs.clear()
        self.refused.clear()

    @classmethod
    def watch(cls) -> _ClientTrouble:
        import logging
        import re

        trouble = cls()
        request = re.compile(r'HTTP Request: (\w+) \S*?/api(/\S*) "HTTP/[\d.]+ (\d+)')
        identifier = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

        class _Retries(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                message = record.getMessage()
                if "Another attempt will be made in" in message:
                    try:
                        trouble.back_offs.append(float(message.split("made in ", 1)[1].split("s.", 1)[0]))
                    except (IndexError, ValueError):
                        trouble.back_offs.append(math.nan)
                elif record.levelno >= logging.WARNING:
                    logging.getLogger("prefect").handle(record)

        class _Refusals(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                match = request.search(record.getMessage())
                if match and match.group(3).startswith("5"):
                    path = identifier.sub("{id}", match.group(2))
                    trouble.refused.append(f"{match.group(1)} {path} {match.group(3)}")

        for name, handler, level in (
            ("prefect.client", _Retries(), logging.DEBUG),  # the back-offs are logged at debug level only
            ("httpx", _Refusals(), logging.INFO),  # one line per request, with its status
        ):
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.propagate = False
            logger.addHandler(handler)
        return trouble


def _child_main(spec_path: str) -> int:  # pragma: no cover - runs in the child process
    import asyncio

    from prefect import flow, task
    from prefect.context import SyncClientContext

    from bench import _perf_processors
    from flows._runtime import settle
    from flows.pipeline import batch_pipeline
    from flows.report import stage_rows
    from scaling_core import default_database_url

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    marks: list[float] = []
    trouble = _ClientTrouble.watch()

    @flow(name="floor-stage", flow_run_name="floor-size-{batch_size}", log_prints=False, validate_parameters=True)
    async def floor_stage(batch_size: int) -> int:
        marks.append(time.time())
        return batch_size

    @task(name="floor-decide", task_run_name="floor-decide-after-stage-{stage}")
    def floor_decide(stage: int, current_batch_size: int) -> int:
        return current_batch_size

    @flow(name="floor-pipeline", validate_parameters=True)
    async def floor_pipeline(cycles: int) -> None:
        # The pipeline's loop without its work: await an async stage subflow, call the sync
        # scaling task, wait for its record (`settle`), again; with one sync API client for
        # the whole loop, as `batch_pipeline` has.
        size = 1
        with SyncClientContext.get_or_create():
            for stage in range(cycles):
                await floor_stage(batch_size=size)
                decided = floor_decide(stage=stage, current_batch_size=size, return_state=True)
                size = await decided.aresult()
                await settle(decided.state_details.task_run_id)

    @flow(name="warm-up")
    async def warm_up() -> int:
        return 1

    def floor(cycles: int) -> list[float]:
        marks.clear()
        asyncio.run(floor_pipeline(cycles))
        return [b - a for a, b in zip(marks, marks[1:])]

    def run(job: dict[str, Any]) -> dict[str, Any]:
        url = default_database_url()
        _perf_processors.reset()
        trouble.clear()
        rss_before = _vm_kib("VmRSS")
        t0 = time.perf_counter()
        summary = asyncio.run(
            batch_pipeline(
                source=ItemSource(path=Path(job["source"])),
                processor=job["processor"],
                pipeline=job["pipeline"],
                scaling=ScalingConfig(**job.get("scaling", {})),
            )
        )
        wall = time.perf_counter() - t0
        engine = store.make_engine(url)
        try:
            rows = stage_rows(engine, summary.run_id)
            with store.open_session(engine) as session:
                batches = store.run_batches(session, summary.run_id)
        finally:
            engine.dispose()
        return {
            "wall": wall,
            "summary_seconds": summary.seconds,
            "done": summary.done,
            "items": summary.items,
            "stage_items": [row["items"] for row in rows],
            "batch_spans": [
                (b.finished_at - b.started_at).total_seconds() if b.finished_at else 0.0 for b in batches
            ],
            "processor_calls": list(_perf_processors.calls),
            "back_offs": list(trouble.back_offs),
            "refused": list(trouble.refused),
            "rss_before_kib": rss_before,
            "peak_rss_kib": _vm_kib("VmHWM"),
        }

    started = time.perf_counter()
    asyncio.run(warm_up())  # starts the ephemeral server: not part of any figure
    results: list[dict[str, Any]] = [{"server_start_seconds": time.perf_counter() - started}]
    for job in spec["jobs"]:
        result = run(job)
        result["kind"] = job["kind"]
        if job["kind"] == "overhead":
            result["floor_cycles"] = floor(max(len(result["stage_items"]), job.get("floor_min_cycles", 10)))
        results.append(result)
    results[0]["server_peak_rss_kib"] = _children_peak_kib()
    Path(spec["out"]).write_text(json.dumps(results), encoding="utf-8")
    return 0


# -- 1. orchestration overhead --------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineTiming:
    """One pipeline run of the overhead figure and a plain loop over its batch sizes."""

    stages: int
    pipeline_wall: float
    """Seconds of the `batch_pipeline` call (after the ephemeral server started)."""
    stage_loop_seconds: float
    """Seconds of the pipeline's stage loop alone (`PipelineSummary.seconds`)."""
    loop_wall: float
    """Seconds of a plain loop calling the processor with the same batch sizes."""
    median_stage_overhead: float
    """Median over stages of (start of the next processor call - start of this one) - this call's time."""
    mean_stage_overhead: float
    median_in_stage: float
    """Median time in the stage body (from claim to results written) outside the processor."""
    back_offs: int = 0
    """Retry back-offs of the Prefect client during the run (a busy server), and their seconds."""
    back_off_seconds: float = 0.0
    refused: tuple[str, ...] = ()
    """The requests the server refused (5xx), e.g. "POST /flow_runs/ 503"."""

    @property
    def wall_ratio(self) -> float:
        return self.pipeline_wall / self.loop_wall

    def back_off_note(self) -> str:
        if not self.back_offs:
            return ""
        refused = f" after {', '.join(sorted(set(self.refused)))}" if self.refused else ""
        return f"; {self.back_offs} client back-off(s) of {self.back_off_seconds:.1f} s in all{refused}"


@dataclass(frozen=True)
class OverheadFigures:
    """A pipeline run against a plain loop over the same batch sizes, and Prefect's floor."""

    items: int
    current: PipelineTiming
    median_floor: float
    """Median cycle of an empty async stage flow + an empty sync task + `settle`."""
    server_start_seconds: float

    @property
    def wall_ratio(self) -> float:
        return self.current.wall_ratio

    @property
    def overhead_over_floor(self) -> float:
        return self.current.median_stage_overhead / self.median_floor

    @property
    def floor_wall_ratio(self) -> float:
        """The wall ratio a pipeline would reach whose stages cost exactly the floor."""
        return (self.current.loop_wall + self.current.stages * self.median_floor) / self.current.loop_wall

    @property
    def met(self) -> bool:
        return self.wall_ratio <= Targets.MAX_WALL_RATIO and self.overhead_over_floor <= Targets.MAX_OVERHEAD_OVER_FLOOR

    def lines(self) -> list[str]:
        now = self.current
        wall_ok = self.wall_ratio <= Targets.MAX_WALL_RATIO
        floor_ok = self.overhead_over_floor <= Targets.MAX_OVERHEAD_OVER_FLOOR
        return [
            f"{self.items} items, processor sleeping 1.0 s a call, default scaling: {now.stages} stages "
            f"(ephemeral server start {self.server_start_seconds:.1f} s, not counted)",
            f"pipeline wall {now.pipeline_wall:.2f} s (its stage loop {now.stage_loop_seconds:.2f} s), "
            f"plain loop {now.loop_wall:.2f} s{now.back_off_note()}",
            f"pipeline / loop = {self.wall_ratio:.3f} (target <= {Targets.MAX_WALL_RATIO:.2f}): {_verdict(wall_ok)}",
            f"stage overhead (stage cycle minus the processor's own time, scaling task included): "
            f"median {_ms(now.median_stage_overhead)}, mean {_ms(now.mean_stage_overhead)}; "
            f"inside the stage body: median {_ms(now.median_in_stage)}",
            f"Prefect floor, measured the same way (an async parent flow awaiting an empty async subflow, "
            f"then calling an empty sync task and the pipeline's own settle wait, with one shared API "
            f"client, as the pipeline does): "
            f"median {_ms(self.median_floor)}",
            f"stage overhead / floor = {self.overhead_over_floor:.2f} "
            f"(target <= {Targets.MAX_OVERHEAD_OVER_FLOOR:.1f}): {_verdict(floor_ok)}",
            f"a pipeline whose stages cost exactly the floor would reach pipeline / loop = "
            f"{self.floor_wall_ratio:.3f} with {now.stages} stages",
        ]


def _overhead_job(source: Path, processor: str, *, floor_min_cycles: int = 10) -> dict[str, Any]:
    return {
        "kind": "overhead",
        "source": str(source),
        "processor": processor,
        "pipeline": "perf-overhead",
        "floor_min_cycles": floor_min_cycles,
    }


def _memory_job(source: Path, items: int) -> dict[str, Any]:
    # Few, large stages: the figure is about items in flight, not the number of stages. The
    # sample's High share falls past 120 items, so the quality targets are set to 0 (and the
    # time limit far away); otherwise the manager rightly shrinks the batches to ~140 items.
    initial = min(2_000, items)
    return {
        "kind": "memory",
        "source": str(source),
        "processor": FAST_PROCESSOR,
        "pipeline": "perf-memory",
        "scaling": {
            "initial_batch_size": initial,
            "min_batch_size": min(10, initial),
            "max_batch_size": 5_000,
            "high_confidence_threshold": 0.0,
            "low_confidence_threshold": 0.0,
            "processing_time_threshold": 600.0,
        },
    }


def _plain_loop(processor: str, source: Path, sizes: Sequence[int]) -> float:
    """Seconds of calling the processor in this process with `sizes` items at a time."""
    from scaling_core import load_processor

    function = load_processor(processor)
    items = list(iter_items(ItemSource(path=source)))
    started = time.perf_counter()
    position = 0
    for size in sizes:
        function(items[position : position + size])
        position += size
    return time.perf_counter() - started


def _pipeline_timing(raw: dict[str, Any], loop_wall: float) -> PipelineTiming:
    calls = raw["processor_calls"]
    if len(calls) != len(raw["stage_items"]):
        raise RuntimeError(f"{len(calls)} processor calls for {len(raw['stage_items'])} stages")
    own = [end - start for _, start, end in calls]
    overheads = [b[1] - a[1] - own[i] for i, (a, b) in enumerate(zip(calls, calls[1:]))]
    if not overheads:
        raise RuntimeError("too few stages to measure a per-stage overhead: use more items")
    return PipelineTiming(
        stages=len(raw["stage_items"]),
        pipeline_wall=raw["wall"],
        stage_loop_seconds=raw["summary_seconds"],
        loop_wall=loop_wall,
        median_stage_overhead=statistics.median(overheads),
        mean_stage_overhead=statistics.fmean(overheads),
        median_in_stage=statistics.median(span - o for span, o in zip(raw["batch_spans"], own)),
        back_offs=len(raw["back_offs"]),
        back_off_seconds=sum(raw["back_offs"]),
        refused=tuple(raw["refused"]),
    )


def _overhead_figures(raw: dict[str, Any], processor: str, source: Path, server_start: float) -> OverheadFigures:
    return OverheadFigures(
        items=raw["items"],
        current=_pipeline_timing(raw, _plain_loop(processor, source, raw["stage_items"])),
        median_floor=statistics.median(raw["floor_cycles"]),
        server_start_seconds=server_start,
    )


def measure_overhead(items: int = 5_000, processor: str = SLEEP_ONE_SECOND) -> OverheadFigures:
    """Run figure 1: `items` items through the pipeline and through a plain loop."""
    with tempfile.TemporaryDirectory(prefix="batchpilot-perf-") as tmp:
        work = Path(tmp)
        source = work / "items.jsonl"
        write_jsonl_source(source, items)
        (head, raw), _ = _run_child([_overhead_job(source, processor)], work / "child")
        return _overhead_figures(raw, processor, source, head["server_start_seconds"])


# -- 4. memory ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryFigures:
    """Peak resident memory of the process running the pipeline."""

    items: int
    stages: int
    done: int
    pipeline_wall: float
    peak_mb: float
    """VmHWM of the pipeline's process over its whole life."""
    before_mb: float
    """Resident memory just before the pipeline call (Prefect imported, server started)."""
    server_peak_mb: float
    """Peak of the ephemeral Prefect server process (its own process, not counted)."""
    shared_process: bool = False

    @property
    def met(self) -> bool:
        return self.peak_mb < Targets.MAX_PEAK_MB

    def lines(self) -> list[str]:
        note = " (shared with the overhead run)" if self.shared_process else ""
        return [
            f"{self.items} items ({self.done} done) in {self.stages} stages, {self.pipeline_wall:.1f} s",
            f"peak resident memory of the pipeline process{note}: {self.peak_mb:.0f} MB "
            f"(before the run {self.before_mb:.0f} MB; the ephemeral server's own process peaked at "
            f"{self.server_peak_mb:.0f} MB) (target < {Targets.MAX_PEAK_MB:.0f} MB): {_verdict(self.met)}",
        ]


def _memory_figures(raw: dict[str, Any], head: dict[str, Any], *, shared: bool = False) -> MemoryFigures:
    return MemoryFigures(
        items=raw["items"],
        stages=len(raw["stage_items"]),
        done=raw["done"],
        pipeline_wall=raw["wall"],
        peak_mb=raw["peak_rss_kib"] / 1024,
        before_mb=raw["rss_before_kib"] / 1024,
        server_peak_mb=head.get("server_peak_rss_kib", 0) / 1024,
        shared_process=shared,
    )


def measure_memory(items: int = 1_000_000) -> MemoryFigures:
    """Run figure 4: `items` JSON Lines items end to end through the pipeline in a child process."""
    with tempfile.TemporaryDirectory(prefix="batchpilot-perf-") as tmp:
        work = Path(tmp)
        source = work / "items.jsonl"
        write_jsonl_source(source, items)
        (head, raw), _ = _run_child([_memory_job(source, items)], work / "child")
        return _memory_figures(raw, head)


def measure_overhead_and_memory(
    overhead_items: int,
    memory_items: int,
    processor: str = SLEEP_ONE_SECOND,
    *,
    floor_min_cycles: int = 10,
) -> tuple[OverheadFigures, MemoryFigures]:
    """Figures 1 and 4 in one child process (one server start): for quick checks only, as
    the memory peak then covers both runs."""
    with tempfile.TemporaryDirectory(prefix="batchpilot-perf-") as tmp:
        work = Path(tmp)
        overhead_source = write_jsonl_source(work / "overhead.jsonl", overhead_items).path
        memory_source = write_jsonl_source(work / "memory.jsonl", memory_items).path
        (head, overhead_raw, memory_raw), _ = _run_child(
            [
                _overhead_job(overhead_source, processor, floor_min_cycles=floor_min_cycles),
                _memory_job(memory_source, memory_items),
            ],
            work / "child",
        )
        return (
            _overhead_figures(overhead_raw, processor, overhead_source, head["server_start_seconds"]),
            _memory_figures(memory_raw, head, shared=True),
        )


# -- 2. store throughput ------------------------------------------------------------------------


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
            f"(target >= {target}x for both): {_verdict(self.met)}",
        ]


def _ledger_rows(start: int, count: int) -> list[tuple[int, str, dict[str, Any]]]:
    return [(n, _item_id(n), _payload(n)) for n in range(start, start + count)]


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


# -- 3. decision cost -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionFigures:
    """The scaling task's time over stored histories of growing length.

    `seconds[i]` is the median time of `decide_next_batch_size.fn` with `counts[i]` batches
    stored; `reads[i]` the median of its history read alone (`PipelineStore.recent_batches`
    of `ScalingManager.HISTORY` batches).
    """

    counts: tuple[int, ...]
    calls: int
    seconds: tuple[float, ...]
    reads: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """Time with the longest history over time with the shortest."""
        return self.seconds[-1] / self.seconds[0]

    @property
    def met(self) -> bool:
        return self.ratio < Targets.MAX_DECISION_RATIO

    def lines(self) -> list[str]:
        return [
            f"decide_next_batch_size.fn (the task's plain function), median of {self.calls} interleaved calls:",
            *(
                f"{count:>9,} batches stored: {_ms(seconds)} (history read {_ms(read)})"
                for count, seconds, read in zip(self.counts, self.seconds, self.reads)
            ),
            f"{self.counts[-1]:,} / {self.counts[0]:,} batches: ratio {self.ratio:.2f} "
            f"(target < {Targets.MAX_DECISION_RATIO:.0f}): {_verdict(self.met)}",
        ]


def _store_batches(engine: Engine, count: int) -> tuple[str, str]:
    """A run of pipeline `perf-decision-<count>` with `count` finished batches, inserted in bulk."""
    pipeline = f"perf-decision-{count}"
    with store.open_session(engine) as session:
        run_id = store.start_run(session, pipeline=pipeline, source="bench", processor="bench", config={}).run_id
        now = datetime.now(UTC)
        for start in range(0, count, 20_000):
            rows = []
            for n in range(start, min(count, start + 20_000)):
                size = 60 + (n * 37) % 140  # sizes 60..199 in a fixed scramble
                failed = 1 if n % 7 == 0 else 0
                high = int(size * (0.96 - 0.0004 * max(0, size - 120)))
                rows.append(
                    {
                        "run_id": run_id,
                        "pipeline": pipeline,
                        "stage": n + 1,
                        "batch_size": size,
                        "total_items": size,
                        "successful_items": size - failed,
                        "failed_items": failed,
                        "high": high - failed,
                        "medium": size - high,
                        "low": failed,
                        "seconds": 1.0 + 0.02 * size + 0.05 * ((n * 13) % 7 - 3) / 3,
                        "status": store.BatchStatus.COMPLETED,
                        "worker": "bench",
                        "started_at": now,
                        "finished_at": now,
                    }
                )
            session.execute(insert(store.BatchRecord.__table__), rows)  # type: ignore[attr-defined]
            session.commit()
    return run_id, pipeline


def measure_decision(counts: Sequence[int] = (100, 1_000, 100_000), calls: int = 30) -> DecisionFigures:
    """Run figure 3: the scaling task's plain function on stores holding `counts` batches.

    Imports `flows.pipeline` (and so prefect) in this process; no server is needed, and the
    task's log line goes to a disabled logger.
    """
    from prefect.logging import disable_run_logger

    from flows.database import StoreDatabase
    from flows.pipeline import decide_next_batch_size

    scaling = ScalingConfig()
    window = ScalingManager.HISTORY
    with tempfile.TemporaryDirectory(prefix="batchpilot-perf-decision-") as tmp:
        cases = []
        for count in counts:
            url = f"sqlite:///{Path(tmp) / f'decision-{count}.db'}"
            engine = store.make_engine(url)
            store.create_schema(engine)
            run_id, pipeline = _store_batches(engine, count)
            engine.dispose()
            cases.append((url, run_id, pipeline, count))
        # One block per store, as a run has: its engine is made on the first decision.
        blocks = {url: StoreDatabase.from_url(url) for url, *_ in cases}

        def decide(url: str, run_id: str, pipeline: str, count: int) -> float:
            started = time.perf_counter()
            decide_next_batch_size.fn(
                run_id=run_id,
                pipeline=pipeline,
                scaling=scaling,
                current_batch_size=120,
                stage=count,
                database=blocks[url],
            )
            return time.perf_counter() - started

        def read(bound: store.PipelineStore) -> float:
            started = time.perf_counter()
            bound.recent_batches(window)
            return time.perf_counter() - started

        timings: dict[int, list[float]] = {count: [] for *_, count in cases}
        read_timings: dict[int, list[float]] = {count: [] for *_, count in cases}
        engines = {case[3]: store.make_engine(case[0]) for case in cases}
        try:
            with disable_run_logger():
                for case in cases:
                    decide(*case)  # the block's engine and schema check
                for _ in range(calls):  # interleaved, so that noise falls on every case alike
                    for url, run_id, pipeline, count in cases:
                        timings[count].append(decide(url, run_id, pipeline, count))
                        bound = store.PipelineStore(engines[count], pipeline=pipeline, run_id=run_id)
                        read_timings[count].append(read(bound))
        finally:
            for engine in engines.values():
                engine.dispose()
            for block in blocks.values():
                block.dispose()  # close the task's store files before the temp dir goes

    def medians(table: dict[int, list[float]]) -> tuple[float, ...]:
        return tuple(statistics.median(table[count]) for count in counts)

    return DecisionFigures(counts=tuple(counts), calls=calls, seconds=medians(timings), reads=medians(read_timings))


# -- the command ----------------------------------------------------------------------------------

FIGURES = ("overhead", "store", "decision", "memory")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.performance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k items for the store and memory figures")
    parser.add_argument(
        "--only", default=",".join(FIGURES), help=f"comma-separated figures to run, of {', '.join(FIGURES)}"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(FIGURES))
    if unknown or not chosen:
        parser.error(f"--only takes names of {', '.join(FIGURES)}; got {args.only!r}")
    args.figures = [name for name in FIGURES if name in chosen]
    return args


def _code_version() -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "-uno", "--", "scaling_core", "flows"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown version"
    return f"{commit}{' with local changes' if changed else ''}"


def _section(title: str, lines: list[str], seconds: float) -> None:
    print(f"\n== {title} ({seconds:.0f} s)", flush=True)
    for line in lines:
        print(f"   {line}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen figures, print them with their verdicts; always returns 0."""
    if argv is None and sys.argv[1:2] == ["_child"]:  # pragma: no cover - the Prefect child process
        return _child_main(sys.argv[2])
    args = _parse_args(argv)
    big = 100_000 if args.quick else 1_000_000
    started = time.perf_counter()
    print(
        f"batchpilot performance benchmark ({'quick' if args.quick else 'full'}): {', '.join(args.figures)}; "
        f"code at {_code_version()}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        "ratios are measured within this run",
        flush=True,
    )
    verdicts: dict[str, bool] = {}
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="batchpilot-perf-home-") as home:
        if "prefect" not in sys.modules:
            # The decision figure imports the flows (and prefect) here; keep its home temporary.
            os.environ["PREFECT_HOME"] = home
            os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        runners: dict[str, tuple[str, Callable[[], Any]]] = {
            "overhead": ("1. orchestration overhead", lambda: measure_overhead(5_000)),
            "store": ("2. store throughput", lambda: measure_store(big)),
            "decision": ("3. decision cost", lambda: measure_decision((100, 1_000, 100_000))),
            "memory": ("4. memory", lambda: measure_memory(big)),
        }
        for name in args.figures:
            title, run = runners[name]
            t0 = time.perf_counter()
            try:
                figures = run()
            except Exception as error:  # report and go on with the other figures
                _section(title, [f"ERROR {type(error).__name__}: {error}"], time.perf_counter() - t0)
                verdicts[name] = False
                continue
            _section(title, figures.lines(), time.perf_counter() - t0)
            verdicts[name] = figures.met
            report[name] = asdict(figures)
    print("\n== targets", flush=True)
    for name, met in verdicts.items():
        print(f"   {name:<9} {_verdict(met)}")
    print(f"   total time {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"verdicts": verdicts, "figures": report}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
