"""Restart safety: a pipeline process killed mid-stage is resumed by rerunning its command.

The pipeline runs in a real `python -m flows run` process, against this session's Prefect
server, and is killed with SIGKILL while its second stage holds claimed items.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from scaling_core import make_engine
from scaling_core import store
from tests.flows.processors import SLOW_SECONDS_ENV
from tests.flows.support import REPOSITORY, batches, claimed_later_stage, cli_environment, ledger, runs, write_csv

ITEMS = 60


def _command(source: Path, url: str, pipeline: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "flows", "run",
        "--source", str(source),
        "--processor", "tests.flows.processors:slow_after_first_stage",
        "--pipeline", pipeline,
        "--database-url", url,
        "--initial-batch-size", "10", "--min-batch-size", "5", "--max-batch-size", "60",
        *extra,
    ]


def _kill_during_second_stage(command: list[str], env: dict[str, str], url: str, pipeline: str, log: Path) -> int:
    """Start `command`, SIGKILL it once its second stage has claimed items; the claimed batch's id."""
    engine = make_engine(url)
    store.create_schema(engine)  # so that the store can be polled before the process gets to it
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while (record := claimed_later_stage(engine, pipeline)) is None:
            if process.poll() is not None:
                pytest.fail(f"the pipeline exited ({process.returncode}) before its second stage:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the second stage did not start within 90 s:\n{log.read_text()}")
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        assert record.id is not None
        return record.id
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        engine.dispose()


@pytest.mark.parametrize(
    ("backend", "resume"), [("sqlite", "by-pipeline"), ("sqlite", "by-run-id"), ("postgres", "by-pipeline")]
)
def test_a_killed_run_resumes_and_finishes_every_item_once(
    backend: str, resume: str, request: pytest.FixtureRequest, tmp_path: Path, prefect_api_url: str
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    pipeline = f"restart-{resume}-{uuid.uuid4().hex[:8]}"
    source = write_csv(tmp_path / "items.csv", ITEMS).path
    command = _command(source, url, pipeline)

    slow = cli_environment(prefect_api_url, tmp_path / "prefect-home-1", **{SLOW_SECONDS_ENV: "120"})
    killed_batch = _kill_during_second_stage(command, slow, url, pipeline, tmp_path / "killed.log")
    [run] = runs(url, pipeline)
    items = ledger(url, run.run_id)
    assert run.status == store.RunStatus.RUNNING
    in_flight = [item.item_id for item in items if item.status == store.ItemStatus.PROCESSING]
    assert in_flight and all(item.batch_id == killed_batch for item in items if item.item_id in in_flight)
    assert sum(item.status == store.ItemStatus.DONE for item in items) == 10

    rerun = command + (["--run-id", run.run_id] if resume == "by-run-id" else [])
    completed = subprocess.run(
        rerun, cwd=REPOSITORY, env=cli_environment(prefect_api_url, tmp_path / "prefect-home-2"),
        capture_output=True, text=True, timeout=180,
    )
    output = completed.stdout + completed.stderr

    assert [resumed.run_id for resumed in runs(url, pipeline)] == [run.run_id], "the rerun started a new run"
    items = ledger(url, run.run_id)
    assert len(items) == ITEMS
    assert sorted(item.item_id for item in items) == sorted(f"i{n}" for n in range(ITEMS))
    left = {item.item_id: item.status.value for item in items if item.status != store.ItemStatus.DONE}
    assert not left, f"items not done after the rerun: {left}\n{output}"
    assert completed.returncode == 0, output
    assert f"{ITEMS} of {ITEMS} items done" in completed.stdout
    assert all(item.output == {"echo": item.item_id} for item in items)
    # The killed stage counts one attempt against each item it held (its process died), none against the others.
    assert {item.item_id: item.attempts for item in items if item.attempts} == dict.fromkeys(in_flight, 1)

    records = batches(url, run.run_id)
    statuses = {record.id: record.status for record in records}
    assert statuses[killed_batch] == store.BatchStatus.ABANDONED
    assert [status for status in statuses.values() if status != store.BatchStatus.COMPLETED] == [
        store.BatchStatus.ABANDONED
    ]
    # Every item's result was written by exactly one completed batch.
    assert sum(record.total_items for record in records if record.status == store.BatchStatus.COMPLETED) == ITEMS
    [finished] = runs(url, pipeline)
    assert finished.status == store.RunStatus.COMPLETED


def test_a_second_process_on_a_run_of_a_sqlite_store_is_refused_while_the_first_lives(
    tmp_path: Path, prefect_api_url: str
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    pipeline = f"one-writer-{uuid.uuid4().hex[:8]}"
    command = _command(write_csv(tmp_path / "items.csv", ITEMS).path, url, pipeline)
    engine = make_engine(url)
    store.create_schema(engine)
    # The first process holds its second stage's items for minutes.
    slow = cli_environment(prefect_api_url, tmp_path / "prefect-home-1", **{SLOW_SECONDS_ENV: "120"})
    with (tmp_path / "first.log").open("wb") as output:
        first = subprocess.Popen(command, cwd=REPOSITORY, env=slow, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while claimed_later_stage(engine, pipeline) is None:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the first process never reached its second stage"
            time.sleep(0.1)
        second = subprocess.run(
            command, cwd=REPOSITORY, env=cli_environment(prefect_api_url, tmp_path / "prefect-home-2"),
            capture_output=True, text=True, timeout=180,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        [run] = runs(url, pipeline)
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: run {run.run_id} is being processed by another live process on this SQLite store "
            f"(it holds {tmp_path / 'store.db'}.run-{run.run_id}.lock); wait for it to finish, "
            "or use PostgreSQL to run several workers"
        )
        # The refused process took back none of the first one's claims.
        assert [item.status for item in ledger(url, run.run_id)].count(store.ItemStatus.PROCESSING) > 0
    finally:
        first.kill()  # as a crash: the operating system drops its lock
        first.wait(timeout=30)
        engine.dispose()

    rerun = subprocess.run(
        command, cwd=REPOSITORY, env=cli_environment(prefect_api_url, tmp_path / "prefect-home-3"),
        capture_output=True, text=True, timeout=180,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert [resumed.run_id for resumed in runs(url, pipeline)] == [run.run_id]
    items = ledger(url, run.run_id)
    assert sorted(item.item_id for item in items) == sorted(f"i{n}" for n in range(ITEMS))
    assert {item.status for item in items} == {store.ItemStatus.DONE}
    records = batches(url, run.run_id)
    # Nothing was processed twice: every item's result came from one completed batch.
    assert sum(record.total_items for record in records if record.status == store.BatchStatus.COMPLETED) == ITEMS
