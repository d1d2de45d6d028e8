"""Typed parameters and results of the flows (what the Prefect UI renders as a form)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.fields import FieldInfo

from scaling_core import BatchResult
from scaling_core.budget import dollars
from scaling_core.processing import IMPORT_PATH_PATTERN
from scaling_core import store

DEFAULT_PROCESSOR = "scaling_core.samples.simulated_llm:simulated_llm"
"""The bundled simulated model: what the demo and the scheduled deployment run by default."""
DEFAULT_PIPELINE = "default"

PIPELINE_FLOW = "batch-pipeline"
"""The pipeline flow's name, the first half of each deployment's full name."""
SCHEDULED_DEPLOYMENT = "nightly"
ON_DEMAND_DEPLOYMENT = "on-demand"
DEFAULT_DEPLOYMENT = f"{PIPELINE_FLOW}/{ON_DEMAND_DEPLOYMENT}"
"""The deployment without a schedule that `python -m deployments.serve` and prefect.yaml define."""

MAX_CHANGES_SHOWN = 30
"""Size changes listed in a run's summary; the report shows every stage."""

RUN_TAG = "batchpilot"
"""The tag of every pipeline and stage run, beside `pipeline:<name>`."""


def run_tags(pipeline: str) -> list[str]:
    """The tags of a pipeline's runs and stage runs: filter the UI's Runs page by them."""
    return [RUN_TAG, f"pipeline:{pipeline}"]


def titled(title: str) -> FieldInfo:
    """A flow parameter's label in the UI's form, for `Annotated[type, titled("Warm Start")]`.

    Prefect titles a flow's parameters with their Python names ("warm_start"); a title in
    `json_schema_extra` is written over that one. Fields of nested models get pydantic's
    Title Case titles without help.
    """
    return Field(json_schema_extra={"title": title})


ProcessorPath = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        pattern=IMPORT_PATH_PATTERN,
    ),
    Field(
        description="Import path of the batch processor, `package.module:function`.",
        examples=[DEFAULT_PROCESSOR, "scaling_core.samples.enhancer:enhance_products"],
    ),
]


class ExecutionOptions(BaseModel):
    """How stages run: parallelism, retries of items, timeouts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parallelism: int = Field(
        default=1, ge=1, le=256, description="Chunks of a batch run concurrently on the flow's task runner."
    )
    max_attempts: int = Field(
        default=3, ge=1, le=100, description="Attempts per item before it is failed for good."
    )
    stage_timeout_seconds: float = Field(
        default=600.0, gt=0, description="A stage whose processor runs longer fails whole; its items go back."
    )
    max_failed_stages_in_a_row: int = Field(
        default=8, ge=1, description="Stop the run (resumable) after this many whole-stage failures in a row."
    )
    max_timed_out_stages_in_a_row: int = Field(
        default=2,
        ge=1,
        description="Stop the run (resumable) after this many stages in a row outlived the stage timeout.",
    )
    dask_address: str | None = Field(
        default=None,
        description="Run stage chunks on the Dask cluster at this scheduler address (tcp://host:8786).",
    )
    dask_workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Run stage chunks on a local Dask cluster of this many worker processes (0: no Dask).",
    )
    isolate_processor: bool = Field(
        default=False,
        description=(
            "Run the processor in a child process: a crash (segfault, out-of-memory kill) costs one batch, "
            "not the run, and a processor past the stage timeout is killed. Needs parallelism 1, no Dask."
        ),
    )

    @model_validator(mode="after")
    def _one_cluster(self) -> ExecutionOptions:
        if self.dask_address and self.dask_workers:
            raise ValueError("set dask_address (an existing cluster) or dask_workers (a local one), not both")
        if self.isolate_processor and (self.parallelism > 1 or self.uses_dask):
            raise ValueError(
                "isolate_processor runs the processor in one child process: it needs parallelism 1 and no Dask "
                f"(got parallelism {self.parallelism}{', Dask' if self.uses_dask else ''})"
            )
        return self

    @property
    def uses_dask(self) -> bool:
        return bool(self.dask_address or self.dask_workers)


class StageSummary(BaseModel):
    """What one stage did."""

    stage: int
    batch_id: int
    batch_size: int
    items: int = 0
    successful: int = 0
    failed: int = 0
    high: int = 0
    seconds: float = 0.0
    failed_whole: bool = False
    timed_out: bool = False
    """The stage failed whole because its processor outlived the stage timeout."""
    crashed: bool = False
    """The processor's process died: each item counted an attempt and is a crash suspect."""
    crashed_for_good: int = 0
    """Of a crashed stage's items, those failed for good: alone, with their attempts used up."""
    suspects_of: int | None = None
    """A crash-isolation stage: the crashed batch whose suspects it claimed."""
    error: str | None = None
    calls: int = 0
    """Processor calls the stage made that were answered (its chunks), refused ones aside."""
    rate_limited_calls: int = 0
    """Calls refused for the provider's rate limit (429) and made again with the same items."""
    rate_wait: float = 0.0
    """Seconds the stage waited on those refusals (not part of `seconds`)."""

    @classmethod
    def of(
        cls,
        stage: int,
        batch_id: int,
        result: BatchResult,
        *,
        timed_out: bool = False,
        suspects_of: int | None = None,
        calls: int = 0,
    ) -> StageSummary:
        return cls(
            calls=calls,
            rate_limited_calls=result.rate_limited_calls,
            rate_wait=result.rate_wait,
            stage=stage,
            batch_id=batch_id,
            suspects_of=suspects_of,
            batch_size=result.asked_size,
            items=result.total_items,
            successful=result.successful_items,
            failed=result.failed_items,
            high=result.high_count,
            seconds=result.processing_time,
            failed_whole=result.failed_whole,
            timed_out=timed_out,
            error=result.error,
        )

    @property
    def high_share(self) -> float:
        return self.high / self.items if self.items else 0.0


class PipelineSummary(BaseModel):
    """The end of a run: items done and failed for good, sizes used, time, quality."""

    run_id: str
    pipeline: str
    items: int
    done: int
    failed: int
    pending: int
    in_progress: int = Field(default=0, description="Items other workers of the run were still processing.")
    completed_here: bool = Field(default=False, description="This worker completed the run.")
    stages: int
    failed_stages: int
    sizes_used: list[int]
    high_share: float = Field(description="High items / finished items.")
    seconds: float
    weight: float | None = Field(default=None, description="Summed weight of the stages' items, retries included.")
    cost: float | None = Field(default=None, description="What the run's stages cost so far, retries included.")

    @classmethod
    def of(cls, totals: store.RunTotals, *, seconds: float, completed_here: bool = False) -> PipelineSummary:
        """The summary of a run from the store's totals, and the seconds its stage loop took."""
        return cls(
            run_id=totals.run_id,
            pipeline=totals.pipeline,
            items=totals.items.total,
            done=totals.items.done,
            failed=totals.items.failed,
            pending=totals.items.pending,
            in_progress=totals.items.processing,
            completed_here=completed_here,
            stages=totals.stages,
            failed_stages=totals.failed_stages,
            sizes_used=totals.sizes_used,
            high_share=totals.high_share,
            seconds=seconds,
            weight=totals.weight,
            cost=totals.cost,
        )

    def markdown(self, changes: list[str], *, chart_uri: str | None = None) -> str:
        """The run's story for its summary artifact: totals, the chart, why the size changed.

        Args:
            changes: one sentence per stage after which the size changed (`flows.report.size_changes`).
            chart_uri: the stage chart as a `data:` URI (`flows.chart.svg_data_uri`), shown as an image.
        """
        extra_heads = (" weight |" if self.weight is not None else "") + (" cost |" if self.cost is not None else "")
        extra_cells = (f" {self.weight:,.0f} |" if self.weight is not None else "") + (
            f" {dollars(self.cost)} |" if self.cost is not None else ""
        )
        lines = [
            f"# Pipeline `{self.pipeline}`",
            "",
            f"Run `{self.run_id}`: {self.done} of {self.items} items done in {self.stages} stages "
            f"and {self.seconds:.1f} s" + (f", for {dollars(self.cost)}." if self.cost is not None else "."),
            "",
            "| items | done | failed for good | pending | stages | failed stages | High share | seconds |"
            + extra_heads,
            "|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * extra_heads.count("|"),
            f"| {self.items} | {self.done} | {self.failed} | {self.pending} | {self.stages} "
            f"| {self.failed_stages} | {self.high_share:.3f} | {self.seconds:.1f} |" + extra_cells,
            "",
        ]
        if chart_uri:
            lines += [f"![Batch size, High share and items per second per stage]({chart_uri})", ""]
        lines += ["## Why the size changed", ""]
        shown = changes[:MAX_CHANGES_SHOWN]
        lines += [f"- {change}" for change in shown] or ["The batch size never changed."]
        if len(changes) > len(shown):
            lines += [
                "",
                f"... and {len(changes) - len(shown)} more: `python -m flows report --run-id {self.run_id}`.",
            ]
        return "\n".join(lines)


def artifact_key(pipeline: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", pipeline.lower()).strip("-")
    return key or "pipeline"


