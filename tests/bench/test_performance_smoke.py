"""Smoke test of the performance benchmark: every figure is computed, at tiny sizes.

The figures' targets are not asserted here (they need full sizes and a quiet machine); only
that each measurement runs end to end and yields finite, positive numbers.

The decision figure imports the flows (and prefect) in this process, and prefect reads
`PREFECT_HOME` when it is imported: a temporary home is set here unless prefect is already in.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if "prefect" not in sys.modules:
    _PREFECT_HOME = Path(tempfile.mkdtemp(prefix="batchpilot-test-perf-prefect-home-"))
    os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
    atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench import performance  # noqa: E402

BRIEF_PROCESSOR = "bench._perf_processors:sleep_briefly"


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def test_every_figure_is_computed_at_tiny_sizes() -> None:
    # The Prefect figures share one child process (its server start dominates); the
    # in-process figures run meanwhile.
    with ThreadPoolExecutor(max_workers=1) as pool:
        prefect_figures = pool.submit(
            performance.measure_overhead_and_memory, 120, 500, BRIEF_PROCESSOR, floor_min_cycles=2
        )
        store = performance.measure_store(3_000)
        decision = performance.measure_decision((10, 600), calls=3)
        overhead, memory = prefect_figures.result(timeout=180)

    for rates in (store.store, store.raw):
        assert all(_positive(value) for value in (rates.load, rates.results, rates.claim_seconds, rates.record_seconds))
    assert _positive(store.load_ratio) and _positive(store.results_ratio)

    assert len(decision.seconds) == len(decision.reads) == 2
    assert all(_positive(value) for value in (*decision.seconds, *decision.reads))
    assert _positive(decision.ratio)

    timing = overhead.current
    assert timing.stages >= 3
    assert all(
        _positive(value)
        for value in (timing.pipeline_wall, timing.loop_wall, timing.median_stage_overhead, timing.wall_ratio)
    )
    assert _positive(overhead.median_floor) and _positive(overhead.floor_wall_ratio)
    assert _positive(overhead.overhead_over_floor) and overhead.items == 120

    assert memory.done == memory.items == 500
    assert _positive(memory.peak_mb) and memory.peak_mb >= memory.before_mb > 0

    for figures in (overhead, store, decision, memory):
        assert isinstance(figures.met, bool)
        assert figures.lines()


def test_the_long_batch_figure_is_computed_at_tiny_sizes() -> None:
    figures = performance.measure_long_batches(stages=3, batch_size=5, processor=BRIEF_PROCESSOR)

    timing = figures.timing
    assert (figures.items, figures.batch_size, timing.stages) == (15, 5, 3)
    assert all(_positive(value) for value in (figures.ratio, figures.stage_loop_ratio, figures.floor_ratio))
    assert _positive(figures.call_seconds) and _positive(figures.median_floor)
    assert isinstance(figures.met, bool) and figures.lines()


def test_the_command_rejects_unknown_figures(capsys: object) -> None:
    import pytest

    with pytest.raises(SystemExit):
        performance.main(["--only", "overhead,speed"])


def test_the_export_figure_is_computed_at_tiny_sizes() -> None:
    figures = performance.measure_export(2_000)

    expected_formats = ["csv"] if figures.parquet_skipped else ["csv", "parquet"]
    assert [export.format for export in figures.exports] == expected_formats
    assert all(export.rows == 2_000 for export in figures.exports)
    assert all(_positive(export.peak_mb) and _positive(export.seconds) for export in figures.exports)
    assert isinstance(figures.met, bool) and figures.lines()
