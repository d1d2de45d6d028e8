"""The Prefect pipeline: batch stages with a scaling task between them.

`batch_pipeline` registers a run in the store, loads its source into the item ledger once,
then loops: a `process_stage` subflow (its `batch_size` parameter shows in the UI) claims that
many pending items, runs the processor on them and writes every result in bulk; then the
`decide_next_batch_size` task reads the batch history from the store, asks the unified
`ScalingManager` for the next size and hands it to the next stage.

Flows and tasks pass ids, sizes and URLs, never sessions or engines. The flows are async:
a sync flow run waits about a second for its heartbeat thread, which a stage per batch
cannot afford.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn
from uuid import UUID, uuid4

from flows import _environment

_environment.apply_defaults()

from prefect import flow, get_client, get_run_logger, task  # noqa: E402 - after the settings above
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
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from flows.models import (
    DEFAULT_PROCESSOR,
    ExecutionOptions,
    NextStage,
    PipelineSummary,
    ProcessorPath,
    StageSummary,
    artifact_key,
)
from flows.report import stage_rows
from scaling_core import (
    BatchManager,
    ClaimedBatch,
    DynamicScalingController,
    Item,
    ItemSource,
    PipelineStore,
    ProgressTracker,
    ScalingConfig,
    default_database_url,
    load_processor,
    run_processor,
    validate_source,
)
from scaling_core import store
from scaling_core.sources import SourceSummary, iter_item_batches

LOAD_CHUNK = 5_000
"""Items inserted into the ledger per transaction while loading a source."""
STAGE_RETRIES = 2
"""Retries of a stage whose store failed (a processor failure is not retried this way)."""
STAGE_RETRY_DELAY = 5
"""Seconds before a retry: a database that restarts takes a few seconds."""
PROGRESS_INTERVAL = 2.0
"""Seconds at least between two updates of a run's progress artifact."""


_ENGINES: dict[str, Engine] = {}


def _engine(url: str) -> Engine:
    """One engine (and connection pool) per URL and process, made on first use and kept."""
    engine = _ENGINES.get(url)
    if engine is None:
        engine = store.make_engine(url)
        store.create_schema(engine)
        _ENGINES[url] = engine
    return engine


def check_inputs(source: ItemSource, processor: str, limit: int | None) -> SourceSummary:
    """Everything about a run's input that can be refused before any work: raises ValueError.

    The processor must import and be callable; the source must exist and hold valid,
    unique ids (every rejected row is named with its line number).
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive when given, got {limit}")
    load_processor(processor)
    return validate_source(source, limit=limit)


def _url(database_url: SecretStr | str | None) -> str:
    if database_url is None:
        return default_database_url()
    return database_url.get_secret_value() if isinstance(database_url, SecretStr) else database_url


# Never a cached answer: a processor's results come from calling it (an LLM, a service).
@task(name="process-chunk", task_run_name="process-{size}-items", cache_policy=NO_CACHE)
def process_chunk(
    processor: str, items: list[dict[str, Any]], scaling: ScalingConfig, size: int, timeout: float
) -> list[dict[str, Any]]:
    """Run the processor on one chunk of a batch and return its checked results as dicts.

    The call runs in a daemon thread that the task stops waiting for after `timeout`
    seconds: a hung processor cannot be killed from Python, but it must not hold the task
    runner (which waits for its threads when the stage ends) nor the process's exit.
    """
    function = load_processor(processor)
    batch = [Item(id=i["id"], payload=i["payload"]) for i in items]
    results = _call_with_timeout(lambda: run_processor(function, batch, scaling), timeout)
    return [result.model_dump(mode="json") for result in results]


def _call_with_timeout(call: Any, timeout: float) -> Any:
    done: Future[Any] = Future()

    def target() -> None:
        try:
            done.set_result(call())
        except BaseException as error:  # handed to the waiting task as it is
            done.set_exception(error)

    # The thread runs in a copy of this context: processors that read context variables
    # (Prefect's run context, Dask's current worker) see what the task sees.
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(target,), name="batchpilot-processor", daemon=True).start()
    try:
        return done.result(timeout=timeout)
    except FutureTimeout:
        raise TimeoutError(f"the processor did not answer within {timeout:g} s") from None


def _chunks(items: list[Item], parts: int) -> list[list[Item]]:
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _run_processor(
    claimed: ClaimedBatch, processor: str, scaling: ScalingConfig, parallelism: int, timeout: float
) -> list[dict[str, Any]]:
    chunks = _chunks(claimed.items, max(1, min(parallelism, len(claimed.items))))
    futures: list[PrefectFuture[list[dict[str, Any]]]] = [
        process_chunk.submit(
            processor, [{"id": item.id, "payload": item.payload} for item in chunk], scaling, len(chunk), timeout
        )
        for chunk in chunks
    ]
    # `result()` blocks; wait in threads so the event loop stays free for Prefect's own work.
    parts = await asyncio.gather(*(asyncio.to_thread(future.result) for future in futures))
    return [result for part in parts for result in part]


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
    database_url: SecretStr | None = None,
    worker: str | None = None,
) -> StageSummary:
    """One batch: claim `batch_size` pending items, process them, write every result in bulk.

    A processor call that raises or outlives `execution.stage_timeout_seconds` fails the
    batch whole: it is recorded, its items go back to pending, and the scaling task shrinks.
    A store error fails the stage with a `StoreError` naming the database; Prefect retries it.
    """
    url = _url(database_url)
    try:
        return await _process_stage(run_id, pipeline, batch_size, processor, scaling, execution, url, worker)
    except SQLAlchemyError as error:
        raise store.StoreError.wrap(url, error) from error


async def _process_stage(
    run_id: str,
    pipeline: str,
    batch_size: int,
    processor: str,
    scaling: ScalingConfig,
    execution: ExecutionOptions,
    url: str,
    worker: str | None,
) -> StageSummary:
    from scaling_core import ItemResult

    logger = get_run_logger()
    engine = _engine(url)
    batches = BatchManager(
        engine,
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
            _run_processor(claimed, processor, scaling, execution.parallelism, execution.stage_timeout_seconds),
            timeout=execution.stage_timeout_seconds,
        )
    except Exception as error:  # a stage fails whole, whatever the processor raised
        seconds = time.perf_counter() - started
        message = (
            f"stage timed out after {execution.stage_timeout_seconds:g} s"
            if isinstance(error, TimeoutError)
            else f"{type(error).__name__}: {error}"
        )
        result = batches.fail_batch(claimed, message, seconds)
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
    database_url: SecretStr | None = None,
    remaining_items: int | None = None,
) -> NextStage:
    """Read the pipeline's batch history from the store, decide, persist, return the next stage.

    A store error raises a `StoreError` naming the database; Prefect retries the task.
    """
    url = _url(database_url)
    try:
        return _decide(run_id, pipeline, scaling, current_batch_size, stage, url, remaining_items)
    except SQLAlchemyError as error:
        raise store.StoreError.wrap(url, error) from error


def _decide(
    run_id: str,
    pipeline: str,
    scaling: ScalingConfig,
    current_batch_size: int,
    stage: int,
    url: str,
    remaining_items: int | None,
) -> NextStage:
    engine = _engine(url)
    config = scaling.model_copy(update={"initial_batch_size": scaling.clamp(current_batch_size)})
    bound = PipelineStore(engine, pipeline=pipeline, run_id=run_id)
    controller = DynamicScalingController(
        BatchManager(engine, run_id=run_id, pipeline=pipeline, batch_size=current_batch_size),
        ProgressTracker(engine, pipeline=pipeline),
        config,
        store=bound,
    )
    decision = controller.evaluate_and_apply_scaling(remaining_items=remaining_items)
    get_run_logger().info(
        "Stage %s: %s %s -> %s: %s",
        stage,
        decision.action.value,
        current_batch_size,
        decision.new_batch_size,
        decision.reason,
    )
    metrics = decision.performance_metrics
    return NextStage(
        batch_size=decision.new_batch_size,
        stop=decision.reason if "deterministic_failures" in metrics else None,
        unmet=tuple(name for name in ("quality", "time") if f"{name}_unmet" in metrics),
        reason=decision.reason,
    )


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


def _prepare_run(
    engine: Engine,
    *,
    source: ItemSource,
    processor: str,
    pipeline: str,
    scaling: ScalingConfig,
    run_id: str | None,
    limit: int | None,
) -> tuple[store.PipelineRun, bool]:
    """Register or resume the run and make sure its ledger holds the whole source.

    Returns the run and whether it was resumed.
    """
    with store.open_session(engine) as session:
        existing = store.get_run(session, run_id) if run_id else store.latest_unfinished_run(session, pipeline)
        if existing is not None and (existing.source != str(source.path) or existing.processor != processor):
            if run_id is not None:
                raise ValueError(
                    f"run {run_id!r} processes {existing.source} with {existing.processor}, not "
                    f"{source.path} with {processor}: resume it with the same source and processor"
                )
            existing = None  # an unfinished run of other work: this is a new run
        run = store.start_run(
            session,
            pipeline=pipeline,
            source=str(source.path),
            processor=processor,
            config={"scaling": scaling.model_dump(mode="json"), "limit": limit},
            run_id=existing.run_id if existing is not None else run_id,
        )
        resumed = existing is not None
        if resumed:
            store.recover_dead_claims(session, run.run_id)
        if not run.items_loaded:
            seq = 0
            for chunk in iter_item_batches(source, chunk_size=LOAD_CHUNK, limit=limit):
                store.load_items(
                    session, run.run_id, [(seq + i, item.id, item.payload) for i, item in enumerate(chunk)]
                )
                session.commit()
                seq += len(chunk)
            run.item_count = store.mark_loaded(session, run.run_id)
        return run, resumed


def _starting_size(engine: Engine, pipeline: str, scaling: ScalingConfig, warm_start: bool) -> tuple[int, str]:
    if warm_start:
        with store.open_session(engine) as session:
            learned = store.last_decided_size(session, pipeline)
        if learned is not None:
            return scaling.clamp(learned), f"warm start from the last learned size {learned}"
    return scaling.initial_batch_size, "initial_batch_size"


async def _run_stages(
    stage_flow: Any,
    engine: Engine,
    run: store.PipelineRun,
    *,
    pipeline: str,
    size: int,
    processor: str,
    scaling: ScalingConfig,
    execution: ExecutionOptions,
    database_url: SecretStr | None,
    progress_id: UUID,
    worker: str,
    alive: store.WorkerLock | None,
) -> int:
    """Stage, scaling task, stage... until no item is pending; returns the stages run."""
    failures_in_a_row = 0
    stages = 0
    warned: set[str] = set()
    with store.open_session(engine) as session:
        counts = store.count_items(session, run.run_id)
    finished = counts[store.ItemStatus.DONE] + counts[store.ItemStatus.FAILED]
    progress_shown = time.monotonic()
    while True:
        _keep_alive(alive)
        with store.open_session(engine) as session:
            if not store.has_pending(session, run.run_id):
                # Claims of this run's own stages that a failed stage left behind go back to
                # pending; those of other workers are theirs to finish.
                if not store.recover_abandoned(session, run.run_id, worker=worker):
                    break
                get_run_logger().warning("Took back items a failed stage of this run had claimed")
                continue
        stage = await stage_flow(
            run_id=run.run_id,
            pipeline=pipeline,
            batch_size=size,
            processor=processor,
            scaling=scaling,
            execution=execution,
            database_url=database_url,
            worker=worker,
        )
        if stage.items == 0:
            continue  # another worker took the last pending items
        stages += 1
        failures_in_a_row = failures_in_a_row + 1 if stage.failed_whole else 0
        if failures_in_a_row >= execution.max_failed_stages_in_a_row:
            _stop_run(
                engine,
                run.run_id,
                f"{failures_in_a_row} stages in a row failed whole (last: {stage.error}); "
                f"stopping run {run.run_id}: its items are pending again, rerun to resume",
            )
        # Progress from the stages' own counts: counting the ledger after every stage would
        # scan millions of rows per stage. An API call each: at most one per interval (the
        # run's end sets 100 %).
        finished += stage.successful
        decided = decide_next_batch_size(
            run_id=run.run_id,
            pipeline=pipeline,
            scaling=scaling,
            current_batch_size=size,
            stage=stage.stage,
            database_url=database_url,
            remaining_items=max(run.item_count - finished, 0),
            return_state=True,
        )
        next_stage: NextStage = await decided.aresult()
        await _settle(decided.state_details.task_run_id)
        if next_stage.stop is not None:
            _stop_run(
                engine,
                run.run_id,
                f"processor {processor} failed on every call, whatever the batch size: {next_stage.stop}. "
                f"This is not a batch-size problem: fix the processor and rerun to resume run {run.run_id} "
                "(its items are pending again)",
            )
        if new := set(next_stage.unmet) - warned:
            warned |= new  # once per constraint and run
            get_run_logger().warning("Stage %s: %s", stage.stage, next_stage.reason)
        size = next_stage.batch_size
        if time.monotonic() - progress_shown >= PROGRESS_INTERVAL:
            progress = min(100.0, 100.0 * finished / max(run.item_count, 1))
            await aupdate_progress_artifact(progress_id, progress=progress)
            progress_shown = time.monotonic()

    return stages


def _stop_run(engine: Engine, run_id: str, message: str) -> NoReturn:
    """Mark the run failed (resumable: its items are pending again) and stop with `message`."""
    with store.open_session(engine) as session:
        store.finish_run(session, run_id, store.RunStatus.FAILED)
    raise RuntimeError(message)


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


@flow(name="batch-pipeline", flow_run_name="{pipeline}", validate_parameters=True)
async def batch_pipeline(
    source: ItemSource,
    processor: ProcessorPath = DEFAULT_PROCESSOR,
    pipeline: str = "default",
    scaling: ScalingConfig = ScalingConfig(),  # noqa: B008 - a frozen model, safe as a default
    execution: ExecutionOptions = ExecutionOptions(),  # noqa: B008
    database_url: SecretStr | None = None,
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
        database_url: the store; the embedded SQLite file when empty.
        limit: process at most this many items of the source.
        run_id: resume this run; by default the last unfinished run of `pipeline` on the
            same source is resumed.
        warm_start: start from the size the last run of `pipeline` learned.
    """
    # Everything that can be refused is checked before the store is touched.
    summary = check_inputs(source, processor, limit)
    url = _url(database_url)
    try:
        return await _pipeline(
            source=source,
            processor=processor,
            pipeline=pipeline,
            scaling=scaling,
            execution=execution,
            database_url=database_url,
            limit=limit,
            run_id=run_id,
            warm_start=warm_start,
            url=url,
            summary=summary,
        )
    except SQLAlchemyError as error:
        raise store.StoreError.wrap(url, error) from error


async def _pipeline(
    *,
    source: ItemSource,
    processor: str,
    pipeline: str,
    scaling: ScalingConfig,
    execution: ExecutionOptions,
    database_url: SecretStr | None,
    limit: int | None,
    run_id: str | None,
    warm_start: bool,
    url: str,
    summary: SourceSummary,
) -> PipelineSummary:
    logger = get_run_logger()
    engine = _engine(url)
    worker = uuid4().hex[:16]
    # While this flow runs, its claims are known to be alive (PostgreSQL advisory lock).
    alive = store.hold_worker_lock(engine, worker)
    try:
        run, resumed = _prepare_run(
            engine,
            source=source,
            processor=processor,
            pipeline=pipeline,
            scaling=scaling,
            run_id=run_id,
            limit=limit,
        )
        size, why = _starting_size(engine, pipeline, scaling, warm_start)
        logger.info(
            "%s run %s of %s items from %s (store %s); first batch size %s (%s)",
            "Resuming" if resumed else "Starting",
            run.run_id,
            run.item_count,
            summary.path,
            store.redact_url(url),
            size,
            why,
        )
        key = artifact_key(pipeline)
        progress_id = await acreate_progress_artifact(
            progress=0.0, key=f"{key}-progress", description=f"Items finished in run {run.run_id}"
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
                stages = await _run_stages(
                    stage_flow,
                    engine,
                    run,
                    pipeline=pipeline,
                    size=size,
                    processor=processor,
                    scaling=scaling,
                    execution=execution,
                    database_url=database_url,
                    progress_id=progress_id,
                    worker=worker,
                    alive=alive,
                )
    finally:
        if alive is not None:
            alive.close()

    with store.open_session(engine) as session:
        counts = store.count_items(session, run.run_id)
        if counts[store.ItemStatus.PENDING] + counts[store.ItemStatus.PROCESSING] == 0:
            store.finish_run(session, run.run_id, store.RunStatus.COMPLETED)
        else:  # another worker of this run is still processing its last stage
            logger.info("%s items are still being processed by another worker", counts[store.ItemStatus.PROCESSING])
        totals = store.run_totals(session, run.run_id)
    result = PipelineSummary.of(totals, seconds=time.perf_counter() - started)
    await aupdate_progress_artifact(progress_id, progress=100.0)
    rows = stage_rows(engine, run.run_id)
    await acreate_table_artifact(
        key=f"{key}-stages", table=rows, description=f"Stages of run {run.run_id}: size, quality, decision"
    )
    await acreate_markdown_artifact(key=f"{key}-summary", markdown=result.markdown(), description="Run summary")
    logger.info(
        "Run %s finished: %s done, %s failed for good, %s stages in this session",
        run.run_id,
        result.done,
        result.failed,
        stages,
    )
    return result
