"""Benchmark daskmask's NiftiMasker against nilearn's, and against the machine's limits.

One run of this script generates realistic inputs with daskmask's generator,
then, for each input, measures in fresh subprocesses:

- nilearn: ``NiftiMasker(mask_strategy="epi", detrend=True,
  standardize="zscore_sample").fit_transform(path)`` into memory;
- daskmask: the same into memory (``.to_numpy()``) and into a Zarr store
  (``dm.save``);
- the machine: one cold read of the file and one gzip decode pass with the
  fastest decoder installed.

For each it prints the wall time, the peak memory of the whole process tree
(sampled every 20 ms with psutil, workers included) and the daskmask/nilearn
ratios, and writes the figures to a JSON file. It also times ``import
daskmask`` in a fresh interpreter, and ends with the table of issue 14's
targets (``bench_targets.py``: each figure, its ratio, met or not).

Usage::

    .venv/bin/python benchmarks/bench_masker.py --inputs walkthrough
    .venv/bin/python benchmarks/bench_masker.py --inputs walkthrough hcp-nii hcp-gz hcp-2x
    .venv/bin/python benchmarks/bench_masker.py --inputs huge   # ~30 GB, larger than memory

On ``huge`` nilearn runs under ``prlimit --as`` (12 GiB unless
``--nilearn-memory-limit-mib`` says otherwise) and daskmask only writes to Zarr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_targets import print_table  # noqa: E402 - the table of this same run

#: name -> (shape, n_timepoints, suffix)
INPUTS: dict[str, tuple[tuple[int, int, int], int, str]] = {
    "walkthrough": ((50, 59, 50), 100, ".nii.gz"),
    "hcp-gz": ((91, 109, 91), 1200, ".nii.gz"),
    "hcp-nii": ((91, 109, 91), 1200, ".nii"),
    "hcp-2x": ((91, 109, 91), 2400, ".nii"),
    # about 30 GB: more than this machine's memory (24 GiB)
    "huge": ((91, 109, 91), 16600, ".nii"),
}

#: Inputs whose signals would not fit in memory: only the Zarr job runs for daskmask,
#: and nilearn always runs under a memory limit (it must fail, not take the machine down).
LARGER_THAN_MEMORY = {"huge"}
#: The limit (MiB of address space) nilearn gets on those inputs unless one is given.
DEFAULT_LIMIT_MIB = 12 * 1024

PARAMS = 'mask_strategy="epi", detrend=True, standardize="zscore_sample"'

JOBS = {
    "nilearn": f"""
import warnings; warnings.simplefilter("ignore")
from nilearn.maskers import NiftiMasker
signals = NiftiMasker({PARAMS}).fit_transform(PATH)
print(signals.shape)
""",
    "daskmask-memory": f"""
import daskmask as dm
signals = dm.NiftiMasker({PARAMS}).fit_transform(PATH).to_numpy()
print(signals.shape)
""",
    "daskmask-zarr": f"""
import daskmask as dm
signals = dm.NiftiMasker({PARAMS}).fit_transform(PATH)
dm.save(signals, OUT, overwrite=True)
print(signals.shape)
""",
    "cold-read": """
import os
with open(PATH, "rb", buffering=0) as stream:
    os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    while stream.read(1 << 24):
        pass
""",
    "decode-pass": """
try:
    from isal import igzip as gzip
except ImportError:
    import gzip
with gzip.open(PATH, "rb") as stream:
    while stream.read(1 << 24):
        pass
""",
}


@dataclass
class Measurement:
    """Wall time and peak memory of one job on one input."""

    input: str
    job: str
    seconds: float
    peak_mib: float
    ok: bool
    detail: str


#: Where each job's interpreter starts. ``python -c`` puts its working directory first on
#: ``sys.path``: started in the repository, a job would import the working tree's daskmask
#: even when ``PYTHONPATH`` names another commit's worktree to measure.
JOB_DIRECTORY = Path(__file__).resolve().parent


def compile_bytecode(package: Path | None = None) -> None:
    """Write the bytecode of daskmask's modules before anything is timed.

    What pip does when it installs a package, and what an editable install
    leaves to the first import, which does not write it where
    ``PYTHONDONTWRITEBYTECODE`` is set (as on this project's machines). Without
    it every measured process compiles daskmask's ~90 modules again (0.2-0.45 s
    of its start) while nilearn, installed, does not: an artefact of the
    machine, not a cost a user pays (the Makefile's ``bytecode`` target).
    ``package`` defaults to the daskmask that this interpreter imports (another
    commit's worktree when PYTHONPATH names one).
    """
    import compileall
    import importlib.util

    if package is None:
        spec = importlib.util.find_spec("daskmask")
        if spec is None or spec.origin is None:
            return
        package = Path(spec.origin).parent
    compileall.compile_dir(str(package), quiet=1)


def peak_of_tree(process: subprocess.Popen, interval: float = 0.02) -> tuple[float, str]:
    """Wait for ``process``; return the peak summed RSS of it and its children (MiB)."""
    peak = 0
    root = psutil.Process(process.pid)
    while process.poll() is None:
        total = 0
        try:
            for member in [root, *root.children(recursive=True)]:
                try:
                    total += member.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        peak = max(peak, total)
        time.sleep(interval)
    output = process.stdout.read() if process.stdout else ""
    return peak / 2**20, output.strip()


def run_job(
    name: str, job: str, path: Path, out: Path, memory_limit_mib: int | None
) -> Measurement:
    """Run one job in a fresh Python process and measure it."""
    code = f"PATH = {str(path.resolve())!r}\nOUT = {str(out.resolve())!r}\n" + JOBS[job]
    limit = []
    if memory_limit_mib:
        # nilearn on a larger-than-memory run must fail, not take the machine down.
        limit = ["prlimit", f"--as={memory_limit_mib * 2**20}"]
    start = time.perf_counter()
    process = subprocess.Popen(
        [*limit, sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=JOB_DIRECTORY,
    )
    peak, output = peak_of_tree(process)
    seconds = time.perf_counter() - start
    ok = process.returncode == 0
    detail = output.splitlines()[-1] if output else ""
    return Measurement(name, job, round(seconds, 2), round(peak, 1), ok, detail[:200])


IMPORT_CODE = """
import time
start = time.perf_counter()
import daskmask
print(f"{time.perf_counter() - start:.4f}")
"""


def time_import(repeats: int = 3) -> Measurement:
    """Time ``import daskmask`` in fresh interpreters; keep the fastest of ``repeats``."""
    seconds = []
    for _ in range(repeats):
        completed = subprocess.run(
            [sys.executable, "-c", IMPORT_CODE],
            capture_output=True,
            text=True,
            check=False,
            cwd=JOB_DIRECTORY,
        )
        if completed.returncode != 0:
            return Measurement("startup", "import-daskmask", 0.0, 0.0, False, completed.stderr)
        seconds.append(float(completed.stdout.split()[-1]))
    return Measurement("startup", "import-daskmask", min(seconds), 0.0, True, "")


def generate(name: str, folder: Path) -> Path:
    """Generate (once) the input ``name`` in ``folder``."""
    from daskmask.datasets import generate_epi

    shape, n_timepoints, suffix = INPUTS[name]
    path = folder / f"{name}{suffix}"
    if not path.exists():
        generate_epi(path, shape=shape, n_timepoints=n_timepoints, kind="raw", seed=0)
    return path


def drop_from_page_cache(path: Path) -> None:
    """Write ``path``'s dirty pages back, then drop it from the page cache.

    ``POSIX_FADV_DONTNEED`` drops clean pages only: right after generating the
    30 GB input, gigabytes of it are still dirty, and a "cold" read then ran at
    1.3 GB/s (twice the disk's speed). Each job on a larger-than-memory input
    starts from this state.
    """
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())
        os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def print_linearity(measurements: list[Measurement]) -> None:
    """Print how wall time and peak memory grow from the HCP-like run to the 2x run."""
    found = {(m.input, m.job): m for m in measurements}
    for job in ("daskmask-memory", "daskmask-zarr", "nilearn"):
        single, double = found.get(("hcp-nii", job)), found.get(("hcp-2x", job))
        if single and double and single.ok and double.ok:
            print(
                f"2x time points {job:16s} wall x{double.seconds / single.seconds:.2f}, "
                f"peak x{double.peak_mib / single.peak_mib:.2f}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", nargs="+", default=["walkthrough"], choices=list(INPUTS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/daskmask-bench"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--nilearn-memory-limit-mib", type=int, default=None)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    compile_bytecode()

    measurements: list[Measurement] = [time_import()]
    print(f"import daskmask {measurements[0].seconds:.3f} s (fastest of 3)", flush=True)
    for name in args.inputs:
        path = generate(name, args.workdir)
        jobs = ["cold-read"] + (["decode-pass"] if path.suffix == ".gz" else [])
        jobs += ["nilearn", "daskmask-zarr"]
        if name not in LARGER_THAN_MEMORY:
            jobs.insert(-1, "daskmask-memory")
        for job in jobs:
            if name in LARGER_THAN_MEMORY:
                drop_from_page_cache(path)
            limit = args.nilearn_memory_limit_mib if job == "nilearn" else None
            if job == "nilearn" and name in LARGER_THAN_MEMORY:
                limit = limit or DEFAULT_LIMIT_MIB
            m = run_job(name, job, path, args.workdir / f"{name}.zarr", limit)
            measurements.append(m)
            print(
                f"{name:12s} {job:16s} {m.seconds:8.2f} s {m.peak_mib:9.1f} MiB "
                f"{'ok' if m.ok else 'FAILED'} {m.detail if not m.ok else ''}",
                flush=True,
            )
        by_job = {m.job: m for m in measurements if m.input == name}
        reference = by_job["nilearn"]
        for job in ("daskmask-memory", "daskmask-zarr"):
            if job not in by_job:
                continue
            ours = by_job[job]
            if reference.ok:
                print(
                    f"{name:12s} {job:16s} wall x{ours.seconds / reference.seconds:.2f}, "
                    f"peak x{ours.peak_mib / reference.peak_mib:.2f} of nilearn",
                    flush=True,
                )
        for job in ("daskmask-memory", "daskmask-zarr"):
            if "decode-pass" in by_job and job in by_job:
                ratio = by_job[job].seconds / by_job["decode-pass"].seconds
                print(f"{name:12s} {job:16s} wall x{ratio:.2f} of one decode pass", flush=True)
    print_linearity(measurements)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps([asdict(m) for m in measurements], indent=1))
    print(f"figures written to {args.output} (cpus: {os.cpu_count()}, load {os.getloadavg()})")
    print_table([asdict(m) for m in measurements])
    return 0


if __name__ == "__main__":
    sys.exit(main())
