"""Benchmark the time-to-voxel reorganisation on a cluster whose workers share no disk.

Two candidates, on the HCP-like run (91x109x91x1200 int16 ``.nii``) read from
and written back to a real S3 server (``--s3-server``: s3rver by default, or moto; a
separate process), with
``NiftiMasker(mask_strategy="epi", detrend=True, standardize="zscore_sample")``
``.fit_transform`` + ``dm.save``, on a scheduler and two ``dask worker``
processes (one thread each), each under ``unshare --mount`` with its own tmpfs
on ``/tmp`` (``tests/_isolated_cluster.py``; needs root):

``p2p``
    dask's P2P rechunk (distributed's shuffle extension: pieces of slabs go
    from worker to worker and spill to each worker's own disk); what daskmask
    chooses on such a cluster;
``zarr-s3``
    a Zarr intermediate on an object-store prefix: stage 1 stores each masked
    slab into an uncompressed Zarr array chunked ``(slab, voxel_block)`` on
    S3, stage 2 reads ``(all time, voxel_block)`` blocks from it after a
    barrier (the job swaps it in for the raw-file intermediate).

For each: wall time of the job, the peak summed RSS of the job's process tree
and the cluster's, and the peak RSS of the largest worker process.

Usage::

    .venv/bin/python benchmarks/bench_reorganise.py [--timepoints 1200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import bench_cluster  # noqa: E402
from _isolated_cluster import can_unshare, start_isolated_cluster  # noqa: E402
from _s3rver import SERVERS, remove_s3rver_data  # noqa: E402

#: Replaces the raw-file intermediate by a Zarr array on the object store (job "zarr-s3").
ZARR_INTERMEDIATE = """
import uuid
import dask.array as da
import zarr
from dask.graph_manipulation import bind
from daskmask.extraction import _apply_mask

_raw_file = _apply_mask.to_voxel_blocks

def _zarr_blocks(masked, plan, dtype=None):
    if plan.strategy == "in-memory":
        return _raw_file(masked, plan, dtype)
    if masked.numblocks[1] != 1:
        masked = masked.rechunk({1: -1})
    url = f"s3://bench/intermediate/{uuid.uuid4().hex}.zarr"
    store = zarr.storage.FsspecStore.from_url(url, storage_options=OPTIONS)
    array = zarr.create_array(
        store, shape=masked.shape, chunks=(max(masked.chunks[0]), plan.voxel_block),
        dtype=masked.dtype, compressors=None, fill_value=0,
    )
    written = da.store(masked, array, lock=False, compute=False)
    blocks = da.from_zarr(array, chunks=((masked.shape[0],), plan.voxel_chunks))
    blocks = bind(blocks, written)
    return blocks if dtype is None else blocks.astype(dtype)

_apply_mask.to_voxel_blocks = _zarr_blocks
dask.config.set({"daskmask.reorganise": "intermediate"})
"""

JOBS = {
    "p2p": 'dask.config.set({"daskmask.reorganise": "p2p"})\n',
    "zarr-s3": ZARR_INTERMEDIATE,
}


def main(argv: list[str] | None = None) -> int:
    """Run both candidates and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timepoints", type=int, default=1200)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--s3-server", choices=SERVERS, default="s3rver")
    parser.add_argument("--memory-limit", default="6GiB", help="per worker")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/daskmask-bench"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results-reorganise.json"))
    args = parser.parse_args(argv)
    if not can_unshare():
        print("needs root and unshare --mount", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)

    path = bench_cluster.hcp_run(args.workdir, args.timepoints)
    server, url = bench_cluster.serve_run(args.s3_server, args.workdir, path)
    options = server.storage_options
    scratch = Path(tempfile.mkdtemp(prefix="bench-reorganise-", dir=args.workdir))
    measurements = []
    base_job = bench_cluster.JOB
    try:
        from distributed import Client

        for _ in range(args.repeat):
            for job, setup in JOBS.items():
                cluster = start_isolated_cluster(scratch, memory_limit=args.memory_limit)
                try:
                    with Client(cluster.address, timeout=60) as client:
                        client.wait_for_workers(2, timeout=90)
                    # The candidate's setup runs in the client before the pipeline.
                    bench_cluster.JOB = base_job.replace(
                        "kwargs = {", setup.replace("OPTIONS", repr(options)) + "kwargs = {", 1
                    )
                    measurement = bench_cluster.run_job(
                        job,
                        url,
                        f"s3://bench/{job}.zarr",
                        options,
                        scheduler=cluster.address,
                        cluster_pids=tuple(p.pid for p in (cluster.scheduler, *cluster.workers)),
                    )
                finally:
                    bench_cluster.JOB = base_job
                    cluster.stop()
                measurements.append(measurement)
                print(
                    f"{job:8s} {measurement.seconds:8.2f} s  tree {measurement.peak_mib:8.1f} MiB"
                    f"  largest worker {measurement.peak_worker_mib:7.1f} MiB  "
                    f"{'ok' if measurement.ok else 'FAILED ' + measurement.detail}",
                    flush=True,
                )
    finally:
        server.stop()
        remove_s3rver_data(server, args.workdir)
        shutil.rmtree(scratch, ignore_errors=True)
    args.output.write_text(json.dumps([asdict(m) for m in measurements], indent=2) + "\n")
    return 0 if all(m.ok for m in measurements) else 1


if __name__ == "__main__":
    raise SystemExit(main())
