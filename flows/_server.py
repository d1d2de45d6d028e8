"""Prefect's temporary API server, owned by the command that runs a job.

In ephemeral mode Prefect starts its API server as a child in the caller's process group, so
a Ctrl-C or a SIGTERM to the group (a terminal, `timeout`, systemd, docker) kills the server
first, and the run then spends minutes retrying a server that is gone. The command starts
the same server (the uvicorn app of Prefect's ephemeral mode) in a session of its own:
signals reach only the command, which stops the run in order and then the server. On
Linux the server is also told to die with its parent (`PR_SET_PDEATHSIG`), so a command
killed outright (SIGKILL, a crash) leaves no server behind.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx

STARTUP_TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
"""Prefect's own setting for how long its temporary server may take to start."""
STOP_GRACE_SECONDS = 5.0
"""How long the server gets to finish its requests after SIGTERM before it is killed."""
DRAIN_SECONDS = 5.0
"""How long the logs and events still queued get to reach the server before it stops."""
_PORT_TAKEN = 3
"""uvicorn's exit code when its port was taken between the choice and the bind."""
_PR_SET_PDEATHSIG = 1


class TemporaryServer:
    """One Prefect API server process on 127.0.0.1, started by `start` and stopped by `stop`."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @classmethod
    def start(cls, timeout: float) -> TemporaryServer:
        """Start a server and wait until it answers its health check (RuntimeError after `timeout` s)."""
        deadline = time.monotonic() + timeout
        server = cls(*_launch())
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                if server.process.poll() == _PORT_TAKEN:
                    server = cls(*_launch())
                    continue
                if server.process.poll() is not None:
                    raise RuntimeError(f"Prefect's temporary server exited with code {server.process.returncode}")
                try:
                    if client.get(f"{server.api_url}/health", timeout=2.0).status_code == 200:
                        return server
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        server.stop()
        raise RuntimeError(
            f"Prefect's temporary server did not start within {timeout:g} s "
            f"(raise {STARTUP_TIMEOUT_SETTING}, or point PREFECT_API_URL at a running server)"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `STOP_GRACE_SECONDS`; the process is reaped either way."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Stop the server at once (the command is exiting without waiting)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextmanager
def temporary_server() -> Iterator[TemporaryServer | None]:
    """A server of this process's own for the block, unless `PREFECT_API_URL` names one.

    Prefect reads its settings when it is imported, so the address is handed over with
    `temporary_settings`, which works whether prefect was imported already or not.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    server = TemporaryServer.start(float(os.environ.get(STARTUP_TIMEOUT_SETTING, "90")))
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield server
            finally:
                _drain_to(server)
    finally:
        server.stop()


def _drain_to(server: TemporaryServer) -> None:
    """Send the logs and events still queued in this process while their server is up.

    Prefect sends them at the process's exit otherwise, to a server that is gone by then,
    and keeps retrying (a minute and more) before it prints "Error logging to API".
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    if server.process.poll() is None:
        APILogWorker.drain_all(timeout=DRAIN_SECONDS)
        EventsWorker.drain_all(timeout=DRAIN_SECONDS)


def _launch() -> tuple[subprocess.Popen[bytes], int]:
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None, "prefect is a dependency"
    port = _free_port()
    # The same app and environment as Prefect's ephemeral server (prefect.server.api.server).
    environment = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    command = [
        sys.executable, "-m", "uvicorn",
        "--app-dir", str(Path(spec.origin).parent.parent),
        "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env=environment,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # out of reach of the signals sent to the command's group
        preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None,  # noqa: PLW1509
    )
    return process, port


def _die_with_parent(parent: int):  # type: ignore[no-untyped-def]
    """A `preexec_fn` that makes the child receive SIGKILL when its parent dies."""

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # its parent is gone: nothing to finish in order
        if os.getppid() != parent:  # the parent died before the request was in place
            os._exit(1)

    return arm


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
