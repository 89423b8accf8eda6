"""Benchmark daskmask with its data in object storage and on a cluster without a shared disk.

One run of this script generates the HCP-like run (91x109x91x1200 int16 ``.nii``)
with daskmask's generator, uploads it to a real S3 server (moto's server mode,
a separate process on 127.0.0.1, outside the measured process tree) and
measures, in fresh subprocesses, ``NiftiMasker(mask_strategy="epi",
detrend=True, standardize="zscore_sample").fit_transform(...)`` followed by
``dm.save(...)``:

``local-threads``
    local file in, local store out, dask's threads (the reference);
``local-threads-before``
    the same with the code of ``--baseline`` (a git commit, checked out in a
    temporary worktree and imported through ``PYTHONPATH``), so that a
    regression of the local path shows in the same session;
``s3-threads``
    ``s3://`` in, ``s3://`` out, dask's threads;
``s3-isolated``
    ``s3://`` in and out on a scheduler and two ``dask worker`` processes
    (one thread each) that share no disk: each runs under ``unshare --mount``
    with its own tmpfs on ``/tmp`` (needs root).

For each job: wall time, and the peak of the summed RSS of the job's process
tree plus the cluster's processes (sampled every 20 ms), with the peak of the
largest single worker. Ratios against ``local-threads`` close the table.

Usage::

    .venv/bin/python benchmarks/bench_cluster.py [--baseline 8ac0e90] [--timepoints 1200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _isolated_cluster import can_unshare, start_isolated_cluster  # noqa: E402
from _s3 import start_moto_process  # noqa: E402

PARAMS = 'mask_strategy="epi", detrend=True, standardize="zscore_sample"'

JOB = f"""
import os, sys, dask
import daskmask as dm
if SCHEDULER:
    from distributed import Client
    client = Client(SCHEDULER)
else:
    dask.config.set(scheduler="threads")
kwargs = {{"storage_options": OPTIONS}} if OPTIONS else {{}}
run = dm.open_nifti(SOURCE, **kwargs) if OPTIONS else SOURCE
signals = dm.NiftiMasker({PARAMS}).fit_transform(run)
dm.save(signals, OUT, overwrite=True, **kwargs)
print(signals.shape)
"""


@dataclass
class Measurement:
    """Wall time and peak memory of one job."""

    job: str
    seconds: float
    peak_mib: float
    peak_worker_mib: float
    ok: bool
    detail: str


def _tree_rss(roots: list[psutil.Process]) -> tuple[int, int]:
    total, largest = 0, 0
    for root in roots:
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in members:
            try:
                rss = member.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            total += rss
            if root is not roots[0]:
                largest = max(largest, rss)
    return total, largest


def run_job(
    job: str,
    source: str,
    out: str,
    options: dict | None,
    scheduler: str | None = None,
    cluster_pids: tuple[int, ...] = (),
    pythonpath: str | None = None,
) -> Measurement:
    """Run one job in a fresh interpreter and measure its tree (and the cluster's)."""
    code = (
        f"SOURCE = {source!r}\nOUT = {out!r}\nOPTIONS = {options!r}\n"
        f"SCHEDULER = {scheduler!r}\n" + JOB
    )
    environment = dict(os.environ)
    if pythonpath:
        environment["PYTHONPATH"] = pythonpath
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )
    roots = [psutil.Process(process.pid), *(psutil.Process(pid) for pid in cluster_pids)]
    peak, peak_worker = 0, 0
    while process.poll() is None:
        total, largest = _tree_rss(roots)
        peak, peak_worker = max(peak, total), max(peak_worker, largest)
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    output = (process.stdout.read() if process.stdout else "").strip()
    detail = output.splitlines()[-1] if output else ""
    return Measurement(
        job,
        round(seconds, 2),
        round(peak / 2**20, 1),
        round(peak_worker / 2**20, 1),
        process.returncode == 0,
        detail[:300],
    )


def start_s3_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """Start moto's S3 server as a separate process (outside the measured tree)."""
    return start_moto_process(folder)


def baseline_worktree(commit: str, folder: Path) -> Path:
    """Check ``commit`` out in a temporary worktree (its package is imported from there)."""
    target = folder / f"baseline-{commit}"
    if not target.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(target), commit],
            check=True,
            capture_output=True,
        )
    return target


def hcp_run_and_s3_server(workdir: Path, timepoints: int) -> tuple[Path, subprocess.Popen, str]:
    """Generate (once) the HCP-like ``.nii`` and start moto with the test credentials set."""
    from daskmask.datasets import generate_epi

    path = workdir / f"hcp-nii-{timepoints}.nii"
    if not path.exists():
        generate_epi(path, shape=(91, 109, 91), n_timepoints=timepoints, seed=0)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    server, endpoint = start_s3_server(workdir)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    return path, server, endpoint


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timepoints", type=int, default=1200)
    parser.add_argument("--baseline", default=None, help="git commit to compare the local path")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/daskmask-bench"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results-cluster.json"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    path, server, endpoint = hcp_run_and_s3_server(args.workdir, args.timepoints)
    options = {"key": "testing", "secret": "testing", "endpoint_url": endpoint}
    measurements: list[Measurement] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=args.workdir))
    try:
        import s3fs

        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        fs.put_file(str(path), f"bench/{path.name}")
        url = f"s3://bench/{path.name}"

        def record(measurement: Measurement) -> None:
            measurements.append(measurement)
            print(
                f"{measurement.job:22s} {measurement.seconds:8.2f} s "
                f"{measurement.peak_mib:9.1f} MiB (largest worker "
                f"{measurement.peak_worker_mib:7.1f} MiB) "
                f"{'ok' if measurement.ok else 'FAILED ' + measurement.detail}",
                flush=True,
            )

        record(run_job("local-threads", str(path), str(scratch / "local.zarr"), None))
        if args.baseline:
            tree = baseline_worktree(args.baseline, args.workdir)
            record(
                run_job(
                    "local-threads-before",
                    str(path),
                    str(scratch / "before.zarr"),
                    None,
                    pythonpath=str(tree),
                )
            )
        record(run_job("s3-threads", url, "s3://bench/threads.zarr", options))
        if can_unshare():
            cluster = start_isolated_cluster(scratch)
            try:
                from distributed import Client

                with Client(cluster.address, timeout=60) as client:
                    client.wait_for_workers(2, timeout=90)
                pids = tuple(process.pid for process in cluster.workers)
                record(
                    run_job(
                        "s3-isolated",
                        url,
                        "s3://bench/isolated.zarr",
                        options,
                        scheduler=cluster.address,
                        cluster_pids=(cluster.scheduler.pid, *pids),
                    )
                )
            finally:
                cluster.stop()
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)

    found = {m.job: m for m in measurements}
    reference = found.get("local-threads")
    if reference and reference.ok:
        for job, m in found.items():
            if job != "local-threads" and m.ok:
                print(
                    f"{job:22s} wall x{m.seconds / reference.seconds:.2f}, "
                    f"peak x{m.peak_mib / reference.peak_mib:.2f} of local-threads",
                    flush=True,
                )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps([asdict(m) for m in measurements], indent=1))
    print(f"figures written to {args.output} (cpus: {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
