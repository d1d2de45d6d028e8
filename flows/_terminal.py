"""How the command line shows a running job: a progress bar on a terminal, lines with `--verbose`.

On a terminal: items finished of the run's total, the current batch size, the rate and an
estimate of the time left, redrawn in place (`rich`, which comes with Prefect). With
`--verbose`, one line per stage as well. When stdout is not a terminal (a pipe, a log file),
no bar: only the lines, when asked for.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Self, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from flows.progress import RunEvent, RunInterrupted, RunOpened, StageDone


class _RateColumn(ProgressColumn):
    """Items per second over the last stages (rich keeps the samples)."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("" if speed is None else f"{speed:,.1f} items/s", style="progress.data.speed")


class TerminalProgress:
    """The observer (`flows.progress.observing`) through which the command shows a run."""

    def __init__(self, *, verbose: bool, stream: TextIO | None = None) -> None:
        stream = stream if stream is not None else sys.stdout
        self.verbose = verbose
        self.interrupted: RunInterrupted | None = None
        self.run_id: str | None = None
        self._console = Console(file=stream, highlight=False)
        self._bar = (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("size {task.fields[size]}"),
                _RateColumn(),
                TimeRemainingColumn(),
                console=self._console,
            )
            if stream.isatty()
            else None
        )
        self._task: TaskID | None = None

    def __enter__(self) -> Self:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop redrawing the bar (it stays on screen as it was last drawn)."""
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, event: RunEvent) -> None:
        if isinstance(event, RunOpened):
            self.run_id = event.run_id
            # Always shown: whether this command resumed a run or started one, and from what size.
            opened = (
                f"resuming run {event.run_id} of {event.pipeline}: {event.finished} of {event.items} items finished"
                if event.resumed
                else f"starting run {event.run_id} of {event.pipeline} ({event.items} items)"
            )
            self._console.print(
                f"{opened}; first batch size {event.batch_size} ({event.why or 'configured'})",
                soft_wrap=True,
                markup=False,
            )
            if self._bar is not None:
                self._task = self._bar.add_task(
                    event.pipeline, total=event.items, completed=event.finished, size=event.batch_size
                )
        elif isinstance(event, StageDone):
            outcome = f"failed whole ({event.error})" if event.error else f"High share {event.high_share:.2f}"
            self._line(
                f"stage {event.stage}: size {event.batch_size}, {event.items} items, {outcome}, "
                f"{event.seconds:.2f} s; next size {event.next_batch_size}: {event.reason}"
            )
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, completed=event.finished, size=event.next_batch_size)
        elif isinstance(event, RunInterrupted):
            self.interrupted = event

    def _line(self, text: str) -> None:
        if self.verbose:
            self._console.print(text, soft_wrap=True, markup=False)
