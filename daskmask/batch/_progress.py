"""Progress of a batch on the terminal (rich): the whole batch, the runs in hand, the dashboard.

When standard output is not a terminal (a log file, a pipe, a job's output)
no progress is drawn: only the dashboard link and, at the end, the summary
are printed, as plain lines.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from daskmask.batch._summary import RunOutcome


class BatchProgress:
    """A progress display: one bar for the batch, one line per run in flight.

    Parameters
    ----------
    total : int
        Number of runs in the batch.
    stream : file, optional
        Where to draw (default: standard output). Nothing is drawn when it is
        not a terminal.

    """

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.console = Console(file=stream or sys.stdout)
        self.enabled = self.console.is_terminal
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.enabled,
            transient=False,
        )
        self._batch = self._progress.add_task("runs", total=total, count=f"0/{total}")
        self._total = total
        self._runs: dict[str, TaskID] = {}
        self._counts = {"done": 0, "skipped": 0, "failed": 0}
        self._lock = threading.Lock()

    def __enter__(self) -> BatchProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def note(self, text: str) -> None:
        """Print a line above the bars, or as a plain line off a terminal (a job's log)."""
        if self.enabled:
            self._progress.console.print(text, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.console.file, flush=True)

    def started(self, label: str) -> None:
        """Show a run as in hand."""
        with self._lock:
            self._runs[label] = self._progress.add_task(f"  {label}", total=None, count="")

    def finished(self, label: str, outcome: RunOutcome) -> None:
        """Count a run that is over (done, skipped or failed)."""
        with self._lock:
            task = self._runs.pop(label, None)
            if task is not None:
                self._progress.remove_task(task)
            self._counts[outcome.status] += 1
            counts = ", ".join(f"{n} {status}" for status, n in self._counts.items() if n)
            finished = sum(self._counts.values())
            self._progress.update(
                self._batch,
                advance=1,
                description=f"runs ({counts})",
                count=f"{finished}/{self._total}",
            )
