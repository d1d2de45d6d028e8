"""Prefect flows over `scaling_core`: batch stages with a scaling task between them.

Names are imported on first use, so that `python -m flows report` does not pay for
importing prefect, and the command line can set Prefect's settings before it loads.
Importing this package changes no setting: a process that uses the flows from Python sets
Prefect's settings itself (`PREFECT_SERVER_ANALYTICS_ENABLED=false` is advised).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.database import StoreDatabase
    from flows.models import ExecutionOptions, PipelineSummary, StageSummary
    from flows.pipeline import batch_pipeline, decide_next_batch_size
    from flows.stage import process_stage
    from flows.triggering import trigger

__all__ = [
    "ExecutionOptions",
    "PipelineSummary",
    "StageSummary",
    "StoreDatabase",
    "batch_pipeline",
    "decide_next_batch_size",
    "process_stage",
    "trigger",
]

_HOMES = {
    "ExecutionOptions": "flows.models",
    "PipelineSummary": "flows.models",
    "StageSummary": "flows.models",
    "StoreDatabase": "flows.database",
    "batch_pipeline": "flows.pipeline",
    "decide_next_batch_size": "flows.pipeline",
    "process_stage": "flows.stage",
    "trigger": "flows.triggering",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
