"""Progress of a batch on the terminal (rich): the whole batch, the runs in hand, the dashboard.

When standard output is not a terminal (a log file, a pipe, a job's output)
no progress is drawn (and rich is not imported): only the dashboard link
and, at the end, the summary are printed, as plain lines.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import IO, Any

from daskmask.batch._summary import RunOutcome


def _is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


def _rich_progress(stream: IO[str]) -> Any:
    """Return a rich progress display on ``stream``, disabled unless rich sees a terminal."""
    # rich takes 0.03-0.06 s to import: only a terminal needs it
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(file=stream)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=False,
    )


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
        self.stream = stream or sys.stdout
        # off a terminal nothing is drawn, and rich is not even imported
        self._progress = _rich_progress(self.stream) if _is_tty(self.stream) else None
        self.enabled = self._progress is not None and not self._progress.disable
        self._batch = None
        if self.enabled:
            self._batch = self._progress.add_task("runs", total=total, count=f"0/{total}")
        self._total = total
        self._runs: dict[str, Any] = {}
        self._counts = {"done": 0, "skipped": 0, "failed": 0}
        self._lock = threading.Lock()

    def __enter__(self) -> BatchProgress:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.enabled:
            self._progress.stop()

    def note(self, text: str) -> None:
        """Print a line above the bars, or as a plain line off a terminal (a job's log)."""
        if self.enabled:
            self._progress.console.print(text, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def started(self, label: str) -> None:
        """Show a run as in hand."""
        if self.enabled:
            with self._lock:
                self._runs[label] = self._progress.add_task(f"  {label}", total=None, count="")

    def finished(self, label: str, outcome: RunOutcome) -> None:
        """Count a run that is over (done, skipped or failed)."""
        with self._lock:
            self._counts[outcome.status] += 1
            if not self.enabled:
                return
            task = self._runs.pop(label, None)
            if task is not None:
                self._progress.remove_task(task)
            counts = ", ".join(f"{n} {status}" for status, n in self._counts.items() if n)
            finished = sum(self._counts.values())
            self._progress.update(
                self._batch,
                advance=1,
                description=f"runs ({counts})",
                count=f"{finished}/{self._total}",
            )
