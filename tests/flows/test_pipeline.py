"""An end-to-end run of `batch_pipeline` on a real Prefect server, on SQLite and PostgreSQL.

One run per store backs every test here: its stage subflows, its store, its artifacts and
the report of it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from flows.models import PipelineSummary, artifact_key
from flows.pipeline import pipeline_run_name
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
    assert [child.name for child in children] == [
        f"{finished_run.pipeline}-stage-{number}-size-{size}" for number, size in enumerate(asked, start=1)
    ]
    assert all({"batchpilot", f"pipeline:{finished_run.pipeline}"} <= set(child.tags) for child in children)


def test_two_runs_of_a_pipeline_have_names_of_their_own(finished_run: FinishedRun, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "again.jsonl", ({"id": f"a{n}"} for n in range(5)))
    _, again = run_pipeline(
        source=source, processor=FAST_PROCESSOR, pipeline=finished_run.pipeline, scaling=SCALING,
        database=finished_run.url, new_run=True,
    )
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(flow_run_id) for flow_run_id in (finished_run.flow_run_id, again)]
    names = [run.name for run in runs]
    assert len(set(names)) == 2, names
    for run in runs:
        assert re.fullmatch(rf"{re.escape(finished_run.pipeline)}-\d{{8}}-\d{{6}}-[0-9a-f]{{4}}", run.name), run.name
        assert {"batchpilot", f"pipeline:{finished_run.pipeline}"} <= set(run.tags)


def test_artifacts_show_progress_stages_and_summary(finished_run: FinishedRun) -> None:
    key = artifact_key(finished_run.pipeline)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"{key}-{kind}" for kind in ("progress", "stages", "summary", "chart")]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[finished_run.flow_run_id]),
            )
        )
    by_key = {artifact.key: artifact for artifact in artifacts}
    assert set(by_key) == {f"{key}-progress", f"{key}-stages", f"{key}-summary", f"{key}-chart"}
    assert by_key[f"{key}-chart"].type == "image"

    progress = by_key[f"{key}-progress"]
    assert progress.type == "progress"
    assert float(progress.data) == pytest.approx(100.0)

    table = by_key[f"{key}-stages"]
    assert table.type == "table"
    rows = json.loads(table.data)
    assert len(rows) == finished_run.summary.stages
    assert [row["size"] for row in rows] == finished_run.summary.sizes_used
    assert all(set(row) == {"stage", "size", "items", "High share", "seconds", "action"} for row in rows)

    summary = by_key[f"{key}-summary"]
    assert summary.type == "markdown"
    assert summary.data.startswith(f"# Pipeline `{finished_run.pipeline}`\n\nRun `{finished_run.summary.run_id}`")
    assert f"| {ITEMS} | {ITEMS} | 0 | 0 |" in summary.data
    why = summary.data.split("## Why the size changed\n\n", 1)[1].splitlines()
    stored = stages(finished_run.url, finished_run.summary.run_id)
    assert why == [
        f"- Stage {row['stage']}: {'grew' if row['next_batch_size'] > row['batch_size'] else 'shrank'} from "
        f"{row['batch_size']} to {row['next_batch_size']}. {row['reason'][:1].upper()}{row['reason'][1:]}."
        for row in stored
        if row["next_batch_size"] != row["batch_size"]
    ]
    [chart] = re.findall(r"!\[Batch size, High share and items per second per stage\]\(([^)]+)\)", summary.data)
    assert chart == by_key[f"{key}-chart"].data
    svg = base64.b64decode(chart.removeprefix("data:image/svg+xml;base64,")).decode()
    assert svg.startswith("<svg") and svg.count("<polyline") == 3


def test_report_cli_prints_the_run_as_json_and_plots_it(finished_run: FinishedRun, tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable, "-m", "flows", "report", "--json", "--plot", str(tmp_path / "stages.svg"),
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
    svg = (tmp_path / "stages.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 3
    assert f"{finished_run.summary.run_id}" in svg and svg.count("<circle") == 3 * finished_run.summary.stages


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "nightly-20261202-055930-3fa1"),
        ("eggplant-wolf", "nightly-20261202-055930-3fa1"),  # made up by the server
        ("Intelligent-Boxsky", "nightly-20261202-055930-3fa1"),  # filled in by the UI's Run form
        ("Generic-Vicuña", "nightly-20261202-055930-3fa1"),  # its words are not all ASCII
        ("Nightly-Rerun2", "Nightly-Rerun2"),
        ("catalogue rerun after the fix", "catalogue rerun after the fix"),
        ("nightly-2", "nightly-2"),
    ],
)
def test_a_pipeline_run_keeps_a_name_a_user_chose(given: str | None, expected: str) -> None:
    now = datetime(2026, 12, 2, 6, 59, 30, tzinfo=timezone(timedelta(hours=1)))
    assert pipeline_run_name("nightly", given, flow_run_id="3fa1c0de-0000", now=now) == expected
