"""Processors the flow tests name by import path, e.g. `tests.flows.processors:fails_some_items`.

The flows load them with `load_processor`, in this process (stage chunks run on threads), so
the module-level records below see every call; `reset()` clears them between tests.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from scaling_core.samples.simulated_llm import SimulatedLLM

ALWAYS_FAILING = frozenset({"i3", "i17"})
"""Ids that `fails_some_items` fails on every attempt."""
FAILS_ONCE = "i5"
"""The id that `fails_some_items` fails on its first attempt only."""
WHOLE_FAILURE_ABOVE = 20
"""`fails_whole_above_20` raises for calls with more items than this."""
HANG_ABOVE = 5
"""`hangs_above_5` hangs on calls with more items than this."""
HANG_SECONDS = 8.0
SLOW_SECONDS_ENV = "BATCHPILOT_TEST_SLOW_SECONDS"
"""Seconds `slow_after_first_stage` sleeps in every call after its first (0 when unset)."""

knee_at_40 = SimulatedLLM(time_scale=0.0, knee=40, slope=0.01, item_failure_rate=0.0)
"""High share 0.95 up to 40 items, 0.90 at 45, 0.75 at 60: the best size lies near 45."""


class _Item(Protocol):
    @property
    def id(self) -> str: ...


calls: list[list[str]] = []
"""Item ids of every call of the recording processors, in call order."""
_failed_once: set[str] = set()
_lock = threading.Lock()
_slow_calls = itertools.count()


def reset() -> None:
    with _lock:
        calls.clear()
        _failed_once.clear()


def _answer(item: _Item) -> dict[str, Any]:
    return {"item_id": item.id, "success": True, "confidence": 0.95, "output": {"echo": item.id}}


def _record(items: Sequence[_Item]) -> None:
    with _lock:
        calls.append([item.id for item in items])


def fails_some_items(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Fails `ALWAYS_FAILING` every time and `FAILS_ONCE` the first time; answers the rest."""
    _record(items)
    results = []
    for item in items:
        with _lock:
            first_time = item.id == FAILS_ONCE and item.id not in _failed_once
            if first_time:
                _failed_once.add(item.id)
        if item.id in ALWAYS_FAILING or first_time:
            results.append({"item_id": item.id, "success": False, "error": f"cannot process {item.id}"})
        else:
            results.append(_answer(item))
    return results


def fails_whole_above_20(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Raises for the whole call above `WHOLE_FAILURE_ABOVE` items, like an overflowing context."""
    _record(items)
    if len(items) > WHOLE_FAILURE_ABOVE:
        raise RuntimeError(f"overloaded: {len(items)} items exceed {WHOLE_FAILURE_ABOVE}")
    return [_answer(item) for item in items]


def hangs_above_5(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Hangs for `HANG_SECONDS` on calls above `HANG_ABOVE` items, else answers at once."""
    _record(items)
    if len(items) > HANG_ABOVE:
        time.sleep(HANG_SECONDS)
    return [_answer(item) for item in items]


def slow_after_first_stage(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Answers its first call in a process at once and sleeps before every later one.

    A test sets `BATCHPILOT_TEST_SLOW_SECONDS` on a process it kills during its second stage.
    """
    if next(_slow_calls) > 0:
        time.sleep(float(os.environ.get(SLOW_SECONDS_ENV, "0")))
    return [_answer(item) for item in items]


def unsure_of_everything(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Medium confidence (0.6) for every item: no batch size meets a High-share target."""
    return [{"item_id": item.id, "success": True, "confidence": 0.6} for item in items]


INTERRUPTIBLE_SECONDS = 1.0
"""How long every call of `slow_calls` takes: long enough for a signal to land mid-stage."""


def slow_calls(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Answers every item after `INTERRUPTIBLE_SECONDS`: a stage is in flight most of the time."""
    time.sleep(INTERRUPTIBLE_SECONDS)
    return [_answer(item) for item in items]


SECONDS_PER_TOKEN = 0.0004
"""What each token of an item costs `reads_tokens` (plus `SECONDS_PER_CALL` a call)."""
SECONDS_PER_CALL = 0.05


def reads_tokens(items: Sequence[Any]) -> list[dict[str, Any]]:
    """Sleeps in proportion to the items' tokens (their weight), as a model reading them does."""
    time.sleep(SECONDS_PER_CALL + SECONDS_PER_TOKEN * sum(item.weight or 0.0 for item in items))
    return [_answer(item) for item in items]
