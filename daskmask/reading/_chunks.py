"""Plan dask chunks for NIfTI arrays (pure functions, no I/O).

NIfTI stores voxels in Fortran order, so a run of whole volumes is one
contiguous byte range while a spatial block spans the whole file. Chunks are
therefore always whole along ``x, y, z`` and only split along time.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from dask.utils import parse_bytes

#: What callers may pass as ``chunks``: ``"auto"``, a number of volumes, a
#: byte size such as ``"64MiB"``, or a mapping ``{"time": <int or bytes>}``.
ChunksLike = str | int | Mapping[str, "int | str"]

_ACCEPTED = (
    "chunks must be 'auto', a positive number of volumes per chunk (int), a byte size "
    "string such as '64MiB', or a dict {'time': <int or byte size string>}"
)


def default_chunk_bytes() -> int:
    """Return the target chunk size in bytes: the task budget of daskmask.

    Returns
    -------
    int
        :func:`daskmask._memory.task_budget_bytes`: ``daskmask.block-bytes``
        if configured, else dask's ``array.chunk-size`` (128 MiB by default)
        capped by the memory available per thread.

    """
    from daskmask._memory import task_budget_bytes

    return task_budget_bytes()


def volumes_per_chunk(shape: tuple[int, ...], itemsize: int, chunks: ChunksLike) -> int:
    """Return how many whole volumes go into one time chunk.

    Parameters
    ----------
    shape : tuple of int
        Shape of the 4D array ``(x, y, z, time)``.
    itemsize : int
        Bytes per voxel value in memory (the dtype after scaling).
    chunks : ChunksLike
        See :func:`plan_time_chunks`.

    Returns
    -------
    int
        Volumes per chunk, at least 1 and at most ``shape[-1]`` (or 1 when the
        time axis is empty).

    Raises
    ------
    TypeError
        If ``chunks`` has an unsupported type.
    ValueError
        If ``chunks`` is zero, negative, an unparsable byte string or names a
        dimension other than ``time``.

    """
    requested = _time_request(chunks)
    n_volumes = shape[-1]
    if isinstance(requested, int):
        per_chunk = requested
    else:
        volume_bytes = max(1, math.prod(shape[:-1]) * int(itemsize))
        per_chunk = max(1, int(requested // volume_bytes))
    return max(1, min(per_chunk, n_volumes))


def plan_time_chunks(
    shape: tuple[int, ...], itemsize: int, chunks: ChunksLike = "auto"
) -> tuple[tuple[int, ...], ...]:
    """Plan full dask chunks for a NIfTI array: spatial dims whole, time in slabs.

    Parameters
    ----------
    shape : tuple of int
        Array shape. Only a 4D shape ``(x, y, z, time)`` is split; arrays with
        fewer dimensions are a single chunk (``chunks`` is still validated).
    itemsize : int
        Bytes per voxel value in memory.
    chunks : "auto", int, str or dict, default="auto"
        ``"auto"``: as many whole volumes as fit in
        :func:`default_chunk_bytes` (at least one). An int: that
        many volumes per chunk. A byte string such as ``"64MiB"``: as many
        whole volumes as fit in that size (at least one). A dict
        ``{"time": int | str}`` means the same as its value.

    Returns
    -------
    tuple of tuple of int
        The chunks for every dimension, as :func:`dask.array.from_array` takes
        them. The last chunk along time holds the remainder.

    Raises
    ------
    TypeError
        If ``chunks`` has an unsupported type.
    ValueError
        If ``chunks`` is zero, negative, unparsable or names another dimension.

    """
    if len(shape) < 4:
        _time_request(chunks)
        return tuple((size,) for size in shape)
    *spatial, n_volumes = shape
    per_chunk = volumes_per_chunk(tuple(shape), itemsize, chunks)
    n_full, remainder = divmod(n_volumes, per_chunk)
    time_chunks = (per_chunk,) * n_full + ((remainder,) if remainder else ())
    if not time_chunks:
        time_chunks = (0,)
    return (*((size,) for size in spatial), time_chunks)


def _time_request(chunks: ChunksLike) -> int | float:
    """Validate ``chunks``; return volumes per chunk (int) or target bytes (float).

    A ``float`` return means a byte budget, an ``int`` a number of volumes.
    """
    if isinstance(chunks, Mapping):
        other_keys = sorted(str(key) for key in chunks if key != "time")
        if other_keys:
            raise ValueError(
                f"NIfTI arrays are chunked along 'time' only (spatial dimensions stay "
                f"whole because only whole volumes are contiguous on disk); got chunks "
                f"for {other_keys}. {_ACCEPTED}."
            )
        if "time" not in chunks:
            return float(default_chunk_bytes())
        chunks = chunks["time"]
        if isinstance(chunks, Mapping):
            raise TypeError(f"{_ACCEPTED}. Got a nested dict.")
    if isinstance(chunks, bool) or not isinstance(chunks, str | numbers.Integral):
        raise TypeError(f"{_ACCEPTED}. Got: {type(chunks).__name__} ({chunks!r})")
    if isinstance(chunks, numbers.Integral):
        if chunks <= 0:
            raise ValueError(f"{_ACCEPTED}. Got: {chunks!r}")
        return int(chunks)
    if chunks == "auto":
        return float(default_chunk_bytes())
    try:
        n_bytes = parse_bytes(chunks)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{_ACCEPTED}. Got: {chunks!r} ({error})") from None
    if n_bytes <= 0:
        raise ValueError(f"{_ACCEPTED}. Got: {chunks!r}")
    return float(n_bytes)
