"""Figure 1: a stage's overhead above Prefect's floor, and the pipeline's wall against a plain loop.

A 5,000-item run whose processor sleeps 1.0 s per call goes through `batch_pipeline`
(ephemeral Prefect, embedded SQLite store, default scaling); a plain loop then calls the same
processor with the same batch sizes. A stage's overhead is the time between two processor
calls; Prefect's floor, measured in the same child process around it, is an empty async
stage subflow plus an empty sync task and the pipeline's `settle` wait, called the same way.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.performance.common import SLEEP_ONE_SECOND, Targets, ms, run_child, verdict, write_jsonl_source
from scaling_core import ItemSource, iter_items

__all__ = ["OverheadFigures", "PipelineTiming", "measure_overhead", "overhead_figures", "overhead_job", "pipeline_timing", "plain_loop"]



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
        """Pipeline wall over the plain loop's."""
        return self.pipeline_wall / self.loop_wall

    def floor_ratio(self, floor: float) -> float:
        """The wall ratio a pipeline would reach whose stages each cost `floor` seconds."""
        return (self.loop_wall + self.stages * floor) / self.loop_wall

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
        """Pipeline wall over the plain loop's."""
        return self.current.wall_ratio

    @property
    def overhead_over_floor(self) -> float:
        """A stage's median overhead over Prefect's median floor."""
        return self.current.median_stage_overhead / self.median_floor

    @property
    def floor_wall_ratio(self) -> float:
        """The wall ratio a pipeline would reach whose stages cost exactly the floor."""
        return self.current.floor_ratio(self.median_floor)

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
            f"pipeline / loop = {self.wall_ratio:.3f} (target <= {Targets.MAX_WALL_RATIO:.2f}): {verdict(wall_ok)}",
            f"stage overhead median {ms(now.median_stage_overhead)}; Prefect floor {ms(self.median_floor)}; "
            f"stage overhead / floor = {self.overhead_over_floor:.2f} "
            f"(target <= {Targets.MAX_OVERHEAD_OVER_FLOOR:.2f}): {verdict(floor_ok)}",
            f"(stage overhead: the time between two processor calls minus the first call's own time, "
            f"scaling task included; mean {ms(now.mean_stage_overhead)}; inside the stage body, from claim "
            f"to results written: median {ms(now.median_in_stage)})",
            "(floor: an async parent flow awaiting an empty async subflow, then calling an empty sync task "
            "and the pipeline's own settle wait, with one shared API client, as the pipeline does)",
            f"a pipeline whose stages cost exactly the floor would reach pipeline / loop = "
            f"{self.floor_wall_ratio:.3f} with {now.stages} stages",
        ]


def overhead_job(source: Path, processor: str, *, floor_min_cycles: int = 10) -> dict[str, Any]:
    """The child's job for this figure: default scaling, then at least `floor_min_cycles` floor cycles."""
    return {
        "kind": "overhead",
        "source": str(source),
        "processor": processor,
        "pipeline": "perf-overhead",
        "floor_min_cycles": floor_min_cycles,
    }


def plain_loop(processor: str, source: Path, sizes: Sequence[int]) -> float:
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


def pipeline_timing(raw: dict[str, Any], loop_wall: float) -> PipelineTiming:
    """A pipeline run's timing from the child's raw data and the plain loop's wall time."""
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


def overhead_figures(raw: dict[str, Any], processor: str, source: Path, server_start: float) -> OverheadFigures:
    """The figure from the child's raw data, with the plain loop run here over the same sizes."""
    return OverheadFigures(
        items=raw["items"],
        current=pipeline_timing(raw, plain_loop(processor, source, raw["stage_items"])),
        median_floor=statistics.median(raw["floor_cycles"]),
        server_start_seconds=server_start,
    )


def measure_overhead(items: int = 5_000, processor: str = SLEEP_ONE_SECOND) -> OverheadFigures:
    """Run figure 1: `items` items through the pipeline and through a plain loop."""
    with tempfile.TemporaryDirectory(prefix="batchpilot-perf-") as tmp:
        work = Path(tmp)
        source = work / "items.jsonl"
        write_jsonl_source(source, items)
        (head, raw), _ = run_child([overhead_job(source, processor)], work / "child")
        return overhead_figures(raw, processor, source, head["server_start_seconds"])

