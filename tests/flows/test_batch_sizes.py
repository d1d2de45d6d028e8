"""Batch sizes across stages and runs: they follow the workload, and a new run starts warm."""

from __future__ import annotations

from pathlib import Path

from scaling_core import ScalingConfig
from tests.flows.processors import knee_at_40
from tests.flows.support import FAST_PROCESSOR, run_pipeline, stages, write_csv

KNEE_SCALING = ScalingConfig(initial_batch_size=20, min_batch_size=5, max_batch_size=200)


def test_batch_sizes_move_with_the_workload(tmp_path: Path, sqlite_url: str, pipeline_name: str) -> None:
    # High share 0.95 up to 40 items, 0.90 (the target) at 45, 0.75 at 60: the sizes must
    # grow from 20, meet the falling quality, and settle near the knee.
    assert knee_at_40.high_share(45) == KNEE_SCALING.high_confidence_threshold
    summary, _ = run_pipeline(
        source=write_csv(tmp_path / "items.csv", 330),
        processor="tests.flows.processors:knee_at_40",
        pipeline=pipeline_name,
        scaling=KNEE_SCALING,
        database=sqlite_url,
    )
    sizes = [row["batch_size"] for row in stages(sqlite_url, summary.run_id)]
    assert sizes == summary.sizes_used
    assert sizes[0] == 20
    assert max(sizes) >= 40, f"the sizes never grew to the knee: {sizes}"
    late = sizes[-3:]
    assert all(30 <= size <= 60 for size in late), f"the sizes did not settle near the knee: {sizes}"
    assert summary.done == 330


def test_a_new_run_starts_at_the_size_the_last_run_learned(tmp_path: Path, store_url: str, pipeline_name: str) -> None:
    scaling = ScalingConfig(initial_batch_size=10, min_batch_size=5, max_batch_size=60)
    common = {"processor": FAST_PROCESSOR, "pipeline": pipeline_name, "scaling": scaling, "database": store_url}
    first, _ = run_pipeline(source=write_csv(tmp_path / "first.csv", 60), **common)
    learned = stages(store_url, first.run_id)[-1]["next_batch_size"]
    assert learned != scaling.initial_batch_size, "the first run learned nothing; the test could not tell"

    warm, _ = run_pipeline(source=write_csv(tmp_path / "second.csv", 5, start=1000), **common)
    assert warm.run_id != first.run_id
    assert stages(store_url, warm.run_id)[0]["batch_size"] == learned

    cold, _ = run_pipeline(source=write_csv(tmp_path / "third.csv", 5, start=2000), warm_start=False, **common)
    assert cold.run_id not in {first.run_id, warm.run_id}
    assert stages(store_url, cold.run_id)[0]["batch_size"] == scaling.initial_batch_size
