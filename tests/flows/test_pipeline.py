"""An end-to-end run of `batch_pipeline` on a real Prefect server, on SQLite and PostgreSQL.

One run per store backs every test here: its stage subflows, its store, its artifacts and
the report of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from flows.models import PipelineSummary, artifact_key
from scaling_core import ScalingConfig
from scaling_core import store
from tests.flows.support import (
    FAST_PROCESSOR,
    REPOSITORY,
    child_flow_runs,
    ledger,
    postgres_store,
    run_pipeline,
    runs,
    stages,
    write_jsonl,
)

ITEMS = 120
SCALING = ScalingConfig(initial_batch_size=10, min_batch_size=5, max_batch_size=60)


@dataclass(frozen=True)
class FinishedRun:
    url: str
    pipeline: str
    summary: PipelineSummary
    flow_run_id: UUID


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def finished_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedRun]:
    folder = tmp_path_factory.mktemp("pipeline")
    url = f"sqlite:///{folder / 'store.db'}" if request.param == "sqlite" else postgres_store(request)
    source = write_jsonl(folder / "items.jsonl", ({"id": f"i{n}", "text": f"item {n}"} for n in range(ITEMS)))
    pipeline = f"Stages {request.param} {uuid.uuid4().hex[:8]}"
    summary, flow_run_id = run_pipeline(
        source=source, processor=FAST_PROCESSOR, pipeline=pipeline, scaling=SCALING, database=url
    )
    yield FinishedRun(url=url, pipeline=pipeline, summary=summary, flow_run_id=flow_run_id)


def test_every_item_is_done_once_and_the_run_completes(finished_run: FinishedRun) -> None:
    summary = finished_run.summary
    items = ledger(finished_run.url, summary.run_id)
    assert len(items) == ITEMS
    assert sorted(item.item_id for item in items) == sorted(f"i{n}" for n in range(ITEMS))
    assert {item.status for item in items} == {store.ItemStatus.DONE}
    assert (summary.items, summary.done, summary.failed, summary.pending) == (ITEMS, ITEMS, 0, 0)
    [run] = runs(finished_run.url, finished_run.pipeline)
    assert run.status == store.RunStatus.COMPLETED
    assert run.item_count == ITEMS


def test_stage_subflows_carry_the_decided_batch_size(finished_run: FinishedRun) -> None:
    rows = stages(finished_run.url, finished_run.summary.run_id)
    children = child_flow_runs(finished_run.flow_run_id)

    assert len(children) == len(rows) == finished_run.summary.stages
    assert all(child.state is not None and child.state.is_completed() for child in children)
    asked = [child.parameters["batch_size"] for child in children]
    assert asked == [row["batch_size"] for row in rows]
    # The first stage runs at the initial size, every later one at the size decided after the
    # stage before it.
    assert asked == [SCALING.initial_batch_size] + [row["next_batch_size"] for row in rows[:-1]]
    assert all(row["next_batch_size"] is not None and row["reason"] for row in rows)
    assert len(set(asked)) > 1, f"the sizes never changed: {asked}"
    assert [child.name for child in children] == [f"{finished_run.pipeline}-size-{size}" for size in asked]


def test_artifacts_show_progress_stages_and_summary(finished_run: FinishedRun) -> None:
    key = artifact_key(finished_run.pipeline)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"{key}-progress", f"{key}-stages", f"{key}-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[finished_run.flow_run_id]),
            )
        )
    by_key = {artifact.key: artifact for artifact in artifacts}
    assert set(by_key) == {f"{key}-progress", f"{key}-stages", f"{key}-summary"}

    progress = by_key[f"{key}-progress"]
    assert progress.type == "progress"
    assert float(progress.data) == pytest.approx(100.0)

    table = by_key[f"{key}-stages"]
    assert table.type == "table"
    rows = json.loads(table.data)
    assert len(rows) == finished_run.summary.stages
    assert [row["batch_size"] for row in rows] == finished_run.summary.sizes_used
    assert all(row["reason"] for row in rows)

    summary = by_key[f"{key}-summary"]
    assert summary.type == "markdown"
    assert f"# Run `{finished_run.summary.run_id}`" in summary.data
    assert f"| {ITEMS} | {ITEMS} | 0 | 0 |" in summary.data


def test_report_cli_prints_the_run_as_json(finished_run: FinishedRun) -> None:
    completed = subprocess.run(
        [
            sys.executable, "-m", "flows", "report", "--json",
            "--database-url", finished_run.url, "--run-id", finished_run.summary.run_id,
        ],
        capture_output=True, text=True, cwd=REPOSITORY, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)  # one JSON object, nothing else
    assert set(report) == {"run", "stages"}
    run = report["run"]
    assert {key: run[key] for key in ("run_id", "items", "done", "failed", "pending")} == {
        "run_id": finished_run.summary.run_id, "items": ITEMS, "done": ITEMS, "failed": 0, "pending": 0,
    }
    assert len(report["stages"]) == finished_run.summary.stages
    for number, row in enumerate(report["stages"], start=1):
        assert {
            "stage", "batch_size", "items", "high_confidence_rate", "seconds", "action", "next_batch_size", "reason",
        } <= set(row)
        assert row["stage"] == number
        assert row["action"] in {"increase", "decrease", "maintain"}
        assert 0.0 <= row["high_confidence_rate"] <= 1.0
    assert sum(row["items"] for row in report["stages"]) >= ITEMS
    assert [row["batch_size"] for row in report["stages"]] == finished_run.summary.sizes_used
