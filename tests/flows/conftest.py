"""Fixtures of the flow tests: one real Prefect test server per session, real stores.

Prefect reads `PREFECT_HOME` when it is imported, so a temporary home is set here, before
anything below imports prefect.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="batchpilot-test-prefect-home-"))
if "prefect" not in sys.modules:
    # Once imported, prefect keeps the home it found; a package collected earlier that
    # imports prefect must set its own temporary home.
    os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest  # noqa: E402

from tests.flows import processors  # noqa: E402
from tests.flows.support import postgres_store  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def prefect_api_url() -> Iterator[str]:
    """A temporary Prefect server and database for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    try:
        # A generous start-up time: a shared machine under load starts the server slowly.
        with prefect_test_harness(server_startup_timeout=120):
            url = PREFECT_API_URL.value()
            assert url, "the test harness set no API URL"
            yield url
    finally:
        shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file store that does not exist yet."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL: a new SQLite file, then the session's PostgreSQL database.

    Tests share the PostgreSQL database and keep apart by unique pipeline names.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    url = postgres_store(request)
    yield url


@pytest.fixture
def pipeline_name(request: pytest.FixtureRequest) -> str:
    """A pipeline name no other test uses: learned sizes and artifact keys stay apart."""
    stem = request.node.originalname.removeprefix("test_").replace("_", "-")[:40]
    return f"{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fresh_processors() -> Iterator[None]:
    """Clear what the test processors remember between calls."""
    processors.reset()
    yield
    processors.reset()
