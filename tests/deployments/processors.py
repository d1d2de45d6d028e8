"""Processors the deployment tests name by import path, e.g. `tests.deployments.processors:recording`.

They run in other processes than the test (flow runs of the served deployments, Dask
workers), so they report through what outlives them: a log file, or each item's output.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

PROCESSED_LOG_ENV = "BATCHPILOT_TEST_PROCESSED_LOG"
"""File that `recording` appends one `pid item_id` line to for every item it processes."""
TOGETHER = 2
"""`recording` waits until this many processes have called it before it processes anything."""
TOGETHER_TIMEOUT_SECONDS = 30.0
CALL_SECONDS = 0.2
"""Seconds `on_dask_worker` sleeps in every call, so that the chunks of a stage overlap."""


class _Item(Protocol):
    @property
    def id(self) -> str: ...


def _answer(item: _Item, output: dict[str, Any]) -> dict[str, Any]:
    return {"item_id": item.id, "success": True, "confidence": 0.95, "output": output}


def _append(path: str, text: str) -> None:
    # One write with O_APPEND: lines of concurrent processes never interleave or overwrite.
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)


def arrivals_path(processed_log: str | os.PathLike[str]) -> str:
    """The file where `recording` notes the processes that called it."""
    return f"{os.fspath(processed_log)}.arrivals"


def recording(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Succeed on every item and append `pid item_id` lines to `$BATCHPILOT_TEST_PROCESSED_LOG`.

    A call waits (up to `TOGETHER_TIMEOUT_SECONDS`) until `TOGETHER` processes have called
    it, so only the first calls wait, each process holding the batch it claimed: the flow
    runs sharing a run then overlap for sure, however late the second one starts.
    """
    log = os.environ[PROCESSED_LOG_ENV]
    pid = os.getpid()
    arrivals = arrivals_path(log)
    _append(arrivals, f"{pid}\n")
    deadline = time.monotonic() + TOGETHER_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        with open(arrivals, encoding="utf-8") as file:
            if len(set(file.read().split())) >= TOGETHER:
                break
        time.sleep(0.05)
    _append(log, "".join(f"{pid} {item.id}\n" for item in items))
    return [_answer(item, {"pid": pid}) for item in items]


def on_dask_worker(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Succeed on every item; its output names the process that ran it.

    It sleeps `CALL_SECONDS` first, so that the chunks of a stage overlap and the scheduler
    hands them to different workers.
    """
    time.sleep(CALL_SECONDS)
    pid = os.getpid()
    return [_answer(item, {"pid": pid}) for item in items]


SLOW_CALL_SECONDS = 1.0
"""How long every call of `slow` takes: long enough for a cancellation to land mid-stage."""


def slow(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Answers every item after `SLOW_CALL_SECONDS`."""
    time.sleep(SLOW_CALL_SECONDS)
    return [_answer(item, {"pid": os.getpid()}) for item in items]
