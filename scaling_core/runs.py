"""The rules of a run: what it resumes, where it starts, what each next stage gets, when it stops.

A run is the item ledger of one source, worked through in batch stages. Whatever drives the
stages (the Prefect flows in `flows`, or a plain loop) follows the same walk:

    opened = open_run(engine, request)               # resume or register; load the ledger
    tally = RunTally.of(engine, opened)              # items left, failures in a row
    size = opened.batch_size
    while has_pending(...):
        stage = <claim `size` items, process them, write their results>
        tally.after_stage(stage)                     # raises RunStopped after N failures in a row
        next_stage = decide_next_stage(engine, opened.run, scaling, size, tally.remaining)
        tally.after_decision(next_stage)             # raises RunStopped for a broken processor
        size = next_stage.batch_size
    finish_run(engine, run_id)                      # completed by exactly one worker

None of this knows about Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, inspect
from sqlmodel import Session

from scaling_core import store
from scaling_core.budget import CostBudget
from scaling_core.config import ScalingConfig
from scaling_core.manager import ScalingManager
from scaling_core.processing import load_item_weight, load_processor
from scaling_core.results import ScalingDecision
from scaling_core.sources import (
    ItemSource,
    RowProblem,
    SourceError,
    SourceFingerprint,
    SourceSummary,
    WeightFunction,
    iter_item_batches,
    validate_source,
)

LOAD_CHUNK = 5_000
"""Items inserted into the ledger per transaction while loading a source (a crash loses at most one)."""


class RunStopped(RuntimeError):
    """The run stopped before its end, resumably: its items are pending again; rerun to resume."""


class BudgetReached(RunStopped):
    """The next stage would have taken the run's cost past `max_cost`: rerun with a higher one to continue."""


class RunRequest(BaseModel):
    """What a caller asks for: which source, processor and pipeline, and how to start."""

    model_config = ConfigDict(frozen=True)

    source: ItemSource
    processor: str
    pipeline: str
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    limit: int | None = None
    run_id: str | None = None
    warm_start: bool = True
    new_run: bool = False
    """Start a new run even when the pipeline has an unfinished one (that one is superseded)."""
    max_attempts: int = Field(default=3, ge=1)
    """Attempts per item; taking back the claims of a process that died counts one."""


@dataclass(frozen=True, slots=True)
class OpenedRun:
    """A run registered (or resumed) with its ledger loaded, and the size of its first stage."""

    run: store.PipelineRun
    resumed: bool
    batch_size: int
    why: str
    """Why the first stage has that size: the configured start, or what an earlier run learned."""
    lock: store.RunFileLock | None = None
    """On a SQLite file, this process's hold on the run; `close()` it when the run stops."""

    def close(self) -> None:
        """Let go of the run (another process may resume it)."""
        if self.lock is not None:
            self.lock.close()

    @property
    def run_id(self) -> str:
        return self.run.run_id


class NextStage(BaseModel):
    """What the scaling task hands the next stage: its size, or why the run must stop.

    `stop` is set when every call fails whatever the size (a broken processor, not a size
    problem); `unmet` names the constraints no size meets ("quality", "time"), which the run
    reports once each, with the decision's `reason`.
    """

    model_config = ConfigDict(frozen=True)

    batch_size: int = Field(gt=0)
    max_weight: float | None = Field(default=None, ge=0.0)
    """The most summed item weight the stage may claim (`ScalingDecision.max_weight`)."""
    stop: str | None = None
    unmet: tuple[str, ...] = ()
    reason: str = ""
    wait_seconds: float = Field(default=0.0, ge=0.0)
    """Seconds to wait before the stage, to stay under a learned rate limit."""

    @classmethod
    def of(cls, decision: ScalingDecision) -> NextStage:
        metrics = decision.performance_metrics
        return cls(
            batch_size=decision.new_batch_size,
            max_weight=decision.max_weight,
            stop=decision.reason if "deterministic_failures" in metrics else None,
            unmet=tuple(name for name in ("quality", "time") if f"{name}_unmet" in metrics),
            reason=decision.reason,
            wait_seconds=decision.wait_seconds,
        )


def check_inputs(source: ItemSource, processor: str, limit: int | None) -> SourceSummary:
    """Everything about a run's input that can be refused before any work: raises ValueError.

    The processor must import and be callable; the source must exist and hold valid,
    unique ids and, when the run weighs its items, a valid weight for every row (every
    rejected row is named with its line number).
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive when given, got {limit}")
    load_processor(processor)
    return validate_source(source, limit=limit, weigh=weight_function(source, processor))


def weight_function(source: ItemSource, processor: str) -> WeightFunction | None:
    """How the run weighs items that its source gives no weight: the processor module's
    `item_weight`, unless the source names a `weight_field` (which then weighs every item)."""
    return None if source.weight_field is not None else load_item_weight(processor)


def open_run(engine: Engine, request: RunRequest) -> OpenedRun:
    """Register the run or resume it, make sure its ledger holds the whole source, size its first stage.

    A run is its source's content: the file is fingerprinted (resolved path, size, SHA-256)
    before anything is written. Resuming: with `run_id`, that run; otherwise the latest
    unfinished run of the pipeline. Either must have been loaded from the same file with
    the same content and processor, else the call is refused, naming what differs; with
    `new_run` the unfinished run is marked superseded instead and a new run starts. Items a
    dead stage left in processing go back to pending as crash suspects, each with one
    attempt more (`store.recover_crashed`).

    On a SQLite file the run is held by this process until `OpenedRun.close()`: SQLite's
    claims carry no liveness, so a second live process on the run is refused rather than
    left to take back (and repeat) the first one's claims.

    Raises:
        RunMismatch: the run to resume was loaded from another file, other content or
            with another processor.
        store.RunBusy: another live process holds the run on the same SQLite file.
        SourceError: the file changed while it was being loaded (nothing of it is used).
    """
    fingerprint = SourceFingerprint.of(request.source)
    with store.open_session(engine) as session:
        existing = _run_to_resume(session, request, fingerprint)
        run = store.start_run(
            session,
            pipeline=request.pipeline,
            source=fingerprint.path,
            processor=request.processor,
            config={
                "scaling": request.scaling.model_dump(mode="json"),
                "limit": request.limit,
                "source": fingerprint.model_dump(mode="json"),
            },
            run_id=existing.run_id if existing is not None else request.run_id,
        )
        lock = store.hold_run_lock(engine, run.run_id)
        try:
            resumed = existing is not None
            if resumed:
                store.recover_dead_claims(session, run.run_id, max_attempts=request.max_attempts)
            if not run.items_loaded:
                _load_ledger(session, run.run_id, request, fingerprint)
                run.item_count = store.mark_loaded(session, run.run_id)
            batch_size, why = _first_size(engine, request)
        except BaseException:
            if lock is not None:
                lock.close()
            raise
    return OpenedRun(run=run, resumed=resumed, batch_size=batch_size, why=why, lock=lock)


def check_resumable(engine: Engine, request: RunRequest) -> None:
    """Refuse now, before anything is written or started, what `open_run` would refuse.

    Raises `RunMismatch` when the run to resume was loaded from another file, other content
    or with another processor; a store without runs, or `new_run`, passes.
    """
    if request.new_run or not inspect(engine).has_table(store.PipelineRun.__tablename__):
        return
    fingerprint = SourceFingerprint.of(request.source)
    with store.open_session(engine) as session:
        _run_to_resume(session, request, fingerprint)


class RunMismatch(ValueError):
    """The run to resume was loaded from another file, other content, or with another processor."""


def _run_to_resume(
    session: Session, request: RunRequest, fingerprint: SourceFingerprint
) -> store.PipelineRun | None:
    """The run this call continues (None: a new run), after the identity checks of `open_run`."""
    if request.run_id:
        existing = store.get_run(session, request.run_id)
        if existing is not None and (difference := _difference(existing, request.processor, fingerprint)):
            raise RunMismatch(
                f"run {request.run_id} {difference}: resume it with the same file and processor, "
                "or start a new run without --run-id"
            )
        return existing
    existing = store.latest_unfinished_run(session, request.pipeline)
    if existing is None:
        return None
    difference = _difference(existing, request.processor, fingerprint)
    if request.new_run:
        store.finish_run(session, existing.run_id, store.RunStatus.SUPERSEDED)
        return None
    if difference:
        raise RunMismatch(
            f"the unfinished run {existing.run_id} of pipeline {request.pipeline!r} {difference}. "
            f"Give the same file to resume it, or rerun with --new-run to start a new run "
            f"(run {existing.run_id} is then marked superseded)"
        )
    return existing


def _difference(run: store.PipelineRun, processor: str, fingerprint: SourceFingerprint) -> str | None:
    if run.processor != processor:
        return f"runs processor {run.processor}, not {processor}"
    stored = run.config.get("source")
    if stored is None:  # a run registered before fingerprints: its path as it was given
        same_path = Path(run.source).resolve() == Path(fingerprint.path)
        return None if same_path else f"was loaded from {run.source}, not {fingerprint.path}"
    return SourceFingerprint.model_validate(stored).difference(fingerprint)


def _load_ledger(session: Session, run_id: str, request: RunRequest, fingerprint: SourceFingerprint) -> None:
    # One transaction per chunk: a load killed midway resumes where it stopped (from the
    # same content, which the fingerprint guards), and the ledger ignores the rows it holds.
    seq = 0
    weigh = weight_function(request.source, request.processor)
    for chunk in iter_item_batches(request.source, chunk_size=LOAD_CHUNK, limit=request.limit, weigh=weigh):
        store.load_items(
            session, run_id, [(seq + i, item.id, item.payload, item.weight) for i, item in enumerate(chunk)]
        )
        session.commit()
        seq += len(chunk)
    if not fingerprint.unchanged_on_disk():
        # Rows of two versions of the file may be in the ledger: never mark it loaded.
        raise SourceError(
            request.source.path,
            [RowProblem(None, "changed while it was being loaded; rerun with --new-run to load it again")],
        )


def _first_size(engine: Engine, request: RunRequest) -> tuple[int, str]:
    if request.warm_start:
        with store.open_session(engine) as session:
            learned = store.last_decided_size(session, request.pipeline)
        if learned is not None:
            return request.scaling.clamp(learned), f"warm start from the last learned size {learned}"
    return request.scaling.initial_batch_size, "initial_batch_size"


def decide_next_stage(
    engine: Engine,
    *,
    run_id: str,
    pipeline: str,
    scaling: ScalingConfig,
    batch_size: int,
    remaining_items: int | None,
    batch_id: int | None = None,
) -> tuple[NextStage, ScalingDecision]:
    """Ask the `ScalingManager` for the size after a stage of `batch_size`, and persist its decision.

    Reads the pipeline's recent batches (across its runs) from the store. `batch_id`, the
    batch of the stage just finished, is recorded with the decision (looked up when None).
    """
    bound = store.PipelineStore(engine, pipeline=pipeline, run_id=run_id, batch_id=batch_id)
    manager = ScalingManager(scaling, store=bound, batch_size=batch_size)
    decision = manager.evaluate_scaling(remaining_items=remaining_items)  # the history from `bound`
    manager.apply_scaling_decision(decision)
    return NextStage.of(decision), decision


@dataclass(slots=True)
class RunTally:
    """A run's progress as its stages report it, and the rules that stop it early.

    Counting the ledger after every stage would scan millions of rows per stage, so the
    tally follows the stages' own counts.
    """

    run_id: str
    processor: str
    items: int
    finished: int
    max_failed_stages_in_a_row: int
    max_timed_out_stages_in_a_row: int | None = None
    """Fewer than `max_failed_stages_in_a_row` by default: each timeout costs a whole stage timeout."""
    failures_in_a_row: int = 0
    timeouts_in_a_row: int = 0
    lost_to_crashes_in_a_row: int = 0
    """Items failed for good by crashing alone, since the last stage that did an item."""

    LOST_TO_CRASHES: ClassVar[int] = 2
    """Items crashing alone in a row (each failed for good, no item done between them) that
    stop the run. One poison item is one; a second right after it is a processor that
    crashes on everything, or poison items side by side, which the rerun goes past."""
    stages: int = 0
    warned: set[str] = field(default_factory=set)

    @classmethod
    def of(
        cls,
        engine: Engine,
        opened: OpenedRun,
        *,
        processor: str,
        max_failed_stages_in_a_row: int,
        max_timed_out_stages_in_a_row: int | None = None,
    ) -> RunTally:
        with store.open_session(engine) as session:
            counts = store.count_items(session, opened.run_id)
        return cls(
            run_id=opened.run_id,
            processor=processor,
            items=opened.run.item_count,
            finished=counts.done + counts.failed,
            max_failed_stages_in_a_row=max_failed_stages_in_a_row,
            max_timed_out_stages_in_a_row=max_timed_out_stages_in_a_row,
        )

    @property
    def remaining(self) -> int:
        return max(self.items - self.finished, 0)

    @property
    def progress(self) -> float:
        """Finished items in percent."""
        return min(100.0, 100.0 * self.finished / max(self.items, 1))

    def after_stage(
        self,
        *,
        successful: int,
        failed_whole: bool,
        error: str | None,
        timed_out: bool = False,
        crashed: bool = False,
        crashed_for_good: int = 0,
    ) -> str | None:
        """Count a stage; returns why the run must stop (too many whole failures in a row), else None.

        A `crashed` stage (its processor's process died) leaves the count of failures in a
        row as it is: bisecting a crashed batch takes several crashes in a row by design, and
        each crash already counts an attempt against its items. But one poison item is
        failed for good once (it crashes alone with its attempts used up, `crashed_for_good`),
        and the stages after it do items: `LOST_TO_CRASHES` items failed that way with no
        item done in between mean a processor that crashes on every item, and the run stops
        before the crashes use up the attempts of more of its items.
        """
        self.stages += 1
        self.finished += successful
        if successful:
            self.lost_to_crashes_in_a_row = 0
        if crashed:
            self.lost_to_crashes_in_a_row += crashed_for_good
            if self.lost_to_crashes_in_a_row >= self.LOST_TO_CRASHES:
                return (
                    f"processor {self.processor} crashed its process on {self.lost_to_crashes_in_a_row} items in a "
                    f"row, each alone, with no item done in between (last: {error}); it may crash on every item. "
                    f"Stopping run {self.run_id}: fix the processor and rerun to resume (if these items are poison, "
                    "the rerun goes on past them; they stay failed)"
                )
            return None
        self.failures_in_a_row = self.failures_in_a_row + 1 if failed_whole else 0
        self.timeouts_in_a_row = self.timeouts_in_a_row + 1 if timed_out else 0
        timeouts_allowed = self.max_timed_out_stages_in_a_row
        if timeouts_allowed is not None and self.timeouts_in_a_row >= timeouts_allowed:
            return (
                f"{self.timeouts_in_a_row} stages in a row outlived the stage timeout (last: {error}); "
                f"stopping run {self.run_id}: its items are pending again; raise --stage-timeout-seconds "
                "if the processor needs longer, then rerun to resume"
            )
        if self.failures_in_a_row >= self.max_failed_stages_in_a_row:
            return (
                f"{self.failures_in_a_row} stages in a row failed whole (last: {error}); "
                f"stopping run {self.run_id}: its items are pending again, rerun to resume"
            )
        return None

    def after_decision(self, next_stage: NextStage) -> str | None:
        """Why the run must stop after this decision (a processor broken whatever the size), else None."""
        if next_stage.stop is None:
            return None
        return (
            f"processor {self.processor} failed on every call, whatever the batch size ({next_stage.stop}). "
            f"This is not a batch-size problem: fix the processor and rerun to resume run {self.run_id} "
            "(its items are pending again)"
        )

    def new_unmet(self, next_stage: NextStage) -> bool:
        """True the first time in this run a decision names a constraint that no size meets."""
        new = set(next_stage.unmet) - self.warned
        self.warned |= new
        return bool(new)


def budget_stop(
    engine: Engine,
    run_id: str,
    budget: CostBudget,
    *,
    batch_size: int,
    max_batch_weight: float | None,
    suspects_of: int | None = None,
) -> str | None:
    """Why the run must stop before a stage of `batch_size` (its cost would pass `max_cost`), else None.

    The stage is priced by the items it would claim now (`store.next_claim`: the next pending
    items in ledger order within `max_batch_weight`, or the crash suspects of `suspects_of`).
    "After N items" counts the run's finished items (done or failed for good).
    """
    if budget.max_cost is None:
        return None
    with store.open_session(engine) as session:
        spent = store.run_cost(session, run_id)
        items, weight = store.next_claim(
            session, run_id, batch_size, max_weight=max_batch_weight, suspects_of=suspects_of
        )
        next_cost = budget.batch_cost(items=items, weight=weight) or 0.0
        if spent + next_cost <= budget.max_cost:
            return None
        counts = store.count_items(session, run_id)
    return budget.stop_message(spent=spent, next_cost=next_cost, finished=counts.done + counts.failed)


def stop_run(engine: Engine, run_id: str, message: str, *, kind: type[RunStopped] = RunStopped) -> RunStopped:
    """Mark the run failed (resumable: its items are pending again); returns the error to raise, a `kind`."""
    with store.open_session(engine) as session:
        store.finish_run(session, run_id, store.RunStatus.FAILED)
    return kind(message)


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How a worker's part of a run ended."""

    completed_here: bool
    """This worker completed the run (of several finishing at once, exactly one does)."""
    in_progress: int
    """Items other workers of the run are still processing: the last of them completes it."""


def finish_run(engine: Engine, run_id: str) -> RunEnd:
    """Mark the run completed when nothing is left to do, unless another worker already has."""
    with store.open_session(engine) as session:
        unfinished = store.count_items(session, run_id).unfinished
        completed = unfinished == 0 and store.finish_run(
            session, run_id, store.RunStatus.COMPLETED, only_if=_UNFINISHED
        )
    return RunEnd(completed_here=completed, in_progress=unfinished)


_UNFINISHED = (store.RunStatus.RUNNING, store.RunStatus.INTERRUPTED)
"""A run in one of these states can still be completed (by its last worker, or a rerun)."""


def interrupt_run(engine: Engine, run_id: str, worker: str) -> store.ItemCounts:
    """Give `worker`'s claims back and, unless other workers still hold claims, mark the run interrupted.

    No attempt is counted against the items: a stop asked for by the user is not their fault.
    The run stays resumable (the next run of the pipeline takes it up); while other workers
    still work on it, it stays running and the last of them completes it. Returns the run's
    item counts after the claims went back.
    """
    with store.open_session(engine) as session:
        store.recover_abandoned(session, run_id, worker=worker)
        counts = store.count_items(session, run_id)
        if counts.processing == 0:
            store.finish_run(session, run_id, store.RunStatus.INTERRUPTED, only_if=store.RunStatus.RUNNING)
    return counts
