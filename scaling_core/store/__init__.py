"""SQLModel persistence: pipeline runs, the item ledger, batches and scaling decisions.

Every query takes a `Session` (or an `Engine` where it manages its own transactions); no
engine is built at import time. The package is cut by concept:

- `tables`: the SQLModel tables and the models that go in and out of them;
- `engine`: engines, sessions, the schema, and the locks between processes;
- `queries`: runs, batches and decisions; `ledger`: the items of a run;
- `reports`: read-only reports of a run (its stages, its totals);
- `exports`: a run's results streamed out item by item, and the list of runs;
- `pipeline_store`: `PipelineStore`, the manager's view of one run.

Use it as one namespace: `from scaling_core import store; store.open_session(engine)`.
"""

from scaling_core.store.engine import (
    SECRET_QUERY_KEYS,
    RunBusy,
    RunFileLock,
    StoreError,
    WorkerLock,
    create_schema,
    hold_run_lock,
    hold_worker_lock,
    is_postgres,
    make_engine,
    open_session,
    parse_url,
    redact_url,
)
from scaling_core.store.exports import EXPORT_CHUNK, RESULT_FIELDS, RunListing, iter_results, list_runs
from scaling_core.store.ledger import (
    CrashSuspects,
    ItemCounts,
    claim_items,
    count_batch_items,
    count_items,
    crash_suspects,
    has_pending,
    load_items,
    mark_loaded,
    next_claim,
    record_item_results,
    recover_abandoned,
    recover_crashed,
    recover_dead_claims,
    release_items,
)
from scaling_core.store.pipeline_store import PipelineStore
from scaling_core.store.queries import (
    find_run,
    finish_batch,
    finish_run,
    get_run,
    insert_batch,
    last_batch_id,
    last_decided_size,
    latest_run,
    latest_unfinished_run,
    new_run_id,
    recent_batches,
    record_decision,
    run_batches,
    run_decisions,
    run_cost,
    start_run,
)
from scaling_core.store.reports import RunReport, RunTotals, StageRow, run_report, run_stages, run_totals
from scaling_core.store.tables import (
    BatchOutcome,
    BatchRecord,
    BatchStatus,
    ClaimedItem,
    DecisionRecord,
    ItemStatus,
    LedgerItem,
    PipelineRun,
    RunStatus,
)

__all__ = [
    "EXPORT_CHUNK",
    "RESULT_FIELDS",
    "SECRET_QUERY_KEYS",
    "RunBusy",
    "RunFileLock",
    "RunListing",
    "BatchOutcome",
    "BatchRecord",
    "BatchStatus",
    "ClaimedItem",
    "CrashSuspects",
    "DecisionRecord",
    "ItemCounts",
    "ItemStatus",
    "LedgerItem",
    "PipelineRun",
    "PipelineStore",
    "RunReport",
    "RunStatus",
    "RunTotals",
    "StageRow",
    "StoreError",
    "WorkerLock",
    "claim_items",
    "count_batch_items",
    "count_items",
    "crash_suspects",
    "create_schema",
    "find_run",
    "finish_batch",
    "finish_run",
    "get_run",
    "has_pending",
    "hold_run_lock",
    "hold_worker_lock",
    "insert_batch",
    "is_postgres",
    "iter_results",
    "last_batch_id",
    "last_decided_size",
    "latest_run",
    "latest_unfinished_run",
    "list_runs",
    "load_items",
    "make_engine",
    "mark_loaded",
    "new_run_id",
    "next_claim",
    "open_session",
    "parse_url",
    "recent_batches",
    "record_decision",
    "record_item_results",
    "recover_abandoned",
    "recover_crashed",
    "recover_dead_claims",
    "redact_url",
    "release_items",
    "run_batches",
    "run_cost",
    "run_decisions",
    "run_report",
    "run_stages",
    "run_totals",
    "start_run",
]
