"""Two flow runs of the same dataset share one run on PostgreSQL: no item is processed twice
and none is lost."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import select

from scaling_core import store
from tests.deployments.processors import arrivals_path
from tests.deployments.support import PrefectServer, Served, final_flow_run, save_store_block, write_items_csv

pytestmark = [pytest.mark.server, pytest.mark.postgres]

ITEMS = 1000
RECORDING = "tests.deployments.processors:recording"
RUN_SECONDS = 90.0


@contextmanager
def _empty_database(url: str) -> Iterator[str]:
    admin = store.make_engine(url)
    name = f"batchpilot_shared_{uuid.uuid4().hex[:10]}"
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_two_flow_runs_share_one_run_without_processing_an_item_twice(
    served: Served, api: httpx.Client, postgres_url: str, tmp_path: Path, prefect_server: PrefectServer
) -> None:
    with ExitStack() as stack:
        _share_one_run(stack, served, api, postgres_url, tmp_path, prefect_server)


def _share_one_run(
    stack: ExitStack, served: Served, api: httpx.Client, postgres_url: str, tmp_path: Path, server: PrefectServer
) -> None:
    # A database of its own, empty: both runs create the schema and register the run at once.
    postgres_url = stack.enter_context(_empty_database(postgres_url))
    block_id = save_store_block(server.api_url, postgres_url, f"shared-{uuid.uuid4().hex[:8]}")
    engine = store.make_engine(postgres_url)
    ids = write_items_csv(tmp_path / "shared.csv", ITEMS, "C")
    Path(arrivals_path(served.processed_log)).unlink(missing_ok=True)
    tag = uuid.uuid4().hex[:8]
    run_id, pipeline = f"shared-{tag}", f"shared-{tag}"
    parameters = {
        "source": {"path": str(tmp_path / "shared.csv")},
        "processor": RECORDING,
        "pipeline": pipeline,
        "run_id": run_id,
        "database": {"$ref": {"block_document_id": block_id}},
        "scaling": {"initial_batch_size": 50, "min_batch_size": 10, "max_batch_size": 100},
    }

    def start() -> str:
        response = api.post(f"/deployments/{served.on_demand_id}/create_flow_run", json={"parameters": parameters})
        assert response.status_code == 201, response.text
        flow_run_id: str = response.json()["id"]
        return flow_run_id

    try:
        first = start()
        second = start()
        runs = [final_flow_run(api, flow_run_id, timeout=RUN_SECONDS) for flow_run_id in (first, second)]
        for run in runs:
            assert run["state_type"] == "COMPLETED", run["state"]["message"]

        with store.open_session(engine) as session:
            stored_run = store.get_run(session, run_id)
            ledger = session.exec(select(store.LedgerItem).where(store.LedgerItem.run_id == run_id)).all()
            batches = store.run_batches(session, run_id)
    finally:
        engine.dispose()

    processed = [
        line.split()
        for line in served.processed_log.read_text().splitlines()
        if line.split()[1].startswith("C")
    ]
    per_item = Counter(item_id for _, item_id in processed)
    per_process = Counter(pid for pid, _ in processed)
    completed = [batch for batch in batches if batch.status == store.BatchStatus.COMPLETED]
    in_completed_batches = sum(batch.total_items for batch in completed)
    print(
        f"\nsource rows {ITEMS}; ledger rows {len(ledger)}; done "
        f"{sum(item.status == store.ItemStatus.DONE for item in ledger)}; batches {len(batches)} "
        f"({len(completed)} completed) holding {in_completed_batches} items; processor calls saw "
        f"{len(processed)} items, {len(per_item)} distinct, most often one id: {max(per_item.values())} times; "
        f"items per flow-run process: {dict(per_process)}; run status {stored_run.status if stored_run else None}"
    )
    assert stored_run is not None and stored_run.status == store.RunStatus.COMPLETED
    assert sorted(item.item_id for item in ledger) == ids
    assert {item.status for item in ledger} == {store.ItemStatus.DONE}
    assert completed == batches
    assert in_completed_batches == ITEMS
    assert sorted(per_item) == ids
    assert set(per_item.values()) == {1}, [item for item, count in per_item.items() if count > 1]
    assert len(per_process) == 2, f"the two flow runs did not both process items: {per_process}"
