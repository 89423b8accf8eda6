"""The memory budget of one task, from the configuration and the memory available.

Every chunk daskmask plans (time slabs read from a NIfTI file, voxel blocks
cleaned, slabs unmasked) holds at most :func:`task_budget_bytes`. The budget is

* ``dask.config.get("daskmask.block-bytes")`` when it is set to a size
  (``dask.config.set({"daskmask.block-bytes": "64MiB"})``);
* otherwise (``"auto"``, the default) the smallest of 32 MiB, dask's
  ``array.chunk-size`` (128 MiB by default) and an eighth of the memory one
  thread can count on: a cleaning task holds its block, a float copy,
  numpy's temporaries and its result, and finished blocks wait to be
  gathered.

Why 32 MiB: glibc's ``malloc`` maps every buffer above its adaptive threshold
(at most 32 MiB) afresh and returns it to the system when freed, so each
larger slab pays its first-touch page faults again (about 1.4 GB/s on the
benchmark machine); buffers at or below it are recycled. Measured on an
HCP-sized run (91x109x91x1200 int16, ``fit_transform`` with epi, detrend and
z-score, 2 threads): transform 3.9-4.4 s with 32 MiB tasks, 5.2-5.5 s with
64 or 128 MiB. With threads a task costs about 0.1 ms of scheduling, so
32 MiB tasks (30-50 ms of work) keep the overhead small; on a distributed
cluster (2-3 ms per task) raise it with ``daskmask.block-bytes``.

"The memory one thread can count on" is, inside a distributed worker, the
worker's ``memory_limit`` divided by its threads; on a client of a
distributed cluster, the smallest such share among the workers; otherwise
the memory this machine has available divided by dask's thread count.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys
from collections.abc import Callable
from typing import Any

import dask
from dask.utils import parse_bytes

#: Configuration key of an explicit budget (bytes, a size string, or "auto").
BUDGET_KEY = "daskmask.block-bytes"
#: Copies of its block a task may hold at once (see the module docstring).
COPIES_PER_TASK = 8
#: Smallest automatic budget: below this, per-task overhead dominates.
MIN_AUTO_BYTES = 4 * 2**20
#: Largest automatic budget: glibc's largest mmap threshold (see the module docstring).
MAX_AUTO_BYTES = 32 * 2**20


def as_bytes(value: object, name: str) -> int:
    """Parse a byte size (an int, or a string such as ``"64MiB"``).

    Parameters
    ----------
    value : object
        The size.
    name : str
        What it is, for the error messages (``"block_bytes"``, a config key).

    Returns
    -------
    int
        A positive number of bytes.

    Raises
    ------
    TypeError
        If ``value`` is neither an int nor a string.
    ValueError
        If it cannot be parsed or is not positive.

    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(
            f"{name} must be a number of bytes or a size such as '64MiB'; got {value!r}."
        )
    try:
        n_bytes = int(parse_bytes(value)) if isinstance(value, str) else value
    except ValueError:
        raise ValueError(
            f"{name} must be a number of bytes or a size such as '64MiB'; got {value!r}."
        ) from None
    if n_bytes <= 0:
        raise ValueError(f"{name} must be positive; got {value!r}.")
    return n_bytes


def _distributed_share() -> int | None:
    """Memory per thread of the current distributed worker or cluster, if any."""
    if "distributed" not in sys.modules:  # never import distributed just to ask
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        worker = None
    if worker is not None:
        limit, threads = worker.memory_manager.memory_limit, worker.state.nthreads
        return int(limit / max(1, threads)) if limit else None
    shares = [
        info["memory_limit"] / max(1, info["nthreads"])
        for info in _cluster_workers() or []
        if info.get("memory_limit")
    ]
    return int(min(shares)) if shares else None


def _cluster_workers() -> list[dict] | None:
    """Worker records of the current distributed client, or None without one."""
    if "distributed" not in sys.modules:  # never import distributed just to ask
        return None
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    return list(client.scheduler_info().get("workers", {}).values())


def total_threads() -> int:
    """Return the threads that run tasks: the cluster's, or dask's local thread count.

    Returns
    -------
    int
        At least 1.

    """
    workers = _cluster_workers()
    if workers:
        return max(1, sum(int(info.get("nthreads", 1)) for info in workers))
    return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))


def memory_per_thread() -> int:
    """Return the bytes of memory one computing thread can count on.

    Returns
    -------
    int
        See the module docstring.

    """
    share = _distributed_share()
    if share is not None:
        return share
    import psutil

    threads = dask.config.get("num_workers", None) or os.cpu_count() or 1
    return int(psutil.virtual_memory().available / max(1, int(threads)))


def task_budget_bytes() -> int:
    """Return the byte budget of one task (time slab or voxel block).

    Returns
    -------
    int
        A positive number of bytes.

    Raises
    ------
    TypeError, ValueError
        If ``daskmask.block-bytes`` or ``array.chunk-size`` is not a size.

    """
    configured = dask.config.get(BUDGET_KEY, "auto")
    if not (isinstance(configured, str) and configured == "auto"):
        return as_bytes(configured, BUDGET_KEY)
    chunk_size = as_bytes(dask.config.get("array.chunk-size", "128MiB"), "array.chunk-size")
    by_memory = max(MIN_AUTO_BYTES, memory_per_thread() // COPIES_PER_TASK)
    return min(chunk_size, MAX_AUTO_BYTES, by_memory)


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """Return ``madvise`` of the C library (Linux), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return madvise


def small_pages(array: Any) -> None:
    """Ask Linux to back ``array``'s untouched memory with 4 KiB pages, not huge pages.

    numpy advises huge pages for every array of 4 MiB or more. With the
    kernel's default ``defrag=madvise``, each fault of such a page may first
    compact memory, which stalls while the page cache holds most of it (the
    benchmark machine: 2.2 GB of run and 10 GB of other files cached).
    Measured on the HCP-like run, three pairs in one session:
    ``transform(...).to_numpy()`` 1.29-1.45 s without huge pages against
    1.50-1.86 s with them. Elsewhere, or if the call fails, nothing changes.
    """
    madvise = _madvise()
    if madvise is None or array.nbytes < mmap.PAGESIZE * 2:
        return
    start = array.__array_interface__["data"][0]
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    length = (start + array.nbytes - first) // mmap.PAGESIZE * mmap.PAGESIZE
    madvise(first, length, mmap.MADV_NOHUGEPAGE)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """Return ``malloc_trim`` of glibc, or None elsewhere (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Give the pages of freed memory back to the system (glibc only; else nothing).

    glibc keeps freed buffers below its mmap threshold (blocks up to 32 MiB) in
    the malloc arenas of the threads that used them, for reuse. After a pass
    over a run that is memory the process still holds: 60-150 MiB after ``fit``
    of the HCP-like run (issue 14), under the result ``transform`` then builds;
    +40-90 MiB per run of a batch on threads (300 -> 680 MiB after three runs).
    ``malloc_trim(0)`` returns the free pages of every arena in well under a
    millisecond.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
