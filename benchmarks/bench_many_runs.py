"""Many runs: ``daskmask bids`` against the two ways nilearn's users mask a study.

One run of this script generates fMRIPrep-like derivatives datasets with
daskmask's generator (runs of 64x64x40x400 int16 ``.nii.gz`` with fMRIPrep's
confounds), then measures, in fresh subprocesses, the wall time and the peak
memory of the whole process tree (sampled every 20 ms with psutil, workers
included) of:

- nilearn (a): ``MultiNiftiMasker(n_jobs=2).fit_transform(runs, confounds=...,
  sample_mask=...)``;
- nilearn (b): a joblib loop (``n_jobs=2``) of ``NiftiMasker.fit_transform``
  over the runs;
- daskmask: ``daskmask bids`` with its default execution (dask's threads in
  the process, two runs in flight: ``daskmask/cli/_batch.py``), one results
  store per run;
- daskmask on the embedded LocalCluster (``--scheduler local``), for the rule
  that chooses between them.

Each job also reports its CPU time (user + system of the whole process tree,
workers included: ``getrusage`` of the reaped children), which, unlike the
wall time, does not depend on what else the machine runs. The start-up
(``import daskmask`` and ``import daskmask.cli`` in a fresh interpreter, best
of three) is measured too.

All three use ``epi`` masks, ``detrend`` + ``zscore_sample`` and the confounds
of the ``simple`` strategy (nilearn's ``load_confounds_strategy`` for nilearn,
daskmask's for daskmask). nilearn keeps the signals in memory; daskmask writes
them to Zarr stores. The figures go to ``results-many-runs.json``.

Usage::

    .venv/bin/python benchmarks/bench_many_runs.py --runs 8 32
    .venv/bin/python benchmarks/bench_many_runs.py --runs 8 --workdir /tmp/mrbench  # reuse data
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_masker import compile_bytecode, peak_of_tree

HERE = Path(__file__).resolve().parent
SHAPE = (64, 64, 40)
N_VOLUMES = 400

NILEARN_SETUP = """
import glob, warnings
warnings.simplefilter("ignore")
from nilearn.interfaces.fmriprep import load_confounds_strategy
bolds = sorted(glob.glob(ROOT + "/sub-*/func/*_desc-preproc_bold.nii.gz"))
confounds, sample_masks = load_confounds_strategy(bolds, denoise_strategy="simple")
PARAMS = dict(mask_strategy="epi", detrend=True, standardize="zscore_sample", t_r=2.0)
"""

JOBS = {
    "nilearn-multi": NILEARN_SETUP
    + """
from nilearn.maskers import MultiNiftiMasker
signals = MultiNiftiMasker(n_jobs=2, **PARAMS).fit_transform(
    bolds, confounds=confounds, sample_mask=sample_masks
)
print(len(signals), signals[0].shape)
""",
    "nilearn-joblib": NILEARN_SETUP
    + """
from joblib import Parallel, delayed
from nilearn.maskers import NiftiMasker
def one(bold, confound, sample_mask):
    return NiftiMasker(**PARAMS).fit_transform(bold, confounds=confound, sample_mask=sample_mask)
signals = Parallel(n_jobs=2)(
    delayed(one)(*args) for args in zip(bolds, confounds, sample_masks)
)
print(len(signals), signals[0].shape)
""",
    # The command as its script runs it (``daskmask bids ...``: main() reads sys.argv and
    # ends the process itself), not main([...]) as a caller inside its own process would.
    "daskmask-bids": """
import sys
from daskmask.cli import main
sys.argv = [
    "daskmask", "bids", ROOT, OUT, "--mask", "epi", "--detrend", "--standardize",
    "zscore_sample", "--confounds-strategy", "simple", "--force",
]
sys.exit(main())
""",
    "daskmask-bids-local": """
import sys
from daskmask.cli import main
sys.argv = [
    "daskmask", "bids", ROOT, OUT, "--mask", "epi", "--detrend", "--standardize",
    "zscore_sample", "--confounds-strategy", "simple", "--scheduler", "local", "--force",
]
sys.exit(main())
""",
}

#: The job the targets are checked on (daskmask's default execution).
OURS = "daskmask-bids"

#: Start-up: seconds to import in a fresh interpreter (best of three).
STARTUP = {
    "import daskmask": "import daskmask",
    "import daskmask.cli": "import daskmask.cli",
}


@dataclass
class Measurement:
    """Wall time and peak memory of one job on one dataset."""

    runs: int
    job: str
    seconds: float
    peak_mib: float
    ok: bool
    detail: str
    cpu_seconds: float = 0.0


def make_dataset(root: Path, n_runs: int, shape=SHAPE, n_volumes=N_VOLUMES) -> Path:
    """Generate (once) a derivatives dataset of ``n_runs`` runs, one per subject."""
    from daskmask.datasets import make_fmriprep_derivatives

    if not (root / "dataset_description.json").exists():
        make_fmriprep_derivatives(
            root,
            subjects=[f"{index:02d}" for index in range(1, n_runs + 1)],
            shape=tuple(shape),
            n_volumes=n_volumes,
            seed=0,
        )
    return root


def run_job(n_runs: int, job: str, root: Path, out: Path) -> Measurement:
    """Run one job in a fresh Python process and measure it."""
    code = f"ROOT = {str(root)!r}\nOUT = {str(out)!r}\n" + JOBS[job]
    before = _children_cpu()
    # The job's output goes to a file, not a pipe: a pipe is read only at the end, and
    # a job that writes more than its 64 KiB (distributed's logs) would block on it.
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, text=True, cwd=HERE
        )
        peak, _ = peak_of_tree(process)
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read().strip()
    cpu = _children_cpu() - before
    ok = process.returncode == 0
    detail = output.splitlines()[-1] if output else ""
    return Measurement(
        n_runs, job, round(seconds, 2), round(peak, 1), ok, detail[:300], round(cpu, 2)
    )


def _children_cpu() -> float:
    """User + system seconds of every reaped descendant (a job, its workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def startup_seconds(code: str, repeat: int = 3) -> float:
    """Best wall time of ``code`` in a fresh interpreter, the interpreter's start excluded."""
    script = (
        f"import time\nstart = time.perf_counter()\n{code}\nprint(time.perf_counter() - start)"
    )
    return min(
        float(
            subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(repeat)
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table with the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--shape", type=int, nargs=3, default=list(SHAPE))
    parser.add_argument("--volumes", type=int, default=N_VOLUMES)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=HERE / "results-many-runs.json")
    args = parser.parse_args(argv)
    compile_bytecode()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="daskmask-many-runs-"))
    measurements: list[Measurement] = []
    startup = {name: round(startup_seconds(code), 3) for name, code in STARTUP.items()}
    for name, seconds in startup.items():
        print(f"{name}: {seconds:.2f} s (best of 3)", flush=True)
    try:
        for n_runs in args.runs:
            start = time.perf_counter()
            root = make_dataset(
                workdir / f"derivatives-{n_runs}", n_runs, args.shape, args.volumes
            )
            print(f"{n_runs} runs generated in {time.perf_counter() - start:.1f} s", flush=True)
            for job in args.jobs:
                out = workdir / f"results-{n_runs}-{job}"
                measurement = run_job(n_runs, job, root, out)
                measurements.append(measurement)
                print(
                    f"{n_runs:3d} runs {job:19s} {measurement.seconds:8.2f} s wall "
                    f"{measurement.cpu_seconds:8.2f} s CPU {measurement.peak_mib:9.1f} MiB "
                    f"{'ok' if measurement.ok else 'FAILED'} {measurement.detail}",
                    flush=True,
                )
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print_table(measurements)
    ratios = summarise(measurements)
    ratios["import-daskmask-seconds"] = startup["import daskmask"]
    print(f"import daskmask: {startup['import daskmask']:.2f} s (target <= 0.5)")
    args.output.write_text(
        json.dumps(
            {
                "startup_seconds": startup,
                "measurements": [asdict(m) for m in measurements],
                "ratios": ratios,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.output}")
    return 0 if all(m.ok for m in measurements) else 1


def print_table(measurements: list[Measurement]) -> None:
    """Print the measurements as a Markdown table (benchmarks/README.md, "Many runs")."""
    print("\n| runs | job | wall (s) | CPU (s) | peak (MiB) |\n|---|---|---|---|---|")
    for m in measurements:
        status = "" if m.ok else " (failed)"
        print(
            f"| {m.runs} | {m.job}{status} | {m.seconds:.2f} | {m.cpu_seconds:.2f} | "
            f"{m.peak_mib:.0f} |"
        )
    print()


def summarise(measurements: list[Measurement]) -> dict[str, float]:
    """Print and return daskmask/nilearn ratios per size, and how daskmask grows with runs."""
    found = {(m.runs, m.job): m for m in measurements if m.ok}
    ratios: dict[str, float] = {}
    sizes = sorted({m.runs for m in measurements})
    for n_runs in sizes:
        ours = found.get((n_runs, OURS))
        theirs = [
            found[n_runs, job]
            for job in ("nilearn-multi", "nilearn-joblib")
            if (n_runs, job) in found
        ]
        if ours and theirs:
            wall = ours.seconds / min(m.seconds for m in theirs)
            peak = ours.peak_mib / min(m.peak_mib for m in theirs)
            cpu = ours.cpu_seconds / min(m.cpu_seconds for m in theirs)
            ratios[f"{n_runs}-wall-vs-nilearn-fastest"] = round(wall, 3)
            ratios[f"{n_runs}-peak-vs-nilearn-lowest"] = round(peak, 3)
            ratios[f"{n_runs}-cpu-vs-nilearn-lowest"] = round(cpu, 3)
            print(
                f"{n_runs} runs: daskmask wall x{wall:.2f} of nilearn's faster way (target <= 0.3)"
            )
            print(
                f"{n_runs} runs: daskmask peak x{peak:.2f} of nilearn's lower peak (target <= 0.3)"
            )
            print(f"{n_runs} runs: daskmask CPU time x{cpu:.2f} of nilearn's lower CPU time")
        local = found.get((n_runs, "daskmask-bids-local"))
        if ours and local:
            ratios[f"{n_runs}-threads-over-local-wall"] = round(ours.seconds / local.seconds, 3)
            ratios[f"{n_runs}-threads-over-local-peak"] = round(ours.peak_mib / local.peak_mib, 3)
            print(
                f"{n_runs} runs: daskmask on threads / on a LocalCluster: wall "
                f"x{ours.seconds / local.seconds:.2f}, peak x{ours.peak_mib / local.peak_mib:.2f}"
            )
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        for job in JOBS:
            first, last = found.get((small, job)), found.get((large, job))
            if first and last:
                grow = last.seconds / first.seconds
                flat = last.peak_mib / first.peak_mib
                ratios[f"{job}-wall-{large}-over-{small}"] = round(grow, 3)
                ratios[f"{job}-peak-{large}-over-{small}"] = round(flat, 3)
                target = " (target <= 4.2, same peak)" if job == OURS else ""
                print(
                    f"{job}: {small} -> {large} runs wall x{grow:.2f} "
                    f"(linear: x{large / small:.1f}), peak x{flat:.2f} (flat: x1.0){target}"
                )
    return ratios


if __name__ == "__main__":
    sys.exit(main())
