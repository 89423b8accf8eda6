"""The least work issue 14's targets 1 and 2 ask of any program on this machine.

A hand-written two-thread NumPy program does only what ``NiftiMasker(mask_strategy="epi",
detrend=True, standardize="zscore_sample").fit_transform(path)`` cannot avoid, with no dask,
xarray, nibabel or scikit-learn:

1. one pass over the run's voxel data (``os.preadv`` of 32 MiB slabs from the page cache for a
   ``.nii``; for a ``.nii.gz`` an inflate by isal on one thread or rapidgzip on two,
   ``--decoder``, while the other thread writes the decoded copy and folds the mean);
2. a mask with as many voxels as daskmask's epi mask of the same run (the brightest voxels of
   the mean: the thresholding, opening and largest-component steps are left out, they cost
   milliseconds);
3. a second pass that gathers the mask's voxels of every volume into one float32
   ``(time, voxel)`` array (for a ``.nii.gz``, from a decoded copy the first pass wrote, as
   daskmask does: the file cannot be inflated twice in the time);
4. the cleaning: removing the linear trend (a least-squares fit on ``[1, t]``), then the
   z-score with the sample standard deviation, column tiles on two threads.

Its wall time (interpreter start-up and ``import numpy`` included) against nilearn's and
daskmask's on the same file in the same run says how far a target is from what the machine
allows. The figures are written to ``--output`` (JSON) and printed.

Run it from a clean checkout (``PYTHONPATH`` set to it) when the working tree is being edited.

Usage::

    .venv/bin/python benchmarks/bench_floor.py --input /tmp/daskmask-bench/hcp-nii.nii \
        --voxels 134979 --output benchmarks/results-floor.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_masker import (  # noqa: E402 - the jobs and measure of make bench
    compile_bytecode,
    peak_of_tree,
    run_job,
)

#: The minimal program, run in a fresh interpreter so that its start-up is counted.
FLOOR_JOB = r"""
import os, sys, time, tempfile
from concurrent.futures import ThreadPoolExecutor
import numpy as np

path, n_voxels, decoder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
started = time.perf_counter()
import gzip
with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
    header = f.read(352)
shape = tuple(int(v) for v in np.frombuffer(header[42:50], "<i2")[:4])
offset = int(np.frombuffer(header[108:112], "<f4")[0])
nx, ny, nz, nt = shape
volume = nx * ny * nz
slab_volumes = max(1, (32 << 20) // (2 * volume))
pool = ThreadPoolExecutor(2)
phases = {}

def slabs():
    return [(s, min(slab_volumes, nt - s)) for s in range(0, nt, slab_volumes)]

def each_read_slab(part, use):
    # Thread `part` of 2 reads every other slab into one reused buffer, then uses it.
    buffer = np.empty(slab_volumes * volume, np.int16)
    for index, (start, count) in enumerate(slabs()):
        if index % 2 == part:
            view = buffer[: count * volume]
            os.preadv(source_fd, [view], source_offset + start * volume * 2)
            use(start, view.reshape(count, volume))

# Pass 1: the mean, and (for a .nii.gz) a decoded copy to read back.
t = time.perf_counter()
sums = [np.zeros(volume, np.int64) for _ in range(2)]
if path.endswith(".gz"):
    if decoder == "rapidgzip":
        import rapidgzip
        stream = rapidgzip.open(path, parallelization=2)
    else:
        from isal import igzip
        stream = igzip.open(path, "rb")
    copy = tempfile.TemporaryFile(dir=os.environ.get("TMPDIR", "/tmp"))
    stream.read(offset)
    source_fd, source_offset = copy.fileno(), 0
    buffers = [np.empty(slab_volumes * volume, np.int16) for _ in range(2)]
    pending = None
    for index, (start, count) in enumerate(slabs()):
        buffer = buffers[index % 2][: count * volume]
        stream.readinto(memoryview(buffer).cast("B"))
        if pending is not None:
            pending.result()
        def fold(buffer=buffer, start=start, count=count, index=index):
            os.pwrite(source_fd, buffer, start * volume * 2)
            sums[index % 2] += buffer.reshape(count, volume).sum(0, dtype=np.int32)
        pending = pool.submit(fold)
    pending.result()
    stream.close()
else:
    source_fd, source_offset = os.open(path, os.O_RDONLY), offset
    def fold_slabs(part):
        def fold(start, slab):
            sums[part] += slab.sum(0, dtype=np.int32)
        each_read_slab(part, fold)
    list(pool.map(fold_slabs, range(2)))
mean = (sums[0] + sums[1]) / nt
phases["mean pass"] = time.perf_counter() - t

t = time.perf_counter()
voxels = np.sort(np.argpartition(mean, volume - n_voxels)[volume - n_voxels:])
phases["mask"] = time.perf_counter() - t

# Pass 2: gather the mask's voxels of every volume into the result.
t = time.perf_counter()
signals = np.empty((nt, n_voxels), np.float32)
def gather(start, slab):
    signals[start : start + len(slab)] = slab[:, voxels]
list(pool.map(lambda part: each_read_slab(part, gather), range(2)))
phases["gather pass"] = time.perf_counter() - t

# Cleaning: linear detrend then z-score (sample std), column tiles on two threads.
t = time.perf_counter()
time_axis = np.arange(nt, dtype=np.float64)
design = np.column_stack([np.ones(nt), time_axis - time_axis.mean()])
projector = np.linalg.pinv(design).astype(np.float32)
design = design.astype(np.float32)
def clean(columns):
    tile = signals[:, columns]
    tile -= design @ (projector @ tile)
    tile /= np.maximum(tile.std(axis=0, ddof=1), np.finfo(np.float32).eps)
    signals[:, columns] = tile
tiles = [slice(s, min(s + 4096, n_voxels)) for s in range(0, n_voxels, 4096)]
list(pool.map(clean, tiles))
phases["cleaning"] = time.perf_counter() - t
phases["total in the program"] = time.perf_counter() - started
print(repr(phases))
"""


def main() -> None:
    """Run nilearn, daskmask and the minimal program on one input; print and save ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="a .nii or .nii.gz run (int16)")
    parser.add_argument(
        "--voxels", type=int, default=134979, help="mask size (daskmask's epi mask of the run)"
    )
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--decoder",
        choices=("isal", "rapidgzip"),
        default="isal",
        help="the minimal program's inflater for a .nii.gz (isal: one thread; rapidgzip: two)",
    )
    parser.add_argument("--skip-nilearn", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    compile_bytecode()
    path = str(Path(args.input).resolve())
    results: dict[str, list[dict[str, object]]] = {"floor": [], "daskmask-memory": []}
    if path.endswith(".gz"):
        results["decode-pass"] = []  # target 1's reference: one isal decode pass
    if not args.skip_nilearn:
        results["nilearn"] = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-c", FLOOR_JOB, path, str(args.voxels), args.decoder],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        peak, output = peak_of_tree(process)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            raise SystemExit(f"the minimal program failed:\n{output}")
        phases = output.strip().splitlines()[-1]
        results["floor"].append({"seconds": wall, "peak_mib": peak, "phases": phases})
        print(f"floor: {wall:.2f} s, {peak:.0f} MiB  {phases}", flush=True)
        for job in [name for name in results if name != "floor"]:
            measured = run_job(Path(path).name, job, Path(path), Path(os.devnull), None)
            if not measured.ok:
                raise SystemExit(f"{job} failed: {measured.detail}")
            results[job].append({"seconds": measured.seconds, "peak_mib": measured.peak_mib})
            print(f"{job}: {measured.seconds:.2f} s, {measured.peak_mib:.0f} MiB", flush=True)
    best = {job: min(run["seconds"] for run in runs) for job, runs in results.items()}
    summary = {"input": path, "load": os.getloadavg(), "best_seconds": best, "runs": results}
    # target 1's reference is one decode pass, target 2's nilearn
    references = (("decode-pass", "one decode pass", 2), ("nilearn", "nilearn", 3))
    for reference, label, digits in references:
        if reference in best:
            key = reference.replace("-", "_")
            summary[f"floor_over_{key}"] = best["floor"] / best[reference]
            summary[f"daskmask_over_{key}"] = best["daskmask-memory"] / best[reference]
            print(
                f"floor x{summary[f'floor_over_{key}']:.{digits}f} of {label}, daskmask "
                f"x{summary[f'daskmask_over_{key}']:.{digits}f} (best of {args.repeat})"
            )
    if args.output is not None:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
