"""Helpers of the fault-injection tests: a TCP proxy that can take a database away, a lock
that holds the next scaling decision back, and the accounting of a run's ledger.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentTaskRunId,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, Log
from prefect.client.schemas.sorting import FlowRunSort
from prefect.logging.handlers import APILogWorker
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from scaling_core import make_engine, store
from tests.flows.support import batches, ledger, runs

PASSWORD = "s3cret-pw"
"""A password put into database URLs; PostgreSQL's trust authentication ignores it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_password(url: str, *, port: int | None = None) -> str:
    """`url` with `PASSWORD` in it (and another port when given)."""
    parsed = make_url(url).set(password=PASSWORD)
    if port is not None:
        parsed = parsed.set(port=port)
    return parsed.render_as_string(hide_password=False)


def messages(error: BaseException) -> list[str]:
    """The message of `error` and of every exception it was raised from or during."""
    seen: list[str] = []
    pending: list[BaseException | None] = [error]
    visited: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in visited:
            continue
        visited.add(id(current))
        seen.append(f"{type(current).__name__}: {current}")
        pending.extend([current.__cause__, current.__context__])
    return seen


def pipeline_flow_runs(pipeline: str) -> list[FlowRun]:
    """The pipeline flow's runs of `pipeline` (by its tag; stage runs left out), oldest first."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[f"pipeline:{pipeline}"]),
                parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=True),
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        )


def flow_run_logs(flow_run_ids: list[UUID]) -> list[Log]:
    """Every log the Prefect server holds of these flow runs and of their tasks."""
    APILogWorker.drain_all(timeout=10)  # logs of this process still on their way to the server
    logs: list[Log] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)), limit=200, offset=len(logs)
        ):
            logs.extend(page)
    return logs


class TcpProxy:
    """Forwards connections from 127.0.0.1:`port` to `target`; a test stops and restarts it.

    `stop()` closes the listening socket and every open connection, as a database host
    that goes away does: clients see their connections drop and new ones refused. `start()`
    listens on the same port again. `freeze()` stops forwarding without closing anything, as
    a frozen network path or server does: connections stay open and nothing comes back.
    Threads and sockets are all closed by `close()`.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.stops = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._timers: list[threading.Timer] = []
        self._frozen = threading.Event()
        self._closing = threading.Event()

    def freeze(self) -> None:
        """Stop forwarding in both directions; connections stay open (`thaw()` resumes)."""
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        with self._lock:
            if self._listener is not None:
                listener.close()
                raise RuntimeError("the proxy is already listening")
            self._listener = listener
        self._spawn(self._accept, listener)

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections = list(self._open)
            self._open.clear()
            self.stops += 1
        if listener is not None:
            _close(listener)
        for connection in connections:
            _close(connection)

    def start_later(self, seconds: float) -> None:
        timer = threading.Timer(seconds, self.start)
        timer.daemon = True
        with self._lock:
            self._timers.append(timer)
        timer.start()

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            timers = list(self._timers)
        for timer in timers:
            timer.cancel()
            if timer.is_alive():
                timer.join(timeout=10)
        self.stop()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)

    @property
    def listening(self) -> bool:
        with self._lock:
            return self._listener is not None

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="tcp-proxy")
        with self._lock:
            self._threads = [each for each in self._threads if each.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._connect, client)

    def _connect(self, client: socket.socket) -> None:
        client.settimeout(None)
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if self._listener is None:  # stopped while connecting
                accepted = False
            else:
                self._open.update((client, upstream))
                accepted = True
        if not accepted:
            _close(client)
            _close(upstream)
            return
        self._spawn(self._pump, client, upstream)
        self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self._frozen.is_set() and not self._closing.is_set():
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass
        # One side hung up: hang up the other, as a real connection does.
        with self._lock:
            self._open.discard(source)
            self._open.discard(sink)
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# -- holding a scaling decision back (PostgreSQL) ------------------------------------------------


def decision_write_waits(engine: Engine) -> bool:
    """True while some session waits for its lock to insert a scaling decision."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO scaling_decision%'"
            )
        ).scalar_one()
    return bool(waiting)


@contextmanager
def decisions_held_back(url: str) -> Iterator[Engine]:
    """Hold an EXCLUSIVE lock on the decisions table: reads go on, the next decision waits.

    Yields an engine (without the lock) for `decision_write_waits`; the lock is released on exit.
    """
    holder_engine = make_engine(url)
    watcher = make_engine(url)
    try:
        with holder_engine.connect() as holder:
            holder.execute(text("LOCK TABLE scaling_decision IN EXCLUSIVE MODE"))
            try:
                yield watcher
            finally:
                holder.rollback()
    finally:
        holder_engine.dispose()
        watcher.dispose()


def wait_until(condition: Any, *, timeout: float, interval: float = 0.005, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)


# -- accounting ---------------------------------------------------------------------------------


def assert_every_item_finished_once(
    url: str,
    run_id: str,
    item_ids: list[str],
    *,
    failed: frozenset[str] = frozenset(),
    max_attempts: int = 3,
    held: frozenset[str] = frozenset(),
) -> list[store.BatchRecord]:
    """Check a finished run's ledger against its batches; returns the batches.

    Every item of the source is in the ledger once, in source order; it is done (with the
    answer of `fault_processors.echo`) or, for the ids in `failed`, failed for good after
    `max_attempts` attempts. The ids in `held` were claimed by a process that ended without
    giving them back: their rerun took them back as a crash's, one attempt each. Every result
    is counted by exactly one completed batch: the successes of each completed batch are the
    done items that name it, and the failed results of all completed batches are the items'
    other attempts. No batch is left open.
    """
    items = ledger(url, run_id)
    assert [item.item_id for item in items] == item_ids, "the ledger does not hold the source's items once each"
    assert [item.seq for item in items] == list(range(len(item_ids)))
    wrong = {
        item.item_id: (item.status.value, item.attempts, item.output, item.error)
        for item in items
        if (item.status, item.attempts, item.output)
        != (
            (store.ItemStatus.FAILED, max_attempts, None)
            if item.item_id in failed
            else (store.ItemStatus.DONE, int(item.item_id in held), {"echo": item.item_id})
        )
    }
    assert not wrong, f"{len(wrong)} items did not end as expected: {dict(list(wrong.items())[:10])}"

    records = batches(url, run_id)
    assert not [record.id for record in records if record.status == store.BatchStatus.PROCESSING], (
        "a batch was left processing"
    )
    completed = {record.id: record for record in records if record.status == store.BatchStatus.COMPLETED}
    assert all(item.batch_id in completed for item in items), "an item's last result is not in a completed batch"
    for record in completed.values():
        assert record.total_items == record.successful_items + record.failed_items
        done_here = sum(item.batch_id == record.id and item.status == store.ItemStatus.DONE for item in items)
        assert record.successful_items == done_here, (
            f"batch {record.id} (stage {record.stage}) counts {record.successful_items} successes, "
            f"the ledger {done_here}"
        )
    assert sum(record.failed_items for record in completed.values()) == sum(item.attempts for item in items) - len(held)
    [run] = [run for run in runs(url) if run.run_id == run_id]
    assert (run.status, run.items_loaded, run.item_count) == (store.RunStatus.COMPLETED, True, len(item_ids))
    return records
