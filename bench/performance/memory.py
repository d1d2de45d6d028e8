"""Figure 4: peak resident memory of a process running 1,000,000 JSON Lines items end to end."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.performance.common import FAST_PROCESSOR, SLEEP_ONE_SECOND, Targets, run_child, verdict, write_jsonl_source
from bench.performance.overhead import OverheadFigures, overhead_figures, overhead_job

__all__ = ["MemoryFigures", "measure_memory", "measure_overhead_and_memory"]


def _memory_job(source: Path, items: int) -> dict[str, Any]:
    """The child's job for this figure: few, large stages of the fast sample processor."""
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
            f"{self.server_peak_mb:.0f} MB) (target < {Targets.MAX_PEAK_MB:.0f} MB): {verdict(self.met)}",
        ]


def _memory_figures(raw: dict[str, Any], head: dict[str, Any], *, shared: bool = False) -> MemoryFigures:
    """The figure from the child's raw data of a memory job (`head` holds the server's peak)."""
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
        (head, raw), _ = run_child([_memory_job(source, items)], work / "child")
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
        (head, overhead_raw, memory_raw), _ = run_child(
            [
                overhead_job(overhead_source, processor, floor_min_cycles=floor_min_cycles),
                _memory_job(memory_source, memory_items),
            ],
            work / "child",
        )
        return (
            overhead_figures(overhead_raw, processor, overhead_source, head["server_start_seconds"]),
            _memory_figures(memory_raw, head, shared=True),
        )

