"""What the pipeline flow needs of Prefect and Dask at run time, apart from the flows themselves."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from uuid import UUID

from prefect import get_client, get_run_logger
from prefect.exceptions import ObjectNotFound
from sqlalchemy.exc import SQLAlchemyError

from flows.models import ExecutionOptions
from scaling_core import store

_T = TypeVar("_T")

STORE_RETRIES = 2
"""Retries of a stage or a decision whose store failed (a processor failure is not retried this way)."""
STORE_RETRY_DELAY = 5
"""Seconds before a retry: a database that restarts takes a few seconds."""


async def retrying_store_errors(call: Callable[[], Awaitable[_T]], *, what: str) -> _T:
    """`await call()`, again after `STORE_RETRY_DELAY` s while the store fails, at most `STORE_RETRIES` times.

    Each retry is one WARNING line naming the database (Prefect's own retries log an ERROR
    with a traceback for every attempt); the last failure propagates.
    """
    for attempt in itertools.count(1):
        try:
            return await call()
        except store.StoreError as error:
            await asyncio.sleep(_retry_delay(what, error, attempt))
    raise AssertionError("unreachable")  # the loop returns or raises


def retrying_store_errors_sync(call: Callable[[], _T], *, what: str) -> _T:
    """`retrying_store_errors` for a call that blocks (a sync task's)."""
    for attempt in itertools.count(1):
        try:
            return call()
        except store.StoreError as error:
            time.sleep(_retry_delay(what, error, attempt))
    raise AssertionError("unreachable")


def _retry_delay(what: str, error: store.StoreError, attempt: int) -> float:
    """The wait before retry `attempt` (logged as one WARNING line), or `error` again when none is left."""
    if attempt > STORE_RETRIES:
        raise error
    get_run_logger().warning(
        "%s: %s; retry %s of %s in %s s", what, error, attempt, STORE_RETRIES, STORE_RETRY_DELAY
    )
    return STORE_RETRY_DELAY


async def settle(task_run_id: UUID | None, *, timeout: float = 2.0) -> None:
    """Wait until the server has recorded the task run's final state.

    A SQLite-backed Prefect server records task states from events in the background; a
    subflow created while that write is in flight is refused with 503 ("database is
    locked") and the client backs off for 2 s. Waiting for the record (a few ms) before
    the next stage avoids that stall.
    """
    if task_run_id is None:
        return
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            try:
                task_run = await client.read_task_run(task_run_id)
            except ObjectNotFound:
                task_run = None  # its first event has not been recorded yet
            if task_run is not None and task_run.state is not None and task_run.state.is_final():
                return
            await asyncio.sleep(0.01)


def keep_alive(alive: store.WorkerLock | None) -> None:
    """Take this worker's liveness lock again if the database dropped it (a restart, a network cut).

    While it is lost, another process resuming the run may take this worker's claims; the
    store then keeps each item's result from the batch that holds its claim. A database that
    is still away is left for the next stage to meet (and retry).
    """
    if alive is None:
        return
    try:
        retaken = alive.refresh()
    except SQLAlchemyError as error:
        get_run_logger().warning("Could not take the worker's liveness lock again yet: %s", type(error).__name__)
        return
    if retaken:
        get_run_logger().warning("The database dropped this worker's liveness lock; it was taken again")


@asynccontextmanager
async def dask_cluster(execution: ExecutionOptions) -> AsyncIterator[str | None]:
    """The scheduler address stage chunks run on: an existing cluster, a local one, or None."""
    if execution.dask_address:
        yield execution.dask_address
        return
    if not execution.dask_workers:
        yield None
        return
    try:
        from distributed import LocalCluster
    except ImportError as error:
        raise RuntimeError("dask_workers needs the Dask extra: pip install 'batchpilot[dask]'") from error
    cluster = await asyncio.to_thread(
        LocalCluster, n_workers=execution.dask_workers, processes=True, threads_per_worker=1, dashboard_address=":0"
    )
    try:
        yield cluster.scheduler_address
    finally:
        await asyncio.to_thread(cluster.close)


def dask_runner(address: str) -> Any:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as error:
        raise RuntimeError("Dask execution needs the Dask extra: pip install 'batchpilot[dask]'") from error
    return DaskTaskRunner(address=address)
