"""Faults injected into real runs: the flow process killed at chosen points, the database
taken away during a stage and during a scaling decision, a database unreachable from the start.

After each fault the run is finished by rerunning it, and its ledger is accounted for: every
item ends done once, with one result counted by one completed batch (`fault_support`).
A kill in the middle of a stage is in test_restart.py, a hung processor in test_failures.py.
"""

from __future__ import annotations

import logging

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from flows.database import StoreDatabase
from flows._runtime import STORE_RETRIES, STORE_RETRY_DELAY
from scaling_core import ScalingConfig, make_engine
from scaling_core import store
from tests.flows import fault_processors
from tests.flows.fault_support import (
    PASSWORD,
    TcpProxy,
    assert_every_item_finished_once,
    decision_write_waits,
    decisions_held_back,
    flow_run_logs,
    pipeline_flow_runs,
    free_port,
    messages,
    wait_until,
    with_password,
)
from tests.flows.support import (
    REPOSITORY,
    batches,
    call_pipeline,
    child_flow_runs,
    cli_environment,
    ledger,
    postgres_store,
    run_pipeline,
    runs,
    write_csv,
)

ECHO = "tests.flows.fault_processors:echo"
SIZE_10 = ScalingConfig(initial_batch_size=10, min_batch_size=10, max_batch_size=10)


@pytest.fixture
def fresh_fault_processors() -> Iterator[None]:
    fault_processors.reset()
    yield
    fault_processors.reset()


def _ids(count: int) -> list[str]:
    return [f"i{n}" for n in range(count)]


def _decisions(url: str, run_id: str) -> list[store.DecisionRecord]:
    engine = make_engine(url)
    try:
        with store.open_session(engine) as session:
            return store.run_decisions(session, run_id)
    finally:
        engine.dispose()


# -- kill -9 of `python -m flows run` ------------------------------------------------------------


def _command(source: Path, url: str, pipeline: str, size: int) -> list[str]:
    return [
        sys.executable, "-m", "flows", "run",
        "--source", str(source),
        "--processor", ECHO,
        "--pipeline", pipeline,
        "--database-url", url,
        "--initial-batch-size", str(size), "--min-batch-size", str(size), "--max-batch-size", str(size),
    ]


def _rerun(command: list[str], prefect_api_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPOSITORY, env=cli_environment(prefect_api_url, home),
        capture_output=True, text=True, timeout=180,
    )


def _kill(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


LOAD_ITEMS = 15_000
"""Three chunks of the ledger load (5,000 items per transaction)."""


def test_a_run_killed_while_loading_its_ledger_resumes_the_load(tmp_path: Path, prefect_api_url: str) -> None:
    database = tmp_path / "store.db"
    url = f"sqlite:///{database}"
    pipeline = f"killed-loading-{uuid.uuid4().hex[:8]}"
    source = write_csv(tmp_path / "items.csv", LOAD_ITEMS).path
    command = _command(source, url, pipeline, size=LOAD_ITEMS)
    engine = make_engine(url)
    store.create_schema(engine)  # so that the store can be polled before the process gets to it
    engine.dispose()
    log = tmp_path / "killed.log"

    def loading_state(watcher: sqlite3.Connection) -> tuple[bool, int] | None:
        row = watcher.execute("SELECT run_id, items_loaded FROM pipeline_run WHERE pipeline = ?", (pipeline,)).fetchone()
        if row is None:
            return None
        [count] = watcher.execute("SELECT count(*) FROM ledger_item WHERE run_id = ?", (row[0],)).fetchone()
        return bool(row[1]), int(count)

    with closing(sqlite3.connect(database, timeout=30, isolation_level=None)) as watcher:
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, cwd=REPOSITORY, env=cli_environment(prefect_api_url, tmp_path / "prefect-home-1"),
                stdout=output, stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 90
            while (state := loading_state(watcher)) is None or not (state[0] or state[1]):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the load did not start (exit status {process.returncode}):\n{log.read_text()}")
                time.sleep(0.002)
            # Take SQLite's write lock: the load's next chunk waits for it, so the kill below
            # lands inside the load, with part of the ledger written.
            watcher.execute("BEGIN IMMEDIATE")
            try:
                state = loading_state(watcher)
                _kill(process)
            finally:
                watcher.execute("ROLLBACK")
        finally:
            if process.poll() is None:
                _kill(process)
    assert state is not None
    loaded, count = state
    print(f"killed during the ledger load, {count} of {LOAD_ITEMS} items loaded")
    assert not loaded and 0 < count < LOAD_ITEMS, f"the kill missed the load: items_loaded={loaded}, {count} items"
    [run] = runs(url, pipeline)
    assert (run.status, run.items_loaded, len(ledger(url, run.run_id))) == (store.RunStatus.RUNNING, False, count)

    completed = _rerun(command, prefect_api_url, tmp_path / "prefect-home-2")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert f"{LOAD_ITEMS} of {LOAD_ITEMS} items done" in completed.stdout, output
    assert [resumed.run_id for resumed in runs(url, pipeline)] == [run.run_id], "the rerun started a new run"
    assert_every_item_finished_once(url, run.run_id, _ids(LOAD_ITEMS))


@pytest.mark.postgres
def test_a_run_killed_between_a_batch_result_and_its_scaling_decision_resumes(
    request: pytest.FixtureRequest, tmp_path: Path, prefect_api_url: str
) -> None:
    url = postgres_store(request)
    pipeline = f"killed-deciding-{uuid.uuid4().hex[:8]}"
    source = write_csv(tmp_path / "items.csv", 30).path
    command = _command(source, url, pipeline, size=10)
    log = tmp_path / "killed.log"

    # While the test holds the decisions table, the first decision waits after the first
    # batch's results are written: the kill lands exactly between the two.
    with decisions_held_back(url) as watcher:
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, cwd=REPOSITORY, env=cli_environment(prefect_api_url, tmp_path / "prefect-home-1"),
                stdout=output, stderr=subprocess.STDOUT,
            )
        try:
            wait_until(
                lambda: process.poll() is not None or decision_write_waits(watcher),
                timeout=90, interval=0.02, what="the first scaling decision",
            )
            assert process.poll() is None, f"the pipeline exited ({process.returncode}):\n{log.read_text()}"
            _kill(process)
        finally:
            if process.poll() is None:
                _kill(process)

    [run] = runs(url, pipeline)
    [first] = batches(url, run.run_id)
    assert (first.stage, first.status, first.total_items) == (1, store.BatchStatus.COMPLETED, 10)
    statuses = [item.status for item in ledger(url, run.run_id)]
    assert statuses == [store.ItemStatus.DONE] * 10 + [store.ItemStatus.PENDING] * 20
    assert _decisions(url, run.run_id) == []

    completed = _rerun(command, prefect_api_url, tmp_path / "prefect-home-2")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert [resumed.run_id for resumed in runs(url, pipeline)] == [run.run_id], "the rerun started a new run"
    records = assert_every_item_finished_once(url, run.run_id, _ids(30))
    assert [record.status for record in records] == [store.BatchStatus.COMPLETED] * 3
    # The killed batch keeps its results and never gets a decision; every later one gets one.
    decided = [decision.batch_id for decision in _decisions(url, run.run_id)]
    assert decided == [record.id for record in records[1:]]


# -- the database goes away (PostgreSQL behind a proxy) ---------------------------------------------

OUTAGE_SECONDS = 3.0
"""Shorter than the store's retry delay (5 s), so the retry finds the database back."""
OUTAGE_ITEMS = 40


@dataclass(frozen=True)
class ProxiedPostgres:
    proxy: TcpProxy
    url: str
    """Through the proxy, with a password: what the pipeline is given."""
    direct: str
    """The same database without the proxy: what the test reads the store through."""


@pytest.fixture
def proxied_postgres(request: pytest.FixtureRequest) -> Iterator[ProxiedPostgres]:
    """A proxy in front of the session's PostgreSQL database."""
    direct = postgres_store(request)
    parsed = make_url(direct)
    with TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:
        url = with_password(direct, port=proxy.port)
        yield ProxiedPostgres(proxy=proxy, url=url, direct=direct)
        if not proxy.listening:
            proxy.start()


def _database_named(url: str) -> str:
    parsed = make_url(url)
    return f"{parsed.username}:***@{parsed.host}:{parsed.port}/{parsed.database}"


@pytest.mark.postgres
def test_a_database_outage_during_a_stage_is_retried_and_every_item_is_done_once(
    tmp_path: Path, proxied_postgres: ProxiedPostgres, pipeline_name: str, fresh_fault_processors: None
) -> None:
    proxy, url, direct = proxied_postgres.proxy, proxied_postgres.url, proxied_postgres.direct

    def outage() -> None:
        proxy.stop()
        proxy.start_later(OUTAGE_SECONDS)

    workers_alive: list[int] = []

    def count_worker_locks() -> None:
        engine = make_engine(direct)
        try:
            with engine.connect() as connection:
                workers_alive.append(
                    connection.execute(
                        text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())"
                        )
                    ).scalar_one()
                )
        finally:
            engine.dispose()

    # The third stage's processor call takes the database away before its results are written;
    # the outage also ends the session that held the run's liveness lock.
    fault_processors.on_call(3, outage)
    fault_processors.on_call(5, count_worker_locks)  # the stage after the retried one
    summary, flow_run_id = run_pipeline(
        source=write_csv(tmp_path / "items.csv", OUTAGE_ITEMS),
        processor=ECHO,
        pipeline=pipeline_name,
        scaling=SIZE_10,
        database=url,
    )

    assert proxy.stops == 1 and proxy.listening
    assert (summary.done, summary.failed, summary.pending) == (OUTAGE_ITEMS, 0, 0)
    records = assert_every_item_finished_once(direct, summary.run_id, _ids(OUTAGE_ITEMS))
    # The stage of the outage could not write its results: it was given up and its items
    # were done again by a later stage of the same run.
    abandoned = [record.stage for record in records if record.status == store.BatchStatus.ABANDONED]
    assert abandoned == [3]
    assert [run.run_id for run in runs(direct, pipeline_name)] == [summary.run_id]
    stage_runs = child_flow_runs(flow_run_id)
    records = flow_run_logs([flow_run_id, *(child.id for child in stage_runs)])
    logs = [log.message for log in records]
    # The failed attempt was retried once, logged as one WARNING line that names the
    # database without its password, and no traceback.
    retried = [log for log in records if "could not use the store" in log.message]
    assert [log.level for log in retried] == [logging.WARNING], [log.message for log in retried]
    assert f"the store at postgresql+psycopg://{_database_named(url)} failed" in retried[0].message
    assert "retry 1 of 2" in retried[0].message and "\n" not in retried[0].message
    assert not [log for log in records if log.level >= logging.ERROR], [log.message for log in records]
    assert not [message for message in logs if PASSWORD in message]
    # The run took its liveness lock again after the outage: its claims were never up for grabs.
    assert [message for message in logs if "liveness lock; it was taken again" in message]
    assert workers_alive == [1]


def _held(url: str, run_id: str) -> frozenset[str]:
    """The items a run that lost its store still held: it could not give them back.

    The rerun cannot tell that process from one that died (neither left a word in the
    store), so it takes them back as a crash's: one attempt each.
    """
    held = frozenset(item.item_id for item in ledger(url, run_id) if item.status == store.ItemStatus.PROCESSING)
    assert held, "the run lost its store without holding a claim"
    return held


@pytest.mark.postgres
def test_a_database_that_stays_away_fails_the_run_naming_it_and_a_rerun_finishes(
    tmp_path: Path, proxied_postgres: ProxiedPostgres, pipeline_name: str, fresh_fault_processors: None
) -> None:
    proxy, url, direct = proxied_postgres.proxy, proxied_postgres.url, proxied_postgres.direct
    parameters = dict(
        source=write_csv(tmp_path / "items.csv", OUTAGE_ITEMS),
        processor=ECHO,
        pipeline=pipeline_name,
        scaling=SIZE_10,
        database=url,
    )
    fault_processors.on_call(3, proxy.stop)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the type is checked below
        call_pipeline(**parameters)

    assert isinstance(caught.value, store.StoreError), messages(caught.value)
    assert str(caught.value).startswith(f"the store at postgresql+psycopg://{_database_named(url)} failed: ")
    assert not [message for message in messages(caught.value) if PASSWORD in message]
    # The stage was tried three times; its retries found no database and called no processor.
    [failed_run] = pipeline_flow_runs(pipeline_name)
    stage_runs = child_flow_runs(failed_run.id)
    retried = [log for log in flow_run_logs([run.id for run in stage_runs]) if "could not use the store" in log.message]
    assert len(retried) == STORE_RETRIES
    assert fault_processors.calls() == 3
    [run] = runs(direct, pipeline_name)
    assert run.status == store.RunStatus.RUNNING
    held = _held(direct, run.run_id)

    proxy.start()
    summary, _ = run_pipeline(**parameters)
    assert summary.run_id == run.run_id
    assert_every_item_finished_once(direct, run.run_id, _ids(OUTAGE_ITEMS), held=held)


@pytest.mark.postgres
def test_a_database_outage_during_a_scaling_decision_fails_naming_the_database_and_a_rerun_finishes(
    tmp_path: Path,
    proxied_postgres: ProxiedPostgres,
    pipeline_name: str,
    fresh_fault_processors: None,
) -> None:
    proxy, url, direct = proxied_postgres.proxy, proxied_postgres.url, proxied_postgres.direct
    parameters = dict(
        source=write_csv(tmp_path / "items.csv", 30),
        processor=ECHO,
        pipeline=pipeline_name,
        scaling=SIZE_10,
        database=url,
    )
    problems: list[BaseException] = []

    with decisions_held_back(direct) as watcher:

        def take_the_database_away_during_the_decision() -> None:
            try:
                wait_until(lambda: decision_write_waits(watcher), timeout=60, interval=0.01, what="the decision")
            except BaseException as error:  # handed to the test below
                problems.append(error)
            finally:
                proxy.stop()

        helper = threading.Thread(target=take_the_database_away_during_the_decision, daemon=True)
        fault_processors.on_call(1, helper.start)
        try:
            with pytest.raises(Exception) as caught:  # noqa: PT011 - checked below
                call_pipeline(**parameters)
        finally:
            if helper.ident is not None:
                helper.join(timeout=70)
    assert not problems, problems
    [run] = runs(direct, pipeline_name)
    [first] = batches(direct, run.run_id)
    assert (first.status, first.total_items) == (store.BatchStatus.COMPLETED, 10)
    assert _decisions(direct, run.run_id) == []

    proxy.start()
    summary, _ = run_pipeline(**parameters)
    assert summary.run_id == run.run_id
    assert_every_item_finished_once(direct, run.run_id, _ids(30))

    # The run stopped on an error that names the database and hides its password, as a
    # stage's store errors do.
    assert not [message for message in messages(caught.value) if PASSWORD in message]
    assert isinstance(caught.value, store.StoreError), messages(caught.value)
    assert str(caught.value).startswith(f"the store at postgresql+psycopg://{_database_named(url)} failed: ")


@pytest.mark.postgres
def test_a_database_unreachable_from_the_start_fails_the_run_naming_it(
    tmp_path: Path, request: pytest.FixtureRequest, pipeline_name: str
) -> None:
    direct = postgres_store(request)
    url = with_password(direct, port=free_port())
    with pytest.raises(Exception) as caught:  # noqa: PT011 - checked below
        call_pipeline(
            source=write_csv(tmp_path / "items.csv", 10), processor=ECHO, pipeline=pipeline_name, database=url
        )
    assert not [message for message in messages(caught.value) if PASSWORD in message]
    assert isinstance(caught.value, store.StoreError), messages(caught.value)
    assert str(caught.value).startswith(f"the store at postgresql+psycopg://{_database_named(url)} failed: ")


@pytest.mark.postgres
def test_a_frozen_database_fails_the_run_within_its_bound_naming_it_and_a_rerun_finishes(
    tmp_path: Path, proxied_postgres: ProxiedPostgres, pipeline_name: str, fresh_fault_processors: None
) -> None:
    # The proxy stops forwarding without closing anything: connections stay open and no
    # answer ever comes, which no TCP timer notices. Each call gives up after its bound.
    proxy, url, direct = proxied_postgres.proxy, proxied_postgres.url, proxied_postgres.direct
    timeout = 2.0
    parameters = dict(
        source=write_csv(tmp_path / "items.csv", OUTAGE_ITEMS),
        processor=ECHO,
        pipeline=pipeline_name,
        scaling=SIZE_10,
        database=StoreDatabase.from_url(url, timeout_seconds=timeout),
    )
    fault_processors.on_call(3, proxy.freeze)
    started = time.monotonic()
    with pytest.raises(store.StoreError) as caught:
        call_pipeline(**parameters)
    elapsed = time.monotonic() - started

    assert str(caught.value).startswith(f"the store at postgresql+psycopg://{_database_named(url)} failed: ")
    assert "no answer within 2.5 s" in str(caught.value) or "timeout" in str(caught.value), str(caught.value)
    assert not [message for message in messages(caught.value) if PASSWORD in message]
    # The write that met the freeze, then each retry's connect: bounded, not a hang.
    bound = 1.25 * timeout + STORE_RETRIES * (STORE_RETRY_DELAY + 2 * timeout)
    print(f"\nfrozen store: the run failed after {elapsed:.1f} s (its calls' bound sums to {bound:.1f} s)")
    assert elapsed < bound + 30, elapsed
    assert fault_processors.calls() == 3

    # The network heals (its connections were reset): the rerun resumes and finishes.
    proxy.thaw()
    proxy.stop()
    proxy.start()
    [run] = runs(direct, pipeline_name)
    held = _held(direct, run.run_id)
    summary, _ = run_pipeline(**{**parameters, "database": url})
    assert summary.run_id == run.run_id
    assert_every_item_finished_once(direct, run.run_id, _ids(OUTAGE_ITEMS), held=held)
