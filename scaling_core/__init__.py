"""Adaptive batch sizing, independent of any workflow engine.

The unified `ScalingManager` decides each next batch size from the batch history; the
controller, ledger and tracker run it over a SQLModel store. This package never imports
prefect: the Prefect flows in `flows` are a thin layer over it.
"""

from scaling_core.budget import CostBudget
from scaling_core.config import ScalingConfig
from scaling_core.controller import (
    BatchManager,
    ClaimedBatch,
    DynamicScalingController,
    ProgressTracker,
    Trend,
)
from scaling_core.manager import PerformanceSnapshot, ScalingManager
from scaling_core.processing import (
    ProcessorContractError,
    ProcessorError,
    load_item_weight,
    load_processor,
    normalize_results,
    run_processor,
    summarize_batch,
)
from scaling_core.rates import RateLimited, rate_limited_from, translate_rate_limits
from scaling_core.results import (
    BatchResult,
    ConfidenceLevel,
    ItemResult,
    ScalingAction,
    ScalingDecision,
)
from scaling_core.settings import DATABASE_URL_ENV, default_database_url
from scaling_core.sources import Item, ItemSource, SourceError, iter_items, validate_source
from scaling_core.store import PipelineStore, create_schema, iter_results, make_engine, redact_url

__all__ = [
    "DATABASE_URL_ENV",
    "BatchManager",
    "BatchResult",
    "ClaimedBatch",
    "ConfidenceLevel",
    "CostBudget",
    "DynamicScalingController",
    "Item",
    "ItemResult",
    "ItemSource",
    "PerformanceSnapshot",
    "PipelineStore",
    "ProcessorContractError",
    "ProcessorError",
    "ProgressTracker",
    "RateLimited",
    "ScalingAction",
    "ScalingConfig",
    "ScalingDecision",
    "ScalingManager",
    "SourceError",
    "Trend",
    "create_schema",
    "default_database_url",
    "iter_items",
    "iter_results",
    "load_item_weight",
    "load_processor",
    "make_engine",
    "normalize_results",
    "rate_limited_from",
    "redact_url",
    "run_processor",
    "summarize_batch",
    "translate_rate_limits",
    "validate_source",
]
