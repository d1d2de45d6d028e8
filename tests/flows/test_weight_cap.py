"""Heavy items through the real pipeline: the scaling task's weight cap makes their batches shorter."""

from __future__ import annotations

from pathlib import Path

from flows.models import ExecutionOptions
from scaling_core import ScalingConfig
from scaling_core.sources import ItemSource
from tests.flows.processors import SECONDS_PER_CALL, SECONDS_PER_TOKEN
from tests.flows.support import (
    batches,
    child_flow_runs,
    run_pipeline,
    runs,
    write_jsonl,
)

LIGHT, HEAVY = 160, 80
SCALING = ScalingConfig(
    initial_batch_size=10, min_batch_size=2, max_batch_size=80, processing_time_threshold=0.6, min_batches_for_scaling=2
)


def _tokens(n: int) -> int:
    # Light items of 5 to 25 tokens, then heavy ones of 50 to 250: a batch's tokens per item vary.
    spread = 1 + (n * 37) % 5
    return 5 * spread if n < LIGHT else 50 * spread


def test_batches_of_heavy_items_stop_short_within_the_time_limit(tmp_path: Path, prefect_api_url: str) -> None:
    path = write_jsonl(
        tmp_path / "docs.jsonl", ({"id": f"d{n}", "tokens": _tokens(n)} for n in range(LIGHT + HEAVY))
    ).path
    url = f"sqlite:///{tmp_path / 'store.db'}"
    summary, flow_run_id = run_pipeline(
        source=ItemSource(path=path, weight_field="tokens"),
        processor="tests.flows.processors:reads_tokens",
        pipeline="tokens",
        scaling=SCALING,
        execution=ExecutionOptions(),
        database=url,
    )
    assert summary.done == LIGHT + HEAVY
    [run] = runs(url)
    records = sorted(batches(url, run.run_id), key=lambda record: record.stage)
    heavy = [record for record in records if record.total_weight and record.total_weight / record.total_items >= 50]
    assert heavy, [(r.total_items, r.total_weight) for r in records]
    # The first heavy batches are cut short of their size by the weight the scaling task allows
    # (their tokens within the time limit), not run over it at the size light items earned.
    cut = [record for record in heavy[:3] if record.total_items < record.batch_size]
    assert cut, [(r.batch_size, r.total_items, r.total_weight) for r in heavy]
    worst = max(SECONDS_PER_CALL + SECONDS_PER_TOKEN * (record.total_weight or 0.0) for record in heavy)
    assert worst <= SCALING.processing_time_threshold, worst
    # The stage subflows show the weight they were allowed.
    allowed = [run.parameters.get("max_weight") for run in child_flow_runs(flow_run_id)]
    assert any(value is not None for value in allowed), allowed
