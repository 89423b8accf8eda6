"""Benchmark daskmask with its data in object storage and on a cluster without a shared disk.

One run of this script generates the HCP-like run (91x109x91x1200 int16 ``.nii``)
with daskmask's generator, uploads it to real S3 servers on 127.0.0.1 (each a
separate process, outside the measured process tree: moto's server mode and
s3rver, see ``benchmarks/_s3rver.py``) and measures, in fresh subprocesses,
``NiftiMasker(mask_strategy="epi", detrend=True,
standardize="zscore_sample").fit_transform(...)`` followed by ``dm.save(...)``:

``local-threads``
    local file in, local store out, dask's threads (the reference);
``local-threads-before``
    the same with the code of ``--baseline`` (a git commit, checked out in a
    temporary worktree and imported through ``PYTHONPATH``), so that a
    regression of the local path shows in the same session;
``local-cluster``
    local file in, local store out, on a LocalCluster of two worker processes
    with one thread each, started inside the job (issue 14 §6);
``s3-threads`` (one per S3 server)
    ``s3://`` in, ``s3://`` out, dask's threads;
``s3-isolated`` (one per S3 server)
    ``s3://`` in and out on a scheduler and two ``dask worker`` processes
    (one thread each) that share no disk: each runs under ``unshare --mount``
    with its own tmpfs on ``/tmp`` (needs root). The cluster is started
    before the job and is not in its wall time.

For each job: wall time (the whole subprocess: import, cluster start-up when
the job starts one, the work), the seconds of the work alone (``work_s``:
``fit_transform`` + ``save`` once the scheduler is ready, printed by the
job), and the peak of the summed RSS of the job's process tree plus the
cluster's processes (sampled every 20 ms), with the peak of the largest
single worker. Ratios against ``local-threads`` close the table.

Results (``--output``, default ``benchmarks/results-cluster.json``)::

    {"schema": "daskmask-bench-cluster/2",
     "load": {"before": [1, 5, 15 min], "after": [...]}, "cpus": 2, "repeat": n,
     "jobs": [{"job": "s3-threads", "server": "s3rver" | "moto" | null,
               "seconds": wall, "work_s": work, "peak_mib": tree peak,
               "peak_worker_mib": largest worker, "ok": bool, "detail": str}, ...],
     "runs": [every run, same fields],
     "ratios": [{"job": ..., "server": ..., "wall_x": wall / local-threads wall,
                 "work_x": ..., "peak_x": ...}, ...]}

``jobs`` holds one entry per (job, server): the median of its runs (``--repeat``);
``ratios`` compares those medians with ``local-threads``.

Usage::

    .venv/bin/python benchmarks/bench_cluster.py [--baseline 8ac0e90] [--timepoints 1200]
        [--s3-server moto s3rver] [--jobs local-threads local-cluster s3-threads s3-isolated]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _isolated_cluster import can_unshare, start_isolated_cluster  # noqa: E402
from _s3rver import SERVERS, RunningServer, remove_s3rver_data, start_s3_server  # noqa: E402
from bench_masker import compile_bytecode  # noqa: E402

PARAMS = 'mask_strategy="epi", detrend=True, standardize="zscore_sample"'

#: Every job: its code (the same for all, the variables set before it differ).
JOB = f"""
import json, os, sys, time, dask
import daskmask as dm
if SCHEDULER == "local-cluster":
    client = dm.connect(n_workers=2, threads_per_worker=1, processes=True,
                        dashboard_address=None)
elif SCHEDULER:
    from distributed import Client
    client = Client(SCHEDULER)
else:
    dask.config.set(scheduler="threads")
started = time.perf_counter()
kwargs = {{"storage_options": OPTIONS}} if OPTIONS else {{}}
run = dm.open_nifti(SOURCE, **kwargs) if OPTIONS else SOURCE
signals = dm.NiftiMasker({PARAMS}).fit_transform(run)
dm.save(signals, OUT, overwrite=True, **kwargs)
print(json.dumps({{"work_s": round(time.perf_counter() - started, 2)}}))
print(signals.shape)
"""

#: Jobs this script knows, in the order it runs them.
JOBS = ("local-threads", "local-threads-before", "local-cluster", "s3-threads", "s3-isolated")
#: Version of the JSON written to ``--output`` (see the module docstring).
SCHEMA = "daskmask-bench-cluster/2"


@dataclass
class Measurement:
    """Wall time and peak memory of one job."""

    job: str
    seconds: float
    peak_mib: float
    peak_worker_mib: float
    ok: bool
    detail: str
    #: S3 server of an ``s3-*`` job, else None.
    server: str | None = None
    #: Seconds of ``fit_transform`` + ``save`` alone (scheduler ready), as the job printed.
    work_s: float | None = None


def _tree_rss(roots: list[psutil.Process]) -> tuple[int, int]:
    total, largest = 0, 0
    for index, root in enumerate(roots):
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for position, member in enumerate(members):
            try:
                rss = member.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            total += rss
            # A worker: a cluster process given in cluster_pids, or a child of
            # the job (a LocalCluster's worker processes).
            if index > 0 or position > 0:
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
    server: str | None = None,
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
        # python -c puts its working directory first on sys.path: started in the
        # repository, the baseline job would import the working tree's daskmask, not
        # the worktree that PYTHONPATH names
        cwd=Path(__file__).resolve().parent,
    )
    roots = [psutil.Process(process.pid), *(psutil.Process(pid) for pid in cluster_pids)]
    peak, peak_worker = 0, 0
    while process.poll() is None:
        total, largest = _tree_rss(roots)
        peak, peak_worker = max(peak, total), max(peak_worker, largest)
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    output = (process.stdout.read() if process.stdout else "").strip()
    lines = output.splitlines()
    work = None
    for line in lines:
        if line.startswith('{"work_s"'):
            work = json.loads(line)["work_s"]
    return Measurement(
        job,
        round(seconds, 2),
        round(peak / 2**20, 1),
        round(peak_worker / 2**20, 1),
        process.returncode == 0,
        (lines[-1] if lines else "")[:300],
        server,
        work,
    )


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


def hcp_run(workdir: Path, timepoints: int) -> Path:
    """Generate (once) the HCP-like ``.nii``."""
    from daskmask.datasets import generate_epi

    path = workdir / f"hcp-nii-{timepoints}.nii"
    if not path.exists():
        generate_epi(path, shape=(91, 109, 91), n_timepoints=timepoints, seed=0)
    return path


def serve_run(kind: str, workdir: Path, path: Path) -> tuple[RunningServer, str]:
    """Start the S3 server ``kind``, point the ``AWS_*`` variables at it, upload ``path``.

    Returns the server and the URL of the uploaded run.
    """
    import s3fs

    server = start_s3_server(kind, workdir)
    os.environ.update(server.environment)
    # moto assembles a 2.2 GB upload slowly: a retried CompleteMultipartUpload fails.
    fs = s3fs.S3FileSystem(
        skip_instance_cache=True,
        **server.storage_options,
        config_kwargs={"read_timeout": 900},
    )
    fs.mkdir("bench")
    fs.put_file(str(path), f"bench/{path.name}")
    return server, f"s3://bench/{path.name}"


def _print(measurement: Measurement) -> None:
    where = f"[{measurement.server}]" if measurement.server else ""
    work = f"work {measurement.work_s:7.2f} s" if measurement.work_s is not None else ""
    print(
        f"{measurement.job + where:28s} {measurement.seconds:8.2f} s {work:15s}"
        f"{measurement.peak_mib:9.1f} MiB (largest worker "
        f"{measurement.peak_worker_mib:7.1f} MiB) "
        f"{'ok' if measurement.ok else 'FAILED ' + measurement.detail}",
        flush=True,
    )


def median_measurements(measurements: list[Measurement]) -> list[Measurement]:
    """One measurement per (job, server): the median wall, work and peaks of its runs."""
    groups: dict[tuple[str, str | None], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.job, m.server), []).append(m)
    medians = []
    for (job, server), runs in groups.items():
        ok = [m for m in runs if m.ok]
        if not ok:
            medians.append(runs[-1])
            continue
        works = [m.work_s for m in ok if m.work_s is not None]
        medians.append(
            Measurement(
                job,
                round(statistics.median(m.seconds for m in ok), 2),
                round(statistics.median(m.peak_mib for m in ok), 1),
                round(statistics.median(m.peak_worker_mib for m in ok), 1),
                len(ok) == len(runs),
                ok[-1].detail,
                server,
                round(statistics.median(works), 2) if works else None,
            )
        )
    return medians


def ratios(measurements: list[Measurement]) -> list[dict]:
    """Wall, work and peak of every job against ``local-threads`` of the same session."""
    reference = next((m for m in measurements if m.job == "local-threads" and m.ok), None)
    if reference is None:
        return []
    rows = []
    for m in measurements:
        if m is reference or not m.ok:
            continue
        work_x = (
            round(m.work_s / reference.work_s, 2)
            if m.work_s is not None and reference.work_s
            else None
        )
        rows.append(
            {
                "job": m.job,
                "server": m.server,
                "wall_x": round(m.seconds / reference.seconds, 2),
                "work_x": work_x,
                "peak_x": round(m.peak_mib / reference.peak_mib, 2),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timepoints", type=int, default=1200)
    parser.add_argument("--baseline", default=None, help="git commit to compare the local path")
    parser.add_argument(
        "--s3-server", nargs="+", choices=SERVERS, default=list(SERVERS),
        help="S3 servers the s3-* jobs run against (default: both)",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", nargs="+", choices=JOBS, default=list(JOBS),
        help="jobs to run (local-threads-before needs --baseline)",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="runs of each job, interleaved (the table keeps the median); s3-isolated on moto "
        "runs once (minutes a run)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/daskmask-bench"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results-cluster.json"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    compile_bytecode()
    load_before = list(os.getloadavg())

    path = hcp_run(args.workdir, args.timepoints)
    measurements: list[Measurement] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=args.workdir))

    def record(measurement: Measurement) -> None:
        measurements.append(measurement)
        _print(measurement)

    servers: dict[str, tuple[RunningServer, str]] = {}
    try:
        local_out = str(scratch / "local.zarr")
        tree = (
            baseline_worktree(args.baseline, args.workdir)
            if args.baseline and "local-threads-before" in args.jobs
            else None
        )
        if tree is not None:
            compile_bytecode(tree / "daskmask")
        if {"s3-threads", "s3-isolated"} & set(args.jobs):
            for kind in args.s3_server:
                servers[kind] = serve_run(kind, args.workdir, path)
        for attempt in range(args.repeat):
            if "local-threads" in args.jobs:
                record(run_job("local-threads", str(path), local_out, None))
            if tree is not None:
                before_out = str(scratch / "before.zarr")
                record(
                    run_job(
                        "local-threads-before", str(path), before_out, None, pythonpath=str(tree)
                    )
                )
            if "local-cluster" in args.jobs:
                record(run_job("local-cluster", str(path), local_out, None, "local-cluster"))
            for kind, (server, url) in servers.items():
                os.environ.update(server.environment)
                options = server.storage_options
                if "s3-threads" in args.jobs:
                    out = "s3://bench/threads.zarr"
                    record(run_job("s3-threads", url, out, options, server=kind))
                once = kind == "moto" and attempt > 0
                if "s3-isolated" in args.jobs and can_unshare() and not once:
                    record(_isolated_job(scratch, url, options, kind))
    finally:
        for server, _ in servers.values():
            server.stop()
            remove_s3rver_data(server, args.workdir)
        shutil.rmtree(scratch, ignore_errors=True)

    medians = median_measurements(measurements)
    if args.repeat > 1:
        print("medians:")
        for measurement in medians:
            _print(measurement)
    rows = ratios(medians)
    for row in rows:
        where = f"[{row['server']}]" if row["server"] else ""
        print(
            f"{row['job'] + where:28s} wall x{row['wall_x']:.2f}, work x{row['work_x']}, "
            f"peak x{row['peak_x']:.2f} of local-threads",
            flush=True,
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "schema": SCHEMA,
        "load": {"before": load_before, "after": list(os.getloadavg())},
        "cpus": os.cpu_count(),
        "repeat": args.repeat,
        "jobs": [asdict(m) for m in medians],
        "runs": [asdict(m) for m in measurements],
        "ratios": rows,
    }
    args.output.write_text(json.dumps(document, indent=1) + "\n")
    print(f"figures written to {args.output} (cpus: {os.cpu_count()})")
    return 0 if all(m.ok for m in measurements) else 1


def _isolated_job(scratch: Path, url: str, options: dict, kind: str) -> Measurement:
    """Run ``s3-isolated`` on a fresh cluster of two workers that share no disk."""
    from distributed import Client

    cluster = start_isolated_cluster(scratch)
    try:
        with Client(cluster.address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        pids = tuple(process.pid for process in cluster.workers)
        return run_job(
            "s3-isolated",
            url,
            "s3://bench/isolated.zarr",
            options,
            scheduler=cluster.address,
            cluster_pids=(cluster.scheduler.pid, *pids),
            server=kind,
        )
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
