"""Ctrl-C and SIGTERM, sent as a terminal, `timeout`, systemd or docker send them: to the
command's whole process group, while a stage is in flight.

The command runs on Prefect's temporary server (no `PREFECT_API_URL`), as a user runs it,
so the test also sees that the server goes away with the command.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.support import REPOSITORY, cli_environment, write_csv

ITEMS = 150
EXIT_WITHIN_SECONDS = 15.0
"""What a user waits at most between the signal and the prompt."""


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (the temporary server among them)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _statuses(database: Path, table: str) -> dict[str, int]:
    with sqlite3.connect(database) as connection:
        return dict(connection.execute(f"SELECT status, count(*) FROM {table} GROUP BY status").fetchall())


def _wait_for_a_stage_in_flight(database: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if database.exists():
            try:
                counts = _statuses(database, "ledger_item")
            except sqlite3.OperationalError:  # the schema is being created
                counts = {}
            if counts.get("DONE", 0) and counts.get("PROCESSING", 0):
                return
        time.sleep(0.05)
    raise AssertionError(f"no stage was in flight within 120 s (exit status {process.poll()})")


def _command(tmp_path: Path) -> list[str]:
    write_csv(tmp_path / "items.csv", ITEMS)
    return [
        sys.executable, "-m", "flows", "run", "--source", str(tmp_path / "items.csv"),
        "--processor", "tests.flows.processors:slow_calls", "--database-url", f"sqlite:///{tmp_path / 'store.db'}",
        "--initial-batch-size", "20", "--max-batch-size", "50",
    ]  # fmt: skip


def _start_on_its_own_server(command: list[str], tmp_path: Path, prefect_api_url: str) -> subprocess.Popen[str]:
    """The command as a user runs it: no `PREFECT_API_URL`, so on a temporary server of its own."""
    environment = cli_environment(prefect_api_url, tmp_path / "prefect-home")
    del environment["PREFECT_API_URL"]
    return subprocess.Popen(
        command, cwd=REPOSITORY, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def test_a_command_killed_outright_leaves_no_server_behind(tmp_path: Path, prefect_api_url: str) -> None:
    process = _start_on_its_own_server(_command(tmp_path), tmp_path, prefect_api_url)
    try:
        _wait_for_a_stage_in_flight(tmp_path / "store.db", process)
        children = _children(process.pid)
        process.kill()  # SIGKILL to the command alone: no handler of its own runs
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert children, "the command started no temporary server"
    deadline = time.monotonic() + 30
    while [pid for pid in children if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)], f"left running: {children}"


@pytest.mark.parametrize(
    "signals",
    [pytest.param([signal.SIGINT], id="ctrl-c"), pytest.param([signal.SIGTERM, signal.SIGTERM], id="sigterm-twice")],
)
def test_a_signal_to_the_group_stops_the_run_cleanly_and_the_rerun_resumes_it(
    tmp_path: Path, prefect_api_url: str, signals: list[signal.Signals]
) -> None:
    command = _command(tmp_path)
    database = tmp_path / "store.db"
    process = _start_on_its_own_server(command, tmp_path, prefect_api_url)
    try:
        _wait_for_a_stage_in_flight(database, process)
        children = _children(process.pid)
        sent = time.monotonic()
        for number in signals:
            os.killpg(process.pid, number)
            time.sleep(0.2)
        _, stderr = process.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)

    # 130 after Ctrl-C, 143 after SIGTERM. A second signal that lands while the interpreter is
    # already exiting (it puts the default handlers back) ends the process by that signal, which
    # shells and service managers report as the same status.
    assert process.returncode in (128 + signals[0], -signals[-1]), stderr
    assert waited < EXIT_WITHIN_SECONDS, f"exit {waited:.1f} s after the signal"
    assert "Traceback" not in stderr and "ConnectError" not in stderr, stderr
    assert children, "the command started no temporary server"
    time.sleep(1.0)  # a server told to die with its parent needs a moment
    assert not [pid for pid in children if _alive(pid)], f"left running: {children}"
    if len(signals) == 1:
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("interrupted after ") and "rerun the same command to resume" in last, stderr
        assert _statuses(database, "pipeline_run") == {"INTERRUPTED": 1}
        assert "PROCESSING" not in _statuses(database, "ledger_item")

    # The same command again, on the session's server: it resumes and finishes the run.
    rerun = subprocess.run(
        command, check=False, cwd=REPOSITORY, env=cli_environment(prefect_api_url, tmp_path / "prefect-home"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert _statuses(database, "pipeline_run") == {"COMPLETED": 1}
    assert _statuses(database, "ledger_item") == {"DONE": ITEMS}
    with sqlite3.connect(database) as connection:
        recorded = connection.execute("SELECT sum(total_items) FROM batch_record WHERE status = 'COMPLETED'").fetchone()[0]
    assert recorded == ITEMS
