"""deployments/prefect.yaml: the same deployments as `python -m deployments.serve`, and
`prefect deploy` + a `process` worker run them against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlmodel import select

from deployments.serve import FLOW_NAME, build_deployments
from deployments.settings import DeploymentSettings
from flows.database import block_reference
from scaling_core import store
from tests.deployments.support import (
    REPOSITORY,
    PrefectServer,
    RetryUnavailable,
    child_environment,
    final_flow_run,
    save_store_block,
    write_items_csv,
)

PREFECT_YAML = REPOSITORY / "deployments" / "prefect.yaml"
ON_DASK_WORKER = "tests.deployments.processors:on_dask_worker"
COMMAND_SECONDS = 120.0


def _declared() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    return {deployment["name"]: deployment for deployment in config["deployments"]}


def test_prefect_yaml_declares_the_deployments_that_serve_serves() -> None:
    declared = _declared()
    served = {deployment.name: deployment for deployment in build_deployments(DeploymentSettings())}
    assert set(declared) == set(served) == {"nightly", "on-demand"}
    for name, deployment in served.items():
        entry = declared[name]
        assert entry["work_pool"]["name"] == "process"
        assert entry["enforce_parameter_schema"] is deployment.enforce_parameter_schema is True
        assert entry["tags"] == deployment.tags
        assert entry["entrypoint"] == deployment.entrypoint == "flows.pipeline.batch_pipeline"
        schedules = [
            {"cron": schedule.schedule.cron, "timezone": schedule.schedule.timezone}
            for schedule in deployment.schedules or []
        ]
        assert entry.get("schedules", []) == schedules
        parameters = dict(entry["parameters"])
        if "source" in parameters:
            # A relative source path is read from the project folder, where workers run.
            parameters["source"] = {"path": str((REPOSITORY / parameters["source"]["path"]).resolve())}
        assert parameters == deployment.parameters


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """A server of its own: `prefect deploy` would take over the served deployments."""
    server = PrefectServer.start(tmp_path / "server-home")
    try:
        yield server
    finally:
        server.server.stop()


def _prefect(arguments: list[str], environment: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [sys.executable, "-m", "prefect", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
    )
    assert completed.returncode == 0, f"prefect {' '.join(arguments)}:\n{completed.stdout}\n{completed.stderr}"
    return completed


@pytest.mark.server
def test_prefect_deploy_and_a_process_worker_run_the_on_demand_deployment_on_dask(
    own_server: PrefectServer, tmp_path: Path
) -> None:
    from distributed import Client, LocalCluster

    environment = child_environment(
        tmp_path / "cli-home",
        PREFECT_API_URL=own_server.api_url,
        PREFECT_WORKER_QUERY_SECONDS="1",
        BATCHPILOT_DATABASE_URL=f"sqlite:///{tmp_path / 'default-store.db'}",
    )
    _prefect(["work-pool", "create", "process", "--type", "process"], environment, REPOSITORY)
    deployed = _prefect(
        ["--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML.relative_to(REPOSITORY))],
        environment,
        REPOSITORY,
    )

    ids = write_items_csv(tmp_path / "items.csv", 50, "W")
    database_url = f"sqlite:///{tmp_path / 'store.db'}"
    # The store chosen by name, as a prefect.yaml parameter would name it.
    _prefect(["block", "register", "-m", "flows.database"], environment, REPOSITORY)
    save_store_block(own_server.api_url, database_url, "worker-store")
    with httpx.Client(base_url=own_server.api_url, timeout=30.0, transport=RetryUnavailable()) as api:
        deployments = {
            name: api.get(f"/deployments/name/{FLOW_NAME}/{name}").json() for name in ("nightly", "on-demand")
        }
        names = ", ".join(f"{FLOW_NAME}/{name} ({deployment['id']})" for name, deployment in deployments.items())
        print(f"\ndeployed {names}")
        assert "successfully created" in deployed.stdout
        assert {d["work_pool_name"] for d in deployments.values()} == {"process"}
        assert deployments["nightly"]["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        assert deployments["on-demand"]["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPOSITORY)}}
        ]
        # The stage chunks go to a Dask cluster: its scheduler and workers import the stage
        # task by its module name, so this run fails if the flow was loaded as a file.
        with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster:
            with Client(cluster) as client:
                worker_pids = set(client.run(os.getpid).values())
            response = api.post(
                f"/deployments/{deployments['on-demand']['id']}/create_flow_run",
                json={
                    "parameters": {
                        "source": {"path": str(tmp_path / "items.csv")},
                        "processor": ON_DASK_WORKER,
                        "pipeline": "worker",
                        "database": block_reference("worker-store"),
                        "execution": {"dask_address": cluster.scheduler_address, "parallelism": 2},
                    }
                },
            )
            assert response.status_code == 201, response.text
            # From another folder: the deployment's pull step takes the run to the project.
            _prefect(["worker", "start", "--pool", "process", "--run-once"], environment, tmp_path)
            run = final_flow_run(api, response.json()["id"], timeout=COMMAND_SECONDS)
    print(f"worker ran flow run {run['id']} ({run['name']}): {run['state_name']}")
    assert run["state_type"] == "COMPLETED", run["state"]["message"]
    engine = store.make_engine(database_url)
    try:
        with store.open_session(engine) as session:
            ledger = session.exec(select(store.LedgerItem)).all()
    finally:
        engine.dispose()
    assert sorted(item.item_id for item in ledger) == ids
    assert {item.status for item in ledger} == {store.ItemStatus.DONE}
    assert {item.output["pid"] for item in ledger} <= worker_pids
