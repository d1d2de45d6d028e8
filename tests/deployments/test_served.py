"""The served deployments on a real Prefect server: the UI's form and Run button, the
trigger helper, the schedule, and the refusal of bad parameters."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import select

from flows.models import ExecutionOptions
from flows.report import format_stage_table, stage_rows
from scaling_core import ScalingConfig
from scaling_core import store
from tests.deployments.support import (
    PrefectServer,
    Served,
    child_environment,
    final_flow_run,
    save_store_block,
    wait_until,
    write_items_csv,
)

pytestmark = pytest.mark.server

FAST = "scaling_core.samples.simulated_llm:simulated_llm_fast"
ITEMS = 200
RUN_SECONDS = 60.0
SCHEDULER_SECONDS = 30.0


def _create_flow_run(api: httpx.Client, deployment_id: str, parameters: dict[str, Any]) -> httpx.Response:
    """What the UI's Run button sends."""
    return api.post(f"/deployments/{deployment_id}/create_flow_run", json={"parameters": parameters})


def _flow_runs_of(api: httpx.Client, deployment_id: str, state_type: str | None = None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"deployments": {"id": {"any_": [deployment_id]}}}
    if state_type is not None:
        body["flow_runs"] = {"state": {"type": {"any_": [state_type]}}}
    response = api.post("/flow_runs/filter", json=body)
    response.raise_for_status()
    runs: list[dict[str, Any]] = response.json()
    return runs


def _stage_sizes_of_children(flow_run_id: str) -> list[int]:
    """The `batch_size` parameter of each stage subflow of the run, in the order they ran."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
    assert all(child.state is not None and child.state.is_completed() for child in children)
    return [int(child.parameters["batch_size"]) for child in sorted(children, key=lambda child: child.created)]


def _check_store(engine: Engine, pipeline: str, ids: list[str], flow_run_id: str) -> list[dict[str, Any]]:
    """Every item of the source done, each succeeded once; stages sized as the scaling task said."""
    with store.open_session(engine) as session:
        run = store.latest_run(session, pipeline)
        assert run is not None, f"no run of {pipeline!r} in the store"
        ledger = session.exec(select(store.LedgerItem).where(store.LedgerItem.run_id == run.run_id)).all()
        batches = store.run_batches(session, run.run_id)
    assert run.status == store.RunStatus.COMPLETED
    assert sorted(item.item_id for item in ledger) == ids
    assert {item.status for item in ledger} == {store.ItemStatus.DONE}
    completed = [batch for batch in batches if batch.status == store.BatchStatus.COMPLETED]
    assert completed == batches
    # A failed item goes back to pending and is counted again in a later batch; a success is final.
    assert sum(batch.successful_items for batch in completed) == len(ids)
    rows = stage_rows(engine, run.run_id)
    sizes = [row["batch_size"] for row in rows]
    assert _stage_sizes_of_children(flow_run_id) == sizes
    assert sizes[1:] == [row["next_batch_size"] for row in rows[:-1]]
    assert len(set(sizes)) > 1, f"the scaling task never changed the size: {sizes}"
    return rows


def test_on_demand_deployment_renders_a_form_with_defaults_and_descriptions(
    served: Served, api: httpx.Client
) -> None:
    deployment = api.get(f"/deployments/{served.on_demand_id}").json()
    assert deployment["enforce_parameter_schema"] is True
    assert deployment["schedules"] == []
    schema = deployment["parameter_openapi_schema"]
    assert schema["required"] == ["source"]
    definitions = schema["definitions"]
    assert {"ItemSource", "ScalingConfig", "ExecutionOptions", "CostBudget"} <= set(definitions)
    for name in ("ItemSource", "ScalingConfig", "ExecutionOptions", "CostBudget"):
        fields = definitions[name]["properties"]
        assert all(field.get("description") for field in fields.values()), name
    properties = schema["properties"]
    assert properties["source"]["$ref"] == "#/definitions/ItemSource"
    assert definitions["ItemSource"]["required"] == ["path"]
    assert definitions["ScalingConfig"]["properties"]["initial_batch_size"]["default"] == 50
    assert definitions["ScalingConfig"]["properties"]["min_batch_size"]["exclusiveMinimum"] == 0
    assert properties["scaling"]["default"] == ScalingConfig().model_dump(mode="json")
    assert properties["execution"]["default"] == ExecutionOptions().model_dump(mode="json")
    assert properties["processor"]["pattern"].startswith("^[A-Za-z_]")
    # The store is chosen as a block by name: the form offers the saved blocks of its type.
    assert properties["database"]["anyOf"] == [{"$ref": "#/definitions/StoreDatabase"}, {"type": "null"}]
    store_block = definitions["StoreDatabase"]
    assert store_block["block_type_slug"] == "batchpilot-store"
    assert store_block["properties"]["password"]["anyOf"][0]["format"] == "password"
    assert all(properties[name]["description"] for name in properties)
    # Every label of the form in Title Case; the format a list of its choices.
    assert [properties[name]["title"] for name in properties] == [
        "Source", "Processor", "Pipeline", "Scaling Limits", "Execution", "Cost Budget", "Database", "Limit",
        "Run ID", "Warm Start", "New Run",
    ]
    assert definitions["ItemSource"]["properties"]["format"]["enum"] == ["csv", "jsonl"]
    assert properties["limit"]["anyOf"][0]["exclusiveMinimum"] == 0


def test_schedule_produces_scheduled_runs_of_the_configured_source(served: Served, api: httpx.Client) -> None:
    deployment = api.get(f"/deployments/{served.scheduled_id}").json()
    [schedule] = deployment["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == "UTC"
    assert deployment["parameters"]["source"] == {"path": str(served.nightly_source)}
    assert deployment["parameters"]["pipeline"] == served.nightly_pipeline
    # The server's scheduler service creates the runs of a new schedule within seconds.
    scheduled = wait_until(
        lambda: _flow_runs_of(api, served.scheduled_id, "SCHEDULED"),
        timeout=SCHEDULER_SECONDS,
        what="scheduled runs of the nightly deployment",
        interval=0.5,
    )
    print(f"\n{len(scheduled)} scheduled runs: " + ", ".join(sorted(r["expected_start_time"] for r in scheduled)))
    for run in scheduled:
        assert run["expected_start_time"].split("T")[1].startswith("02:00:00")
        assert run["parameters"]["source"] == {"path": str(served.nightly_source)}


@pytest.mark.usefixtures("prefect_api")
def test_a_ui_run_and_a_helper_run_process_every_item_once(
    served: Served, api: httpx.Client, tmp_path: Path, prefect_server: PrefectServer
) -> None:
    from flows import trigger
    from flows.database import block_reference

    database_url = f"sqlite:///{tmp_path / 'store.db'}"
    block_name = f"store-{tmp_path.name}".lower().replace("_", "-")
    block_id = save_store_block(prefect_server.api_url, database_url, block_name)
    ui_ids = write_items_csv(tmp_path / "ui.csv", ITEMS, "U")
    helper_ids = write_items_csv(tmp_path / "helper.csv", ITEMS, "H")
    ui_pipeline, helper_pipeline = f"ui-{tmp_path.name}", f"helper-{tmp_path.name}"
    started = time.perf_counter()

    response = _create_flow_run(
        api,
        served.on_demand_id,
        {
            "source": {"path": str(tmp_path / "ui.csv")},
            "processor": FAST,
            "pipeline": ui_pipeline,
            # What the form sends for a block chosen from its list.
            "database": {"$ref": {"block_document_id": block_id}},
        },
    )
    assert response.status_code == 201, response.text
    ui_run_id = response.json()["id"]
    # The helper waits for its run while the UI's run goes on in the serving process too.
    helper_run = trigger(
        parameters={
            "source": {"path": str(tmp_path / "helper.csv")},
            "processor": FAST,
            "pipeline": helper_pipeline,
            "scaling": ScalingConfig(initial_batch_size=20, min_batch_size=10, max_batch_size=80),
            # The same block by name, as in prefect.yaml.
            "database": block_reference(block_name),
        },
        wait=True,
        timeout=RUN_SECONDS,
        poll_interval=0.25,
    )
    ui_run = final_flow_run(api, ui_run_id, timeout=RUN_SECONDS)
    print(f"\nboth runs ended after {time.perf_counter() - started:.1f} s")
    print(f"UI run {ui_run_id} ({ui_run['name']}): {ui_run['state_name']}")
    print(f"helper run: {helper_run!r}")

    assert ui_run["state_type"] == "COMPLETED", ui_run["state"]["message"]
    assert helper_run.completed and helper_run.is_final, helper_run.message
    engine = store.make_engine(database_url)
    try:
        for pipeline, ids, flow_run_id in (
            (ui_pipeline, ui_ids, ui_run_id),
            (helper_pipeline, helper_ids, str(helper_run.flow_run_id)),
        ):
            rows = _check_store(engine, pipeline, ids, flow_run_id)
            print(f"\n{pipeline}: stage subflows' batch_size = {[row['batch_size'] for row in rows]}")
            print(format_stage_table(rows))
    finally:
        engine.dispose()


@pytest.mark.usefixtures("prefect_api")
def test_server_refuses_parameters_that_break_the_schema(served: Served, api: httpx.Client, tmp_path: Path) -> None:
    from flows import trigger
    from flows.triggering import ParametersRefused

    write_items_csv(tmp_path / "items.csv", 10, "R")
    source = {"path": str(tmp_path / "items.csv")}
    before = len(_flow_runs_of(api, served.on_demand_id))
    refusals = {
        "scaling.initial_batch_size": {"source": source, "scaling": {"initial_batch_size": -5}},
        "processor": {"source": source, "processor": "not an import path"},
        "'source' is a required property": {"pipeline": "no-source"},
        "execution.parallelism": {"source": source, "execution": {"parallelism": 0}},
    }
    for named, parameters in refusals.items():
        response = _create_flow_run(api, served.on_demand_id, parameters)
        print(f"\n{response.status_code} {response.json()['detail']}")
        assert response.status_code == 409
        assert named in response.json()["detail"]
    refusal = r"scaling\.max_batch_size'\. Failure reason: -1 is less than or equal to the minimum of 0"
    with pytest.raises(ParametersRefused, match=refusal):
        trigger(parameters={"source": source, "scaling": {"max_batch_size": -1}}, timeout=5)
    assert len(_flow_runs_of(api, served.on_demand_id)) == before


def test_flow_refuses_bad_input_before_any_item_is_processed(
    served: Served, api: httpx.Client, tmp_path: Path, prefect_server: PrefectServer
) -> None:
    database_url = f"sqlite:///{tmp_path / 'store.db'}"
    block_id = save_store_block(prefect_server.api_url, database_url, f"bad-input-{uuid.uuid4().hex[:8]}")
    write_items_csv(tmp_path / "items.csv", 10, "B")
    missing = tmp_path / "missing.csv"
    common = {"processor": FAST, "database": {"$ref": {"block_document_id": block_id}}}
    cases = {
        f"SourceError: {missing}: file not found": {
            **common, "source": {"path": str(missing)}, "pipeline": "bad-missing-source",
        },
        "min_batch_size (300) must not exceed max_batch_size (200)": {
            **common, "source": {"path": str(tmp_path / "items.csv")}, "pipeline": "bad-min-above-max",
            "scaling": {"min_batch_size": 300},
        },
        "ProcessorError: processor 'no_such_package.module:process': module 'no_such_package.module' not found": {
            **common, "source": {"path": str(tmp_path / "items.csv")}, "pipeline": "bad-processor",
            "processor": "no_such_package.module:process",
        },
    }
    created = {}
    for message, parameters in cases.items():
        response = _create_flow_run(api, served.on_demand_id, parameters)
        assert response.status_code == 201, response.text
        created[message] = response.json()["id"]
    for message, flow_run_id in created.items():
        run = final_flow_run(api, flow_run_id, timeout=RUN_SECONDS)
        print(f"\n{run['state_name']}: {run['state']['message']}")
        assert run["state_type"] == "FAILED"
        assert message in run["state"]["message"]
    engine = store.make_engine(database_url)
    try:
        store.create_schema(engine)
        with store.open_session(engine) as session:
            assert session.exec(select(store.PipelineRun)).all() == []
            assert session.exec(select(store.LedgerItem)).all() == []
            assert session.exec(select(store.BatchRecord)).all() == []
    finally:
        engine.dispose()


def test_the_trigger_command_starts_a_run_and_reports_how_it_ended(
    served: Served, prefect_server: PrefectServer, tmp_path: Path
) -> None:
    ids = write_items_csv(tmp_path / "items.csv", 60, "T")
    database_url = f"sqlite:///{tmp_path / 'store.db'}"
    block_name = f"trigger-{uuid.uuid4().hex[:8]}"
    save_store_block(prefect_server.api_url, database_url, block_name)
    environment = child_environment(tmp_path / "cli-home", PREFECT_API_URL=prefect_server.api_url)

    def command(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deployments.trigger", *arguments],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
        )

    completed = command(
        "--source", "items.csv", "--processor", FAST, "--pipeline", f"cli-{tmp_path.name}",
        "--database", block_name, "--parameters", '{"scaling": {"initial_batch_size": 30}}',
        "--timeout", str(RUN_SECONDS),
    )
    print(f"\n{completed.stdout.strip()}")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.startswith("flow run ") and completed.stdout.rstrip().endswith(
        "of batch-pipeline/on-demand: Completed"
    )
    engine = store.make_engine(database_url)
    try:
        with store.open_session(engine) as session:
            [run] = session.exec(select(store.PipelineRun)).all()
            batches = store.run_batches(session, run.run_id)
    finally:
        engine.dispose()
    assert run.item_count == len(ids) and run.status == store.RunStatus.COMPLETED
    assert run.source == str(tmp_path / "items.csv")
    assert batches[0].batch_size == 30

    failed = command("--source", "missing.csv", "--processor", FAST, "--database", block_name)
    print(failed.stdout.strip())
    assert failed.returncode == 1
    assert failed.stdout.rstrip().endswith(
        f"Failed: Flow run encountered an exception: SourceError: {tmp_path / 'missing.csv'}: file not found"
    )

    refused = command("--source", "items.csv", "--parameters", '{"execution": {"max_attempts": 0}}')
    print(refused.stderr.strip())
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: deployment 'batch-pipeline/on-demand' refused the parameters: ")
    assert "execution.max_attempts" in refused.stderr


def test_a_cancellation_from_the_ui_gives_the_stage_back_and_a_rerun_finishes(
    served: Served, api: httpx.Client, tmp_path: Path, prefect_server: PrefectServer
) -> None:
    database_url = f"sqlite:///{tmp_path / 'store.db'}"
    block_id = save_store_block(prefect_server.api_url, database_url, f"cancel-{tmp_path.name}".lower().replace("_", "-"))
    ids = write_items_csv(tmp_path / "items.csv", 150, "C")
    parameters = {
        "source": {"path": str(tmp_path / "items.csv")},
        "processor": "tests.deployments.processors:slow",
        "pipeline": f"cancelled-{tmp_path.name}",
        "scaling": {"initial_batch_size": 20, "max_batch_size": 50},
        "database": {"$ref": {"block_document_id": block_id}},
    }
    engine = store.make_engine(database_url)
    try:
        response = _create_flow_run(api, served.on_demand_id, parameters)
        assert response.status_code == 201, response.text
        flow_run_id = response.json()["id"]

        def stage_in_flight() -> bool | None:
            if not (tmp_path / "store.db").exists():
                return None
            try:
                with store.open_session(engine) as session:
                    counts = store.count_items(session, _only_run(engine).run_id)
            except (LookupError, SQLAlchemyError):  # not registered or loaded yet
                return None
            return (counts.done > 0 and counts.processing > 0) or None

        wait_until(stage_in_flight, timeout=RUN_SECONDS, what="a stage in flight", interval=0.05)
        # What the UI's Cancel button and `prefect flow-run cancel` send.
        cancelled = api.post(
            f"/flow_runs/{flow_run_id}/set_state", json={"state": {"type": "CANCELLING"}, "force": True}
        )
        assert cancelled.status_code in (200, 201), cancelled.text
        ended = final_flow_run(api, flow_run_id, timeout=RUN_SECONDS)
        assert ended["state_type"] == "CANCELLED", ended["state"]
        run = _only_run(engine)
        with store.open_session(engine) as session:
            counts = store.count_items(session, run.run_id)
        assert (run.status, counts.processing) == (store.RunStatus.INTERRUPTED, 0), counts
        assert 0 < counts.done < len(ids)

        rerun = _create_flow_run(api, served.on_demand_id, parameters)
        assert rerun.status_code == 201, rerun.text
        assert final_flow_run(api, rerun.json()["id"], timeout=RUN_SECONDS)["state_type"] == "COMPLETED"
        with store.open_session(engine) as session:
            counts = store.count_items(session, run.run_id)
        assert (_only_run(engine).status, counts.done) == (store.RunStatus.COMPLETED, len(ids))
    finally:
        engine.dispose()


def _only_run(engine: Engine) -> store.PipelineRun:
    with store.open_session(engine) as session:
        runs = session.exec(select(store.PipelineRun)).all()
    if len(runs) != 1:
        raise LookupError(f"{len(runs)} runs in the store")
    return runs[0]
