"""The memory budget of one task, from the configuration and the memory available.

Every chunk daskmask plans (time slabs read from a NIfTI file, voxel blocks
cleaned, slabs unmasked) holds at most :func:`task_budget_bytes`. The budget is

* ``dask.config.get("daskmask.block-bytes")`` when it is set to a size
  (``dask.config.set({"daskmask.block-bytes": "64MiB"})``);
* otherwise (``"auto"``, the default) dask's ``array.chunk-size`` (128 MiB by
  default), lowered to an eighth of the memory one thread can count on:
  a cleaning task holds its block, a float copy, numpy's temporaries and its
  result, and finished blocks wait to be gathered.

"The memory one thread can count on" is, inside a distributed worker, the
worker's ``memory_limit`` divided by its threads; on a client of a
distributed cluster, the smallest such share among the workers; otherwise
the memory this machine has available divided by dask's thread count.
"""

from __future__ import annotations

import os
import sys

import dask
from dask.utils import parse_bytes

#: Configuration key of an explicit budget (bytes, a size string, or "auto").
BUDGET_KEY = "daskmask.block-bytes"
#: Copies of its block a task may hold at once (see the module docstring).
COPIES_PER_TASK = 8
#: Smallest automatic budget: below this, per-task overhead dominates.
MIN_AUTO_BYTES = 4 * 2**20


def _as_bytes(value: object, name: str) -> int:
    """Parse a configured size; a clear error if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(
            f"{name} must be a number of bytes or a size such as '64MiB'; got {value!r}."
        )
    try:
        n_bytes = int(parse_bytes(value)) if isinstance(value, str) else int(value)
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
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    shares = [
        info["memory_limit"] / max(1, info["nthreads"])
        for info in client.scheduler_info().get("workers", {}).values()
        if info.get("memory_limit")
    ]
    return int(min(shares)) if shares else None


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
        return _as_bytes(configured, BUDGET_KEY)
    chunk_size = _as_bytes(dask.config.get("array.chunk-size", "128MiB"), "array.chunk-size")
    by_memory = max(MIN_AUTO_BYTES, memory_per_thread() // COPIES_PER_TASK)
    return min(chunk_size, by_memory)
