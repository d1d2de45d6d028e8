"""A processor run in a child process of its own, so that a crash costs one batch, not the run.

A processor that takes its process down (a segfault in native code, an out-of-memory kill,
`os.kill(os.getpid(), SIGKILL)`) kills whatever runs it. `ProcessorProcess` runs it in a
child process, kept from call to call: when the child dies, the call raises
`ProcessorCrashed` and the next call starts a new child. A call that outlives its timeout
kills the child (a thread cannot be killed), and the next call starts a new one.

Children are forked from a fork server (spawned where there is none): never from the
parent itself, whose threads (Prefect's, the database pool's) a fork would copy mid-work.
The child imports the processor by its `package.module:function` path with the parent's
`sys.path`.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from scaling_core.config import ScalingConfig
from scaling_core.processing import ItemLike, load_processor, run_processor
from scaling_core.rates import rate_limited_from
from scaling_core.results import ItemResult
from scaling_core.sources import Item

__all__ = ["ProcessorCrashed", "ProcessorProcess"]

_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class ProcessorCrashed(RuntimeError):
    """The child process running the processor died during a call (a signal or an exit)."""


class ProcessorProcess:
    """Runs the processor named `processor` in a child process, one call at a time.

    Args:
        processor: the processor's import path, `package.module:function`.

    Example:
        >>> child = ProcessorProcess("scaling_core.samples.enhancer:enhance_products")
        >>> results = child.run(items, ScalingConfig(), timeout=60)
        >>> child.close()
    """

    STOP_GRACE = 5.0
    """Seconds a child is given to exit when closed, before it is killed."""

    def __init__(self, processor: str) -> None:
        self.processor = processor
        self._context = multiprocessing.get_context(_START_METHOD)
        if _START_METHOD == "forkserver":
            # The server imports this module (and with it the package) once; each child is
            # then a fork of it, ready in a fraction of a second instead of seconds of imports.
            # The setting is the process's; it only matters until the server starts.
            self._context.set_forkserver_preload([__name__])
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None

    def run(self, items: Sequence[ItemLike], config: ScalingConfig, *, timeout: float) -> list[ItemResult]:
        """The processor's checked results for `items`, computed in the child.

        Raises:
            ProcessorCrashed: the child died during the call (the next call starts another).
            TimeoutError: no answer within `timeout` seconds; the child was killed.
            Exception: what the processor (or the contract check) raised in the child.
        """
        request = ([(item.id, item.payload, getattr(item, "weight", None)) for item in items], config)
        with self._lock:
            connection = self._connection if self._alive() else self._start()
            try:
                connection.send(request)
                answered = connection.poll(timeout)
            except (BrokenPipeError, EOFError, ConnectionResetError):
                raise self._crashed() from None
            if not answered:
                self._stop(kill=True)
                raise TimeoutError(f"the processor did not answer within {timeout:g} s; its process was killed")
            try:
                kind, value = connection.recv()
            except (EOFError, ConnectionResetError):
                raise self._crashed() from None
        if kind == "error":
            raise value
        return [ItemResult.model_validate(result) for result in value]

    def close(self) -> None:
        """Stop the child (it is started again by the next `run`)."""
        with self._lock:
            self._stop(kill=False)

    def _alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def _start(self) -> Connection:
        self._stop(kill=True)
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(child_end, self.processor, list(sys.path)), name="batchpilot-processor", daemon=True
        )
        process.start()
        # The parent keeps only its end: the child's death then reads as end-of-file.
        child_end.close()
        self._process, self._connection = process, parent_end
        return parent_end

    def _crashed(self) -> ProcessorCrashed:
        process = self._process
        code = None
        if process is not None:
            process.join(self.STOP_GRACE)
            code = process.exitcode
        self._stop(kill=True)
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        return ProcessorCrashed(f"the processor's process died ({how})")

    def _stop(self, *, kill: bool) -> None:
        process, self._process = self._process, None
        connection, self._connection = self._connection, None
        if connection is not None:
            if not kill:
                try:
                    connection.send(None)
                except OSError:
                    pass
            connection.close()
        if process is None:
            return
        if kill:
            process.kill()
        process.join(self.STOP_GRACE)
        if process.is_alive():
            process.kill()
            process.join()


def _serve(connection: Connection, processor: str, path: list[str]) -> None:
    """The child: answer requests until told to stop or the parent goes away."""
    sys.path[:] = path
    function: Any = None
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        pairs, config = request
        try:
            if function is None:
                function = load_processor(processor)
            results = run_processor(
                function, [Item(id=id_, payload=payload, weight=weight) for id_, payload, weight in pairs], config
            )
            answer: tuple[str, Any] = ("ok", [result.model_dump(mode="json") for result in results])
        except Exception as error:
            answer = ("error", _portable(error))
        connection.send(answer)


def _portable(error: Exception) -> Exception:
    # The parent re-raises what the processor raised; an exception that cannot cross the pipe
    # is replaced by one that keeps its type's name and message. A rate-limited call crosses
    # as `RateLimited`, so that the parent waits and retries it (an httpx error does not pickle).
    limited = rate_limited_from(error)
    if limited is not None:
        return limited
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
