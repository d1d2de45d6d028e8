"""Run a coroutine so that Ctrl-C and SIGTERM stop it in order, and a second one at once.

The coroutine runs on an event loop in a thread of its own, and the main thread keeps the
signals: the first SIGINT or SIGTERM cancels the coroutine's task, so the flow under it
takes its stage's claims back, marks the run interrupted and returns; a second one calls
`hard_stop` and leaves the process at once (the store's crash recovery then takes the
claims back on the next run). Prefect's own SIGTERM handler is never installed, because
Prefect installs it only from the main thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

_T = TypeVar("_T")

def exit_code(received: signal.Signals) -> int:
    """The exit code after a stop by `received`: 128 + its number, as shells report it (130
    for Ctrl-C, 143 for SIGTERM, which service managers read as a clean stop)."""
    return 128 + int(received)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_GRACE_SECONDS = 10.0
"""How long an interrupted run gets to give its claims back before the command stops waiting.

Giving claims back takes a few statements; what can outlast this is a processor call still
running in a task runner's thread, which nothing can stop from Python."""


class Interrupted(Exception):
    """The run was stopped by a signal (`signal` names it)."""

    def __init__(self, received: signal.Signals) -> None:
        super().__init__(f"interrupted by {received.name}")
        self.signal = received

    @property
    def exit_code(self) -> int:
        return exit_code(self.signal)


class Interruptible:
    """The state shared by the signal handler (main thread) and the run's loop (its thread)."""

    def __init__(self, *, on_stop: Callable[[], None], hard_stop: Callable[[], None]) -> None:
        self.on_stop = on_stop
        self.hard_stop = hard_stop
        self.received: signal.Signals | None = None
        self._received_at = 0.0
        self.stopped = False
        """The run's thread ended (False: the command stopped waiting for it after a signal)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._lock = threading.Lock()

    def run(self, main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run `main()` to its end and return or raise what it did; `Interrupted` after a signal.

        `main()` runs in a copy of this context (context variables set by the caller reach it).
        After a signal, the run gets `STOP_GRACE_SECONDS` to stop; a run still going then is
        left to the process's exit (its thread is a daemon).
        """
        outcome: Future[_T] = Future()

        async def supervised() -> _T:
            with self._lock:
                self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
                if self.received is not None:  # a signal came before the loop was up
                    raise asyncio.CancelledError
            return await main()

        def thread() -> None:
            try:
                outcome.set_result(asyncio.run(supervised()))
            except BaseException as error:  # noqa: BLE001 - handed to the main thread as it is
                outcome.set_exception(error)

        previous = {number: signal.signal(number, self._on_signal) for number in STOP_SIGNALS}
        try:
            context = contextvars.copy_context()
            runner = threading.Thread(target=context.run, args=(thread,), name="batchpilot-run", daemon=True)
            runner.start()
            while runner.is_alive():
                runner.join(0.2)  # a bounded wait, so that the signal handler gets to run
                if self.received is not None and time.monotonic() - self._received_at > STOP_GRACE_SECONDS:
                    break
        finally:
            if self.received is None:  # after a signal, a second one must still stop at once
                for number, handler in previous.items():
                    signal.signal(number, handler)
        self.stopped = not runner.is_alive()
        if self.received is not None and not (outcome.done() and outcome.exception() is None):
            raise Interrupted(self.received)
        return outcome.result()

    def _on_signal(self, number: int, _frame: object) -> None:
        if self.received is not None:
            self.hard_stop()
            os.write(2, b"\nstopped at once; rerun the same command to resume\n")
            os._exit(exit_code(self.received))
        self.on_stop()
        with self._lock:
            self.received = signal.Signals(number)
            self._received_at = time.monotonic()
            if self._loop is not None and self._task is not None:
                self._loop.call_soon_threadsafe(self._task.cancel)
