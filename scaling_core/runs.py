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
    finish_run(engine, run_id)

None of this knows about Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine
from sqlmodel import Session

from scaling_core import store
from scaling_core.config import ScalingConfig
from scaling_core.controller import ProgressTracker
from scaling_core.manager import ScalingManager
from scaling_core.processing import load_processor
from scaling_core.results import ScalingDecision
from scaling_core.sources import ItemSource, SourceSummary, iter_item_batches, validate_source

LOAD_CHUNK = 5_000
"""Items inserted into the ledger per transaction while loading a source (a crash loses at most one)."""


class RunStopped(RuntimeError):
    """The run stopped before its end, resumably: its items are pending again; rerun to resume."""


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


@dataclass(frozen=True, slots=True)
class OpenedRun:
    """A run registered (or resumed) with its ledger loaded, and the size of its first stage."""

    run: store.PipelineRun
    resumed: bool
    batch_size: int
    why: str
    """Why the first stage has that size: the configured start, or what an earlier run learned."""

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
    stop: str | None = None
    unmet: tuple[str, ...] = ()
    reason: str = ""

    @classmethod
    def of(cls, decision: ScalingDecision) -> NextStage:
        metrics = decision.performance_metrics
        return cls(
            batch_size=decision.new_batch_size,
            stop=decision.reason if "deterministic_failures" in metrics else None,
            unmet=tuple(name for name in ("quality", "time") if f"{name}_unmet" in metrics),
            reason=decision.reason,
        )


def check_inputs(source: ItemSource, processor: str, limit: int | None) -> SourceSummary:
    """Everything about a run's input that can be refused before any work: raises ValueError.

    The processor must import and be callable; the source must exist and hold valid,
    unique ids (every rejected row is named with its line number).
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive when given, got {limit}")
    load_processor(processor)
    return validate_source(source, limit=limit)


def open_run(engine: Engine, request: RunRequest) -> OpenedRun:
    """Register the run or resume it, make sure its ledger holds the whole source, size its first stage.

    Resuming: with `run_id`, that run (it must process the same source with the same
    processor); otherwise the latest unfinished run of the pipeline on the same source and
    processor. Items a dead stage left in processing go back to pending.

    Raises:
        ValueError: `run_id` names a run of another pipeline, source or processor.
    """
    source = str(request.source.path)
    with store.open_session(engine) as session:
        existing = (
            store.get_run(session, request.run_id)
            if request.run_id
            else store.latest_unfinished_run(session, request.pipeline)
        )
        if existing is not None and (existing.source != source or existing.processor != request.processor):
            if request.run_id is not None:
                raise ValueError(
                    f"run {request.run_id!r} processes {existing.source} with {existing.processor}, not "
                    f"{source} with {request.processor}: resume it with the same source and processor"
                )
            existing = None  # an unfinished run of other work: this is a new run
        run = store.start_run(
            session,
            pipeline=request.pipeline,
            source=source,
            processor=request.processor,
            config={"scaling": request.scaling.model_dump(mode="json"), "limit": request.limit},
            run_id=existing.run_id if existing is not None else request.run_id,
        )
        resumed = existing is not None
        if resumed:
            store.recover_dead_claims(session, run.run_id)
        if not run.items_loaded:
            _load_ledger(session, run.run_id, request)
            run.item_count = store.mark_loaded(session, run.run_id)
    batch_size, why = _first_size(engine, request)
    return OpenedRun(run=run, resumed=resumed, batch_size=batch_size, why=why)


def _load_ledger(session: Session, run_id: str, request: RunRequest) -> None:
    # One transaction per chunk: a load killed midway resumes where it stopped, and the
    # ledger ignores the rows it already holds.
    seq = 0
    for chunk in iter_item_batches(request.source, chunk_size=LOAD_CHUNK, limit=request.limit):
        store.load_items(session, run_id, [(seq + i, item.id, item.payload) for i, item in enumerate(chunk)])
        session.commit()
        seq += len(chunk)


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
    history = ProgressTracker(engine, pipeline=pipeline).recent_results(ScalingManager.HISTORY)
    decision = manager.evaluate_scaling(history, remaining_items=remaining_items)
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
    failures_in_a_row: int = 0
    stages: int = 0
    warned: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, engine: Engine, opened: OpenedRun, *, processor: str, max_failed_stages_in_a_row: int) -> RunTally:
        with store.open_session(engine) as session:
            counts = store.count_items(session, opened.run_id)
        return cls(
            run_id=opened.run_id,
            processor=processor,
            items=opened.run.item_count,
            finished=counts.done + counts.failed,
            max_failed_stages_in_a_row=max_failed_stages_in_a_row,
        )

    @property
    def remaining(self) -> int:
        return max(self.items - self.finished, 0)

    @property
    def progress(self) -> float:
        """Finished items in percent."""
        return min(100.0, 100.0 * self.finished / max(self.items, 1))

    def after_stage(self, *, successful: int, failed_whole: bool, error: str | None) -> str | None:
        """Count a stage; returns why the run must stop (too many whole failures in a row), else None."""
        self.stages += 1
        self.finished += successful
        self.failures_in_a_row = self.failures_in_a_row + 1 if failed_whole else 0
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


def stop_run(engine: Engine, run_id: str, message: str) -> RunStopped:
    """Mark the run failed (resumable: its items are pending again); returns the error to raise."""
    with store.open_session(engine) as session:
        store.finish_run(session, run_id, store.RunStatus.FAILED)
    return RunStopped(message)


def finish_run(engine: Engine, run_id: str) -> int:
    """Mark the run completed when nothing is left to do; returns the items still in processing.

    Items another worker of the run still processes keep the run running: that worker
    completes it.
    """
    with store.open_session(engine) as session:
        in_flight = store.count_items(session, run_id).unfinished
        if in_flight == 0:
            store.finish_run(session, run_id, store.RunStatus.COMPLETED)
    return in_flight
