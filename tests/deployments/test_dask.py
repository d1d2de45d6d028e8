"""Scale-out within a stage: the chunks of each batch run on the processes of a Dask cluster."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from flows.models import ExecutionOptions, PipelineSummary
from scaling_core import ItemSource, ScalingConfig
from scaling_core import store
from tests.deployments.support import write_items_csv
from tests.prefect_leaks import tolerating_prefect_socket_leak

pytestmark = pytest.mark.server

ITEMS = 200
ON_DASK_WORKER = "tests.deployments.processors:on_dask_worker"
# Two stages of 100 items, each cut into two chunks of 50 for the two workers.
SCALING = ScalingConfig(initial_batch_size=100, min_batch_size=10, max_batch_size=200)


def _run_pipeline(
    api_url: str, tmp_path: Path, execution: ExecutionOptions
) -> tuple[PipelineSummary, list[dict[str, Any]]]:
    """Run the pipeline in this process (its Prefect client points at the test server)."""
    from flows.pipeline import batch_pipeline

    write_items_csv(tmp_path / "items.csv", ITEMS, "D")
    database_url = f"sqlite:///{tmp_path / 'store.db'}"
    with tolerating_prefect_socket_leak(api_url):
        summary = asyncio.run(
            batch_pipeline(
                source=ItemSource(path=tmp_path / "items.csv"),
                processor=ON_DASK_WORKER,
                pipeline=f"dask-{tmp_path.name}",
                scaling=SCALING,
                execution=execution,
                database=database_url,
                warm_start=False,
            )
        )
    engine = store.make_engine(database_url)
    try:
        with store.open_session(engine) as session:
            ledger = session.exec(select(store.LedgerItem).where(store.LedgerItem.run_id == summary.run_id)).all()
    finally:
        engine.dispose()
    assert len(ledger) == ITEMS
    assert {item.status for item in ledger} == {store.ItemStatus.DONE}
    return summary, [item.output for item in ledger]


def test_stage_chunks_run_on_a_local_two_worker_cluster(prefect_api: str, tmp_path: Path) -> None:
    summary, outputs = _run_pipeline(prefect_api, tmp_path, ExecutionOptions(dask_workers=2, parallelism=2))
    pids = Counter(output["pid"] for output in outputs)
    print(
        f"\n{summary.done} of {summary.items} done in {summary.stages} stages; items per process "
        f"{dict(pids)} (this test's process: {os.getpid()})"
    )
    assert summary.done == ITEMS and summary.pending == 0
    # Without Dask the chunks run on threads of the flow's process, which is this one.
    assert os.getpid() not in pids
    assert len(pids) == 2


def test_stage_chunks_run_on_an_existing_cluster_that_outlives_the_run(prefect_api: str, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            worker_pids = client.run(os.getpid)
        summary, outputs = _run_pipeline(
            prefect_api, tmp_path, ExecutionOptions(dask_address=cluster.scheduler_address, parallelism=2)
        )
        pids = Counter(output["pid"] for output in outputs)
        print(
            f"\n{summary.done} of {summary.items} done on {cluster.scheduler_address}; items per process "
            f"{dict(pids)}; the cluster's workers: {worker_pids}"
        )
        assert summary.done == ITEMS
        assert set(pids) == set(worker_pids.values())
        # The run used the cluster and left it running for its owner.
        with Client(cluster) as client:
            assert client.run(os.getpid) == worker_pids
