"""Processors of the fault-injection tests, named by import path (`tests.flows.fault_processors:echo`).

The flows load them in this process (stage chunks run on threads), so a test can arm a
fault for the Nth call with `on_call` and switch a broken processor back to a correct one
with `repair()`; `reset()` clears both. A `python -m flows` process imports a fresh copy,
where only `echo` is of use.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

CONFIDENCE = 0.95


class _Item(Protocol):
    @property
    def id(self) -> str: ...


_lock = threading.Lock()
_calls = 0
_actions: dict[int, Callable[[], None]] = {}
_repaired = False


def reset() -> None:
    """Forget the calls counted, the armed faults and any repair."""
    global _calls, _repaired
    with _lock:
        _calls = 0
        _actions.clear()
        _repaired = False


def on_call(number: int, action: Callable[[], None]) -> None:
    """Run `action` in the processor's thread when it is called for the `number`th time (from 1)."""
    with _lock:
        _actions[number] = action


def repair() -> None:
    """From now on the broken processors below answer every item correctly."""
    global _repaired
    with _lock:
        _repaired = True


def calls() -> int:
    with _lock:
        return _calls


def _count_call() -> int:
    global _calls
    with _lock:
        _calls += 1
        number = _calls
        action = _actions.pop(number, None)
    if action is not None:
        action()
    return number


def _answer(item: _Item) -> dict[str, Any]:
    return {"item_id": item.id, "success": True, "confidence": CONFIDENCE, "output": {"echo": item.id}}


def _correct(items: Sequence[_Item]) -> list[dict[str, Any]] | None:
    """The correct answer once repaired, else None (the caller breaks the contract)."""
    with _lock:
        repaired = _repaired
    return [_answer(item) for item in items] if repaired else None


def echo(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Answers every item with High confidence and `{"echo": id}`; runs any fault armed for this call."""
    _count_call()
    return [_answer(item) for item in items]


def one_result_short(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Leaves out the last item's result."""
    _count_call()
    if (correct := _correct(items)) is not None:
        return correct
    return [_answer(item) for item in items][:-1]


def answers_a_stranger(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Gives the first position a result for an id that is not in the batch."""
    _count_call()
    if (correct := _correct(items)) is not None:
        return correct
    results = [_answer(item) for item in items]
    results[0] = {**results[0], "item_id": f"stranger-{items[0].id}"}
    return results


def confidence_above_one(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Reports a confidence of 1.5 for the first item (a score on another scale, say)."""
    _count_call()
    if (correct := _correct(items)) is not None:
        return correct
    results = [_answer(item) for item in items]
    results[0] = {**results[0], "confidence": 1.5}
    return results


def raises_on_every_call(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Raises whatever it is given, like a model endpoint that is down."""
    _count_call()
    if (correct := _correct(items)) is not None:
        return correct
    raise RuntimeError(f"the model endpoint is unavailable ({len(items)} items not processed)")


def returns_a_mapping(items: Sequence[_Item]) -> Any:
    """Returns `{id: result}` instead of a list of results."""
    _count_call()
    if (correct := _correct(items)) is not None:
        return correct
    return {item.id: _answer(item) for item in items}


def fails_every_item(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Reports every item as failed, with an error naming it."""
    _count_call()
    return [{"item_id": item.id, "success": False, "error": f"cannot tag {item.id}"} for item in items]


def drops_an_item_from_its_input_once(items: list[Any]) -> list[dict[str, Any]]:
    """On its first call, removes the last item from the list it was given and answers the rest.

    A processor that filters its input in place (invalid rows, duplicates) does this; the
    batch it was handed still holds the removed item, which gets no result.
    """
    if _count_call() == 1:
        items.pop()
    return [_answer(item) for item in items]


POISON_ITEM = "i3"
"""The item on which `kills_its_process_on_poison` takes its process down."""


def kills_its_process_on_poison(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Answers like `echo`, but kills its own process (SIGKILL, as an out-of-memory kill does) on `POISON_ITEM`."""
    if any(item.id == POISON_ITEM for item in items):
        os.kill(os.getpid(), signal.SIGKILL)
    return [_answer(item) for item in items]


BROKEN_FLAG = "FAULT_BROKEN_FLAG"
"""Environment variable naming a file: while it exists, `kills_its_process_while_broken` is broken."""


def kills_its_process_while_broken(items: Sequence[_Item]) -> list[dict[str, Any]]:
    """Kills its own process (SIGKILL) on every call while the file named by `BROKEN_FLAG` exists; then answers like `echo`."""
    flag = os.environ.get(BROKEN_FLAG)
    if flag and os.path.exists(flag):
        os.kill(os.getpid(), signal.SIGKILL)
    return [_answer(item) for item in items]
