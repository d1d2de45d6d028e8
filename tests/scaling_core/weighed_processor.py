"""A processor whose module weighs its items: `item_weight` is the length of the item's text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class _Item(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def payload(self) -> dict[str, Any]: ...


def item_weight(item: _Item) -> float:
    """The item's text length; -1 for an empty text (a bad weight) and an error for 'boom'."""
    text = str(item.payload.get("text", ""))
    if text == "boom":
        raise ValueError("no weight for 'boom'")
    return float(len(text)) if text else -1.0


def embed(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Every item succeeds, High."""
    return [{"item_id": item.id, "success": True, "confidence": 0.95} for item in items]
