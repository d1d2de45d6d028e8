"""Figure 3: the scaling task's time with 100, 1,000 and 100,000 batches stored.

1,000 is past the 400-batch window the task reads; the time must not grow with the history.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, insert

from bench.performance.common import Targets, ms, verdict
from scaling_core import ScalingConfig, ScalingManager, store

__all__ = ["DecisionFigures", "measure_decision"]



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
                f"{count:>9,} batches stored: {ms(seconds)} (history read {ms(read)})"
                for count, seconds, read in zip(self.counts, self.seconds, self.reads)
            ),
            f"{self.counts[-1]:,} / {self.counts[0]:,} batches: ratio {self.ratio:.2f} "
            f"(target < {Targets.MAX_DECISION_RATIO:.0f}): {verdict(self.met)}",
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

