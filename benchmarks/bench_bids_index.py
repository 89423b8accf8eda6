"""Benchmark indexing an fMRIPrep derivatives dataset: bids2table, pybids and find_runs.

Generates an fMRIPrep-like derivatives tree of ``--runs`` preprocessed runs with
:func:`daskmask.datasets.make_fmriprep_derivatives` (ten runs per subject: two tasks of
five runs, one space, with the noise files fMRIPrep also writes: about 15 files per run),
in a local folder and in a real S3 server (moto's server mode, a separate process on
127.0.0.1). The images are tiny (6x6x6x50): indexing reads names, and sidecars for pybids
and find_runs, never the images.

Each measurement runs in a fresh subprocess (no warm caches: bids2table and pybids both
memoise), ``--repeat`` times, and reports the wall time of:

``bids2table``
    ``bids2table.index_dataset(root)``, then the ``desc-preproc_bold`` rows.
``pybids``
    ``bids.BIDSLayout(root, validate=False, is_derivative=True)``, then
    ``layout.get(desc="preproc", suffix="bold", extension=[".nii", ".nii.gz"])``; on S3 the
    root is a ``upath.UPath`` carrying the endpoint and credentials.
``find_runs``
    :func:`daskmask.batch._dataset.find_runs` (fsspec listing, bids2table's name parser,
    every run's mask, confounds and sidecar matched, every sidecar's RepetitionTime read).

Usage::

    .venv/bin/python benchmarks/bench_bids_index.py [--runs 1000] [--repeat 3]

Writes ``benchmarks/results-bids-index.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _s3 import start_moto_process  # noqa: E402

CREDENTIALS = {"key": "testing", "secret": "testing"}

#: Each job prints one JSON line: {"seconds": wall, "runs": preprocessed runs found}.
JOBS = {
    "bids2table": """
import bids2table
start = time.perf_counter()
table = bids2table.index_dataset(ROOT_PATH)
rows = table.filter(pc.and_(pc.equal(table["desc"], "preproc"), pc.equal(table["suffix"], "bold")))
rows = rows.filter(pc.is_in(rows["ext"], pa.array([".nii", ".nii.gz"])))
seconds = time.perf_counter() - start
count = rows.num_rows
""",
    "pybids": """
from bids import BIDSLayout
start = time.perf_counter()
layout = BIDSLayout(ROOT_PATH, validate=False, is_derivative=True)
files = layout.get(desc="preproc", suffix="bold", extension=[".nii", ".nii.gz"])
seconds = time.perf_counter() - start
count = len(files)
""",
    "find_runs": """
from daskmask.batch._dataset import find_runs
start = time.perf_counter()
runs = find_runs(ROOT, storage_options=OPTIONS)
seconds = time.perf_counter() - start
count = len(runs)
assert all(r.mask and r.confounds and r.confounds_sidecar and r.t_r for r in runs)
""",
}

PRELUDE = """
import json, time
import pyarrow as pa, pyarrow.compute as pc
ROOT = {root!r}
OPTIONS = {options!r}
if ROOT.startswith("s3://"):
    from upath import UPath
    ROOT_PATH = UPath(ROOT, **OPTIONS)
else:
    ROOT_PATH = ROOT
"""


def measure(
    job: str, root: str, options: dict[str, str] | None, aws_environment: bool = False
) -> dict[str, float]:
    """Run one indexing job in a fresh interpreter; return its wall time and run count.

    Without ``aws_environment`` the job has no ``AWS_*`` variables: the library must
    reach the server through the options it is given. With it, the endpoint and the
    credentials are also in the environment (what pybids needs, see the README).
    """
    code = PRELUDE.format(root=root, options=options or {}) + JOBS[job]
    code += "\nprint(json.dumps({'seconds': seconds, 'runs': count}))\n"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    if aws_environment and options:
        environment.update(
            AWS_ACCESS_KEY_ID=options["key"],
            AWS_SECRET_ACCESS_KEY=options["secret"],
            AWS_ENDPOINT_URL=options["endpoint_url"],
            AWS_DEFAULT_REGION="us-east-1",
        )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=environment,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def generate(root: str, n_runs: int, options: dict[str, str] | None) -> float:
    """Write the derivatives tree; return the seconds it took."""
    from daskmask.datasets import make_fmriprep_derivatives

    n_subjects = max(1, n_runs // 10)
    start = time.perf_counter()
    make_fmriprep_derivatives(
        root,
        subjects=[f"{index:04d}" for index in range(n_subjects)],
        tasks=("rest", "nback"),
        runs=(1, 2, 3, 4, 5),
        shape=(6, 6, 6),
        n_volumes=50,
        storage_options=options,
    )
    return time.perf_counter() - start


def main() -> None:
    """Generate the trees, time every job, write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/daskmask-bench-bids"))
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results-bids-index.json",
    )
    arguments = parser.parse_args()
    arguments.workdir.mkdir(parents=True, exist_ok=True)
    local = str(arguments.workdir / f"derivatives-{arguments.runs}")
    results: dict[str, object] = {
        "runs": arguments.runs,
        "machine": f"{platform.node()} {os.cpu_count()} cpus, python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "jobs": {},
    }
    shutil.rmtree(local, ignore_errors=True)
    results["generate_local_seconds"] = generate(local, arguments.runs, None)
    results["files"] = sum(len(files) for _, _, files in os.walk(local))
    server, endpoint = start_moto_process(arguments.workdir)
    try:
        options = {**CREDENTIALS, "endpoint_url": endpoint}
        import s3fs

        s3fs.S3FileSystem(**options).mkdir("bench")
        remote = "s3://bench/derivatives"
        results["generate_s3_seconds"] = generate(remote, arguments.runs, options)
        jobs: dict[str, dict[str, object]] = {}
        cases = [
            *((job, "local", local, None, False) for job in JOBS),
            *((job, "s3", remote, options, False) for job in JOBS),
            ("pybids", "s3 (AWS_* environment)", remote, options, True),
        ]
        for job, where, root, root_options, aws in cases:
            samples = [measure(job, root, root_options, aws) for _ in range(arguments.repeat)]
            errors = [sample["error"] for sample in samples if "error" in sample]
            seconds = [sample["seconds"] for sample in samples if "seconds" in sample]
            entry: dict[str, object] = {
                "runs_found": samples[-1].get("runs"),
                "seconds": seconds,
                "median_seconds": statistics.median(seconds) if seconds else None,
            }
            if errors:
                entry["error"] = errors[-1]
            jobs[f"{job} {where}"] = entry
            print(f"{job:>10} {where:>5}: {entry}", flush=True)
        results["jobs"] = jobs
    finally:
        server.terminate()
        server.wait(timeout=10)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
