"""Reports of stored runs, read straight from the store (no Prefect needed)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from scaling_core import store


def stage_rows(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """One row per stage of the run: size, items, quality, time, and the decision after it."""
    with store.open_session(engine) as session:
        batches = store.run_batches(session, run_id)
        decisions = {d.batch_id: d for d in store.run_decisions(session, run_id)}
    rows = []
    for batch in batches:
        decision = decisions.get(batch.id)
        rows.append(
            {
                "stage": batch.stage,
                "batch_size": batch.batch_size,
                "items": batch.total_items,
                "successful": batch.successful_items,
                "failed": batch.failed_items,
                "high_confidence_rate": round(batch.high / batch.total_items, 4) if batch.total_items else 0.0,
                "seconds": round(batch.seconds, 4),
                "status": batch.status.value,
                "action": decision.action if decision else None,
                "next_batch_size": decision.new_size if decision else None,
                "reason": decision.reason if decision else None,
            }
        )
    return rows


def run_report(engine: Engine, run_id: str | None = None) -> dict[str, Any]:
    """`{"run": totals, "stages": rows}` for `run_id`, or for the latest run in the store."""
    with store.open_session(engine) as session:
        run = store.get_run(session, run_id) if run_id else store.latest_run(session)
        if run is None:
            raise LookupError(f"no run {run_id!r} in the store" if run_id else "the store holds no run yet")
        counts = store.count_items(session, run.run_id)
    rows = stage_rows(engine, run.run_id)
    return {
        "run": {
            "run_id": run.run_id,
            "pipeline": run.pipeline,
            "status": run.status.value,
            "source": run.source,
            "processor": run.processor,
            "items": sum(counts.values()),
            "done": counts[store.ItemStatus.DONE],
            "failed": counts[store.ItemStatus.FAILED],
            "pending": counts[store.ItemStatus.PENDING] + counts[store.ItemStatus.PROCESSING],
            "stages": len(rows),
        },
        "stages": rows,
    }


def format_stage_table(rows: list[dict[str, Any]], *, reason_width: int = 70) -> str:
    """A plain-text table of stage rows for terminals."""
    header = f"{'stage':>5} {'size':>5} {'items':>5} {'ok':>5} {'High':>5} {'secs':>6} {'decision':>9} {'next':>5}  reason"
    lines = [header, "-" * len(header)]
    for row in rows:
        reason = (row["reason"] or row["status"])[:reason_width]
        lines.append(
            f"{row['stage']:>5} {row['batch_size']:>5} {row['items']:>5} {row['successful']:>5} "
            f"{row['high_confidence_rate']:>5.2f} {row['seconds']:>6.2f} {row['action'] or '-':>9} "
            f"{row['next_batch_size'] or '-':>5}  {reason}"
        )
    return "\n".join(lines)
