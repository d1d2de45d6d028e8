"""One batch stage as a Prefect subflow: claim the items, run the processor, write the results.

`process_stage` runs the whole batch in one call of the processor in this process, or, with
`parallelism` above 1 or a Dask cluster, as `process_chunk` task runs on the flow's task
runner (Dask pickles the task by this module's name), or, with `isolate_processor`, in a
child process kept for the run (`scaling_core.isolation`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture

from flows._runtime import retrying_store_errors
from flows.database import StoreDatabase
from flows.models import ExecutionOptions, ProcessorPath, StageSummary
from scaling_core import BatchManager, ClaimedBatch, CostBudget, Item, ItemResult, ScalingConfig
from scaling_core.isolation import ProcessorCrashed, ProcessorProcess
from scaling_core.processing import call_in_daemon_thread, call_with_timeout, load_processor, run_processor
from scaling_core.rates import MAX_TOTAL_WAIT, RateLimited, RateWaits, call_retrying_rate_limits



def stage_run_name(pipeline: str, stage: int, batch_size: int) -> str:
    """The name of a stage's flow run once it has claimed its batch (`default-stage-3-size-75`)."""
    return f"{pipeline}-stage-{stage}-size-{batch_size}"


async def _name_stage(pipeline: str, stage: int, batch_size: int) -> None:
    """Rename this stage's flow run with its number, known only once the batch is claimed.

    It runs beside the processor, so the API call costs the stage no time; a failure to rename
    costs the stage only its name.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    try:
        await context.client.set_flow_run_name(context.flow_run.id, stage_run_name(pipeline, stage, batch_size))
    except Exception as error:  # the name is for people; the batch goes on
        get_run_logger().warning("Stage %s: could not rename its flow run: %s", stage, error)


# Never a cached answer: a processor's results come from calling it (an LLM, a service).
@task(name="process-chunk", task_run_name="process-{size}-items", cache_policy=NO_CACHE)
def process_chunk(
    processor: str, items: list[dict[str, Any]], scaling: ScalingConfig, size: int, timeout: float
) -> dict[str, Any]:
    """Run the processor on one chunk of a batch (on the flow's task runner, Dask included).

    Returns the chunk's results (`"results"`) and what rate limits cost it (`"rate_limited_calls"`,
    `"waited"`): plain data, which Dask pickles.
    """
    chunk = [Item(id=i["id"], payload=i["payload"], weight=i.get("weight")) for i in items]
    return _process(processor, chunk, scaling, timeout, where=f"A chunk of {size} items")


def _process(
    processor: str, items: list[Item], scaling: ScalingConfig, timeout: float, *, where: str
) -> dict[str, Any]:
    function = load_processor(processor)
    # Each call has the stage timeout; the waits between calls refused for a rate limit do not
    # count against it (they are bounded by `rates.MAX_TOTAL_WAIT`).
    results, waits = call_retrying_rate_limits(
        lambda: call_with_timeout(lambda: run_processor(function, items, scaling), timeout),
        on_wait=_log_wait(where, len(items)),
    )
    return _answer([result.model_dump(mode="json") for result in results], waits)


def _answer(results: list[dict[str, Any]], waits: RateWaits) -> dict[str, Any]:
    return {"results": results, "rate_limited_calls": waits.rate_limited_calls, "waited": waits.waited}


def _log_wait(where: str, items: int) -> Callable[[RateLimited, float], None]:
    logger = get_run_logger()

    def log(error: RateLimited, wait: float) -> None:
        said = f", Retry-After {error.retry_after:g} s" if error.retry_after is not None else ""
        # One line per wait, no traceback: a rate limit is expected, not a fault.
        logger.warning("%s: rate limited (%s%s); waiting %.1f s, then the same %s items again", where, error, said, wait, items)

    return log


_children: dict[str, ProcessorProcess] = {}
"""The child process of each isolated processor, kept from stage to stage (`close_children`)."""


def close_children() -> None:
    """Stop the child processes of isolated processors (a run's end)."""
    while _children:
        _children.popitem()[1].close()


def _in_child(
    processor: str, items: list[Item], scaling: ScalingConfig, timeout: float, *, where: str
) -> dict[str, Any]:
    if processor not in _children:
        _children[processor] = ProcessorProcess(processor)
    child = _children[processor]
    results, waits = call_retrying_rate_limits(
        lambda: child.run(items, scaling, timeout=timeout), on_wait=_log_wait(where, len(items))
    )
    return _answer([result.model_dump(mode="json") for result in results], waits)


@dataclass(frozen=True, slots=True)
class _Processed:
    """A batch's results, its calls, and what rate limits cost it."""

    results: list[dict[str, Any]]
    calls: int
    waits: RateWaits

    @classmethod
    def of(cls, answer: dict[str, Any]) -> _Processed:
        """One call's answer (`_answer`)."""
        return cls(answer["results"], 1, RateWaits(answer["rate_limited_calls"], answer["waited"]))


async def _run_processor(
    claimed: ClaimedBatch,
    processor: str,
    scaling: ScalingConfig,
    execution: ExecutionOptions,
    concurrency: int | None,
    where: str,
) -> _Processed:
    timeout = execution.stage_timeout_seconds
    if execution.isolate_processor:
        answer = await asyncio.wrap_future(
            call_in_daemon_thread(lambda: _in_child(processor, claimed.items, scaling, timeout, where=where))
        )
        return _Processed.of(answer)
    # As many chunks as the run's AIMD limit on 429s allows (`concurrency`), all at once: a
    # stage's calls then all start with it, as the rate pacer counts them.
    parts = max(1, min(execution.parallelism, concurrency or execution.parallelism, len(claimed.items)))
    if parts == 1 and not execution.uses_dask:
        # One chunk in this process: a task run around it would only add its API calls to
        # the critical path between two processor calls. A daemon thread, not the loop's
        # executor: an interrupted stage must not wait for the processor's answer to exit
        # (the stage's `wait_for` bounds the wait otherwise).
        answer = await asyncio.wrap_future(
            call_in_daemon_thread(lambda: _process(processor, claimed.items, scaling, timeout, where=where))
        )
        return _Processed.of(answer)
    size = -(-len(claimed.items) // parts)
    chunks = [claimed.items[i : i + size] for i in range(0, len(claimed.items), size)]
    futures: list[PrefectFuture[dict[str, Any]]] = [
        process_chunk.submit(
            processor,
            [{"id": item.id, "payload": item.payload, "weight": item.weight} for item in chunk],
            scaling,
            len(chunk),
            timeout,
        )
        for chunk in chunks
    ]
    # `result()` blocks; wait in threads so the event loop stays free for Prefect's own work.
    answers = await asyncio.gather(*(asyncio.to_thread(future.result) for future in futures))
    return _Processed(
        [result for answer in answers for result in answer["results"]],
        len(chunks),
        # Chunks wait side by side: the longest wait is the one the stage's time holds.
        RateWaits(
            sum(answer["rate_limited_calls"] for answer in answers),
            max(answer["waited"] for answer in answers),
        ),
    )


def _stage_timeout(execution: ExecutionOptions) -> float:
    """The bound on a whole stage: each call has the stage timeout, and rate-limit waits come on top."""
    return execution.stage_timeout_seconds + MAX_TOTAL_WAIT


@flow(
    name="process-stage",
    flow_run_name="{pipeline}-size-{batch_size}",
    log_prints=False,
    validate_parameters=True,
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
    suspects_of: int | None = None,
    budget: CostBudget | None = None,
    max_weight: float | None = None,
    concurrency: int | None = None,
) -> StageSummary:
    """One batch: claim `batch_size` pending items, process them, write every result in bulk.

    The claim stops short of `batch_size` rather than pass `scaling.max_batch_weight` or
    `max_weight` (the weight the scaling task lets this batch take within the time limit,
    `ScalingDecision.max_weight`); the batch is charged at `budget`'s prices
    (`CostBudget.batch_cost`).

    A processor call that raises or outlives `execution.stage_timeout_seconds` fails the
    batch whole: it is recorded, its items go back to pending, and the scaling task shrinks.
    With `execution.isolate_processor`, a processor whose child process dies crashes the
    batch: each item counts an attempt and becomes a crash suspect. With `suspects_of`, the
    stage claims only the crash suspects of that batch (a crash-isolation stage).
    A call refused for a rate limit (`scaling_core.rates.RateLimited`, an httpx 429, an
    `openai.RateLimitError`) fails nothing: the stage waits and calls again with the same
    items, and the wait is left out of the batch's time. With `concurrency` (the run's AIMD
    limit), the batch is cut into at most that many chunks.
    Only a store error escapes a stage: a store that went away may be back after a pause, so
    the stage is tried again (`retrying_store_errors`), and then fails with a `StoreError`
    naming the database.
    """
    return await retrying_store_errors(
        lambda: _stage(
            run_id,
            pipeline,
            batch_size,
            processor,
            scaling,
            execution,
            database,
            worker,
            suspects_of,
            budget,
            scaling.weight_cap(max_weight),
            concurrency,
        ),
        what=f"A stage of size {batch_size} could not use the store",
    )


async def _stage(
    run_id: str,
    pipeline: str,
    batch_size: int,
    processor: str,
    scaling: ScalingConfig,
    execution: ExecutionOptions,
    database: StoreDatabase,
    worker: str | None,
    suspects_of: int | None,
    budget: CostBudget | None,
    max_weight: float | None,
    concurrency: int | None,
) -> StageSummary:
    logger = get_run_logger()
    with database.named_errors():
        batches = BatchManager(
            database.get_engine(),
            run_id=run_id,
            pipeline=pipeline,
            batch_size=batch_size,
            max_attempts=execution.max_attempts,
            worker=worker,
            max_batch_weight=max_weight,
            budget=budget,
        )
        claimed = batches.next_batch(suspects_of=suspects_of)
        if claimed is None:
            return StageSummary(stage=0, batch_id=0, batch_size=batch_size, suspects_of=suspects_of)
        naming = asyncio.create_task(_name_stage(pipeline, claimed.stage, batch_size))
        try:
            started = time.perf_counter()
            try:
                processed = await asyncio.wait_for(
                    _run_processor(claimed, processor, scaling, execution, concurrency, f"Stage {claimed.stage}"),
                    timeout=_stage_timeout(execution),
                )
            except ProcessorCrashed as crash:
                lost = batches.crash_batch(claimed, str(crash))
                logger.warning(
                    "Stage %s (%s items): %s; each item counts an attempt and is retried as a crash suspect",
                    claimed.stage,
                    len(claimed.items),
                    crash,
                )
                return StageSummary(
                    stage=claimed.stage,
                    batch_id=claimed.batch_id,
                    batch_size=batch_size,
                    items=len(claimed.items),
                    failed=len(claimed.items),
                    seconds=time.perf_counter() - started,
                    crashed=True,
                    crashed_for_good=lost,
                    suspects_of=suspects_of,
                    error=str(crash),
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
                return StageSummary.of(
                    claimed.stage,
                    claimed.batch_id,
                    result,
                    timed_out=isinstance(error, TimeoutError),
                    suspects_of=suspects_of,
                )
            seconds = time.perf_counter() - started - processed.waits.waited
            result = batches.complete_batch(
                claimed, [ItemResult.model_validate(r) for r in processed.results], seconds, rate=processed.waits
            )
        finally:
            await naming
    logger.info(
        "Stage %s: %s items, %s succeeded, High share %.2f, %.2f s%s",
        claimed.stage,
        result.total_items,
        result.successful_items,
        result.high_share,
        seconds,
        f" (and {result.rate_wait:.1f} s waiting on {result.rate_limited_calls} rate-limited calls)"
        if result.rate_limited_calls
        else "",
    )
    return StageSummary.of(claimed.stage, claimed.batch_id, result, suspects_of=suspects_of, calls=processed.calls)
