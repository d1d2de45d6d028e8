"""Reports of stored runs, formatted for artifacts and terminals (no Prefect needed).

The store's `run_stages` and `run_report` read the data; this module only shapes it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from scaling_core import store
from scaling_core.budget import dollars


def stage_rows(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """One row per stage of the run: size, items, quality, time, and the decision after it."""
    with store.open_session(engine) as session:
        return [_stage_row(stage) for stage in store.run_stages(session, run_id)]


def _stage_row(stage: store.StageRow) -> dict[str, Any]:
    return {
        "stage": stage.stage,
        "batch_size": stage.batch_size,
        "items": stage.items,
        "successful": stage.successful,
        "failed": stage.failed,
        "high_confidence_rate": round(stage.high_share, 4),
        "seconds": round(stage.seconds, 4),
        "weight": stage.weight,
        "cost": stage.cost,
        "status": stage.status.value,
        "action": stage.action,
        "next_batch_size": stage.next_batch_size,
        "reason": stage.reason,
    }


def artifact_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stage rows narrowed to what fits the UI's artifact column; the reasons go in the summary.

    A run that weighs its items shows each stage's weight, and a priced run its cost.
    """
    weighed, priced = _shown_columns(rows)
    narrow = []
    for row in rows:
        cells: dict[str, Any] = {
            "stage": row["stage"],
            "size": row["batch_size"],
            "items": row["items"],
        }
        if weighed:
            cells["weight"] = _number(row["weight"])
        cells |= {"High share": round(row["high_confidence_rate"], 2), "seconds": round(row["seconds"], 2)}
        if priced:
            cells["cost"] = _amount(row["cost"])
        cells["action"] = row["action"] or row["status"]
        narrow.append(cells)
    return narrow


def _shown_columns(rows: list[dict[str, Any]]) -> tuple[bool, bool]:
    """Whether any stage has a weight, and whether any has a cost."""
    return any(row.get("weight") is not None for row in rows), any(row.get("cost") is not None for row in rows)


def _number(value: float | None) -> str:
    """A weight as a short cell: `12,345`, or `-` when it has none."""
    return "-" if value is None else f"{value:,.0f}"


def _amount(value: float | None) -> str:
    """A cost as a short cell: `$0.0123`, or `-` when it has none."""
    return "-" if value is None else dollars(value)


def size_changes(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per stage after which the batch size changed, with the manager's reason.

    Example:
        >>> size_changes([{"stage": 3, "batch_size": 50, "next_batch_size": 75,
        ...                "reason": "far from every limit: toward the maximum size 200"}])
        ['Stage 3: grew from 50 to 75. Far from every limit: toward the maximum size 200.']
    """
    changes = []
    for row in rows:
        before, after = row["batch_size"], row["next_batch_size"]
        if after is None or after == before:
            continue
        verb = "grew" if after > before else "shrank"
        reason = (row["reason"] or row["status"]).strip().rstrip(".")
        changes.append(f"Stage {row['stage']}: {verb} from {before} to {after}. {reason[:1].upper()}{reason[1:]}.")
    return changes


def run_report(engine: Engine, run_id: str | None = None, *, pipeline: str | None = None) -> dict[str, Any]:
    """`{"run": totals, "stages": rows}` for `run_id`, else for the latest run of `pipeline`,
    else for the latest run in the store.

    Raises `LookupError` when there is no such run.
    """
    with store.open_session(engine) as session:
        report = store.run_report(session, run_id, pipeline=pipeline)
    return {
        "run": {
            "run_id": report.run_id,
            "pipeline": report.pipeline,
            "status": report.status.value,
            "source": report.source,
            "processor": report.processor,
            "items": report.items.total,
            "done": report.items.done,
            "failed": report.items.failed,
            "pending": report.items.unfinished,
            "stages": len(report.stages),
            "weight": report.weight,
            "cost": report.cost,
        },
        "stages": [_stage_row(stage) for stage in report.stages],
    }


def format_stage_table(rows: list[dict[str, Any]], *, reason_width: int | None = 70) -> str:
    """A plain-text table of stage rows for terminals; reasons cut at `reason_width` (None: in full).

    A weight column follows the items when a stage has a weight, and a cost column the
    seconds when a stage has a cost.
    """
    weighed, priced = _shown_columns(rows)
    header = (
        f"{'stage':>5} {'size':>5} {'items':>5}" + (f" {'weight':>9}" if weighed else "")
        + f" {'ok':>5} {'High':>5} {'secs':>6}" + (f" {'cost':>9}" if priced else "")
        + f" {'decision':>9} {'next':>5}  reason"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        reason = row["reason"] or row["status"]
        if reason_width is not None and len(reason) > reason_width:
            reason = reason[: reason_width - 3] + "..."
        lines.append(
            f"{row['stage']:>5} {row['batch_size']:>5} {row['items']:>5}"
            + (f" {_number(row['weight']):>9}" if weighed else "")
            + f" {row['successful']:>5} {row['high_confidence_rate']:>5.2f} {row['seconds']:>6.2f}"
            + (f" {_amount(row['cost']):>9}" if priced else "")
            + f" {row['action'] or '-':>9} {row['next_batch_size'] or '-':>5}  {reason}"
        )
    return "\n".join(lines)
