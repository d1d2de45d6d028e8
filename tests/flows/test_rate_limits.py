"""Rate limits through the real Prefect engine and a real HTTP endpoint on 127.0.0.1.

The endpoint (`tests.flows.rate_limited_server`) answers 429 with `Retry-After` above a
token limit per window; the window is 3 s instead of a minute (`rate_limit_period_seconds`)
so that a run meets the limit many times within seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from sqlmodel import col, select

from flows.models import ExecutionOptions, PipelineSummary
from scaling_core import ScalingConfig, make_engine, store
from scaling_core._evidence import wilson_bounds
from tests.flows import rate_limited_server
from tests.flows.rate_limited_server import RateLimitedServer
from tests.flows.support import batches, child_flow_runs, run_pipeline, write_csv

WINDOW = 3.0
"""Seconds of the endpoint's window, and the pacer's period."""
LIMIT = 600
"""Tokens per window: 60 items of 10 tokens, 20 items per second, under what stages of up to
20 items run at even on a loaded machine, so that the run meets the limit."""
SCALING = ScalingConfig(
    initial_batch_size=5, min_batch_size=1, max_batch_size=20, rate_limit_period_seconds=WINDOW
)
LEARNED_SHARE = 0.05
"""Once the limit is learned, at most this share of the calls may come back 429."""
SURELY_Z = 1.645
"""One-sided 95 %: a run fails the share only when its calls show it is over, not when a
few dozen calls happen to hold one 429 too many (the stages' timing varies with the machine)."""


@pytest.fixture
def endpoint(request: pytest.FixtureRequest) -> Iterator[RateLimitedServer]:
    """The endpoint, at `LIMIT` tokens a window unless the test asks for another (indirect)."""
    with RateLimitedServer(limit=getattr(request, "param", LIMIT), window=WINDOW) as server:
        rate_limited_server.server_url = server.url
        yield server
    rate_limited_server.server_url = None


def _run_labelling(
    tmp_path: Path,
    sqlite_url: str,
    pipeline_name: str,
    items: int,
    *,
    initial_batch_size: int = SCALING.initial_batch_size,
    max_batch_size: int = SCALING.max_batch_size,
    execution: ExecutionOptions | None = None,
) -> tuple[PipelineSummary, UUID]:
    """A run of `label_items` against the endpoint over `items` items."""
    return run_pipeline(
        source=write_csv(tmp_path / "items.csv", items),
        processor="tests.flows.rate_limited_server:label_items",
        pipeline=pipeline_name,
        scaling=SCALING.model_copy(update={"initial_batch_size": initial_batch_size, "max_batch_size": max_batch_size}),
        execution=execution or ExecutionOptions(),
        database=sqlite_url,
    )


def _share_surely_over(refused: int, calls: int) -> bool:
    """Whether `refused` 429s in `calls` calls show a share over `LEARNED_SHARE` (Wilson bound)."""
    lower, _ = wilson_bounds(refused, calls, SURELY_Z)
    return lower > LEARNED_SHARE


def _after_learning(statuses: list[int]) -> list[int]:
    """The calls after the first 429 and the retries that settled it (the first 200 after it)."""
    first = statuses.index(429)
    settled = statuses.index(200, first)
    return statuses[settled + 1 :]


def _decision_reasons(url: str, run_id: str) -> list[str]:
    engine = make_engine(url)
    try:
        with store.open_session(engine) as session:
            rows = session.exec(
                select(store.DecisionRecord).where(store.DecisionRecord.run_id == run_id).order_by(col(store.DecisionRecord.id))
            ).all()
            return [row.reason for row in rows]
    finally:
        engine.dispose()


def test_a_rate_limited_endpoint_finishes_every_item_and_is_paced_once_learned(
    tmp_path: Path, sqlite_url: str, pipeline_name: str, endpoint: RateLimitedServer
) -> None:
    # Enough items for some 20 calls after learning.
    summary, _ = _run_labelling(tmp_path, sqlite_url, pipeline_name, 480)
    assert (summary.done, summary.failed, summary.pending) == (480, 0, 0)
    statuses = endpoint.log.statuses()
    assert 429 in statuses, "the run never met the limit: the test proves nothing"
    later = _after_learning(statuses)
    assert len(later) >= 20, statuses
    assert _share_surely_over(later.count(429), len(later)) is False, statuses
    # A refused call failed nothing, and its wait is not the batch's time.
    records = batches(sqlite_url, summary.run_id)
    assert all(record.status == store.BatchStatus.COMPLETED for record in records)
    limited = [record for record in records if record.rate_limited_calls]
    assert sum(record.rate_limited_calls for record in records) == statuses.count(429)
    # A record spans the claim to the write: the batch's time and its waits both fit in it only
    # when the waits are not also in the time.
    assert limited and all(
        record.seconds + record.rate_wait_seconds <= (record.finished_at - record.started_at).total_seconds()
        for record in limited
        if record.finished_at is not None
    )
    # The decisions after the first 429 say that the learned limit shaped them.
    assert any("under the learned rate limit" in reason for reason in _decision_reasons(sqlite_url, summary.run_id))


def test_with_parallel_chunks_the_endpoint_finishes_every_item(
    tmp_path: Path, sqlite_url: str, pipeline_name: str, endpoint: RateLimitedServer
) -> None:
    # The share of 429s needs some 70 calls after learning to mean anything at 5 %. Three calls
    # at once make a third as many calls per item, and a stage of at most 20 items is cut
    # into up to three calls: twice the items of the test above make enough calls.
    summary, flow_run_id = _run_labelling(
        tmp_path, sqlite_url, pipeline_name, 960, initial_batch_size=20, execution=ExecutionOptions(parallelism=3)
    )
    assert (summary.done, summary.failed, summary.pending) == (960, 0, 0)
    statuses = endpoint.log.statuses()
    assert 429 in statuses
    # AIMD settles over a few rounds: it halves the chunks on a 429 and adds them back one at a
    # time, and each step back up probes the limit again. The last three quarters of the calls
    # are after that.
    later = statuses[len(statuses) // 4 :]
    assert len(later) >= 70, statuses
    assert _share_surely_over(later.count(429), len(later)) is False, statuses
    # The chunks a stage is cut into halved on the 429s (AIMD) and grew back once calls came back clean.
    limits = [run.parameters.get("concurrency") for run in child_flow_runs(flow_run_id)]
    assert limits[0] == 3 and min(limits) < 3, limits
