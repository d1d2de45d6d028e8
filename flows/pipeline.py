"""The Prefect pipeline: batch stages with a scaling task between them.

The rules of a run (resume, warm start, stops, the next size) live in `scaling_core.runs`;
this module turns them into Prefect objects:

- `batch_pipeline`, the flow that opens the run and walks its stages;
- `process_stage`, a subflow per batch (its `batch_size` parameter shows in the UI) that
  claims that many pending items, runs the processor on them and writes every result;
- `decide_next_batch_size`, the task that asks the core for the next size.

The size walks one way: `decide_next_batch_size` returns a `NextStage`, whose `batch_size`
is the next `process_stage`'s parameter (`_run_stages`).

Flows and tasks pass ids, sizes and the `StoreDatabase` block, never sessions or engines: the
block caches one engine for the run and disposes it at its end. The flows are async: a
sync flow run waits about a second for its heartbeat thread, which a stage per batch cannot
afford.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from uuid import UUID, uuid4

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import SyncClientContext
from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectFuture
from sqlalchemy.exc import SQLAlchemyError

from flows.database import DatabaseParameter, StoreDatabase
from flows.models import (
    DEFAULT_PROCESSOR,
    PIPELINE_FLOW,
    ExecutionOptions,
    PipelineSummary,
    ProcessorPath,
    StageSummary,
    artifact_key,
)
from flows.report import stage_rows
from scaling_core import BatchManager, ClaimedBatch, Item, ItemResult, ItemSource, ScalingConfig, store
from scaling_core.processing import call_with_timeout, load_processor, run_processor
from scaling_core.runs import (
    NextStage,
    OpenedRun,
    RunRequest,
    RunTally,
    check_inputs,
    decide_next_stage,
    finish_run,
    open_run,
    stop_run,
)

STAGE_RETRIES = 2
"""Retries of a stage whose store failed (a processor failure is not retried this way)."""
STAGE_RETRY_DELAY = 5
"""Seconds before a retry: a database that restarts takes a few seconds."""
PROGRESS_INTERVAL = 2.0
"""Seconds at least between two updates of a run's progress artifact."""

@contextmanager
def _named_store_errors(database: StoreDatabase) -> Iterator[None]:
    """A SQLAlchemy error leaves as a `StoreError` that names the database (without its password)."""
    try:
        yield
    except SQLAlchemyError as error:
        raise database.store_error(error) from error


# Never a cached answer: a processor's results come from calling it (an LLM, a service).
@task(name="process-chunk", task_run_name="process-{size}-items", cache_policy=NO_CACHE)
def process_chunk(
    processor: str, items: list[dict[str, Any]], scaling: ScalingConfig, size: int, timeout: float
) -> list[dict[str, Any]]:
    """Run the processor on one chunk of a batch (on the flow's task runner, Dask included)."""
    return _process(processor, [Item(id=i["id"], payload=i["payload"]) for i in items], scaling, timeout)


def _process(processor: str, items: list[Item], scaling: ScalingConfig, timeout: float) -> list[dict[str, Any]]:
    function = load_processor(processor)
    results = call_with_timeout(lambda: run_processor(function, items, scaling), timeout)
    return [result.model_dump(mode="json") for result in results]


async def _run_processor(claimed: ClaimedBatch, processor: str, scaling: ScalingConfig, execution: ExecutionOptions) -> list[dict[str, Any]]:
    timeout = execution.stage_timeout_seconds
    parts = max(1, min(execution.parallelism, len(claimed.items)))
    if parts == 1 and not execution.uses_dask:
        # One chunk in this process: a task run around it would only add its API calls to
        # the critical path between two processor calls.
        return await asyncio.to_thread(_process, processor, claimed.items, scaling, timeout)
    size = -(-len(claimed.items) // parts)
    chunks = [claimed.items[i : i + size] for i in range(0, len(claimed.items), size)]
    futures: list[PrefectFuture[list[dict[str, Any]]]] = [
        process_chunk.submit(
            processor, [{"id": item.id, "payload": item.payload} for item in chunk], scaling, len(chunk), timeout
        )
        for chunk in chunks
    ]
    # `result()` blocks; wait in threads so the event loop stays free for Prefect's own work.
    results = await asyncio.gather(*(asyncio.to_thread(future.result) for future in futures))
    return [result for part in results for result in part]


@flow(
    name="process-stage",
    flow_run_name="{pipeline}-size-{batch_size}",
    log_prints=False,
    validate_parameters=True,
    # Only infrastructure errors (the store) escape a stage; a processor failure is
    # recorded as a failed batch. A store that went away may be back after a pause.
    retries=STAGE_RETRIES,
    retry_delay_seconds=STAGE_RETRY_DELAY,
)
async def process_stage(
    run_id: str,
    pipeline: str,
    batch_size: int,
    processor: ProcessorPath,
    scaling: ScalingConfig,
    execution: ExecutionOptions,
    database: StoreDatabase,
    worker: str | None = None,
) -> StageSummary:
    """One batch: claim `batch_size` pending items, process them, write every result in bulk.

    A processor call that raises or outlives `execution.stage_timeout_seconds` fails the
    batch whole: it is recorded, its items go back to pending, and the scaling task shrinks.
    A store error fails the stage with a `StoreError` naming the database; Prefect retries it.
    """
    logger = get_run_logger()
    with _named_store_errors(database):
        batches = BatchManager(
            database.get_engine(),
            run_id=run_id,
            pipeline=pipeline,
            batch_size=batch_size,
            max_attempts=execution.max_attempts,
            worker=worker,
        )
        claimed = batches.next_batch()
        if claimed is None:
            return StageSummary(stage=0, batch_id=0, batch_size=batch_size)
        started = time.perf_counter()
        try:
            raw = await asyncio.wait_for(
                _run_processor(claimed, processor, scaling, execution), timeout=execution.stage_timeout_seconds
            )
        except Exception as error:  # a stage fails whole, whatever the processor raised
            message = (
                f"stage timed out after {execution.stage_timeout_seconds:g} s"
                if isinstance(error, TimeoutError)
                else f"{type(error).__name__}: {error}"
            )
            result = batches.fail_batch(claimed, message, time.perf_counter() - started)
            logger.warning(
                "Stage %s (%s items) failed whole: %s; its items went back to pending",
                claimed.stage,
                len(claimed.items),
                message,
            )
            return StageSummary.of(claimed.stage, claimed.batch_id, result)
        seconds = time.perf_counter() - started
        result = batches.complete_batch(claimed, [ItemResult.model_validate(r) for r in raw], seconds)
    logger.info(
        "Stage %s: %s items, %s succeeded, High share %.2f, %.2f s",
        claimed.stage,
        result.total_items,
        result.successful_items,
        result.high_share,
        seconds,
    )
    return StageSummary.of(claimed.stage, claimed.batch_id, result)


@task(
    name="decide-next-batch-size",
    task_run_name="decide-after-stage-{stage}",
    cache_policy=NO_CACHE,  # the answer depends on the store, not on the arguments
    retries=STAGE_RETRIES,
    retry_delay_seconds=STAGE_RETRY_DELAY,
)
def decide_next_batch_size(
    run_id: str,
    pipeline: str,
    scaling: ScalingConfig,
    current_batch_size: int,
    stage: int,
    database: StoreDatabase,
    remaining_items: int | None = None,
) -> NextStage:
    """Read the pipeline's batch history from the store, decide, persist, return the next stage.

    A store error raises a `StoreError` naming the database; Prefect retries the task.
    """
    with _named_store_errors(database):
        next_stage, decision = decide_next_stage(
            database.get_engine(),
            run_id=run_id,
            pipeline=pipeline,
            scaling=scaling,
            batch_size=current_batch_size,
            remaining_items=remaining_items,
        )
    get_run_logger().info(
        "Stage %s: %s %s -> %s: %s",
        stage,
        decision.action.value,
        current_batch_size,
        next_stage.batch_size,
        next_stage.reason,
    )
    return next_stage


async def _settle(task_run_id: UUID | None, *, timeout: float = 2.0) -> None:
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


async def _run_stages(
    stage_flow: Any,
    opened: OpenedRun,
    tally: RunTally,
    *,
    request: RunRequest,
    execution: ExecutionOptions,
    database: StoreDatabase,
    progress_id: UUID,
    worker: str,
    alive: store.WorkerLock | None,
) -> None:
    """Stage, scaling task, stage... until no item is pending."""
    engine = database.get_engine()
    size = opened.batch_size
    progress_shown = time.monotonic()
    while True:
        _keep_alive(alive)
        with store.open_session(engine) as session:
            if not store.has_pending(session, opened.run_id):
                # Claims of this run's own stages that a failed stage left behind go back to
                # pending; those of other workers are theirs to finish.
                if not store.recover_abandoned(session, opened.run_id, worker=worker):
                    return
                get_run_logger().warning("Took back items a failed stage of this run had claimed")
                continue
        stage: StageSummary = await stage_flow(
            run_id=opened.run_id,
            pipeline=request.pipeline,
            batch_size=size,
            processor=request.processor,
            scaling=request.scaling,
            execution=execution,
            database=database,
            worker=worker,
        )
        if stage.items == 0:
            continue  # another worker took the last pending items
        if stop := tally.after_stage(successful=stage.successful, failed_whole=stage.failed_whole, error=stage.error):
            raise stop_run(engine, opened.run_id, stop)
        decided = decide_next_batch_size(
            run_id=opened.run_id,
            pipeline=request.pipeline,
            scaling=request.scaling,
            current_batch_size=size,
            stage=stage.stage,
            database=database,
            remaining_items=tally.remaining,
            return_state=True,
        )
        next_stage: NextStage = await decided.aresult()
        await _settle(decided.state_details.task_run_id)
        if stop := tally.after_decision(next_stage):
            raise stop_run(engine, opened.run_id, stop)
        if tally.new_unmet(next_stage):
            get_run_logger().warning("Stage %s: %s", stage.stage, next_stage.reason)
        size = next_stage.batch_size
        # An API call each: at most one per interval (the run's end sets 100 %).
        if time.monotonic() - progress_shown >= PROGRESS_INTERVAL:
            await aupdate_progress_artifact(progress_id, progress=tally.progress)
            progress_shown = time.monotonic()


def _keep_alive(alive: store.WorkerLock | None) -> None:
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
async def _dask_cluster(execution: ExecutionOptions) -> AsyncIterator[str | None]:
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


def _dask_runner(address: str) -> Any:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as error:
        raise RuntimeError("Dask execution needs the Dask extra: pip install 'batchpilot[dask]'") from error
    return DaskTaskRunner(address=address)


@flow(name=PIPELINE_FLOW, flow_run_name="{pipeline}", validate_parameters=True)
async def batch_pipeline(
    source: ItemSource,
    processor: ProcessorPath = DEFAULT_PROCESSOR,
    pipeline: str = "default",
    scaling: ScalingConfig = ScalingConfig(),  # noqa: B008 - a frozen model, safe as a default
    execution: ExecutionOptions = ExecutionOptions(),  # noqa: B008
    database: DatabaseParameter = None,
    limit: int | None = None,
    run_id: str | None = None,
    warm_start: bool = True,
) -> PipelineSummary:
    """Process every item of `source` in batch stages sized by the unified `ScalingManager`.

    Args:
        source: the CSV or JSON Lines file of items.
        processor: import path `package.module:function` of the batch processor.
        pipeline: the name under which runs, batches and learned sizes are kept.
        scaling: the limits the batch size is kept within.
        execution: parallelism within a stage, attempts per item, stage timeout.
        database: the store, a `StoreDatabase` block (from Python also a URL, best as a
            `SecretStr`); `$BATCHPILOT_DATABASE_URL` or the embedded SQLite file when empty.
        limit: process at most this many items of the source.
        run_id: resume this run; by default the last unfinished run of `pipeline` on the
            same source is resumed.
        warm_start: start from the size the last run of `pipeline` learned.
    """
    request = RunRequest(
        source=source,
        processor=processor,
        pipeline=pipeline,
        scaling=scaling,
        limit=limit,
        run_id=run_id,
        warm_start=warm_start,
    )
    # Everything that can be refused is checked before the store is touched.
    check_inputs(source, processor, limit)
    database = database if database is not None else StoreDatabase.from_settings()
    with database, _named_store_errors(database):
        return await _pipeline(request, execution, database)


async def _pipeline(request: RunRequest, execution: ExecutionOptions, database: StoreDatabase) -> PipelineSummary:
    logger = get_run_logger()
    engine = database.get_engine()
    worker = uuid4().hex[:16]
    # While this flow runs, its claims are known to be alive (PostgreSQL advisory lock).
    alive = store.hold_worker_lock(engine, worker)
    try:
        opened = open_run(engine, request)
        tally = RunTally.of(
            engine, opened, processor=request.processor, max_failed_stages_in_a_row=execution.max_failed_stages_in_a_row
        )
        logger.info(
            "%s run %s of %s items from %s (store %s); first batch size %s (%s)",
            "Resuming" if opened.resumed else "Starting",
            opened.run_id,
            opened.run.item_count,
            request.source.path,
            database.display_url(),
            opened.batch_size,
            opened.why,
        )
        key = artifact_key(request.pipeline)
        progress_id = await acreate_progress_artifact(
            progress=0.0, key=f"{key}-progress", description=f"Items finished in run {opened.run_id}"
        )
        started = time.perf_counter()
        # A sync task run (a stage's chunk task, the scaling task) opens an API client of its
        # own when none is in context: a TLS context and a version check, ~25 ms, twice per
        # stage. One client serves the whole run; the task runner's threads see it through
        # their copied context.
        with SyncClientContext.get_or_create():
            async with _dask_cluster(execution) as address:
                stage_flow = (
                    process_stage if address is None else process_stage.with_options(task_runner=_dask_runner(address))
                )
                await _run_stages(
                    stage_flow,
                    opened,
                    tally,
                    request=request,
                    execution=execution,
                    database=database,
                    progress_id=progress_id,
                    worker=worker,
                    alive=alive,
                )
    finally:
        if alive is not None:
            alive.close()

    if in_flight := finish_run(engine, opened.run_id):
        logger.info("%s items are still being processed by another worker", in_flight)
    with store.open_session(engine) as session:
        totals = store.run_totals(session, opened.run_id)
    result = PipelineSummary.of(totals, seconds=time.perf_counter() - started)
    await aupdate_progress_artifact(progress_id, progress=100.0)
    rows = stage_rows(engine, opened.run_id)
    await acreate_table_artifact(
        key=f"{key}-stages", table=rows, description=f"Stages of run {opened.run_id}: size, quality, decision"
    )
    await acreate_markdown_artifact(key=f"{key}-summary", markdown=result.markdown(), description="Run summary")
    logger.info(
        "Run %s finished: %s done, %s failed for good, %s stages in this session",
        opened.run_id,
        result.done,
        result.failed,
        tally.stages,
    )
    return result
