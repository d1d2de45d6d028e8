"""`PipelineStore`: the store as the manager and the controller see it, bound to one run."""

from __future__ import annotations

from sqlalchemy import Engine

from scaling_core.results import BatchResult, ScalingDecision
from scaling_core.store.engine import open_session
from scaling_core.store.queries import last_batch_id, recent_batches, record_decision


class PipelineStore:
    """The manager's and the controller's view of the store: one pipeline run on one engine.

    It opens a short session per call, so it can be handed to code that runs between
    stages without holding a connection. `batch_id`, when the caller knows it (the stage
    just finished), is the batch its decisions follow; otherwise the run's latest batch is
    looked up for each decision.
    """

    def __init__(self, engine: Engine, *, pipeline: str, run_id: str, batch_id: int | None = None) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.run_id = run_id
        self.batch_id = batch_id

    def recent_batches(self, limit: int) -> list[BatchResult]:
        """The last `limit` finished batches of the pipeline across its runs, oldest first."""
        with open_session(self.engine) as session:
            return recent_batches(session, self.pipeline, limit)

    def record_decision(self, old_size: int, decision: ScalingDecision) -> None:
        """Persist `decision`, taken at `old_size` after `batch_id` (else the run's latest batch)."""
        with open_session(self.engine) as session:
            record_decision(
                session,
                run_id=self.run_id,
                pipeline=self.pipeline,
                batch_id=self.batch_id if self.batch_id is not None else last_batch_id(session, self.run_id),
                old_size=old_size,
                decision=decision,
            )
