"""The Prefect child process of the benchmark: `python -m bench.performance._child SPEC`.

It starts the ephemeral server with a warm-up flow (not part of any figure), runs each job of
the spec through `batch_pipeline` with wall times taken inside the process, measures Prefect's
floor around a job that asks for it (half before, half after), and writes the raw data as JSON for the parent to turn into
figures.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.performance.common import vm_kib
from scaling_core import ItemSource, ScalingConfig, store


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
            peak = max(peak, vm_kib("VmHWM", entry.name))
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
        rss_before = vm_kib("VmRSS")
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
            "peak_rss_kib": vm_kib("VmHWM"),
        }

    started = time.perf_counter()
    asyncio.run(warm_up())  # starts the ephemeral server: not part of any figure
    results: list[dict[str, Any]] = [{"server_start_seconds": time.perf_counter() - started}]
    for job in spec["jobs"]:
        wanted = job.get("floor_min_cycles", 0)
        # Half the floor before the pipeline and half after: the load of a shared machine
        # drifts over minutes, and the floor must see the same drift as the pipeline.
        floor_cycles = floor(wanted // 2 + 1) if wanted else []
        result = run(job)
        result["kind"] = job["kind"]
        if wanted:
            after = max(len(result["stage_items"]), wanted) - len(floor_cycles)
            result["floor_cycles"] = floor_cycles + floor(max(after, 1) + 1)
        results.append(result)
    results[0]["server_peak_rss_kib"] = _children_peak_kib()
    Path(spec["out"]).write_text(json.dumps(results), encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover - the parent starts this module as a process
    sys.exit(_child_main(sys.argv[1]))
