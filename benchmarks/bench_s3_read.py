"""Benchmark reading runs from object storage against reading them from local files.

Generates runs with daskmask's generator (``.nii`` and ``.nii.gz`` int16, at
64x64x40x600 and at the HCP-like 91x109x91x1200), uploads them to a real S3
server (moto's server mode, a separate process on 127.0.0.1, outside the
measured process tree), and measures in a fresh subprocess per job, with dask's
threads::

    np.asarray(NiftiMasker(mask_strategy="epi", detrend=True,
                           standardize="zscore_sample").fit_transform(source))

from the local file and from its ``s3://`` URL: wall time and the peak of the
summed RSS of the job's process tree (sampled every 20 ms). It also measures
the raw GET throughput of the same server on the ``.nii`` object (one streamed
GET, and 64 MiB ranged GETs one and two at a time), because the server bounds
what any reader can do. Ratios s3 / local close the table.

Usage::

    .venv/bin/python benchmarks/bench_s3_read.py [--sizes small hcp] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _s3 import start_moto_process  # noqa: E402

PARAMS = 'mask_strategy="epi", detrend=True, standardize="zscore_sample"'

JOB = f"""
import dask, numpy as np
import daskmask as dm
dask.config.set(scheduler="threads")
signals = np.asarray(dm.NiftiMasker({PARAMS}).fit_transform(SOURCE))
print(signals.shape, float(np.abs(signals).sum()))
"""

#: name -> (shape, time points)
SIZES = {"small": ((64, 64, 40), 600), "hcp": ((91, 109, 91), 1200)}


@dataclass
class Measurement:
    """Wall time and peak memory of one job."""

    size: str
    suffix: str
    where: str
    seconds: float
    peak_mib: float
    ok: bool
    detail: str


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def run_job(source: str) -> tuple[float, float, bool, str]:
    """Run one job in a fresh interpreter; return wall seconds, peak MiB, success, output."""
    code = f"SOURCE = {source!r}\n" + JOB
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(root))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    output = (process.stdout.read() if process.stdout else "").strip()
    return seconds, peak / 2**20, process.returncode == 0, output.splitlines()[-1][:300]


def start_s3_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """Start moto's S3 server as a separate process (outside the measured tree)."""
    return start_moto_process(folder)


def raw_get_throughput(fs, path: str) -> dict[str, float]:
    """MB/s of the server for one object: one streamed GET, 64 MiB ranges x1 and x2."""
    from fsspec.asyn import sync

    size = fs.info(path)["size"]
    speeds = {}

    async def stream() -> int:
        handle = await fs.open_async(path, "rb")
        total = 0
        while chunk := await handle.read(8 << 20):
            total += len(chunk)
        return total

    start = time.perf_counter()
    total = sync(fs.loop, stream)
    speeds["one streamed GET"] = total / (time.perf_counter() - start) / 1e6
    block = 64 << 20
    for parallel in (1, 2):
        start = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            pieces = pool.map(
                lambda first: len(fs.cat_file(path, start=first, end=min(size, first + block))),
                range(0, size, block),
            )
            total = sum(pieces)
        speeds[f"64 MiB ranged GETs x{parallel}"] = total / (time.perf_counter() - start) / 1e6
    return {name: round(value, 1) for name, value in speeds.items()}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "hcp"])
    parser.add_argument("--repeat", type=int, default=1, help="runs per job (median kept)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/daskmask-bench"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results-s3-read.json"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    import s3fs

    from daskmask.datasets import generate_epi

    inputs = {}
    for size in args.sizes:
        shape, timepoints = SIZES[size]
        for suffix in (".nii", ".nii.gz"):
            name = f"{size}-{'x'.join(map(str, shape))}x{timepoints}{suffix}"
            path = args.workdir / name
            if not path.exists():
                print(f"generating {path}", flush=True)
                generate_epi(path, shape=shape, n_timepoints=timepoints, seed=0)
            inputs[size, suffix] = path

    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    server, endpoint = start_s3_server(args.workdir)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    results: list[Measurement] = []
    throughput: dict[str, dict[str, float]] = {}
    try:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
        fs.mkdir("bench-s3-read")
        for (size, suffix), path in inputs.items():
            remote = f"bench-s3-read/{path.name}"
            fs.put(str(path), remote)
            if suffix == ".nii":
                throughput[size] = raw_get_throughput(fs, remote)
                print(f"{size} raw GET MB/s: {throughput[size]}", flush=True)
            for where, source in (("local", str(path)), ("s3", f"s3://{remote}")):
                runs = [run_job(source) for _ in range(args.repeat)]
                seconds = statistics.median(run[0] for run in runs)
                peak = statistics.median(run[1] for run in runs)
                ok = all(run[2] for run in runs)
                measurement = Measurement(
                    size, suffix, where, round(seconds, 2), round(peak, 1), ok, runs[-1][3]
                )
                results.append(measurement)
                print(measurement, flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(
        "\n| input | local wall (s) | local peak (MiB) | s3 wall (s) | s3 peak (MiB) | "
        "wall s3/local | peak s3/local |"
    )
    print("|---|---|---|---|---|---|---|")
    by_key = {(m.size, m.suffix, m.where): m for m in results}
    for size, suffix in inputs:
        local, remote = by_key[size, suffix, "local"], by_key[size, suffix, "s3"]
        print(
            f"| {size} {suffix} | {local.seconds:.2f} | {local.peak_mib:.0f} | "
            f"{remote.seconds:.2f} | {remote.peak_mib:.0f} | "
            f"x{remote.seconds / local.seconds:.2f} | x{remote.peak_mib / local.peak_mib:.2f} |"
        )
    args.output.write_text(
        json.dumps(
            {"jobs": [asdict(m) for m in results], "raw_get_mb_per_s": throughput}, indent=2
        )
        + "\n"
    )
    return 0 if all(m.ok for m in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
