"""An example processor: classify support tickets (`tickets.csv`, 200 rows) by keyword.

Run it from the repository's root, where `docs.examples.tickets` can be imported:

    python -m flows run --source docs/examples/tickets.csv --processor docs.examples.tickets:classify

A processor takes a list of items (each with `.id` and `.payload`, the row's other columns)
and returns one result per item, in order. It is called at least once per item: after a
crash the items of the interrupted stage are processed again, so it should be idempotent
(the same item gives the same answer, and calling twice does no harm).
"""

from __future__ import annotations

import asyncio
from typing import Any

CATEGORIES: dict[str, tuple[str, ...]] = {
    "billing": ("charge", "charged", "invoice", "refund", "price", "card"),
    "login": ("log in", "login", "password", "locked", "code"),
    "shipping": ("parcel", "shipped", "delivery", "tracking", "address", "box", "package"),
    "bug": ("crash", "error", "button", "version", "app"),
}
"""Keywords per category; a ticket that matches none is 'other'."""


def classify(items: list[Any]) -> list[dict[str, Any]]:
    """One result per ticket: its category, with a confidence that grows with the keywords found."""
    return [_classify(item) for item in items]


async def classify_async(items: list[Any]) -> list[dict[str, Any]]:
    """`classify` as an `async def` processor, as one that awaits a remote service would be written."""
    await asyncio.sleep(0)
    return classify(items)


def _classify(item: Any) -> dict[str, Any]:
    text = f"{item.payload['subject']} {item.payload['body']}".lower()
    hits = {name: sum(word in text for word in words) for name, words in CATEGORIES.items()}
    category, found = max(hits.items(), key=lambda hit: hit[1])
    if found == 0:
        return {"item_id": item.id, "success": True, "confidence": 0.6, "output": {"category": "other"}}
    confidence = min(0.99, 0.75 + 0.1 * found)
    return {"item_id": item.id, "success": True, "confidence": confidence, "output": {"category": category}}
