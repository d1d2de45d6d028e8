"""What a run's batches cost, and the run budget that stops it cleanly before it is passed.

A batch costs

    items x cost_per_item + weight x cost_per_weight_unit

where `weight` is the summed weight of its items (tokens, characters, bytes: see
`ItemSource.weight_field` and the processor module's `item_weight`). Every batch whose
processor was called is charged, a batch that failed whole included: a retried item is
charged again each time it runs. A batch whose process died (a crash) is not charged.

Before each stage the run prices the items that stage would claim (the next pending items
in ledger order, up to its size and within `max_batch_weight`: `store.next_claim`); when
what was spent plus that would pass `max_cost`, the run stops with its items pending
("budget reached after N items, $X; rerun with a higher --max-cost to continue"), and a
rerun with a higher `max_cost` continues it. The price of a stage is known before it runs,
so a single worker never passes the budget; several workers on one run may pass it by what
the stages the others have in flight cost, each having priced its own stage alone.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CostBudget(BaseModel):
    """Prices per item and per weight unit, and the most a run may spend.

    Prices are per one unit: at $0.002 per 1k tokens, `cost_per_weight_unit` is 0.000002.
    The currency is yours; messages write it as dollars.

    Example:
        >>> budget = CostBudget(cost_per_weight_unit=0.002 / 1000, max_cost=5.0)
        >>> budget.batch_cost(items=100, weight=40_000)
        0.08
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cost_per_item: float = Field(
        default=0.0, ge=0.0, description="What one item costs each time a batch runs it (dollars; 0: nothing)."
    )
    cost_per_weight_unit: float = Field(
        default=0.0,
        ge=0.0,
        description=(
            "What one unit of item weight costs each time a batch runs it (dollars per token: "
            "$0.002 per 1k tokens is 0.000002; 0: nothing)."
        ),
    )
    max_cost: float | None = Field(
        default=None,
        gt=0.0,
        description=(
            "Stop the run, resumably, before a stage would take its cost past this (dollars); "
            "rerun with a higher value to continue. Empty: no budget."
        ),
    )

    @property
    def charges(self) -> bool:
        """True when some price is set: batches then record what they cost."""
        return self.cost_per_item > 0.0 or self.cost_per_weight_unit > 0.0

    def batch_cost(self, *, items: int, weight: float | None) -> float | None:
        """items x cost_per_item + weight x cost_per_weight_unit; None when nothing is priced."""
        if not self.charges:
            return None
        return items * self.cost_per_item + (weight or 0.0) * self.cost_per_weight_unit

    def stop_message(self, *, spent: float, next_cost: float, finished: int) -> str | None:
        """The line that stops a run when `spent + next_cost` would pass `max_cost`; None while it would not.

        Example:
            >>> CostBudget(cost_per_item=0.01, max_cost=2.0).stop_message(spent=1.5, next_cost=0.6, finished=150)
            'budget reached after 150 items, $1.50; rerun with a higher --max-cost to continue'
        """
        if self.max_cost is None or spent + next_cost <= self.max_cost:
            return None
        return f"budget reached after {finished} items, {dollars(spent)}; rerun with a higher --max-cost to continue"


def dollars(amount: float) -> str:
    """`$12.35`, or four decimals under a dollar (`$0.0042`), so that small runs show what they spent."""
    return f"${amount:,.2f}" if abs(amount) >= 1.0 else f"${amount:.4f}"
