"""The batch summary: ``daskmask_summary.tsv``, one row per selected run, rewritten atomically.

The table is tab-separated with exactly the columns of :data:`COLUMNS`, in
that order. It is rewritten whole each time a run finishes, so that a reader
(or a batch killed midway) always finds a complete table: locally through a
temporary file renamed over the old one (``os.replace`` is atomic within a
folder), in an object store as one object written by one request (an object
is replaced whole or not at all).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from daskmask._fs import locate

#: The summary's file name inside the output folder.
SUMMARY_NAME = "daskmask_summary.tsv"

#: The summary's columns, in order.
COLUMNS: tuple[str, ...] = (
    "input",
    "output",
    "status",
    "n_voxels",
    "n_timepoints",
    "seconds",
    "error",
)

#: The values of the ``status`` column.
STATUSES: tuple[str, ...] = ("done", "skipped", "failed")


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run of a batch: one row of the summary.

    Attributes
    ----------
    input : str
        The run's input file or URL.
    output : str
        Its results store (path or URL).
    status : {"done", "skipped", "failed"}
        Masked now, found complete with the same inputs and parameters, or failed.
    n_voxels, n_timepoints : int or None
        Shape of the signals (None when the run failed).
    seconds : float
        Wall time spent on the run by this call.
    error : str
        ``ExceptionType: message`` of a failed run, else empty.

    """

    input: str
    output: str
    status: str
    n_voxels: int | None = None
    n_timepoints: int | None = None
    seconds: float = 0.0
    error: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")


def _cell(value: Any) -> str:
    """One cell: empty for None, one line (tabs and newlines would break the table)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return " ".join(str(value).split())


def render(outcomes: Iterable[RunOutcome]) -> str:
    """Return the summary table as text (header line, then one line per run)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for outcome in outcomes:
        row: Mapping[str, Any] = asdict(outcome)
        writer.writerow([_cell(row[name]) for name in COLUMNS])
    return buffer.getvalue()


def write_summary(output_dir: str, outcomes: Iterable[RunOutcome]) -> str:
    """Write ``daskmask_summary.tsv`` into ``output_dir`` atomically; return its path or URL."""
    location = locate(output_dir).join(SUMMARY_NAME)
    content = render(outcomes).encode()
    if not location.is_local:
        # one object, one PUT: readers see the old table or the new one
        with location.open("wb") as handle:
            handle.write(content)
        return location.url
    folder = os.path.dirname(location.path)
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{SUMMARY_NAME}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, location.path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return location.path
