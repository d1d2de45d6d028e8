"""Performance benchmark of the pipeline: orchestration overhead, store throughput, decision
cost, memory, ~5-s batches and the export's memory, each measured in the same run.

Usage::

    python -m bench.performance                      # full sizes (about 12 minutes on 2 CPUs)
    python -m bench.performance --quick              # 100k items for the store and memory figures
    python -m bench.performance --only overhead,long --json figures.json

Figures and targets, one module each:

1. `overhead`: a 5,000-item run whose processor sleeps 1.0 s per call, through
   `batch_pipeline` (ephemeral Prefect, embedded SQLite store, default scaling) against a
   plain loop calling the processor with the same batch sizes. Target: pipeline wall / loop
   wall <= 1.10. Also the median per-stage overhead (the time between two processor calls
   minus the processor's own time) against Prefect's floor, an empty async stage flow plus
   an empty sync task called the same way (including the pipeline's `settle` wait and its one
   shared API client), measured in the same process. Target: <= 1.15x the floor.
2. `ledger`: 1,000,000 items loaded into the ledger (`load_items` per 5,000, as `open_run`
   does) and 1,000,000 results written (`claim_items` + `record_item_results` per 5,000),
   against raw `sqlite3` `executemany` on the same table. Target: >= 0.5x raw for both.
3. `decision`: the scaling task's time with 100 and with 100,000 batches stored (and 1,000,
   past the 400-batch window the task reads). Target: < 2x.
4. `memory`: peak resident memory of a process running 1,000,000 JSON Lines items end to end
   through `batch_pipeline`. Target: < 400 MB.
5. `long_batches`: six fixed stages of 100 items whose processor sleeps 5.0 s per call,
   through `batch_pipeline` against a plain loop with the same sizes. Target: <= 1.05.
6. `export`: peak resident memory of `python -m flows export` writing a completed run of
   1,000,000 items (built in bulk through the store's functions) to CSV, and to Parquet when
   pyarrow is installed. Target: < 400 MB each.

The Prefect figures run in a child process (`bench.performance._child`) with a temporary
`PREFECT_HOME`; its wall times are taken inside the flow call, after a warm-up flow has
started the ephemeral server. The exit code is 0 whether targets are met or not.
"""

from bench.performance.command import main
from bench.performance.common import Targets, write_jsonl_source
from bench.performance.decision import DecisionFigures, measure_decision
from bench.performance.export import ExportFigures, measure_export
from bench.performance.ledger import StoreFigures, StoreRates, measure_store
from bench.performance.long_batches import LongBatchFigures, measure_long_batches
from bench.performance.memory import MemoryFigures, measure_memory, measure_overhead_and_memory
from bench.performance.overhead import OverheadFigures, PipelineTiming, measure_overhead

__all__ = [
    "DecisionFigures",
    "ExportFigures",
    "LongBatchFigures",
    "MemoryFigures",
    "OverheadFigures",
    "PipelineTiming",
    "StoreFigures",
    "StoreRates",
    "Targets",
    "main",
    "measure_decision",
    "measure_export",
    "measure_long_batches",
    "measure_memory",
    "measure_overhead",
    "measure_overhead_and_memory",
    "measure_store",
    "write_jsonl_source",
]
