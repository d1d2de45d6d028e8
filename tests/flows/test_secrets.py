"""A database password given in the store URL stays out of Prefect and out of every output.

The run happens four times on PostgreSQL, with `PASSWORD` in its URL (trust authentication
ignores it): called in this process with the URL as a `SecretStr`, called in this process with
a `StoreDatabase` block made from the URL, and twice as `python -m flows run --database-url ...`,
the password once in the URL's user part and once as a `?password=` option.
A saved block chosen by name on a Prefect server is tested in tests/deployments/test_served.py.
Everything the Prefect server keeps of either run is read back through the Prefect client:
logs of the run and its stages, artifacts, stored flow run parameters. How processors are
named (`module:function`, parsed and never evaluated) is tested in
tests/scaling_core/test_processing.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
from pydantic import SecretStr
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.database import StoreDatabase
from scaling_core import ScalingConfig
from tests.flows.fault_support import PASSWORD, flow_run_logs, pipeline_flow_runs, free_port, messages, with_password
from tests.flows.support import (
    REPOSITORY,
    call_pipeline,
    child_flow_runs,
    cli_environment,
    postgres_store,
    run_pipeline,
    runs,
    write_csv,
)

pytestmark = pytest.mark.postgres

ECHO = "tests.flows.fault_processors:echo"
ITEMS = 30
SIZE_10 = ScalingConfig(initial_batch_size=10, min_batch_size=10, max_batch_size=10)


@dataclass(frozen=True)
class SecretRun:
    how: str
    url: str
    """The store URL the run was given, with the password."""
    run_id: str
    flow_run_id: UUID
    output: str
    """What the command printed (empty for the run in this process)."""


def _run_in_process(request: pytest.FixtureRequest, folder: Path, how: str) -> SecretRun:
    url = with_password(postgres_store(request))
    pipeline = f"secrets-{how}-{uuid.uuid4().hex[:8]}"
    # As documented: a URL with a password is passed as a SecretStr or a block (Prefect
    # stores a flow run's parameters as they are passed, before they are validated).
    database = SecretStr(url) if how == "secret-url" else StoreDatabase.from_url(url)
    summary, flow_run_id = run_pipeline(
        source=write_csv(folder / "items.csv", ITEMS), processor=ECHO, pipeline=pipeline, scaling=SIZE_10,
        database=database,
    )
    assert summary.done == ITEMS
    return SecretRun(how=how, url=url, run_id=summary.run_id, flow_run_id=flow_run_id, output="")


def _run_command(request: pytest.FixtureRequest, folder: Path, how: str) -> SecretRun:
    direct = postgres_store(request)
    # The password in the URL's user part, or as an option of the query string.
    url = with_password(direct) if how == "cli" else f"{direct}{'&' if '?' in direct else '?'}password={PASSWORD}"
    pipeline = f"secrets-{how}-{uuid.uuid4().hex[:8]}"
    source = write_csv(folder / "items.csv", ITEMS).path
    completed = subprocess.run(
        [
            sys.executable, "-m", "flows", "run", "--source", str(source), "--processor", ECHO,
            "--pipeline", pipeline, "--database-url", url, "--verbose",
            "--initial-batch-size", "10", "--min-batch-size", "10", "--max-batch-size", "10",
        ],
        cwd=REPOSITORY, env=cli_environment(request.getfixturevalue("prefect_api_url"), folder / "prefect-home"),
        capture_output=True, text=True, timeout=180,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    [run] = runs(direct, pipeline)
    [flow_run] = pipeline_flow_runs(pipeline)
    return SecretRun(how=how, url=url, run_id=run.run_id, flow_run_id=flow_run.id, output=output)


@pytest.fixture(scope="module", params=["secret-url", "block", "cli", "cli-query-password"])
def secret_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SecretRun:
    folder = tmp_path_factory.mktemp(f"secrets-{request.param}")
    if request.param.startswith("cli"):
        return _run_command(request, folder, request.param)
    return _run_in_process(request, folder, request.param)


def _stage_ids(run: SecretRun) -> list[UUID]:
    stages = [child.id for child in child_flow_runs(run.flow_run_id)]
    assert len(stages) == ITEMS // 10
    return stages


def test_no_log_of_the_run_or_its_stages_holds_the_password(secret_run: SecretRun) -> None:
    logs = flow_run_logs([secret_run.flow_run_id, *_stage_ids(secret_run)])
    leaked = [log.message for log in logs if PASSWORD in log.message]
    assert not leaked, leaked
    # The logs were read, and the one that names the store shows it masked.
    assert [log for log in logs if "postgres:***@127.0.0.1" in log.message], [log.message for log in logs]


def test_no_artifact_of_the_run_holds_the_password(secret_run: SecretRun) -> None:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[secret_run.flow_run_id, *_stage_ids(secret_run)])
            )
        )
    assert {artifact.type for artifact in artifacts} == {"progress", "table", "markdown", "image"}
    leaked = [artifact.key for artifact in artifacts if PASSWORD in artifact.model_dump_json()]
    assert not leaked, leaked


def test_no_stored_flow_run_parameter_holds_the_password(secret_run: SecretRun) -> None:
    with get_client(sync_client=True) as client:
        flow_runs = [client.read_flow_run(secret_run.flow_run_id), *child_flow_runs(secret_run.flow_run_id)]
    assert all("database" in flow_run.parameters for flow_run in flow_runs)
    # The stages' parameters hold the store's block: its host is there, its password is not.
    assert all("127.0.0.1" in json.dumps(flow_run.parameters["database"]) for flow_run in flow_runs[1:])
    leaked = {
        flow_run.name: flow_run.parameters["database"]
        for flow_run in flow_runs
        if PASSWORD in json.dumps(flow_run.parameters)
    }
    assert not leaked, f"stored parameters with the password ({secret_run.how}): {leaked}"


def test_the_report_and_the_command_output_hold_no_password(secret_run: SecretRun, tmp_path: Path, prefect_api_url: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "flows", "report", "--json", "--database-url", secret_run.url, "--run-id", secret_run.run_id],
        cwd=REPOSITORY, env=cli_environment(prefect_api_url, tmp_path / "prefect-home"),
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["run"]["run_id"] == secret_run.run_id
    assert PASSWORD not in completed.stdout + completed.stderr
    assert PASSWORD not in secret_run.output


def test_an_unreachable_database_gives_errors_and_logs_without_the_password(
    tmp_path: Path, request: pytest.FixtureRequest, pipeline_name: str
) -> None:
    url = with_password(postgres_store(request), port=free_port())
    with pytest.raises(Exception) as caught:  # noqa: PT011 - only its messages matter here
        call_pipeline(source=write_csv(tmp_path / "items.csv", 10), processor=ECHO, pipeline=pipeline_name, database=url)
    seen = messages(caught.value)
    assert not [message for message in seen if PASSWORD in message], seen
    assert any("127.0.0.1" in message for message in seen), seen  # the error is about the store

    [flow_run] = pipeline_flow_runs(pipeline_name)
    assert flow_run.state is not None and flow_run.state.is_failed()
    assert PASSWORD not in (flow_run.state.message or "")
    logs = flow_run_logs([flow_run.id])
    assert logs and not [log.message for log in logs if PASSWORD in log.message]
