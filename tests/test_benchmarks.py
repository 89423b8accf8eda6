"""The benchmark script runs end to end (figures are measured by it, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_masker.py"


def test_benchmark_runs_every_job_on_the_walkthrough_input(tmp_path):
    output = tmp_path / "results.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCHMARK),
            "--inputs",
            "walkthrough",
            "--workdir",
            str(tmp_path / "work"),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads(output.read_text())
    jobs = {entry["job"]: entry for entry in results}
    expected = {"cold-read", "decode-pass", "nilearn", "daskmask-memory", "daskmask-zarr"}
    assert set(jobs) == expected | {"import-daskmask"}
    assert all(entry["ok"] and entry["seconds"] > 0 for entry in results)
    assert all(entry["peak_mib"] > 0 for entry in results if entry["input"] != "startup")
    # nilearn and daskmask both extracted the same number of time points and voxels
    assert jobs["nilearn"]["detail"] == jobs["daskmask-memory"]["detail"]
    assert jobs["daskmask-zarr"]["detail"] == jobs["nilearn"]["detail"]
    assert "wall x" in completed.stdout and "of one decode pass" in completed.stdout
    # the table of issue 14's targets, with the walkthrough's ratio and the import time
    table = completed.stdout.split("issue 14 targets", 1)[1]
    walkthrough = next(line for line in table.splitlines() if "5 walkthrough" in line)
    assert walkthrough.count("|") == 8 and " - |" not in walkthrough.split("|")[4]
    assert "5 import daskmask" in table
    assert (tmp_path / "work" / "walkthrough.zarr").is_dir()


def test_targets_table_has_every_target_from_saved_figures():
    sys.path.insert(0, str(BENCHMARK.parent))
    from bench_targets import rows

    saved = json.loads((BENCHMARK.parent / "results-hcp-round2.json").read_text())
    table = rows(saved)
    assert {row.target.split()[0] for row in table} == {str(n) for n in range(1, 8)}
    found = {(m["input"], m["job"]): m for m in saved}
    first = table[0]
    expected = (
        found[("hcp-gz", "daskmask-memory")]["seconds"]
        / found[("hcp-gz", "decode-pass")]["seconds"]
    )
    assert first.ratio == expected
    assert first.verdict == ("met" if expected <= 1.5 else "NOT met")
