"""Processors of the performance benchmark, named by import path (`bench._perf_processors:...`).

Each answers every item as a High-confidence success, so batch sizes are decided by time
alone, and records how long its own calls took (`calls`), so that the benchmark can
subtract the processor's time from a stage's wall time exactly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["calls", "reset", "sleep_briefly", "sleep_five_seconds", "sleep_one_second"]


class _Item(Protocol):
    @property
    def id(self) -> str: ...


calls: list[tuple[int, float, float]] = []
"""(items, wall-clock start, wall-clock end) of every call in this process, in call order."""
_lock = threading.Lock()


def reset() -> None:
    with _lock:
        calls.clear()


def _sleep_and_answer(items: Sequence[_Item], seconds: float) -> list[dict[str, Any]]:
    started = time.time()
    time.sleep(seconds)
    results = [{"item_id": item.id, "success": True, "confidence": 0.95} for item in items]
    with _lock:
        calls.append((len(items), started, time.time()))
    return results


def sleep_one_second(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """A model call with a fixed cost of 1.0 s whatever the batch size."""
    return _sleep_and_answer(items, 1.0)


def sleep_five_seconds(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """A slow model call: a fixed 5.0 s whatever the batch size."""
    return _sleep_and_answer(items, 5.0)


def sleep_briefly(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """The same with 0.05 s, for quick checks of the benchmark itself."""
    return _sleep_and_answer(items, 0.05)
