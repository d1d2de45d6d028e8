"""Helpers of the flow tests: sources on disk, pipeline runs, and reads of the store and server."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from sqlalchemy import Engine, func, inspect
from sqlmodel import col, select

from flows.models import PipelineSummary
from flows.pipeline import batch_pipeline
from flows.report import stage_rows
from scaling_core import ItemSource, make_engine
from scaling_core import store
from tests.prefect_leaks import tolerating_prefect_socket_leak

REPOSITORY = Path(__file__).resolve().parents[2]
FAST_PROCESSOR = "scaling_core.samples.simulated_llm:simulated_llm_fast"


def write_csv(path: Path, count: int, *, start: int = 0) -> ItemSource:
    """A CSV source of `count` items with ids `i<start>`, `i<start + 1>`, ..."""
    lines = ["id,name"] + [f"i{n},item {n}" for n in range(start, start + count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ItemSource(path=path)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> ItemSource:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return ItemSource(path=path)


def call_pipeline(**parameters: Any) -> Any:
    """Call `batch_pipeline` as a caller would; its exceptions propagate."""
    with tolerating_prefect_socket_leak():
        return asyncio.run(batch_pipeline(**parameters))


def run_pipeline(**parameters: Any) -> tuple[PipelineSummary, UUID]:
    """Run `batch_pipeline` to the end; returns its summary and the id of its flow run."""
    with tolerating_prefect_socket_leak():
        state = asyncio.run(batch_pipeline(**parameters, return_state=True))
    summary = state.result()
    assert isinstance(summary, PipelineSummary), summary
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return summary, flow_run_id


def postgres_store(request: pytest.FixtureRequest) -> str:
    """The session's PostgreSQL database with the store's tables (skips without PostgreSQL)."""
    url: str = request.getfixturevalue("postgres_url")
    # Another test package may have dropped the tables of the shared database.
    engine = make_engine(url)
    store.create_schema(engine)
    engine.dispose()
    return url


def child_flow_runs(parent_id: UUID) -> list[FlowRun]:
    """The subflow runs of a flow run, oldest first."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        )


def stages(url: str, run_id: str) -> list[dict[str, Any]]:
    engine = make_engine(url)
    try:
        return stage_rows(engine, run_id)
    finally:
        engine.dispose()


def ledger(url: str, run_id: str) -> list[store.LedgerItem]:
    engine = make_engine(url)
    try:
        with store.open_session(engine) as session:
            return list(
                session.exec(
                    select(store.LedgerItem)
                    .where(store.LedgerItem.run_id == run_id)
                    .order_by(col(store.LedgerItem.seq))
                ).all()
            )
    finally:
        engine.dispose()


def batches(url: str, run_id: str) -> list[store.BatchRecord]:
    engine = make_engine(url)
    try:
        with store.open_session(engine) as session:
            return store.run_batches(session, run_id)
    finally:
        engine.dispose()


def runs(url: str, pipeline: str | None = None) -> list[store.PipelineRun]:
    engine = make_engine(url)
    try:
        with store.open_session(engine) as session:
            query = select(store.PipelineRun)
            if pipeline is not None:
                query = query.where(store.PipelineRun.pipeline == pipeline)
            return list(session.exec(query).all())
    finally:
        engine.dispose()


def stored_rows(sqlite_file: Path) -> dict[str, int]:
    """Rows per table of a SQLite store; {} when the file or its tables do not exist."""
    if not sqlite_file.exists():
        return {}
    engine = make_engine(f"sqlite:///{sqlite_file}")
    try:
        tables = set(inspect(engine).get_table_names())
        counts = {}
        with store.open_session(engine) as session:
            for table in (store.PipelineRun, store.LedgerItem, store.BatchRecord, store.DecisionRecord):
                name = table.__tablename__
                if name in tables:
                    counts[str(name)] = session.exec(select(func.count()).select_from(table)).one()
        return counts
    finally:
        engine.dispose()


def cli_environment(api_url: str, prefect_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a `python -m flows` process: its own Prefect home, this session's server."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BATCHPILOT_TEST_")}
    prefect_home.mkdir(parents=True, exist_ok=True)
    env["PREFECT_HOME"] = str(prefect_home)
    env["PREFECT_API_URL"] = api_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def claimed_later_stage(engine: Engine, pipeline: str) -> store.BatchRecord | None:
    """The batch of a later stage that is processing with its items claimed, if any."""
    with store.open_session(engine) as session:
        record = session.exec(
            select(store.BatchRecord).where(
                store.BatchRecord.pipeline == pipeline,
                store.BatchRecord.status == store.BatchStatus.PROCESSING,
                store.BatchRecord.stage >= 2,
            )
        ).first()
        if record is None:
            return None
        claimed = session.exec(
            select(func.count()).select_from(store.LedgerItem).where(
                store.LedgerItem.batch_id == record.id, store.LedgerItem.status == store.ItemStatus.PROCESSING
            )
        ).one()
        return record if claimed else None
