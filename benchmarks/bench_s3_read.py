"""Benchmark reading runs from object storage against reading them from local files.

Generates runs with daskmask's generator (``.nii`` and ``.nii.gz`` int16, at
64x64x40x600 and at the HCP-like 91x109x91x1200), uploads them to real S3
servers (``--s3-server``: moto's server mode and s3rver, see
``benchmarks/_s3rver.py``; each a separate process on 127.0.0.1, outside the
measured process tree), and measures in a fresh subprocess per job, with dask's
threads::

    np.asarray(NiftiMasker(mask_strategy="epi", detrend=True,
                           standardize="zscore_sample").fit_transform(source))

from the local file and from its ``s3://`` URL: wall time and the peak of the
summed RSS of the job's process tree (sampled every 20 ms). It also measures
the raw GET throughput of the same server on the ``.nii`` object (one streamed
GET, and 64 MiB ranged GETs one and two at a time) and its PUT throughput (one
512 MiB multipart upload, 8 MiB objects one after the other), because the
server bounds what any reader or writer can do. Ratios s3 / local close the table.

Results (``--output``, default ``benchmarks/results-s3-read.json``)::

    {"schema": "daskmask-bench-s3-read/2", "load": {"before": [...], "after": [...]},
     "jobs": [{"size": "hcp", "suffix": ".nii", "where": "local" | "s3",
               "server": null | "moto" | "s3rver", "seconds": wall, "peak_mib": peak,
               "ok": bool, "detail": str}, ...],
     "raw_get_mb_per_s": {"<server>": {"<size>": {"one streamed GET": MB/s,
                                                  "64 MiB ranged GETs x1": ..., "x2": ...,
                                                  "one multipart PUT": ..., "8 MiB PUTs": ...}}}}

Usage::

    .venv/bin/python benchmarks/bench_s3_read.py [--sizes small hcp] [--repeat 1]
        [--s3-server moto s3rver]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _s3rver import SERVERS, remove_s3rver_data, start_s3_server  # noqa: E402

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
    server: str | None
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


def raw_put_throughput(fs, path: str, nbytes: int = 512 << 20) -> dict[str, float]:
    """MB/s of the server for one upload of ``nbytes`` (multipart, as a Zarr store's large
    chunks or ``inverse_transform``'s object are written) and for 8 MiB objects x32."""
    import numpy as np

    payload = np.random.default_rng(0).integers(0, 255, nbytes, np.uint8).tobytes()
    speeds = {}
    start = time.perf_counter()
    with fs.open(path, "wb", block_size=64 << 20) as handle:
        handle.write(payload)
    speeds["one multipart PUT"] = nbytes / (time.perf_counter() - start) / 1e6
    piece = 8 << 20
    start = time.perf_counter()
    for index in range(32):
        fs.pipe_file(f"{path}-{index}", payload[index * piece : (index + 1) * piece])
    speeds["8 MiB PUTs"] = 32 * piece / (time.perf_counter() - start) / 1e6
    fs.rm([path, *(f"{path}-{index}" for index in range(32))])
    return {name: round(value, 1) for name, value in speeds.items()}


SCHEMA = "daskmask-bench-s3-read/2"


def _measure(size: str, suffix: str, where: str, server: str | None, source: str, repeat: int):
    runs = [run_job(source) for _ in range(repeat)]
    seconds = statistics.median(run[0] for run in runs)
    peak = statistics.median(run[1] for run in runs)
    ok = all(run[2] for run in runs)
    measurement = Measurement(
        size, suffix, where, server, round(seconds, 2), round(peak, 1), ok, runs[-1][3]
    )
    print(measurement, flush=True)
    return measurement


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "hcp"])
    parser.add_argument("--repeat", type=int, default=1, help="runs per job (median kept)")
    parser.add_argument(
        "--s3-server", nargs="+", choices=SERVERS, default=list(SERVERS),
        help="S3 servers to read from (default: both)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/daskmask-bench"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results-s3-read.json"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = list(os.getloadavg())

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

    results: list[Measurement] = []
    throughput: dict[str, dict[str, dict[str, float]]] = {}
    for (size, suffix), path in inputs.items():
        results.append(_measure(size, suffix, "local", None, str(path), args.repeat))
    for kind in args.s3_server:
        server = start_s3_server(kind, args.workdir)
        os.environ.update(server.environment)
        throughput[kind] = {}
        try:
            fs = s3fs.S3FileSystem(
                skip_instance_cache=True,
                **server.storage_options,
                config_kwargs={"read_timeout": 900},
            )
            fs.mkdir("bench-s3-read")
            for (size, suffix), path in inputs.items():
                remote = f"bench-s3-read/{path.name}"
                fs.put(str(path), remote)
                if suffix == ".nii":
                    throughput[kind][size] = {
                        **raw_get_throughput(fs, remote),
                        **raw_put_throughput(fs, f"{remote}.put-probe"),
                    }
                    print(f"{kind} {size} raw GET MB/s: {throughput[kind][size]}", flush=True)
                source = f"s3://{remote}"
                results.append(_measure(size, suffix, "s3", kind, source, args.repeat))
        finally:
            server.stop()
            remove_s3rver_data(server, args.workdir)

    print(
        "\n| input | server | local wall (s) | local peak (MiB) | s3 wall (s) | s3 peak (MiB) | "
        "wall s3/local | peak s3/local |"
    )
    print("|---|---|---|---|---|---|---|---|")
    by_key = {(m.size, m.suffix, m.server): m for m in results}
    for kind in args.s3_server:
        for size, suffix in inputs:
            local, remote = by_key[size, suffix, None], by_key[size, suffix, kind]
            print(
                f"| {size} {suffix} | {kind} | {local.seconds:.2f} | {local.peak_mib:.0f} | "
                f"{remote.seconds:.2f} | {remote.peak_mib:.0f} | "
                f"x{remote.seconds / local.seconds:.2f} | "
                f"x{remote.peak_mib / local.peak_mib:.2f} |"
            )
    document = {
        "schema": SCHEMA,
        "load": {"before": load_before, "after": list(os.getloadavg())},
        "cpus": os.cpu_count(),
        "jobs": [asdict(m) for m in results],
        "raw_get_mb_per_s": throughput,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if all(m.ok for m in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
