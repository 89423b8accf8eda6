"""When does the embedded LocalCluster pay? ``daskmask demo`` on threads against a LocalCluster.

For each input, ``python -m daskmask demo [RUN] --scheduler threads|local`` runs in a fresh
subprocess, so that the wall time includes everything a user waits for: interpreter and
import start-up, the LocalCluster's worker processes (started, importing daskmask, closed),
every walkthrough setting, the trended/detrended extraction and the Zarr store. The peak is
that of the whole process tree (workers included), sampled every 20 ms.

Inputs:

``walkthrough``
    the demo's default: the walkthrough's raw and skull-stripped runs (4 mm MNI,
    50x59x48x150 int16 ``.nii.gz``, 33 MiB on disk together), generated into the cache first;
``hcp-nii``
    the HCP-like run of ``bench_masker.py`` (91x109x91x1200 int16 ``.nii``, 2.2 GB), every
    setting on it.

Usage::

    .venv/bin/python benchmarks/bench_scheduler_choice.py [--inputs walkthrough hcp-nii]
        [--repeat 2] [--folder /tmp/daskmask-bench]

Figures go to ``benchmarks/results-scheduler-choice.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_masker import generate, peak_of_tree  # noqa: E402

SCHEDULERS = ("threads", "local")
INPUTS = ("walkthrough", "hcp-nii")


def input_path(name: str, folder: Path) -> Path | None:
    """Return the run to pass to the demo (None: its default runs), generated if needed."""
    if name == "walkthrough":
        from daskmask.datasets import load_walkthrough_runs

        load_walkthrough_runs(verbose=True)  # generated outside the measured time
        return None
    return generate(name, folder)


def measure(run: Path | None, scheduler: str, output: Path) -> dict:
    """Run the demo once in a fresh process; return its wall time, peak and last line."""
    command = [sys.executable, "-m", "daskmask", "demo", "--scheduler", scheduler]
    command += ["--output", str(output)] + ([str(run)] if run is not None else [])
    env = {k: v for k, v in os.environ.items() if k != "DASKMASK_SCHEDULER"}
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    peak, output_text = peak_of_tree(process)
    seconds = time.perf_counter() - start
    lines = output_text.strip().splitlines()
    return {
        "seconds": round(seconds, 2),
        "peak_mib": round(peak, 1),
        "ok": process.returncode == 0,
        "last_line": lines[-1][:200] if lines else "",
    }


def input_bytes(run: Path | None) -> int:
    """Bytes on disk of the demo's input."""
    if run is not None:
        return run.stat().st_size
    from daskmask.datasets import load_walkthrough_runs

    return sum(path.stat().st_size for path in load_walkthrough_runs())


def main(argv: list[str] | None = None) -> int:
    """Measure every (input, scheduler) pair ``--repeat`` times, alternating the schedulers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=INPUTS)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/daskmask-bench"))
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results-scheduler-choice.json",
    )
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.inputs:
        run = input_path(name, args.folder)
        size = input_bytes(run)
        for repeat in range(args.repeat):
            for scheduler in SCHEDULERS:
                figures = measure(run, scheduler, args.folder / f"demo-{scheduler}.zarr")
                row = {"input": name, "bytes": size, "scheduler": scheduler, "repeat": repeat}
                results.append(row | figures)
                print(json.dumps(results[-1]), flush=True)
    summary = []
    for name in args.inputs:
        for scheduler in SCHEDULERS:
            rows = [r for r in results if r["input"] == name and r["scheduler"] == scheduler]
            summary.append(
                {
                    "input": name,
                    "scheduler": scheduler,
                    "median_seconds": statistics.median(r["seconds"] for r in rows),
                    "max_peak_mib": max(r["peak_mib"] for r in rows),
                    "all_ok": all(r["ok"] for r in rows),
                }
            )
            print(
                f"{name:12s} {scheduler:8s} {summary[-1]['median_seconds']:8.2f} s "
                f"{summary[-1]['max_peak_mib']:8.1f} MiB",
                flush=True,
            )
    args.output.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "command": "python -m daskmask demo [RUN] --scheduler threads|local",
                "results": results,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
