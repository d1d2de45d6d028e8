"""Helpers of the deployment tests: real processes (a Prefect server, a serving process, a
worker), started with their own environment and stopped by process id."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPOSITORY = Path(__file__).resolve().parents[2]
SERVER_START_SECONDS = 120.0
"""A fresh server answers its health check in ~10 s on this machine; allow for a slow one."""
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_environment(home: Path, **settings: str) -> dict[str, str]:
    """The test's environment without its Prefect settings, plus a home and `settings`."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    environment.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
    )
    environment.update(settings)
    return environment


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} was not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Process:
    """A background process whose output goes to `log`."""

    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, arguments: Sequence[str], *, environment: Mapping[str, str], log: Path) -> Process:
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, *arguments],
                cwd=REPOSITORY,
                env=dict(environment),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        return cls(process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_running(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise AssertionError(f"process {self.pid} exited with {code}:\n{tail(self.log)}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it is still running after `timeout` seconds; its exit code."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
        return self.process.wait()


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Call `check` until it returns something true (a non-empty list, a dict, True), and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass
class PrefectServer:
    """`python -m prefect server start` on a free loopback port with its own home."""

    server: Process
    url: str

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @classmethod
    def start(cls, home: Path) -> PrefectServer:
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server = Process.start(
            ["-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            # The UI in a browser asks this URL for the API (by default port 4200).
            environment=child_environment(home, PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api"),
            log=home / "server.log",
        )
        started = cls(server, f"http://127.0.0.1:{port}")
        try:
            wait_until(started._healthy, timeout=SERVER_START_SECONDS, what="GET /api/health == 200", interval=0.25)
        except BaseException:
            server.stop()
            raise
        return started

    def _healthy(self) -> bool:
        self.server.check_running()
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False


class RetryUnavailable(httpx.HTTPTransport):
    """Repeat a request the server answered with 503.

    A SQLite-backed Prefect server answers 503 while its own background services hold the
    database lock; Prefect's client repeats such requests too.
    """

    ATTEMPTS = 10
    PAUSE_SECONDS = 0.5

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(self.ATTEMPTS - 1):
            response = super().handle_request(request)
            if response.status_code != 503:
                return response
            response.read()
            response.close()
            time.sleep(self.PAUSE_SECONDS)
        return super().handle_request(request)


@dataclass(frozen=True)
class Served:
    """The served deployments and what the serving process was started with."""

    process: Process
    on_demand_id: str
    scheduled_id: str
    nightly_source: Path
    nightly_pipeline: str
    processed_log: Path


def write_items_csv(path: Path, count: int, prefix: str) -> list[str]:
    """A CSV source of `count` items with ids `{prefix}00000`...; returns the ids."""
    ids = [f"{prefix}{index:05d}" for index in range(count)]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "name", "category"])
        for index, item_id in enumerate(ids):
            writer.writerow([item_id, f"Product {index}", ("Home", "Garden", "Kitchen")[index % 3]])
    return ids


def final_flow_run(api: httpx.Client, flow_run_id: str, *, timeout: float) -> dict[str, Any]:
    """Poll `GET /flow_runs/{id}` (as the UI does) until the run's state is final."""

    def read() -> dict[str, Any] | None:
        response = api.get(f"/flow_runs/{flow_run_id}")
        response.raise_for_status()
        run: dict[str, Any] = response.json()
        return run if run["state_type"] in FINAL_STATES else None

    return wait_until(read, timeout=timeout, what=f"flow run {flow_run_id} to end", interval=0.25)


def save_store_block(api_url: str, url: str, name: str) -> str:
    """Save a `StoreDatabase` block for `url` on the server at `api_url`; returns its document id.

    What a user does once per server (or with `prefect block create batchpilot-store` in the UI).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.database import StoreDatabase

    with temporary_settings({PREFECT_API_URL: api_url}):
        return str(StoreDatabase.from_url(url).save(name, overwrite=True))
