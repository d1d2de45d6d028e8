"""A quality target that no batch size meets: the run chooses by throughput and warns once."""

from __future__ import annotations

from pathlib import Path

from scaling_core import ScalingConfig
from tests.flows.fault_support import flow_run_logs
from tests.flows.support import child_flow_runs, run_pipeline, stages, write_csv


def test_a_quality_target_no_size_meets_is_warned_of_once_and_not_shrunk_for(
    tmp_path: Path, sqlite_url: str, pipeline_name: str
) -> None:
    scaling = ScalingConfig(initial_batch_size=20, min_batch_size=5, max_batch_size=80)
    summary, parent = run_pipeline(
        source=write_csv(tmp_path / "items.csv", 600),
        processor="tests.flows.processors:unsure_of_everything",
        pipeline=pipeline_name,
        scaling=scaling,
        database=sqlite_url,
    )
    sizes = [row["batch_size"] for row in stages(sqlite_url, summary.run_id)]
    assert summary.done == 600
    # Halved while the evidence was thin, then grown to the largest size: no size helps.
    assert sizes[-1] == 80, sizes
    warnings = [
        log.message
        for log in flow_run_logs([parent, *(run.id for run in child_flow_runs(parent))])
        if log.level >= 30 and "no size meets the quality target" in log.message
    ]
    assert len(warnings) == 1, warnings
    assert "choosing by throughput" in warnings[0]
