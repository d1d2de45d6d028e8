"""A processor module whose `item_weight` is not a function."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

item_weight = 12


def embed(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"item_id": item.id, "success": True, "confidence": 0.95} for item in items]
