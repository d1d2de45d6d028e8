"""Figure 5: with batches of about 5 s, the pipeline stays within 5 % of a plain loop.

A processor that sleeps 5.0 s per call, at a fixed batch size (the scaling manager's limits
pinned to it), goes through `batch_pipeline` for a handful of stages; a plain loop then calls
the same processor with the same sizes. The ratio covers the whole `batch_pipeline` call:
opening the run, loading the ledger and the closing artifacts included.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.performance.common import SLEEP_FIVE_SECONDS, Targets, ms, run_child, verdict, write_jsonl_source
from bench.performance.overhead import PipelineTiming, pipeline_timing, plain_loop

__all__ = ["LongBatchFigures", "measure_long_batches"]

BATCH_SIZE = 100
"""Items per stage, fixed: the figure is about the orchestration, not the sizes chosen."""
STAGES = 6
"""A handful of 5-s stages: enough for a median, and the figure stays near a minute."""
FLOOR_CYCLES = 10
"""Cycles of Prefect's floor measured around the run (a few seconds)."""


@dataclass(frozen=True)
class LongBatchFigures:
    """A pipeline run of fixed-size ~5-s batches against a plain loop over the same sizes."""

    items: int
    batch_size: int
    call_seconds: float
    """The processor's median call time."""
    timing: PipelineTiming
    median_floor: float
    """Prefect's floor per stage, measured around this run as figure 1 measures it."""

    @property
    def ratio(self) -> float:
        """Pipeline wall over the plain loop's."""
        return self.timing.wall_ratio

    @property
    def stage_loop_ratio(self) -> float:
        """The pipeline's stage loop alone (no run opening or closing artifacts) over the plain loop."""
        return self.timing.stage_loop_seconds / self.timing.loop_wall

    @property
    def floor_ratio(self) -> float:
        """The ratio a pipeline would reach whose stages cost exactly Prefect's floor."""
        return self.timing.floor_ratio(self.median_floor)

    @property
    def met(self) -> bool:
        return self.ratio <= Targets.MAX_LONG_BATCH_RATIO

    def lines(self) -> list[str]:
        now = self.timing
        return [
            f"{self.items} items in {now.stages} stages of {self.batch_size} (fixed), processor call "
            f"{self.call_seconds:.2f} s",
            f"pipeline wall {now.pipeline_wall:.2f} s (its stage loop {now.stage_loop_seconds:.2f} s), "
            f"plain loop {now.loop_wall:.2f} s{now.back_off_note()}",
            f"pipeline / loop with ~5-s batches = {self.ratio:.3f} (stage loop alone {self.stage_loop_ratio:.3f}) "
            f"(target <= {Targets.MAX_LONG_BATCH_RATIO:.2f}): {verdict(self.met)}",
            f"stage overhead median {ms(now.median_stage_overhead)} "
            f"({100 * now.median_stage_overhead / self.call_seconds:.1f} % of a call); Prefect floor "
            f"{ms(self.median_floor)}: a pipeline whose stages cost exactly the floor would reach "
            f"{self.floor_ratio:.3f}",
        ]


def _long_job(source: Path, batch_size: int, processor: str) -> dict[str, Any]:
    """The child's job for this figure: the scaling limits pinned to `batch_size`."""
    return {
        "kind": "long",
        "source": str(source),
        "processor": processor,
        "pipeline": "perf-long-batches",
        "scaling": {
            "initial_batch_size": batch_size,
            "min_batch_size": batch_size,
            "max_batch_size": batch_size,
            # Above the call's 5 s, so that no decision reports an unmet time limit.
            "processing_time_threshold": 60.0,
        },
        "floor_min_cycles": FLOOR_CYCLES,
    }


def measure_long_batches(
    stages: int = STAGES, batch_size: int = BATCH_SIZE, processor: str = SLEEP_FIVE_SECONDS
) -> LongBatchFigures:
    """Run figure 5: `stages` fixed-size batches through the pipeline and through a plain loop."""
    items = stages * batch_size
    with tempfile.TemporaryDirectory(prefix="batchpilot-perf-") as tmp:
        work = Path(tmp)
        source = write_jsonl_source(work / "items.jsonl", items).path
        (_, raw), _ = run_child([_long_job(source, batch_size, processor)], work / "child")
        timing = pipeline_timing(raw, plain_loop(processor, source, raw["stage_items"]))
    calls = [end - start for _, start, end in raw["processor_calls"]]
    return LongBatchFigures(
        items=raw["items"],
        batch_size=batch_size,
        call_seconds=statistics.median(calls),
        timing=timing,
        median_floor=statistics.median(raw["floor_cycles"]),
    )
