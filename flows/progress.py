"""What a running pipeline tells an observer in the same process: the run it opened, each stage.

The command line draws its progress bar from these events; a program that calls
`batch_pipeline` from Python can do the same:

    def show(event: RunEvent) -> None:
        print(event)

    with observing(show):
        asyncio.run(batch_pipeline(source=ItemSource(path="items.csv"), processor="mymodule:process"))

The observer is called on the flow's event loop between two stages: it must return quickly.
It is held in a context variable, so it reaches the flow run and its stages (which run in the
caller's context) and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunOpened:
    """The run was resumed or registered, and its items are in the ledger."""

    run_id: str
    pipeline: str
    items: int
    finished: int
    """Items finished before this session (a resumed run)."""
    batch_size: int
    resumed: bool
    why: str = ""
    """Where the first size comes from: a warm start from a learned size, or the configuration."""


@dataclass(frozen=True, slots=True)
class StageDone:
    """A stage finished and the scaling task chose the next size."""

    run_id: str
    stage: int
    batch_size: int
    items: int
    successful: int
    high_share: float
    seconds: float
    finished: int
    """Items of the run finished so far."""
    total: int
    next_batch_size: int
    reason: str
    error: str | None = None
    """Why the stage failed whole, when it did."""


@dataclass(frozen=True, slots=True)
class RunInterrupted:
    """The run stopped on Ctrl-C, SIGTERM or a cancellation; its claims went back to pending."""

    run_id: str
    finished: int
    total: int


RunEvent = RunOpened | StageDone | RunInterrupted
Observer = Callable[[RunEvent], None]

_observer: ContextVar[Observer | None] = ContextVar("batchpilot_observer", default=None)


@contextmanager
def observing(observer: Observer) -> Iterator[None]:
    """Send the events of pipeline runs started in this block (in this context) to `observer`."""
    token = _observer.set(observer)
    try:
        yield
    finally:
        _observer.reset(token)


def notify(event: RunEvent) -> None:
    """Hand `event` to the observer, if any. An observer's error never stops a run."""
    observer = _observer.get()
    if observer is None:
        return
    try:
        observer(event)
    except Exception:  # showing progress is not worth a failed run
        _logger.warning("The run's observer failed on %s", type(event).__name__, exc_info=True)
