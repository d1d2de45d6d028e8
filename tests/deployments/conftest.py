"""Fixtures of the deployment tests: a real Prefect server and the served deployments.

One server and one `python -m deployments.serve` process serve the whole package; both are
stopped by process id (SIGTERM) after its last test. Prefect reads `PREFECT_HOME` when it
is imported, so this test process gets a temporary home here, before prefect is imported.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="batchpilot-test-deployments-home-"))
if "prefect" not in sys.modules:
    os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import httpx  # noqa: E402
import pytest  # noqa: E402

from tests.deployments.processors import PROCESSED_LOG_ENV  # noqa: E402
from tests.deployments.support import (  # noqa: E402
    PrefectServer,
    Process,
    RetryUnavailable,
    Served,
    child_environment,
    wait_until,
    write_items_csv,
)

SERVE_START_SECONDS = 60.0
NIGHTLY_ITEMS = 30


@pytest.fixture(scope="package", autouse=True)
def _temporary_prefect_home() -> Iterator[None]:
    yield
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


@pytest.fixture(scope="package")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """`python -m prefect server start` with a temporary home, healthy, for the package's tests."""
    server = PrefectServer.start(tmp_path_factory.mktemp("prefect-server-home"))
    try:
        yield server
    finally:
        server.server.stop()


@pytest.fixture(scope="package")
def api(prefect_server: PrefectServer) -> Iterator[httpx.Client]:
    """An HTTP client of the server's REST API, as the UI uses it."""
    with httpx.Client(base_url=prefect_server.api_url, timeout=30.0, transport=RetryUnavailable()) as client:
        yield client


@pytest.fixture(scope="package")
def served(
    prefect_server: PrefectServer, api: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`python -m deployments.serve` in the background, its two deployments registered."""
    folder = tmp_path_factory.mktemp("served")
    nightly_source = folder / "nightly.csv"
    write_items_csv(nightly_source, NIGHTLY_ITEMS, "N")
    nightly_pipeline = f"nightly-{uuid.uuid4().hex[:8]}"
    processed_log = folder / "processed.log"
    environment = child_environment(
        folder / "prefect-home",
        PREFECT_API_URL=prefect_server.api_url,
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        BATCHPILOT_SCHEDULE_SOURCE=str(nightly_source),
        BATCHPILOT_SCHEDULE_PIPELINE=nightly_pipeline,
        # Runs without a database_url parameter must not write into the working directory.
        BATCHPILOT_DATABASE_URL=f"sqlite:///{folder / 'default-store.db'}",
        **{PROCESSED_LOG_ENV: str(processed_log)},
    )
    process = Process.start(["-m", "deployments.serve"], environment=environment, log=folder / "serve.log")
    try:

        def deployment_ids() -> tuple[str, str] | None:
            process.check_running()
            found = []
            for name in ("on-demand", "nightly"):
                response = api.get(f"/deployments/name/batch-pipeline/{name}")
                if response.status_code != 200:
                    return None
                found.append(response.json()["id"])
            return found[0], found[1]

        on_demand_id, scheduled_id = wait_until(
            deployment_ids, timeout=SERVE_START_SECONDS, what="the served deployments", interval=0.25
        )
        yield Served(process, on_demand_id, scheduled_id, nightly_source, nightly_pipeline, processed_log)
    finally:
        code = process.stop()
        print(f"\nserve process {process.pid} stopped with exit code {code}")


@pytest.fixture
def prefect_api(prefect_server: PrefectServer) -> Iterator[str]:
    """Point this process's Prefect client at the test server (os.environ is read only at import)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server.api_url
        # Send the logs and events this process queued while the server is still up.
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
