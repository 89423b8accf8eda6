"""The table of issue 14's targets, from the figures of one benchmark run.

``bench_masker.py`` prints it at the end of every run; to print it again from
saved figures::

    .venv/bin/python benchmarks/bench_targets.py benchmarks/results-hcp.json

Targets 1-3 and 5 take their figures from the run given (ratios within that
run). Target 4 takes the ``huge`` input from that run when it has one, else
from the newest committed ``results-huge*.json`` (the 30 GB run takes 20
minutes, so it is not part of ``make bench``'s default inputs). Targets 6 and
7 are measured by other scripts (``bench_cluster.py``,
``bench_many_runs.py``); their latest figures are read from
``results-cluster.json`` and ``results-many-runs.json``, with the commit
and date that wrote them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLUSTER = HERE / "results-cluster.json"
MANY_RUNS = HERE / "results-many-runs.json"

#: Target 1's allowance above the result's own size (MiB).
ALLOWANCE_MIB = 512


@dataclass
class Row:
    """One figure of a target: what, measured, ratio, limit, met."""

    target: str
    figure: str
    measured: str
    ratio: float | None
    limit: float
    source: str = "this run"

    @property
    def verdict(self) -> str:
        if self.ratio is None:
            return "not measured"
        return "met" if self.ratio <= self.limit else "NOT met"


def _last_commit(path: Path, fmt: str) -> str:
    """``git log -1 --format=fmt`` of ``path`` ("" when it is not committed or git is missing)."""
    try:
        return subprocess.run(
            ["git", "log", "-1", f"--format={fmt}", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return ""


def _origin(path: Path) -> str:
    """``path`` and the commit and date that last wrote it (git), for figures read back."""
    return f"{path.name} ({_last_commit(path, '%h %cs') or 'not committed'})"


def _newest(paths: Iterable[Path]) -> Path | None:
    """The file whose last commit is the newest (uncommitted files count as newest)."""

    def committed_at(path: Path) -> int:
        when = _last_commit(path, "%ct")
        return int(when) if when else 2**62

    return max(paths, key=committed_at, default=None)


def _result_mib(detail: str, itemsize: int = 4) -> float | None:
    """Size of the float32 ``(time, voxels)`` result a job printed as ``(n, m)``."""
    match = re.search(r"\((\d+), (\d+)\)", detail)
    if not match:
        return None
    return int(match[1]) * int(match[2]) * itemsize / 2**20


def _by(measurements: Iterable[dict]) -> dict[tuple[str, str], dict]:
    return {(m["input"], m["job"]): m for m in measurements if m.get("ok")}


def _ratio(a: dict | None, b: dict | None, key: str = "seconds") -> float | None:
    return a[key] / b[key] if a and b and b[key] else None


def _versus(
    target: str,
    figure: str,
    ours: dict | None,
    reference: dict | None,
    limit: float,
    key: str = "seconds",
    source: str = "this run",
) -> Row:
    """A row whose ratio is ``ours[key] / reference[key]``."""
    unit, digits = ("s", 2) if key == "seconds" else ("MiB", 0)
    measured = (
        f"{ours[key]:.{digits}f} {unit} / {reference[key]:.{digits}f} {unit}"
        if ours and reference
        else "-"
    )
    return Row(target, figure, measured, _ratio(ours, reference, key), limit, source)


def rows(measurements: list[dict]) -> list[Row]:
    """Every figure of targets 1-7 from one run's measurements (and the saved ones)."""
    found = _by(measurements)
    gz_memory = found.get(("hcp-gz", "daskmask-memory"))
    decode = found.get(("hcp-gz", "decode-pass"))
    out = [_versus("1 .nii.gz in memory", "wall / one isal decode pass", gz_memory, decode, 1.5)]
    for name, label in (("hcp-gz", "1 .nii.gz in memory"), ("hcp-nii", "2 .nii in memory")):
        ours = found.get((name, "daskmask-memory"))
        size = _result_mib(ours["detail"]) if ours else None
        out.append(
            Row(
                label,
                f"peak / (result + {ALLOWANCE_MIB} MiB)",
                f"{ours['peak_mib']:.0f} MiB, result {size:.0f} MiB" if ours and size else "-",
                ours["peak_mib"] / (size + ALLOWANCE_MIB) if ours and size else None,
                1.0,
            )
        )
    out.append(
        _versus(
            "2 .nii in memory",
            "wall / nilearn's",
            found.get(("hcp-nii", "daskmask-memory")),
            found.get(("hcp-nii", "nilearn")),
            0.1,
        )
    )
    for name in ("hcp-gz", "hcp-nii"):
        zarr = found.get((name, "daskmask-zarr"))
        nilearn = found.get((name, "nilearn"))
        memory = found.get((name, "daskmask-memory"))
        out.append(
            _versus(f"3 {name} to Zarr", "peak / nilearn's", zarr, nilearn, 0.1, key="peak_mib")
        )
        out.append(_versus(f"3 {name} to Zarr", "wall / in-memory wall", zarr, memory, 1.2))
    huge, source = found, "this run"
    latest = _newest(HERE.glob("results-huge*.json"))
    if ("huge", "daskmask-zarr") not in found and latest is not None:
        huge, source = _by(json.loads(latest.read_text())), _origin(latest)
    out.append(
        _versus(
            "4 30 GB .nii to Zarr",
            "wall / one cold read",
            huge.get(("huge", "daskmask-zarr")),
            huge.get(("huge", "cold-read")),
            2.0,
            source=source,
        )
    )
    out.append(
        _versus(
            "5 walkthrough in memory",
            "wall / nilearn's (start-up included)",
            found.get(("walkthrough", "daskmask-memory")),
            found.get(("walkthrough", "nilearn")),
            0.75,
        )
    )
    imported = found.get(("startup", "import-daskmask"))
    out.append(
        Row(
            "5 import daskmask",
            "seconds / 0.5 s",
            f"{imported['seconds']:.3f} s" if imported else "-",
            imported["seconds"] / 0.5 if imported else None,
            1.0,
        )
    )
    return out + _cluster_rows() + _many_runs_rows()


def _cluster_rows() -> list[Row]:
    """Target 6 from ``results-cluster.json`` (bench_cluster.py; a list of jobs or a dict)."""
    if not CLUSTER.exists():
        return [Row("6 distributed", "results-cluster.json", "-", None, 1.3, "missing")]
    saved = json.loads(CLUSTER.read_text())
    entries = saved.get("jobs", []) if isinstance(saved, dict) else saved
    jobs = [m for m in entries if isinstance(m, dict) and m.get("ok")]
    source = _origin(CLUSTER)

    def job(name: str, server: str | None = None) -> dict | None:
        return next((m for m in jobs if m["job"] == name and m.get("server") == server), None)

    out = [
        _versus(
            "6 2-worker LocalCluster",
            "wall / threads' wall",
            job("local-cluster"),
            job("local-threads"),
            1.3,
            source=source,
        )
    ]
    servers = sorted({m.get("server") for m in jobs if m["job"] == "s3-isolated"}, key=str)
    for server in servers:
        out.append(
            _versus(
                "6 no-shared-disk cluster",
                f"wall / threads' wall (S3{', ' + server if server else ''})",
                job("s3-isolated", server),
                job("s3-threads", server),
                1.5,
                source=source,
            )
        )
    return out


def _many_runs_rows() -> list[Row]:
    """Target 7 from ``results-many-runs.json`` (bench_many_runs.py)."""
    if not MANY_RUNS.exists():
        return [Row("7 many runs", "results-many-runs.json", "-", None, 4.2, "missing")]
    saved = json.loads(MANY_RUNS.read_text())
    jobs = {(m["runs"], m["job"]): m for m in saved.get("measurements", []) if m.get("ok")}
    eight, many = jobs.get((8, "daskmask-bids")), jobs.get((32, "daskmask-bids"))
    source = _origin(MANY_RUNS)
    return [
        _versus("7 many runs (threads)", "wall 32 runs / 8 runs", many, eight, 4.2, source=source),
        _versus(
            "7 many runs (threads)",
            "peak 32 runs / 8 runs (same peak: <= 1.1)",
            many,
            eight,
            1.1,
            "peak_mib",
            source,
        ),
    ]


def print_table(measurements: list[dict]) -> list[Row]:
    """Print the issue 14 targets table (Markdown) and return its rows."""
    table = rows(measurements)
    print("\nissue 14 targets")
    print("| target | figure | measured | ratio | limit | | figures from |")
    print("|---|---|---|---|---|---|---|")
    for row in table:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        print(
            f"| {row.target} | {row.figure} | {row.measured} | {ratio} | "
            f"<= {row.limit:g} | {row.verdict} | {row.source} |",
            flush=True,
        )
    return table


def main(argv: list[str] | None = None) -> int:
    """Print the table from a saved results file."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else HERE / "results.json"
    print_table(json.loads(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
