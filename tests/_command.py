"""The real ``daskmask`` console script, run as a subprocess by the command tests."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The console script installed beside the interpreter running the tests.
DASKMASK = Path(sys.executable).with_name("daskmask")

#: The summary's columns, as the issue fixes them (not imported: the test states the contract).
SUMMARY_COLUMNS = ["input", "output", "status", "n_voxels", "n_timepoints", "seconds", "error"]


@dataclass(frozen=True)
class Finished:
    """A finished call of the command."""

    returncode: int
    stdout: str
    stderr: str


def environment(**extra: str) -> dict[str, str]:
    """The tests' environment without a scheduler address, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key != "DASKMASK_SCHEDULER"}
    env.update(extra)
    return env


def daskmask(*args: str | os.PathLike[str], timeout: float = 120, **extra: str) -> Finished:
    """Run the console script and wait for it."""
    if not DASKMASK.exists():
        pytest.fail(f"the console script {DASKMASK} is not installed: pip install -e .")
    done = subprocess.run(
        [str(DASKMASK), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(**extra),
    )
    return Finished(done.returncode, done.stdout, done.stderr)


def start(*args: str | os.PathLike[str], **extra: str) -> subprocess.Popen:
    """Start the console script without waiting (to signal or kill it)."""
    return subprocess.Popen(
        [str(DASKMASK), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(**extra),
    )


def read_summary(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Parse a summary table: its header and its rows."""
    reader = csv.reader(text.splitlines(), delimiter="\t")
    header = next(reader)
    return header, [dict(zip(header, row, strict=True)) for row in reader]


def summary_rows(output_dir: Path) -> dict[str, dict[str, str]]:
    """The local summary's rows by input file name, after checking its columns."""
    header, rows = read_summary((output_dir / "daskmask_summary.tsv").read_text())
    assert header == SUMMARY_COLUMNS
    return {Path(row["input"]).name: row for row in rows}


def statuses(output_dir: Path) -> dict[str, str]:
    """Each run's status by its subject label (``sub-01``)."""
    return {name.split("_")[0]: row["status"] for name, row in summary_rows(output_dir).items()}


def copy_dataset(source: Path, target: Path) -> Path:
    """A private copy of a generated dataset (tests that change files)."""
    shutil.copytree(source, target)
    return target
