"""What ``daskmask run`` and ``daskmask bids`` share: the scheduler, signals, the batch, the end.

Scheduler (``--scheduler``):

* ``threads``: dask's threaded scheduler in this process, no client;
* ``local``, or another kind of :data:`daskmask.cluster.CLUSTER_KINDS`
  (``slurm``, ``kubernetes``, ...): :func:`daskmask.connect` starts it
  (``jobs=N`` with ``--jobs N``), and the command closes it at the end. The
  LocalCluster of a batch is one worker process with a thread per core;
* anything else: the address of a running scheduler.

Without ``--scheduler``: ``$DASKMASK_SCHEDULER`` when set, else ``threads``,
whatever the number and the size of the runs. On one machine a batch on
threads is faster and smaller than on a LocalCluster of processes: measured
with 8 runs of 64x64x40x400 int16 ``.nii.gz`` (``benchmarks/README.md``, "Many
runs"), the LocalCluster costs about twice the CPU time (every worker imports
daskmask, the signals go through the scheduler and the workers pickle
them) and about 250 MiB more per worker process, while the work itself
(inflating, masking, cleaning, compressing) releases the GIL. A cluster is
for more than one machine: name it (``--scheduler local|slurm|ADDRESS``).

On threads, the batch runs :func:`threads_execution`: one pool of as many
threads as cores computes the tasks of every run in flight (dask's default
would give each run's thread a pool of its own, cores + 4 threads each), BLAS
runs single-threaded inside those tasks (as in distributed's workers), and
the task budget is :data:`BATCH_BLOCK_BYTES` unless ``daskmask.block-bytes``
is configured.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import dask

from daskmask._memory import BUDGET_KEY
from daskmask.batch._progress import BatchProgress
from daskmask.batch._runner import BatchInterrupted, Prepared, RunPlan, execute, prepare
from daskmask.batch._summary import SUMMARY_NAME, RunOutcome
from daskmask.cli._options import UsageError

if TYPE_CHECKING:
    from types import ModuleType

#: The variable naming the default scheduler (:data:`daskmask.cluster.SCHEDULER_ENV_VAR`,
#: the same name): spelled here so that a batch on threads never imports
#: :mod:`daskmask.cluster`, hence distributed (0.15-0.3 s and 10 MiB at every start).
SCHEDULER_ENV_VAR = "DASKMASK_SCHEDULER"

#: Before the batch ran on threads whatever the runs: the size under which one run was
#: masked on threads (kept for callers that read it; no longer part of the rule).
SMALL_RUN_BYTES = 1 << 30

#: Task budget of a batch on threads (see :mod:`daskmask._memory`), unless
#: ``daskmask.block-bytes`` is set. With the two runs in flight sharing one pool of
#: cores threads, each task (a time slab, a voxel block and its cleaning copies)
#: holds a few times this, so the process stays at a few hundred MiB whatever the
#: runs: 8 runs of 64x64x40x400 peaked at 555 MiB with 16 MiB tasks, 418 with 8 MiB,
#: 351-370 with 4 MiB (same CPU time). 4 MiB cut HCP-sized runs (91x109x91x1200) into
#: slabs of one or two volumes, which cost 15-25 % more wall time than 8 or 16 MiB.
#: Measured in ``benchmarks/README.md`` ("Many runs").
BATCH_BLOCK_BYTES = "8MiB"

#: glibc malloc arenas of a batch on threads (``mallopt(M_ARENA_MAX)``; default 8 per core).
BATCH_MALLOC_ARENAS = 2


#: Runs masked at the same time when neither --runs-in-flight nor workers say more: on
#: threads, one run's serial parts (its decode pass, its mask, its store's metadata)
#: overlap the other's tasks.
DEFAULT_RUNS_IN_FLIGHT = 2


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--scheduler``, ``--jobs``, ``--runs-in-flight`` and ``--force``."""
    group = parser.add_argument_group("execution")
    group.add_argument(
        "--scheduler",
        metavar="threads|local|KIND|ADDRESS",
        help=(
            "where to compute (default: $DASKMASK_SCHEDULER, else threads: dask's threads "
            "in this process; local: a LocalCluster on this machine, one worker process with a "
            "thread per core; KIND: a "
            "cluster the command starts, such as slurm or kubernetes; ADDRESS: a running "
            "scheduler)"
        ),
    )
    group.add_argument(
        "--jobs",
        type=_positive_int("--jobs"),
        metavar="N",
        help=(
            "jobs (or pods) of a cluster the command starts (--scheduler with a cluster kind; "
            "default: one per run in flight, at most the runs to do); released at the end"
        ),
    )
    group.add_argument(
        "--runs-in-flight",
        type=_positive_int("--runs-in-flight"),
        metavar="N",
        help=(
            "runs masked at the same time (default: 2 on threads, else the number of workers, "
            "at least 2): bounds the memory in use whatever the number of runs"
        ),
    )
    group.add_argument(
        "--force", action="store_true", help="redo every run, even those already complete"
    )


def _positive_int(option: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
        return value

    parse.__name__ = option
    return parse


def _cluster() -> ModuleType:
    """:mod:`daskmask.cluster`, imported when a batch uses a cluster (it imports distributed)."""
    from daskmask import cluster

    return cluster


def _starts_cluster(choice: str) -> bool:
    """Whether ``choice`` is a kind of cluster the command starts (and closes)."""
    return choice != "threads" and choice in _cluster().CLUSTER_KINDS


def choose_scheduler(option: str | None, prepared: Sequence[Prepared]) -> str:
    """Return the scheduler to use (see the module docstring for the rule)."""
    if option:
        return option
    del prepared  # the rule no longer depends on the runs (see the module docstring)
    environment = os.environ.get(SCHEDULER_ENV_VAR)
    if environment:
        return environment
    return "threads"


@contextlib.contextmanager
def threads_execution() -> Iterator[int]:
    """Compute a batch on dask's threads in this process; yield the number of threads.

    One pool of as many threads as dask's ``num_workers`` (else the cores)
    runs the tasks of every run in flight; without it, dask gives each
    calling thread (one per run in flight) a pool of its own of cores + 4
    threads, so that the tasks, hence the memory in use, multiply with the
    runs in flight. BLAS (OpenBLAS, MKL) is limited to one thread inside
    the tasks, as distributed does in its workers: its own threads competed
    with dask's for the same cores (measured: 30-40 % more CPU time for the
    cleaning). The task budget is :data:`BATCH_BLOCK_BYTES` unless
    ``daskmask.block-bytes`` is configured, and (from the start of
    :func:`run_batch`) glibc gives the batch's threads at most
    :data:`BATCH_MALLOC_ARENAS` malloc arenas: each of the threads
    (compute, runs in flight, their decode helpers) otherwise gets an arena of
    its own, which keeps the memory its tasks freed for itself (measured: peak
    about 60 MiB less with 8 runs, CPU time unchanged).
    """
    from dask.threaded import ContextAwareThreadPoolExecutor, get
    from threadpoolctl import threadpool_limits

    threads = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    # dask's threaded scheduler as a function, not the name "threads": dask resolves a
    # name by first looking for a current distributed Client, which imports distributed
    # (0.15-0.3 s of every batch on threads); the function is used as it is.
    settings: dict[str, Any] = {"scheduler": get, "pool": None, "num_workers": threads}
    if dask.config.get(BUDGET_KEY, "auto") in ("auto", None):
        settings[BUDGET_KEY] = BATCH_BLOCK_BYTES
    pool = ContextAwareThreadPoolExecutor(threads, thread_name_prefix="dask-batch")
    settings["pool"] = pool
    try:
        with dask.config.set(settings), threadpool_limits(limits=1, user_api="blas"):
            yield threads
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _limit_malloc_arenas(arenas: int) -> None:
    """Cap glibc's malloc arenas for the threads started from now on (elsewhere: nothing)."""
    m_arena_max = -8  # glibc's malloc.h
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(m_arena_max, arenas)


@contextlib.contextmanager
def scheduler(choice: str, jobs: int | None) -> Iterator[Any]:
    """Compute on ``choice``; yield the client (None on threads), closed at the end."""
    if choice == "threads":
        if jobs is not None:
            raise UsageError(
                "--jobs", "only applies to a cluster; drop it with --scheduler threads"
            )
        with threads_execution():
            yield None
        return
    cluster = _cluster()
    extra: dict[str, Any] = {"jobs": jobs} if jobs is not None else {}
    if choice == "local":
        # One worker process with a thread per core, not a process per core: each worker
        # process starts an interpreter and imports the scientific stack and daskmask
        # (1.5-2 s of CPU each), and its results travel between processes. The work in
        # the tasks releases the GIL, so the threads of one worker use every core.
        extra.update(n_workers=1, threads_per_worker=os.cpu_count() or 1)
    try:
        if choice in cluster.CLUSTER_KINDS:
            client = cluster.connect(cluster=choice, **extra)
        else:
            if jobs is not None:
                raise UsageError(
                    "--jobs", f"only applies to a cluster the command starts, not to {choice}"
                )
            client = cluster.connect(choice)
    except UsageError:
        raise
    except (OSError, ValueError) as error:
        raise UsageError(
            "--scheduler",
            f"cannot use {choice!r} ({error}); give threads, local, "
            f"{', '.join(k for k in cluster.CLUSTER_KINDS if k != 'local')} "
            "or a scheduler address such as tcp://host:8786",
        ) from None
    try:
        yield client
    finally:
        _close(client, started=choice in cluster.CLUSTER_KINDS)


def _close(client: Any, *, started: bool) -> None:
    """Close the client, and the cluster the command started (that cancels its jobs)."""
    cluster = getattr(client, "cluster", None)
    with contextlib.suppress(Exception):
        client.close(timeout=10)
    if started and cluster is not None:
        with contextlib.suppress(Exception):
            cluster.close(timeout=10)


def _workers(client: Any) -> int:
    try:
        return len(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001 - a scheduler that does not answer: assume none yet
        return 0


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[list[int]]:
    """SIGTERM (a job scheduler's cancel, ``kill``) stops the batch as Ctrl-C does."""
    received: list[int] = []

    def handler(number: int, frame: Any) -> None:
        received.append(number)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


def run_batch(
    plans: Sequence[RunPlan],
    output_dir: str,
    args: argparse.Namespace,
    *,
    command: str,
) -> int:
    """Run ``plans``: resume decisions, scheduler, progress, summary; return the exit status."""
    start = time.perf_counter()
    # before any thread of the batch starts (those of prepare included): see threads_execution
    _limit_malloc_arenas(BATCH_MALLOC_ARENAS)
    with _terminate_as_interrupt() as received:
        try:
            prepared = prepare(plans, force=args.force)
            choice = choose_scheduler(args.scheduler, prepared)
            starts_cluster = _starts_cluster(choice)
            needs_compute = any(item.action == "run" for item in prepared)
            jobs = args.jobs
            if jobs is None and starts_cluster and choice != "local":
                # A job-queue or Kubernetes cluster gets one job per run in flight, never
                # more than there are runs to do: a shared queue is not flooded by default.
                to_do = sum(item.action == "run" for item in prepared)
                jobs = max(1, min(to_do, args.runs_in_flight or DEFAULT_RUNS_IN_FLIGHT))
            with scheduler(choice, jobs) if needs_compute else contextlib.nullcontext() as client:
                in_flight = args.runs_in_flight or (
                    DEFAULT_RUNS_IN_FLIGHT
                    if client is None
                    else max(DEFAULT_RUNS_IN_FLIGHT, _workers(client), jobs or 0)
                )
                with BatchProgress(len(prepared)) as progress:
                    if client is not None:
                        message = _cluster().dashboard_message(client)
                        if message:
                            progress.note(message)
                    outcomes = execute(
                        prepared,
                        output_dir,
                        runs_in_flight=in_flight,
                        progress=progress,
                        on_interrupt=(
                            (lambda: _close(client, started=starts_cluster))
                            if client is not None
                            else None
                        ),
                    )
        except BatchInterrupted as interrupted:
            number = received[0] if received else signal.SIGINT
            name = signal.Signals(number).name
            _report(interrupted.outcomes, output_dir, command, time.perf_counter() - start)
            print(
                f"daskmask {command}: stopped by {name}; the runs not done are marked failed "
                "and are done by the next call of the same command.",
                file=sys.stderr,
                flush=True,
            )
            status = 128 + int(number)
            if any(t.name.startswith("run") and t.is_alive() for t in threading.enumerate()):
                # a run on dask's threads cannot be cancelled: leave without waiting for it
                # (its unfinished store is never marked complete, the next save cleans it)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
            return status
    _report(outcomes, output_dir, command, time.perf_counter() - start)
    return 1 if any(outcome.status == "failed" for outcome in outcomes) else 0


def _report(outcomes: Sequence[RunOutcome], output_dir: str, command: str, seconds: float) -> None:
    """Print the end summary: counts, where the table is, and each failure."""
    counts = {status: 0 for status in ("done", "skipped", "failed")}
    for outcome in outcomes:
        counts[outcome.status] += 1
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    summary = output_dir.rstrip("/") + "/" + SUMMARY_NAME
    print(
        f"daskmask {command}: {len(outcomes)} runs: {parts} in {seconds:.1f} s. "
        f"Summary: {summary}",
        flush=True,
    )
    for outcome in outcomes:
        if outcome.status == "failed":
            print(f"failed: {outcome.input}: {outcome.error}", file=sys.stderr, flush=True)
