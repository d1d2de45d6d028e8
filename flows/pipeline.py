"""The Prefect pipeline: batch stages with a scaling task between them.

The rules of a run (resume, warm start, stops, the next size) live in `scaling_core.runs`;
this module turns them into Prefect objects:

- `batch_pipeline`, the flow that opens the run and walks its stages;
- `process_stage` (in `flows.stage`), a subflow per batch (its `batch_size` parameter shows
  in the UI) that claims that many pending items, runs the processor on them and writes
  every result;
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
import re
import time
from datetime import datetime, timezone
from typing import Annotated, Any
from uuid import UUID, uuid4

from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import (
    acreate_image_artifact,
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, SyncClientContext
from prefect.exceptions import TerminationSignal
from pydantic import Field
from sqlalchemy import Engine

from flows._runtime import dask_cluster, dask_runner, keep_alive, retrying_store_errors_sync, settle
from flows.chart import stage_chart, svg_data_uri
from flows.database import DatabaseParameter, StoreDatabase
from flows.models import (
    DEFAULT_PIPELINE,
    DEFAULT_PROCESSOR,
    PIPELINE_FLOW,
    ExecutionOptions,
    PipelineSummary,
    ProcessorPath,
    StageSummary,
    artifact_key,
    run_tags,
    titled,
)
from flows.progress import RunInterrupted, RunOpened, StageDone, notify
from flows.report import artifact_rows, size_changes, stage_rows
from flows.stage import close_children, process_stage
from scaling_core import CostBudget, ItemSource, ScalingConfig, ScalingDecision, store
from scaling_core.rates import ConcurrencyLimit
from scaling_core.runs import (
    BudgetReached,
    NextStage,
    OpenedRun,
    RunRequest,
    RunTally,
    budget_stop,
    check_inputs,
    decide_next_stage,
    finish_run,
    interrupt_run,
    open_run,
    stop_run,
)

PROGRESS_INTERVAL = 2.0
"""Seconds at least between two updates of a run's progress artifact."""

_MADE_UP_NAME = re.compile(r"([^\W\d_]+)-([^\W\d_]+)")
"""The shape of the names Prefect makes up for a run, two words of letters (any alphabet's:
"Generic-Vicuña") and a dash: the server's in lower case ("eggplant-wolf"), the one the UI's
Run form fills in capitalised ("Intelligent-Boxsky")."""


def _made_up(name: str) -> bool:
    """Whether `name` has the shape of a name Prefect made up (`_MADE_UP_NAME`)."""
    words = _MADE_UP_NAME.fullmatch(name)
    return words is not None and (name.islower() or all(word.istitle() for word in words.groups()))


def pipeline_run_name(pipeline: str, given: str | None, *, flow_run_id: str, now: datetime) -> str:
    """The name of a pipeline's flow run: `given` when a user chose it, else a name of its own.

    A name of the shape Prefect makes up (two words and a dash) counts as not chosen; the run
    is then named `<pipeline>-<UTC date and time>-<first 4 characters of its flow run id>`,
    so that two runs of one pipeline never share a name.

    Example:
        >>> pipeline_run_name("catalogue", "Intelligent-Boxsky", flow_run_id="3fa1c0de-...",
        ...                   now=datetime(2026, 12, 2, 5, 59, 30, tzinfo=timezone.utc))
        'catalogue-20261202-055930-3fa1'
        >>> pipeline_run_name("catalogue", "rerun after the fix", flow_run_id="3fa1", now=datetime.now())
        'rerun after the fix'
    """
    if given and not _made_up(given):
        return given
    return f"{pipeline}-{now.astimezone(timezone.utc):%Y%m%d-%H%M%S}-{flow_run_id.replace('-', '')[:4]}"


def _run_name() -> str:
    """`flow_run_name` of `batch_pipeline`: Prefect calls it inside the run, which knows its name."""
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    return pipeline_run_name(
        str((context.parameters or {}).get("pipeline") or DEFAULT_PIPELINE),
        context.flow_run.name,
        flow_run_id=str(context.flow_run.id),
        now=datetime.now(timezone.utc),
    )


async def _tag_run(pipeline: str) -> None:
    """Add the pipeline's tags to this flow run (a deployment's run carries only the deployment's)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    wanted = [tag for tag in run_tags(pipeline) if tag not in context.flow_run.tags]
    if wanted:
        await context.client.update_flow_run(context.flow_run.id, tags=[*context.flow_run.tags, *wanted])

@task(
    name="decide-next-batch-size",
    task_run_name="decide-after-stage-{stage}",
    cache_policy=NO_CACHE,  # the answer depends on the store, not on the arguments
)
def decide_next_batch_size(
    run_id: str,
    pipeline: str,
    scaling: ScalingConfig,
    current_batch_size: int,
    stage: int,
    database: StoreDatabase,
    remaining_items: int | None = None,
    batch_id: int | None = None,
) -> NextStage:
    """Read the pipeline's batch history from the store, decide, persist, return the next stage.

    `batch_id` is the batch of the stage just finished, recorded with the decision (the
    store looks the run's latest batch up when it is not given). A store error is retried
    (`retrying_store_errors_sync`), then raises a `StoreError` naming the database.
    """

    def decide() -> tuple[NextStage, ScalingDecision]:
        with database.named_errors():
            return decide_next_stage(
                database.get_engine(),
                run_id=run_id,
                pipeline=pipeline,
                scaling=scaling,
                batch_size=current_batch_size,
                remaining_items=remaining_items,
                batch_id=batch_id,
            )

    next_stage, decision = retrying_store_errors_sync(decide, what=f"The decision after stage {stage} could not use the store")
    get_run_logger().info(
        "Stage %s: %s %s -> %s: %s",
        stage,
        decision.action.value,
        current_batch_size,
        next_stage.batch_size,
        next_stage.reason,
    )
    return next_stage


async def _run_stages(
    stage_flow: Any,
    opened: OpenedRun,
    tally: RunTally,
    *,
    request: RunRequest,
    execution: ExecutionOptions,
    budget: CostBudget,
    database: StoreDatabase,
    progress_id: UUID,
    worker: str,
    alive: store.WorkerLock | None,
) -> None:
    """Stage, scaling task, stage... until no item is pending.

    Crash suspects go first, in crash-isolation stages of half the crashed batch
    (`store.CrashSuspects`); the manager is not asked after those, and the run goes on at
    the size it chose before. With a `budget.max_cost`, each stage's items are priced before
    it claims them, and the run stops (`BudgetReached`) when they would pass the budget.
    """
    engine = database.get_engine()
    size = opened.batch_size
    weight: float | None = None  # what the scaling task lets the next batch weigh (None: max_batch_weight)
    # With parallelism, the chunks a stage is cut into follow an AIMD limit on 429s (`rates.ConcurrencyLimit`).
    concurrency = ConcurrencyLimit(execution.parallelism) if execution.parallelism > 1 else None
    progress_shown = time.monotonic()
    pending, suspects = await asyncio.to_thread(_ready_for_stage, engine, opened.run_id, alive)
    while True:
        if not pending:
            # Claims that a failed stage of this worker left behind, and those of workers
            # that died (their liveness lock is gone), go back to pending; live workers'
            # claims are theirs to finish.
            with store.open_session(engine) as session:
                own = store.recover_abandoned(session, opened.run_id, worker=worker)
                dead = store.recover_dead_claims(session, opened.run_id, max_attempts=execution.max_attempts)
            if not own + dead:
                return
            get_run_logger().warning(
                "Took back %s items claimed by a failed stage of this worker and %s by dead workers", own, dead
            )
            pending, suspects = await asyncio.to_thread(_ready_for_stage, engine, opened.run_id, alive)
            continue
        stage_size = size if suspects is None else suspects.claim_size
        # Crash suspects are claimed by count alone: bisection needs its halves.
        stage_weight = request.scaling.weight_cap(weight if suspects is None else None)
        if budget.max_cost is not None and (
            over := await asyncio.to_thread(
                budget_stop,
                engine,
                opened.run_id,
                budget,
                batch_size=stage_size,
                max_batch_weight=stage_weight,
                suspects_of=None if suspects is None else suspects.batch_id,
            )
        ):
            raise stop_run(engine, opened.run_id, over, kind=BudgetReached)
        stage: StageSummary = await stage_flow(
            run_id=opened.run_id,
            pipeline=request.pipeline,
            batch_size=stage_size,
            processor=request.processor,
            scaling=request.scaling,
            execution=execution,
            database=database,
            worker=worker,
            suspects_of=None if suspects is None else suspects.batch_id,
            budget=budget,
            max_weight=stage_weight,
            concurrency=None if concurrency is None else concurrency.limit,
        )
        if concurrency is not None and stage.calls:
            before = concurrency.limit
            if concurrency.record(calls=stage.calls, rate_limited=stage.rate_limited_calls) != before:
                get_run_logger().info(
                    "Stage %s: %s of its calls came back rate limited; chunks a stage %s -> %s (AIMD)",
                    stage.stage,
                    stage.rate_limited_calls,
                    before,
                    concurrency.limit,
                )
        if stage.items == 0:  # another worker took the last pending items
            pending, suspects = await asyncio.to_thread(_ready_for_stage, engine, opened.run_id, alive)
            continue
        if stop := tally.after_stage(
            successful=stage.successful,
            failed_whole=stage.failed_whole,
            error=stage.error,
            timed_out=stage.timed_out,
            crashed=stage.crashed,
            crashed_for_good=stage.crashed_for_good,
        ):
            raise stop_run(engine, opened.run_id, stop)
        if stage.crashed or stage.suspects_of is not None:
            # A crash, or a stage whose size bisection forced: nothing for the manager to learn.
            pending, suspects = await asyncio.to_thread(_ready_for_stage, engine, opened.run_id, alive)
            continue
        decided = decide_next_batch_size(
            run_id=opened.run_id,
            pipeline=request.pipeline,
            scaling=request.scaling,
            current_batch_size=size,
            stage=stage.stage,
            database=database,
            remaining_items=tally.remaining,
            batch_id=stage.batch_id,
            return_state=True,
        )
        next_stage: NextStage = await decided.aresult()
        # The next stage's check runs while the server records the task's state: both sit
        # between two processor calls, and neither needs the other.
        _, (pending, suspects) = await asyncio.gather(
            settle(decided.state_details.task_run_id),
            asyncio.to_thread(_ready_for_stage, engine, opened.run_id, alive),
        )
        if stop := tally.after_decision(next_stage):
            raise stop_run(engine, opened.run_id, stop)
        if tally.new_unmet(next_stage):
            get_run_logger().warning("Stage %s: %s", stage.stage, next_stage.reason)
        notify(
            StageDone(
                run_id=opened.run_id,
                stage=stage.stage,
                batch_size=size,
                items=stage.items,
                successful=stage.successful,
                high_share=stage.high_share,
                seconds=stage.seconds,
                finished=tally.finished,
                total=tally.items,
                next_batch_size=next_stage.batch_size,
                reason=next_stage.reason,
                error=stage.error,
            )
        )
        size, weight = next_stage.batch_size, next_stage.max_weight
        if next_stage.wait_seconds > 0:
            # The decision's reason (logged by the scaling task, shown in the UI) says why.
            await asyncio.sleep(next_stage.wait_seconds)
        # An API call each: at most one per interval (the run's end sets 100 %).
        if time.monotonic() - progress_shown >= PROGRESS_INTERVAL:
            await aupdate_progress_artifact(progress_id, progress=tally.progress)
            progress_shown = time.monotonic()


async def _publish(
    engine: Engine, run_id: str, pipeline: str, key: str, progress_id: UUID, started: float, completed_here: bool
) -> PipelineSummary:
    """Write the run's artifacts (summary with its chart, stage table, chart, progress) and return its summary."""
    with store.open_session(engine) as session:
        totals = store.run_totals(session, run_id)
    result = PipelineSummary.of(totals, seconds=time.perf_counter() - started, completed_here=completed_here)
    await aupdate_progress_artifact(progress_id, progress=100.0 if totals.items.unfinished == 0 else _share(totals))
    rows = stage_rows(engine, run_id)
    # A `data:` URI: the UI shows it as an image in markdown and in an image artifact, with
    # nothing to host.
    chart = svg_data_uri(stage_chart(rows, title=f"{pipeline}: run {run_id}"))
    await acreate_markdown_artifact(
        key=f"{key}-summary",
        markdown=result.markdown(size_changes(rows), chart_uri=chart),
        description=f"Run {run_id}: totals, chart, why the size changed",
    )
    await acreate_table_artifact(
        key=f"{key}-stages",
        table=artifact_rows(rows),
        description=f"Stages of run {run_id}: size, items, High share, seconds, action",
    )
    await acreate_image_artifact(
        image_url=chart, key=f"{key}-chart", description=f"Batch size, High share and items/s per stage of run {run_id}"
    )
    return result


def _share(totals: store.RunTotals) -> float:
    """Finished items of the run in percent."""
    return 100.0 * (totals.items.done + totals.items.failed) / max(totals.items.total, 1)


def _ready_for_stage(
    engine: Engine, run_id: str, alive: store.WorkerLock | None
) -> tuple[bool, store.CrashSuspects | None]:
    """Keep this worker's liveness lock; say whether the run has an item to claim, and which crash suspects go first.

    Runs in a thread, so that it can overlap the wait for the server (`settle`).
    """
    keep_alive(alive)
    with store.open_session(engine) as session:
        if not store.has_pending(session, run_id):
            return False, None
        return True, store.crash_suspects(session, run_id)


@flow(name=PIPELINE_FLOW, flow_run_name=_run_name, validate_parameters=True)
async def batch_pipeline(
    source: Annotated[ItemSource, titled("Source")],
    processor: Annotated[ProcessorPath, titled("Processor")] = DEFAULT_PROCESSOR,
    pipeline: Annotated[str, Field(min_length=1), titled("Pipeline")] = DEFAULT_PIPELINE,
    scaling: Annotated[ScalingConfig, titled("Scaling Limits")] = ScalingConfig(),  # noqa: B008 - frozen
    execution: Annotated[ExecutionOptions, titled("Execution")] = ExecutionOptions(),  # noqa: B008
    budget: Annotated[CostBudget, titled("Cost Budget")] = CostBudget(),  # noqa: B008 - frozen
    database: Annotated[DatabaseParameter, titled("Database")] = None,
    limit: Annotated[int | None, Field(gt=0), titled("Limit")] = None,
    run_id: Annotated[str | None, titled("Run ID")] = None,
    warm_start: Annotated[bool, titled("Warm Start")] = True,
    new_run: Annotated[bool, titled("New Run")] = False,
) -> PipelineSummary:
    """Process every item of `source` in batch stages sized by the unified `ScalingManager`.

    Args:
        source: the CSV or JSON Lines file of items.
        processor: import path `package.module:function` of the batch processor.
        pipeline: the name under which runs, batches and learned sizes are kept.
        scaling: the limits the batch size is kept within.
        execution: parallelism within a stage, attempts per item, stage timeout.
        budget: prices per item and per weight unit, and the most the run may spend; the
            run stops resumably (`BudgetReached`) before a stage would pass `max_cost`.
        database: the store, a `StoreDatabase` block (from Python also a URL, best as a
            `SecretStr`); `$BATCHPILOT_DATABASE_URL` or the embedded SQLite file when empty.
        limit: process at most this many items of the source.
        run_id: resume this run; by default the last unfinished run of `pipeline` is
            resumed, which must have been loaded from the same file with the same content.
        warm_start: start from the size the last run of `pipeline` learned.
        new_run: start a new run even when `pipeline` has an unfinished one on another
            file or content (that one is marked superseded); without it such a call is refused.
    """
    request = RunRequest(
        source=source,
        processor=processor,
        pipeline=pipeline,
        scaling=scaling,
        limit=limit,
        run_id=run_id,
        warm_start=warm_start,
        new_run=new_run,
        max_attempts=execution.max_attempts,
    )
    await _tag_run(pipeline)
    # Everything that can be refused is checked before the store is touched.
    check_inputs(source, processor, limit)
    database = database if database is not None else StoreDatabase.from_settings()
    # The stage subflows and the scaling task are created with the pipeline's tags.
    with database, database.named_errors(), tags(*run_tags(pipeline)):
        return await _pipeline(request, execution, budget, database)


async def _pipeline(
    request: RunRequest, execution: ExecutionOptions, budget: CostBudget, database: StoreDatabase
) -> PipelineSummary:
    logger = get_run_logger()
    engine = database.get_engine()
    worker = uuid4().hex[:16]
    # While this flow runs, its claims are known to be alive (PostgreSQL advisory lock).
    alive = store.hold_worker_lock(engine, worker)
    opened: OpenedRun | None = None
    try:
        opened = open_run(engine, request)
        tally = RunTally.of(
            engine,
            opened,
            processor=request.processor,
            max_failed_stages_in_a_row=execution.max_failed_stages_in_a_row,
            max_timed_out_stages_in_a_row=execution.max_timed_out_stages_in_a_row,
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
        notify(
            RunOpened(
                run_id=opened.run_id,
                pipeline=request.pipeline,
                items=tally.items,
                finished=tally.finished,
                batch_size=opened.batch_size,
                resumed=opened.resumed,
                why=opened.why,
            )
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
            async with dask_cluster(execution) as address:
                stage_flow = (
                    process_stage if address is None else process_stage.with_options(task_runner=dask_runner(address))
                )
                await _run_stages(
                    stage_flow,
                    opened,
                    tally,
                    request=request,
                    execution=execution,
                    budget=budget,
                    database=database,
                    progress_id=progress_id,
                    worker=worker,
                    alive=alive,
                )
    except BudgetReached as reached:
        # The run stops with its items pending; its artifacts show what it did and spent.
        assert opened is not None
        logger.warning("Run %s: %s", opened.run_id, reached)
        await _publish(engine, opened.run_id, request.pipeline, key, progress_id, started, False)
        raise
    except (asyncio.CancelledError, KeyboardInterrupt, TerminationSignal):
        # Ctrl-C, SIGTERM or a cancellation (from the command's signal handler, Python's, or
        # Prefect's in a served or worker run): the stage's items go back to pending, and the
        # run waits, interrupted, for the next run of the pipeline to resume it.
        if opened is not None:
            counts = interrupt_run(engine, opened.run_id, worker)  # blocking on purpose: the loop may be closing
            logger.warning(
                "Run %s interrupted after %s of %s items; rerun to resume it",
                opened.run_id,
                counts.done + counts.failed,
                counts.total,
            )
            notify(RunInterrupted(run_id=opened.run_id, finished=counts.done + counts.failed, total=counts.total))
        raise
    finally:
        close_children()
        if alive is not None:
            alive.close()
        if opened is not None:
            opened.close()

    ended = finish_run(engine, opened.run_id)
    if ended.completed_here:
        logger.info("Run %s: every item is finished; this worker completed the run", opened.run_id)
    elif ended.in_progress:
        logger.info("Run %s: %s items are still being processed by other workers", opened.run_id, ended.in_progress)
    result = await _publish(engine, opened.run_id, request.pipeline, key, progress_id, started, ended.completed_here)
    logger.info(
        "Run %s finished: %s done, %s failed for good, %s stages in this session",
        opened.run_id,
        result.done,
        result.failed,
        tally.stages,
    )
    return result
